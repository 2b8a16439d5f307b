//! The trait a user implements on their burn model to sample from it.

use burn::tensor::{Bool, Int, Tensor};

/// A causal language model the [`Sampler`](super::Sampler) can draw from.
///
/// Only [`logits`](Self::logits) is required. A model with an incremental (KV-cached) forward
/// also implements [`CachedCausalLm`] and is sampled with
/// [`Sampler::sample_cached`](super::Sampler::sample_cached).
///
/// Prompts are **left-padded**: the attention mask is `false` on padding, which always comes
/// first in a row. A model that should give the same completion for a padded and an unpadded
/// prompt must (1) not attend to masked positions and (2) number positions from the first real
/// token ([`position_ids`] does that).
pub trait CausalLm {
    /// Next-token logits at every position: `logits[:, t]` predicts the token at `t + 1`.
    ///
    /// # Shapes
    /// - ids: `[B, T]` (`Int`; padding positions hold the sampler's `pad_token_id`)
    /// - attention_mask: `[B, T]` (`true` = real token)
    /// - output: `[B, T, V]`
    fn logits(&self, ids: Tensor<2, Int>, attention_mask: Tensor<2, Bool>) -> Tensor<3>;
}

/// The optional incremental forward of a [`CausalLm`]: a cache carried across decoding steps.
///
/// The sampler calls [`init_cache`](Self::init_cache) once per call, then
/// [`forward_step`](Self::forward_step) once per generated token. The first call sees the whole
/// (left-padded) prompt; each later call sees the same ids with one more column, and a cache
/// only needs to read that last column (burn's `TransformerEncoder` autoregressive cache reads
/// the full input and caches the per-position projections; a classic KV cache reads the last
/// column only).
pub trait CachedCausalLm: CausalLm {
    /// What the model keeps between steps (key/value tensors, per-layer caches, ...).
    type Cache;

    /// An empty cache for a new generation call.
    fn init_cache(&self) -> Self::Cache;

    /// Logits of the **last** position, updating the cache.
    ///
    /// # Shapes
    /// - ids: `[B, T]` (all tokens so far; the last column is new since the previous call)
    /// - attention_mask: `[B, T]`
    /// - output: `[B, V]`
    fn forward_step(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Bool>,
        cache: &mut Self::Cache,
    ) -> Tensor<2>;
}

/// Position ids that count from the first real token of each row (0 on left padding), so a
/// left-padded prompt gets the same positions as the unpadded one.
///
/// # Shapes
/// - attention_mask: `[B, T]`
/// - output: `[B, T]` (`Int`)
pub fn position_ids(attention_mask: Tensor<2, Bool>) -> Tensor<2, Int> {
    attention_mask.int().cumsum(1).sub_scalar(1).clamp_min(0)
}
