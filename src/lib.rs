#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod backends;
pub mod distributed;
pub mod error;
pub mod generate;
pub mod heads;
pub mod logprobs;
pub mod losses;
mod precision;
pub mod reduce;
pub mod rl;
#[cfg(test)]
mod test_util;

pub use error::{Error, Result, checked_mode, set_checked_mode};
pub use logprobs::{
    GatheredLogprobs, LabelAlignment, SequenceReduction, TokenLogprobs, TokenLogprobsConfig,
};
pub use reduce::Normalizer;

/// The label value that marks an ignored position (PyTorch / TRL / torchtune convention).
pub const IGNORE_INDEX: i64 = -100;
