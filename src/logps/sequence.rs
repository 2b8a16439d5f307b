//! Sequence-level reductions of per-token log-probs.

use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, check_finite, check_in_closed, check_positive, check_same_shape};
use crate::reduce::{mask_like, masked_mean_eps, masked_row_mean, masked_row_sum, zero_masked};

/// How per-token log-probs `[B, T]` become one log-prob per sequence `[B]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceReduction {
    /// Sum over valid tokens (the DPO-family default: `log pi(y | x)`).
    Sum,
    /// Mean over valid tokens; a sequence with no valid token gives 0 (not NaN).
    /// (IPO/SimPO/ORPO-style length-normalized log-probs.)
    Mean,
    /// torchtune's `masked_mean`: `sum / (count + eps)` (torchtune uses `eps = 1e-8`).
    /// `eps` must be finite and > 0 (with 0, a sequence with no valid token is `0 / 0`).
    MeanEps(f64),
}

impl SequenceReduction {
    crate::error::panicking! {
        /// Reduces `[B, T]` token log-probs with their mask to `[B]`.
        pub fn reduce(
            &self,
            token_logps: Tensor<2>,
            mask: Tensor<2, Bool>,
        ) -> Tensor<1> = try_reduce;
    }

    /// Non-panicking form of [`reduce`](Self::reduce): a mask of another shape is
    /// [`Error::Shape`](crate::Error::Shape), `MeanEps` with `eps` not finite and > 0
    /// [`Error::Config`](crate::Error::Config) naming `eps`; in checked mode a non-finite
    /// `token_logps` is [`Error::NonFinite`](crate::Error::NonFinite).
    pub fn try_reduce(&self, token_logps: Tensor<2>, mask: Tensor<2, Bool>) -> Result<Tensor<1>> {
        let mask = crate::reduce::canonical_mask(mask);
        check_same_shape("mask", &mask.dims(), &token_logps.dims(), "token_logps")?;
        if let SequenceReduction::MeanEps(eps) = *self {
            check_positive("eps", eps)?;
        }
        crate::error::check_finite(&token_logps, "token_logps")?;
        Ok(match *self {
            SequenceReduction::Sum => masked_row_sum(token_logps, mask),
            SequenceReduction::Mean => masked_row_mean(token_logps, mask),
            SequenceReduction::MeanEps(eps) => masked_mean_eps(token_logps, mask, Some(1), eps),
        })
    }
}

/// LD-DPO (length-desensitized) sequence log-probs for a batch of pairs.
///
/// For each pair, with `l = min(|y_w|, |y_l|)` the shorter completion's token count, the
/// first `l` valid tokens of each completion count fully and the rest count `alpha`:
#[cfg_attr(
    doc,
    doc = r#"$$\log \pi(y) = \sum_{k \le l} \log p_k + \alpha \sum_{k > l} \log p_k$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`logp = sum_{k <= l} log p_k + alpha * sum_{k > l} log p_k`"
)]
///
/// `k` counts valid tokens (1-based) along the row, so prompt or padding positions in between
/// do not shift it. `alpha = 1` is the plain sum; `alpha` must lie in `[0, 1]`.
///
/// # Shapes
/// - chosen_logps, chosen_mask: `[B, Tc]`; rejected_logps, rejected_mask: `[B, Tr]`
/// - output: `(chosen [B], rejected [B])`
pub fn ld_dpo_sequence_logps(
    chosen_logps: Tensor<2>,
    chosen_mask: Tensor<2, Bool>,
    rejected_logps: Tensor<2>,
    rejected_mask: Tensor<2, Bool>,
    alpha: f64,
) -> Result<(Tensor<1>, Tensor<1>)> {
    let chosen_mask = crate::reduce::canonical_mask(chosen_mask);
    let rejected_mask = crate::reduce::canonical_mask(rejected_mask);
    check_in_closed("ld_alpha", alpha, 0.0, 1.0)?;
    check_same_shape(
        "chosen_mask",
        &chosen_mask.dims(),
        &chosen_logps.dims(),
        "chosen_logps",
    )?;
    check_same_shape(
        "rejected_mask",
        &rejected_mask.dims(),
        &rejected_logps.dims(),
        "rejected_logps",
    )?;
    check_finite(&chosen_logps, "chosen_logps")?;
    check_finite(&rejected_logps, "rejected_logps")?;
    if chosen_logps.dims()[0] != rejected_logps.dims()[0] {
        return Err(crate::Error::shape(
            "rejected_logps",
            format!(
                "batch size {} (same as chosen_logps)",
                chosen_logps.dims()[0]
            ),
            &rejected_logps.dims(),
        ));
    }
    let chosen_ones = mask_like(&chosen_logps, chosen_mask.clone());
    let rejected_ones = mask_like(&rejected_logps, rejected_mask.clone());
    let shared = chosen_ones
        .clone()
        .sum_dim(1)
        .min_pair(rejected_ones.clone().sum_dim(1)); // [B, 1]
    let weigh = |logps: Tensor<2>, ones: Tensor<2>, mask: Tensor<2, Bool>| {
        let position = ones.clone().cumsum(1); // 1-based index among valid tokens
        let is_tail = mask_like(&ones, position.greater(shared.clone()));
        let weights = ones - is_tail.clone() + is_tail.mul_scalar(alpha);
        zero_masked(logps * weights, mask)
            .sum_dim(1)
            .squeeze_dim::<1>(1)
    };
    Ok((
        weigh(chosen_logps, chosen_ones, chosen_mask),
        weigh(rejected_logps, rejected_ones, rejected_mask),
    ))
}
