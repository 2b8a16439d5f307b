//! Per-token log-probs from logits and labels.

use burn::config::Config;
use burn::tensor::{Bool, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::kernel::token_logps_op;
use super::sequence::SequenceReduction;
use crate::backends::has_native_kernel;
use crate::error::{Error, check_positive, unwrap_or_panic};
use crate::reduce::{mask_like, zero_masked};

/// How labels line up with logits.
///
/// There is deliberately no default: scoring unshifted labels with a causal LM's logits (or
/// shifting twice) is silent and common (OpenRLHF 465, Liger-Kernel 486).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelAlignment {
    /// Causal LM: `logits[:, t]` predicts `labels[:, t + 1]`. Scores `logits[:, :-1]` against
    /// `labels[:, 1:]`; the output (and its mask) has `T - 1` columns. The mask you pass is in
    /// label coordinates (`[B, T]`) and is shifted together with the labels.
    CausalShift,
    /// `logits[:, t]` scores `labels[:, t]` (labels already shifted, or an encoder-decoder).
    /// The output has `T` columns.
    Aligned,
}

/// Which implementation computes the token log-probs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogpsImplementation {
    /// The memory-lean op with a hand-written backward where the device's backend has it
    /// ([`crate::backends::has_native_kernel`]), the reference path elsewhere.
    Auto,
    /// `log_softmax(logits / T).gather(labels)` on plain tensors, differentiated by burn's
    /// autodiff. Kept as the test oracle; uses several `[B, T, V]` buffers under autodiff.
    Reference,
}

/// Configuration of [`TokenLogps`].
#[derive(Config, Debug)]
pub struct TokenLogpsConfig {
    /// How labels line up with logits. Required, see [`LabelAlignment`].
    pub alignment: LabelAlignment,
    /// Label value that marks a position to ignore. Default: -100 (PyTorch / TRL convention).
    #[config(default = -100)]
    pub ignore_index: i64,
    /// Softmax temperature: log-probs of `softmax(logits / temperature)`. Default: 1.0.
    /// Must be finite and > 0.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Check on every device that every scored label is in `[0, V)` or equal to
    /// `ignore_index`, returning [`Error::LabelOutOfRange`] otherwise. Default: false, which
    /// still checks wherever the check is free or asked for: on the CPU backends (flex,
    /// ndarray: the labels are host memory) in every build profile, and on other devices in
    /// [checked mode](crate::set_checked_mode), in every build profile. On a GPU device
    /// outside those, the labels are not read back (no sync, see
    /// [`host_reads`](crate::host_reads)): a scored position with an out-of-range label gets a
    /// NaN log-prob (never an out-of-bounds read), which makes the loss NaN.
    #[config(default = false)]
    pub check_labels: bool,
    /// Implementation. Default: [`LogpsImplementation::Auto`].
    #[config(default = "LogpsImplementation::Auto")]
    pub implementation: LogpsImplementation,
}

impl TokenLogpsConfig {
    /// Validates the configuration.
    pub fn validate(&self) -> crate::Result<()> {
        check_positive("temperature", self.temperature)
    }

    /// Validates and builds the op.
    pub fn try_init(&self) -> crate::Result<TokenLogps> {
        self.validate()?;
        Ok(TokenLogps {
            alignment: self.alignment,
            ignore_index: self.ignore_index,
            temperature: self.temperature,
            check_labels: self.check_labels,
            implementation: self.implementation,
        })
    }

    /// Builds the op.
    ///
    /// # Panics
    /// If the configuration is invalid (see [`validate`](Self::validate)).
    pub fn init(&self) -> TokenLogps {
        unwrap_or_panic(self.try_init())
    }
}

/// Per-token log-probs with the mask of the positions they are valid at.
///
/// `logps` is exactly 0 (value and gradient) wherever `mask` is false.
#[derive(Debug, Clone)]
pub struct GatheredLogps {
    /// Per-token log-probs `[B, T']` (`T' = T - 1` with [`LabelAlignment::CausalShift`]).
    pub logps: Tensor<2>,
    /// Validity mask `[B, T']`, aligned with `logps`.
    pub mask: Tensor<2, Bool>,
}

