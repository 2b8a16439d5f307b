//! Importance-sampling correction for rollouts sampled by another engine (TRL 1.16's
//! `vllm_importance_sampling_*`).
//!
//! When the completions come from an inference server (vLLM, SGLang) that reports its own
//! log-probs, the trainer's policy at generation time (`old`) and the sampler (`sampling`)
//! differ: lower precision, another kernel, a stale copy. TRL weights each token's loss by
//! their ratio, in one of four modes:
//!
#![cfg_attr(
    doc,
    doc = r#"$$d_t = m_t(\log\pi_{\text{old}} - \log\pi_{\text{sampling}}),\quad r^{\text{token}}_t = e^{d_t},\quad r^{\text{seq}} = e^{\sum_t d_t}$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`d_t = m_t (old_t - sampling_t)`, token ratio `exp(d_t)`, sequence ratio `exp(sum_t d_t)`"
)]
//!
//! then `*_truncate` clamps the ratio to `[clip_min, clip_max]` and `*_mask` sets it to 0
//! outside that range (an unset bound is no bound). TRL's defaults: `sequence_mask`,
//! `clip_max = 3.0`, `clip_min = None`. Anchor: TRL 1.16 `GRPOTrainer._generate_and_score_completions`
//! (fixtures `grpo_matrix/*_is-*`, whose ratio this module reproduces).
//!
//! **Only for rollouts made elsewhere.** The crate's own sampler runs in-process on the
//! policy: there is no mismatch to correct, and comparing its truncated `sampling_logps`
//! with full-vocabulary log-probs measures the truncated mass, not off-policyness (TRL issue
//! 6789). Both log-probs must be over the **same support**: with an engine that truncates,
//! give its log-probs over the kept set (vLLM `processed_logps`) and renormalize `old`
//! over the same set (sampling replay, [`support_logps`](crate::logps::support_logps)).

use burn::config::Config;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, check_same_shape};

/// TRL's `vllm_importance_sampling_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceSamplingMode {
    /// Per-token ratio clamped to the bounds.
    TokenTruncate,
    /// Per-token ratio, 0 outside the bounds.
    TokenMask,
    /// Per-sequence ratio (`exp` of the summed log-ratio) clamped to the bounds.
    SequenceTruncate,
    /// Per-sequence ratio, 0 outside the bounds (TRL's default).
    SequenceMask,
}

/// Configuration of the importance-sampling correction (TRL 1.16 names and defaults).
#[derive(Config, Debug)]
pub struct ImportanceSamplingConfig {
    /// The mode. Default [`ImportanceSamplingMode::SequenceMask`] (TRL).
    #[config(default = "ImportanceSamplingMode::SequenceMask")]
    pub mode: ImportanceSamplingMode,
    /// Lower bound; `None` = none. Default none (TRL `vllm_importance_sampling_clip_min`).
    pub clip_min: Option<f64>,
    /// Upper bound; `None` = none. Default 3.0 (TRL `vllm_importance_sampling_clip_max`).
    #[config(default = "Some(3.0)")]
    pub clip_max: Option<f64>,
}

impl ImportanceSamplingConfig {
    /// Checks the bounds: finite, `clip_min >= 0`, `clip_min < clip_max`, and a truncating
    /// mode has at least one bound (TRL's rules).
    pub fn validate(&self) -> crate::Result<()> {
        for (field, bound) in [("clip_min", self.clip_min), ("clip_max", self.clip_max)] {
            if let Some(b) = bound
                && !(b.is_finite() && b >= 0.0)
            {
                return Err(Error::config(field, "must be finite and >= 0", b));
            }
        }
        if let (Some(lo), Some(hi)) = (self.clip_min, self.clip_max)
            && lo >= hi
        {
            return Err(Error::config(
                "clip_min",
                format!("must be < clip_max ({hi})"),
                lo,
            ));
        }
        let truncates = matches!(
            self.mode,
            ImportanceSamplingMode::TokenTruncate | ImportanceSamplingMode::SequenceTruncate
        );
        if truncates && self.clip_min.is_none() && self.clip_max.is_none() {
            return Err(Error::config(
                "clip_max",
                "a truncating mode needs clip_min or clip_max",
                "None",
            ));
        }
        Ok(())
    }

    /// The ratio: `[B, T]` in the token modes, `[B, 1]` in the sequence modes (pass it to
    /// [`GrpoLossInput::with_importance_sampling_ratio`](crate::rl::GrpoLossInput::with_importance_sampling_ratio)
    /// or [`Rollout::with_importance_sampling_ratio`](crate::rl::Rollout::with_importance_sampling_ratio)).
    /// Detached. Masked positions count as `d = 0` (ratio 1 in the token modes); a NaN
    /// log-ratio counts as 0, as in TRL.
    ///
    /// # Shapes
    /// - old_logps, sampling_logps, mask: `[B, T]`
    pub fn try_ratio(
        &self,
        old_logps: Tensor<2>,
        sampling_logps: Tensor<2>,
        mask: Tensor<2, Bool>,
    ) -> crate::Result<Tensor<2>> {
        self.validate()?;
        let mask = crate::reduce::canonical_mask(mask);
        let dims = old_logps.dims();
        check_same_shape("sampling_logps", &sampling_logps.dims(), &dims, "old_logps")?;
        check_same_shape("mask", &mask.dims(), &dims, "old_logps")?;
        crate::error::check_dtype_like("sampling_logps", &sampling_logps, "old_logps", &old_logps)?;
        let d = (old_logps.detach() - sampling_logps.detach()).mask_fill(mask.bool_not(), 0.0);
        let d = d.clone().mask_fill(d.is_nan(), 0.0);
        let log_ratio = match self.mode {
            ImportanceSamplingMode::TokenTruncate | ImportanceSamplingMode::TokenMask => d,
            ImportanceSamplingMode::SequenceTruncate | ImportanceSamplingMode::SequenceMask => {
                d.sum_dim(1)
            }
        };
        let ratio = crate::rl::ratio::importance_ratio(log_ratio);
        Ok(match self.mode {
            ImportanceSamplingMode::TokenTruncate | ImportanceSamplingMode::SequenceTruncate => {
                let mut r = ratio;
                if let Some(lo) = self.clip_min {
                    r = r.clamp_min(lo);
                }
                if let Some(hi) = self.clip_max {
                    r = r.clamp_max(hi);
                }
                r
            }
            ImportanceSamplingMode::TokenMask | ImportanceSamplingMode::SequenceMask => {
                let mut outside = ratio.clone().is_nan();
                if let Some(lo) = self.clip_min {
                    outside = outside.bool_or(ratio.clone().lower_elem(lo));
                }
                if let Some(hi) = self.clip_max {
                    outside = outside.bool_or(ratio.clone().greater_elem(hi));
                }
                ratio.mask_fill(outside, 0.0)
            }
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_ratio`](Self::try_ratio).
        pub fn ratio(
            &self,
            old_logps: Tensor<2>,
            sampling_logps: Tensor<2>,
            mask: Tensor<2, Bool>,
        ) -> Tensor<2> = try_ratio;
    }
}
