//! Temperature and top-k / top-p / min-p truncation, and the on-device draw.
//!
//! Order (as Hugging Face `generate` and vLLM): divide the logits by the temperature, then
//! keep the top-k, then the top-p nucleus of what is left, then drop tokens whose probability
//! is below `min_p` times the most likely token's. Excluded tokens get `-inf` logits; the
//! sampling distribution is the softmax of what remains.

use burn::tensor::{Int, Tensor};

use crate::error::Error;

/// The truncation settings of one sampling step (the [`SamplerConfig`](super::SamplerConfig)
/// fields of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Truncation {
    /// Softmax temperature (> 0).
    pub temperature: f64,
    /// Keep the `k` most likely tokens (ties with the k-th are kept); `None` = off.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose mass reaches `top_p`: a token is kept
    /// when the mass of the tokens strictly more likely than it is `< top_p`. `1.0` = off.
    pub top_p: f64,
    /// Drop tokens with probability `< min_p * max probability`. `0.0` = off.
    pub min_p: f64,
}

impl Truncation {
    /// Checks every field: `temperature` finite and > 0, `top_k` >= 1 when set, `top_p` in
    /// `(0, 1]`, `min_p` in `[0, 1)` ([`Error::Config`] naming the field).
    pub fn validate(&self) -> crate::Result<()> {
        crate::error::check_positive("temperature", self.temperature)?;
        if self.top_k == Some(0) {
            return Err(Error::config(
                "top_k",
                "must be >= 1 (None turns it off)",
                0,
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::config("top_p", "must be in (0, 1]", self.top_p));
        }
        if !(self.min_p.is_finite() && (0.0..1.0).contains(&self.min_p)) {
            return Err(Error::config("min_p", "must be in [0, 1)", self.min_p));
        }
        Ok(())
    }

    crate::error::panicking! {
        /// The tempered, truncated logits: `logits / temperature` with `-inf` on excluded
        /// tokens. At least the most likely token is always kept.
        ///
        /// # Shapes
        /// - logits: `[B, V]`
        /// - output: `[B, V]`
        pub fn apply(&self, logits: Tensor<2>) -> Tensor<2> = try_apply;
    }

    /// Non-panicking form of [`apply`](Self::apply): the fields are validated
    /// ([`validate`](Self::validate)) and `logits` must have `B >= 1` rows and `V >= 1`
    /// columns ([`Error::Empty`]).
    pub fn try_apply(&self, logits: Tensor<2>) -> crate::Result<Tensor<2>> {
        self.validate()?;
        let [b, v] = logits.dims();
        crate::error::check_non_empty(
            "logits",
            b * v,
            &format!("shape {:?} has a zero dimension", [b, v]),
        )?;
        Ok(self.apply_unchecked(logits))
    }

    /// [`apply`](Self::apply) on validated fields and a non-empty `[B, V]`.
    pub(crate) fn apply_unchecked(&self, logits: Tensor<2>) -> Tensor<2> {
        let [_, v] = logits.dims();
        let mut x = logits.div_scalar(self.temperature);
        if let Some(k) = self.top_k
            && k < v
        {
            let kth = x.clone().topk(k, 1).narrow(1, k - 1, 1);
            let drop = x.clone().lower(kth.expand(x.dims()));
            x = x.mask_fill(drop, f32::NEG_INFINITY);
        }
        if self.top_p < 1.0 {
            let sorted = x.clone().sort_descending(1);
            let probs = softmax_finite(sorted.clone());
            let before = probs.clone().cumsum(1) - probs;
            // Number of kept tokens (>= 1: nothing is before the first one).
            let kept = before.lower_elem(self.top_p).int().sum_dim(1).clamp_min(1);
            let threshold = sorted.gather(1, kept.sub_scalar(1));
            let drop = x.clone().lower(threshold.expand(x.dims()));
            x = x.mask_fill(drop, f32::NEG_INFINITY);
        }
        if self.min_p > 0.0 {
            let threshold = x.clone().max_dim(1).add_scalar(self.min_p.ln());
            let drop = x.clone().lower(threshold.expand(x.dims()));
            x = x.mask_fill(drop, f32::NEG_INFINITY);
        }
        x
    }
}

/// `log_softmax` over the last dim that tolerates `-inf` entries (at least one finite per row).
pub(crate) fn log_softmax_finite(x: Tensor<2>) -> Tensor<2> {
    let z = x.clone() - x.max_dim(1);
    let lse = z.clone().exp().sum_dim(1).log();
    z - lse
}

fn softmax_finite(x: Tensor<2>) -> Tensor<2> {
    log_softmax_finite(x).exp()
}

/// Inverse-CDF draw: for each row, the first token whose cumulative probability (in vocabulary
/// order) exceeds `u * total`. A token of probability 0 is never returned: its cumulative
/// value equals its predecessor's, and the index is capped at the last token of positive
/// probability (guarding `u * total` rounding up to `total`). A row with non-finite logits
/// (NaN) has no such token: its index is clamped into `[0, V)` (token 0), never out of
/// bounds; its log-probs are NaN, which the caller sees.
///
/// # Shapes
/// - logps: `[B, V]` (`-inf` = excluded)
/// - uniforms: `[B, 1]` in `[0, 1)`
/// - output: `[B, 1]` (`Int`)
pub(crate) fn inverse_cdf(logps: Tensor<2>, uniforms: Tensor<2>) -> Tensor<2, Int> {
    let [b, v] = logps.dims();
    let device = logps.device();
    let probs = logps.exp();
    let cdf = probs.clone().cumsum(1);
    let total = cdf.clone().narrow(1, v - 1, 1);
    let threshold = (uniforms * total).expand([b, v]);
    let index = cdf.lower_equal(threshold).int().sum_dim(1);
    let positions = Tensor::<1, Int>::arange(1..v as i64 + 1, &device)
        .unsqueeze_dim::<2>(0)
        .expand([b, v]);
    let last = (probs.greater_elem(0.0).int() * positions)
        .max_dim(1)
        .sub_scalar(1);
    index.min_pair(last).clamp(0, v as i64 - 1)
}
