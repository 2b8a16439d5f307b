//! Loss functions. One file per family; every loss returns a [`LossOutput`].

mod dpo;
mod metrics;
mod preference;
pub mod stable;

pub use dpo::{DpoLoss, DpoLossConfig, DpoLossType, FDivergenceType};
pub use metrics::{LossOutput, Metrics};
pub use preference::PreferenceBatch;
