//! PPO losses: clipped surrogate (asymmetric and dual clip), clipped value loss, entropy bonus.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Tensor};

use crate::error::{Error, check_positive, check_same_shape};
use crate::losses::{LossOutput, Metrics};
use crate::reduce::{MeanDenominator, Normalizer, mask_like, masked_mean_with};

/// Configuration of [`PpoLoss`]. Defaults follow TRL's PPO (`cliprange` 0.2,
/// `cliprange_value` 0.2, `vf_coef` 0.1, no entropy bonus); torchtune's `PPOLoss` is
/// `epsilon` 0.1 with the same value settings.
#[derive(Config, Debug)]
pub struct PpoLossConfig {
    /// Lower clip `eps_low`: ratios below `1 - eps_low` are clipped. Default 0.2. In `(0, 1)`.
    #[config(default = 0.2)]
    pub epsilon: f64,
    /// Upper clip `eps_high` (DAPO "clip-higher"); `None` = `epsilon`.
    pub epsilon_high: Option<f64>,
    /// Dual-clip constant `c > 1` (Ye et al. 2020): for negative advantages the per-token loss
    /// is capped at `-c * A`. `None` = off (default).
    pub dual_clip: Option<f64>,
    /// Value clip range around the old values. Default 0.2.
    #[config(default = 0.2)]
    pub value_clip_range: f64,
    /// Value-loss coefficient. Default 0.1.
    #[config(default = 0.1)]
    pub vf_coef: f64,
    /// Entropy-bonus coefficient (`loss -= coef * mean entropy`). Default 0.
    #[config(default = 0.0)]
    pub entropy_coef: f64,
    /// Normalizer of the policy and entropy terms. Default [`Normalizer::TokenMean`]; pass
    /// [`Normalizer::GlobalTokens`] with the optimizer step's token count for exact gradient
    /// accumulation (the [`ppo_update`](super::ppo_update) step does).
    #[config(default = "Normalizer::TokenMean")]
    pub normalizer: Normalizer,
    /// Normalizer of the value term; `None` = same as `normalizer`.
    pub value_normalizer: Option<Normalizer>,
}