impl GatheredLogps {
    /// Sum over each sequence's valid tokens: `[B]`.
    pub fn sum(&self) -> Tensor<1> {
        SequenceReduction::Sum.reduce(self.logps.clone(), self.mask.clone())
    }

    /// Mean over each sequence's valid tokens (0 for a sequence with none): `[B]`.
    pub fn mean(&self) -> Tensor<1> {
        SequenceReduction::Mean.reduce(self.logps.clone(), self.mask.clone())
    }

    /// Any [`SequenceReduction`]: `[B]`.
    ///
    /// # Panics
    /// On the errors of [`try_reduce`](Self::try_reduce).
    pub fn reduce(&self, reduction: SequenceReduction) -> Tensor<1> {
        reduction.reduce(self.logps.clone(), self.mask.clone())
    }

    /// Non-panicking form of [`reduce`](Self::reduce) (see [`SequenceReduction::try_reduce`]):
    /// a mask of another shape, an invalid `eps`, or (checked mode) non-finite log-probs are
    /// errors.
    pub fn try_reduce(&self, reduction: SequenceReduction) -> crate::Result<Tensor<1>> {
        reduction.try_reduce(self.logps.clone(), self.mask.clone())
    }

    /// Rows `start .. start + len` (log-probs and mask together).
    pub fn narrow_rows(&self, start: usize, len: usize) -> Self {
        Self {
            logps: self.logps.clone().narrow(0, start, len),
            mask: self.mask.clone().narrow(0, start, len),
        }
    }

    /// Per-sequence count of valid tokens, in the dtype of the log-probs: `[B]`.
    pub fn token_counts(&self) -> Tensor<1> {
        crate::reduce::masked_row_count(&self.logps, self.mask.clone())
    }
}

/// Token log-prob gathering, built by [`TokenLogpsConfig::init`].
///
/// This computes `log softmax(logits / temperature)[label]` at every valid position and 0
/// elsewhere. A position is valid when its (shifted) label is not `ignore_index` and, if a
/// mask is given, the (shifted) mask is true.
///
/// Under autodiff the default implementation keeps only the logits and a `[B, T]`
/// logsumexp for backward; the gradient is written by hand:
/// `d logp[b,t] / d logits[b,t,:] = (onehot(label) - softmax(logits / T)) / T`.
///
/// `logits` must be the model's **logits**, not log-probs or probabilities. f16/bf16 logits
/// are upcast to f32 before the reduction over the vocabulary (outputs are f32; the gradient
/// returns to the logits in their dtype); a dtype the device cannot compute is
/// [`Error::UnsupportedDType`].
#[derive(Debug, Clone)]
pub struct TokenLogps {
    alignment: LabelAlignment,
    ignore_index: i64,
    temperature: f64,
    check_labels: bool,
    implementation: LogpsImplementation,
}

impl TokenLogps {
    /// Per-token log-probs, validity from the labels alone.
    ///
    /// # Shapes
    /// - logits: `[B, T, V]`
    /// - labels: `[B, T]` (`Int`, `ignore_index` marks ignored positions)
    /// - output: `[B, T']`, `T' = T - 1` with [`LabelAlignment::CausalShift`], else `T`
    ///
    /// # Panics
    /// On the errors [`try_forward`](Self::try_forward) returns.
    pub fn forward(&self, logits: Tensor<3>, labels: Tensor<2, Int>) -> GatheredLogps {
        unwrap_or_panic(self.try_forward(logits, labels, None))
    }

    /// As [`forward`](Self::forward), with an explicit mask `[B, T]` (label coordinates).
    ///
    /// # Panics
    /// On the errors [`try_forward`](Self::try_forward) returns.
    pub fn forward_masked(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        mask: Tensor<2, Bool>,
    ) -> GatheredLogps {
        unwrap_or_panic(self.try_forward(logits, labels, Some(mask)))
    }

