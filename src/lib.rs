#![doc = include_str!("../README.md")]
//!
//! # Feature flags
//!
//! No feature is on by default: burn 0.22 picks the backend at run time from the tensors'
//! `Device`, so the library builds without one, and an application enables the backend it runs
//! on. The TRL config loaders ([`trl`]) need no feature (JSON); YAML needs `yaml`.
#![cfg_attr(feature = "document-features", doc = document_features::document_features!())]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod backends;
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

/// The label value that marks an ignored position (PyTorch / TRL / torchtune convention).
pub const IGNORE_INDEX: i64 = -100;
