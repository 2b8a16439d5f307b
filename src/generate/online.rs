//! Online and iterative DPO: sample, score, pair, update.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::config::Config;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Int, Tensor};

use super::generation::Generation;
use super::model::CausalLm;
use super::pairing::{Pairing, PairingConfig, Pairs};
use super::sampler::{Prompts, Sampler};
use super::scoring::{Scorer, mean_some};
use crate::error::{Error, check_in_closed, check_positive, unwrap_or_panic};
use crate::logprobs::GatheredLogprobs;
use crate::losses::{DpoLoss, DpoLossConfig, DpoLossType, LossOutput, Metrics};

/// Configuration of [`OnlineDpo`] (TRL 1.16 `OnlineDPOConfig` names where they exist).
///
/// One [`OnlineDpo::update`] = score (with `missing_eos_penalty`), pair, then `epochs` shuffled
/// passes over the pairs in minibatches of `batch_pairs` (one clipped optimizer step each).
/// The defaults are TRL 1.16's online DPO: the two completions of each prompt, the first
/// chosen on a tie, untempered log-probs, sigmoid or IPO on **summed** log-ratios, every
/// generated row in the objective statistics, one optimizer step. More epochs over a larger
/// prompt set is one round of iterative DPO.
#[derive(Config, Debug)]
pub struct OnlineDpoConfig {
    /// DPO `beta`. Default 0.1 (TRL).
    #[config(default = 0.1)]
    pub beta: f64,
    /// DPO loss type. Default [`DpoLossType::Sigmoid`] (TRL `loss_type = "sigmoid"`). With
    /// [`DpoLossType::Ipo`] the loss is TRL's online IPO, `(Δ - 1/(2β))²` on **summed**
    /// log-ratios (not the length-normalized IPO of `DPOTrainer`).
    #[config(default = "DpoLossType::Sigmoid")]
    pub loss_type: DpoLossType,
    /// How pairs are formed. Default [`Pairing::FirstTwo`] (TRL: the two completions of a
    /// prompt; with `num_generations = 2` the same as [`Pairing::BestVsWorst`]).
    #[config(default = "Pairing::FirstTwo")]
    pub pairing: Pairing,
    /// Keep tied pairs, the first completion chosen (TRL's rule). Default true; false drops
    /// them (a tie carries no preference).
    #[config(default = true)]
    pub keep_ties: bool,
    /// Minimum score margin of a pair (needs `keep_ties = false` when > 0). Default 0.
    #[config(default = 0.0)]
    pub min_margin: f64,
    /// Subtracted from the score of a completion without a stop token (TRL
    /// `missing_eos_penalty`). Default: none.
    pub missing_eos_penalty: Option<f64>,
    /// Learning rate. Default 5e-7 (TRL).
    #[config(default = 5e-7)]
    pub learning_rate: f64,
    /// Clip the gradient's global L2 norm before each optimizer step (torch's rule); `None` =
    /// off. Default 1.0 (TRL `max_grad_norm`).
    #[config(default = "Some(1.0)")]
    pub max_grad_norm: Option<f64>,
    /// Shuffled passes over the step's pairs. Default 1.
    #[config(default = 1)]
    pub epochs: usize,
    /// Pairs per optimizer step; 0 (default) = all pairs in one step.
    #[config(default = 0)]
    pub batch_pairs: usize,
    /// Seed of the shuffle between epochs (vary it per step). Default 0.
    #[config(default = 0)]
    pub seed: u64,
    /// Compute the loss's log-probs at the sampler's temperature (`logits / T`) instead of
    /// TRL 1.16's plain `log_softmax` (its online trainer uses the temperature only for
    /// generation). Default false.
    #[config(default = false)]
    pub tempered_logps: bool,
    /// TR-DPO (TRL `sync_ref_model`): every `ref_model_sync_steps` updates the reference
    /// becomes `alpha * policy + (1 - alpha) * reference` with `alpha =
    /// ref_model_mixup_alpha`. Default false.
    #[config(default = false)]
    pub sync_ref_model: bool,
    /// TR-DPO's mixing weight, in `[0, 1]`. Default 0.6 (TRL).
    #[config(default = 0.6)]
    pub ref_model_mixup_alpha: f64,
    /// TR-DPO's interval in updates (>= 1). Default 512 (TRL).
    #[config(default = 512)]
    pub ref_model_sync_steps: usize,
    /// Replace the reference with the updated policy after every update (iterative DPO's
    /// per-round reference, Self-Rewarding LMs / OpenRLHF). Default false.
    #[config(default = false)]
    pub refresh_reference: bool,
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
        if let Some(n) = self.max_grad_norm {
            check_positive("max_grad_norm", n)?;
        }
        check_in_closed(
            "ref_model_mixup_alpha",
            self.ref_model_mixup_alpha,
            0.0,
            1.0,
        )?;
        if self.ref_model_sync_steps == 0 {
            return Err(Error::config("ref_model_sync_steps", "must be >= 1", 0));
        }
        if self.sync_ref_model && self.refresh_reference {
            return Err(Error::Conflict {
                field: "refresh_reference",
                other: "sync_ref_model",
                reason: "choose the hard refresh or TR-DPO's soft update".into(),
            });
        }
        let pairing = PairingConfig::new()
            .with_strategy(self.pairing)
            .with_min_margin(self.min_margin)
            .with_keep_ties(self.keep_ties);
        pairing.validate()?;
        let loss = DpoLossConfig::new()
            .with_beta(self.beta)
            .with_loss_type(vec![self.loss_type])
            .try_init()?;
        Ok(OnlineDpo {
            config: self.clone(),
            pairing,
            loss,
            updates: Updates::default(),
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> OnlineDpo = try_init;
    }
}

/// The number of updates an [`OnlineDpo`] has made (TR-DPO's interval), shared by its clones.
#[derive(Debug, Clone, Default)]
struct Updates(Arc<AtomicUsize>);

/// Online / iterative DPO; build with [`OnlineDpoConfig::init`].
#[derive(Module, Debug)]
pub struct OnlineDpo {
    #[module(skip)]
    config: OnlineDpoConfig,
    #[module(skip)]
    pairing: PairingConfig,
    loss: DpoLoss,
    #[module(skip)]
    updates: Updates,
}

/// What [`OnlineDpo::update`] returns.
#[derive(Debug, Clone)]
pub struct OnlineDpoOutput<M> {
    /// The updated policy.
    pub policy: M,
    /// Their scores (after `missing_eos_penalty`), one per generated row.
    pub scores: Vec<Option<f64>>,
    /// The pairs trained on.
    pub pairs: Pairs,
    /// Metrics (TRL online DPO names): `loss` (mean over the optimizer steps),
    /// `objective/scores`, `objective/scores_margin`, `objective/kl`, `objective/entropy`,
    /// `objective/non_score_reward`, `objective/rlhf_reward` (over **every** generated row),
    /// `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`,
    /// `logps/chosen`, `logps/rejected` (first optimizer step), `val/contain_eos_token`,
    /// `beta`; plus `num_pairs`. Without a pair only the scoring metrics are present and the
    /// policy is unchanged.
    pub metrics: BTreeMap<String, f64>,
}

/// What [`OnlineDpo::try_loss`] returns.
#[derive(Debug, Clone)]
pub struct OnlineDpoLoss {
    /// The DPO loss of the pairs, its per-pair terms and TRL's metrics (`rewards/*`,
    /// `logps/*`, `objective/*`, `val/contain_eos_token`, `beta`, `num_pairs`).
    pub output: LossOutput,
    /// The pairs.
    pub pairs: Pairs,
    /// The scores after `missing_eos_penalty`.
    pub scores: Vec<Option<f64>>,
}

impl OnlineDpo {
    /// The configuration.
    pub fn config(&self) -> &OnlineDpoConfig {
        &self.config
    }

