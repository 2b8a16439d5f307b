//! Per-token log-probs renormalized over a recorded support (sampling replay).
//!
//! A sampler that truncates (top-k, top-p, min-p, suppressed ids) draws each token from the
//! softmax over a kept set `S_t`. Recomputing the token's log-prob over the whole vocabulary
//! gives `log p(y_t) = log p_S(y_t) + log S_t-mass`: the ratio of the two is the kept mass, not
//! a policy change (TRL issue 6789). Sampling replay (DeepSeek-V3.2's "keep sampling mask",
//! vLLM's sampling-mask replay) recomputes the current policy's log-prob over the **same**
//! support:
//!
#![cfg_attr(
    doc,
    doc = r#"$$\log p^{S}_\theta(y_t) = z_{y_t} - \log \sum_{s \in S_t} e^{z_s},\qquad z = \text{logits}_t / T$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`log p_S(y_t) = z[y_t] - logsumexp_{s in S_t} z[s]`, `z = logits_t / T`"
)]
//!
//! so that the importance ratio against the sampler's own (truncated) log-prob is exactly 1
//! while the policy is unchanged, and measures only real drift afterwards.

use burn::tensor::{Int, Tensor};

use crate::error::{Error, Result, check_positive, check_same_shape};

/// The logit given to unused support slots: `exp(UNUSED_LOGIT - max)` is 0 next to any real
/// logit, in f32 too.
const UNUSED_LOGIT: f64 = -1e30;

/// Per-token log-probs of `labels` under `softmax(logits / temperature)` restricted to each
/// position's support.
///
/// `support[b, t, :]` lists the token ids of the kept set at position `(b, t)`; `-1` pads
/// unused slots. The label must be in its support (it was drawn from it); positions where
/// `mask` is false give 0. Differentiable w.r.t. `logits` (plain tensor ops: the memory is
/// `[B, T, K]` gathers besides the logits).
///
/// Errors: shapes that disagree ([`Error::Shape`]), `temperature` not finite and > 0
/// ([`Error::Config`]), an empty support dimension ([`Error::Empty`]).
///
/// # Shapes
/// - logits: `[B, T, V]`, labels: `[B, T]` (`Int`), support: `[B, T, K]` (`Int`, `-1` = unused)
/// - mask: `[B, T]` (`Bool`)
/// - output: `[B, T]`
pub fn try_support_logps(
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    support: Tensor<3, Int>,
    mask: Tensor<2, burn::tensor::Bool>,
    temperature: f64,
) -> Result<Tensor<2>> {
    check_positive("temperature", temperature)?;
    let mask = crate::reduce::canonical_mask(mask);
    let [b, t, v] = logits.dims();
    check_same_shape("labels", &labels.dims(), &[b, t], "logits [B, T]")?;
    check_same_shape("mask", &mask.dims(), &[b, t], "logits [B, T]")?;
    let [sb, st, k] = support.dims();
    if [sb, st] != [b, t] {
        return Err(Error::shape(
            "support",
            format!("[B, T, K] with [B, T] = [{b}, {t}] (as logits)"),
            &[sb, st, k],
        ));
    }
    crate::error::check_non_empty("support", k * v, "the support or the vocabulary is empty")?;
    crate::error::check_finite(&logits, "logits")?;
    let logits = crate::precision::accumulate_in_f32(logits, "logits")?;
    let z = logits.mul_scalar(1.0 / temperature);
    let unused = support.clone().lower_elem(0);
    let safe_support = support.clamp(0, v as i64 - 1);
    // Unused slots get a very negative finite value rather than -inf: a (masked) position
    // whose support were all unused must not produce NaN gradients.
    let z_support = z
        .clone()
        .gather(2, safe_support)
        .mask_fill(unused, UNUSED_LOGIT);
    let lse = crate::reduce::logsumexp(z_support, 2);
    let safe_labels = labels
        .mask_fill(mask.clone().bool_not(), 0)
        .clamp(0, v as i64 - 1);
    let z_label = z.gather(2, safe_labels.unsqueeze_dim::<3>(2));
    let logps = (z_label - lse).squeeze_dim::<2>(2);
    Ok(crate::reduce::zero_masked(logps, mask))
}

crate::error::panicking! {
    /// Panicking form of [`try_support_logps`].
    pub fn support_logps(
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        support: Tensor<3, Int>,
        mask: Tensor<2, burn::tensor::Bool>,
        temperature: f64,
    ) -> Tensor<2> = try_support_logps;
}
