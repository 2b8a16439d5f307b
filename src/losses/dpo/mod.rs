//! Paired preference losses with a reference model: TRL's `DPOTrainer` loss zoo (all 15 loss
//! types of TRL 1.16, several at once for MPO), its modifiers (f-divergences, WPO, LD-DPO),
//! cDPO label smoothing, RPO, and torchtune's `DPOLoss` / `RSOLoss`.
//!
#![cfg_attr(
    doc,
    doc = r#"$$L = \operatorname{normalize}\Big(\sum_k w_k\, \ell_k\big(\beta,\ s(\Delta_c) - s(\Delta_r)\big)\Big),\qquad \ell_{\text{sigmoid}} = -\log\sigma\big(\beta(\Delta_c - \Delta_r)\big),\quad \Delta = \log\pi - \log\pi_{\text{ref}}$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`L = normalize(sum_k w_k l_k)`, `l_sigmoid = -log sigmoid(beta (dc - dr))`, `d = logp - ref_logp`"
)]
//!
//! Each loss type's formula sits next to its code in `loss_types.rs` ([`DpoLossType`]).
//! Shapes: sequence log-probs `[B]` (see [`PreferenceBatch`]) -> `loss` `[1]`,
//! `per_example` `[B]`.
//!
//! Anchor: TRL 1.16 `DPOTrainer._compute_loss`; torchtune 0.6.1 `DPOLoss.forward` /
//! `RSOLoss.forward`. Paper: Rafailov et al., *Direct Preference Optimization*,
//! <https://arxiv.org/abs/2305.18290>; IPO <https://arxiv.org/abs/2310.12036>.
//!
//! Golden value: `fixtures/dpo/sigmoid_B8.json` (TRL `_compute_loss`, `loss_type =
//! ["sigmoid"]`, `beta = 0.1`, float64) gives `loss = 0.7484667196241332`.

mod loss_types;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{DType, Tensor};

use loss_types::DpoTerms;
pub use loss_types::{DpoLossType, FDivergenceType};

use super::metrics::{LossOutput, pair_metrics};
use super::preference::PreferenceBatch;
use super::stable::log_sigmoid;
use crate::error::{Error, check_in_closed, check_positive};
use crate::logps::ld_dpo_sequence_logps;
use crate::reduce::{MeanDenominator, Normalizer, masked_row_sum, mean_from_sum};

