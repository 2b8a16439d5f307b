//! Online and iterative DPO: sample, score, pair, update.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::pairing::{Pairing, PairingConfig, Pairs};
use super::scoring::mean_some;
use crate::error::{Error, check_in_closed, check_positive};
use crate::logps::GatheredLogps;
use crate::losses::{DpoLoss, DpoLossConfig, DpoLossType, LossOutput, Metrics};

mod reference;
mod update;

pub use reference::soft_update;
use update::{index, select_rows};

/// Configuration of [`OnlineDpo`] (TRL 1.16 `OnlineDPOConfig` names where they exist).
///
/// One [`OnlineDpo::step`] = score (with `missing_eos_penalty`), pair, then `epochs` shuffled
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
    pub refresh_ref_model: bool,
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
        if self.sync_ref_model && self.refresh_ref_model {
            return Err(Error::Conflict {
                field: "refresh_ref_model",
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

/// What [`OnlineDpo::step`] returns.
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
    /// [`step`](Self::step), without models).
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
        policy: GatheredLogps,
        ref_logps: GatheredLogps,
        scores: &[Option<f64>],
        finished: &[bool],
        num_generations: usize,
    ) -> crate::Result<OnlineDpoLoss> {
        let rows = policy.logps.dims()[0];
        crate::error::check_same_shape(
            "ref_logps",
            &ref_logps.logps.dims(),
            &policy.logps.dims(),
            "policy.logps",
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
        let output = self.pair_loss(&pairs, &policy, &ref_logps.sum())?;
        let mut metrics = output.metrics.clone();
        metrics.extend_prefixed(
            "",
            self.objective_metrics(&policy, &ref_logps, &scores, finished, &pairs),
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
        policy: &GatheredLogps,
        ref_logps: &GatheredLogps,
        scores: &[Option<f64>],
        finished: &[bool],
        pairs: &Pairs,
    ) -> Metrics {
        let beta = self.config.beta;
        let device = policy.logps.device();
        let mut metrics = Metrics::new();
        for (key, value) in self.scoring_metrics(scores, finished, pairs) {
            metrics.insert(
                key,
                Tensor::<1>::from_data(burn::tensor::TensorData::new(vec![value], [1]), &device),
            );
        }
        let policy_sum = policy.sum().detach();
        let ref_sum = ref_logps.sum().detach().to_device(&device);
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

    /// The DPO loss of `pairs` (rows of `policy`; `ref_sums` one summed log-prob per
    /// row): summed log-ratios; online IPO through unit token counts.
    fn pair_loss(
        &self,
        pairs: &Pairs,
        policy: &GatheredLogps,
        ref_sums: &Tensor<1>,
    ) -> crate::Result<LossOutput> {
        let device = policy.logps.device();
        let (layout, rows) = (pairs.layout(), pairs.rows());
        let (chosen, rejected) = layout.split_tokens(&select_rows(policy, &rows));
        let ref_sums = ref_sums.clone().select(0, index(&rows, &ref_sums.device()));
        let (ref_chosen, ref_rejected) = layout.split(ref_sums.to_device(&device));
        let b = pairs.len();
        let mut batch = crate::losses::PreferenceBatch::try_from_tokens(chosen, rejected)?
            .with_ref_logps(ref_chosen, ref_rejected);
        if self.config.loss_type == DpoLossType::Ipo {
            // TRL's online IPO uses the summed log-ratios: unit lengths.
            let ones = Tensor::<1>::ones([b], (&device, policy.logps.dtype()));
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
}
