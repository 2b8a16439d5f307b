//! Online and iterative DPO: sample, score, pair, update.

use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use super::generation::Generation;
use super::model::CausalLm;
use super::pairing::{Pairing, PairingConfig, Pairs};
use super::sampler::{Prompts, Sampler};
use super::scoring::{Scorer, mean_some};
use crate::error::{Error, check_positive, unwrap_or_panic};
use crate::losses::{DpoLoss, DpoLossConfig, DpoLossType};

/// Configuration of [`OnlineDpo`] (TRL `OnlineDPOConfig` names where they exist).
///
/// One [`OnlineDpo::step`] = sample `num_generations` completions per prompt with the current
/// policy, score, pair, then `epochs` passes over the pairs in minibatches of `batch_pairs`
/// (one optimizer step each). `epochs = 1` with all pairs in one minibatch is TRL's online DPO;
/// more epochs over a larger prompt set is one round of iterative DPO (generate a dataset with
/// the current policy, train on it), and `sync_ref_model` refreshes the reference after it.
#[derive(Config, Debug)]
pub struct OnlineDpoConfig {
    /// DPO `beta`. Default 0.1 (TRL).
    #[config(default = 0.1)]
    pub beta: f64,
    /// DPO loss type. Default [`DpoLossType::Sigmoid`] (TRL `loss_type = "sigmoid"`).
    #[config(default = "DpoLossType::Sigmoid")]
    pub loss_type: DpoLossType,
    /// How pairs are formed. Default [`Pairing::BestVsWorst`] (TRL uses the first two of 2).
    #[config(default = "Pairing::BestVsWorst")]
    pub pairing: Pairing,
    /// Minimum score margin of a pair (ties are always dropped). Default 0.
    #[config(default = 0.0)]
    pub min_margin: f64,
    /// Subtracted from the score of a completion without a stop token (TRL
    /// `missing_eos_penalty`). Default: none.
    pub missing_eos_penalty: Option<f64>,
    /// Learning rate. Default 5e-7 (TRL).
    #[config(default = 5e-7)]
    pub learning_rate: f64,
    /// Passes over the step's pairs. Default 1.
    #[config(default = 1)]
    pub epochs: usize,
    /// Pairs per optimizer step; 0 (default) = all pairs in one step.
    #[config(default = 0)]
    pub batch_pairs: usize,
    /// Replace the reference with the updated policy at the end of the step (iterative DPO's
    /// reference refresh; TRL `sync_ref_model`). Default false.
    #[config(default = false)]
    pub sync_ref_model: bool,
}

