//! RLOO leave-one-out advantages (TRL `RLOOTrainer`).
//!
#![cfg_attr(
    doc,
    doc = r#"$$R_i = \textstyle\sum_k w_k r_{ik} - \beta \sum_t m_t(\text{old}_t - \text{ref}_t),\qquad A_i = R_i - \frac{\sum_{j \in g(i)} R_j - R_i}{|g(i)| - 1}$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`R_i = sum_k w_k r_ik - beta sum_t m_t (old_t - ref_t)`, `A_i = R_i - (sum_{j in group} R_j - R_i) / (count - 1)`"
)]
//!
//! Shapes: rewards per function `[N, K]`, old / ref log-probs and mask `[N, C]` -> advantages
//! `[N]`, sequence `old_logps` `[N]`.
//!
//! Anchor: TRL 1.16 `RLOOTrainer._generate_and_score_completions`. Paper: Ahmadian et al.,
//! *Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback
//! in LLMs*, <https://arxiv.org/abs/2402.14740>.
//!
//! Golden value: `fixtures/rloo/adv_beta0.json` (TRL `_generate_and_score_completions`,
//! `num_generations = 4`, `beta = 0`, float64) gives `advantages[0] = -0.8459434409936268`
//! and `old_logps[0] = -15.69907940911797`.

use burn::config::Config;
use burn::tensor::{Bool, Tensor};

use super::TRL_STD_EPS;
use super::group::GroupAdvantages;
use super::rewards::{
    check_groups, is_zero_std, nan_stats, nan_to_zero, resolve_weights, reward_metrics,
    validate_common, weighted_rewards,
};
use crate::error::{Error, check_finite_masked, check_no_inf, check_same_shape};
use crate::losses::Metrics;
use crate::reduce::{MeanDenominator, mask_like, masked_mean_with, zero_masked};

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

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> Self = try_init;
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
    /// NaN-aware like [`GroupAdvantageConfig`](crate::rl::GroupAdvantageConfig): the baseline averages the scorable siblings; an
    /// unscorable row or a group with one scorable completion gets advantage 0.
    ///
    /// # Shapes
    /// - rewards_per_func: `[N, K]`; old_logps, ref_logps (required when `beta != 0`), mask: `[N, C]`
    ///
    /// Errors: as [`GroupAdvantageConfig::try_forward`](crate::rl::GroupAdvantageConfig::try_forward), plus `num_generations < 2`, a
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
            let kl = masked_mean_with(
                per_token_kl,
                mask.clone(),
                None,
                MeanDenominator::AtLeastOne,
            );
            metrics.insert("kl", kl);
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

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(
            &self,
            rewards_per_func: Tensor<2>,
            old_logps: Tensor<2>,
            ref_logps: Option<Tensor<2>>,
            mask: Tensor<2, Bool>,
        ) -> RlooAdvantages = try_forward;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, t, v};
    use burn::tensor::Device;

    #[test]
    fn rloo_baseline_leaves_one_out() {
        let device = Device::flex();
        // Rewards [1, 2, 6]: baselines (2 + 6) / 2, (1 + 6) / 2, (1 + 2) / 2.
        let rewards = t(&[1.0, 2.0, 6.0], &device).reshape([3, 1]);
        let old = t(&[-1.0, -2.0, -3.0], &device).reshape([3, 1]);
        let mask = old.clone().lower_elem(0.0);
        let out = RlooAdvantageConfig::new()
            .with_num_generations(3)
            .with_beta(0.0)
            .init()
            .forward(rewards, old, None, mask);
        assert_close(&v(out.group.advantages), &[-3.0, -1.5, 4.5]);
        assert_close(&v(out.old_logps), &[-1.0, -2.0, -3.0]);
    }
}
