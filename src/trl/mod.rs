//! TRL trainer configs (`DPOConfig`, `CPOConfig`, `ORPOConfig`, `KTOConfig`, `BCOConfig`, `DistillationConfig`, `GKDConfig`,
//! `RewardConfig`, `GRPOConfig`, `RLOOConfig`) loaded into the crate's loss configs.
//!
//! A TRL config file (the JSON of `TrainingArguments.to_json_string()`, the `training_args`
//! TRL saves, or a hand-written subset; YAML as the TRL CLI takes it with the `yaml` feature)
//! is read with TRL 1.16's field names, and every field it does not give takes **TRL's
//! default** (not burn's `Config` rule, which needs every field):
//!
//! ```
//! use burn_rlhf::losses::{DpoLossConfig, DpoLossType};
//! use burn_rlhf::trl::FromTrl;
//!
//! let loaded = DpoLossConfig::from_trl_json(
//!     r#"{"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0],
//!         "learning_rate": 5e-7, "per_device_train_batch_size": 4}"#,
//! )?;
//! assert_eq!(loaded.config.loss_type, [DpoLossType::Sigmoid, DpoLossType::BcoPair, DpoLossType::Sft]);
//! assert_eq!(loaded.config.beta, 0.1); // TRL's default
//! // What the loss does not use is handed back for the training loop:
//! assert_eq!(loaded.trainer_fields.f64("learning_rate"), Some(5e-7));
//! let dpo = loaded.config.try_init()?;
//! # Ok::<(), burn_rlhf::Error>(())
//! ```
//!
//! | TRL class | loads into | via |
//! |---|---|---|
//! | `DPOConfig` | [`DpoLossConfig`](crate::losses::DpoLossConfig) | [`FromTrl`] |
//! | `CPOConfig` | [`CpoLossConfig`](crate::losses::CpoLossConfig) (`"alphapo"` = `simpo` + `cpo_alpha = 0`, as TRL) | [`FromTrl`] |
//! | `ORPOConfig` | [`OrpoLossConfig`](crate::losses::OrpoLossConfig) | [`FromTrl`] |
//! | `KTOConfig` | [`KtoLossConfig`](crate::losses::KtoLossConfig) | [`FromTrl`] |
//! | `BCOConfig` (TRL 1.13; removed in 1.14) | [`BcoLossConfig`](crate::losses::BcoLossConfig) | [`FromTrl`] |
//! | `RewardConfig` | [`BradleyTerryLossConfig`](crate::losses::BradleyTerryLossConfig) | [`FromTrl`] |
//! | `GRPOConfig` | [`GrpoConfigs`]: [`GrpoLossConfig`](crate::rl::GrpoLossConfig) + [`GroupAdvantageConfig`](crate::rl::GroupAdvantageConfig) | [`FromTrl`] |
//! | `GRPOConfig` sampling fields | [`GrpoConfigs::sampler`]: [`SamplerConfig`](crate::generate::SamplerConfig) | [`FromTrl`] |
//! | `RLOOConfig` | [`RlooConfigs`]: [`RlooLossConfig`](crate::rl::RlooLossConfig) + [`RlooAdvantageConfig`](crate::rl::RlooAdvantageConfig) + sampler | [`FromTrl`] |
//! | `DistillationConfig` | [`DistillationConfigs`]: [`OnPolicyDistillationConfig`](crate::generate::OnPolicyDistillationConfig) (with its [`DistillationLossConfig`](crate::losses::DistillationLossConfig)) + [`SamplerConfig`](crate::generate::SamplerConfig) | [`FromTrl`] |
//! | `GKDConfig` (`trl.experimental.gkd`) | [`GkdConfigs`]: the same, GKD's defaults | [`FromTrl`] |
//! | `OnlineDPOConfig` | [`OnlineDpoConfigs`]: [`OnlineDpoConfig`](crate::generate::OnlineDpoConfig) + [`SamplerConfig`](crate::generate::SamplerConfig) | [`FromTrl`] |
//!
//! **Trainer fields.** Fields that configure the training loop rather than the loss
//! (`learning_rate`, `per_device_train_batch_size`, `max_length`, `precompute_ref_log_probs`,
//! ...) are not an error: they are returned in [`TrlConfig::trainer_fields`] as written. A few
//! fields drive both (GRPO's `gradient_accumulation_steps`, `max_completion_length`,
//! `num_generations`, `steps_per_generation`): they are read into the loss config **and**
//! reported.
//!
//! **Unsupported fields.** A field that changes the loss or the sampled data in TRL but that
//! this crate does not implement (GRPO's `mask_truncated_completions`, `num_iterations`,
//! `use_adaptive_entropy`, vLLM importance sampling with `use_vllm`; `repetition_penalty`,
//! `generation_kwargs`; TR-DPO's `sync_ref_model`, ...) is never dropped silently: when the
//! file sets it to something other than TRL's default it is listed in
//! [`TrlConfig::unsupported`] (check it, or call [`TrlConfig::deny_unsupported`] to make it an
//! error), besides being returned as a trainer field.
//!
//! ```
//! use burn_rlhf::trl::{FromTrl, GrpoConfigs};
//!
//! let loaded = GrpoConfigs::from_trl_json(
//!     r#"{"loss_type": "dapo", "temperature": 0.7, "top_k": 20, "mask_truncated_completions": true}"#,
//! )?;
//! assert_eq!(loaded.config.sampler.top_k, Some(20)); // sampler fields load into SamplerConfig
//! assert_eq!(loaded.unsupported[0].field, "mask_truncated_completions");
//! assert!(loaded.deny_unsupported().is_err());
//! # Ok::<(), burn_rlhf::Error>(())
//! ```
//!
//! **Errors.** A field that is neither one of the class's own fields nor a `TrainingArguments`
//! field is [`Error::UnknownField`]; a value of the wrong type or
//! out of range is [`Error::Config`] naming the field (the loaded config
//! is validated as `try_init` would); a file that is not a JSON / YAML mapping is
//! [`Error::ConfigFile`]. Numbers written as strings (`"1e-6"`, as
//! YAML 1.1 reads it) are accepted for numeric fields, as TRL's argument parser does.
//!
//! The field tables come from TRL 1.16.0 (`BCOConfig` from TRL 1.13.0, the last release that
//! has it); the `TrainingArguments` table is the union over the transformers versions TRL 1.16
//! supports (4.56.2, 4.57.6 and 5.25.0), so a `training_args` dump of a transformers 4.x run
//! (`warmup_ratio`, `logging_dir`, `overwrite_output_dir`, ...) loads. The repository's
//! `scripts/dump_trl_configs.py` regenerates them, and the tests load dumps written by TRL
//! itself (`fixtures/trl_configs/`).

