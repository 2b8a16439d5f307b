//! GRPO group-relative advantages (TRL `GRPOTrainer`), including GDPO's
//! normalize-then-sum and batch-wide scaling.
//!
#![cfg_attr(
    doc,
    doc = r#"$$A_i = \frac{R_i - \operatorname{mean}_{g(i)} R}{\operatorname{std}_{g(i)} R + 10^{-4}}$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`A_i = (R_i - mean_group(R)) / (std_group(R) + 1e-4)`"
)]
//!
//! Shapes: rewards per function `[N, K]` (`N` = prompts x `G`, a prompt's `G` completions
//! consecutive) -> advantages `[N]`.
//!
//! Anchor: TRL 1.16 `GRPOTrainer._generate_and_score_completions` (`scale_rewards`,
//! `multi_objective_aggregation`). Papers: GRPO, <https://arxiv.org/abs/2402.03300>;
//! Dr. GRPO (`scale_rewards = none`), <https://arxiv.org/abs/2503.20783>.
//!
//! Golden value: `fixtures/grpo/adv_group_G4.json` (TRL `_generate_and_score_completions`,
//! `num_generations = 4`, `scale_rewards = "group"`, float64) gives
//! `advantages[0] = -1.0427411574149783`.

use burn::config::Config;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::TRL_STD_EPS;
use super::rewards::{
    check_groups, is_zero_std, nan_stats, nan_to_zero, normalize_then_sum, resolve_weights,
    reward_metrics, validate_common, weighted_rewards,
};
use crate::distributed::MomentParts;
use crate::error::check_no_inf;
use crate::losses::Metrics;
use crate::reduce::mask_like;

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

/// Result of [`GroupAdvantageConfig::forward`] / [`RlooAdvantageConfig::forward`](crate::rl::RlooAdvantageConfig::forward).
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
    /// The advantages in the shape [`Rollout`](crate::rl::Rollout) takes: `[N, 1]` (one per
    /// sequence, broadcast over its tokens by the loss).
    pub fn for_rollout(&self) -> Tensor<2> {
        let [n] = self.advantages.dims();
        self.advantages.clone().reshape([n, 1])
    }
}

impl GroupAdvantageConfig {
    /// Checks what can be checked without the batch: `num_generations >= 1` and finite
    /// `reward_weights` ([`Error::Config`](crate::Error::Config)). The number of reward functions (and so the length
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

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> Self = try_init;
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
    /// Errors: `N = 0` ([`Error::Empty`](crate::Error::Empty)), `num_generations` not dividing `N` or
    /// `reward_weights` not finite / not `K` long ([`Error::Config`](crate::Error::Config)); in checked mode an
    /// infinite reward ([`Error::NonFinite`](crate::Error::NonFinite); NaN means "not scored" and is allowed).
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

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(&self, rewards_per_func: Tensor<2>) -> GroupAdvantages = try_forward;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, t, v};
    use burn::tensor::Device;

    #[test]
    fn group_advantages_are_standardized_within_the_group() {
        let device = Device::flex();
        // One group of two: mean 2, Bessel std sqrt(2).
        let rewards = t(&[1.0, 3.0], &device).reshape([2, 1]);
        let out = GroupAdvantageConfig::new()
            .with_num_generations(2)
            .init()
            .forward(rewards);
        let a = 1.0 / (2f64.sqrt() + 1e-4);
        assert_close(&v(out.advantages), &[-a, a]);
    }
}