impl OnlineDpoConfig {
    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<OnlineDpo> {
        check_positive("learning_rate", self.learning_rate)?;
        if self.epochs == 0 {
            return Err(Error::config("epochs", "must be >= 1", 0));
        }
        if let Some(p) = self.missing_eos_penalty
            && !p.is_finite()
        {
            return Err(Error::config("missing_eos_penalty", "must be finite", p));
        }
        let pairing = PairingConfig::new()
            .with_strategy(self.pairing)
            .with_min_margin(self.min_margin);
        pairing.validate()?;
        let loss = DpoLossConfig::new()
            .with_beta(self.beta)
            .with_loss_type(vec![self.loss_type])
            .try_init()?;
        Ok(OnlineDpo {
            config: self.clone(),
            pairing,
            loss,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> OnlineDpo = try_init;
    }
}

/// Online / iterative DPO step; build with [`OnlineDpoConfig::init`].
#[derive(Module, Debug)]
pub struct OnlineDpo {
    #[module(skip)]
    config: OnlineDpoConfig,
    #[module(skip)]
    pairing: PairingConfig,
    loss: DpoLoss,
}

/// What [`OnlineDpo::step`] returns.
#[derive(Debug, Clone)]
pub struct OnlineDpoOutput<M> {
    /// The updated policy.
    pub policy: M,
    /// The samples of this step.
    pub generation: Generation,
    /// Their scores (after `missing_eos_penalty`).
    pub scores: Vec<Option<f64>>,
    /// The pairs trained on.
    pub pairs: Pairs,
    /// Metrics (TRL online DPO names): `loss` (mean over the optimizer steps),
    /// `objective/scores`, `objective/scores_margin`, `objective/kl`, `objective/entropy`,
    /// `objective/non_score_reward`, `objective/rlhf_reward`, `rewards/chosen`,
    /// `rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`,
    /// `logps/rejected` (first optimizer step), `val/contain_eos_token`, `beta`; plus
    /// `num_pairs`. Without a pair only the sampling metrics are present and the policy is
    /// unchanged.
    pub metrics: BTreeMap<String, f64>,
}

impl OnlineDpo {
    /// The configuration.
    pub fn config(&self) -> &OnlineDpoConfig {
        &self.config
    }

    /// One online DPO step (or iterative DPO round, see [`OnlineDpoConfig`]).
    ///
    /// `policy` lives on an autodiff device; sampling uses `policy.valid()`. `reference` is a
    /// non-autodiff copy (`policy.valid()` at the start) and is replaced by the updated
    /// policy when `sync_ref_model`. Log-probs are recomputed at the sampler's temperature
    /// ([`Sampler::logps_temperature`]), as TRL divides the logits by its temperature.
    #[allow(clippy::too_many_arguments)]
    pub fn try_step<M, S>(
        &self,
        policy: M,
        reference: &mut M,
        optim: &mut ModuleOptimizer,
        sampler: &Sampler,
        scorer: &S,
        prompts: &Prompts,
        seed: u64,
    ) -> crate::Result<OnlineDpoOutput<M>>
    where
        M: CausalLm + Module,
        S: Scorer + ?Sized,
    {
        let c = &self.config;
        let generation = sampler.try_sample(&policy.valid(), prompts, seed)?;
        let finished = generation.finished_host();
        let mut scores = scorer.score(&generation);
        if scores.len() != generation.len() {
            return Err(Error::shape(
                "scores",
                format!("[{}] (one per generated row)", generation.len()),
                &[scores.len()],
            ));
        }
        if let Some(penalty) = c.missing_eos_penalty {
            for (s, f) in scores.iter_mut().zip(&finished) {
                if !f {
                    *s = s.map(|x| x - penalty);
                }
            }
        }
        let mut metrics = BTreeMap::new();
        let eos = finished.iter().filter(|&&f| f).count() as f64 / finished.len() as f64;
        metrics.insert("val/contain_eos_token".into(), eos);
        metrics.insert("beta".into(), c.beta);
        if let Some(m) = mean_some(&scores) {
            metrics.insert("objective/scores".into(), m);
        }
        let pairs = self.pairing.try_pair(&scores, generation.num_generations)?;
        metrics.insert("num_pairs".into(), pairs.len() as f64);
        if pairs.is_empty() {
            return Ok(OnlineDpoOutput {
                policy,
                generation,
                scores,
                pairs,
                metrics,
            });
        }
        let margin = pairs.margins.iter().sum::<f64>() / pairs.len() as f64;
        metrics.insert("objective/scores_margin".into(), margin);

        let temperature = sampler.logps_temperature();
        let rows = pairs.rows();
        let paired = generation.try_select(&rows)?;
        let ref_logps = paired.completion_logps(&*reference, temperature).sum();
        let old_logps =
            crate::reduce::masked_row_sum(paired.logps.clone(), paired.completion_mask.clone());
        // One read for the two objective statistics.
        let stats = crate::host_reads::floats(
            Tensor::cat(
                vec![
                    (old_logps.clone() - ref_logps.clone()).mean(),
                    old_logps.mean().neg(),
                ],
                0,
            ),
            "objective statistics",
        )?;
        let (kl, entropy) = (stats[0], stats[1]);
        let pair_scores: Vec<f64> = rows.iter().filter_map(|&r| scores[r]).collect();
        let mean_pair_score = pair_scores.iter().sum::<f64>() / pair_scores.len().max(1) as f64;
        metrics.insert("objective/kl".into(), kl);
        metrics.insert("objective/entropy".into(), entropy);
        metrics.insert("objective/non_score_reward".into(), -c.beta * kl);
        metrics.insert(
            "objective/rlhf_reward".into(),
            mean_pair_score - c.beta * kl,
        );

        let b = pairs.len();
        let per_step = if c.batch_pairs == 0 {
            b
        } else {
            c.batch_pairs.min(b)
        };
        let mut policy = policy;
        // The loss and the first batch's metrics stay on the device; one read after the loop.
        let mut step_metrics: Option<crate::losses::Metrics> = None;
        let (mut loss_sum, mut loss_count): (Option<Tensor<1>>, usize) = (None, 0);
        for _ in 0..c.epochs {
            for start in (0..b).step_by(per_step) {
                let len = per_step.min(b - start);
                let chunk = Pairs {
                    chosen: pairs.chosen[start..start + len].to_vec(),
                    rejected: pairs.rejected[start..start + len].to_vec(),
                    margins: pairs.margins[start..start + len].to_vec(),
                };
                // Rows of `paired`: chosen i at i, rejected i at b + i.
                let local: Vec<usize> = (start..start + len)
                    .chain(b + start..b + start + len)
                    .collect();
                let sub = paired.try_select(&local)?;
                let tokens = sub.completion_logps(&policy, temperature);
                let device = tokens.logprobs.device();
                let sub_ref = ref_logps
                    .clone()
                    .select(0, index(&local, &ref_logps.device()))
                    .to_device(&device);
                let batch = chunk.try_preference_batch(tokens, Some(sub_ref))?;
                let out = self.loss.try_forward(&batch)?;
                if step_metrics.is_none() {
                    step_metrics = Some(out.metrics.clone());
                }
                let loss = out.loss.clone().detach();
                loss_sum = Some(match loss_sum.take() {
                    Some(total) => total + loss,
                    None => loss,
                });
                loss_count += 1;
                let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
                policy = optim.step(c.learning_rate, policy, grads);
            }
        }
        let mut step_metrics = step_metrics.unwrap_or_default();
        if let Some(total) = loss_sum {
            step_metrics.insert("loss", total.div_scalar(loss_count as f64));
        }
        metrics.extend(step_metrics.to_host());
        if c.sync_ref_model {
            *reference = policy.valid();
        }
        Ok(OnlineDpoOutput {
            policy,
            generation,
            scores,
            pairs,
            metrics,
        })
    }

    /// Panicking form of [`try_step`](Self::try_step).
    ///
    /// # Panics
    /// On the errors `try_step` returns (the macro form cannot carry a `where` clause).
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub fn step<M, S>(
        &self,
        policy: M,
        reference: &mut M,
        optim: &mut ModuleOptimizer,
        sampler: &Sampler,
        scorer: &S,
        prompts: &Prompts,
        seed: u64,
    ) -> OnlineDpoOutput<M>
    where
        M: CausalLm + Module,
        S: Scorer + ?Sized,
    {
        unwrap_or_panic(self.try_step(policy, reference, optim, sampler, scorer, prompts, seed))
    }
}

pub(crate) fn index(rows: &[usize], device: &burn::tensor::Device) -> Tensor<1, burn::tensor::Int> {
    Tensor::from_data(
        burn::tensor::TensorData::new(
            rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [rows.len()],
        ),
        device,
    )
}