mod distill;
mod fields;
mod online;
mod preference;
mod reader;
mod unpaired;

pub use distill::{DistillationConfigs, GkdConfigs};
pub use online::{GrpoConfigs, OnlineDpoConfigs, RlooConfigs};

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A loaded TRL config: the crate's config, the fields left for the training loop, and the
/// fields this crate does not implement that the file sets away from TRL's default.
#[derive(Debug, Clone)]
pub struct TrlConfig<C> {
    /// The crate's config, with TRL's defaults for the fields the file did not give. Already
    /// validated: `try_init` on it succeeds.
    pub config: C,
    /// Fields the loss does not use (and the few it shares with the loop), as written.
    pub trainer_fields: TrainerFields,
    /// **Check this.** Fields that change the loss or the sampled data in TRL, that this crate
    /// does not implement, and that the file sets to something other than TRL's default
    /// (GRPO's `mask_truncated_completions`, `use_adaptive_entropy`, the vLLM
    /// importance-sampling fields, `num_iterations`, `repetition_penalty`,
    /// `generation_kwargs`; TR-DPO's `sync_ref_model` with its alpha and steps; ...). With any
    /// of them a run here is not the run TRL would do. They are also in
    /// [`trainer_fields`](Self::trainer_fields); [`deny_unsupported`](Self::deny_unsupported)
    /// turns a non-empty list into an error.
    pub unsupported: Vec<UnsupportedField>,
}

