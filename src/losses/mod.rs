//! Loss functions. One file per family; every loss returns a [`LossOutput`].

mod bco;
mod cpo;
mod dpo;
mod kto;
mod metrics;
mod orpo;
mod preference;
mod reward;
mod sft;
pub mod stable;

pub use bco::{BcoLoss, BcoLossConfig, RunningMoments};
pub use cpo::{CpoLoss, CpoLossConfig, CpoLossType, PairTerms};
pub use dpo::{DpoLoss, DpoLossConfig, DpoLossType, FDivergenceType};
pub use kto::{
    KtoLoss, KtoLossConfig, KtoLossType, UnpairedBatch, kto_kl_estimate, kto_mismatched_pairs,
    try_kto_kl_estimate,
};
pub use metrics::{LossOutput, Metrics};
pub use orpo::{OddsRatioTerms, OrpoLoss, OrpoLossConfig};
pub use preference::PreferenceBatch;
pub use reward::{BradleyTerryForm, BradleyTerryLoss, BradleyTerryLossConfig};
pub use sft::{SftLoss, SftLossConfig};
