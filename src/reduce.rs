//! Masks, masked reductions and the one normalization concept every loss uses.
//!
//! A loss in this crate produces *terms*: one per token (`[B, T]` with a mask) or one per
//! sequence/pair (`[B]`). A [`Normalizer`] turns the terms into the scalar that is
//! differentiated. Keeping this step explicit and shared is what makes gradient accumulation and
//! data-parallel training exact: with [`Normalizer::GlobalTokens`] or
//! [`Normalizer::GlobalSequences`] the caller passes the count of the **whole optimizer step**
//! (all micro-batches, all ranks), so the gradients of the micro-batch losses *sum* to the
//! gradient of the whole-batch loss (see the crate tests `normalizer_*`).
//!
//! # Masked means: one family, one empty-group rule
//!
//! Every masked mean of the crate is [`masked_mean_with`] (or [`mean_from_sum`] when the sum
//! and count are already at hand): `sum(x * mask) / denominator(count)` over one group (a row,
//! or the whole tensor). The anchors differ only in the denominator ([`MeanDenominator`]);
//! **the empty-group rule is the same everywhere: a group with no valid element gives exactly
//! 0, in value and gradient, never NaN** (also when `eps` rounds to 0 in the tensor's dtype).
//!
//! | public function | group | denominator | anchor it reproduces |
//! |---|---|---|---|
//! | [`masked_row_mean`], [`SequenceReduction::Mean`](crate::logps::SequenceReduction::Mean), [`Normalizer::SequenceMean`] / [`Normalizer::GlobalSequences`] (per row) | row | `max(count, 1)` | TRL `(x * m).sum(-1) / m.sum(-1).clamp(min=1)` (GRPO `grpo` loss, DPO `ipo` / `sigmoid_norm` averages, SFT per-example) |
//! | [`Normalizer::TokenMean`], the token-mean metrics (PPO `clipfrac`, RLOO `entropy` / `kl`, GRPO `global_masked_mean`, KTO / BCO class means), the NLL term of paired losses | all | `max(count, 1)` | TRL `(x * m).sum() / m.sum().clamp(min=1.0)` |
//! | averaged sequence log-probs from counts ([`mean_from_sum`]: DPO `ipo` / `sigmoid_norm`, CPO `ipo` / `simpo`, ORPO, DPO's `ld_alpha` weights) | row | `max(count, 1)` | TRL's per-token averaged log-probs (completion-token counts, clamped at 1) |
//! | [`masked_mean_eps`], [`Normalizer::TokenMeanEps`], [`rl::masked_mean`](crate::rl::masked_mean), [`SequenceReduction::MeanEps`](crate::logps::SequenceReduction::MeanEps) | row or all | `count + eps` | torchtune 0.6.1 `rlhf.masked_mean`: `(x * m).sum(dim) / (m.sum(dim) + 1e-8)` |
//! | [`rl::masked_var`](crate::rl::masked_var), [`rl::whiten`](crate::rl::whiten) | all | `count + 1e-8`, Bessel `n / (n - 1)` with `n = count + 1e-8` | torchtune 0.6.1 `rlhf.masked_var`, `whiten` |
//! | GRPO `clip_ratio/*/min`, `/max` (per-sequence means, then min / max) | row | `max(count, 1)`; an empty row is *left out* of the min / max (0 if every row is empty) | TRL `nanmin` / `nanmax` of per-sequence means |
//!
//! The only difference between the two denominators on a non-empty group is `eps` (relative
//! `eps / count`). TRL's `max(count, 1)` and torchtune's `count + eps` on an empty group are
//! both `0 / positive = 0`, so the rule above is the anchors' own, except where torchtune's
//! `eps` underflows (f16, or `eps` below the dtype's resolution), where torchtune gives `0/0`.
//!
//! Implementation note: divisions by a constant are written `mul_scalar(1.0 / c)`. burn 0.22's
//! autodiff backward of `div_scalar` rounds the scalar to f32, which costs f64 callers about
//! 1e-8 relative precision in the gradient; `mul_scalar` keeps it.

use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, check_non_empty, check_positive, check_same_shape};

