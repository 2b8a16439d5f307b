//! Advantage estimation: GAE, discounted returns, group-relative (GRPO) and leave-one-out
//! (RLOO) baselines, masked whitening.
//!
//! Everything here runs as tensor ops on the caller's device. The reverse discounted scan of GAE
//! is a blocked Toeplitz matmul ([`discounted_reverse_cumsum`]): one small host loop over
//! `ceil(T / 128)` blocks, never over elements.

use burn::config::Config;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use super::constant_like;
use crate::distributed::MomentParts;
use crate::error::{
    Error, check_finite, check_finite_masked, check_in_closed, check_no_inf, check_non_empty,
    check_same_shape, unwrap_or_panic,
};
use crate::losses::Metrics;
use crate::reduce::{mask_like, masked_mean_eps, zero_masked};

/// torchtune's epsilon in `masked_mean` denominators and under the square root of `whiten`.
const TORCHTUNE_EPS: f64 = 1e-8;
/// TRL's epsilon added to the reward standard deviation (GRPO / RLOO).
const TRL_STD_EPS: f64 = 1e-4;
/// Block width of the blocked Toeplitz scan.
const SCAN_BLOCK: usize = 128;

// ---------------------------------------------------------------------------------------------
// Masked statistics and whitening (torchtune semantics)
// ---------------------------------------------------------------------------------------------

/// torchtune's `masked_mean(x, mask, dim)`: `sum(x * mask) / (sum(mask) + 1e-8)`, over all
/// elements (`dim = None`, output `[1]`) or along `dim` (output: the other dims, flattened).
///
/// # Panics
/// On the errors of [`try_masked_mean`].
pub fn masked_mean<const D: usize>(
    x: Tensor<D>,
    mask: Tensor<D, Bool>,
    dim: Option<usize>,
) -> Tensor<1> {
    unwrap_or_panic(try_masked_mean(x, mask, dim))
}

/// Non-panicking form of [`masked_mean`]: a mask of another shape ([`Error::Shape`] naming
/// `mask`), `dim >= D` ([`Error::Config`] naming `dim`); in checked mode a non-finite valid
/// element of `x` ([`Error::NonFinite`]).
pub fn try_masked_mean<const D: usize>(
    x: Tensor<D>,
    mask: Tensor<D, Bool>,
    dim: Option<usize>,
) -> crate::Result<Tensor<1>> {
    let mask = crate::reduce::canonical_mask(mask);
    check_same_shape("mask", &mask.dims(), &x.dims(), "x")?;
    if let Some(d) = dim
        && d >= D
    {
        return Err(Error::config(
            "dim",
            format!("must be < {D} (the rank of x)"),
            d,
        ));
    }
    crate::error::check_finite_masked(&x, &mask, "x")?;
    Ok(masked_mean_eps(x, mask, dim, TORCHTUNE_EPS))
}

/// torchtune's `masked_var(centered_values, mask, unbiased)`: `masked_mean(x^2)`, times the
/// Bessel factor `n / (n - 1)` with `n = sum(mask) + 1e-8` when `unbiased`. The input must
/// already be centered. Output `[1]`.
///
/// # Panics
/// On the errors of [`try_masked_var`].
pub fn masked_var<const D: usize>(
    centered: Tensor<D>,
    mask: Tensor<D, Bool>,
    unbiased: bool,
) -> Tensor<1> {
    unwrap_or_panic(try_masked_var(centered, mask, unbiased))
}

/// Non-panicking form of [`masked_var`]: a mask of another shape ([`Error::Shape`] naming
/// `mask`); in checked mode a non-finite valid element ([`Error::NonFinite`]).
pub fn try_masked_var<const D: usize>(
    centered: Tensor<D>,
    mask: Tensor<D, Bool>,
    unbiased: bool,
) -> crate::Result<Tensor<1>> {
    let mask = crate::reduce::canonical_mask(mask);
    check_same_shape("mask", &mask.dims(), &centered.dims(), "centered")?;
    crate::error::check_finite_masked(&centered, &mask, "centered")?;
    Ok(masked_var_unchecked(centered, mask, unbiased))
}

fn masked_var_unchecked<const D: usize>(
    centered: Tensor<D>,
    mask: Tensor<D, Bool>,
    unbiased: bool,
) -> Tensor<1> {
    let n = mask_like(&centered, mask.clone())
        .sum()
        .add_scalar(TORCHTUNE_EPS);
    let var = masked_mean_eps(centered.square(), mask, None, TORCHTUNE_EPS);
    if unbiased {
        // One valid element: n - 1 = 1e-8 in f64 but exactly 0 in f32 (0 * inf = NaN); use
        // torchtune's f64 value 1e-8 there.
        let denom = n.clone().sub_scalar(1.0);
        let denom = denom
            .clone()
            .mask_fill(denom.equal_elem(0.0), TORCHTUNE_EPS);
        var * n / denom
    } else {
        var
    }
}