    /// The loss of one online DPO step from per-token log-probs (the loss core of
    /// [`update`](Self::update), without models).
    ///
    /// `policy` and `reference` hold the per-token log-probs of **every** generated row
    /// (rows grouped by prompt: row `i * N + j` is completion `j` of prompt `i`; masked
    /// positions 0), `scores` one score per row (before the penalty), `finished` whether each
    /// row ended with a stop token. Scores get `missing_eos_penalty`, pairs are formed, and
    /// the DPO loss is taken on the pairs' **summed** log-ratios. The objective statistics
    /// (`objective/kl`, `objective/entropy`, `objective/non_score_reward`,
    /// `objective/rlhf_reward`) average over every row, as TRL does (TRL also sums the
    /// log-probs of padding positions into them; here they are masked).
    ///
    /// Errors: rows, scores and `finished` of different lengths, `num_generations` not
    /// dividing them ([`Error::Shape`], [`Error::Config`]), no pair ([`Error::Empty`]).
    pub fn try_loss(
        &self,
        policy: GatheredLogprobs,
        reference: GatheredLogprobs,
        scores: &[Option<f64>],
        finished: &[bool],
        num_generations: usize,
    ) -> crate::Result<OnlineDpoLoss> {
        let rows = policy.logprobs.dims()[0];
        crate::error::check_same_shape(
            "reference.logprobs",
            &reference.logprobs.dims(),
            &policy.logprobs.dims(),
            "policy.logprobs",
        )?;
        for (arg, len) in [("scores", scores.len()), ("finished", finished.len())] {
            if len != rows {
                return Err(Error::shape(
                    arg,
                    format!("[{rows}] (one per generated row)"),
                    &[len],
                ));
            }
        }
        let scores = self.penalized(scores, finished);
        let pairs = self.pairing.try_pair(&scores, num_generations)?;
        crate::error::check_non_empty("pairs", pairs.len(), "no pair was formed")?;
        let output = self.pair_loss(&pairs, &policy, &reference.sum())?;
        let mut metrics = output.metrics.clone();
        metrics.extend_prefixed(
            "",
            self.objective_metrics(&policy, &reference, &scores, finished, &pairs),
        );
        Ok(OnlineDpoLoss {
            output: LossOutput { metrics, ..output },
            pairs,
            scores,
        })
    }