/// Configuration of [`DpoLoss`], with TRL's `DPOConfig` field names and defaults.
///
/// Loadable from TRL-style JSON (`DpoLossConfig::load`, or `serde_json`): for example
/// `{"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]}` is MPO.
/// Those need every field; a TRL `DPOConfig` file, where missing fields take TRL's defaults,
/// loads with [`FromTrl::from_trl_json`](crate::trl::FromTrl::from_trl_json).
#[derive(Config, Debug)]
pub struct DpoLossConfig {
    /// Loss types, summed with `loss_weights`. Default: `[sigmoid]`.
    #[config(default = "vec![DpoLossType::Sigmoid]")]
    pub loss_type: Vec<DpoLossType>,
    /// One weight per loss type; `None` = all 1.0. Default: `None`.
    pub loss_weights: Option<Vec<f64>>,
    /// Temperature `β` (IPO's `τ`, hinge's 1/margin). Finite and > 0. Default: 0.1.
    #[config(default = 0.1)]
    pub beta: f64,
    /// `ε` of `robust` (`[0, ½)`), `exo_pair` (`(0, 1)`), `aot`/`aot_unpaired` (`[0, 1]`).
    /// Must be 0 when no loss type reads it (TRL 1.16 silently ignores it there). Default: 0.0.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// The f-divergence applied to the log-ratios. Default: `reverse_kl`.
    #[config(default = "FDivergenceType::ReverseKl")]
    pub f_divergence_type: FDivergenceType,
    /// `α` of `alpha_divergence`. Default: 0.5.
    #[config(default = 0.5)]
    pub f_alpha_divergence_coef: f64,
    /// WPO: weigh each pair by `w_c · w_r`, `w = exp(mean_t(log p_t - log Σ_v p_v²))`, without
    /// gradient. Needs per-token log-probs and `*_log_sum_sq_probs`. Default: false.
    #[config(default = false)]
    pub use_weighting: bool,
    /// LD-DPO `α` in `[0, 1]`: tokens past the shorter completion of a pair count `α`.
    /// Recomputes the policy log-probs from the per-token ones; compute the reference
    /// log-probs with [`ld_dpo_sequence_logps`] too (TRL 1.16 does). Default: `None` (off).
    pub ld_alpha: Option<f64>,
    /// `τ` of `discopop`, > 0. Default: 0.05.
    #[config(default = 0.05)]
    pub discopop_tau: f64,
    /// cDPO label smoothing `ε` of the `sigmoid` loss, in `[0, ½]`:
    /// `-(1-ε) log σ(βδ) - ε log σ(-βδ)`. torchtune's `DPOLoss` and OpenRLHF keep this; TRL
    /// 1.16 dropped it (its `label_smoothing` no longer reaches `sigmoid`). Default: 0.0 (TRL).
    #[config(default = 0.0)]
    pub cdpo_label_smoothing: f64,
    /// How the per-pair losses become the loss. Default: `SequenceMean` (TRL's mean over
    /// pairs); use `GlobalSequences(n)` with `n` pairs per optimizer step for accumulation.
    #[config(default = "Normalizer::SequenceMean")]
    pub normalizer: Normalizer,
    /// How the `sft` term's NLL is reduced. `None` (TRL): the batch token mean, added to every
    /// pair's term (couples the micro-batch). `Some(n)`: reduced on its own with the token
    /// normalizer `n` and added to the normalized pair loss; with
    /// `Some(Normalizer::GlobalTokens(step_tokens))` and `normalizer =
    /// GlobalSequences(step_pairs)` the loss is exact under gradient accumulation and data
    /// parallelism. Cannot be combined with `use_weighting`. Default: `None`.
    pub nll_normalizer: Option<Normalizer>,
}

impl DpoLossConfig {
    /// RPO (TRL <= 0.28 `rpo_alpha`): DPO + `rpo_alpha` × the chosen token-mean NLL, i.e.
    /// `loss_type = [sigmoid, sft]`, `loss_weights = [1, rpo_alpha]`.
    pub fn rpo(rpo_alpha: f64) -> Self {
        Self::new()
            .with_loss_type(vec![DpoLossType::Sigmoid, DpoLossType::Sft])
            .with_loss_weights(Some(vec![1.0, rpo_alpha]))
    }

    /// torchtune 0.6.1 `DPOLoss(beta, label_smoothing)`: cDPO on summed log-probs.
    pub fn torchtune_dpo(beta: f64, label_smoothing: f64) -> Self {
        Self::new()
            .with_beta(beta)
            .with_cdpo_label_smoothing(label_smoothing)
    }

    /// torchtune 0.6.1 `RSOLoss(gamma)`: `relu(1 - γ z)`, TRL's `hinge` with `β = γ`.
    pub fn torchtune_rso(gamma: f64) -> Self {
        Self::new()
            .with_loss_type(vec![DpoLossType::Hinge])
            .with_beta(gamma)
    }

    /// The weights, resolved (`None` = all 1.0).
    pub fn resolved_loss_weights(&self) -> Vec<f64> {
        self.loss_weights
            .clone()
            .unwrap_or_else(|| vec![1.0; self.loss_type.len()])
    }

