//! Loss functions. One file per family; every loss returns a [`LossOutput`].

mod metrics;

pub use metrics::{LossOutput, Metrics};
