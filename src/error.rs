//! The crate's error type.
//!
//! Every public entry point that can be misused has a `try_` form returning [`Result`]; the
//! panicking convenience form calls it and panics with the same message (documented under
//! `# Panics`). Messages always name the argument, what was expected and what was given.

use std::fmt;

/// Errors returned by the `try_` forms of burn-rlhf's functions and by config validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A tensor argument has the wrong shape (rank or size) for this call.
    #[error("shape mismatch for `{arg}`: expected {expected}, got {got:?}")]
    Shape {
        /// Name of the argument, as in the function signature.
        arg: &'static str,
        /// What was expected, in words and dimensions (e.g. `"[B, T] = [4, 7] (as labels)"`).
        expected: String,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A hyper-parameter or option is outside its valid range.
    #[error("invalid value for `{field}`: {reason} (got {value})")]
    Config {
        /// Name of the config field or argument.
        field: &'static str,
        /// Why the value is invalid, e.g. `"must be finite and > 0"`.
        reason: String,
        /// The offending value, formatted.
        value: String,
    },
    /// An input that this configuration reads was not given (e.g. `ref_logps` with `beta != 0`).
    #[error("missing input `{arg}`: {needed_by}")]
    MissingInput {
        /// The input (or pair of inputs) that is missing, as named by its setter or field.
        arg: &'static str,
        /// Which option or loss type needs it, and how to provide it.
        needed_by: String,
    },
    /// Two options (or an option and an input) that cannot be combined.
    #[error("`{field}` conflicts with `{other}`: {reason}")]
    Conflict {
        /// The option (config field or input) that is rejected.
        field: &'static str,
        /// The option it conflicts with.
        other: &'static str,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A normalizer of the wrong kind: a per-token normalizer on a loss with one term per
    /// sequence or pair (or the reverse).
    #[error("normalizer `{field}` = {normalizer} does not fit: {reason}")]
    NormalizerKind {
        /// The config field holding the normalizer.
        field: &'static str,
        /// The normalizer, formatted.
        normalizer: String,
        /// Why it does not fit.
        reason: String,
    },
    /// Float inputs of one call have different dtypes (e.g. f64 reference log-probs with f32
    /// policy log-probs). Cast one of them (`tensor.cast(FloatDType::F32)`).
    #[error("dtype mismatch for `{arg}`: expected {expected} (the dtype of `{like}`), got {got}")]
    DType {
        /// The argument whose dtype differs.
        arg: &'static str,
        /// The dtype of the reference argument.
        expected: String,
        /// The reference argument.
        like: &'static str,
        /// The dtype given.
        got: String,
    },
    /// A device argument cannot be used for this operation.
    #[error("device `{arg}`: {reason}")]
    Device {
        /// The device argument.
        arg: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
    /// The backend failed while the crate read a tensor back (a device error, not bad input).
    #[error("backend error while reading `{arg}`: {detail}")]
    Backend {
        /// The tensor being read.
        arg: &'static str,
        /// The backend's message.
        detail: String,
    },
    /// A label (token id) lies outside `[0, vocab_size)` and is not the ignore index.
    #[error(
        "label out of range in `{arg}`: {value} at flat position {position} is not in [0, {vocab_size}) and is not the ignore index {ignore_index}"
    )]
    LabelOutOfRange {
        /// Name of the argument holding the labels.
        arg: &'static str,
        /// The offending label.
        value: i64,
        /// Row-major position of the first offending label.
        position: usize,
        /// Vocabulary size (last dimension of the logits).
        vocab_size: usize,
        /// The configured ignore index.
        ignore_index: i64,
    },
    /// A batch (or another dimension that must be non-empty) has size zero.
    #[error("`{arg}` is empty: {what}")]
    Empty {
        /// Name of the argument.
        arg: &'static str,
        /// Which dimension is empty.
        what: String,
    },
    /// An input holds NaN or infinity (reported only in checked mode).
    #[error("`{arg}` contains a non-finite value (NaN or infinity)")]
    NonFinite {
        /// Name of the argument.
        arg: &'static str,
    },
    /// The tensor's dtype cannot be computed on its device.
    #[error("dtype {dtype} of `{arg}` is not supported on device {device}")]
    UnsupportedDType {
        /// Name of the argument.
        arg: &'static str,
        /// The dtype, formatted.
        dtype: String,
        /// The device, formatted.
        device: String,
    },
    /// A config file names a field that the config class does not have: a TRL config
    /// ([`crate::trl`]: neither the class's own field nor a `TrainingArguments` field) or one
    /// of the crate's configs loaded with [`crate::config::LoadStrict`].
    #[error(
        "unknown field `{field}` for {config}: it is not a field of {config} (a typo, or a field of another version)"
    )]
    UnknownField {
        /// The config class, e.g. `"DPOConfig"` or `"SamplerConfig"`.
        config: &'static str,
        /// The unknown field, as written in the file.
        field: String,
    },
    /// A config file sets fields that this crate does not implement to values other than
    /// TRL's defaults ([`crate::trl::TrlConfig::deny_unsupported`]).
    #[error("unsupported fields {fields:?}: {reason}")]
    Unsupported {
        /// The fields, as TRL names them.
        fields: Vec<String>,
        /// Each field's value, TRL's default and what it changes.
        reason: String,
    },
    /// A collective reduction between data-parallel ranks did not complete: a rank did not
    /// arrive in time, the ranks sent values of different lengths, or the group was broken by
    /// an earlier failure (see [`crate::distributed::Reducer`]).
    #[error("collective `{op}` across {world_size} ranks failed: {reason}")]
    Collective {
        /// The operation, e.g. `"sum"`.
        op: &'static str,
        /// Number of ranks in the group.
        world_size: usize,
        /// What went wrong.
        reason: String,
    },
    /// A process-level runtime the call needs is not there (feature `mpi`): the process was
    /// not started by an MPI launcher, MPI was already initialized (or finalized), or the
    /// library gives too little thread support. (A binary built with `mpi` links the MPI
    /// library dynamically: where that library is missing the loader stops before `main`, with
    /// `error while loading shared libraries: libmpi.so...`.)
    #[error("{runtime} runtime unavailable: {reason}")]
    Runtime {
        /// The runtime, e.g. `"MPI"`.
        runtime: &'static str,
        /// What is missing and how to provide it.
        reason: String,
    },
    /// A Hugging Face checkpoint directory could not be read or written: a missing, extra or
    /// mis-shaped tensor (`tensor` names it), a `config.json` field this crate does not
    /// support, a dtype safetensors does not hold here, or an I/O error.
    #[error("checkpoint `{path}`: {}{reason}", tensor.as_ref().map(|t| format!("tensor `{t}`: ")).unwrap_or_default())]
    Checkpoint {
        /// The file or directory.
        path: String,
        /// The tensor concerned, if any (its Hugging Face name).
        tensor: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A dataset row could not be read (feature `data`): not JSON, a missing field, a field of
    /// the wrong type, a row of another TRL format, or an I/O error. `row` is the 1-based line
    /// of a JSONL file (the 1-based row of a Parquet file); `field` names the column, with the
    /// message index for conversational fields (`chosen[1].role`).
    #[error("dataset `{file}`{}{}: {reason}", row.map(|r| format!(" row {r}")).unwrap_or_default(), field.as_ref().map(|f| format!(" field `{f}`")).unwrap_or_default())]
    Data {
        /// The file (or `"<rows>"` for rows given in memory).
        file: String,
        /// 1-based row number, if the problem is in one row.
        row: Option<usize>,
        /// The field concerned, if any.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A tokenizer or its chat template could not be loaded, rendered or applied (feature
    /// `data`): a missing or unreadable `tokenizer.json`, a template the Jinja engine cannot
    /// parse, a template's own `raise_exception(...)`, a token the vocabulary does not have.
    #[error("tokenizer `{what}`: {reason}")]
    Tokenizer {
        /// The file, template or token concerned.
        what: String,
        /// What is wrong (a template's `raise_exception` message verbatim).
        reason: String,
    },
    /// A config file could not be read or parsed (not JSON / YAML, or not a mapping).
    #[error("cannot read {what}: {message}")]
    ConfigFile {
        /// What was being read, e.g. `"DPOConfig JSON"` or a path.
        what: String,
        /// The reader's or parser's message.
        message: String,
    },
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::Config`].
    pub fn config(
        field: &'static str,
        reason: impl Into<String>,
        value: impl fmt::Display,
    ) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
            value: value.to_string(),
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(arg: &'static str, expected: impl Into<String>, got: &[usize]) -> Self {
        Error::Shape {
            arg,
            expected: expected.into(),
            got: got.to_vec(),
        }
    }
}

/// Checks that `value` is finite and strictly positive.
pub(crate) fn check_positive(field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::config(field, "must be finite and > 0", value))
    }
}

/// Checks that `value` is finite and in the closed interval `[lo, hi]`.
pub(crate) fn check_in_closed(field: &'static str, value: f64, lo: f64, hi: f64) -> Result<()> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(Error::config(
            field,
            format!("must be in [{lo}, {hi}]"),
            value,
        ))
    }
}

/// [`Error::Empty`] when `len` is 0.
pub(crate) fn check_non_empty(arg: &'static str, len: usize, what: &str) -> Result<()> {
    if len == 0 {
        Err(Error::Empty {
            arg,
            what: what.to_string(),
        })
    } else {
        Ok(())
    }
}

/// Checks that two shapes are equal; `what` describes the expectation for the message.
pub(crate) fn check_same_shape(
    arg: &'static str,
    got: &[usize],
    expected: &[usize],
    like: &str,
) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::shape(
            arg,
            format!("{expected:?} (same as {like})"),
            got,
        ))
    }
}

impl From<crate::host_reads::ReadError> for Error {
    fn from(e: crate::host_reads::ReadError) -> Self {
        Error::Backend {
            arg: e.arg,
            detail: e.detail,
        }
    }
}

impl std::fmt::Display for crate::host_reads::ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            Error::from(crate::host_reads::ReadError {
                arg: self.arg,
                detail: self.detail.clone()
            })
        )
    }
}

/// Whether the index checks (label / target range, attended rows, score positions) read the
/// indices back for a tensor on `device`: always on the CPU backends, where the read is a
/// plain copy of host memory, and on other devices (wgpu, CUDA) in checked mode. The answer
/// is the same in every build profile, so a debug and a release build behave alike. Where
/// they do not run, the op never reads out of bounds: the affected outputs are NaN instead
/// (see [`host_reads`](crate::host_reads)).
pub(crate) fn index_checks(device: &burn::tensor::Device) -> bool {
    checked_mode() || crate::backends::is_host_memory(device)
}

/// Unwraps a `try_` result in a panicking convenience wrapper.
#[track_caller]
pub(crate) fn unwrap_or_panic<T>(result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("burn-rlhf: {error}"),
    }
}

/// Generates the panicking form of a `try_` entry point, so that no wrapper is written by
/// hand: the same arguments, the `try_` form's checks, and on an error a panic with the same
/// message (`burn-rlhf: <error>`). The caller writes the summary doc; the macro adds the
/// `# Panics` section pointing at the `try_` form.
///
/// ```ignore
/// crate::error::panicking! {
///     /// The loss.
///     pub fn forward(&self, batch: &Batch) -> LossOutput = try_forward;
///     /// A free function (generics in brackets).
///     pub fn masked_mean[const D: usize](x: Tensor<D>, mask: Tensor<D, Bool>) -> Tensor<1> = try_masked_mean;
///     /// An associated constructor.
///     pub fn new(x: Tensor<2>) -> Self = Self::try_new;
/// }
/// ```
macro_rules! panicking {
    () => {};
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $([$($gen:tt)*])? (&self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty = $try:ident;
        $($rest:tt)*
    ) => {
        $(#[$attr])*
        #[doc = ""]
        #[doc = "# Panics"]
        #[doc = concat!("On the errors of [`", stringify!($try), "`](Self::", stringify!($try), "), with the same message.")]
        #[track_caller]
        $vis fn $name $(<$($gen)*>)? (&self $(, $arg: $ty)*) -> $ret {
            $crate::error::unwrap_or_panic(self.$try($($arg),*))
        }
        $crate::error::panicking! { $($rest)* }
    };
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $([$($gen:tt)*])? ($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty = Self::$try:ident;
        $($rest:tt)*
    ) => {
        $(#[$attr])*
        #[doc = ""]
        #[doc = "# Panics"]
        #[doc = concat!("On the errors of [`", stringify!($try), "`](Self::", stringify!($try), "), with the same message.")]
        #[track_caller]
        $vis fn $name $(<$($gen)*>)? ($($arg: $ty),*) -> $ret {
            $crate::error::unwrap_or_panic(Self::$try($($arg),*))
        }
        $crate::error::panicking! { $($rest)* }
    };
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $([$($gen:tt)*])? ($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty = $try:ident;
        $($rest:tt)*
    ) => {
        $(#[$attr])*
        #[doc = ""]
        #[doc = "# Panics"]
        #[doc = concat!("On the errors of [`", stringify!($try), "`], with the same message.")]
        #[track_caller]
        $vis fn $name $(<$($gen)*>)? ($($arg: $ty),*) -> $ret {
            $crate::error::unwrap_or_panic($try($($arg),*))
        }
        $crate::error::panicking! { $($rest)* }
    };
}
pub(crate) use panicking;

static CHECKED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

thread_local! {
    /// The checked-mode override of the current thread, set by [`with_checked_mode`].
    static CHECKED_SCOPE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Switches the process-wide default of checked mode on or off.
///
/// **Non-finite input policy.** In checked mode every `try_` entry point reads its float
/// inputs back and returns [`Error::NonFinite`] (naming the argument) when one holds NaN or
/// infinity; this costs one host sync per input. Outside checked mode (the default) inputs are
/// not inspected and non-finite values propagate to the outputs as NaN/inf: they are never
/// silently masked. Finite inputs never produce NaN or inf where the math is finite, in either
/// mode. The environment variable `BURN_RLHF_CHECKED=1` turns checked mode on at start-up.
///
/// This sets the default for every thread; [`with_checked_mode`] overrides it for one scope
/// on one thread (two trainers, or parallel tests, do not interfere through it).
pub fn set_checked_mode(on: bool) {
    CHECKED.store(on as u8, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `f` with checked mode `on` for the current thread only, whatever the process-wide
/// default ([`set_checked_mode`]) says, and restores the previous state afterwards (also when
/// `f` panics). Scopes nest; other threads are not affected.
///
/// ```
/// let strict = burn_rlhf::with_checked_mode(true, || burn_rlhf::checked_mode());
/// assert!(strict);
/// ```
pub fn with_checked_mode<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CHECKED_SCOPE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CHECKED_SCOPE.with(|c| c.replace(Some(on))));
    f()
}

/// Whether checked mode is on for the current thread: the innermost [`with_checked_mode`]
/// scope, else the process-wide default ([`set_checked_mode`], `BURN_RLHF_CHECKED`).
pub fn checked_mode() -> bool {
    if let Some(on) = CHECKED_SCOPE.with(std::cell::Cell::get) {
        return on;
    }
    match CHECKED.load(std::sync::atomic::Ordering::Relaxed) {
        2 => {
            let on = std::env::var("BURN_RLHF_CHECKED").is_ok_and(|v| v == "1" || v == "true");
            CHECKED.store(on as u8, std::sync::atomic::Ordering::Relaxed);
            on
        }
        v => v == 1,
    }
}

/// In checked mode, [`Error::NonFinite`] when `tensor` holds infinity (NaN is allowed: it is
/// the "not scored" marker of reward functions, as in TRL).
pub(crate) fn check_no_inf<const D: usize>(
    tensor: &burn::tensor::Tensor<D>,
    arg: &'static str,
) -> Result<()> {
    if checked_mode() && count_true(tensor.clone().is_inf()) > 0 {
        return Err(Error::NonFinite { arg });
    }
    Ok(())
}

/// [`check_finite`] on an optional tensor.
pub(crate) fn check_finite_opt<const D: usize>(
    tensor: Option<&burn::tensor::Tensor<D>>,
    arg: &'static str,
) -> Result<()> {
    match tensor {
        Some(t) => check_finite(t, arg),
        None => Ok(()),
    }
}

/// In checked mode, [`Error::Config`] naming `arg` when `probs` holds a value outside
/// `[0, 1]` (or NaN).
pub(crate) fn check_probabilities(
    probs: &burn::tensor::Tensor<1>,
    arg: &'static str,
) -> Result<()> {
    if checked_mode() {
        let outside = probs
            .clone()
            .lower_elem(0.0)
            .bool_or(probs.clone().greater_elem(1.0))
            .bool_or(probs.clone().is_nan());
        let n = count_true(outside);
        if n > 0 {
            return Err(Error::config(
                arg,
                "must hold probabilities in [0, 1]",
                format!("{n} value(s) outside"),
            ));
        }
    }
    Ok(())
}

/// In checked mode, [`Error::NonFinite`] when `tensor` holds NaN or infinity.
pub(crate) fn check_finite<const D: usize>(
    tensor: &burn::tensor::Tensor<D>,
    arg: &'static str,
) -> Result<()> {
    if checked_mode() && count_true(tensor.clone().is_finite().bool_not()) > 0 {
        return Err(Error::NonFinite { arg });
    }
    Ok(())
}

/// Number of true elements, read back as one integer. (Reading a Bool reduction with
/// `into_scalar::<bool>()` returned a wrong answer on wgpu/lavapipe; an integer sum does not.)
pub(crate) fn count_true<const D: usize>(mask: burn::tensor::Tensor<D, burn::tensor::Bool>) -> i64 {
    crate::host_reads::ints(mask.int().sum(), "mask").unwrap_or_else(|e| panic!("burn-rlhf: {e}"))
        [0]
}

/// [`Error::DType`] when the float tensor `tensor` (argument `arg`) does not have the dtype of
/// `like` (argument `like_arg`): burn panics on binary ops between float tensors of different
/// dtypes, so every entry point checks this before computing.
pub(crate) fn check_dtype_like<const D: usize, const E: usize>(
    arg: &'static str,
    tensor: &burn::tensor::Tensor<D>,
    like_arg: &'static str,
    like: &burn::tensor::Tensor<E>,
) -> Result<()> {
    let (got, expected) = (tensor.dtype(), like.dtype());
    if got == expected {
        Ok(())
    } else {
        Err(Error::DType {
            arg,
            expected: format!("{expected:?}"),
            like: like_arg,
            got: format!("{got:?}"),
        })
    }
}

/// [`check_dtype_like`] on an optional tensor.
pub(crate) fn check_dtype_like_opt<const D: usize, const E: usize>(
    arg: &'static str,
    tensor: Option<&burn::tensor::Tensor<D>>,
    like_arg: &'static str,
    like: &burn::tensor::Tensor<E>,
) -> Result<()> {
    match tensor {
        Some(t) => check_dtype_like(arg, t, like_arg, like),
        None => Ok(()),
    }
}

/// In checked mode, [`Error::NonFinite`] when `tensor` holds NaN or infinity at a position
/// where `mask` is true (masked positions may hold anything: they are never read).
pub(crate) fn check_finite_masked<const D: usize>(
    tensor: &burn::tensor::Tensor<D>,
    mask: &burn::tensor::Tensor<D, burn::tensor::Bool>,
    arg: &'static str,
) -> Result<()> {
    if checked_mode() && tensor.dims() == mask.dims() {
        let bad = tensor.clone().is_finite().bool_not().bool_and(mask.clone());
        if count_true(bad) > 0 {
            return Err(Error::NonFinite { arg });
        }
    }
    Ok(())
}