    /// The scoring metrics and the objective statistics over every row (detached): TRL's
    /// `objective/kl` = mean over rows of the summed `logp - ref_logp`, `objective/entropy`
    /// = mean of `-sum logp`, `objective/non_score_reward` = `-beta kl`,
    /// `objective/rlhf_reward` = mean score - `beta kl`.
    fn objective_metrics(
        &self,
        policy: &GatheredLogprobs,
        reference: &GatheredLogprobs,
        scores: &[Option<f64>],
        finished: &[bool],
        pairs: &Pairs,
    ) -> Metrics {
        let beta = self.config.beta;
        let device = policy.logprobs.device();
        let mut metrics = Metrics::new();
        for (key, value) in self.scoring_metrics(scores, finished, pairs) {
            metrics.insert(
                key,
                Tensor::<1>::from_data(burn::tensor::TensorData::new(vec![value], [1]), &device),
            );
        }
        let policy_sum = policy.sum().detach();
        let ref_sum = reference.sum().detach().to_device(&device);
        let kl = (policy_sum.clone() - ref_sum).mean();
        metrics.insert("objective/kl", kl.clone());
        metrics.insert("objective/entropy", policy_sum.neg().mean());
        metrics.insert("objective/non_score_reward", kl.clone().mul_scalar(-beta));
        if let Some(mean_score) = mean_some(scores) {
            metrics.insert(
                "objective/rlhf_reward",
                kl.mul_scalar(-beta).add_scalar(mean_score),
            );
        }
        metrics
    }

