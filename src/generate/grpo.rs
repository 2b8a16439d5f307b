//! GRPO / RLOO updates straight from the sampler's output.

use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::generation::Generation;
use super::model::CausalLm;
use super::scoring::Scores;
use crate::error::{Error, check_positive};
use crate::logps::{LabelAlignment, TokenLogpsConfig};
use crate::reduce::masked_row_sum;
use crate::rl::{
    GroupAdvantageConfig, GrpoLoss, GrpoLossConfig, PolicyOutput, PpoStepConfig,
    RlooAdvantageConfig, Rollout, RolloutBatch, ScaleRewards, StepError, try_ppo_update,
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
///
/// One [`GrpoStep::step`] is TRL's loop over one generation batch: `num_iterations` passes
/// over `steps_per_generation` shuffled minibatches (one optimizer step each), each minibatch
/// split into `gradient_accumulation_steps` micro-batches, through
/// [`ppo_update`](crate::rl::ppo_update). Each loss type keeps TRL's aggregation over the
/// minibatch (`dapo` / `bnpo` / `cispo` / `vespo`: its completion tokens; `grpo` / `sapo`: the
/// mean of per-sequence means; `dr_grpo`: `B x max_new_tokens`; `luspo`: `B`), normalized by
/// the minibatch's counts so that the micro-batch gradients sum to the minibatch gradient
/// exactly.
#[derive(Config, Debug)]
pub struct GrpoStepConfig {
    /// The GRPO loss (`beta`, `epsilon`, `loss_type`, ...). `beta != 0` makes the step
    /// compute reference log-probs. Its `max_completion_length` is replaced by the
    /// generation's `max_new_tokens` (Dr. GRPO's `L`), and its TRL accumulation constants
    /// (`gradient_accumulation_steps`, `steps_per_generation`, `num_processes`) are not read:
    /// the step normalizes each minibatch exactly.
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
    /// Passes over the generation batch (TRL `num_iterations`, mu). Default 1.
    #[config(default = 1)]
    pub num_iterations: usize,
    /// Minibatches per pass, one optimizer step each (TRL `steps_per_generation`); must
    /// divide the generated rows. Default 1.
    #[config(default = 1)]
    pub steps_per_generation: usize,
    /// Micro-batches per minibatch (TRL `gradient_accumulation_steps`); must divide the
    /// minibatch. Default 1.
    #[config(default = 1)]
    pub gradient_accumulation_steps: usize,
    /// Clip the gradient's global L2 norm before each optimizer step (torch's rule,
    /// [`clip_grad_norm_on_device`](crate::rl::clip_grad_norm_on_device)); `None` = off.
    /// Default 1.0 (TRL `max_grad_norm`).
    #[config(default = "Some(1.0)")]
    pub max_grad_norm: Option<f64>,
    /// Leave completions that hit `max_new_tokens` without a stop token out of the loss (TRL
    /// `mask_truncated_completions`). Default false.
    #[config(default = false)]
    pub mask_truncated_completions: bool,
    /// Seed of the minibatch shuffle (vary it per step). Default 0.
    #[config(default = 0)]
    pub seed: u64,
}

impl GrpoStepConfig {
    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<GrpoStep> {
        check_positive("learning_rate", self.learning_rate)?;
        for (field, value) in [
            ("num_iterations", self.num_iterations),
            ("steps_per_generation", self.steps_per_generation),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
        ] {
            if value == 0 {
                return Err(Error::config(field, "must be >= 1", 0));
            }
        }
        if let Some(n) = self.max_grad_norm {
            check_positive("max_grad_norm", n)?;
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
    /// `rewards/<name>/mean|std`), the loss's metrics (`kl`, `entropy`, `clip_ratio/...`, ...)
    /// averaged over micro-batches, `loss` (each minibatch's value, averaged), `grad_norm`
    /// (before clipping), `completions/mean_length`, `completions/clipped_ratio` (TRL names).
    pub metrics: BTreeMap<String, f64>,
    /// Optimizer steps taken (`num_iterations x steps_per_generation`).
    pub optimizer_steps: usize,
}

impl GrpoStep {
    /// The configuration.
    pub fn config(&self) -> &GrpoStepConfig {
        &self.config
    }

    /// One update. `generation` comes from [`Sampler`](super::Sampler) (its groups of
    /// `num_generations` rows are the GRPO groups); `scores` from
    /// [`RewardFunctions::score_all`](super::RewardFunctions::score_all) on it.
    ///
    /// **Sampling replay.** With a truncating sampler that recorded its supports
    /// ([`Generation::support`]), old log-probs are the sampler's own
    /// ([`sampling_logps`](Generation::sampling_logps): each token's log-prob over the kept
    /// set it was drawn from) and every forward recomputes the policy's (and the reference's)
    /// log-probs over the same supports, so the first ratio is 1 and a ratio measures only
    /// the policy's drift. Without supports (no truncation, or `record_support = false`) both
    /// are over the whole vocabulary ([`logps`](Generation::logps)). Either way the
    /// off-policy mask compares log-probs on one support, and no importance weight is applied:
    /// the sampler runs in-process. Each forward also computes
    /// the per-token entropies (the `entropy` metric, `entropy_coef`,
    /// `top_entropy_quantile`).
    ///
    /// Errors: scores not one row per generated row, rows that do not split into
    /// `steps_per_generation x gradient_accumulation_steps` equal parts, or those of the
    /// advantage and loss (the policy is then lost: use [`try_update`](Self::try_update) to
    /// get it back).
    pub fn try_step<M: CausalLm + Module>(
        &self,
        policy: M,
        ref_model: &M,
        optim: &mut ModuleOptimizer,
        generation: &Generation,
        scores: &Scores,
    ) -> crate::Result<GrpoStepOutput<M>> {
        self.try_update(policy, ref_model, optim, generation, scores)
            .map_err(|e| e.error)
    }

    /// As [`try_step`](Self::try_step), handing the policy back on an error
    /// ([`StepError`]: unchanged when the inputs are invalid, after the optimizer steps already
    /// taken when a later minibatch fails).
    pub fn try_update<M: CausalLm + Module>(
        &self,
        policy: M,
        ref_model: &M,
        optim: &mut ModuleOptimizer,
        generation: &Generation,
        scores: &Scores,
    ) -> Result<GrpoStepOutput<M>, StepError<M>> {
        let fail = |model: M, error: Error| StepError {
            model,
            error,
            optimizer_steps: 0,
        };
        let prepared = match self.prepare(ref_model, generation, scores) {
            Ok(p) => p,
            Err(e) => return Err(fail(policy, e)),
        };
        let Prepared {
            rollout,
            loss,
            metrics,
        } = prepared;
        let c = &self.config;
        let step = PpoStepConfig::new()
            .with_epochs(c.num_iterations)
            .with_num_minibatches(c.steps_per_generation)
            .with_gradient_accumulation_steps(c.gradient_accumulation_steps)
            .with_learning_rate(c.learning_rate)
            .with_max_grad_norm(c.max_grad_norm)
            .with_seed(c.seed);
        let temperature = generation.logps_temperature;
        let (policy, stats) =
            try_ppo_update(policy, optim, &step, &rollout, &loss, |model, batch| {
                let mask = batch
                    .attention_mask
                    .clone()
                    .expect("the step's rollout has an attention mask");
                let logits = generation.completion_logits(model, batch.tokens.clone(), mask);
                policy_output(logits, batch, temperature)
            })?;
        let mut host = metrics.to_host();
        host.extend(stats.metrics);
        Ok(GrpoStepOutput {
            policy,
            metrics: host,
            optimizer_steps: stats.optimizer_steps,
        })
    }

    /// Advantages, the rollout and the loss of one step; the step's own metrics.
    fn prepare<M: CausalLm + Module>(
        &self,
        ref_model: &M,
        generation: &Generation,
        scores: &Scores,
    ) -> crate::Result<Prepared> {
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
        let mut mask = generation.completion_mask.clone();
        if c.mask_truncated_completions {
            let [_, width] = mask.dims();
            let finished = generation.finished.clone().unsqueeze_dim::<2>(1);
            mask = mask.bool_and(finished.expand([r, width]));
        }
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
        let completion = generation.completion_mask.clone();
        let lengths = masked_row_sum(completion.clone().int().float(), completion);
        metrics.insert("completions/mean_length", lengths.mean());
        let unfinished = generation.finished.clone().bool_not().int().float();
        metrics.insert(
            "completions/clipped_ratio",
            unfinished.sum().div_scalar(r as f64),
        );
        let mut rollout = generation.try_rollout(advantages.advantages.reshape([r]))?;
        rollout.mask = mask;
        let temperature = generation.logps_temperature;
        if let Some(support) = &generation.support {
            // Sampling replay: old log-probs are the sampler's own, over each token's support;
            // the forward recomputes the policy's over the same supports.
            rollout.old_logps = generation.sampling_logps.clone().detach();
            rollout = rollout.with_support(support.clone());
        }
        if self.loss.config().beta != 0.0 {
            let ref_logps = match &generation.support {
                Some(_) => generation.completion_support_logps(ref_model, temperature)?,
                None => {
                    generation
                        .try_completion_logps(ref_model, temperature)?
                        .logps
                }
            };
            rollout = rollout.with_ref_logps(ref_logps);
        }
        let loss = self
            .loss
            .config()
            .clone()
            .with_max_completion_length(generation.max_new_tokens)
            .try_init()?;
        Ok(Prepared {
            rollout,
            loss,
            metrics,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_step`](Self::try_step).
        pub fn step[M: CausalLm + Module](
            &self,
            policy: M,
            ref_model: &M,
            optim: &mut ModuleOptimizer,
            generation: &Generation,
            scores: &Scores,
        ) -> GrpoStepOutput<M> = try_step;
    }
}

/// What [`GrpoStep::prepare`] hands to the update.
struct Prepared {
    rollout: Rollout,
    loss: GrpoLoss,
    metrics: crate::losses::Metrics,
}

/// The policy's completion log-probs (over each token's recorded support with sampling
/// replay, else over the vocabulary) and entropies (of the full distribution, as TRL logs
/// them) for a batch of the step's rollout, at the sampling temperature.
fn policy_output(logits: Tensor<3>, batch: &RolloutBatch, temperature: f64) -> PolicyOutput {
    let [_, c, _] = logits.dims();
    let [_, s] = batch.tokens.dims();
    let completion_ids = batch.tokens.clone().narrow(1, s - c, c);
    let logps = match &batch.support {
        Some(support) => crate::logps::support_logps(
            logits.clone(),
            completion_ids,
            support.clone(),
            batch.mask.clone(),
            temperature,
        ),
        None => {
            TokenLogpsConfig::new(LabelAlignment::Aligned)
                .with_temperature(temperature)
                .init()
                .forward_masked(logits.clone(), completion_ids, batch.mask.clone())
                .logps
        }
    };
    let entropy = crate::logps::token_entropy(logits, temperature)
        .expect("the sampling temperature is > 0 (validated by the sampler)");
    PolicyOutput::new(logps).with_entropy(entropy)
}
