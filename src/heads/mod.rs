//! Model heads for post-training: reward heads (with last-attended-token pooling) and
//! per-token value heads for PPO critics.
//!
//! - [`RewardHead`] (from [`RewardHeadConfig`]): `[B, T, H]` hidden states + attention mask
//!   -> `[B, K]` scores read at each sequence's last attended token.
//! - [`last_attended_index`], [`pool_last_attended`]: the pooling on its own, for models that
//!   compute their own score.
//! - [`ValueHead`] (from [`ValueHeadConfig`]): `[B, T, H]` -> `[B, T]` values.

mod reward;
mod value;

pub use reward::{
    RewardHead, RewardHeadConfig, last_attended_index, pool_last_attended, try_last_attended_index,
    try_pool_last_attended,
};
pub use value::{ValueHead, ValueHeadConfig};