    /// Checks the configuration (TRL's checks, and stricter ones).
    pub fn validate(&self) -> crate::Result<()> {
        check_positive("beta", self.beta)?;
        if self.loss_type.is_empty() {
            return Err(Error::config(
                "loss_type",
                "must name at least one loss type",
                "[]",
            ));
        }
        let weights = self.resolved_loss_weights();
        if weights.len() != self.loss_type.len() {
            return Err(Error::config(
                "loss_weights",
                format!(
                    "must have one weight per loss type ({})",
                    self.loss_type.len()
                ),
                format!("{weights:?}"),
            ));
        }
        if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
            return Err(Error::config("loss_weights", "must be finite", w));
        }
        let has = |t: DpoLossType| self.loss_type.contains(&t);
        let eps = self.label_smoothing;
        if has(DpoLossType::ExoPair) && !(eps > 0.0 && eps < 1.0) {
            return Err(Error::config(
                "label_smoothing",
                "must be in (0, 1) for exo_pair (EXO needs log ε and log(1-ε); the paper uses 1e-3)",
                eps,
            ));
        }
        if has(DpoLossType::Robust) && !(0.0..0.5).contains(&eps) {
            return Err(Error::config(
                "label_smoothing",
                "must be in [0, 0.5) for robust",
                eps,
            ));
        }
        check_in_closed("label_smoothing", eps, 0.0, 1.0)?;
        if eps != 0.0 && !self.loss_type.iter().any(|t| t.reads_label_smoothing()) {
            return Err(Error::Conflict {
                field: "label_smoothing",
                other: "loss_type",
                reason: format!(
                    "label_smoothing = {eps} is read only by robust, exo_pair, aot and aot_unpaired (TRL 1.16 silently ignores it otherwise); for cDPO on sigmoid set cdpo_label_smoothing"
                ),
            });
        }
        check_in_closed("cdpo_label_smoothing", self.cdpo_label_smoothing, 0.0, 0.5)?;
        if self.cdpo_label_smoothing != 0.0 && !has(DpoLossType::Sigmoid) {
            return Err(Error::Conflict {
                field: "cdpo_label_smoothing",
                other: "loss_type",
                reason: "cdpo_label_smoothing only applies to the sigmoid loss type".into(),
            });
        }
        if self.f_divergence_type != FDivergenceType::ReverseKl {
            if let Some(t) = self.loss_type.iter().find(|t| !t.accepts_f_divergence()) {
                return Err(Error::Conflict {
                    field: "f_divergence_type",
                    other: "loss_type",
                    reason: format!(
                        "{:?} cannot be combined with loss type {t:?} (TRL 1.16 allows it only with sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, sft)",
                        self.f_divergence_type
                    ),
                });
            }
            if !self.f_alpha_divergence_coef.is_finite() {
                return Err(Error::config(
                    "f_alpha_divergence_coef",
                    "must be finite",
                    self.f_alpha_divergence_coef,
                ));
            }
        }
        if self.use_weighting && self.loss_type.iter().any(|t| t.is_batch_coupled()) {
            return Err(Error::Conflict {
                field: "use_weighting",
                other: "loss_type",
                reason: "WPO cannot be combined with aot / aot_unpaired (as in TRL)".into(),
            });
        }
        if let Some(alpha) = self.ld_alpha {
            check_in_closed("ld_alpha", alpha, 0.0, 1.0)?;
        }
        check_positive("discopop_tau", self.discopop_tau)?;
        super::nll::validate_nll_normalizer(&self.nll_normalizer)?;
        if self.nll_normalizer.is_some() && self.use_weighting && has(DpoLossType::Sft) {
            return Err(Error::Conflict {
                field: "nll_normalizer",
                other: "use_weighting",
                reason: "WPO weighs each pair's terms; a separately normalized sft term has no pair to weigh".into(),
            });
        }
        self.normalizer.validate_for_sequences("the DPO loss")
    }

    /// Validates and builds the loss.
    pub fn try_init(&self) -> crate::Result<DpoLoss> {
        self.validate()?;
        Ok(DpoLoss {
            loss_types: self.loss_type.clone(),
            loss_weights: self.resolved_loss_weights(),
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            f_divergence_type: self.f_divergence_type,
            f_alpha_divergence_coef: self.f_alpha_divergence_coef,
            use_weighting: self.use_weighting,
            ld_alpha: self.ld_alpha,
            discopop_tau: self.discopop_tau,
            cdpo_label_smoothing: self.cdpo_label_smoothing,
            normalizer: self.normalizer,
            nll_normalizer: self.nll_normalizer,
        })
    }

    crate::error::panicking! {
        /// Builds the loss.
        pub fn init(&self) -> DpoLoss = try_init;
    }
}

