//! GRPO / RLOO updates straight from the sampler's output.

use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::generation::Generation;
use super::model::CausalLm;
use super::scoring::Scores;
use crate::error::{Error, check_positive};
use crate::reduce::masked_row_sum;
use crate::rl::{
    GroupAdvantageConfig, GrpoLoss, GrpoLossConfig, GrpoLossInput, RlooAdvantageConfig,
    ScaleRewards,
};

/// How advantages are computed from a prompt's group of rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// GRPO: `(R - mean_group) / (std_group + 1e-4)` ([`GroupAdvantageConfig`]).
    Grpo,
    /// RLOO: `R - mean of the other completions` ([`RlooAdvantageConfig`], no KL in the
    /// reward: the KL is the loss's `beta` term).
    Rloo,
}

/// Configuration of [`GrpoStep`] (TRL `GRPOConfig` names).
#[derive(Config, Debug)]
pub struct GrpoStepConfig {
    /// The GRPO loss (`beta`, `epsilon`, `loss_type`, ...). `beta != 0` makes the step
    /// compute reference log-probs.
    pub loss: GrpoLossConfig,
    /// Advantage estimator. Default [`AdvantageEstimator::Grpo`].
    #[config(default = "AdvantageEstimator::Grpo")]
    pub advantage_estimator: AdvantageEstimator,
    /// GRPO std scaling. Default [`ScaleRewards::Group`].
    #[config(default = "ScaleRewards::Group")]
    pub scale_rewards: ScaleRewards,
    /// Learning rate. Default 1e-6 (TRL).
    #[config(default = 1e-6)]
    pub learning_rate: f64,
    /// Optimizer steps on the same generation (TRL `num_iterations`, mu). Default 1.
    #[config(default = 1)]
    pub num_iterations: usize,
    /// Truncated importance sampling between the sampler and the policy (TRL
    /// `vllm_importance_sampling_correction` in its `token_truncate` mode, the original TIS):
    /// each token's loss is weighted by `min(exp(logps - sampling_logps), cap)`, correcting for
    /// top-k/top-p/min-p truncation. `None` = off. Default `Some(2.0)` (TIS; recent TRL
    /// defaults to a sequence-level mask with cap 3).
    #[config(default = "Some(2.0)")]
    pub importance_sampling_cap: Option<f64>,
}

