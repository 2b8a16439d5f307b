//! RL: advantages, PPO / GRPO / RLOO losses and the update step, host reads, reliability, bad
//! input (the PPO example runs in `tests/serial`).
//!
//! One test binary per area (burn is linked once per binary); each module was a test crate of
//! its own before.

#[macro_use]
#[path = "../common/bad.rs"]
mod bad;
pub mod errors;
pub mod host_reads;
pub mod properties;
pub mod reliability;
pub mod trainer_api;
