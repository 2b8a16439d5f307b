//! burn-train integration (feature `train`): [`TrainStep`](burn::train::TrainStep) /
//! [`InferenceStep`](burn::train::InferenceStep) adapters that turn a burn model into a
//! [`Learner`](burn::train::Learner) model for preference optimization (DPO, CPO / SimPO,
//! ORPO), KTO, SFT and reward modelling, and burn-train metrics under TRL's names.
//!
//! | adapter | wraps | input | loss |
//! |---|---|---|---|
//! | [`PreferenceModel`] | a [`CausalLmLogps`] policy (+ a frozen reference for DPO) | [`PreferenceInput`] | [`PreferenceObjective`]: `DpoLoss`, `CpoLoss`, `OrpoLoss` |
//! | [`KtoModel`] | a [`CausalLmLogps`] policy + a frozen reference | [`UnpairedInput`] | `KtoLoss` |
//! | [`SftModel`] | a [`CausalLmLogps`] model | [`SftInput`] | token-mean NLL |
//! | [`RewardModel`] | a [`SequenceRewardModel`] | [`RewardInput`] | `BradleyTerryLoss` |
//!
//! [`TokenBatcher`] pads token items ([`PreferenceItem`], [`UnpairedItem`], [`SftItem`],
//! [`RewardItem`]) into those inputs for burn's `DataLoaderBuilder`, and
//! [`TrlMetricsExt::trl_metrics`] registers the metrics (`rewards/accuracies`,
//! `rewards/margins`, `logps/chosen`, ...) for the dashboard and the log files.
//!
//! # The frozen reference
//!
//! The reference model is a field of the adapter marked `#[module(skip)]`: burn's `Module`
//! derive leaves it out of parameter traversal, so it gets **no gradient, no optimizer state
//! and no place in the checkpoint** (a checkpoint holds the policy alone; give the reference
//! again when resuming), and it is not moved by `fork` / `to_device` / `valid`. Keep it on a
//! non-autodiff device (`policy.valid()`); its log-probs are computed there and moved to the
//! policy's device. The alternative, TRL's `precompute_ref_log_probs`, is supported too: put
//! the reference log-probs in the input (the items' `ref_*_logps`), and build the adapter with
//! no reference ([`PreferenceModel::new`] with `None`); the reference then costs nothing during
//! training. The skipped field was chosen over a precompute-only design because it keeps
//! the one-line setup (`PreferenceModel::new(policy, Some(policy.valid()), loss)`) and
//! TRL's default behaviour (reference forward per batch), with the checkpoint still the
//! policy's alone.
//!
//! # Limits
//!
//! Steps cannot return errors (burn-train's `TrainStep::step` returns the output), so a bad
//! batch panics with the crate's error message; multi-device strategies report it as a worker
//! failure. WPO (`use_weighting`) needs `log Σ p²` per token, which [`CausalLmLogps`] does not
//! give: use the loss directly for it. BCO keeps running statistics across steps and has no
//! adapter here.

mod input;
mod metric;
mod preference;
mod supervised;

pub use input::{
    PreferenceInput, PreferenceItem, RewardInput, RewardItem, SftInput, SftItem, TokenBatcher,
    UnpairedInput, UnpairedItem,
};
pub use metric::{TrlFileMetricLogger, TrlMetric, TrlMetricInput, TrlMetricsExt, TrlOutput};
pub use preference::{KtoModel, PreferenceModel, PreferenceObjective};
pub use supervised::{RewardModel, SftModel};

use burn::tensor::{Bool, Device, Int, Tensor};

use crate::logps::GatheredLogps;

/// A causal language model as the adapters see it: per-token log-probs of the labels.
///
/// Implement it with the crate's log-prob ops, e.g.
/// `FusedLogpsConfig::new().init().forward_causal(self.hidden(ids), head_weight, None, labels).0`
/// or `TokenLogpsConfig` on full logits.
pub trait CausalLmLogps {
    /// Log-probs of `labels` under the model, with their mask.
    ///
    /// `labels` are TRL's: the input ids with [`IGNORE_INDEX`](crate::IGNORE_INDEX) (-100) on
    /// the positions that are not scored (prompt, padding); the implementation does the causal
    /// shift (position `t` predicts label `t + 1`).
    ///
    /// # Shapes
    /// - `input_ids`, `labels`: `[N, T]`
    /// - returns: log-probs and mask `[N, T']` (one row per input row)
    fn token_logps(&self, input_ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> GatheredLogps;
}

/// A reward model as [`RewardModel`] sees it: one scalar per sequence.
pub trait SequenceRewardModel {
    /// Rewards of the sequences.
    ///
    /// # Shapes
    /// - `input_ids`: `[N, T]`; `attention_mask`: `[N, T]` (true on real tokens)
    /// - returns: `[N]`
    fn rewards(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Bool>) -> Tensor<1>;
}

/// A tensor moved to `device`, with `device`'s autodiff flag (a reference's log-probs,
/// computed on a non-autodiff device, join the policy's autodiff graph as constants).
/// (`to_device` alone keeps the source's autodiff flag.)
pub(crate) fn onto(tensor: Tensor<1>, device: &Device) -> Tensor<1> {
    let moved = tensor.detach().to_device(device);
    if device.is_autodiff() {
        moved.autodiff()
    } else {
        moved.without_autodiff()
    }
}

/// Int ids moved to `device` (the reference's), with its autodiff flag.
pub(crate) fn ids_onto(ids: Tensor<2, Int>, device: &Device) -> Tensor<2, Int> {
    let moved = ids.to_device(device);
    if device.is_autodiff() {
        moved.autodiff()
    } else {
        moved.without_autodiff()
    }
}