/// Whether whitening keeps the mean, removes it, or is skipped.
///
/// torchtune and TRL use the same flag name with opposite meanings: torchtune's
/// `whiten(x, shift_mean=True)` **adds the mean back** (variance-normalized, mean kept:
/// [`KeepMean`](Self::KeepMean)); TRL's `masked_whiten(x, shift_mean=True)` returns zero-mean
/// values ([`ZeroMean`](Self::ZeroMean)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Whitening {
    /// `(x - mean) / sqrt(var + 1e-8)`: zero mean, unit variance (TRL PPO, OpenRLHF).
    ZeroMean,
    /// `(x - mean) / sqrt(var + 1e-8) + mean` (torchtune PPO's `whiten(shift_mean=True)`).
    KeepMean,
    /// No whitening.
    None,
}

/// Masked whitening with torchtune's formulas.
///
#[cfg_attr(
    doc,
    doc = r#"$$w = \frac{x - \mu}{\sqrt{\sigma^2 + 10^{-8}}}\;(+\mu \text{ with KeepMean})$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`w = (x - mu) / sqrt(var + 1e-8)` (`+ mu` with KeepMean)"
)]
///
/// With a mask: `mu` = [`masked_mean`], `var` = unbiased [`masked_var`] of `x - mu` (Bessel
/// factor with `n + 1e-8`). Without: the plain mean and unbiased variance over all elements
/// (a single element has variance 0 and whitens to 0).
/// Masked-out positions are whitened too (not zeroed); zero them yourself if needed.
///
/// # Shapes
/// - x: `[B, T]`, mask: `[B, T]` or none -> `[B, T]`
///
/// # Panics
/// On the errors of [`try_whiten`].
pub fn whiten(x: Tensor<2>, mask: Option<Tensor<2, Bool>>, mode: Whitening) -> Tensor<2> {
    unwrap_or_panic(try_whiten(x, mask, mode))
}

/// Non-panicking form of [`whiten`]: a mask of another shape ([`Error::Shape`] naming `mask`);
/// in checked mode a non-finite valid element of `x` ([`Error::NonFinite`]).
pub fn try_whiten(
    x: Tensor<2>,
    mask: Option<Tensor<2, Bool>>,
    mode: Whitening,
) -> crate::Result<Tensor<2>> {
    let mask = mask.map(crate::reduce::canonical_mask);
    if let Some(m) = &mask {
        check_same_shape("mask", &m.dims(), &x.dims(), "x")?;
        crate::error::check_finite_masked(&x, m, "x")?;
    } else {
        crate::error::check_finite(&x, "x")?;
    }
    Ok(whiten_unchecked(x, mask, mode))
}

pub(crate) fn whiten_unchecked(
    x: Tensor<2>,
    mask: Option<Tensor<2, Bool>>,
    mode: Whitening,
) -> Tensor<2> {
    if mode == Whitening::None {
        return x;
    }
    let (mean, var) = match mask {
        Some(mask) => {
            let mean = masked_mean_eps(x.clone(), mask.clone(), None, TORCHTUNE_EPS);
            let centered = x.clone() - mean.clone().unsqueeze::<2>();
            (mean, masked_var_unchecked(centered, mask, true))
        }
        None => {
            let n = x.dims().iter().product::<usize>() as f64;
            let mean = x.clone().mean();
            let centered = x.clone() - mean.clone().unsqueeze::<2>();
            // Bessel factor with n - 1 clamped to >= 1: a single element has variance 0
            // (not 0 / 0 = NaN), so it whitens to 0.
            (
                mean,
                centered.square().sum().mul_scalar(1.0 / (n - 1.0).max(1.0)),
            )
        }
    };
    let mean2 = mean.unsqueeze::<2>();
    let whitened = (x - mean2.clone())
        * var
            .add_scalar(TORCHTUNE_EPS)
            .sqrt()
            .recip()
            .unsqueeze::<2>();
    match mode {
        Whitening::KeepMean => whitened + mean2,
        _ => whitened,
    }
}

// ---------------------------------------------------------------------------------------------
// Discounted reverse scans
// ---------------------------------------------------------------------------------------------

/// Discounted reverse cumulative sum along dim 1:
#[cfg_attr(
    doc,
    doc = r#"$$y_t = \sum_{k \ge t} c^{\,k-t} x_k \qquad (y_t = x_t + c\, y_{t+1})$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`y_t = sum_{k >= t} c^(k - t) x_k` (`y_t = x_t + c y_{t+1}`)"
)]
///
/// Computed as a blocked upper-triangular Toeplitz matmul (blocks of 128 columns, one small
/// host loop over blocks carrying `y` at each block's start), so cost is `O(B T 128)` and there
/// is no per-element host loop. `discount` must be in `[0, 1]`.
///
/// # Shapes
/// - x: `[B, T]` -> `[B, T]`
///
/// # Panics
/// On the errors of [`try_discounted_reverse_cumsum`].
pub fn discounted_reverse_cumsum(x: Tensor<2>, discount: f64) -> Tensor<2> {
    unwrap_or_panic(try_discounted_reverse_cumsum(x, discount))
}