/// `logsumexp(x, dim)` with the maximum shifted out (the maximum is detached: it cancels
/// exactly in the value and the gradient), keeping `dim` with size 1.
pub(crate) fn logsumexp<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    let max = x.clone().detach().max_dim(dim);
    (x - max.clone()).exp().sum_dim(dim).log() + max
}

/// `log_softmax(x, dim)` written as `x - logsumexp(x)`, finite wherever `x` is finite. (Some
/// backends evaluate burn's `log_softmax` as `log(softmax)`, which is `-inf` where a
/// probability underflows.)
pub(crate) fn log_softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    let lse = logsumexp(x.clone(), dim);
    x - lse
}

/// A float tensor of ones where `mask` is true and zeros elsewhere, in the dtype and on the
/// device of `like` (so f64 inputs stay f64). Carries no gradient.
pub(crate) fn mask_like<const D: usize>(like: &Tensor<D>, mask: Tensor<D, Bool>) -> Tensor<D> {
    let mask = crate::reduce::canonical_mask(mask);
    Tensor::zeros_like(like).mask_fill(mask, 1.0)
}

/// Sets the positions where `mask` is false to exactly 0 (value **and** gradient).
pub(crate) fn zero_masked<const D: usize>(x: Tensor<D>, mask: Tensor<D, Bool>) -> Tensor<D> {
    x.mask_fill(canonical_mask(mask).bool_not(), 0.0)
}

/// A Bool mask in the device's native bool storage. Some burn ops return Bool tensors stored
/// as `U8` (on flex, `Tensor::select` on a Bool tensor does); flex's bool ops (`bool_not`,
/// `bool_and`, ...) reject those with a panic. Every masked entry point of the crate passes
/// its masks through this (a metadata check; a conversion only for such masks).
pub(crate) fn canonical_mask<const D: usize>(mask: Tensor<D, Bool>) -> Tensor<D, Bool> {
    if matches!(mask.dtype(), burn::tensor::DType::Bool(_)) {
        mask
    } else {
        mask.int().equal_elem(1)
    }
}

/// Per-row sum of the masked terms: `[B, T] -> [B]`.
pub(crate) fn masked_row_sum(x: Tensor<2>, mask: Tensor<2, Bool>) -> Tensor<1> {
    let mask = crate::reduce::canonical_mask(mask);
    zero_masked(x, mask).sum_dim(1).squeeze_dim::<1>(1)
}

/// Per-row count of valid positions, as a float tensor in the dtype of `like`: `[B, T] -> [B]`.
pub(crate) fn masked_row_count(like: &Tensor<2>, mask: Tensor<2, Bool>) -> Tensor<1> {
    let mask = crate::reduce::canonical_mask(mask);
    mask_like(like, mask).sum_dim(1).squeeze_dim::<1>(1)
}

/// Per-row mean over valid positions, dividing by `max(count, 1)` so that a row with no valid
/// position gives exactly 0 (not NaN): `[B, T] -> [B]`. [`masked_mean_with`] over `dim = 1`
/// with [`MeanDenominator::AtLeastOne`] (TRL's rule; see the module docs).
pub(crate) fn masked_row_mean(x: Tensor<2>, mask: Tensor<2, Bool>) -> Tensor<1> {
    masked_mean_with(x, mask, Some(1), MeanDenominator::AtLeastOne)
}

/// torchtune's `masked_mean(x, mask, dim)`: `sum(x * mask) / (sum(mask) + eps)` along `dim`
/// (`None` = over everything), with torchtune's `eps = 1e-8` when you pass that. Rows with no
/// valid position give exactly 0 (value and gradient), also when `eps` underflows to 0 in the
/// tensor's dtype (1e-8 is 0 in f16 and 1e-50 in f32, where torchtune's formula gives 0/0).
/// [`masked_mean_with`] with [`MeanDenominator::CountPlusEps`].
pub(crate) fn masked_mean_eps<const D: usize>(
    x: Tensor<D>,
    mask: Tensor<D, Bool>,
    dim: Option<usize>,
    eps: f64,
) -> Tensor<1> {
    masked_mean_with(x, mask, dim, MeanDenominator::CountPlusEps(eps))
}

