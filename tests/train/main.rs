//! Training integration: the DPO example, burn-train adapters, multi-device and data parallel, reducers, TRL configs.
//!
//! One test binary per area (burn is linked once per binary); each module was a test crate of
//! its own before.
// Each included example brings its own `examples/common`, so that module is compiled once per
// example here.
#![allow(clippy::duplicate_mod)]

pub mod collective;
#[path = "../common/mod.rs"]
pub mod common;
pub mod data_parallel;
pub mod dpo_example;
pub mod examples_reward;
#[cfg(feature = "train")]
pub mod learner;
#[cfg(feature = "train")]
pub mod multi_device;
pub mod trainer_guide;
pub mod trl_configs;
