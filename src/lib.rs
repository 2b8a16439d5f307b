#![doc = include_str!("../README.md")]
//!
//! # Feature flags
//!
//! No feature is on by default: burn 0.22 picks the backend at run time from the tensors'
//! `Device`, so the library builds without one, and an application enables the backend it runs
//! on. The TRL config loaders ([`trl`]) need no feature (JSON); YAML needs `yaml`.
//!
//! # Names
//!
//! New names use TRL's vocabulary: `logps` (log-probabilities), `ref_` (the reference model),
//! `coef`, `beta`; metric keys are TRL's exactly (checked by the parity fixtures). Names that
//! predate this rule stay, because renaming a public config field breaks struct literals,
//! field access and saved JSON configs for no gain in meaning; their TRL equivalents:
//!
//! | here | TRL 1.16 (or the anchor named) | meaning |
//! |---|---|---|
//! | [`GatheredLogprobs`] (`.logprobs`), [`TokenLogprobsConfig`], [`logprobs`] | `per_token_logps` | per-token log-probs and their mask |
//! | [`rl::PpoLossInput::old_logprobs`], [`rl::GrpoLossInput::old_logprobs`] | `old_per_token_logps` | log-probs at sampling time |
//! | [`rl::GrpoLossInput::with_ref_logprobs`] | `ref_per_token_logps` | reference per-token log-probs |
//! | [`rl::GrpoLossInput::with_sampling_logprobs`] | `sampling_per_token_logps` | log-probs of the generation engine |
//! | [`losses::PreferenceBatch::reference_chosen_logps`] / `reference_rejected_logps` | `ref_chosen_logps` / `ref_rejected_logps` (DPO; KTO: `reference_logps`) | sequence log-probs under the reference |
//! | [`losses::UnpairedBatch::reference_logps`] | `reference_logps` (KTO / BCO) | the same, unpaired |
//! | [`rl::PpoLossConfig::value_coeff`] | `vf_coef` (PPOConfig; torchtune `PPOLoss(value_coeff)`) | value-loss coefficient |
//! | [`rl::PpoLossConfig::entropy_coeff`] | none in TRL PPO (OpenRLHF `entropy_loss_coef`; GRPO here: `entropy_coef`) | entropy-bonus coefficient |
//! | [`rl::PpoLossConfig::epsilon`], `value_clip_range` | `cliprange`, `cliprange_value` | PPO clip ranges |
//! | [`losses::BradleyTerryLossConfig::center_rewards_coefficient`] | `center_rewards_coefficient` (RewardConfig: TRL's own spelling) | reward-centering coefficient |
//! | [`rl::KlPenaltyConfig::kl_coef`], [`rl::GaeConfig`] `gamma` / `lam` | `kl_coef`, `gamma`, `lam` | (same names) |
#![cfg_attr(feature = "document-features", doc = document_features::document_features!())]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod backends;
pub mod config;
pub mod distributed;
pub mod error;
pub mod generate;
pub mod heads;
pub mod host_reads;
pub mod logprobs;
pub mod losses;
mod precision;
pub mod prelude;
pub mod reduce;
pub mod rl;
#[cfg(test)]
mod test_util;
#[cfg(feature = "train")]
#[cfg_attr(docsrs, doc(cfg(feature = "train")))]
pub mod train;
pub mod trl;

pub use error::{Error, Result, checked_mode, set_checked_mode, with_checked_mode};
pub use logprobs::{
    GatheredLogprobs, LabelAlignment, SequenceReduction, TokenLogprobs, TokenLogprobsConfig,
};
pub use reduce::Normalizer;

/// `examples/README.md`'s code blocks, compiled and run as doctests (the crate docs already
/// include `README.md`), so a block that stops compiling fails the test suite.
#[cfg(doctest)]
#[doc = include_str!("../examples/README.md")]
struct ExamplesReadme;

/// The label value that marks an ignored position (PyTorch / TRL / torchtune convention).
pub const IGNORE_INDEX: i64 = -100;
