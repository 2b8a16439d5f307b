//! The one module the examples share: each example declares `pub mod common;` and uses what it
//! needs (tests that include an example file get the example's `common` with it; tests that
//! need only these parts include this file as a module of their own).
//!
//! - [`toy`]: the digit-reversal task of the `dpo` family of examples (the tiny transformer,
//!   its data, SFT warm-up, evaluation and the online examples' prompts and reward);
//! - [`cai`]: the `constitutional` example's world (task, constitution, feedback-model data,
//!   ground-truth checker);
//! - [`rng`]: the seeded generator of the examples and tests;
//! - [`device`]: `--device` and integer flags;
//! - [`hf`]: the real-checkpoint examples' defaults, loading, fused log-probs and saving;
//! - [`progress`]: the progress bar and progress lines;
//! - [`chart`]: the SVG training curves;
//! - [`params`]: f64 casting and parameter comparison (data-parallel examples);
//! - [`alloc`]: the counting global allocator (benchmarks' memory tables).
//!
//! Modules here refer to each other through `super::`, never `crate::`: the module is also
//! compiled inside test crates.

pub mod alloc;
pub mod cai;
pub mod chart;
pub mod device;
pub mod hf;
pub mod params;
pub mod progress;
pub mod rng;
pub mod toy;
