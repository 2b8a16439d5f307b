//! Advantage estimation, one estimator family a file:
//!
//! | file | what | anchor |
//! | --- | --- | --- |
//! | `whiten` | [`masked_mean`], [`masked_var`], [`whiten`] | torchtune 0.6.1 `rlhf.rewards` |
//! | `returns` | [`discounted_reverse_cumsum`], [`discounted_returns`] | torchtune / OpenRLHF |
//! | `gae` | [`Gae`] (generalized advantage estimation) | torchtune `estimate_advantages`, TRL PPO |
//! | `group` | [`GroupAdvantageConfig`] (GRPO, GDPO) | TRL 1.16 `GRPOTrainer` |
//! | `rloo` | [`RlooAdvantageConfig`] (leave-one-out) | TRL 1.16 `RLOOTrainer` |
//! | `rewards` | [`trl_reward_weights`] and the NaN-aware reward statistics both share | TRL `nanstd` |
//!
//! Everything runs as tensor ops on the caller's device. The reverse discounted scan of GAE
//! is a blocked Toeplitz matmul ([`discounted_reverse_cumsum`]): one small host loop over
//! `ceil(T / 128)` blocks, never over elements.

mod gae;
mod group;
mod returns;
mod rewards;
mod rloo;
mod whiten;

pub use gae::{Gae, GaeConfig, GaeMasking, GaeOutput};
pub use group::{GroupAdvantageConfig, GroupAdvantages, RewardAggregation, ScaleRewards};
pub use returns::{
    discounted_returns, discounted_reverse_cumsum, try_discounted_returns,
    try_discounted_reverse_cumsum,
};
pub use rewards::trl_reward_weights;
pub use rloo::{RlooAdvantageConfig, RlooAdvantages};
pub use whiten::{
    Whitening, masked_mean, masked_var, try_masked_mean, try_masked_var, try_whiten, whiten,
};

/// torchtune's epsilon in `masked_mean` denominators and under the square root of `whiten`.
const TORCHTUNE_EPS: f64 = 1e-8;
/// TRL's epsilon added to the reward standard deviation (GRPO / RLOO).
const TRL_STD_EPS: f64 = 1e-4;
/// Block width of the blocked Toeplitz scan.
const SCAN_BLOCK: usize = 128;
