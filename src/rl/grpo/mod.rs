//! The GRPO loss family (TRL 1.16 `GRPOTrainer._compute_loss`, one process).
//!
#![cfg_attr(
    doc,
    doc = r#"$$\ell_t = -\min\!\big(\rho_t A,\; \operatorname{clip}(\rho_t, 1-\epsilon_{lo}, 1+\epsilon_{hi})A\big) + \beta\,\rho_t\big(e^{\text{ref}_t-\log\pi_t} - (\text{ref}_t-\log\pi_t) - 1\big),\qquad \rho_t = e^{\log\pi_t - \text{old}_t}$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`l_t = -min(rho_t A, clip(rho_t, 1-eps_lo, 1+eps_hi) A) + beta rho_t (exp(ref - logp) - (ref - logp) - 1)`, `rho_t = exp(logp_t - old_t)`"
)]
//!
//! (the clipped loss types; each [`GrpoLossType`] is one small function in `loss_types.rs`,
//! with its aggregation). Shapes: per-token tensors `[B, C]`, advantages `[B, 1]` or
//! `[B, C]` -> `loss` `[1]`, `per_example` `[B]`.
//!
//! Anchor: TRL 1.16 `GRPOTrainer._compute_loss`. Papers: GRPO (DeepSeekMath)
//! <https://arxiv.org/abs/2402.03300>, GSPO (sequence-level ratios)
//! <https://arxiv.org/abs/2507.18071>, DAPO <https://arxiv.org/abs/2503.14476>.
//!
//! Golden value: `fixtures/grpo/dapo.json` (TRL `_compute_loss`, `loss_type = "dapo"`,
//! `epsilon = 0.2`, `beta = 0`, float64) gives `loss = 0.13012485125945872`.
//!
//! The RLOO sequence-level loss ([`RlooLoss`]) lives in `rl/rloo.rs` and is re-exported here.

mod input;
mod loss_types;
mod stats;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

pub use super::rloo::{RlooLoss, RlooLossConfig};
pub use input::GrpoLossInput;
use loss_types::Terms;
use stats::{global_masked_mean, masked_quantile};

use super::kl::KlEstimator;
use crate::error::{Error, check_positive};
use crate::losses::{LossOutput, Metrics};
use crate::reduce::{Normalizer, mask_like, masked_row_mean};

/// GRPO-family per-token loss and its aggregation (TRL `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLossType {
    /// Clipped surrogate; mean over sequences of per-sequence token means, / grad-accum steps.
    Grpo,
    /// Clipped surrogate; token mean over the local batch, / grad-accum steps.
    Bnpo,
    /// Clipped surrogate; `sum / (B * max_completion_length)`, / grad-accum steps (Dr. GRPO).
    DrGrpo,
    /// Clipped surrogate; `sum / global token count` (DAPO). TRL default.
    Dapo,
    /// `-sg(min(rho, eps_high)) * A * logp`; DAPO aggregation (CISPO).
    Cispo,
    /// Soft gate `-(4 / tau) sigmoid(tau (rho - 1)) A`; GRPO aggregation (SAPO).
    Sapo,
    /// Clipped surrogate summed over tokens, mean over sequences (LUSPO).
    Luspo,
    /// `-phi(w) * A * logp` with a detached gamma weight of the sequence ratio; DAPO
    /// aggregation (VESPO).
    Vespo,
}

/// Token- or sequence-level importance ratio (TRL `importance_sampling_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceSamplingLevel {
    /// `rho_t = exp(logp_t - old_t)`.
    Token,
    /// GSPO: `rho = exp(masked_mean_t(logp_t - old_t))`, one ratio per sequence.
    Sequence,
}