/// The denominator of a masked mean: the anchors differ only here (module docs, "Masked
/// means"). Either way a group with no valid element gives exactly 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum MeanDenominator {
    /// `max(count, 1)`: TRL's `mask.sum().clamp(min=1.0)`.
    AtLeastOne,
    /// `count + eps` (an empty group divides by 1): torchtune's `mask.sum() + 1e-8`.
    CountPlusEps(f64),
}

/// The one masked mean: `sum(x * mask) / denominator(count)` along `dim` (`None` = over
/// everything, output `[1]`; `Some(d)`: the other dims, flattened). Masked positions
/// contribute exactly 0 and receive exactly 0 gradient; an empty group gives exactly 0.
///
/// # Shapes
/// `x`, `mask`: the same shape (not checked here: the public entry points check it) -> `[1]`
/// or the product of the other dims.
pub(crate) fn masked_mean_with<const D: usize>(
    x: Tensor<D>,
    mask: Tensor<D, Bool>,
    dim: Option<usize>,
    denominator: MeanDenominator,
) -> Tensor<1> {
    let mask = canonical_mask(mask);
    let count = mask_like(&x, mask.clone());
    let num = zero_masked(x, mask);
    match dim {
        None => mean_from_sum(num.sum(), count.sum(), denominator),
        Some(d) => {
            mean_from_sum(num.sum_dim(d), count.sum_dim(d), denominator).flatten::<1>(0, D - 1)
        }
    }
}

/// `sum / denominator(count)` with the empty-group rule (module docs): for an empty group
/// (`count = 0`, so `sum = 0`) the result is exactly 0. Use it where the masked sum and the
/// count already exist (sequence log-probs and their token counts).
pub(crate) fn mean_from_sum<const D: usize>(
    sum: Tensor<D>,
    count: Tensor<D>,
    denominator: MeanDenominator,
) -> Tensor<D> {
    match denominator {
        MeanDenominator::AtLeastOne => sum / count.clamp_min(1.0),
        MeanDenominator::CountPlusEps(eps) => {
            let empty = count.clone().equal_elem(0.0);
            sum / count.add_scalar(eps).mask_fill(empty, 1.0)
        }
    }
}

/// How loss terms become the scalar loss. Shared by every loss in the crate.
///
/// | variant | token terms `[B, T]` + mask | sequence terms `[B]` |
/// |---|---|---|
/// | `Sum` | sum of valid terms | sum |
/// | `TokenMean` | sum / (valid tokens in this batch, min 1) | error: needs tokens |
/// | `SequenceMean` | mean over rows of each row's token mean | mean over rows |
/// | `Constant(c)` | sum / c | sum / c |
/// | `GlobalTokens(n)` | sum / n | error: needs tokens |
/// | `GlobalSequences(n)` | sum of row token means / n | sum / n |
/// | `TokenMeanEps(eps)` | sum / (valid tokens + eps) (torchtune) | error: needs tokens |
///
/// `TokenMean` and `SequenceMean` depend on the local batch: splitting a batch into
/// micro-batches and averaging their losses changes the gradient unless every micro-batch has
/// the same token count (the TRL 2617 / 5619 bug class). `GlobalTokens` and `GlobalSequences`
/// take the count of the whole optimizer step (all micro-batches and data-parallel ranks), so the
/// micro-batch losses simply **sum** to the whole-batch loss. `Constant` is the Dr. GRPO style
/// `B * max_completion_length` normalizer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalizer {
    /// Sum of the terms.
    Sum,
    /// Mean over the valid tokens of this batch.
    TokenMean,
    /// Mean over sequences (for token terms: of per-sequence token means).
    SequenceMean,
    /// Divide the sum by a constant.
    Constant(f64),
    /// Divide the sum of valid token terms by the token count of the whole optimizer step.
    GlobalTokens(f64),
    /// Divide the sum of per-sequence terms by the sequence count of the whole optimizer step.
    GlobalSequences(f64),
    /// torchtune's `masked_mean`: sum of valid token terms / (valid tokens in this batch +
    /// `eps`), computed on the device (torchtune 0.6.1's `PPOLoss` uses `eps = 1e-8`; see
    /// [`PpoLossConfig::torchtune`](crate::rl::PpoLossConfig::torchtune)). A batch with no
    /// valid token gives 0 whatever `eps` rounds to.
    TokenMeanEps(f64),
}

