//! Reward bookkeeping shared by the group (GRPO) and leave-one-out (RLOO) advantages:
//! NaN-aware statistics (TRL's `nanmean` / `nanstd`), reward weights, group checks and the
//! `reward*` metrics.
//!
#![cfg_attr(
    doc,
    doc = r#"$$R_i = \sum_k w_k\, r_{ik}\ (\text{NaN cells skipped}),\qquad \operatorname{std} = \sqrt{\tfrac{\sum_j (R_j - \bar R)^2}{n - 1}}$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`R_i = sum_k w_k r_ik` (NaN cells skipped), `std = sqrt(sum_j (R_j - mean)^2 / (n - 1))`"
)]
//!
//! Shapes: rewards per function `[N, K]` -> weighted rewards `[N]`. A row where every
//! function is NaN is unscorable (NaN, excluded from the statistics).
//!
//! Anchor: TRL 1.16 `GRPOTrainer._generate_and_score_completions` / `RLOOTrainer._generate_and_score_completions`
//! (`nanmean`, `nanstd` in `trl.trainer.utils`). Paper: Shao et al., *DeepSeekMath*
//! (GRPO), <https://arxiv.org/abs/2402.03300>.
//!
//! Golden value: `fixtures/grpo/adv_group_G4.json` (TRL `_generate_and_score_completions`,
//! `num_generations = 4`) logs `reward_std = 0.49132374613002233`.

use burn::tensor::{Bool, Tensor};

use super::super::constant_like;
use super::TRL_STD_EPS;
use crate::error::{Error, check_non_empty};
use crate::losses::Metrics;
use crate::reduce::{mask_like, zero_masked};

/// NaN-aware mean and Bessel-corrected std along `dim` (kept, size 1). A slice with fewer than
/// two finite values has std NaN (as TRL's `nanstd`); with none, mean NaN.
pub(super) fn nan_stats<const D: usize>(x: Tensor<D>, dim: usize) -> (Tensor<D>, Tensor<D>) {
    let valid = x.clone().is_nan().bool_not();
    let x0 = zero_masked(x, valid.clone());
    let count = mask_like(&x0, valid.clone()).sum_dim(dim);
    let mean = x0.clone().sum_dim(dim) / count.clone();
    let sq = zero_masked(x0 - mean.clone(), valid).square().sum_dim(dim);
    let std = (sq / count.clone().sub_scalar(1.0)).sqrt();
    let std = std.mask_fill(count.lower_equal_elem(1.0), f64::NAN);
    (mean, std)
}

/// `|std| <= 1e-8` (torch's `isclose(std, 0)`); NaN is not close.
pub(super) fn is_zero_std<const D: usize>(std: Tensor<D>) -> Tensor<D, Bool> {
    std.abs().lower_equal_elem(1e-8)
}

pub(super) fn nan_to_zero<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let nan = x.clone().is_nan();
    x.mask_fill(nan, 0.0)
}

/// Weighted NaN-sum over reward functions `[N, K] -> [N]` and the "scorable" mask (at least one
/// non-NaN reward); unscorable rows are NaN.
pub(super) fn weighted_rewards(rewards_per_func: Tensor<2>, weights: &[f64]) -> Tensor<1> {
    let [n, k] = rewards_per_func.dims();
    let valid = rewards_per_func.clone().is_nan().bool_not();
    let w = constant_like(&rewards_per_func, weights.to_vec(), [1, k]);
    let summed = zero_masked(rewards_per_func, valid.clone()) * w;
    let scorable = valid.any_dim(1);
    summed
        .sum_dim(1)
        .mask_fill(scorable.bool_not(), f64::NAN)
        .reshape([n])
}

/// GDPO: per-group normalization of each reward function, then the weighted NaN-sum `[N]`
/// (NaN for a fully unscorable row).
pub(super) fn normalize_then_sum(
    rewards_per_func: Tensor<2>,
    weights: &[f64],
    p: usize,
    g: usize,
) -> Tensor<1> {
    let [n, k] = rewards_per_func.dims();
    let grouped = rewards_per_func.clone().reshape([p, g, k]);
    let (mean_k, std_k) = nan_stats(grouped.clone(), 1);
    let std_k = if g > 1 {
        std_k
    } else {
        Tensor::zeros_like(&mean_k)
    };
    let normed = ((grouped - mean_k) / std_k.add_scalar(TRL_STD_EPS)).reshape([n, k]);
    let scorable = rewards_per_func.is_nan().bool_not().any_dim(1).reshape([n]);
    let summed = weighted_rewards(normed, weights);
    // A row with NaN only in some normalized cells keeps its partial sum; a fully
    // unscorable row is NaN (weighted_rewards already does both).
    summed.mask_fill(scorable.bool_not(), f64::NAN)
}