impl PpoLossConfig {
    /// torchtune 0.6.1's `PPOLoss(epsilon, value_clip_range, vf_coef)`: its `masked_mean`
    /// divides by `count + 1e-8` on both the policy and the value term
    /// ([`Normalizer::TokenMeanEps`]`(1e-8)`); without a mask it is a plain mean, which the
    /// same normalizer gives up to `1e-8 / count`.
    pub fn torchtune(epsilon: f64, value_clip_range: f64, vf_coef: f64) -> Self {
        Self::new()
            .with_epsilon(epsilon)
            .with_value_clip_range(value_clip_range)
            .with_vf_coef(vf_coef)
            .with_normalizer(Normalizer::TokenMeanEps(1e-8))
    }

    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<PpoLoss> {
        let eps_high = self.epsilon_high.unwrap_or(self.epsilon);
        if !(self.epsilon.is_finite() && self.epsilon > 0.0 && self.epsilon < 1.0) {
            return Err(Error::config("epsilon", "must be in (0, 1)", self.epsilon));
        }
        check_positive("epsilon_high", eps_high)?;
        if let Some(c) = self.dual_clip
            && !(c.is_finite() && c > 1.0)
        {
            return Err(Error::config("dual_clip", "must be finite and > 1", c));
        }
        check_positive("value_clip_range", self.value_clip_range)?;
        for (field, v) in [
            ("vf_coef", self.vf_coef),
            ("entropy_coef", self.entropy_coef),
        ] {
            if !v.is_finite() {
                return Err(Error::config(field, "must be finite", v));
            }
        }
        self.normalizer.validate()?;
        if let Some(n) = &self.value_normalizer {
            n.validate()?;
        }
        Ok(PpoLoss {
            eps_low: self.epsilon,
            eps_high,
            dual_clip: self.dual_clip,
            value_clip_range: self.value_clip_range,
            vf_coef: self.vf_coef,
            entropy_coef: self.entropy_coef,
            normalizer: self.normalizer,
            value_normalizer: self.value_normalizer,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> PpoLoss = try_init;
    }
}

/// Inputs of [`PpoLoss::forward`]. Build with [`PpoLossInput::new`] and the `with_*` methods.
///
/// # Shapes
/// Every tensor is `[B, T]`.
#[derive(Debug, Clone)]
pub struct PpoLossInput {
    /// New per-token log-probs (differentiable).
    pub logps: Tensor<2>,
    /// Log-probs at rollout time (constants).
    pub old_logps: Tensor<2>,
    /// Advantages (constants).
    pub advantages: Tensor<2>,
    /// Valid positions (`true` = counts); `None` = all.
    pub mask: Option<Tensor<2, Bool>>,
    /// `(values, old_values, returns)`: new value predictions (differentiable), values at rollout
    /// time and value targets. `None` = no value loss.
    pub values: Option<(Tensor<2>, Tensor<2>, Tensor<2>)>,
    /// Mask of the value loss; `None` = `mask`.
    pub value_mask: Option<Tensor<2, Bool>>,
    /// Per-token entropies (differentiable) for the bonus and the `entropy` metric.
    pub entropy: Option<Tensor<2>>,
}

impl PpoLossInput {
    /// Policy inputs only.
    pub fn new(logps: Tensor<2>, old_logps: Tensor<2>, advantages: Tensor<2>) -> Self {
        Self {
            logps,
            old_logps,
            advantages,
            mask: None,
            values: None,
            value_mask: None,
            entropy: None,
        }
    }
    /// Sets the mask.
    pub fn with_mask(mut self, mask: Tensor<2, Bool>) -> Self {
        let mask = crate::reduce::canonical_mask(mask);
        self.mask = Some(mask);
        self
    }
    /// Adds the value loss inputs.
    pub fn with_values(
        mut self,
        values: Tensor<2>,
        old_values: Tensor<2>,
        returns: Tensor<2>,
    ) -> Self {
        self.values = Some((values, old_values, returns));
        self
    }
    /// Sets a separate value mask.
    pub fn with_value_mask(mut self, mask: Tensor<2, Bool>) -> Self {
        let mask = crate::reduce::canonical_mask(mask);
        self.value_mask = Some(mask);
        self
    }
    /// Adds per-token entropies.
    pub fn with_entropy(mut self, entropy: Tensor<2>) -> Self {
        self.entropy = Some(entropy);
        self
    }
}

impl PpoLossInput {
    /// Checks shapes, dtypes and (in checked mode) finiteness, fills the masks and upcasts
    /// half precision (f16 overflows `e^{11}`: the loss runs in f32 for half inputs).
    fn validated(self) -> crate::Result<ValidPpoInput> {
        let PpoLossInput {
            logps,
            old_logps,
            advantages,
            mask,
            values,
            value_mask,
            entropy,
        } = self;
        let dims = logps.dims();
        let same_shape = |arg: &'static str, t: &[usize]| check_same_shape(arg, t, &dims, "logps");
        same_shape("old_logps", &old_logps.dims())?;
        same_shape("advantages", &advantages.dims())?;
        if let Some((v, v_old, returns)) = &values {
            same_shape("values", &v.dims())?;
            same_shape("old_values", &v_old.dims())?;
            same_shape("returns", &returns.dims())?;
        }
        if let Some(h) = &entropy {
            same_shape("entropy", &h.dims())?;
        }
        let mask = match mask.map(crate::reduce::canonical_mask) {
            Some(m) => {
                same_shape("mask", &m.dims())?;
                m
            }
            None => super::all_true(dims, &logps.device()),
        };
        let value_mask = match value_mask.map(crate::reduce::canonical_mask) {
            Some(m) => {
                same_shape("value_mask", &m.dims())?;
                m
            }
            None => mask.clone(),
        };
        crate::error::check_non_empty(
            "logps",
            dims[0] * dims[1],
            &format!("shape {dims:?} has a zero dimension"),
        )?;
        {
            use crate::error::{check_dtype_like as same, check_dtype_like_opt as same_opt};
            same("old_logps", &old_logps, "logps", &logps)?;
            same("advantages", &advantages, "logps", &logps)?;
            if let Some((v, v_old, returns)) = &values {
                same("values", v, "logps", &logps)?;
                same("old_values", v_old, "logps", &logps)?;
                same("returns", returns, "logps", &logps)?;
            }
            same_opt("entropy", entropy.as_ref(), "logps", &logps)?;
        }
        crate::error::check_finite(&logps, "logps")?;
        crate::error::check_finite(&old_logps, "old_logps")?;
        crate::error::check_finite(&advantages, "advantages")?;
        if let Some((v, v_old, returns)) = &values {
            crate::error::check_finite(v, "values")?;
            crate::error::check_finite(v_old, "old_values")?;
            crate::error::check_finite(returns, "returns")?;
        }
        crate::error::check_finite_opt(entropy.as_ref(), "entropy")?;
        use crate::precision::upcast_half;
        Ok(ValidPpoInput {
            logps: upcast_half(logps),
            old_logps: upcast_half(old_logps),
            advantages: upcast_half(advantages).detach(),
            mask,
            values: values.map(|(v, o, r)| (upcast_half(v), upcast_half(o), upcast_half(r))),
            value_mask,
            entropy: entropy.map(upcast_half),
        })
    }
}

/// A checked [`PpoLossInput`]: masks filled in, half precision upcast, advantages detached.
struct ValidPpoInput {
    logps: Tensor<2>,
    old_logps: Tensor<2>,
    advantages: Tensor<2>,
    mask: Tensor<2, Bool>,
    values: Option<(Tensor<2>, Tensor<2>, Tensor<2>)>,
    value_mask: Tensor<2, Bool>,
    entropy: Option<Tensor<2>>,
}

/// The policy terms the metrics report.
struct PolicyTerms {
    policy_loss: Tensor<1>,
    log_ratio: Tensor<2>,
    ratio: Tensor<2>,
    clip_active: Tensor<2>,
}

/// PPO loss (see [`PpoLossConfig`]).
#[derive(Module, Debug)]
pub struct PpoLoss {
    eps_low: f64,
    eps_high: f64,
    dual_clip: Option<f64>,
    value_clip_range: f64,
    vf_coef: f64,
    entropy_coef: f64,
    #[module(skip)]
    normalizer: Normalizer,
    #[module(skip)]
    value_normalizer: Option<Normalizer>,
}

impl PpoLoss {
    /// A copy using `normalizer` for every term (the policy, value and entropy terms); used by
    /// the update step to pass the optimizer step's global token count.
    pub fn with_normalizer(&self, normalizer: Normalizer) -> Self {
        Self {
            normalizer,
            value_normalizer: None,
            ..self.clone()
        }
    }

    /// A copy with separate policy and value normalizers (e.g. torchtune's
    /// `sum / (count + 1e-8)` for each mask: `Normalizer::Constant(count + 1e-8)`).
    pub fn with_normalizers(&self, policy: Normalizer, value: Normalizer) -> Self {
        Self {
            normalizer: policy,
            value_normalizer: Some(value),
            ..self.clone()
        }
    }

    /// The PPO objective.
    ///
    #[cfg_attr(
        doc,
        doc = r#"$$\rho_t = e^{\log\pi_t - \log\pi^{\text{old}}_t},\quad \ell^{\pi}_t = \max\!\big(-A_t\rho_t,\; -A_t\operatorname{clip}(\rho_t, 1-\epsilon_{lo}, 1+\epsilon_{hi})\big)$$
$$\ell^{V}_t = \tfrac12\max\!\big((V_t - R_t)^2,\; (\operatorname{clip}(V_t, V^{\text{old}}_t \pm \epsilon_V) - R_t)^2\big),\quad L = N(\ell^\pi) + c_V N_V(\ell^V) - c_H N(H)$$"#
    )]
    #[cfg_attr(
        not(doc),
        doc = "`l_pi = max(-A rho, -A clip(rho, 1-eps_lo, 1+eps_hi))`, `l_V = 0.5 max((V-R)^2, (clip(V, V_old +- eps_V) - R)^2)`, `L = N(l_pi) + c_V N_V(l_V) - c_H N(H)`"
    )]
    ///
    /// With dual clip `c`, `l_pi = min(l_pi, -c A)` where `A < 0`. `N` is the configured
    /// normalizer over the mask.
    ///
    /// Metrics: `policy_loss`, `value_loss`, `clipfrac` (fraction of valid tokens where the
    /// clip is active), `clip_ratio/low_mean`, `clip_ratio/high_mean`, `clip_ratio/region_mean`
    /// (ratio outside the range on the side that matters), `approx_kl` (`mean(log_ratio^2) / 2`),
    /// `ratio_mean` / `ratio_var` (masked), `ratios_mean` (torchtune's **unmasked** mean),
    /// `val/clipfrac`, `entropy`. `per_example` is the per-sequence mean of `l_pi`.
    ///
    /// # Shapes
    /// - every input `[B, T]`; loss `[1]`, per_example `[B]`
    pub fn try_forward(&self, input: PpoLossInput) -> crate::Result<LossOutput> {
        let input = input.validated()?;
        // The clipped surrogate.
        let advantages = input.advantages.clone();
        let log_ratio = input.logps.clone() - input.old_logps.clone().detach();
        let ratio = super::ratio::importance_ratio(log_ratio.clone());
        let clipped = ratio.clone().clamp(1.0 - self.eps_low, 1.0 + self.eps_high);
        let unclipped_loss = advantages.clone().neg() * ratio.clone();
        let clipped_loss = advantages.clone().neg() * clipped;
        let mut pg = unclipped_loss.clone().max_pair(clipped_loss.clone());
        if let Some(c) = self.dual_clip {
            let cap = advantages.clone().mul_scalar(-c);
            let negative = advantages.lower_elem(0.0);
            pg = pg.clone().mask_where(negative, pg.min_pair(cap));
        }
        let policy_loss = self
            .normalizer
            .try_reduce_tokens(pg.clone(), input.mask.clone())?;
        let mut loss = policy_loss.clone();
        // The clipped value loss.
        let value = match &input.values {
            Some((v, v_old, returns)) => {
                let (v_old, returns) = (v_old.clone().detach(), returns.clone().detach());
                let v_clipped = v
                    .clone()
                    .max_pair(v_old.clone().sub_scalar(self.value_clip_range))
                    .min_pair(v_old.add_scalar(self.value_clip_range));
                let vf1 = (v.clone() - returns.clone()).square();
                let vf2 = (v_clipped - returns).square();
                let clipped = mask_like(&vf1, vf2.clone().greater(vf1.clone()));
                let normalizer = self.value_normalizer.unwrap_or(self.normalizer);
                let value_loss = normalizer
                    .try_reduce_tokens(vf1.max_pair(vf2), input.value_mask.clone())?
                    .mul_scalar(0.5);
                loss = loss + value_loss.clone().mul_scalar(self.vf_coef);
                Some((value_loss, clipped))
            }
            None => None,
        };
        // The entropy bonus.
        if let Some(h) = &input.entropy
            && self.entropy_coef != 0.0
        {
            let bonus = self
                .normalizer
                .try_reduce_tokens(h.clone(), input.mask.clone())?;
            loss = loss - bonus.mul_scalar(self.entropy_coef);
        }
        let metrics = self.metrics(
            &input,
            PolicyTerms {
                policy_loss,
                log_ratio,
                ratio,
                clip_active: mask_like(&pg, clipped_loss.greater(unclipped_loss)),
            },
            value,
        );
        let per_example = crate::reduce::masked_row_mean(pg, input.mask);
        Ok(LossOutput {
            loss,
            per_example,
            metrics,
        })
    }

    /// The metrics of [`try_forward`](Self::try_forward) (its doc lists them).
    fn metrics(
        &self,
        input: &ValidPpoInput,
        policy: PolicyTerms,
        value: Option<(Tensor<1>, Tensor<2>)>,
    ) -> Metrics {
        let mask = &input.mask;
        let mean = |x: Tensor<2>, m: &Tensor<2, Bool>| -> Tensor<1> {
            masked_mean_with(x, m.clone(), None, MeanDenominator::AtLeastOne)
        };
        let PolicyTerms {
            policy_loss,
            log_ratio,
            ratio,
            clip_active,
        } = policy;
        let advantages = &input.advantages;
        let mut metrics = Metrics::new();
        metrics.insert("policy_loss", policy_loss);
        metrics.insert("clipfrac", mean(clip_active, mask));
        let low = mask_like(&ratio, ratio.clone().lower_elem(1.0 - self.eps_low))
            * mask_like(advantages, advantages.clone().lower_elem(0.0));
        let high = mask_like(&ratio, ratio.clone().greater_elem(1.0 + self.eps_high))
            * mask_like(advantages, advantages.clone().greater_elem(0.0));
        metrics.insert("clip_ratio/low_mean", mean(low.clone(), mask));
        metrics.insert("clip_ratio/high_mean", mean(high.clone(), mask));
        metrics.insert("clip_ratio/region_mean", mean(low + high, mask));
        metrics.insert("approx_kl", mean(log_ratio.square().mul_scalar(0.5), mask));
        let ratio_mean = mean(ratio.clone(), mask);
        let centered = ratio.clone() - ratio_mean.clone().unsqueeze::<2>();
        metrics.insert("ratio_var", mean(centered.square(), mask));
        metrics.insert("ratio_mean", ratio_mean);
        metrics.insert("ratios_mean", ratio.mean());
        if let Some((value_loss, clipped)) = value {
            metrics.insert("value_loss", value_loss);
            metrics.insert("val/clipfrac", mean(clipped, &input.value_mask));
        }
        if let Some(h) = &input.entropy {
            metrics.insert("entropy", mean(h.clone(), mask));
        }
        metrics
    }

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(&self, input: PpoLossInput) -> LossOutput = try_forward;
    }
}
