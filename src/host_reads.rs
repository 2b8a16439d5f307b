//! Every device -> host read the library makes, in one place.
//!
//! A read (`into_data`, `into_scalar`) waits for the device to finish the queued work, which
//! stalls a GPU pipeline; on the CPU it is a copy. The default hot paths make **none** on a
//! GPU (on the CPU backends the log-prob ops read their labels: a copy of host memory, for the
//! range check): the token and fused log-prob ops, every loss forward and backward, [`Metrics`](crate::losses::Metrics)
//! (device tensors until you ask), the heads, gradient clipping inside the PPO update (the
//! scale is applied on the device) and the update's inner loop. What remains, each a
//! documented, deliberate read through this module (so it is counted by [`count`]):
//!
//! | read | when | cost | how to avoid it |
//! |---|---|---|---|
//! | label / target range check (`TokenLogps`, `FusedLogps`, the `[B, T]` or `[N]` ids) | always on the CPU backends (flex, ndarray: a copy of host memory, no sync); on GPU devices with `check_labels` / `check_targets = true` or in [checked mode](crate::set_checked_mode) | one read of the labels | on a GPU, off by default: an out-of-range label gives a NaN log-prob instead |
//! | reward head: every row attends to a token | always on the CPU backends; on GPU devices in checked mode | one `[B]` read | on a GPU, off by default (an empty row's score is NaN); `check_attended = false` turns it off everywhere |
//! | finite-input checks of every entry point | checked mode only | one count per checked tensor | off by default |
//! | [`Metrics::to_host`](crate::losses::Metrics::to_host) | when you call it | **one** transfer for all metrics | call it only on logging steps |
//! | [`ppo_update`](crate::rl::ppo_update) | once per update (per-row token counts for the global normalizer), once per minibatch **only** with `target_kl` (early stopping), and once at the end (the stats) | 1 + (minibatches with `target_kl`) + 1 | leave `target_kl` unset |
//! | [`clip_grad_norm`](crate::rl::clip_grad_norm) (the public function) | when you call it: it returns the norm as `f64` | one scalar | use `clip_grad_norm_on_device` (returns the norm as a tensor) |
//! | `RunningMoments::update` (BCO's running reward mean) | once per BCO training step | the batch's rewards | inherent to BCO's running statistic (TRL reads it too) |
//! | the `distributed` parts (`StepCounts::from_token_masks`, `KlParts`, `MomentParts`) and [`global_token_count`](crate::global_token_count) | when you build them | one read each | inherent: they are host values reduced across ranks |
//! | `KlPenalty` with `score_index` | always on the CPU backends; on GPU devices in checked mode (the index range check) | one `[B]` read | on a GPU, off by default (a row with a bad index gets NaN rewards) |
//! | the sampler ([`crate::generate`]) | every `finished_check_interval` tokens (stop when all rows finished) and once at the end (the sampled ids) | one count / one copy | raise `finished_check_interval` |
//! | online steps (`OnlineDpo`, `GrpoStep`, scoring, pairing) | pairing and rule-based scores read the samples; the step reads its loss and metrics once at the end | a few per step | inherent to scoring on the host |
//! | burn-train metrics ([`crate::train`]) | burn-train reads each logged metric | one per metric | burn-train's design |
//! | `hf::DecoderLm` full forward (`hidden_states`, `logits`; feature `hf`): token-id range check | always on the CPU backends (a copy of host memory); on GPU devices in checked mode | one `[B, T]` read per forward (the KV-cached decoding steps read nothing) | on a GPU, off by default |
//! | saving a Hugging Face checkpoint (`hf::DecoderLm::save_pretrained`, feature `hf`) | when you call it | one read per tensor (its bytes, converted to the stored dtype on the device first) | inherent: the file is written from host memory |
//!
//! [`count`] returns how many reads the library made on the current thread; the tests use it
//! to pin the list (`tests/rl/host_reads.rs`): a hot path that starts reading fails them.

use std::cell::Cell;

use burn::tensor::{Int, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Device -> host reads the library has made on the current thread so far (every read in
/// the table above; reads you make yourself are not counted).
pub fn count() -> u64 {
    READS.with(Cell::get)
}

fn counted() {
    READS.with(|r| r.set(r.get() + 1));
}

/// A failed read: the tensor's argument name and the backend's message (converted into
/// [`Error::Backend`](crate::Error::Backend); this module sits below `error`).
#[derive(Debug)]
pub(crate) struct ReadError {
    pub(crate) arg: &'static str,
    pub(crate) detail: String,
}

/// One read of a float tensor, as `f64` values in row-major order.
pub(crate) fn floats<const D: usize>(
    t: Tensor<D>,
    arg: &'static str,
) -> Result<Vec<f64>, ReadError> {
    counted();
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .map_err(|e| ReadError {
            arg,
            detail: format!("{e:?}"),
        })
}

/// One read of a float tensor's bytes in its own dtype, row-major, little-endian.
#[cfg(feature = "hf")]
pub(crate) fn bytes<const D: usize>(t: Tensor<D>) -> Vec<u8> {
    counted();
    t.into_data().into_bytes().to_vec()
}

/// One read of an int tensor, as `i64` values in row-major order.
pub(crate) fn ints<const D: usize>(
    t: Tensor<D, Int>,
    arg: &'static str,
) -> Result<Vec<i64>, ReadError> {
    counted();
    t.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| ReadError {
            arg,
            detail: format!("{e:?}"),
        })
}

/// One read of several `[k]` float tensors, concatenated on the device first: in their dtype
/// when they share one, else in f64 where the device has it (f32 otherwise).
pub(crate) fn floats_cat(values: Vec<Tensor<1>>, arg: &'static str) -> Result<Vec<f64>, ReadError> {
    let Some(first) = values.first() else {
        return Ok(Vec::new());
    };
    let dtype = first.dtype();
    let values = if values.iter().all(|v| v.dtype() == dtype) {
        values
    } else {
        let wide = if first.device().supports_dtype(burn::tensor::FloatDType::F64) {
            burn::tensor::FloatDType::F64
        } else {
            burn::tensor::FloatDType::F32
        };
        values.into_iter().map(|v| v.cast(wide)).collect()
    };
    floats(Tensor::cat(values, 0), arg)
}

/// One read of a one-element float tensor.
pub(crate) fn scalar(t: Tensor<1>, arg: &'static str) -> Result<f64, ReadError> {
    floats(t, arg).map(|v| v[0])
}
