//! The online half: sampler, scoring, pairing, online DPO and GRPO steps (the online examples
//! run in `tests/serial`).
//!
//! One test binary per area (burn is linked once per binary); each module was a test crate of
//! its own before.

#[path = "../common/mod.rs"]
pub mod common;
pub mod distill;
pub mod judge;
pub mod sampler;