impl GrpoStepConfig {
    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<GrpoStep> {
        check_positive("learning_rate", self.learning_rate)?;
        if self.num_iterations == 0 {
            return Err(Error::config("num_iterations", "must be >= 1", 0));
        }
        if let Some(cap) = self.importance_sampling_cap {
            check_positive("importance_sampling_cap", cap)?;
        }
        Ok(GrpoStep {
            config: self.clone(),
            loss: self.loss.try_init()?,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> GrpoStep = try_init;
    }
}

/// A GRPO (or RLOO-advantage) update from a [`Generation`] and its [`Scores`]; build with
/// [`GrpoStepConfig::init`].
#[derive(Module, Debug)]
pub struct GrpoStep {
    #[module(skip)]
    config: GrpoStepConfig,
    loss: GrpoLoss,
}

/// What [`GrpoStep::step`] returns.
#[derive(Debug, Clone)]
pub struct GrpoStepOutput<M> {
    /// The updated policy.
    pub policy: M,
    /// Advantage metrics (`reward`, `reward_std`, `frac_reward_zero_std`,
    /// `rewards/<name>/mean|std`), the loss's metrics of the first iteration (`kl`,
    /// `clip_ratio/...`, ...), `loss` (mean over iterations), `completions/mean_length`,
    /// `completions/clipped_ratio` (TRL names).
    pub metrics: BTreeMap<String, f64>,
}

impl GrpoStep {
    /// One update. `generation` comes from [`Sampler`](super::Sampler) (its groups of
    /// `num_generations` rows are the GRPO groups); `scores` from
    /// [`RewardFunctions::score_all`](super::RewardFunctions::score_all) on it. Old log-probs
    /// are the generation's [`logps`](Generation::logps), the off-policy mask and the
    /// truncated-importance weight use its [`sampling_logps`](Generation::sampling_logps).
    ///
    /// Errors: scores not one row per generated row, or those of the advantage and loss.
    pub fn try_step<M: CausalLm + Module>(
        &self,
        policy: M,
        reference: &M,
        optim: &mut ModuleOptimizer,
        generation: &Generation,
        scores: &Scores,
    ) -> crate::Result<GrpoStepOutput<M>> {
        let c = &self.config;
        let r = generation.len();
        if scores.per_function.len() != r {
            return Err(Error::shape(
                "scores",
                format!("[{r}, K] (one row per generated row)"),
                &[scores.per_function.len(), scores.names.len()],
            ));
        }
        let device = generation.logps.device();
        let rewards = scores.rewards_per_func(&device);
        let n = generation.num_generations;
        let mask = generation.completion_mask.clone();
        let advantages = match c.advantage_estimator {
            AdvantageEstimator::Grpo => GroupAdvantageConfig::new()
                .with_num_generations(n)
                .with_scale_rewards(c.scale_rewards)
                .with_reward_weights(Some(scores.weights.clone()))
                .with_reward_names(scores.names.clone())
                .try_forward(rewards)?,
            AdvantageEstimator::Rloo => {
                RlooAdvantageConfig::new()
                    .with_num_generations(n)
                    .with_beta(0.0)
                    .with_reward_weights(Some(scores.weights.clone()))
                    .with_reward_names(scores.names.clone())
                    .try_forward(rewards, generation.logps.clone(), None, mask.clone())?
                    .group
            }
        };
        // Every metric stays on the device; one read at the end of the step.
        let mut metrics = advantages.metrics.clone();
        let lengths = masked_row_sum(mask.clone().int().float(), mask.clone());
        metrics.insert("completions/mean_length", lengths.mean());
        let unfinished = generation.finished.clone().bool_not().int().float();
        metrics.insert(
            "completions/clipped_ratio",
            unfinished.sum().div_scalar(r as f64),
        );
        let temperature = generation.logps_temperature;
        let ref_logps = (self.loss.config().beta != 0.0)
            .then(|| generation.completion_logps(reference, temperature).logprobs);
        let ratio = c.importance_sampling_cap.map(|cap| {
            (generation.logps.clone() - generation.sampling_logps.clone())
                .exp()
                .clamp_max(cap)
        });
        let mut policy = policy;
        let mut loss_sum: Option<Tensor<1>> = None;
        for iteration in 0..c.num_iterations {
            let tokens = generation.completion_logps(&policy, temperature);
            let mut input =
                GrpoLossInput::new(tokens.logprobs, tokens.mask, advantages.advantages.clone())
                    .with_old_logprobs(generation.logps.clone())
                    .with_sampling_logprobs(generation.sampling_logps.clone());
            if let Some(x) = &ref_logps {
                input = input.with_ref_logprobs(x.clone());
            }
            if let Some(x) = &ratio {
                input = input.with_importance_sampling_ratio(x.clone());
            }
            let out = self.loss.try_forward(input)?;
            if iteration == 0 {
                metrics.extend_prefixed("", out.metrics.clone());
            }
            let loss = out.loss.clone().detach();
            loss_sum = Some(match loss_sum.take() {
                Some(total) => total + loss,
                None => loss,
            });
            let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
            policy = optim.step(c.learning_rate, policy, grads);
        }
        if let Some(total) = loss_sum {
            metrics.insert("loss", total.div_scalar(c.num_iterations as f64));
        }
        Ok(GrpoStepOutput {
            policy,
            metrics: metrics.to_host(),
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_step`](Self::try_step).
        pub fn step[M: CausalLm + Module](
            &self,
            policy: M,
            reference: &M,
            optim: &mut ModuleOptimizer,
            generation: &Generation,
            scores: &Scores,
        ) -> GrpoStepOutput<M> = try_step;
    }
}
