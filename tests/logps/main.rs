//! Token and fused log-probs: closed-form values and gradients, the fused LM-head op, precision, bad input.
//!
//! One test binary per area (burn is linked once per binary); each module was a test crate of
//! its own before.

#[macro_use]
#[path = "../common/bad.rs"]
mod bad;
#[path = "../common/mod.rs"]
pub mod common;
pub mod distill;
pub mod errors;
pub mod fused;
pub mod lm_head_linear;
pub mod precision;
pub mod token_logps;
