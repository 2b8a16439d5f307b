//! The preference, unpaired, reward and SFT losses: closed-form properties, fuzzing, modules, bad input.
//!
//! One test binary per area (burn is linked once per binary); each module was a test crate of
//! its own before.

#[macro_use]
#[path = "../common/bad.rs"]
mod bad;
#[path = "../common/mod.rs"]
pub mod common;
pub mod dpo_properties;
pub mod errors;
pub mod fuzz_losses;
pub mod module_losses;
pub mod reward;
pub mod soft_labels;