impl Normalizer {
    /// Rejects non-finite or non-positive constants and counts.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Normalizer::Constant(c) => check_positive("Normalizer::Constant", c),
            Normalizer::GlobalTokens(n) => check_positive("Normalizer::GlobalTokens", n),
            Normalizer::GlobalSequences(n) => check_positive("Normalizer::GlobalSequences", n),
            Normalizer::TokenMeanEps(eps) => check_positive("Normalizer::TokenMeanEps", eps),
            _ => Ok(()),
        }
    }

    /// Validates the normalizer for a loss with one term per sequence or pair (`loss` names
    /// it in the message): [`Error::NormalizerKind`] for the per-token `TokenMean` and
    /// `GlobalTokens`, which such a loss cannot honour. Every sequence-level loss config calls
    /// this at `init`, so the mistake is caught before the first forward.
    pub fn validate_for_sequences(&self, loss: &str) -> Result<()> {
        self.validate()?;
        if matches!(
            self,
            Normalizer::TokenMean | Normalizer::GlobalTokens(_) | Normalizer::TokenMeanEps(_)
        ) {
            return Err(Error::NormalizerKind {
                field: "normalizer",
                normalizer: format!("{self:?}"),
                reason: format!(
                    "it needs per-token terms; {loss} has one term per sequence or pair (use SequenceMean, Sum, Constant or GlobalSequences)"
                ),
            });
        }
        Ok(())
    }

    /// Reduces per-token terms `[B, T]` with their validity mask to the scalar loss `[1]`.
    ///
    /// Errors: an invalid normalizer ([`Error::Config`]), a mask of another shape
    /// ([`Error::Shape`]), `B = 0` ([`Error::Empty`]).
    ///
    /// Masked positions contribute exactly 0 and receive exactly 0 gradient.
    pub fn try_reduce_tokens(&self, terms: Tensor<2>, mask: Tensor<2, Bool>) -> Result<Tensor<1>> {
        let mask = crate::reduce::canonical_mask(mask);
        self.validate()?;
        check_same_shape("mask", &mask.dims(), &terms.dims(), "terms")?;
        check_non_empty("terms", terms.dims()[0], "the batch has no row (B = 0)")?;
        crate::error::check_finite_masked(&terms, &mask, "terms")?;
        Ok(match *self {
            Normalizer::Sum => zero_masked(terms, mask).sum(),
            Normalizer::TokenMean => {
                masked_mean_with(terms, mask, None, MeanDenominator::AtLeastOne)
            }
            Normalizer::SequenceMean => masked_row_mean(terms, mask).mean(),
            Normalizer::TokenMeanEps(eps) => masked_mean_eps(terms, mask, None, eps),
            Normalizer::Constant(c) | Normalizer::GlobalTokens(c) => {
                zero_masked(terms, mask).sum().mul_scalar(1.0 / c)
            }
            Normalizer::GlobalSequences(n) => {
                masked_row_mean(terms, mask).sum().mul_scalar(1.0 / n)
            }
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_reduce_tokens`](Self::try_reduce_tokens).
        pub fn reduce_tokens(
            &self,
            terms: Tensor<2>,
            mask: Tensor<2, Bool>,
        ) -> Tensor<1> = try_reduce_tokens;
    }

    /// Reduces per-sequence (or per-pair) terms `[B]` to the scalar loss `[1]`.
    ///
    /// Errors: an invalid normalizer ([`Error::Config`]), a token-level normalizer
    /// ([`Error::NormalizerKind`]), `B = 0` ([`Error::Empty`]).
    pub fn try_reduce_sequences(&self, terms: Tensor<1>) -> Result<Tensor<1>> {
        self.validate()?;
        check_non_empty(
            "terms",
            terms.dims()[0],
            "the batch has no sequence (B = 0)",
        )?;
        crate::error::check_finite(&terms, "terms")?;
        Ok(match *self {
            Normalizer::Sum => terms.sum(),
            Normalizer::SequenceMean => terms.mean(),
            Normalizer::Constant(c) | Normalizer::GlobalSequences(c) => {
                terms.sum().mul_scalar(1.0 / c)
            }
            Normalizer::TokenMean | Normalizer::GlobalTokens(_) | Normalizer::TokenMeanEps(_) => {
                return Err(Error::NormalizerKind {
                    field: "normalizer",
                    normalizer: format!("{self:?}"),
                    reason: "it needs per-token terms and a mask; this loss produces one term per sequence or pair (use SequenceMean, Sum, Constant or GlobalSequences)".into(),
                });
            }
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_reduce_sequences`](Self::try_reduce_sequences).
        pub fn reduce_sequences(&self, terms: Tensor<1>) -> Tensor<1> = try_reduce_sequences;
    }
}