    /// The DPO loss of `pairs` (rows of `policy`; `reference_sums` one summed log-prob per
    /// row): summed log-ratios; online IPO through unit token counts.
    fn pair_loss(
        &self,
        pairs: &Pairs,
        policy: &GatheredLogprobs,
        reference_sums: &Tensor<1>,
    ) -> crate::Result<LossOutput> {
        let device = policy.logprobs.device();
        let chosen = select_rows(policy, &pairs.chosen);
        let rejected = select_rows(policy, &pairs.rejected);
        let pick = |rows: &[usize]| {
            reference_sums
                .clone()
                .select(0, index(rows, &reference_sums.device()))
                .to_device(&device)
        };
        let b = pairs.len();
        let mut batch = crate::losses::PreferenceBatch::try_from_tokens(chosen, rejected)?
            .with_reference(pick(&pairs.chosen), pick(&pairs.rejected));
        if self.config.loss_type == DpoLossType::Ipo {
            // TRL's online IPO uses the summed log-ratios: unit lengths.
            let ones = Tensor::<1>::ones([b], (&device, policy.logprobs.dtype()));
            batch = batch.with_token_counts(ones.clone(), ones);
        }
        self.loss.try_forward(&batch)
    }

    fn penalized(&self, scores: &[Option<f64>], finished: &[bool]) -> Vec<Option<f64>> {
        let mut scores = scores.to_vec();
        if let Some(penalty) = self.config.missing_eos_penalty {
            for (s, f) in scores.iter_mut().zip(finished) {
                if !f {
                    *s = s.map(|x| x - penalty);
                }
            }
        }
        scores
    }

    /// `val/contain_eos_token`, `beta`, `objective/scores`, `objective/scores_margin`,
    /// `num_pairs`.
    fn scoring_metrics(
        &self,
        scores: &[Option<f64>],
        finished: &[bool],
        pairs: &Pairs,
    ) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        let eos = finished.iter().filter(|&&f| f).count() as f64 / finished.len().max(1) as f64;
        m.insert("val/contain_eos_token".to_string(), eos);
        m.insert("beta".to_string(), self.config.beta);
        if let Some(s) = mean_some(scores) {
            m.insert("objective/scores".to_string(), s);
        }
        m.insert("num_pairs".to_string(), pairs.len() as f64);
        if !pairs.is_empty() {
            let margin = pairs.margins.iter().sum::<f64>() / pairs.len() as f64;
            m.insert("objective/scores_margin".to_string(), margin);
        }
        m
    }

    /// One online DPO update on sampled data (see [`OnlineDpoConfig`]): `generation` from the
    /// crate's [`Sampler`] (any path: cached or not), `scores` one per generated row (e.g.
    /// [`RewardFunctions::score_all`](super::RewardFunctions::score_all)`(..).total`).
    ///
    /// `policy` lives on an autodiff device; `reference` is a frozen copy (`policy.valid()`
    /// at the start), moved by TR-DPO's soft update (`sync_ref_model`) or replaced by the
    /// updated policy (`refresh_reference`). Log-probs are untempered (TRL 1.16) unless
    /// `tempered_logps`. This is [`try_update_rounds`](Self::try_update_rounds) with one
    /// round.
    ///
    /// Errors: scores not one per row, and the errors of [`try_loss`](Self::try_loss) other
    /// than "no pair" (an update without a pair returns the scoring metrics and the policy
    /// unchanged).
    pub fn try_update<M: CausalLm + Module>(
        &self,
        policy: M,
        reference: &mut M,
        optim: &mut ModuleOptimizer,
        generation: &Generation,
        scores: &[Option<f64>],
    ) -> crate::Result<OnlineDpoOutput<M>> {
        self.try_update_rounds(policy, reference, optim, &[(generation, scores)])
    }