/// Non-panicking form of [`discounted_reverse_cumsum`]: `discount` outside `[0, 1]`
/// ([`Error::Config`]); in checked mode a non-finite `x` ([`Error::NonFinite`]).
pub fn try_discounted_reverse_cumsum(x: Tensor<2>, discount: f64) -> crate::Result<Tensor<2>> {
    check_in_closed("discount", discount, 0.0, 1.0)?;
    crate::error::check_finite(&x, "x")?;
    Ok(reverse_cumsum_unchecked(x, discount))
}

fn reverse_cumsum_unchecked(x: Tensor<2>, discount: f64) -> Tensor<2> {
    let [b, t] = x.dims();
    if t == 0 {
        return x;
    }
    let block = t.min(SCAN_BLOCK);
    // Transposed Toeplitz block: mt[j][i] = c^(j - i) for j >= i, else 0.
    let toeplitz = |k: usize| -> (Tensor<2>, Tensor<2>) {
        let mut m = vec![0.0; k * k];
        for j in 0..k {
            for i in 0..=j {
                m[j * k + i] = discount.powi((j - i) as i32);
            }
        }
        // Carry weights: w[i] = c^(k - i), multiplies y at the next block's first position.
        let w: Vec<f64> = (0..k).map(|i| discount.powi((k - i) as i32)).collect();
        (constant_like(&x, m, [k, k]), constant_like(&x, w, [1, k]))
    };
    let full = toeplitz(block);
    let mut blocks = Vec::with_capacity(t.div_ceil(block));
    let mut carry: Option<Tensor<2>> = None; // [B, 1]: y at the first position of the next block
    let mut end = t;
    while end > 0 {
        let start = end.saturating_sub(block);
        let k = end - start;
        let (mt, w) = if k == block {
            full.clone()
        } else {
            toeplitz(k)
        };
        let xb = x.clone().slice([0..b, start..end]);
        let mut yb = xb.matmul(mt);
        if let Some(c) = carry {
            yb = yb + c * w;
        }
        carry = Some(yb.clone().slice([0..b, 0..1]));
        blocks.push(yb);
        end = start;
    }
    blocks.reverse();
    Tensor::cat(blocks, 1)
}

/// REINFORCE returns `G_t = sum_{k >= t} gamma^(k - t) r_k` over valid positions (rewards at
/// masked-out positions count 0).
///
/// # Shapes
/// - rewards, mask: `[B, T]` -> `[B, T]` (0 where the mask is false)
///
/// # Panics
/// On the errors of [`try_discounted_returns`].
pub fn discounted_returns(rewards: Tensor<2>, mask: Tensor<2, Bool>, gamma: f64) -> Tensor<2> {
    unwrap_or_panic(try_discounted_returns(rewards, mask, gamma))
}

/// Non-panicking form of [`discounted_returns`]: a mask of another shape ([`Error::Shape`]
/// naming `mask`), `gamma` outside `[0, 1]` ([`Error::Config`]); in checked mode a non-finite
/// valid reward ([`Error::NonFinite`]).
pub fn try_discounted_returns(
    rewards: Tensor<2>,
    mask: Tensor<2, Bool>,
    gamma: f64,
) -> crate::Result<Tensor<2>> {
    let mask = crate::reduce::canonical_mask(mask);
    check_same_shape("mask", &mask.dims(), &rewards.dims(), "rewards")?;
    check_in_closed("gamma", gamma, 0.0, 1.0)?;
    crate::error::check_finite_masked(&rewards, &mask, "rewards")?;
    let r = zero_masked(rewards, mask.clone());
    Ok(zero_masked(reverse_cumsum_unchecked(r, gamma), mask))
}

// ---------------------------------------------------------------------------------------------
// GAE
// ---------------------------------------------------------------------------------------------

/// How GAE treats the mask in its recursion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GaeMasking {
    /// Rewards and values outside the mask are set to 0 before the recursion (TRL PPO), so the
    /// value beyond the last valid token of a right-padded row bootstraps to 0.
    ZeroOutside,
    /// The recursion runs over every position with the values as given; the mask is used only
    /// for whitening and zeroing afterwards (torchtune's `estimate_advantages`).
    IgnoreMask,
}

/// Configuration of [`Gae`] (generalized advantage estimation).
#[derive(Config, Debug)]
pub struct GaeConfig {
    /// Discount `gamma` in `[0, 1]`. Default 1.0 (TRL and torchtune PPO).
    #[config(default = 1.0)]
    pub gamma: f64,
    /// GAE `lambda` in `[0, 1]`. Default 0.95 (TRL and torchtune PPO).
    #[config(default = 0.95)]
    pub lam: f64,
    /// Mask handling in the recursion. Default [`GaeMasking::ZeroOutside`] (TRL): a padded
    /// position cannot leak value estimates into valid ones.
    #[config(default = "GaeMasking::ZeroOutside")]
    pub masking: GaeMasking,
    /// Whitening of the advantages. Default [`Whitening::ZeroMean`] (TRL / OpenRLHF: the usual
    /// PPO normalization); torchtune is [`Whitening::KeepMean`].
    #[config(default = "Whitening::ZeroMean")]
    pub whitening: Whitening,
}

