//! RL: advantages, PPO / GRPO / RLOO losses and the update step, the PPO example, host reads, reliability, bad input.
//!
//! One test binary per area (burn is linked once per binary); each module was a test crate of
//! its own before.
// Each included example brings its own `examples/common`, so that module is compiled once per
// example here.
#![allow(clippy::duplicate_mod)]

#[macro_use]
#[path = "../common/bad.rs"]
mod bad;
pub mod errors;
pub mod host_reads;
pub mod properties;
pub mod reliability;
pub mod toy;
pub mod trainer_api;
