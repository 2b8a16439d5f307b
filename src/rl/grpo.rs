//! The GRPO loss family (TRL `GRPOTrainer._compute_loss`) and the RLOO sequence-level loss
//! (TRL `RLOOTrainer._compute_loss`).

use burn::config::Config;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use super::kl::KlEstimator;
use crate::error::{Error, check_positive, check_same_shape, unwrap_or_panic};
use crate::losses::{LossOutput, Metrics};
use crate::reduce::{Normalizer, mask_like, masked_row_mean, masked_row_sum, zero_masked};

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

    /// Panicking form of [`try_init`](Self::try_init).
    ///
    /// # Panics
    /// On an invalid configuration.
    pub fn init(&self) -> GrpoLoss {
        unwrap_or_panic(self.try_init())
    }
}

/// Inputs of [`GrpoLoss::forward`].
///
/// # Shapes
/// `[B, C]` per-token tensors; advantages `[B, 1]` (one per sequence) or `[B, C]`.
#[derive(Debug, Clone)]
pub struct GrpoLossInput {
    /// Per-token log-probs of the completion (differentiable).
    pub logprobs: Tensor<2>,
    /// Valid completion tokens (completion mask, and tool mask if any).
    pub mask: Tensor<2, Bool>,
    /// Advantages `[B, 1]` or `[B, C]`.
    pub advantages: Tensor<2>,
    /// Log-probs at generation time; `None` = on-policy (`logprobs.detach()`: ratio 1).
    pub old_logprobs: Option<Tensor<2>>,
    /// Reference log-probs (required when `beta != 0`).
    pub ref_logprobs: Option<Tensor<2>>,
    /// Per-token entropies (metric, top-entropy mask, entropy bonus).
    pub entropies: Option<Tensor<2>>,
    /// Sampler (e.g. vLLM) log-probs for the off-policy mask; `None` = `old_logprobs`.
    pub sampling_logprobs: Option<Tensor<2>>,
    /// Per-token importance weight of the sampler correction (multiplies the per-token loss;
    /// VESPO folds it into its gamma weight).
    pub importance_sampling_ratio: Option<Tensor<2>>,
    /// Active tokens of the whole generation batch (dapo/cispo/vespo normalizer).
    pub num_items_in_batch: Option<f64>,
}

impl GrpoLossInput {
    /// Required inputs; advantages per sequence `[B]`.
    pub fn new(logprobs: Tensor<2>, mask: Tensor<2, Bool>, advantages: Tensor<1>) -> Self {
        let mask = crate::reduce::canonical_mask(mask);
        let b = advantages.dims()[0];
        Self::with_token_advantages(logprobs, mask, advantages.reshape([b, 1]))
    }
    /// Required inputs; advantages `[B, 1]` or per token `[B, C]`.
    pub fn with_token_advantages(
        logprobs: Tensor<2>,
        mask: Tensor<2, Bool>,
        advantages: Tensor<2>,
    ) -> Self {
        let mask = crate::reduce::canonical_mask(mask);
        Self {
            logprobs,
            mask,
            advantages,
            old_logprobs: None,
            ref_logprobs: None,
            entropies: None,
            sampling_logprobs: None,
            importance_sampling_ratio: None,
            num_items_in_batch: None,
        }
    }
    /// Sets the generation-time log-probs.
    pub fn with_old_logprobs(mut self, x: Tensor<2>) -> Self {
        self.old_logprobs = Some(x);
        self
    }
    /// Sets the reference log-probs.
    pub fn with_ref_logprobs(mut self, x: Tensor<2>) -> Self {
        self.ref_logprobs = Some(x);
        self
    }
    /// Sets the entropies.
    pub fn with_entropies(mut self, x: Tensor<2>) -> Self {
        self.entropies = Some(x);
        self
    }
    /// Sets the sampler log-probs.
    pub fn with_sampling_logprobs(mut self, x: Tensor<2>) -> Self {
        self.sampling_logprobs = Some(x);
        self
    }
    /// Sets the sampler importance ratio.
    pub fn with_importance_sampling_ratio(mut self, x: Tensor<2>) -> Self {
        self.importance_sampling_ratio = Some(x);
        self
    }
    /// Sets the generation batch's token count.
    pub fn with_num_items_in_batch(mut self, n: f64) -> Self {
        self.num_items_in_batch = Some(n);
        self
    }
}