    /// One update on the pairs of several rounds of generations: iterative DPO that trains
    /// each round on **all the data so far** (Dong et al. 2024, *RLHF Workflow*,
    /// <https://arxiv.org/abs/2405.07863>), with the reference kept fixed (the SFT policy) or
    /// refreshed (`refresh_reference`). Each round's rows are scored, penalized and paired on
    /// their own; the pairs of every round are shuffled together (`epochs`, `batch_pairs`,
    /// `seed`) and each minibatch recomputes the policy's log-probs of its rows, round by
    /// round. The scoring and objective metrics describe the **last** round; `num_pairs`
    /// counts every round's pairs.
    ///
    /// Errors: no round, a round whose scores are not one per row, and the loss's errors.
    pub fn try_update_rounds<M: CausalLm + Module>(
        &self,
        policy: M,
        reference: &mut M,
        optim: &mut ModuleOptimizer,
        rounds: &[(&Generation, &[Option<f64>])],
    ) -> crate::Result<OnlineDpoOutput<M>> {
        let c = &self.config;
        crate::error::check_non_empty("rounds", rounds.len(), "no round of generations")?;
        let mut per_round = Vec::with_capacity(rounds.len());
        for &(generation, scores) in rounds {
            if scores.len() != generation.len() {
                return Err(Error::shape(
                    "scores",
                    format!(
                        "[{}] (one per generated row of its round)",
                        generation.len()
                    ),
                    &[scores.len()],
                ));
            }
            let finished = generation.finished_host();
            let penalized = self.penalized(scores, &finished);
            let pairs = self
                .pairing
                .try_pair(&penalized, generation.num_generations)?;
            per_round.push((finished, penalized, pairs));
        }
        let all: Vec<(usize, usize)> = per_round
            .iter()
            .enumerate()
            .flat_map(|(k, (_, _, pairs))| (0..pairs.len()).map(move |i| (k, i)))
            .collect();
        let (last_generation, _) = rounds[rounds.len() - 1];
        let (last_finished, last_scores, last_pairs) = &per_round[per_round.len() - 1];
        let mut scoring = self.scoring_metrics(last_scores, last_finished, last_pairs);
        scoring.insert("num_pairs".into(), all.len() as f64);
        if all.is_empty() {
            return Ok(OnlineDpoOutput {
                policy,
                scores: last_scores.clone(),
                pairs: last_pairs.clone(),
                metrics: scoring,
            });
        }
        let temperature = if c.tempered_logps {
            last_generation.logps_temperature
        } else {
            1.0
        };
        let ref_tokens: Vec<GatheredLogprobs> = rounds
            .iter()
            .map(|(g, _)| g.try_completion_logps(&*reference, temperature))
            .collect::<crate::Result<_>>()?;
        // The objective statistics of the last round, from the policy before the update.
        let mut metrics = self.objective_metrics(
            &last_generation.try_completion_logps(&policy.valid(), temperature)?,
            &ref_tokens[ref_tokens.len() - 1],
            last_scores,
            last_finished,
            last_pairs,
        );
        let per_step = if c.batch_pairs == 0 {
            all.len()
        } else {
            c.batch_pairs.min(all.len())
        };
        let mut policy = policy;
        let mut order: Vec<usize> = (0..all.len()).collect();
        let mut rng = crate::rl::step::XorShift::new(c.seed);
        let mut first: Option<Metrics> = None;
        let (mut loss_sum, mut loss_count): (Option<Tensor<1>>, usize) = (None, 0);
        for epoch in 0..c.epochs {
            if epoch > 0 {
                rng.shuffle(&mut order);
            }
            for chunk in order.chunks(per_step) {
                let chunk: Vec<(usize, usize)> = chunk.iter().map(|&i| all[i]).collect();
                let (tokens, ref_sums, local) = self.chunk_rows(
                    &policy,
                    rounds,
                    &per_round,
                    &ref_tokens,
                    &chunk,
                    temperature,
                )?;
                let out = self.pair_loss(&local, &tokens, &ref_sums)?;
                if first.is_none() {
                    first = Some(out.metrics.clone());
                }
                let loss = out.loss.clone().detach();
                loss_sum = Some(match loss_sum.take() {
                    Some(total) => total + loss,
                    None => loss,
                });
                loss_count += 1;
                let mut grads = GradientsParams::from_grads(out.loss.backward(), &policy);
                if let Some(max_norm) = c.max_grad_norm {
                    crate::rl::clip_grad_norm_on_device(&policy, &mut grads, max_norm)?;
                }
                policy = optim.step(c.learning_rate, policy, grads);
            }
        }
        metrics.extend_prefixed("", first.unwrap_or_default());
        if let Some(total) = loss_sum {
            metrics.insert("loss", total.div_scalar(loss_count as f64));
        }
        let mut host = metrics.to_host();
        host.extend(scoring);
        let updates = self.updates.0.fetch_add(1, Ordering::Relaxed) + 1;
        if c.refresh_reference {
            *reference = policy.valid();
        } else if c.sync_ref_model && updates.is_multiple_of(c.ref_model_sync_steps) {
            *reference = soft_update(reference.clone(), &policy, c.ref_model_mixup_alpha);
        }
        Ok(OnlineDpoOutput {
            policy,
            scores: last_scores.clone(),
            pairs: last_pairs.clone(),
            metrics: host,
        })
    }

