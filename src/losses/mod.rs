//! Loss functions. One file per family; every loss returns a [`LossOutput`].
//!
//! Every loss op (`DpoLoss`, `CpoLoss`, `OrpoLoss`, `KtoLoss`, `BcoLoss`, `BradleyTerryLoss`, `DistillationLoss`,
//! `SftLoss`, and in [`crate::rl`] `PpoLoss`, `GrpoLoss`, `RlooLoss`, `Gae`, `KlPenalty`)
//! derives burn's [`Module`](burn::module::Module), as burn-nn's `CrossEntropyLoss` does, so it
//! can be a field of your `#[derive(Module)]` model. Its settings are configuration, not
//! parameters: numbers and flags are burn constants, enums and normalizers `#[module(skip)]`.
//! A record therefore holds nothing for a loss, and loading a record keeps the destination's
//! settings (build the destination from the same config). `BcoLoss`'s running mean `δ` lives
//! in the caller's [`RunningMoments`], not in the loss.

mod bco;
mod cpo;
mod distill;
mod dpo;
mod kto;
mod metrics;
mod nll;
mod orpo;
mod paired;
mod preference;
mod reward;
mod sft;
pub(crate) mod stable;

pub use bco::{BcoLoss, BcoLossConfig, RunningMoments};
pub use cpo::{CpoLoss, CpoLossConfig, CpoLossType, PairTerms};
pub use distill::{DistillationLoss, DistillationLossConfig, DivergenceTerms};
pub use dpo::{DpoLoss, DpoLossConfig, DpoLossType, FDivergenceType};
pub use kto::{
    KtoLoss, KtoLossConfig, KtoLossType, UnpairedBatch, kto_kl_estimate, kto_mismatched_pairs,
    try_kto_kl_estimate,
};
pub use metrics::{LossOutput, Metrics};
pub use orpo::{OddsRatioTerms, OrpoLoss, OrpoLossConfig};
pub use paired::PairedLayout;
pub use preference::PreferenceBatch;
pub use reward::{BradleyTerryForm, BradleyTerryLoss, BradleyTerryLossConfig};
pub use sft::{SftLoss, SftLossConfig};
