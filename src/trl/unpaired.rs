//! Unpaired (binary-feedback) configs: `KTOConfig`, `BCOConfig`.

use serde_json::{Map, Value};

use super::fields::{BCO_OWN, KTO_OWN};
use super::reader::Reader;
use super::{FromTrl, TrlConfig};
use crate::error::Result;
use crate::losses::{BcoLossConfig, KtoLossConfig, KtoLossType};

/// `KTOConfig` (TRL 1.16). Loss fields: `loss_type` (`kto`, or `apo_zero_unpaired`), `beta`
/// (0.1), `desirable_weight` (1.0), `undesirable_weight` (1.0). `train_sampling_strategy`,
/// `precompute_ref_log_probs`, ... are trainer fields.
impl FromTrl for KtoLossConfig {
    const TRL_CLASS: &'static str = "KTOConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, KTO_OWN)?;
        let config = KtoLossConfig::new()
            .with_loss_type(r.choice("loss_type", KtoLossType::Kto, "kto, apo_zero_unpaired")?)
            .with_beta(r.f64("beta", 0.1)?)
            .with_desirable_weight(r.f64("desirable_weight", 1.0)?)
            .with_undesirable_weight(r.f64("undesirable_weight", 1.0)?);
        config.validate()?;
        super::online::reference_sync_fields(&mut r);
        Ok(r.finish(config))
    }
}

/// `BCOConfig` (TRL 1.13.0, the last release with the experimental BCO trainer; TRL 1.14
/// removed it). Loss field: `beta` (0.1). The UDM fields (`prompt_sample_size`,
/// `min_density_ratio`, `max_density_ratio`) are trainer fields: [`BcoLoss`](crate::losses::BcoLoss)
/// has no density-ratio weighting.
impl FromTrl for BcoLossConfig {
    const TRL_CLASS: &'static str = "BCOConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, BCO_OWN)?;
        let config = BcoLossConfig::new().with_beta(r.f64("beta", 0.1)?);
        config.validate()?;
        Ok(r.finish(config))
    }
}