/// GRPO-family loss (see [`GrpoLossConfig`]).
#[derive(Debug, Clone)]
pub struct GrpoLoss {
    config: GrpoLossConfig,
    eps_high: f64,
}

/// Mean over valid tokens (or over rows for `[B, 1]` values), clamped count: TRL's
/// `global_masked_mean` on one process.
fn global_masked_mean(x: Tensor<2>, mask: &Tensor<2, Bool>) -> Tensor<1> {
    let [b, c] = x.dims();
    if c == 1 && mask.dims()[1] != 1 {
        return x.sum().mul_scalar(1.0 / b as f64);
    }
    let x = x.expand(mask.dims());
    let count = mask_like(&x, mask.clone()).sum().clamp_min(1.0);
    zero_masked(x, mask.clone()).sum() / count
}

/// Per-sequence means (NaN for empty rows) reduced by min or max ignoring NaN; 0 when every
/// row is empty.
fn seq_mean_extreme(x: Tensor<2>, mask: &Tensor<2, Bool>, max: bool) -> Tensor<1> {
    let [b, c] = x.dims();
    let per_seq = if c == 1 && mask.dims()[1] != 1 {
        x.reshape([b])
    } else {
        let x = x.expand(mask.dims());
        let count = mask_like(&x, mask.clone()).sum_dim(1);
        (zero_masked(x, mask.clone()).sum_dim(1) / count).reshape([b])
    };
    let nan = per_seq.clone().is_nan();
    let extreme = if max {
        per_seq.mask_fill(nan, f64::NEG_INFINITY).max()
    } else {
        per_seq.mask_fill(nan, f64::INFINITY).min()
    };
    // No sequence with a valid token: 0, not the +-inf of an empty min/max.
    let empty = extreme.clone().is_inf();
    extreme.mask_fill(empty, 0.0)
}