impl GaeConfig {
    /// torchtune 0.6.1 `estimate_advantages`: mask ignored in the recursion, mean kept.
    pub fn torchtune(gamma: f64, lam: f64) -> Self {
        Self::new()
            .with_gamma(gamma)
            .with_lam(lam)
            .with_masking(GaeMasking::IgnoreMask)
            .with_whitening(Whitening::KeepMean)
    }

    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<Gae> {
        check_in_closed("gamma", self.gamma, 0.0, 1.0)?;
        check_in_closed("lam", self.lam, 0.0, 1.0)?;
        Ok(Gae {
            gamma: self.gamma,
            lam: self.lam,
            masking: self.masking,
            whitening: self.whitening,
        })
    }

    /// Panicking form of [`try_init`](Self::try_init).
    ///
    /// # Panics
    /// If `gamma` or `lam` is outside `[0, 1]`.
    pub fn init(&self) -> Gae {
        unwrap_or_panic(self.try_init())
    }
}

/// Generalized advantage estimation (see [`GaeConfig`]).
#[derive(Debug, Clone)]
pub struct Gae {
    gamma: f64,
    lam: f64,
    masking: GaeMasking,
    whitening: Whitening,
}

/// Result of [`Gae::forward`].
#[derive(Debug, Clone)]
pub struct GaeOutput {
    /// Advantages `[B, T]` (whitened as configured; 0 where the mask is false).
    pub advantages: Tensor<2>,
    /// Returns `[B, T]` = raw (unwhitened) advantages + values: the value-function targets.
    pub returns: Tensor<2>,
}

impl Gae {
    /// GAE over `[B, T]` rewards and values.
    ///
    #[cfg_attr(
        doc,
        doc = r#"$$\delta_t = r_t + \gamma V_{t+1} - V_t,\quad A_t = \sum_{k\ge t} (\gamma\lambda)^{k-t}\delta_k,\quad R_t = A_t + V_t$$"#
    )]
    #[cfg_attr(
        not(doc),
        doc = "`delta_t = r_t + gamma V_{t+1} - V_t`, `A_t = sum_{k>=t} (gamma lam)^(k-t) delta_k`, `R_t = A_t + V_t`"
    )]
    ///
    /// `V_T = 0` (no bootstrap past the last column). Then the advantages are whitened over
    /// the mask and zeroed outside it.
    ///
    /// # Shapes
    /// - rewards, values, mask: `[B, T]`
    pub fn try_forward(
        &self,
        rewards: Tensor<2>,
        values: Tensor<2>,
        mask: Option<Tensor<2, Bool>>,
    ) -> crate::Result<GaeOutput> {
        let mask = mask.map(crate::reduce::canonical_mask);
        check_same_shape("values", &values.dims(), &rewards.dims(), "rewards")?;
        if let Some(m) = &mask {
            check_same_shape("mask", &m.dims(), &rewards.dims(), "rewards")?;
        }
        let [rb, rt] = rewards.dims();
        check_non_empty(
            "rewards",
            rb * rt,
            &format!("shape {:?} has a zero dimension", [rb, rt]),
        )?;
        crate::error::check_dtype_like("values", &values, "rewards", &rewards)?;
        check_finite(&rewards, "rewards")?;
        check_finite(&values, "values")?;
        let (rewards, values) = match (&mask, self.masking) {
            (Some(m), GaeMasking::ZeroOutside) => (
                zero_masked(rewards, m.clone()),
                zero_masked(values, m.clone()),
            ),
            _ => (rewards, values),
        };
        let [b, t] = values.dims();
        let next_values = Tensor::cat(
            vec![
                values.clone().slice([0..b, 1..t]),
                Tensor::zeros_like(&values).slice([0..b, 0..1]),
            ],
            1,
        );
        let delta = rewards + next_values.mul_scalar(self.gamma) - values.clone();
        let raw = reverse_cumsum_unchecked(delta, self.gamma * self.lam);
        let returns = raw.clone() + values;
        let advantages = match mask {
            Some(m) => zero_masked(whiten_unchecked(raw, Some(m.clone()), self.whitening), m),
            None => whiten_unchecked(raw, None, self.whitening),
        };
        Ok(GaeOutput {
            advantages,
            returns,
        })
    }

    /// Panicking form of [`try_forward`](Self::try_forward).
    ///
    /// # Panics
    /// On the errors of [`try_forward`](Self::try_forward).
    pub fn forward(
        &self,
        rewards: Tensor<2>,
        values: Tensor<2>,
        mask: Option<Tensor<2, Bool>>,
    ) -> GaeOutput {
        unwrap_or_panic(self.try_forward(rewards, values, mask))
    }
}

// ---------------------------------------------------------------------------------------------
// NaN-aware statistics (TRL's nanmean / nanstd)
// ---------------------------------------------------------------------------------------------