/// Configuration of [`GrpoLoss`]. Names and defaults follow TRL's `GRPOConfig`.
#[derive(Config, Debug)]
pub struct GrpoLossConfig {
    /// Loss type. Default [`GrpoLossType::Dapo`] (TRL default).
    #[config(default = "GrpoLossType::Dapo")]
    pub loss_type: GrpoLossType,
    /// KL coefficient of the k3 term against the reference. Default 0 (no reference model).
    #[config(default = 0.0)]
    pub beta: f64,
    /// Lower clip `eps_low`. Default 0.2.
    #[config(default = 0.2)]
    pub epsilon: f64,
    /// Upper clip `eps_high`; `None` = `epsilon` (DAPO uses 0.28; CISPO's truncation, ~5).
    pub epsilon_high: Option<f64>,
    /// Two-sided clipping cap on the unclipped ratio (INTELLECT-2); `None` = off.
    pub delta: Option<f64>,
    /// Ratio level. Default [`ImportanceSamplingLevel::Token`].
    #[config(default = "ImportanceSamplingLevel::Token")]
    pub importance_sampling_level: ImportanceSamplingLevel,
    /// Multiply the k3 KL by the importance ratio (unbiased off-policy). Default true (TRL).
    #[config(default = true)]
    pub use_bias_correction_kl: bool,
    /// Train only on the top `q` fraction of tokens by entropy (1.0 = all). Default 1.0.
    /// Below 1 this reads the valid entropies' count back to the host (one small sync).
    #[config(default = 1.0)]
    pub top_entropy_quantile: f64,
    /// Off-policy sequence mask (DeepSeek-V3.2): drop sequences with negative advantage whose
    /// mean `sampling - logp` exceeds this. Default none.
    pub off_policy_mask_threshold: Option<f64>,
    /// Entropy bonus coefficient: `loss -= coef * mean entropy / gradient_accumulation_steps`.
    /// Default 0.
    #[config(default = 0.0)]
    pub entropy_coef: f64,
    /// SAPO temperature for positive advantages. Default 1.0.
    #[config(default = 1.0)]
    pub sapo_temperature_pos: f64,
    /// SAPO temperature for non-positive advantages. Default 1.05.
    #[config(default = 1.05)]
    pub sapo_temperature_neg: f64,
    /// VESPO `k` for non-negative advantages. Default 2.0.
    #[config(default = 2.0)]
    pub vespo_k_pos: f64,
    /// VESPO `lambda` for non-negative advantages. Default 3.0.
    #[config(default = 3.0)]
    pub vespo_lambda_pos: f64,
    /// VESPO `k` for negative advantages. Default 3.0.
    #[config(default = 3.0)]
    pub vespo_k_neg: f64,
    /// VESPO `lambda` for negative advantages. Default 2.0.
    #[config(default = 2.0)]
    pub vespo_lambda_neg: f64,
    /// Dr. GRPO normalizer length. Default 512 (TRL `max_completion_length`).
    #[config(default = 512)]
    pub max_completion_length: usize,
    /// Gradient accumulation steps (TRL divides grpo/bnpo/dr_grpo/sapo/luspo losses and the
    /// entropy bonus by it). Use 1 in evaluation. Default 1.
    #[config(default = 1)]
    pub gradient_accumulation_steps: usize,
    /// Optimizer steps per generation batch (dapo/cispo/vespo normalizer). Default 1.
    #[config(default = 1)]
    pub steps_per_generation: usize,
    /// Data-parallel processes (dapo/cispo/vespo normalizer). Default 1.
    #[config(default = 1)]
    pub num_processes: usize,
    /// Override the loss-type aggregation with this normalizer (no further division). Use
    /// [`Normalizer::GlobalTokens`] for exact invariance to micro-batching.
    pub normalizer: Option<Normalizer>,
}