    /// Non-panicking form: checks shapes (and label range when configured).
    pub fn try_forward(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Bool>>,
    ) -> crate::Result<GatheredLogps> {
        let mask = mask.map(crate::reduce::canonical_mask);
        let [b, t, v] = logits.dims();
        let label_dims = labels.dims();
        if label_dims != [b, t] {
            return Err(Error::shape(
                "labels",
                format!(
                    "[B, T] = [{b}, {t}] (the first two dims of logits {:?})",
                    [b, t, v]
                ),
                &label_dims,
            ));
        }
        if let Some(mask) = &mask
            && mask.dims() != [b, t]
        {
            return Err(Error::shape(
                "mask",
                format!("[B, T] = [{b}, {t}] (same as labels)"),
                &mask.dims(),
            ));
        }
        if b == 0 || t == 0 || v == 0 {
            return Err(Error::Empty {
                arg: "logits",
                what: format!("shape {:?} has a zero dimension", [b, t, v]),
            });
        }
        if self.alignment == LabelAlignment::CausalShift && t < 2 {
            return Err(Error::shape(
                "logits",
                "T >= 2 with LabelAlignment::CausalShift (one position is lost to the shift)",
                &[b, t, v],
            ));
        }
        let first_col = usize::from(self.alignment == LabelAlignment::CausalShift);
        let mut valid = labels.clone().not_equal_elem(self.ignore_index);
        if let Some(mask) = mask {
            valid = valid.bool_and(mask);
        }
        let out_of_range = guard_label_range(
            &labels,
            &valid,
            LabelRange {
                arg: "labels",
                vocab: v,
                ignore_index: self.ignore_index,
                first_col,
                always: self.check_labels,
            },
        )?;
        crate::error::check_finite(&logits, "logits")?;
        let logits = crate::precision::accumulate_in_f32(logits, "logits")?;

        let unsafe_label = match &out_of_range {
            Some(bad) => valid.clone().bool_not().bool_or(bad.clone()),
            None => valid.clone().bool_not(),
        };
        let safe_labels = labels.mask_fill(unsafe_label, 0);
        let out = self.gather(logits, safe_labels, valid);
        Ok(match out_of_range {
            None => out,
            Some(bad) => {
                let bad = bad.narrow(1, first_col, t - first_col);
                GatheredLogps {
                    logps: out.logps.mask_fill(bad, f64::NAN),
                    mask: out.mask,
                }
            }
        })
    }

    /// The gather on labels already in `[0, V)` (`valid` marks the scored positions).
    fn gather(
        &self,
        logits: Tensor<3>,
        safe_labels: Tensor<2, Int>,
        valid: Tensor<2, Bool>,
    ) -> GatheredLogps {
        let [b, t, _] = logits.dims();
        let scale = 1.0 / self.temperature;

        let native =
            self.implementation == LogpsImplementation::Auto && has_native_kernel(&logits.device());
        match (self.alignment, native) {
            (LabelAlignment::Aligned, false) => GatheredLogps {
                logps: token_logps_reference(logits, safe_labels, valid.clone(), scale),
                mask: valid,
            },
            (LabelAlignment::CausalShift, false) => {
                let logits = logits.narrow(1, 0, t - 1);
                let labels = safe_labels.narrow(1, 1, t - 1);
                let valid = valid.narrow(1, 1, t - 1);
                GatheredLogps {
                    logps: token_logps_reference(logits, labels, valid.clone(), scale),
                    mask: valid,
                }
            }
            (LabelAlignment::Aligned, true) => {
                let valid_f = bool_as_float_like(&logits, valid.clone());
                let (lp, _lse) = token_logps_op(logits, safe_labels, valid_f, scale);
                GatheredLogps {
                    logps: zero_masked(lp, valid.clone()),
                    mask: valid,
                }
            }
            (LabelAlignment::CausalShift, true) => {
                // Score every row of the unsliced logits (no [B, T-1, V] copy) against labels
                // moved one step left; the last row gets no target and is dropped afterwards.
                let device = logits.device();
                let pad_valid = Tensor::<2, Bool>::full([b, 1], false, &device);
                let pad_label = Tensor::<2, Int>::zeros([b, 1], &device);
                let shifted_valid = valid.narrow(1, 1, t - 1);
                let row_valid = Tensor::cat(vec![shifted_valid.clone(), pad_valid], 1);
                let row_labels = Tensor::cat(vec![safe_labels.narrow(1, 1, t - 1), pad_label], 1);
                let valid_f = bool_as_float_like(&logits, row_valid);
                let (lp, _lse) = token_logps_op(logits, row_labels, valid_f, scale);
                GatheredLogps {
                    logps: zero_masked(lp.narrow(1, 0, t - 1), shifted_valid.clone()),
                    mask: shifted_valid,
                }
            }
        }
    }
}

