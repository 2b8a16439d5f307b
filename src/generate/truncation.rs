//! Temperature and top-k / top-p / min-p truncation, and the on-device draw.
//!
//! Two orders ([`TruncationOrder`]): Hugging Face `generate`'s (the default; vLLM v0's):
//! divide the logits by the temperature, keep the top-k, then the top-p nucleus of what is
//! left, then drop tokens whose probability is below `min_p` times the most likely token's;
//! or vLLM v1's: temperature, then min-p, then top-k and top-p on what min-p kept (with both
//! min-p and top-p set the nucleus is computed on the min-p-renormalized set and usually
//! keeps fewer tokens). Excluded tokens get `-inf` logits; the sampling distribution is the
//! softmax of what remains.

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The order in which [`Truncation`] applies top-k, top-p and min-p (after the temperature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationOrder {
    /// Hugging Face `generate` (`TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper`
    /// in that order) and vLLM v0: top-k, top-p, min-p. The default.
    #[default]
    Hf,
    /// vLLM v1's sampler: min-p (an argmax-invariant logits processor) first, then top-k and
    /// top-p on the tokens min-p kept.
    VllmV1,
}

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
    /// The order of the three truncations.
    pub order: TruncationOrder,
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
        let mut x = logits.div_scalar(self.temperature);
        match self.order {
            TruncationOrder::Hf => {
                x = self.top_k(x);
                x = self.top_p(x);
                self.min_p(x)
            }
            TruncationOrder::VllmV1 => {
                x = self.min_p(x);
                x = self.top_k(x);
                self.top_p(x)
            }
        }
    }

    /// Keeps the `top_k` largest (ties with the k-th kept).
    fn top_k(&self, x: Tensor<2>) -> Tensor<2> {
        let [_, v] = x.dims();
        match self.top_k {
            Some(k) if k < v => {
                let kth = x.clone().topk(k, 1).narrow(1, k - 1, 1);
                let drop = x.clone().lower(kth.expand(x.dims()));
                x.mask_fill(drop, f32::NEG_INFINITY)
            }
            _ => x,
        }
    }

    /// Keeps a token when the mass of the tokens strictly more likely than it (under the
    /// softmax of what is still kept) is `< top_p`.
    fn top_p(&self, x: Tensor<2>) -> Tensor<2> {
        if self.top_p >= 1.0 {
            return x;
        }
        let sorted = x.clone().sort_descending(1);
        let probs = softmax_finite(sorted.clone());
        let before = probs.clone().cumsum(1) - probs;
        // Number of kept tokens (>= 1: nothing is before the first one).
        let kept = before.lower_elem(self.top_p).int().sum_dim(1).clamp_min(1);
        let threshold = sorted.gather(1, kept.sub_scalar(1));
        let drop = x.clone().lower(threshold.expand(x.dims()));
        x.mask_fill(drop, f32::NEG_INFINITY)
    }

    /// Drops tokens with probability `< min_p` times the largest.
    fn min_p(&self, x: Tensor<2>) -> Tensor<2> {
        if self.min_p <= 0.0 {
            return x;
        }
        let threshold = x.clone().max_dim(1).add_scalar(self.min_p.ln());
        let drop = x.clone().lower(threshold.expand(x.dims()));
        x.mask_fill(drop, f32::NEG_INFINITY)
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

/// The Gumbel-max draw (the exponential race): for each row the index of
/// `argmax_v(logps[v] + g[v])` with `g = -ln(-ln u)` for independent uniforms `u`, which is
/// exactly a draw from `softmax(logps)`: every token of positive probability is drawable at
/// its rate (no cumulative sum, no resolution limit), excluded tokens (`-inf`) never are. A
/// row whose values are all NaN still gives a valid index (burn's argmax).
///
/// # Shapes
/// - logps: `[B, K]` (`-inf` = excluded)
/// - uniforms: `[B, K]` in `(0, 1)`, in the dtype of `logps`
/// - output: `[B, 1]` (`Int`), an index into `K`
pub(crate) fn gumbel_max(logps: Tensor<2>, uniforms: Tensor<2>) -> Tensor<2, Int> {
    let gumbel = uniforms.log().neg().log().neg();
    (logps + gumbel).argmax(1)
}