pub(super) fn resolve_weights(weights: &Option<Vec<f64>>, k: usize) -> crate::Result<Vec<f64>> {
    match weights {
        None => Ok(vec![1.0; k]),
        Some(w) if w.iter().any(|x| !x.is_finite()) => Err(Error::config(
            "reward_weights",
            "must be finite",
            format!("{w:?}"),
        )),
        Some(w) if w.len() == k => Ok(w.clone()),
        Some(w) => Err(Error::config(
            "reward_weights",
            format!("must have one weight per reward function ({k})"),
            format!("{w:?}"),
        )),
    }
}

pub(super) fn reward_name(names: &[String], k: usize) -> String {
    names
        .get(k)
        .cloned()
        .unwrap_or_else(|| format!("reward_{k}"))
}

/// TRL's `reward_weights` as TRL applies them: `GRPOTrainer` / `RLOOTrainer` keep the weights
/// in a float32 tensor (`torch.tensor(args.reward_weights, dtype=torch.float32)`), so the
/// factors they multiply by are the float32 roundings of the configured values. Pass the
/// result to `with_reward_weights` to reproduce TRL's advantages to float64 precision.
pub fn trl_reward_weights(weights: &[f64]) -> Vec<f64> {
    weights.iter().map(|&w| w as f32 as f64).collect()
}

/// The batch-independent checks shared by the group and RLOO advantage configs.
pub(super) fn validate_common(
    num_generations: usize,
    min_generations: usize,
    reward_weights: &Option<Vec<f64>>,
) -> crate::Result<()> {
    if num_generations < min_generations {
        return Err(Error::config(
            "num_generations",
            format!("must be >= {min_generations}"),
            num_generations,
        ));
    }
    if let Some(w) = reward_weights
        && (w.is_empty() || w.iter().any(|x| !x.is_finite()))
    {
        return Err(Error::config(
            "reward_weights",
            "must be finite, one per reward function",
            format!("{w:?}"),
        ));
    }
    Ok(())
}

pub(super) fn check_groups(n: usize, g: usize) -> crate::Result<()> {
    check_non_empty("rewards_per_func", n, "the batch has no completion (N = 0)")?;
    if g == 0 || !n.is_multiple_of(g) {
        return Err(Error::config(
            "num_generations",
            format!("must be >= 1 and divide the number of completions ({n})"),
            g,
        ));
    }
    Ok(())
}

/// Per-function `rewards/<name>/mean|std` and the `reward` / `reward_std` of the weighted sum.
pub(super) fn reward_metrics(
    metrics: &mut Metrics,
    rewards_per_func: &Tensor<2>,
    weighted: &Tensor<1>,
    names: &[String],
) {
    let [_, k] = rewards_per_func.dims();
    let (mean_k, std_k) = nan_stats(rewards_per_func.clone(), 0);
    for i in 0..k {
        let name = reward_name(names, i);
        metrics.insert(
            format!("rewards/{name}/mean"),
            mean_k.clone().slice([0..1, i..i + 1]).reshape([1]),
        );
        metrics.insert(
            format!("rewards/{name}/std"),
            nan_to_zero(std_k.clone().slice([0..1, i..i + 1]).reshape([1])),
        );
    }
    let (mean, std) = nan_stats(weighted.clone(), 0);
    metrics.insert("reward", mean);
    // One scorable value: std 0 (TRL's nanstd gives NaN, which poisons averaged logs).
    metrics.insert("reward_std", nan_to_zero(std));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, t, v};
    use burn::tensor::Device;

    #[test]
    fn nan_cells_are_skipped_and_unscorable_rows_are_nan() {
        let device = Device::flex();
        let r = t(&[1.0, f64::NAN, f64::NAN, f64::NAN, 2.0, 3.0], &device).reshape([3, 2]);
        let w = v(weighted_rewards(r, &[0.5, 2.0]));
        assert_close(&w[..1], &[0.5]);
        assert!(w[1].is_nan());
        assert_close(&w[2..], &[7.0]);
        assert_eq!(trl_reward_weights(&[0.1]), vec![0.1f32 as f64]);
    }
}