/// The DPO family with a reference model, built by [`DpoLossConfig::init`].
///
/// For each pair, the log-ratios `Δc = c - c₀`, `Δr = r - r₀` are mapped by the f-divergence
/// score `s`, `δ = s(Δc) - s(Δr)`, each configured loss type gives a per-pair term `ℓ_k`
/// (see [`DpoLossType`]), optionally multiplied by the WPO weight, and
///
#[cfg_attr(
    doc,
    doc = r#"$$L = \operatorname{normalize}\Big(\sum_k w_k\, \ell_k\Big),$$"#
)]
#[cfg_attr(not(doc), doc = "`L = normalize(sum_k w_k * l_k)`,")]
///
/// which with the default `SequenceMean` is TRL's `Σ_k w_k mean_B(ℓ_k)`. Standard DPO is
/// `-log σ(β(Δc - Δr))`; its gradient is `∂L/∂c = -β σ(-βz)/B`.
///
/// Everything runs in the dtype of the inputs; `log σ` is computed stably (finite value and
/// gradient for `|βz|` up to 1e4 in f32 and f64).
///
/// **Batch coupling.** `aot` / `aot_unpaired` sort over the batch, and `sft` is (by default,
/// as TRL) a token mean over the whole batch. With [`Normalizer::GlobalSequences`] over several
/// micro-batches, the `aot` terms still come from the micro-batch (sorting within it):
/// accumulation is not exact for them. The `sft` term is exact when `nll_normalizer` is
/// `Some(GlobalTokens(step_tokens))` (see [`DpoLossConfig::nll_normalizer`]).
///
/// Metrics (TRL's keys, `[1]` tensors, no host sync): `rewards/chosen` `mean(βΔc)`,
/// `rewards/rejected`, `rewards/accuracies` `mean[βΔc > βΔr]`, `rewards/margins`,
/// `logps/chosen`, `logps/rejected` (means of the, LD-weighted, policy log-probs). Rewards use
/// the raw log-ratios even under an f-divergence, as TRL.
#[derive(Module, Debug)]
pub struct DpoLoss {
    #[module(skip)]
    loss_types: Vec<DpoLossType>,
    loss_weights: Vec<f64>,
    beta: f64,
    label_smoothing: f64,
    #[module(skip)]
    f_divergence_type: FDivergenceType,
    f_alpha_divergence_coef: f64,
    use_weighting: bool,
    ld_alpha: Option<f64>,
    discopop_tau: f64,
    cdpo_label_smoothing: f64,
    #[module(skip)]
    normalizer: Normalizer,
    #[module(skip)]
    nll_normalizer: Option<Normalizer>,
}

/// The sequence log-probs a DPO forward works on (after LD-DPO weighting).
struct SequenceTerms {
    chosen: Tensor<1>,
    rejected: Tensor<1>,
    ref_chosen: Tensor<1>,
    ref_rejected: Tensor<1>,
}

impl DpoLoss {
    /// A copy reduced with `normalizer` (pairs) and `nll_normalizer` (the NLL term's tokens),
    /// e.g. the step's global counts from [`StepCounts`](crate::distributed::StepCounts)
    /// under data parallelism (what the burn-train adapters do with a reducer). The
    /// normalizers are used as given; [`Normalizer::validate`] them if they come from outside.
    pub fn with_normalizers(
        &self,
        normalizer: Normalizer,
        nll_normalizer: Option<Normalizer>,
    ) -> Self {
        Self {
            normalizer,
            nll_normalizer,
            ..self.clone()
        }
    }

    /// Whether the loss has an NLL term (the `sft` loss type), whose normalizer counts tokens.
    pub fn has_nll_term(&self) -> bool {
        self.loss_types.contains(&DpoLossType::Sft)
    }

    crate::error::panicking! {
        /// The loss, per-pair losses and metrics.
        ///
        /// # Shapes
        /// See [`PreferenceBatch`]; output `loss` `[1]`, `per_example` `[B]`.
        pub fn forward(&self, batch: &PreferenceBatch) -> LossOutput = try_forward;
    }