/// NaN-aware mean and Bessel-corrected std along `dim` (kept, size 1). A slice with fewer than
/// two finite values has std NaN (as TRL's `nanstd`); with none, mean NaN.
fn nan_stats<const D: usize>(x: Tensor<D>, dim: usize) -> (Tensor<D>, Tensor<D>) {
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
fn is_zero_std<const D: usize>(std: Tensor<D>) -> Tensor<D, Bool> {
    std.abs().lower_equal_elem(1e-8)
}

fn nan_to_zero<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let nan = x.clone().is_nan();
    x.mask_fill(nan, 0.0)
}

/// Weighted NaN-sum over reward functions `[N, K] -> [N]` and the "scorable" mask (at least one
/// non-NaN reward); unscorable rows are NaN.
fn weighted_rewards(rewards_per_func: Tensor<2>, weights: &[f64]) -> Tensor<1> {
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
fn normalize_then_sum(
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

fn resolve_weights(weights: &Option<Vec<f64>>, k: usize) -> crate::Result<Vec<f64>> {
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

fn reward_name(names: &[String], k: usize) -> String {
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
fn validate_common(
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

fn check_groups(n: usize, g: usize) -> crate::Result<()> {
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
fn reward_metrics(
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

// ---------------------------------------------------------------------------------------------
// GRPO group-relative advantages
// ---------------------------------------------------------------------------------------------

/// Which standard deviation scales GRPO advantages (TRL `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's std (+1e-4). TRL default.
    Group,
    /// Divide by the batch std (+1e-4).
    Batch,
    /// No scaling (Dr. GRPO); the group std is still computed for `frac_reward_zero_std`.
    None,
}

/// How several reward functions combine (TRL `multi_objective_aggregation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardAggregation {
    /// Weighted NaN-sum of the functions, then group normalization. TRL default.
    SumThenNormalize,
    /// GDPO: normalize each function per group, weighted NaN-sum, then batch normalization.
    NormalizeThenSum,
}

/// Configuration of GRPO group-relative advantages (TRL `GRPOTrainer`).
#[derive(Config, Debug)]
pub struct GroupAdvantageConfig {
    /// Completions per prompt `G` (consecutive rows). Must divide the batch. TRL default 8.
    #[config(default = 8)]
    pub num_generations: usize,
    /// Std scaling. Default [`ScaleRewards::Group`].
    #[config(default = "ScaleRewards::Group")]
    pub scale_rewards: ScaleRewards,
    /// Multi-reward aggregation. Default [`RewardAggregation::SumThenNormalize`].
    #[config(default = "RewardAggregation::SumThenNormalize")]
    pub multi_objective_aggregation: RewardAggregation,
    /// One weight per reward function; `None` = all 1.
    pub reward_weights: Option<Vec<f64>>,
    /// Names for the `rewards/<name>/mean|std` metrics; missing names are `reward_<k>`.
    #[config(default = "Vec::new()")]
    pub reward_names: Vec<String>,
}

/// Result of [`GroupAdvantageConfig::forward`] / [`RlooAdvantageConfig::forward`].
#[derive(Debug, Clone)]
pub struct GroupAdvantages {
    /// Advantages `[N]` (0 for unscorable completions).
    pub advantages: Tensor<1>,
    /// Metrics: `reward`, `reward_std`, `frac_reward_zero_std`, `rewards/<name>/mean|std`
    /// (RLOO adds `kl` when `beta != 0`). A std over fewer than two scorable values is 0
    /// (TRL's `nanstd`: NaN).
    pub metrics: Metrics,
}

impl GroupAdvantages {
    /// The advantages in the shape [`Rollout`](super::Rollout) takes: `[N, 1]` (one per
    /// sequence, broadcast over its tokens by the loss).
    pub fn for_rollout(&self) -> Tensor<2> {
        let [n] = self.advantages.dims();
        self.advantages.clone().reshape([n, 1])
    }
}

impl GroupAdvantageConfig {
    /// Checks what can be checked without the batch: `num_generations >= 1` and finite
    /// `reward_weights` ([`Error::Config`]). The number of reward functions (and so the length
    /// of `reward_weights`) and the divisibility of the batch are checked at forward.
    pub fn validate(&self) -> crate::Result<()> {
        validate_common(self.num_generations, 1, &self.reward_weights)
    }

    /// Validates the config ([`validate`](Self::validate)) and returns it as the op, so a bad
    /// config is rejected at construction rather than at the first forward.
    pub fn try_init(&self) -> crate::Result<Self> {
        self.validate()?;
        Ok(self.clone())
    }

    /// Panicking form of [`try_init`](Self::try_init).
    ///
    /// # Panics
    /// On the errors of [`validate`](Self::validate).
    pub fn init(&self) -> Self {
        unwrap_or_panic(self.try_init())
    }

    /// Group-relative advantages from per-function rewards.
    ///
    #[cfg_attr(
        doc,
        doc = r#"$$A_i = \frac{R_i - \operatorname{mean}_{g(i)} R}{\operatorname{std}_{g(i)} R + 10^{-4}}$$"#
    )]
    #[cfg_attr(
        not(doc),
        doc = "`A_i = (R_i - mean_group(R)) / (std_group(R) + 1e-4)`"
    )]
    ///
    /// `R_i` = weighted NaN-sum over reward functions (a NaN is a function that returned
    /// nothing); a row where every function is NaN is unscorable: excluded from the statistics
    /// and given advantage 0. std is Bessel-corrected; a group with zero std gives advantage 0.
    ///
    /// # Shapes
    /// - rewards_per_func: `[N, K]` (N = prompts x G, each prompt's G completions consecutive)
    ///
    /// Errors: `N = 0` ([`Error::Empty`]), `num_generations` not dividing `N` or
    /// `reward_weights` not finite / not `K` long ([`Error::Config`]); in checked mode an
    /// infinite reward ([`Error::NonFinite`]; NaN means "not scored" and is allowed).
    pub fn try_forward(&self, rewards_per_func: Tensor<2>) -> crate::Result<GroupAdvantages> {
        self.forward_impl(rewards_per_func, None)
    }

    /// Whether the advantages depend on batch-wide statistics (`scale_rewards = batch`, or
    /// the GDPO batch normalization of `normalize_then_sum`); those need the cross-rank form
    /// below under data parallelism.
    pub fn is_batch_coupled(&self) -> bool {
        self.scale_rewards == ScaleRewards::Batch
            || self.multi_objective_aggregation == RewardAggregation::NormalizeThenSum
    }

    /// This shard's contribution to the batch statistics (one host read): the moments of the
    /// weighted rewards (`sum_then_normalize`) or of the per-group-normalized weighted sums
    /// (`normalize_then_sum`), NaN (unscorable) rows excluded. Sum them over shards and ranks
    /// ([`crate::distributed`]) and pass the total to
    /// [`try_forward_with_batch_stats`](Self::try_forward_with_batch_stats).
    ///
    /// # Shapes
    /// - rewards_per_func: `[N, K]`, whole groups (a prompt's `G` completions on one shard)
    pub fn batch_reward_parts(&self, rewards_per_func: Tensor<2>) -> crate::Result<MomentParts> {
        let [n, k] = rewards_per_func.dims();
        let g = self.num_generations;
        check_groups(n, g)?;
        let weights = resolve_weights(&self.reward_weights, k)?;
        let values = match self.multi_objective_aggregation {
            RewardAggregation::SumThenNormalize => weighted_rewards(rewards_per_func, &weights),
            RewardAggregation::NormalizeThenSum => {
                normalize_then_sum(rewards_per_func, &weights, n / g, g)
            }
        };
        Ok(MomentParts::from_non_nan(values))
    }

    /// [`try_forward`](Self::try_forward) with the batch mean and Bessel std taken from
    /// `batch` (the [`batch_reward_parts`](Self::batch_reward_parts) of the whole step, summed
    /// over shards and ranks) instead of this shard. Group statistics stay local (groups are
    /// never split). On the whole batch's own parts this equals `try_forward`.
    pub fn try_forward_with_batch_stats(
        &self,
        rewards_per_func: Tensor<2>,
        batch: &MomentParts,
    ) -> crate::Result<GroupAdvantages> {
        self.forward_impl(rewards_per_func, Some(*batch))
    }

    fn forward_impl(
        &self,
        rewards_per_func: Tensor<2>,
        batch: Option<MomentParts>,
    ) -> crate::Result<GroupAdvantages> {
        let [n, k] = rewards_per_func.dims();
        let g = self.num_generations;
        check_groups(n, g)?;
        let weights = resolve_weights(&self.reward_weights, k)?;
        check_no_inf(&rewards_per_func, "rewards_per_func")?;
        let p = n / g;
        let (advantages, std) = match self.multi_objective_aggregation {
            RewardAggregation::SumThenNormalize => {
                let rewards = weighted_rewards(rewards_per_func.clone(), &weights);
                let grouped = rewards.clone().reshape([p, g]);
                let (mean_g, std_g) = nan_stats(grouped.clone(), 1);
                let centered = (grouped - mean_g).reshape([n]);
                let std = match self.scale_rewards {
                    ScaleRewards::Group | ScaleRewards::None if g > 1 => {
                        std_g.expand([p, g]).reshape([n])
                    }
                    ScaleRewards::Group | ScaleRewards::None => Tensor::zeros_like(&rewards),
                    ScaleRewards::Batch if batch.is_some() => {
                        let std = batch.map_or(f64::NAN, |b| b.std_unbiased());
                        Tensor::zeros_like(&rewards).add_scalar(std)
                    }
                    ScaleRewards::Batch if n > 1 => nan_stats(rewards.clone(), 0).1.expand([n]),
                    ScaleRewards::Batch => Tensor::zeros_like(&rewards),
                };
                let adv = match self.scale_rewards {
                    ScaleRewards::None => centered,
                    _ => centered / std.clone().add_scalar(TRL_STD_EPS),
                };
                (adv, std)
            }
            RewardAggregation::NormalizeThenSum => {
                let summed = normalize_then_sum(rewards_per_func.clone(), &weights, p, g);
                let (mean, std) = match batch {
                    Some(b) => (
                        Tensor::zeros_like(&summed).add_scalar(b.mean()),
                        Tensor::zeros_like(&summed).add_scalar(b.std_unbiased()),
                    ),
                    None => {
                        let (mean, std) = nan_stats(summed.clone(), 0);
                        let std = if n > 1 {
                            std.expand([n])
                        } else {
                            Tensor::zeros_like(&summed)
                        };
                        (mean.expand([n]), std)
                    }
                };
                ((summed - mean) / std.clone().add_scalar(TRL_STD_EPS), std)
            }
        };
        let advantages = nan_to_zero(advantages);
        let mut metrics = Metrics::new();
        let weighted = weighted_rewards(rewards_per_func.clone(), &weights);
        reward_metrics(
            &mut metrics,
            &rewards_per_func,
            &weighted,
            &self.reward_names,
        );
        let zero_std = mask_like(&std, is_zero_std(std.clone())).mean();
        metrics.insert("frac_reward_zero_std", zero_std);
        Ok(GroupAdvantages {
            advantages,
            metrics,
        })
    }

    /// Panicking form of [`try_forward`](Self::try_forward).
    ///
    /// # Panics
    /// If `num_generations` does not divide `N` or the weights do not match `K`.
    pub fn forward(&self, rewards_per_func: Tensor<2>) -> GroupAdvantages {
        unwrap_or_panic(self.try_forward(rewards_per_func))
    }
}

// ---------------------------------------------------------------------------------------------
// RLOO leave-one-out advantages
// ---------------------------------------------------------------------------------------------

/// Configuration of RLOO advantages (TRL `RLOOTrainer`).
#[derive(Config, Debug)]
pub struct RlooAdvantageConfig {
    /// Completions per prompt `G` (consecutive rows). Must be >= 2 and divide the batch.
    /// TRL default 2.
    #[config(default = 2)]
    pub num_generations: usize,
    /// KL coefficient: `R_i -= beta * sum_t (old_t - ref_t)` (first-order, can be negative).
    /// TRL default 0.05.
    #[config(default = 0.05)]
    pub beta: f64,
    /// Batch-normalize the advantages `(a - mean) / (std + 1e-4)`. Default false.
    #[config(default = false)]
    pub normalize_advantages: bool,
    /// Clip the summed rewards to `[lo, hi]` before the KL term. Default none.
    pub reward_clip_range: Option<[f64; 2]>,
    /// One weight per reward function; `None` = all 1.
    pub reward_weights: Option<Vec<f64>>,
    /// Names for the `rewards/<name>/mean|std` metrics; missing names are `reward_<k>`.
    #[config(default = "Vec::new()")]
    pub reward_names: Vec<String>,
}

/// Result of [`RlooAdvantageConfig::forward`].
#[derive(Debug, Clone)]
pub struct RlooAdvantages {
    /// Advantages `[N]` and metrics.
    pub group: GroupAdvantages,
    /// Sequence log-probs at generation time `sum_t old_t * mask` `[N]` (the `old_logps` of the
    /// RLOO loss).
    pub old_logps: Tensor<1>,
}

impl RlooAdvantageConfig {
    /// Checks what can be checked without the batch: `num_generations >= 2`, finite `beta`
    /// and `reward_weights`, a finite `reward_clip_range` with `lo <= hi` ([`Error::Config`]).
    pub fn validate(&self) -> crate::Result<()> {
        validate_common(self.num_generations, 2, &self.reward_weights)?;
        if !self.beta.is_finite() {
            return Err(Error::config("beta", "must be finite", self.beta));
        }
        if let Some([lo, hi]) = self.reward_clip_range
            && !(lo.is_finite() && hi.is_finite() && lo <= hi)
        {
            return Err(Error::config(
                "reward_clip_range",
                "must be finite with lo <= hi",
                format!("[{lo}, {hi}]"),
            ));
        }
        Ok(())
    }

    /// Validates the config ([`validate`](Self::validate)) and returns it as the op, so a bad
    /// config is rejected at construction rather than at the first forward.
    pub fn try_init(&self) -> crate::Result<Self> {
        self.validate()?;
        Ok(self.clone())
    }

    /// Panicking form of [`try_init`](Self::try_init).
    ///
    /// # Panics
    /// On the errors of [`validate`](Self::validate).
    pub fn init(&self) -> Self {
        unwrap_or_panic(self.try_init())
    }

    /// Leave-one-out advantages.
    ///
    #[cfg_attr(
        doc,
        doc = r#"$$A_i = R_i - \frac{\sum_{j \in g(i)} R_j - R_i}{|g(i)| - 1}$$"#
    )]
    #[cfg_attr(
        not(doc),
        doc = "`A_i = R_i - (sum_{j in group} R_j - R_i) / (count - 1)`"
    )]
    ///
    /// NaN-aware like [`GroupAdvantageConfig`]: the baseline averages the scorable siblings; an
    /// unscorable row or a group with one scorable completion gets advantage 0.
    ///
    /// # Shapes
    /// - rewards_per_func: `[N, K]`; old_logps, ref_logps (required when `beta != 0`), mask: `[N, C]`
    ///
    /// Errors: as [`GroupAdvantageConfig::try_forward`], plus `num_generations < 2`, a
    /// non-finite `beta` or an invalid `reward_clip_range` ([`Error::Config`]), shape
    /// mismatches ([`Error::Shape`]); in checked mode non-finite `old_logps` / `ref_logps`.
    pub fn try_forward(
        &self,
        rewards_per_func: Tensor<2>,
        old_logps: Tensor<2>,
        ref_logps: Option<Tensor<2>>,
        mask: Tensor<2, Bool>,
    ) -> crate::Result<RlooAdvantages> {
        let mask = crate::reduce::canonical_mask(mask);
        let [n, k] = rewards_per_func.dims();
        let g = self.num_generations;
        check_groups(n, g)?;
        check_same_shape("mask", &mask.dims(), &old_logps.dims(), "old_logps")?;
        if old_logps.dims()[0] != n {
            return Err(Error::shape(
                "old_logps",
                format!("[{n}, C] (one row per completion)"),
                &old_logps.dims(),
            ));
        }
        if g < 2 {
            return Err(Error::config(
                "num_generations",
                "must be >= 2 for RLOO (the baseline leaves one completion out)",
                g,
            ));
        }
        self.validate()?;
        let weights = resolve_weights(&self.reward_weights, k)?;
        crate::error::check_dtype_like_opt(
            "ref_logps",
            ref_logps.as_ref(),
            "old_logps",
            &old_logps,
        )?;
        crate::error::check_dtype_like(
            "rewards_per_func",
            &rewards_per_func,
            "old_logps",
            &old_logps,
        )?;
        check_no_inf(&rewards_per_func, "rewards_per_func")?;
        check_finite_masked(&old_logps, &mask, "old_logps")?;
        if let Some(r) = &ref_logps {
            check_finite_masked(r, &mask, "ref_logps")?;
        }
        let p = n / g;
        let mut metrics = Metrics::new();
        let raw = weighted_rewards(rewards_per_func.clone(), &weights);
        let mut rewards = raw.clone();
        if let Some([lo, hi]) = self.reward_clip_range {
            rewards = rewards.clamp(lo, hi);
        }
        if self.beta != 0.0 {
            let reference = ref_logps.ok_or_else(|| Error::MissingInput {
                arg: "ref_logps",
                needed_by: "beta != 0 (the KL penalty in the RLOO rewards)".into(),
            })?;
            check_same_shape(
                "ref_logps",
                &reference.dims(),
                &old_logps.dims(),
                "old_logps",
            )?;
            let per_token_kl = zero_masked(old_logps.clone() - reference, mask.clone());
            let kl_seq = per_token_kl.clone().sum_dim(1).reshape([n]);
            rewards = rewards - kl_seq.mul_scalar(self.beta);
            let count = mask_like(&per_token_kl, mask.clone()).sum().clamp_min(1.0);
            metrics.insert("kl", per_token_kl.sum() / count);
        }
        let grouped = rewards.clone().reshape([p, g]);
        let (_, std_g) = nan_stats(grouped.clone(), 1);
        let std_g = if g > 1 {
            std_g
        } else {
            Tensor::zeros_like(&std_g)
        };
        let valid = grouped.clone().is_nan().bool_not();
        let count = mask_like(&grouped, valid.clone()).sum_dim(1);
        let sum = zero_masked(grouped.clone(), valid).sum_dim(1);
        let mut advantages = if g > 1 {
            let baseline = (sum - grouped.clone()) / count.sub_scalar(1.0);
            (grouped - baseline).reshape([n])
        } else {
            Tensor::zeros_like(&rewards)
        };
        if self.normalize_advantages {
            let (mean, std) = nan_stats(advantages.clone(), 0);
            advantages = (advantages - mean) / std.add_scalar(TRL_STD_EPS);
        }
        let advantages = nan_to_zero(advantages);
        reward_metrics(&mut metrics, &rewards_per_func, &raw, &self.reward_names);
        let zero_std = mask_like(&std_g, is_zero_std(std_g.clone())).mean();
        metrics.insert("frac_reward_zero_std", zero_std);
        let old_seq = zero_masked(old_logps, mask).sum_dim(1).reshape([n]);
        Ok(RlooAdvantages {
            group: GroupAdvantages {
                advantages,
                metrics,
            },
            old_logps: old_seq,
        })
    }

    /// Panicking form of [`try_forward`](Self::try_forward).
    ///
    /// # Panics
    /// On invalid groups, weights or shapes, or `beta != 0` without `ref_logps`.
    pub fn forward(
        &self,
        rewards_per_func: Tensor<2>,
        old_logps: Tensor<2>,
        ref_logps: Option<Tensor<2>>,
        mask: Tensor<2, Bool>,
    ) -> RlooAdvantages {
        unwrap_or_panic(self.try_forward(rewards_per_func, old_logps, ref_logps, mask))
    }
}