impl<C> TrlConfig<C> {
    /// `Ok(self)` when [`unsupported`](Self::unsupported) is empty, else
    /// [`Error::Unsupported`] naming every such field, its value and TRL's default.
    pub fn deny_unsupported(self) -> Result<Self> {
        if self.unsupported.is_empty() {
            return Ok(self);
        }
        Err(Error::Unsupported {
            fields: self.unsupported.iter().map(|u| u.field.clone()).collect(),
            reason: self
                .unsupported
                .iter()
                .map(UnsupportedField::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

/// A TRL field this crate does not implement, set to something other than TRL's default (see
/// [`TrlConfig::unsupported`]).
#[derive(Debug, Clone, PartialEq)]
pub struct UnsupportedField {
    /// The field, as TRL names it.
    pub field: String,
    /// The value the file gives.
    pub value: Value,
    /// TRL 1.16's default (where the crate's behaviour equals TRL's).
    pub trl_default: Value,
    /// What it changes in TRL.
    pub effect: &'static str,
}

impl std::fmt::Display for UnsupportedField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` = {} (TRL default {}): {}",
            self.field, self.value, self.trl_default, self.effect
        )
    }
}

/// Fields of a TRL config that configure the training loop, not the loss (`learning_rate`,
/// `per_device_train_batch_size`, `max_length`, `num_train_epochs`, ...), as written in the
/// file. Fields the file did not give are absent (their TRL defaults are not filled in).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainerFields(BTreeMap<String, Value>);

impl TrainerFields {
    /// The raw value of a field.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// A numeric field as `f64` (also accepts a number written as a string).
    pub fn f64(&self, name: &str) -> Option<f64> {
        match self.0.get(name)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A non-negative integer field.
    pub fn usize(&self, name: &str) -> Option<usize> {
        self.0
            .get(name)?
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
    }

    /// A boolean field.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.0.get(name)?.as_bool()
    }

    /// A string field.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name)?.as_str()
    }

    /// Whether the field was given.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no field.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The underlying map.
    pub fn into_inner(self) -> BTreeMap<String, Value> {
        self.0
    }
}

/// Loading from a TRL trainer config. Implemented by the crate's loss configs (see the
/// [module docs](self) for the table).
pub trait FromTrl: Sized {
    /// TRL's class name, e.g. `"DPOConfig"`.
    const TRL_CLASS: &'static str;

    /// Loads from the fields of a TRL config (a JSON object).
    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>>;

    /// Loads from TRL config JSON.
    fn from_trl_json(json: &str) -> Result<TrlConfig<Self>> {
        let value: Value = serde_json::from_str(json).map_err(|e| Error::ConfigFile {
            what: format!("{} JSON", Self::TRL_CLASS),
            message: e.to_string(),
        })?;
        Self::from_trl_map(into_object(value, Self::TRL_CLASS, "JSON")?)
    }

    /// Loads from TRL config YAML (the TRL CLI's `--config` format).
    #[cfg(feature = "yaml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "yaml")))]
    fn from_trl_yaml(yaml: &str) -> Result<TrlConfig<Self>> {
        let value: Value = serde_norway::from_str(yaml).map_err(|e| Error::ConfigFile {
            what: format!("{} YAML", Self::TRL_CLASS),
            message: e.to_string(),
        })?;
        Self::from_trl_map(into_object(value, Self::TRL_CLASS, "YAML")?)
    }

    /// Loads a file: YAML when its extension is `.yaml` / `.yml` (needs the `yaml` feature),
    /// JSON otherwise.
    fn from_trl_file(path: impl AsRef<Path>) -> Result<TrlConfig<Self>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            what: path.display().to_string(),
            message: e.to_string(),
        })?;
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if !yaml {
            return Self::from_trl_json(&text);
        }
        #[cfg(feature = "yaml")]
        {
            Self::from_trl_yaml(&text)
        }
        #[cfg(not(feature = "yaml"))]
        Err(Error::ConfigFile {
            what: path.display().to_string(),
            message: "YAML needs burn-rlhf's `yaml` feature".into(),
        })
    }
}

fn into_object(value: Value, class: &str, format: &str) -> Result<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(Error::ConfigFile {
            what: format!("{class} {format}"),
            message: format!(
                "expected a mapping of field names to values, got {}",
                kind(&other)
            ),
        }),
    }
}

pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
