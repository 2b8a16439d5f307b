//! Paired preference configs: `DPOConfig`, `CPOConfig`, `ORPOConfig`, `RewardConfig`.

use serde_json::{Map, Value};

use super::fields::{CPO_OWN, DPO_OWN, ORPO_OWN, REWARD_OWN};
use super::reader::{Reader, parse_choice};
use super::{FromTrl, TrlConfig};
use crate::error::Result;
use crate::losses::{
    BradleyTerryLossConfig, CpoLossConfig, CpoLossType, DpoLossConfig, DpoLossType,
    FDivergenceType, OrpoLossConfig,
};

const DPO_LOSS_TYPES: &str = "sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm";

/// `DPOConfig` (TRL 1.16). Loss fields: `loss_type` (a name or a list, default `["sigmoid"]`),
/// `loss_weights`, `beta` (0.1), `label_smoothing` (0.0), `f_divergence_type` (`reverse_kl`),
/// `f_alpha_divergence_coef` (0.5), `use_weighting` (false), `ld_alpha` (none), `discopop_tau`
/// (0.05). Everything else (`precompute_ref_log_probs`, `max_length`, ...) is
/// a trainer field. TRL silently ignores a `label_smoothing` that no chosen loss type reads;
/// here that is an error (see [`DpoLossConfig::validate`]).
impl FromTrl for DpoLossConfig {
    const TRL_CLASS: &'static str = "DPOConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, DPO_OWN)?;
        let loss_type = match r.raw("loss_type") {
            None => vec![DpoLossType::Sigmoid],
            // TRL turns a single name into a one-element list.
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| parse_choice("loss_type", v, DPO_LOSS_TYPES))
                .collect::<Result<Vec<_>>>()?,
            Some(v) => vec![parse_choice("loss_type", &v, DPO_LOSS_TYPES)?],
        };
        let config = DpoLossConfig::new()
            .with_loss_type(loss_type)
            .with_loss_weights(r.opt_f64_list("loss_weights", None)?)
            .with_ld_alpha(r.opt_f64("ld_alpha", None)?)
            .with_f_divergence_type(r.choice(
                "f_divergence_type",
                FDivergenceType::ReverseKl,
                "reverse_kl, forward_kl, js_divergence, alpha_divergence",
            )?)
            .with_f_alpha_divergence_coef(r.f64("f_alpha_divergence_coef", 0.5)?)
            .with_label_smoothing(r.f64("label_smoothing", 0.0)?)
            .with_beta(r.f64("beta", 0.1)?)
            .with_use_weighting(r.bool("use_weighting", false)?)
            .with_discopop_tau(r.f64("discopop_tau", 0.05)?);
        config.validate()?;
        super::online::reference_sync_fields(&mut r);
        Ok(r.finish(config))
    }
}

/// `CPOConfig` (TRL 1.16, experimental). Loss fields: `loss_type` (`sigmoid`; `alphapo` is
/// TRL's shorthand for `simpo` with `cpo_alpha = 0`, which then overrides any `cpo_alpha`
/// given, as TRL's `__post_init__` does), `beta` (0.1), `label_smoothing` (0.0), `cpo_alpha`
/// (1.0), `simpo_gamma` (0.5), `alpha` (0.0). Log-probs are averaged for `ipo` and `simpo` and
/// summed otherwise, as in TRL.
impl FromTrl for CpoLossConfig {
    const TRL_CLASS: &'static str = "CPOConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, CPO_OWN)?;
        let choices = "sigmoid, hinge, ipo, simpo, alphapo";
        let (loss_type, alphapo) = match r.raw("loss_type") {
            None => (CpoLossType::Sigmoid, false),
            Some(Value::String(s)) if s == "alphapo" => (CpoLossType::Simpo, true),
            Some(v) => (parse_choice("loss_type", &v, choices)?, false),
        };
        let cpo_alpha = r.f64("cpo_alpha", 1.0)?;
        let config = CpoLossConfig::new()
            .with_loss_type(loss_type)
            .with_beta(r.f64("beta", 0.1)?)
            .with_label_smoothing(r.f64("label_smoothing", 0.0)?)
            .with_cpo_alpha(if alphapo { 0.0 } else { cpo_alpha })
            .with_simpo_gamma(r.f64("simpo_gamma", 0.5)?)
            .with_alpha(r.f64("alpha", 0.0)?);
        config.validate()?;
        Ok(r.finish(config))
    }
}

/// `ORPOConfig` (TRL 1.16, experimental). Loss field: `beta` (0.1).
impl FromTrl for OrpoLossConfig {
    const TRL_CLASS: &'static str = "ORPOConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, ORPO_OWN)?;
        let config = OrpoLossConfig::new().with_beta(r.f64("beta", 0.1)?);
        config.validate()?;
        Ok(r.finish(config))
    }
}

/// `RewardConfig` (TRL 1.16). Loss field: `center_rewards_coefficient` (none).
impl FromTrl for BradleyTerryLossConfig {
    const TRL_CLASS: &'static str = "RewardConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, REWARD_OWN)?;
        let config = BradleyTerryLossConfig::new()
            .with_center_rewards_coefficient(r.opt_f64("center_rewards_coefficient", None)?);
        config.validate()?;
        Ok(r.finish(config))
    }
}