/// `torch.quantile(values, q)` (linear interpolation) of the valid entries; `None` if empty.
fn masked_quantile(values: Tensor<2>, mask: Tensor<2, Bool>, q: f64) -> Option<Tensor<1>> {
    let selected = values.mask_select(mask);
    let n = selected.dims()[0];
    if n == 0 {
        return None;
    }
    let sorted = selected.sort(0);
    let pos = q * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let a = sorted.clone().narrow(0, lo, 1);
    let b = sorted.narrow(0, hi, 1);
    Some(a.clone() + (b - a).mul_scalar(pos - lo as f64))
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
    /// `entropy_coef` (with an entropy bonus).
    pub fn try_forward(&self, input: GrpoLossInput) -> crate::Result<LossOutput> {
        let c = &self.config;
        let GrpoLossInput {
            logprobs,
            mask,
            advantages,
            old_logprobs,
            ref_logprobs,
            entropies,
            sampling_logprobs,
            importance_sampling_ratio,
            num_items_in_batch,
        } = input;
        let mask = crate::reduce::canonical_mask(mask);
        let dims = logprobs.dims();
        let [b, t] = dims;
        check_same_shape("mask", &mask.dims(), &dims, "logprobs")?;
        let adv_dims = advantages.dims();
        if adv_dims != [b, 1] && adv_dims != dims {
            return Err(Error::shape(
                "advantages",
                format!("[{b}, 1] or [{b}, {t}]"),
                &adv_dims,
            ));
        }
        for (name, x) in [
            ("old_logprobs", &old_logprobs),
            ("ref_logprobs", &ref_logprobs),
            ("entropies", &entropies),
            ("sampling_logprobs", &sampling_logprobs),
            ("importance_sampling_ratio", &importance_sampling_ratio),
        ] {
            if let Some(x) = x {
                check_same_shape(name, &x.dims(), &dims, "logprobs")?;
            }
        }
        crate::error::check_non_empty(
            "logprobs",
            b * t,
            &format!("shape {:?} has a zero dimension", [b, t]),
        )?;
        if let Some(n) = num_items_in_batch
            && !(n.is_finite() && n >= 0.0)
        {
            return Err(Error::config(
                "num_items_in_batch",
                "must be finite and >= 0",
                n,
            ));
        }
        crate::error::check_dtype_like("advantages", &advantages, "logprobs", &logprobs)?;
        crate::error::check_finite(&logprobs, "logprobs")?;
        crate::error::check_finite(&advantages, "advantages")?;
        for (name, x) in [
            ("old_logprobs", &old_logprobs),
            ("ref_logprobs", &ref_logprobs),
            ("entropies", &entropies),
            ("sampling_logprobs", &sampling_logprobs),
            ("importance_sampling_ratio", &importance_sampling_ratio),
        ] {
            crate::error::check_dtype_like_opt(name, x.as_ref(), "logprobs", &logprobs)?;
            crate::error::check_finite_opt(x.as_ref(), name)?;
        }
        // f16 overflows e^{11}: the whole loss runs in f32 for half-precision inputs.
        use crate::precision::upcast_half;
        let logprobs = upcast_half(logprobs);
        let old_logprobs = old_logprobs.map(upcast_half);
        let ref_logprobs = ref_logprobs.map(upcast_half);
        let entropies = entropies.map(upcast_half);
        let sampling_logprobs = sampling_logprobs.map(upcast_half);
        let importance_sampling_ratio = importance_sampling_ratio.map(upcast_half);
        let advantages = upcast_half(advantages).detach();
        let maskf = mask_like(&logprobs, mask.clone());
        let old = old_logprobs
            .map(Tensor::detach)
            .unwrap_or_else(|| logprobs.clone().detach());

        let entropy_mask = match (&entropies, c.top_entropy_quantile < 1.0) {
            (Some(h), true) => {
                let h = h.clone().detach();
                Some(
                    match masked_quantile(h.clone(), mask.clone(), 1.0 - c.top_entropy_quantile) {
                        Some(threshold) => {
                            let above = (h * maskf.clone() - threshold.reshape([1, 1]))
                                .greater_equal_elem(0.0);
                            above.bool_and(mask.clone())
                        }
                        None => mask.clone().bool_and(mask.clone().bool_not()),
                    },
                )
            }
            (None, true) => {
                return Err(Error::MissingInput {
                    arg: "entropies",
                    needed_by: "top_entropy_quantile < 1: set GrpoLossInput::with_entropies".into(),
                });
            }
            _ => None,
        };

        let off_policy_mask = c.off_policy_mask_threshold.map(|threshold| {
            let sampling = sampling_logprobs
                .clone()
                .map(Tensor::detach)
                .unwrap_or_else(|| old.clone());
            let kl = sampling - logprobs.clone().detach();
            let avg = masked_row_mean(kl, mask.clone()).reshape([b, 1]);
            let keep = mask_like(&avg, avg.clone().lower_equal_elem(threshold));
            let positive = mask_like(&advantages, advantages.clone().greater_equal_elem(0.0));
            // keep if A >= 0 or KL <= threshold
            (keep + positive).clamp_max(1.0)
        });

        let log_ratio = logprobs.clone() - old;
        let log_iw = match c.importance_sampling_level {
            ImportanceSamplingLevel::Token => log_ratio.clone(),
            ImportanceSamplingLevel::Sequence => {
                masked_row_mean(log_ratio.clone(), mask.clone()).reshape([b, 1])
            }
        };
        let mut coef_1 = super::ratio::importance_ratio(log_iw);

        let per_token_kl = if c.beta != 0.0 {
            let reference = ref_logprobs
                .clone()
                .ok_or_else(|| Error::MissingInput {
                    arg: "ref_logprobs",
                    needed_by: "beta != 0 (the KL term): set GrpoLossInput::with_ref_logprobs"
                        .into(),
                })?
                .detach();
            let kl = super::kl::kl_estimate_unchecked(logprobs.clone(), reference, KlEstimator::K3);
            Some(if c.use_bias_correction_kl {
                kl * coef_1.clone()
            } else {
                kl
            })
        } else {
            None
        };

        let mut metrics = Metrics::new();
        let mut per_token_loss = match c.loss_type {
            GrpoLossType::Cispo => {
                let clamped = coef_1.clone().clamp_max(self.eps_high).detach();
                (clamped * advantages.clone() * logprobs.clone()).neg()
            }
            GrpoLossType::Grpo
            | GrpoLossType::Bnpo
            | GrpoLossType::DrGrpo
            | GrpoLossType::Dapo
            | GrpoLossType::Luspo => {
                let coef_2 = coef_1.clone().clamp(1.0 - c.epsilon, 1.0 + self.eps_high);
                if let Some(delta) = c.delta {
                    coef_1 = coef_1.clamp_max(delta);
                }
                let l1 = coef_1.clone() * advantages.clone();
                let l2 = coef_2 * advantages.clone();
                l1.min_pair(l2).neg()
            }
            GrpoLossType::Sapo => {
                let positive = advantages.clone().greater_elem(0.0);
                let temps = Tensor::zeros_like(&advantages)
                    .add_scalar(c.sapo_temperature_neg)
                    .mask_fill(positive, c.sapo_temperature_pos);
                // sigmoid as 1 / (1 + e^-x): ndarray's sigmoid is not f64-exact.
                let gate = (temps.clone() * coef_1.clone().sub_scalar(1.0))
                    .neg()
                    .exp()
                    .add_scalar(1.0)
                    .recip();
                let soft = gate.mul_scalar(4.0) / temps;
                (soft * advantages.clone()).neg()
            }
            GrpoLossType::Vespo => {
                let lower = 1e-8f64.ln();
                let lr = log_ratio.clone().detach().clamp(-20.0, 20.0);
                let mut seq = zero_masked(lr, mask.clone()).sum_dim(1);
                if let Some(is) = &importance_sampling_ratio {
                    // TRL sums the clamped log IS ratio over every position (unmasked).
                    seq = seq + is.clone().detach().log().clamp(lower, 20.0).sum_dim(1);
                }
                let log_w = seq.clamp(lower, 20.0);
                let w = log_w.clone().exp();
                let nonneg = advantages.clone().greater_equal_elem(0.0);
                let k = Tensor::zeros_like(&advantages)
                    .add_scalar(c.vespo_k_neg)
                    .mask_fill(nonneg.clone(), c.vespo_k_pos);
                let lambda = Tensor::zeros_like(&advantages)
                    .add_scalar(c.vespo_lambda_neg)
                    .mask_fill(nonneg, c.vespo_lambda_pos)
                    .clamp_min(1e-4);
                let phi = (lambda.clone() + k * log_w - lambda * w).exp();
                let bad = phi
                    .clone()
                    .is_nan()
                    .bool_or(phi.clone().is_finite().bool_not());
                let phi = phi.clone().mask_fill(bad, 0.0).detach();
                metrics.insert("vespo/phi_seq_mean", global_masked_mean(phi.clone(), &mask));
                (phi * advantages.clone() * logprobs.clone()).neg()
            }
        };

        if let Some(m) = off_policy_mask {
            per_token_loss = per_token_loss * m;
        }
        if let Some(m) = &entropy_mask {
            per_token_loss = per_token_loss * mask_like(&logprobs, m.clone());
        }
        if let (Some(is), true) = (
            &importance_sampling_ratio,
            c.loss_type != GrpoLossType::Vespo,
        ) {
            per_token_loss = per_token_loss * is.clone().detach();
        }
        if let Some(kl) = &per_token_kl {
            per_token_loss = per_token_loss + kl.clone().mul_scalar(c.beta);
        }

        let gas = c.gradient_accumulation_steps as f64;
        let (loss, policy_loss, entropy_norm) = if let Some(normalizer) = c.normalizer {
            let terms = per_token_loss.clone().expand(dims);
            let loss = normalizer.try_reduce_tokens(terms, mask.clone())?;
            (loss.clone(), loss, Some(normalizer))
        } else {
            let (normalizer, divisor) = match c.loss_type {
                GrpoLossType::Grpo | GrpoLossType::Sapo => (Normalizer::SequenceMean, gas),
                GrpoLossType::Bnpo => (Normalizer::TokenMean, gas),
                GrpoLossType::DrGrpo => (
                    Normalizer::Constant((b * c.max_completion_length) as f64),
                    gas,
                ),
                GrpoLossType::Dapo | GrpoLossType::Cispo | GrpoLossType::Vespo => {
                    let n = num_items_in_batch.ok_or_else(|| {
                        Error::MissingInput {
                            arg: "num_items_in_batch",
                            needed_by: format!(
                                "loss_type {:?} normalizes by the step's token count: set GrpoLossInput::with_num_items_in_batch",
                                c.loss_type
                            ),
                        }
                    })?;
                    let global =
                        n.max(1.0) / c.num_processes as f64 * gas / c.steps_per_generation as f64;
                    (Normalizer::GlobalTokens(global), 1.0)
                }
                // mean over sequences of the masked token sum: sum / B
                GrpoLossType::Luspo => (Normalizer::Constant(b as f64), gas),
            };
            let policy =
                normalizer.try_reduce_tokens(per_token_loss.clone().expand(dims), mask.clone())?;
            (policy.clone().mul_scalar(1.0 / divisor), policy, None)
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
                Tensor::<1>::zeros([1], &logprobs.device()).add_scalar(c.entropy_coef),
            );
        }

        if let Some(kl) = &per_token_kl {
            metrics.insert("kl", global_masked_mean(kl.clone(), &mask));
        }
        if let Some(h) = &entropies {
            metrics.insert("entropy", global_masked_mean(h.clone(), &mask));
        }
        match c.loss_type {
            GrpoLossType::Grpo
            | GrpoLossType::Bnpo
            | GrpoLossType::DrGrpo
            | GrpoLossType::Dapo
            | GrpoLossType::Luspo => {
                let low = mask_like(&coef_1, coef_1.clone().lower_elem(1.0 - c.epsilon))
                    * mask_like(&advantages, advantages.clone().lower_elem(0.0));
                let high = mask_like(&coef_1, coef_1.clone().greater_elem(1.0 + self.eps_high))
                    * mask_like(&advantages, advantages.clone().greater_elem(0.0));
                let region = low.clone() + high.clone();
                metrics.insert(
                    "clip_ratio/low_mean",
                    global_masked_mean(low.clone(), &mask),
                );
                metrics.insert(
                    "clip_ratio/high_mean",
                    global_masked_mean(high.clone(), &mask),
                );
                metrics.insert("clip_ratio/region_mean", global_masked_mean(region, &mask));
                metrics.insert("clip_ratio/low_min", seq_mean_extreme(low, &mask, false));
                metrics.insert("clip_ratio/high_max", seq_mean_extreme(high, &mask, true));
            }
            GrpoLossType::Cispo => {
                let clipped = mask_like(&coef_1, coef_1.clone().greater_elem(self.eps_high))
                    * mask_like(&advantages, advantages.clone().greater_elem(0.0));
                metrics.insert("cispo_clip_ratio", global_masked_mean(clipped, &mask));
            }
            _ => {}
        }
        let per_example = masked_row_mean(per_token_loss.expand(dims), mask);
        Ok(LossOutput {
            loss,
            per_example,
            metrics,
        })
    }

    /// Panicking form of [`try_forward`](Self::try_forward).
    ///
    /// # Panics
    /// On shape mismatches or missing inputs the configuration needs.
    pub fn forward(&self, input: GrpoLossInput) -> LossOutput {
        unwrap_or_panic(self.try_forward(input))
    }
}

