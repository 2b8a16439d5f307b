//! Online RL: advantages, KL control, PPO / GRPO / RLOO losses and a PPO update step.
//!
//! - Advantages ([`Gae`], [`GroupAdvantages`], [`RlooAdvantages`], [`whiten`],
//!   [`discounted_returns`]): masked GAE and returns (vectorized, no per-element host loop),
//!   REINFORCE returns, group-relative (GRPO) and leave-one-out (RLOO) advantages, masked
//!   whitening.
//! - KL ([`KlPenalty`], [`kl_estimate`], [`AdaptiveKlController`]): KL estimators
//!   k1/k2/k3/abs, KL-penalized per-token rewards, fixed and adaptive KL controllers.
//! - [`PpoLoss`]: the PPO clipped surrogate (asymmetric and dual clip), clipped value loss and
//!   entropy bonus.
//! - [`GrpoLoss`]: the GRPO loss family (`grpo`, `bnpo`, `dr_grpo`, `dapo`, `cispo`, `sapo`,
//!   `luspo`, `vespo`; token- or sequence-level ratios) and [`RlooLoss`], the RLOO
//!   sequence-level loss.
//! - [`ppo_update`]: an update step over any burn [`Module`](burn::module::Module) and
//!   optimizer: epochs x shuffled minibatches x micro-batches, global-norm gradient clipping,
//!   KL early stop.
//!
//! Every loss reduces its terms through the shared [`Normalizer`](crate::Normalizer), so with
//! a global count ([`Normalizer::GlobalTokens`](crate::Normalizer::GlobalTokens)) gradient
//! accumulation and data-parallel ranks do not change the gradient. The loss ops and `Gae` /
//! `KlPenalty` are plain-data burn modules (see [`crate::losses`]); `AdaptiveKlController`
//! carries state that changes every step and stays a plain struct.

mod advantages;
mod global_whiten;
mod grpo;
mod importance;
mod kl;
mod ppo;
mod ratio;
mod rloo;
pub(crate) mod step;

pub use advantages::{
    Gae, GaeConfig, GaeMasking, GaeOutput, GroupAdvantageConfig, GroupAdvantages,
    RewardAggregation, RlooAdvantageConfig, RlooAdvantages, ScaleRewards, Whitening,
    discounted_returns, discounted_reverse_cumsum, masked_mean, masked_var, trl_reward_weights,
    try_discounted_returns, try_discounted_reverse_cumsum, try_masked_mean, try_masked_var,
    try_whiten, whiten,
};
pub use global_whiten::{try_whiten_with, whiten_with};
pub use grpo::{
    GrpoLoss, GrpoLossConfig, GrpoLossInput, GrpoLossType, ImportanceSamplingLevel, RlooLoss,
    RlooLossConfig,
};
pub use importance::{ImportanceSamplingConfig, ImportanceSamplingMode};
pub use kl::{
    AdaptiveKlController, FixedKlController, KlController, KlEstimator, KlPenalty, KlPenaltyConfig,
    KlPenaltyOutput, kl_estimate, reward_penalty_mask, try_kl_estimate,
};
pub use ppo::{PpoLoss, PpoLossConfig, PpoLossInput};
pub use ratio::LOG_RATIO_LIMIT;
pub use step::{
    PolicyOutput, PpoStepConfig, Rollout, RolloutBatch, StepError, StepLoss, StepStats,
    clip_grad_norm, clip_grad_norm_on_device, ppo_update, try_clip_grad_norm, try_ppo_update,
};

use burn::tensor::{Tensor, TensorData};

/// A constant tensor from host `f64` values, in the dtype and on the device of `like`.
pub(crate) fn constant_like<const D: usize, const E: usize>(
    like: &Tensor<E>,
    values: Vec<f64>,
    shape: [usize; D],
) -> Tensor<D> {
    let device = like.device();
    Tensor::<D>::from_data(TensorData::new(values, shape), (&device, like.dtype()))
}

/// An all-true mask of the given shape on `device`.
pub(crate) fn all_true<const D: usize>(
    dims: [usize; D],
    device: &burn::tensor::Device,
) -> Tensor<D, burn::tensor::Bool> {
    Tensor::<D, burn::tensor::Int>::zeros(dims, device).equal_elem(0)
}
