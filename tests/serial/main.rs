//! Tests that need the process to themselves, run one at a time (each holds [`SERIAL`] for its
//! whole body):
//! - the examples that learn (DPO, the reward model, PPO, online DPO, GRPO, constitutional, the
//!   burn-train `Learner` and multi-device runs): their short trainings are reproducible only
//!   alone, since burn-flex's global RNG (`device.seed`) and thread pool are process-wide (seen:
//!   GRPO 0.44 -> 0.57 run beside other tests vs 0.46 -> 0.72 alone);
//! - the process-wide checked-mode switch (`set_checked_mode`);
//! - a counting global allocator (`lm_head_memory`, `lora_memory`).
// Each included example brings its own `examples/common`, so that module is compiled once per
// example here.
#![allow(clippy::duplicate_mod)]

/// Held by every test of this binary for its whole body.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes this binary's one turn (a test that panicked while holding it does not block the rest).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub mod checked_mode;
pub mod dpo_example;
pub mod hf_examples;
pub mod hf_memory;
#[cfg(feature = "train")]
pub mod learner;
pub mod lm_head_memory;
#[cfg(feature = "train")]
pub mod multi_device;
pub mod online_examples;
pub mod ppo_example;
pub mod reward_example;