impl GrpoLossConfig {
    /// The same config as TRL computes it in evaluation (`model.eval()` / `prediction_step`):
    /// the loss is not divided by the gradient-accumulation or generation steps, i.e.
    /// `gradient_accumulation_steps = steps_per_generation = 1`.
    pub fn for_evaluation(&self) -> Self {
        self.clone()
            .with_gradient_accumulation_steps(1)
            .with_steps_per_generation(1)
    }

    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<GrpoLoss> {
        let eps_high = self.epsilon_high.unwrap_or(self.epsilon);
        if !(self.epsilon.is_finite() && (0.0..1.0).contains(&self.epsilon)) {
            return Err(Error::config("epsilon", "must be in [0, 1)", self.epsilon));
        }
        if !(eps_high.is_finite() && eps_high >= 0.0) {
            return Err(Error::config(
                "epsilon_high",
                "must be finite and >= 0",
                eps_high,
            ));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(Error::config("beta", "must be finite and >= 0", self.beta));
        }
        if let Some(d) = self.delta
            && !(d.is_finite() && d > 1.0 + eps_high)
        {
            return Err(Error::config(
                "delta",
                "must be finite and > 1 + epsilon_high",
                d,
            ));
        }
        if !(self.top_entropy_quantile > 0.0 && self.top_entropy_quantile <= 1.0) {
            return Err(Error::config(
                "top_entropy_quantile",
                "must be in (0, 1]",
                self.top_entropy_quantile,
            ));
        }
        check_positive("sapo_temperature_pos", self.sapo_temperature_pos)?;
        check_positive("sapo_temperature_neg", self.sapo_temperature_neg)?;
        for (field, v) in [
            ("vespo_k_pos", self.vespo_k_pos),
            ("vespo_lambda_pos", self.vespo_lambda_pos),
            ("vespo_k_neg", self.vespo_k_neg),
            ("vespo_lambda_neg", self.vespo_lambda_neg),
            ("entropy_coef", self.entropy_coef),
        ] {
            if !v.is_finite() {
                return Err(Error::config(field, "must be finite", v));
            }
        }
        if let Some(t) = self.off_policy_mask_threshold
            && !t.is_finite()
        {
            return Err(Error::config(
                "off_policy_mask_threshold",
                "must be finite",
                t,
            ));
        }
        for (field, v) in [
            ("max_completion_length", self.max_completion_length),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("steps_per_generation", self.steps_per_generation),
            ("num_processes", self.num_processes),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be >= 1", v));
            }
        }
        if let Some(n) = &self.normalizer {
            n.validate()?;
        }
        Ok(GrpoLoss {
            config: self.clone(),
            eps_high,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> GrpoLoss = try_init;
    }
}

/// GRPO-family loss (see [`GrpoLossConfig`]).
#[derive(Module, Debug)]
pub struct GrpoLoss {
    #[module(skip)]
    config: GrpoLossConfig,
    eps_high: f64,
}

impl GrpoLoss {
    /// The configuration.
    pub fn config(&self) -> &GrpoLossConfig {
        &self.config
    }

    /// A copy that aggregates with `normalizer` (used by the update step).
    pub fn with_normalizer(&self, normalizer: Normalizer) -> Self {
        let mut config = self.config.clone();
        config.normalizer = Some(normalizer);
        Self {
            config,
            eps_high: self.eps_high,
        }
    }