/// Configuration of [`RlooLoss`] (TRL `RLOOTrainer._compute_loss`).
#[derive(Config, Debug)]
pub struct RlooLossConfig {
    /// Lower clip. Default 0.2.
    #[config(default = 0.2)]
    pub epsilon: f64,
    /// Upper clip; `None` = `epsilon`.
    pub epsilon_high: Option<f64>,
    /// Normalizer over sequences. Default [`Normalizer::SequenceMean`] (TRL); use
    /// [`Normalizer::GlobalSequences`] for micro-batch invariance.
    #[config(default = "Normalizer::SequenceMean")]
    pub normalizer: Normalizer,
}

impl RlooLossConfig {
    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<RlooLoss> {
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
        self.normalizer.validate_for_sequences("the RLOO loss")?;
        Ok(RlooLoss {
            eps_low: self.epsilon,
            eps_high,
            normalizer: self.normalizer,
        })
    }

    /// Panicking form of [`try_init`](Self::try_init).
    ///
    /// # Panics
    /// On an invalid configuration.
    pub fn init(&self) -> RlooLoss {
        unwrap_or_panic(self.try_init())
    }
}

/// RLOO sequence-level clipped loss.
#[derive(Debug, Clone)]
pub struct RlooLoss {
    eps_low: f64,
    eps_high: f64,
    normalizer: Normalizer,
}

