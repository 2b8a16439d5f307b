//! The names a training loop uses, in one import: `use burn_rlhf::prelude::*;`.
//!
//! Log-prob gathering (lean and fused), the batch types every loss takes, the loss configs and
//! the RL update step: the items the README and the examples use. Everything else (estimators,
//! RLOO, distributed parts, presets, the `try_` forms of free functions) stays in its module.

// burn's `Module` trait, unnamed: `.valid()`, `.clone()` of a module, `into_record()`, ...
// (its derive macro stays `burn::module::Module`).
pub use burn::module::Module as _;

pub use crate::error::{Error, Result, with_checked_mode};
pub use crate::logps::{
    FusedLogpsConfig, GatheredLogps, LabelAlignment, SequenceReduction, TokenLogpsConfig,
};
pub use crate::losses::{
    BcoLossConfig, BradleyTerryLossConfig, CpoLossConfig, DpoLossConfig, DpoLossType,
    KtoLossConfig, LossOutput, OrpoLossConfig, PreferenceBatch, SftLossConfig, UnpairedBatch,
};
pub use crate::reduce::Normalizer;
pub use crate::rl::{
    GaeConfig, GroupAdvantageConfig, GrpoLossConfig, GrpoLossType, PolicyOutput, PpoLossConfig,
    PpoStepConfig, Rollout, ppo_update,
};