    /// Non-panicking form of [`forward`](Self::forward): checks the batch's shapes and that
    /// it carries what the configured loss types need (token counts, per-token log-probs).
    pub fn try_forward(&self, batch: &PreferenceBatch) -> crate::Result<LossOutput> {
        batch.validate()?;
        if batch.preference_probs.is_some() {
            self.check_soft_labels()?;
        }
        let seq = self.sequence_terms(batch)?;
        let beta = self.beta;
        let dc = seq.chosen.clone() - seq.ref_chosen.clone();
        let dr = seq.rejected.clone() - seq.ref_rejected.clone();
        let (sc, sr) = self.scores(dc.clone(), dr.clone());
        let delta = sc.clone() - sr.clone();

        let counts = if self.loss_types.iter().any(|t| t.needs_token_counts()) {
            let (c, r) = batch.token_counts("ipo / sigmoid_norm")?;
            Some((c, r))
        } else {
            None
        };
        let nll = if self.loss_types.contains(&DpoLossType::Sft) {
            Some(super::nll::nll_term(
                batch,
                "the sft loss type",
                self.nll_normalizer,
            )?)
        } else {
            None
        };
        let wpo = if self.use_weighting {
            Some(self.wpo_weights(batch)?)
        } else {
            None
        };

        let pair = DpoTerms {
            chosen: seq.chosen.clone(),
            rejected: seq.rejected.clone(),
            ref_chosen: seq.ref_chosen.clone(),
            ref_rejected: seq.ref_rejected.clone(),
            dc: dc.clone(),
            dr: dr.clone(),
            sc,
            sr,
            delta,
            counts,
            nll: nll.as_ref().map(|n| n.in_pair_terms.clone()),
            preference_probs: batch.preference_probs.clone(),
        };
        let mut per_example: Option<Tensor<1>> = None;
        for (&loss_type, &weight) in self.loss_types.iter().zip(&self.loss_weights) {
            let term = loss_type.term(&pair, self);
            let term = match &wpo {
                Some(w) => term * w.clone(),
                None => term,
            };
            let term = term.mul_scalar(weight);
            per_example = Some(match per_example {
                None => term,
                Some(acc) => acc + term,
            });
        }
        let per_example = per_example.expect("validated: at least one loss type");
        let mut loss = self.normalizer.try_reduce_sequences(per_example.clone())?;
        let mut per_example = per_example;
        if let Some(term) = &nll
            && let Some(separate) = &term.separate
        {
            let weight = self.sft_weight();
            loss = loss + separate.clone().mul_scalar(weight);
            per_example = per_example + term.per_pair.clone().mul_scalar(weight);
        }

        let metrics = pair_metrics(
            dc.mul_scalar(beta),
            dr.mul_scalar(beta),
            seq.chosen,
            seq.rejected,
        );
        Ok(LossOutput {
            loss,
            per_example,
            metrics,
        })
    }

    /// The implicit rewards `(β Δc, β Δr)` per pair `[B]` (detached), with the same LD-DPO
    /// weighting as the loss. torchtune's `chosen_rewards` / `rejected_rewards`.
    pub fn implicit_rewards(
        &self,
        batch: &PreferenceBatch,
    ) -> crate::Result<(Tensor<1>, Tensor<1>)> {
        batch.validate()?;
        let seq = self.sequence_terms(batch)?;
        Ok((
            (seq.chosen - seq.ref_chosen).mul_scalar(self.beta).detach(),
            (seq.rejected - seq.ref_rejected)
                .mul_scalar(self.beta)
                .detach(),
        ))
    }

    /// The summed weight of the `sft` loss type(s).
    fn sft_weight(&self) -> f64 {
        self.loss_types
            .iter()
            .zip(&self.loss_weights)
            .filter(|(t, _)| **t == DpoLossType::Sft)
            .map(|(_, w)| w)
            .sum()
    }

    /// The configured loss types.
    pub fn loss_types(&self) -> &[DpoLossType] {
        &self.loss_types
    }