/// The number of valid tokens over a whole optimizer step, given the masks of all its
/// micro-batches (reads them back to the host). Pass it to [`Normalizer::GlobalTokens`].
/// Across data-parallel ranks, sum the per-rank results (all-reduce) before use.
pub fn global_token_count(masks: &[Tensor<2, Bool>]) -> f64 {
    if masks.is_empty() {
        return 0.0;
    }
    // One read for all the masks.
    let counts: Vec<Tensor<1, burn::tensor::Int>> =
        masks.iter().map(|m| m.clone().int().sum()).collect();
    crate::host_reads::ints(Tensor::cat(counts, 0), "masks")
        .unwrap_or_else(|e| panic!("burn-rlhf: {e}"))
        .into_iter()
        .map(|c| c as f64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, v};
    use burn::tensor::{Device, FloatDType, TensorData};

    fn rows(values: &[f64], mask: &[bool], device: &Device) -> (Tensor<2>, Tensor<2, Bool>) {
        let x = Tensor::from_data(
            TensorData::new(values.to_vec(), [2, 3]),
            (device, FloatDType::F64.into()),
        );
        let m = Tensor::from_data(TensorData::new(mask.to_vec(), [2, 3]), device);
        (x, m)
    }

    /// Both denominators on a full row and an empty row: `(1 + 3) / 2`, `(1 + 3) / (2 + eps)`,
    /// and exactly 0 (value and gradient) for the empty row.
    #[test]
    fn masked_means_share_the_empty_group_rule() {
        let device = Device::flex().autodiff();
        let (x, m) = rows(
            &[1.0, 2.0, 3.0, 7.0, 8.0, 9.0],
            &[true, false, true, false, false, false],
            &device,
        );
        let x = x.require_grad();
        let clamped = masked_mean_with(x.clone(), m.clone(), Some(1), MeanDenominator::AtLeastOne);
        assert_close(&v(clamped.clone()), &[2.0, 0.0]);
        assert_close(&v(masked_row_mean(x.clone(), m.clone())), &[2.0, 0.0]);
        let eps = masked_mean_eps(x.clone(), m.clone(), Some(1), 1e-8);
        assert_close(&v(eps), &[4.0 / (2.0 + 1e-8), 0.0]);
        // eps below f64's resolution at 0 (no underflow guard would give 0 / 0 = NaN).
        let tiny = masked_mean_eps(x.clone(), m.clone(), Some(1), 1e-400);
        assert_close(&v(tiny), &[2.0, 0.0]);
        let whole = masked_mean_with(x.clone(), m.clone(), None, MeanDenominator::AtLeastOne);
        assert_close(&v(whole.clone()), &[2.0]);
        let grads = (clamped.sum() + whole).backward();
        let g = v(x.grad(&grads).unwrap());
        assert_close(&g, &[1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        // An all-false mask: 0 under both denominators.
        let (x, m) = rows(&[1.0; 6], &[false; 6], &device);
        assert_close(
            &v(masked_mean_with(
                x.clone(),
                m.clone(),
                None,
                MeanDenominator::AtLeastOne,
            )),
            &[0.0],
        );
        assert_close(&v(masked_mean_eps(x, m, None, 1e-8)), &[0.0]);
    }
}