    /// The GRPO-family loss, term for term as TRL's `GRPOTrainer._compute_loss` (one process).
    ///
    #[cfg_attr(
        doc,
        doc = r#"$$\ell_t = -\min\!\big(\rho_t A,\; \operatorname{clip}(\rho_t, 1-\epsilon_{lo}, 1+\epsilon_{hi})A\big) + \beta\,\rho_t\big(e^{\text{ref}_t-\log\pi_t} - (\text{ref}_t-\log\pi_t) - 1\big)$$"#
    )]
    #[cfg_attr(
        not(doc),
        doc = "`l_t = -min(rho_t A, clip(rho_t, 1-eps_lo, 1+eps_hi) A) + beta rho_t (exp(ref - logp) - (ref - logp) - 1)`"
    )]
    ///
    /// (clipped types; see [`GrpoLossType`] for the others), then masks (off-policy, top
    /// entropy), the sampler IS weight, and the loss type's aggregation through a
    /// [`Normalizer`]: grpo/sapo `SequenceMean`, bnpo `TokenMean`, dr_grpo
    /// `Constant(B * max_completion_length)` (each then / grad-accum steps), dapo/cispo/vespo
    /// `GlobalTokens(num_items_in_batch / num_processes * gas / steps_per_generation)`.
    /// luspo: `Constant(B)`, the mean over sequences of the masked token sum (`l_i * |o_i|` for
    /// sequence-level ratios), / grad-accum steps.
    ///
    /// Metrics (TRL names): `entropy`, `kl`, `clip_ratio/{low_mean,low_min,high_mean,high_max,
    /// region_mean}`, `cispo_clip_ratio`, `vespo/phi_seq_mean`, `policy_loss` and
    pub fn try_forward(&self, input: GrpoLossInput) -> crate::Result<LossOutput> {
        let c = &self.config;
        let GrpoLossInput {
            logps,
            mask,
            advantages,
            old_logps,
            ref_logps,
            entropies,
            sampling_logps,
            importance_sampling_ratio,
            num_items_in_batch,
        } = input.checked()?;
        let dims = logps.dims();
        let [b, _] = dims;
        let old = old_logps
            .map(Tensor::detach)
            .unwrap_or_else(|| logps.clone().detach());
        let entropy_mask = self.entropy_mask(entropies.as_ref(), &mask)?;
        let off_policy_mask = c.off_policy_mask_threshold.map(|threshold| {
            let sampling = sampling_logps
                .map(Tensor::detach)
                .unwrap_or_else(|| old.clone());
            off_policy_mask(sampling, &logps, &mask, &advantages, threshold)
        });

        let log_ratio = logps.clone() - old;
        let log_iw = match c.importance_sampling_level {
            ImportanceSamplingLevel::Token => log_ratio.clone(),
            ImportanceSamplingLevel::Sequence => {
                masked_row_mean(log_ratio.clone(), mask.clone()).reshape([b, 1])
            }
        };
        let coef_1 = super::ratio::importance_ratio(log_iw);
        let per_token_kl = match (c.beta != 0.0, ref_logps) {
            (false, _) => None,
            (true, None) => {
                return Err(Error::MissingInput {
                    arg: "ref_logps",
                    needed_by: "beta != 0 (the KL term): set GrpoLossInput::with_ref_logps".into(),
                });
            }
            (true, Some(reference)) => {
                let kl = super::kl::kl_estimate_unchecked(
                    logps.clone(),
                    reference.detach(),
                    KlEstimator::K3,
                );
                Some(match c.use_bias_correction_kl {
                    true => kl * coef_1.clone(),
                    false => kl,
                })
            }
        };

        let mut metrics = Metrics::new();
        let mut terms = Terms {
            logps: logps.clone(),
            log_ratio,
            coef_1,
            advantages,
            mask: mask.clone(),
            importance_sampling_ratio,
        };
        let mut per_token_loss =
            c.loss_type
                .per_token_loss(&mut terms, c, self.eps_high, &mut metrics);
        if let Some(m) = off_policy_mask {
            per_token_loss = per_token_loss * m;
        }
        if let Some(m) = &entropy_mask {
            per_token_loss = per_token_loss * mask_like(&logps, m.clone());
        }
        if let (Some(is), true) = (
            &terms.importance_sampling_ratio,
            c.loss_type.multiplies_is_ratio(),
        ) {
            per_token_loss = per_token_loss * is.clone().detach();
        }
        if let Some(kl) = &per_token_kl {
            per_token_loss = per_token_loss + kl.clone().mul_scalar(c.beta);
        }

        let gas = c.gradient_accumulation_steps as f64;
        let terms_bc = per_token_loss.clone().expand(dims);
        let (loss, policy_loss, entropy_norm) = match c.normalizer {
            Some(normalizer) => {
                let loss = normalizer.try_reduce_tokens(terms_bc, mask.clone())?;
                (loss.clone(), loss, Some(normalizer))
            }
            None => {
                let (normalizer, divisor) = c.loss_type.aggregation(c, b, num_items_in_batch)?;
                let policy = normalizer.try_reduce_tokens(terms_bc, mask.clone())?;
                (policy.clone().mul_scalar(1.0 / divisor), policy, None)
            }
        };

        let mut loss = loss;
        if c.entropy_coef != 0.0 {
            let h = entropies.clone().ok_or_else(|| Error::MissingInput {
                arg: "entropies",
                needed_by: "entropy_coef != 0: set GrpoLossInput::with_entropies".into(),
            })?;
            let effective = match &entropy_mask {
                Some(m) => m.clone().bool_and(mask.clone()),
                None => mask.clone(),
            };
            let bonus = match entropy_norm {
                Some(n) => n.try_reduce_tokens(h, effective)?,
                None => Normalizer::TokenMean
                    .try_reduce_tokens(h, effective)?
                    .mul_scalar(1.0 / gas),
            };
            loss = loss - bonus.mul_scalar(c.entropy_coef);
            metrics.insert("policy_loss", policy_loss);
            metrics.insert(
                "entropy_coef",
                Tensor::<1>::zeros([1], &logps.device()).add_scalar(c.entropy_coef),
            );
        }

        if let Some(kl) = &per_token_kl {
            metrics.insert("kl", global_masked_mean(kl.clone(), &mask));
        }
        if let Some(h) = &entropies {
            metrics.insert("entropy", global_masked_mean(h.clone(), &mask));
        }
        c.loss_type
            .clip_metrics(&terms, c.epsilon, self.eps_high, &mut metrics);
        let per_example = masked_row_mean(per_token_loss.expand(dims), mask);
        Ok(LossOutput {
            loss,
            per_example,
            metrics,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(&self, input: GrpoLossInput) -> LossOutput = try_forward;
    }

    /// The top-entropy token mask (`top_entropy_quantile < 1`): tokens whose entropy is at or
    /// above the `1 - q` quantile of the valid entropies (one host read of their count).
    fn entropy_mask(
        &self,
        entropies: Option<&Tensor<2>>,
        mask: &Tensor<2, Bool>,
    ) -> crate::Result<Option<Tensor<2, Bool>>> {
        let q = self.config.top_entropy_quantile;
        if q >= 1.0 {
            return Ok(None);
        }
        let Some(h) = entropies else {
            return Err(Error::MissingInput {
                arg: "entropies",
                needed_by: "top_entropy_quantile < 1: set GrpoLossInput::with_entropies".into(),
            });
        };
        let h = h.clone().detach();
        let maskf = mask_like(&h, mask.clone());
        Ok(Some(
            match masked_quantile(h.clone(), mask.clone(), 1.0 - q) {
                Some(threshold) => {
                    let above = (h * maskf - threshold.reshape([1, 1])).greater_equal_elem(0.0);
                    above.bool_and(mask.clone())
                }
                None => mask.clone().bool_and(mask.clone().bool_not()),
            },
        ))
    }
}

/// DeepSeek-V3.2's off-policy sequence mask: keep a sequence if `A >= 0` or its mean
/// `sampling - logp` over valid tokens is `<= threshold`. `[B, 1]` of 0 / 1.
fn off_policy_mask(
    sampling: Tensor<2>,
    logps: &Tensor<2>,
    mask: &Tensor<2, Bool>,
    advantages: &Tensor<2>,
    threshold: f64,
) -> Tensor<2> {
    let [b, _] = logps.dims();
    let kl = sampling - logps.clone().detach();
    let avg = masked_row_mean(kl, mask.clone()).reshape([b, 1]);
    let keep = mask_like(&avg, avg.clone().lower_equal_elem(threshold));
    let positive = mask_like(advantages, advantages.clone().greater_equal_elem(0.0));
    (keep + positive).clamp_max(1.0)
}