    /// Soft labels (`preference_probs`) are defined for the `sigmoid` loss type (plus `sft`,
    /// which ignores them), without cDPO's constant smoothing.
    fn check_soft_labels(&self) -> crate::Result<()> {
        if let Some(other) = self
            .loss_types
            .iter()
            .find(|t| !matches!(t, DpoLossType::Sigmoid | DpoLossType::Sft))
        {
            return Err(Error::config(
                "preference_probs",
                "soft labels are read by the sigmoid loss type only (with sft alongside)",
                format!("loss type {other:?}"),
            ));
        }
        if !self.loss_types.contains(&DpoLossType::Sigmoid) {
            return Err(Error::config(
                "preference_probs",
                "soft labels need the sigmoid loss type",
                format!("{:?}", self.loss_types),
            ));
        }
        if self.cdpo_label_smoothing != 0.0 {
            return Err(Error::Conflict {
                field: "preference_probs",
                other: "cdpo_label_smoothing",
                reason: "a per-pair soft label replaces cDPO's constant smoothing (fold it in: p (1 - 2ε) + ε)".into(),
            });
        }
        Ok(())
    }

    fn sequence_terms(&self, batch: &PreferenceBatch) -> crate::Result<SequenceTerms> {
        let (chosen, rejected) = match self.ld_alpha {
            Some(alpha) => {
                let (c, r) = batch.tokens("ld_alpha (LD-DPO)")?;
                ld_dpo_sequence_logps(
                    c.logps.clone(),
                    c.mask.clone(),
                    r.logps.clone(),
                    r.mask.clone(),
                    alpha,
                )?
            }
            None => (batch.chosen_logps.clone(), batch.rejected_logps.clone()),
        };
        let (ref_chosen, ref_rejected) = batch.ref_logps_or_zeros();
        Ok(SequenceTerms {
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
        })
    }

    /// `(s(Δc), s(Δr))` for the configured f-divergence.
    fn scores(&self, dc: Tensor<1>, dr: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
        let alpha = self.f_alpha_divergence_coef;
        let score = |x: Tensor<1>| match self.f_divergence_type {
            FDivergenceType::ReverseKl => x,
            FDivergenceType::ForwardKl => x.neg().exp().neg().add_scalar(1.0),
            FDivergenceType::JsDivergence => log_sigmoid(x).add_scalar(std::f64::consts::LN_2),
            FDivergenceType::AlphaDivergence if (alpha - 1.0).abs() < 1e-6 => x,
            FDivergenceType::AlphaDivergence => {
                let cap = if x.dtype() == DType::F16 { 11.0 } else { 80.0 };
                let t = x.mul_scalar(alpha - 1.0).clamp_max(cap);
                t.exp().sub_scalar(1.0).mul_scalar(1.0 / (alpha - 1.0))
            }
        };
        (score(dc), score(dr))
    }

    /// WPO pair weights `w_c · w_r` `[B]`, detached.
    fn wpo_weights(&self, batch: &PreferenceBatch) -> crate::Result<Tensor<1>> {
        let (c, r) = batch.tokens("use_weighting (WPO)")?;
        let (Some(c_sq), Some(r_sq)) = (
            &batch.chosen_log_sum_sq_probs,
            &batch.rejected_log_sum_sq_probs,
        ) else {
            return Err(Error::MissingInput {
                arg: "chosen_log_sum_sq_probs, rejected_log_sum_sq_probs",
                needed_by:
                    "use_weighting (WPO): set them with PreferenceBatch::with_log_sum_sq_probs"
                        .into(),
            });
        };
        let weight = |t: &crate::logps::GatheredLogps, sq: &Tensor<2>| {
            let aligned = masked_row_sum(
                t.logps.clone().detach() - sq.clone().detach(),
                t.mask.clone(),
            );
            mean_from_sum(aligned, t.token_counts(), MeanDenominator::AtLeastOne).exp()
        };
        Ok((weight(c, c_sq) * weight(r, r_sq)).detach())
    }
}

#[cfg(test)]
mod tests;