/// `[B, T]` float 0/1 tensor in the dtype and on the device of `logits`.
fn bool_as_float_like(logits: &Tensor<3>, mask: Tensor<2, Bool>) -> Tensor<2> {
    let [b, t, _] = logits.dims();
    let like = Tensor::<2>::zeros([b, t], (&logits.device(), logits.dtype()));
    mask_like(&like, mask)
}

/// What [`guard_label_range`] checks.
pub(crate) struct LabelRange {
    /// The argument holding the labels, for the error.
    pub(crate) arg: &'static str,
    /// The vocabulary size `V`.
    pub(crate) vocab: usize,
    /// The ignore index (never out of range).
    pub(crate) ignore_index: i64,
    /// Columns before this one are never scored (1 with a causal shift).
    pub(crate) first_col: usize,
    /// Check on every device (the op's `check_labels` / `check_targets`).
    pub(crate) always: bool,
}

/// The label range policy of every op that indexes by a label (lean gather, fused op): where
/// the labels can be read ([`index_checks`](crate::error::index_checks): the CPU backends
/// always, other devices in checked mode, or when the op asks `always`), an
/// out-of-range label is [`Error::LabelOutOfRange`] and `Ok(None)` is returned; elsewhere the
/// labels are not read, and the scored positions holding an out-of-range label are returned,
/// for the op to gather a safe index there and write NaN (no out-of-bounds read).
pub(crate) fn guard_label_range<const D: usize>(
    labels: &Tensor<D, Int>,
    valid: &Tensor<D, Bool>,
    range: LabelRange,
) -> crate::Result<Option<Tensor<D, Bool>>> {
    if range.always || crate::error::index_checks(&labels.device()) {
        check_label_range(
            labels,
            range.arg,
            range.vocab,
            range.ignore_index,
            range.first_col,
        )?;
        return Ok(None);
    }
    let outside = labels
        .clone()
        .lower_elem(0)
        .bool_or(labels.clone().greater_equal_elem(range.vocab as i64));
    Ok(Some(outside.bool_and(valid.clone())))
}

/// The one label range check of the crate (lean gather and fused op): every label of the
/// caller's tensor `arg` whose last-dim index is `>= first_col` must be in `[0, vocab)` or the
/// ignore index. The error reports the flat row-major position **in the caller's tensor**
/// (with a causal shift, `first_col = 1`: the first label of each row is never scored).
/// Reads the labels back (one transfer).
pub(crate) fn check_label_range<const D: usize>(
    labels: &Tensor<D, Int>,
    arg: &'static str,
    vocab: usize,
    ignore_index: i64,
    first_col: usize,
) -> crate::Result<()> {
    let cols = labels.dims()[D - 1].max(1);
    let values = crate::host_reads::ints(labels.clone(), arg)?;
    if let Some((position, &value)) = values
        .iter()
        .enumerate()
        .find(|&(i, &x)| i % cols >= first_col && x != ignore_index && (x < 0 || x >= vocab as i64))
    {
        return Err(Error::LabelOutOfRange {
            arg,
            value,
            position,
            vocab_size: vocab,
            ignore_index,
        });
    }
    Ok(())
}

/// The reference implementation (test oracle and fallback): plain burn tensor ops,
/// differentiated by burn's autodiff.
///
/// `labels` must already be in `[0, V)` everywhere (ignored positions clamped to any valid
/// id); `valid` marks the positions to keep. `scale = 1 / temperature`.
///
/// # Shapes
/// - logits: `[B, T, V]`, labels and valid: `[B, T]`, output: `[B, T]`
pub fn token_logps_reference(
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    valid: Tensor<2, Bool>,
    scale: f64,
) -> Tensor<2> {
    let valid = crate::reduce::canonical_mask(valid);
    let logits = if scale == 1.0 {
        logits
    } else {
        logits.mul_scalar(scale)
    };
    let logp = crate::reduce::log_softmax(logits, 2);
    let picked = logp
        .gather(2, labels.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2);
    zero_masked(picked, valid)
}
