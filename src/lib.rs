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
//! One spelling per quantity, TRL's: `logps` (log-probabilities: `logps` per token `[B, T]`
//! or summed per sequence `[B]`, as each item's `# Shapes` says), `ref_` (the reference model:
//! `ref_chosen_logps`, `ref_logps`), `old_` / `sampling_` (log-probs at sampling time, of the
//! policy / of the generation engine), `coef` (`vf_coef`, `entropy_coef`, `kl_coef`), `beta`.
//! Metric keys are TRL's exactly (checked by the parity fixtures). `CHANGELOG.md` lists the
//! renames made before the first release.
#![cfg_attr(feature = "document-features", doc = document_features::document_features!())]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod backends;
pub mod config;
#[cfg(feature = "data")]
#[cfg_attr(docsrs, doc(cfg(feature = "data")))]
pub mod data;
pub mod distributed;
mod error;
pub mod generate;
pub mod heads;
#[cfg(feature = "hf")]
#[cfg_attr(docsrs, doc(cfg(feature = "hf")))]
pub mod hf;
pub mod host_reads;
pub mod logps;
pub mod losses;
mod precision;
pub mod prelude;
mod reduce;
pub mod rl;
#[cfg(test)]
mod test_util;
#[cfg(feature = "train")]
#[cfg_attr(docsrs, doc(cfg(feature = "train")))]
pub mod train;
pub mod trl;

pub use error::{Error, Result, checked_mode, set_checked_mode, with_checked_mode};
pub use reduce::{Normalizer, global_token_count};

/// `examples/README.md`'s code blocks, compiled and run as doctests (the crate docs already
/// include `README.md`), so a block that stops compiling fails the test suite.
#[cfg(doctest)]
#[doc = include_str!("../examples/README.md")]
struct ExamplesReadme;

/// The label value that marks an ignored position (PyTorch / TRL / torchtune convention).
pub const IGNORE_INDEX: i64 = -100;
