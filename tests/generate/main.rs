//! The online half: sampler, scoring, pairing, online DPO and GRPO steps, and the examples built on them.
//!
//! One test binary per area (burn is linked once per binary); each module was a test crate of
//! its own before.
// Each included example brings its own `examples/common`, so that module is compiled once per
// example here.
#![allow(clippy::duplicate_mod)]

#[path = "../common/mod.rs"]
pub mod common;
pub mod examples;
pub mod sampler;
