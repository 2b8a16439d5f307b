//! Loss functions. One file per family; every loss returns a [`LossOutput`].

mod metrics;
mod reward;

pub use metrics::{LossOutput, Metrics};
pub use reward::{BradleyTerryForm, BradleyTerryLoss, BradleyTerryLossConfig};
