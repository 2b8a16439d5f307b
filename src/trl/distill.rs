//! Distillation configs: `DistillationConfig` (TRL 1.16, `trl.DistillationConfig`) and
//! `GKDConfig` (`trl.experimental.gkd`).

use serde_json::{Map, Value, json};

use super::fields::{DISTILLATION_OWN, GKD_OWN};
use super::online::sampler;
use super::reader::Reader;
use super::{FromTrl, TrlConfig};
use crate::error::Result;
use crate::generate::{OnPolicyDistillationConfig, SamplerConfig};
use crate::losses::DistillationLossConfig;

/// What a `DistillationConfig` or `GKDConfig` configures in this crate: the on-policy
/// distillation step (its loss inside) and the student's sampler.
#[derive(Debug, Clone)]
pub struct DistillationConfigs {
    /// The step: `lmbda`, the loss (`beta`, `temperature`), `learning_rate`.
    pub step: OnPolicyDistillationConfig,
    /// The sampler of the student's completions: one per prompt, `max_new_tokens` from
    /// `max_completion_length` (`DistillationConfig`) or `max_new_tokens` (`GKDConfig`),
    /// `temperature`, and `DistillationConfig`'s `top_k` (0 = off), `top_p`, `min_p`. Set the
    /// stop and pad ids from your tokenizer.
    pub sampler: SamplerConfig,
}

/// `learning_rate`, read for the step and also left for the training loop.
fn learning_rate(r: &mut Reader, default: f64) -> Result<f64> {
    r.share("learning_rate");
    r.f64("learning_rate", default)
}

/// `DistillationConfig` (TRL 1.16): always on-policy (`lmbda = 1`: TRL's
/// `DistillationTrainer` generates every batch from the student), `beta` (1.0, reverse KL),
/// `temperature` (1.0) for sampling **and** the loss, `max_completion_length` (512), `top_p`
/// (1.0), `top_k` (0), `min_p` (none), `learning_rate` (1e-6, TRL's value for this class).
/// Reported when set: `repetition_penalty`, `generation_kwargs` (not implemented by the
/// sampler), `max_tool_calling_iterations` (tool calls).
impl FromTrl for DistillationConfigs {
    const TRL_CLASS: &'static str = "DistillationConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, DISTILLATION_OWN)?;
        let beta = r.f64("beta", 1.0)?;
        r.share("max_completion_length");
        let max_new = r.opt_usize("max_completion_length", Some(512))?;
        let sampler = sampler(&mut r, 1, max_new, "max_completion_length", 1.0)?;
        let loss = DistillationLossConfig::new()
            .with_beta(beta)
            .with_temperature(sampler.temperature);
        let step = OnPolicyDistillationConfig::new()
            .with_lmbda(1.0)
            .with_loss(loss)
            .with_learning_rate(learning_rate(&mut r, 1e-6)?);
        step.try_init()?;
        r.unsupported(
            "max_tool_calling_iterations",
            Value::Null,
            "multi-turn tool calling during generation; the crate's sampler has no tools",
        );
        Ok(r.finish(DistillationConfigs { step, sampler }))
    }
}

/// What a `GKDConfig` (TRL 1.16, `trl.experimental.gkd`) configures: the same step and
/// sampler as [`DistillationConfigs`], with GKD's defaults.
#[derive(Debug, Clone)]
pub struct GkdConfigs {
    /// The step: `lmbda`, the loss (`beta`; temperature 1), `learning_rate`.
    pub step: OnPolicyDistillationConfig,
    /// The sampler: one completion per prompt, `max_new_tokens`, `temperature`.
    pub sampler: SamplerConfig,
}

/// `GKDConfig` (TRL 1.16, `trl.experimental.gkd`): `lmbda` (0.5), `beta` (0.5),
/// `temperature` (0.9) for **sampling only** (GKD's trainer calls the loss at temperature 1),
/// `max_new_tokens` (128), `learning_rate` (2e-5, `SFTConfig`'s). GKD samples with `top_k =
/// 0`, `top_p = 1.0`. Reported when set: `seq_kd` (training on teacher-generated sequences).
impl FromTrl for GkdConfigs {
    const TRL_CLASS: &'static str = "GKDConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, GKD_OWN)?;
        let lmbda = r.f64("lmbda", 0.5)?;
        let beta = r.f64("beta", 0.5)?;
        let max_new = r.opt_usize("max_new_tokens", Some(128))?;
        let sampler = sampler(&mut r, 1, max_new, "max_new_tokens", 0.9)?;
        let step = OnPolicyDistillationConfig::new()
            .with_lmbda(lmbda)
            .with_loss(DistillationLossConfig::new().with_beta(beta))
            .with_learning_rate(learning_rate(&mut r, 2e-5)?);
        step.try_init()?;
        r.unsupported(
            "seq_kd",
            json!(false),
            "sequence-level KD: the off-policy batches are the teacher's own generations; \
             build them with the sampler on the teacher and Generation::try_from_completions",
        );
        Ok(r.finish(GkdConfigs { step, sampler }))
    }
}