    /// The policy's per-token log-probs of a minibatch of pairs `(round, pair)`: chosen rows
    /// first, then rejected rows, right-padded to one width; the reference sums in the same
    /// order; and the local pairs (`i` against `m + i`).
    #[allow(clippy::type_complexity)]
    fn chunk_rows<M: CausalLm + Module>(
        &self,
        policy: &M,
        rounds: &[(&Generation, &[Option<f64>])],
        per_round: &[(Vec<bool>, Vec<Option<f64>>, Pairs)],
        ref_tokens: &[GatheredLogprobs],
        chunk: &[(usize, usize)],
        temperature: f64,
    ) -> crate::Result<(GatheredLogprobs, Tensor<1>, Pairs)> {
        let m = chunk.len();
        let mut parts: Vec<(GatheredLogprobs, Tensor<1>, Vec<usize>)> = Vec::new();
        for (k, (generation, _)) in rounds.iter().enumerate() {
            let picked: Vec<usize> = chunk
                .iter()
                .enumerate()
                .filter(|(_, (r, _))| *r == k)
                .map(|(slot, _)| slot)
                .collect();
            if picked.is_empty() {
                continue;
            }
            let pairs = &per_round[k].2;
            let rows: Vec<usize> = picked
                .iter()
                .map(|&slot| pairs.chosen[chunk[slot].1])
                .chain(picked.iter().map(|&slot| pairs.rejected[chunk[slot].1]))
                .collect();
            let tokens = generation
                .try_select(&rows)?
                .try_completion_logps(policy, temperature)?;
            let ref_sums = ref_tokens[k]
                .sum()
                .select(0, index(&rows, &ref_tokens[k].logprobs.device()));
            parts.push((tokens, ref_sums, picked));
        }
        let width = parts
            .iter()
            .map(|(t, _, _)| t.logprobs.dims()[1])
            .max()
            .unwrap_or(1);
        // Row order: every chosen row of the chunk (by slot), then every rejected row.
        let (mut chosen, mut rejected, mut ref_chosen, mut ref_rejected, mut slots) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (tokens, ref_sums, picked) in parts {
            let n = picked.len();
            let tokens = pad_width(tokens, width);
            let device = tokens.logprobs.device();
            chosen.push(select_rows(&tokens, &(0..n).collect::<Vec<_>>()));
            rejected.push(select_rows(&tokens, &(n..2 * n).collect::<Vec<_>>()));
            let ref_sums = ref_sums.to_device(&device);
            ref_chosen.push(ref_sums.clone().narrow(0, 0, n));
            ref_rejected.push(ref_sums.narrow(0, n, n));
            slots.extend(picked);
        }
        let cat = |parts: Vec<GatheredLogprobs>| GatheredLogprobs {
            logprobs: Tensor::cat(parts.iter().map(|p| p.logprobs.clone()).collect(), 0),
            mask: Tensor::cat(parts.iter().map(|p| p.mask.clone().int()).collect(), 0)
                .equal_elem(1),
        };
        let tokens = cat(vec![cat(chosen), cat(rejected)]);
        let ref_sums = Tensor::cat(
            vec![Tensor::cat(ref_chosen, 0), Tensor::cat(ref_rejected, 0)],
            0,
        );
        debug_assert_eq!(slots.len(), m);
        let local = Pairs {
            chosen: (0..m).collect(),
            rejected: (m..2 * m).collect(),
            margins: slots
                .iter()
                .map(|&slot| {
                    let (k, i) = chunk[slot];
                    per_round[k].2.margins[i]
                })
                .collect(),
        };
        Ok((tokens, ref_sums, local))
    }

