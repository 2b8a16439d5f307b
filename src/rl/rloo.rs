//! The RLOO sequence-level clipped loss (TRL 1.16 `RLOOTrainer._compute_loss`).
//!
#![cfg_attr(
    doc,
    doc = r#"$$\rho_i = e^{\sum_t m_t \log\pi_t - \text{old}_i},\quad \ell_i = -\min\!\big(\rho_i A_i,\; \operatorname{clip}(\rho_i, 1-\epsilon_{lo}, 1+\epsilon_{hi})A_i\big)$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`rho_i = exp(sum_t m_t logp_t - old_i)`, `l_i = -min(rho_i A_i, clip(rho_i, 1-eps_lo, 1+eps_hi) A_i)`"
)]
//!
//! Shapes: log-probs, mask, entropies `[B, C]`; `old_logps`, advantages `[B]` -> `loss`
//! `[1]`, `per_example` `[B]`. Also reachable as `crate::rl::grpo::RlooLoss`.
//!
//! Anchor: TRL 1.16 `RLOOTrainer._compute_loss`. Paper: Ahmadian et al., *Back to Basics*,
//! <https://arxiv.org/abs/2402.14740>.
//!
//! Golden value: `fixtures/rloo/loss_basic.json` (TRL `_compute_loss`, `epsilon = 0.2`,
//! float64) gives `loss = 0.35860713711145165`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Tensor};

use crate::error::{Error, check_same_shape};
use crate::losses::{LossOutput, Metrics};
use crate::reduce::{MeanDenominator, Normalizer, mask_like, masked_mean_with, masked_row_sum};

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

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> RlooLoss = try_init;
    }
}

/// RLOO sequence-level clipped loss.
#[derive(Module, Debug)]
pub struct RlooLoss {
    eps_low: f64,
    eps_high: f64,
    #[module(skip)]
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
    /// - logps, mask, entropies: `[B, C]`; old_logps, advantages: `[B]`
    pub fn try_forward(
        &self,
        logps: Tensor<2>,
        mask: Tensor<2, Bool>,
        old_logps: Tensor<1>,
        advantages: Tensor<1>,
        entropies: Option<Tensor<2>>,
    ) -> crate::Result<LossOutput> {
        let mask = crate::reduce::canonical_mask(mask);
        let [b, _] = logps.dims();
        check_same_shape("mask", &mask.dims(), &logps.dims(), "logps")?;
        check_same_shape("old_logps", &old_logps.dims(), &[b], "logps rows")?;
        check_same_shape("advantages", &advantages.dims(), &[b], "logps rows")?;
        crate::error::check_non_empty("logps", b, "the batch has no sequence (B = 0)")?;
        crate::error::check_dtype_like("old_logps", &old_logps, "logps", &logps)?;
        crate::error::check_dtype_like("advantages", &advantages, "logps", &logps)?;
        crate::error::check_dtype_like_opt("entropies", entropies.as_ref(), "logps", &logps)?;
        crate::error::check_finite(&logps, "logps")?;
        crate::error::check_finite(&old_logps, "old_logps")?;
        crate::error::check_finite(&advantages, "advantages")?;
        crate::error::check_finite_opt(entropies.as_ref(), "entropies")?;
        if let Some(h) = &entropies {
            check_same_shape("entropies", &h.dims(), &mask.dims(), "mask")?;
        }
        use crate::precision::upcast_half;
        let (logps, old_logps) = (upcast_half(logps), upcast_half(old_logps));
        let entropies = entropies.map(upcast_half);
        let advantages = upcast_half(advantages).detach();
        let logps = masked_row_sum(logps, mask.clone());
        let ratio = super::ratio::importance_ratio(logps - old_logps.detach());
        let clipped = ratio.clone().clamp(1.0 - self.eps_low, 1.0 + self.eps_high);
        let per_seq = (ratio.clone() * advantages.clone())
            .min_pair(clipped * advantages.clone())
            .neg();
        let loss = self.normalizer.try_reduce_sequences(per_seq.clone())?;
        let metrics = self.metrics(&ratio, &advantages, entropies, mask);
        Ok(LossOutput {
            loss,
            per_example: per_seq,
            metrics,
        })
    }

    /// The metrics of [`try_forward`](Self::try_forward): the token-mean entropy and the
    /// sequence clip ratios.
    fn metrics(
        &self,
        ratio: &Tensor<1>,
        advantages: &Tensor<1>,
        entropies: Option<Tensor<2>>,
        mask: Tensor<2, Bool>,
    ) -> Metrics {
        let mut metrics = Metrics::new();
        if let Some(h) = entropies {
            let entropy = masked_mean_with(h, mask, None, MeanDenominator::AtLeastOne);
            metrics.insert("entropy", entropy);
        }
        let low = mask_like(ratio, ratio.clone().lower_elem(1.0 - self.eps_low))
            * mask_like(advantages, advantages.clone().lower_elem(0.0));
        let high = mask_like(ratio, ratio.clone().greater_elem(1.0 + self.eps_high))
            * mask_like(advantages, advantages.clone().greater_elem(0.0));
        metrics.insert("clip_ratio/low_mean", low.clone().mean());
        metrics.insert("clip_ratio/low_min", low.clone().min());
        metrics.insert("clip_ratio/high_mean", high.clone().mean());
        metrics.insert("clip_ratio/high_max", high.clone().max());
        metrics.insert("clip_ratio/region_mean", (low + high).mean());
        metrics
    }

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(
            &self,
            logps: Tensor<2>,
            mask: Tensor<2, Bool>,
            old_logps: Tensor<1>,
            advantages: Tensor<1>,
            entropies: Option<Tensor<2>>,
        ) -> LossOutput = try_forward;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, t, v};
    use burn::tensor::Device;

    #[test]
    fn on_policy_rloo_loss_is_minus_the_mean_advantage() {
        let device = Device::flex();
        let logps = t(&[-1.0, -2.0, -0.5, -0.25], &device).reshape([2, 2]);
        let mask = logps.clone().lower_elem(0.0);
        let old = t(&[-3.0, -0.75], &device);
        // rho = 1 on policy: l_i = -A_i; SequenceMean: -(1 - 3) / 2 = 1.
        let out =
            RlooLossConfig::new()
                .init()
                .forward(logps, mask, old, t(&[1.0, -3.0], &device), None);
        assert_close(&v(out.loss), &[1.0]);
    }
}
