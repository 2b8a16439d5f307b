//! Training integration: data parallel and reducers, the trainer guide, TRL configs, Hugging Face
//! checkpoints (the DPO, reward-model, `Learner` and multi-device examples run in `tests/serial`).
//!
//! One test binary per area (burn is linked once per binary); each module was a test crate of
//! its own before.
// `common` (tests/common) and the included `dpo_data_parallel` example (through its
// `examples/common`) both load `examples/common/rng.rs`.
#![allow(clippy::duplicate_mod)]

pub mod collective;
#[path = "../common/mod.rs"]
pub mod common;
pub mod data_parallel;
#[path = "../common/dp_cases.rs"]
pub mod dp_cases;
pub mod hf_checkpoints;
pub mod trainer_guide;
pub mod trl_configs;