    crate::error::panicking! {
        /// Panicking form of [`try_update`](Self::try_update).
        pub fn update[M: CausalLm + Module](
            &self,
            policy: M,
            reference: &mut M,
            optim: &mut ModuleOptimizer,
            generation: &Generation,
            scores: &[Option<f64>],
        ) -> OnlineDpoOutput<M> = try_update;
    }

    /// Samples with `sampler` (the uncached forward; sample with
    /// [`Sampler::try_sample_cached`] and call [`try_update`](Self::try_update) to use a KV
    /// cache), scores with `scorer`, and runs [`try_update`](Self::try_update). Returns the
    /// generation too.
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
    ) -> crate::Result<(OnlineDpoOutput<M>, Generation)>
    where
        M: CausalLm + Module,
        S: Scorer + ?Sized,
    {
        let generation = sampler.try_sample(&policy.valid(), prompts, seed)?;
        let scores = scorer.score(&generation);
        let out = self.try_update(policy, reference, optim, &generation, &scores)?;
        Ok((out, generation))
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
    ) -> (OnlineDpoOutput<M>, Generation)
    where
        M: CausalLm + Module,
        S: Scorer + ?Sized,
    {
        unwrap_or_panic(self.try_step(policy, reference, optim, sampler, scorer, prompts, seed))
    }
}

/// Right-pads per-token log-probs to `width` columns (log-prob 0, mask false).
fn pad_width(g: GatheredLogprobs, width: usize) -> GatheredLogprobs {
    let [rows, c] = g.logprobs.dims();
    if c >= width {
        return g;
    }
    let device = g.logprobs.device();
    let dtype = g.logprobs.dtype();
    GatheredLogprobs {
        logprobs: Tensor::cat(
            vec![
                g.logprobs,
                Tensor::<2>::zeros([rows, width - c], (&device, dtype)),
            ],
            1,
        ),
        mask: Tensor::cat(
            vec![
                g.mask.int(),
                Tensor::<2, Int>::zeros([rows, width - c], &device),
            ],
            1,
        )
        .equal_elem(1),
    }
}

/// Rows `rows` of per-token log-probs (mask kept canonical).
fn select_rows(g: &GatheredLogprobs, rows: &[usize]) -> GatheredLogprobs {
    let idx = index(rows, &g.logprobs.device());
    GatheredLogprobs {
        logprobs: g.logprobs.clone().select(0, idx.clone()),
        mask: g.mask.clone().int().select(0, idx).equal_elem(1),
    }
}

/// TR-DPO's soft reference update: every float parameter of `reference` becomes
/// `alpha * policy + (1 - alpha) * reference` (parameters matched by id: `reference` is a
/// `valid()` copy of `policy` or of an ancestor of it, as [`Module::valid`] keeps ids).
/// Parameters of `reference` that `policy` does not have are left unchanged.
pub fn soft_update<M: Module>(reference: M, policy: &M, alpha: f64) -> M {
    struct Collect(BTreeMap<burn::module::ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val().detach();
            let n = t.shape().num_elements();
            self.0.insert(param.id, t.reshape([n]));
        }
    }
    struct Mix(BTreeMap<burn::module::ParamId, Tensor<1>>, f64);
    impl ModuleMapper for Mix {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(p) = self.0.remove(&param.id) else {
                return param;
            };
            let alpha = self.1;
            param.map(|r| {
                let p = p.to_device(&r.device()).cast(r.dtype()).reshape(r.dims());
                r.mul_scalar(1.0 - alpha) + p.mul_scalar(alpha)
            })
        }
    }
    let mut collect = Collect(BTreeMap::new());
    policy.visit(&mut collect);
    reference.map(&mut Mix(collect.0, alpha))
}

pub(crate) fn index(rows: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    Tensor::from_data(
        burn::tensor::TensorData::new(
            rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [rows.len()],
        ),
        device,
    )
}
