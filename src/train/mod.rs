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
//! # Data parallel under burn-train
//!
//! Give every adapter the same reducer (`with_reducer`: a
//! [`ThreadReducer`](crate::distributed::ThreadReducer) for burn-train's `MultiDevice`
//! strategy, an [`MpiReducer`](crate::distributed) per process across hosts): each training
//! step then normalizes by the step's global counts, and the gradients that burn-train sums
//! over the devices are the gradient of the whole step's batch. Two things to set up:
//!
//! - **Equal steps per device.** burn's split gives the last device the remainder of the
//!   epoch, so the devices can take different numbers of steps (9 items, batch 4, 2 devices:
//!   1 and 2), and a device with a batch left waits for one without. Check at setup with
//!   [`check_loader_split`](crate::distributed::check_loader_split) (or
//!   [`check_equal_steps`](crate::distributed::check_equal_steps)), and fix the epoch with
//!   [`EqualShards::truncate`](crate::distributed::EqualShards::truncate) (drop-last).
//! - **A failing rank.** A step that errors calls [`Reducer::abort`](crate::distributed::Reducer::abort)
//!   on its reducer before it panics, so the other ranks fail at once with its message
//!   instead of waiting out the reducer's timeout.
//!
//! # Gradient accumulation (burn-train's `grads_accumulation(G)`)
//!
//! burn-train adds the gradients of `G` consecutive steps, each normalized by its **own**
//! count (with a reducer: its own global count), so the accumulated gradient is
//! `Σ_g ∇L_g / n_g` instead of the token-exact `Σ_g ∇L_g / Σ_g n_g` of one step over the `G`
//! micro-batches (`L_g`: the summed loss terms of micro-batch `g`, `n_g`: its count). The
//! error is a weighting:
//! - with equal counts (`n_g = n`, e.g. pair counts with full batches) the result is exactly
//!   `G` times the token-exact gradient: Adam and AdamW are invariant to that factor (up to
//!   their `epsilon`), SGD needs the learning rate divided by `G`, and gradient clipping sees
//!   a norm `G` times larger;
//! - with unequal counts (token counts, a short last batch) each micro-batch's terms weigh
//!   `1 / n_g`: short micro-batches count more per token, as in TRL before
//!   `num_items_in_batch`.
//!
//! The adapters cannot see the counts of the next `G - 1` batches, so they cannot do better
//! inside burn-train's loop. For token-exact accumulation, use the crate's own loops
//! ([`ppo_update`](crate::rl::ppo_update), the online trainers) or compute the step's
//! [`StepCounts`](crate::distributed::StepCounts) over all `G` micro-batches first and reduce
//! each with [`Normalizer::GlobalTokens`](crate::Normalizer::GlobalTokens) (the
//! [`distributed`](crate::distributed) module's rule).
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

/// A training step's result, or, on an error: [`Reducer::abort`] on the step's reducer (the
/// other ranks stop waiting and fail with this error) and the crate's panic.
pub(crate) fn step_or_abort<T>(
    result: crate::Result<T>,
    reducer: Option<&crate::distributed::SharedReducer>,
) -> T {
    match result {
        Ok(value) => value,
        Err(error) => {
            if let Some(reducer) = reducer {
                crate::distributed::Reducer::abort(reducer, &error.to_string());
            }
            panic!("burn-rlhf: {error}")
        }
    }
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