impl RlooLoss {
    /// A copy reducing with `normalizer` (a sequence-level one).
    pub fn with_normalizer(&self, normalizer: Normalizer) -> Self {
        Self {
            normalizer,
            ..self.clone()
        }
    }

    /// Sequence-level PPO clip on summed log-probs.
    ///
    #[cfg_attr(
        doc,
        doc = r#"$$\rho_i = e^{\sum_t m_t \log\pi_t - \text{old}_i},\quad \ell_i = -\min\!\big(\rho_i A_i,\; \operatorname{clip}(\rho_i, 1-\epsilon_{lo}, 1+\epsilon_{hi})A_i\big)$$"#
    )]
    #[cfg_attr(
        not(doc),
        doc = "`rho_i = exp(sum_t m_t logp_t - old_i)`, `l_i = -min(rho_i A_i, clip(rho_i) A_i)`"
    )]
    ///
    /// Metrics: `entropy` (token mean, if given), `clip_ratio/{low_mean,low_min,high_mean,
    /// high_max,region_mean}` over sequences.
    ///
    /// # Shapes
    /// - logprobs, mask, entropies: `[B, C]`; old_logps, advantages: `[B]`
    pub fn try_forward(
        &self,
        logprobs: Tensor<2>,
        mask: Tensor<2, Bool>,
        old_logps: Tensor<1>,
        advantages: Tensor<1>,
        entropies: Option<Tensor<2>>,
    ) -> crate::Result<LossOutput> {
        let mask = crate::reduce::canonical_mask(mask);
        let [b, _] = logprobs.dims();
        check_same_shape("mask", &mask.dims(), &logprobs.dims(), "logprobs")?;
        check_same_shape("old_logps", &old_logps.dims(), &[b], "logprobs rows")?;
        check_same_shape("advantages", &advantages.dims(), &[b], "logprobs rows")?;
        crate::error::check_non_empty("logprobs", b, "the batch has no sequence (B = 0)")?;
        crate::error::check_dtype_like("old_logps", &old_logps, "logprobs", &logprobs)?;
        crate::error::check_dtype_like("advantages", &advantages, "logprobs", &logprobs)?;
        crate::error::check_dtype_like_opt("entropies", entropies.as_ref(), "logprobs", &logprobs)?;
        crate::error::check_finite(&logprobs, "logprobs")?;
        crate::error::check_finite(&old_logps, "old_logps")?;
        crate::error::check_finite(&advantages, "advantages")?;
        crate::error::check_finite_opt(entropies.as_ref(), "entropies")?;
        use crate::precision::upcast_half;
        let (logprobs, old_logps) = (upcast_half(logprobs), upcast_half(old_logps));
        let entropies = entropies.map(upcast_half);
        let advantages = upcast_half(advantages).detach();
        let logps = masked_row_sum(logprobs, mask.clone());
        let ratio = super::ratio::importance_ratio(logps - old_logps.detach());
        let clipped = ratio.clone().clamp(1.0 - self.eps_low, 1.0 + self.eps_high);
        let per_seq = (ratio.clone() * advantages.clone())
            .min_pair(clipped * advantages.clone())
            .neg();
        let loss = self.normalizer.try_reduce_sequences(per_seq.clone())?;
        let mut metrics = Metrics::new();
        if let Some(h) = entropies {
            check_same_shape("entropies", &h.dims(), &mask.dims(), "mask")?;
            let count = mask_like(&h, mask.clone()).sum().clamp_min(1.0);
            metrics.insert("entropy", zero_masked(h, mask).sum() / count);
        }
        let low = mask_like(&ratio, ratio.clone().lower_elem(1.0 - self.eps_low))
            * mask_like(&advantages, advantages.clone().lower_elem(0.0));
        let high = mask_like(&ratio, ratio.clone().greater_elem(1.0 + self.eps_high))
            * mask_like(&advantages, advantages.clone().greater_elem(0.0));
        metrics.insert("clip_ratio/low_mean", low.clone().mean());
        metrics.insert("clip_ratio/low_min", low.clone().min());
        metrics.insert("clip_ratio/high_mean", high.clone().mean());
        metrics.insert("clip_ratio/high_max", high.clone().max());
        metrics.insert("clip_ratio/region_mean", (low + high).mean());
        Ok(LossOutput {
            loss,
            per_example: per_seq,
            metrics,
        })
    }

    /// Panicking form of [`try_forward`](Self::try_forward).
    ///
    /// # Panics
    /// On shape mismatches.
    pub fn forward(
        &self,
        logprobs: Tensor<2>,
        mask: Tensor<2, Bool>,
        old_logps: Tensor<1>,
        advantages: Tensor<1>,
        entropies: Option<Tensor<2>>,
    ) -> LossOutput {
        unwrap_or_panic(self.try_forward(logprobs, mask, old_logps, advantages, entropies))
    }
}
