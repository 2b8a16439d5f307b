//! Exact losses inside data-parallel training and gradient accumulation.
//!
//! # The rule
//!
//! One optimizer step sees `W` data-parallel ranks x `G` accumulation micro-batches. Every
//! gradient the step applies must be the gradient of **one** scalar: the loss of the whole
//! step's batch. Two things make that exact:
//!
//! 1. **Global counts.** Each micro-batch loss is reduced with the count of the *whole step*
//!    ([`StepCounts`]: tokens, sequences, pairs, summed over micro-batches and all-reduced over
//!    ranks) through [`Normalizer::GlobalTokens`] / [`Normalizer::GlobalSequences`]. The
//!    micro-batch losses then **sum** to the whole-batch loss, so the gradients must be
//!    **summed**: accumulate micro-batch gradients without dividing by `G`, and all-reduce
//!    gradients across ranks with `Sum` (not `Mean`). If your framework averages over ranks
//!    (DDP's default) or divides by `G`, multiply the loss by `W` (resp. `G`) instead; that is
//!    what TRL's `num_processes` / OpenRLHF's `dp_size` factors do.
//! 2. **Cross-rank statistics.** A loss whose per-example terms depend on a batch statistic
//!    (KTO's KL estimate, BCO's running mean, GRPO's batch-scaled advantages, whitening) must
//!    use the statistic of the whole step. Each is written here as *parts that add*:
//!    [`KlParts`] (`sum`, `count`) and [`MomentParts`] (`sum`, `sum_sq`, `count`). Build them
//!    from the local batch (one small host read), sum them over micro-batches and ranks
//!    ([`Reducer`] / [`sum_parts`]), and finish them into the statistic:
//!    - KTO: [`KlParts::finish`] -> `max(0, sum / count)` (detached) -> [`UnpairedBatch::with_kl`].
//!    - BCO: [`MomentParts::update_running`] folds the step's rewards into [`RunningMoments`];
//!      then call [`BcoLoss::forward`] with `train = false` on every micro-batch.
//!    - GRPO `scale_rewards = batch` (and GDPO's batch normalization):
//!      [`GroupAdvantageConfig::batch_reward_parts`] ->
//!      [`GroupAdvantageConfig::try_forward_with_batch_stats`] (groups must not be split across
//!      shards: a prompt's `G` completions stay together).
//!    - Whitening: [`MomentParts::from_masked`] -> [`whiten_with`] (Bessel-corrected variance).
//!
//!    `count`-weighted sums are exact for any shard sizes; TRL's "average the per-rank means"
//!    equals them only when every rank holds the same number of examples.
//!
//! **One collective call per step.** A tuple of parts is itself [`Parts`] (values concatenated
//! in a fixed layout, every rank the same), so the counts and all statistics of a step are
//! reduced together: `let (counts, kl, moments) = reducer.reduce(&(counts, kl, moments))?;`
//! (one small `[k]` tensor, one all-reduce, one host read).
//!
//! The cost of a global statistic is that it must be known before the first backward pass of
//! the step: compute the counts from the masks of all the step's micro-batches (cheap), and the
//! KTO KL estimate from a no-grad forward over the step's mismatched pairs, before training on
//! the micro-batches.
//!
//! # Which burn mechanism
//!
//! [`CollectiveReducer`] sums the parts with burn 0.22's collective
//! [`all_reduce`] (`ReduceOperation::Sum`) across the
//! devices of a [`DistributedContext`](burn::tensor::distributed::DistributedContext); gradients
//! are all-reduced by burn-train's DDP strategy or by calling `all_reduce` on each gradient
//! yourself. In burn 0.22 only CUDA runs the collective operations (cubecl's CUDA server
//! implements the device transport with NCCL): burn's dispatch routes `all_reduce` to the
//! cubecl backends only, and cubecl's wgpu, CPU, HIP and Metal servers have no transport
//! between devices, so they panic ("no transport between its devices"); Flex and NdArray are
//! refused by the dispatch itself and Flex exposes one device. So the reducer refuses every
//! non-CUDA device with [`Error::Device`] (instead of panicking inside burn) and data parallelism is
//! *simulated*: [`LocalReducer`] (one rank) and [`sum_parts`] (sum over shards given as a
//! slice), with gradients summed across replicas (see the `dpo_data_parallel` example).
//!
//!
//! # Several machines
//!
//! burn 0.22 has no multi-node collective: `DistributedConfig` has no addresses and its sync
//! server is in-process (burn 0.21's `burn-collective` with global/node addresses was removed
//! in 0.22). Across machines the crate needs only one thing from the user: a [`Reducer`]
//! whose `sum` adds a `[k]` vector of `f64` over all ranks (MPI, NCCL bindings, a parameter
//! server, or burn's remote backend once it supports cross-peer collectives). Everything else
//! (global counts, the parts, finishing the statistics) is the same code as on one machine;
//! gradients are all-reduced (summed) by whatever synchronizes the model.
//!
//! [`UnpairedBatch::with_kl`]: crate::losses::UnpairedBatch::with_kl
//! [`RunningMoments`]: crate::losses::RunningMoments
//! [`BcoLoss::forward`]: crate::losses::BcoLoss::forward
//! [`GroupAdvantageConfig::batch_reward_parts`]: crate::rl::GroupAdvantageConfig::batch_reward_parts
//! [`GroupAdvantageConfig::try_forward_with_batch_stats`]: crate::rl::GroupAdvantageConfig::try_forward_with_batch_stats

use std::ops::Add;

use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::{Bool, Device, FloatDType, Tensor, TensorData};

use crate::error::{Error, check_same_shape};
use crate::losses::RunningMoments;
use crate::reduce::{Normalizer, mask_like, zero_masked};
use crate::rl::Whitening;

/// Reads a small float tensor back to the host as `f64` (one sync).
fn host(x: Tensor<1>) -> Vec<f64> {
    x.detach()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("float tensor converts to f64")
}

/// Statistics that are sums over examples, so that their totals over micro-batches and ranks
/// are element-wise sums (what an all-reduce with `Sum` computes).
pub trait Parts: Sized + Clone {
    /// How many values [`to_values`](Self::to_values) returns (fixed per type), so that several
    /// parts can be packed into one reduction (see the tuple implementations).
    const LEN: usize;
    /// The values, in a fixed order.
    fn to_values(&self) -> Vec<f64>;
    /// Rebuilds from [`to_values`](Self::to_values)'s layout.
    fn from_values(values: &[f64]) -> Self;
    /// Element-wise sum of two parts.
    fn combine(&self, other: &Self) -> Self {
        let values: Vec<f64> = self
            .to_values()
            .iter()
            .zip(other.to_values())
            .map(|(a, b)| a + b)
            .collect();
        Self::from_values(&values)
    }
}

/// Several parts packed into **one** reduction: a tuple of parts is itself [`Parts`] (values
/// concatenated in order), so a step's global counts and every batch-coupled statistic travel
/// in a single all-reduce call: `reducer.reduce(&(counts, kl_parts, moment_parts))`.
macro_rules! tuple_parts {
    ($($name:ident),+) => {
        impl<$($name: Parts),+> Parts for ($($name,)+) {
            const LEN: usize = 0 $(+ $name::LEN)+;
            #[allow(non_snake_case)]
            fn to_values(&self) -> Vec<f64> {
                let ($($name,)+) = self;
                let mut values = Vec::with_capacity(Self::LEN);
                $(values.extend($name.to_values());)+
                values
            }
            #[allow(unused_assignments)]
            fn from_values(values: &[f64]) -> Self {
                assert_eq!(values.len(), Self::LEN, "packed parts: wrong number of values");
                let mut at = 0;
                ($({
                    let part = $name::from_values(&values[at..at + $name::LEN]);
                    at += $name::LEN;
                    part
                },)+)
            }
        }
    };
}
tuple_parts!(A, B);
tuple_parts!(A, B, C);
tuple_parts!(A, B, C, D);
tuple_parts!(A, B, C, D, E);

/// The sum of the parts of several shards or micro-batches (the simulated all-reduce).
///
/// # Panics
/// If `shards` is empty.
pub fn sum_parts<P: Parts>(shards: &[P]) -> P {
    let (first, rest) = shards
        .split_first()
        .expect("sum_parts needs at least one part");
    rest.iter().fold(first.clone(), |acc, p| acc.combine(p))
}

// ---------------------------------------------------------------------------------------------
// Global counts
// ---------------------------------------------------------------------------------------------

/// The counts of one optimizer step: valid tokens, sequences and preference pairs over all
/// its micro-batches (and, after [`Reducer::reduce`], all ranks).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepCounts {
    /// Valid (mask = true) tokens.
    pub tokens: f64,
    /// Sequences (completions).
    pub sequences: f64,
    /// Preference pairs.
    pub pairs: f64,
}

impl StepCounts {
    /// Counts from the token masks `[B, T]` of the step's micro-batches on this rank: `tokens`
    /// = valid positions, `sequences` = rows. Reads each mask's sum back to the host (one sync
    /// per mask).
    pub fn from_token_masks(masks: &[Tensor<2, Bool>]) -> Self {
        masks.iter().fold(Self::default(), |acc, m| {
            acc + Self {
                tokens: crate::reduce::global_token_count(std::slice::from_ref(m)),
                sequences: m.dims()[0] as f64,
                pairs: 0.0,
            }
        })
    }

    /// Counts of a micro-batch of `n` preference pairs (`pairs = n`, `sequences = 2n`).
    pub fn from_pairs(n: usize) -> Self {
        Self {
            tokens: 0.0,
            sequences: 2.0 * n as f64,
            pairs: n as f64,
        }
    }

    /// Counts of a micro-batch of `n` sequences with no token information.
    pub fn from_sequences(n: usize) -> Self {
        Self {
            tokens: 0.0,
            sequences: n as f64,
            pairs: 0.0,
        }
    }

    /// [`Normalizer::GlobalTokens`] with the step's token count (for token-level losses: PPO,
    /// GRPO `dapo`/`bnpo`-style aggregation, SFT/NLL terms).
    pub fn token_normalizer(&self) -> crate::Result<Normalizer> {
        let n = Normalizer::GlobalTokens(self.tokens);
        n.validate()?;
        Ok(n)
    }

    /// [`Normalizer::GlobalSequences`] with the step's sequence count (KTO/BCO examples, GRPO
    /// `grpo`-style mean of per-sequence token means, RLOO).
    pub fn sequence_normalizer(&self) -> crate::Result<Normalizer> {
        let n = Normalizer::GlobalSequences(self.sequences);
        n.validate()?;
        Ok(n)
    }

    /// [`Normalizer::GlobalSequences`] with the step's pair count (DPO family, CPO, ORPO).
    pub fn pair_normalizer(&self) -> crate::Result<Normalizer> {
        let n = Normalizer::GlobalSequences(self.pairs);
        n.validate()?;
        Ok(n)
    }
}

impl Add for StepCounts {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            tokens: self.tokens + o.tokens,
            sequences: self.sequences + o.sequences,
            pairs: self.pairs + o.pairs,
        }
    }
}

impl std::iter::Sum for StepCounts {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}

impl Parts for StepCounts {
    const LEN: usize = 3;
    fn to_values(&self) -> Vec<f64> {
        vec![self.tokens, self.sequences, self.pairs]
    }
    fn from_values(v: &[f64]) -> Self {
        Self {
            tokens: v[0],
            sequences: v[1],
            pairs: v[2],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KTO KL estimate
// ---------------------------------------------------------------------------------------------

/// Cross-rank form of KTO's KL estimate ([`kto_kl_estimate`](crate::losses::kto_kl_estimate)):
/// `sum` of `kl_logps - reference_kl_logps` and the number of examples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KlParts {
    /// Sum of the mismatched-completion log-ratios.
    pub sum: f64,
    /// Number of mismatched completions.
    pub count: f64,
}

impl KlParts {
    /// The parts of a local batch (one host read).
    ///
    /// # Shapes
    /// - `kl_logps`, `reference_kl_logps`: `[B]`
    pub fn from_logps(kl_logps: Tensor<1>, reference_kl_logps: Tensor<1>) -> crate::Result<Self> {
        check_same_shape(
            "reference_kl_logps",
            &reference_kl_logps.dims(),
            &kl_logps.dims(),
            "kl_logps",
        )?;
        let count = kl_logps.dims()[0] as f64;
        let sum = host((kl_logps - reference_kl_logps).sum())[0];
        Ok(Self { sum, count })
    }

    /// The global estimate `max(0, sum / count)` as a detached `[1]` tensor in the dtype and on
    /// the device of `like` (pass it to [`UnpairedBatch::with_kl`](crate::losses::UnpairedBatch::with_kl)).
    pub fn finish(&self, like: &Tensor<1>) -> crate::Result<Tensor<1>> {
        if self.count <= 0.0 {
            return Err(Error::Empty {
                arg: "KlParts",
                what: "no mismatched completion was counted".into(),
            });
        }
        let value = (self.sum / self.count).max(0.0);
        Ok(Tensor::zeros([1], (&like.device(), like.dtype())).add_scalar(value))
    }
}

impl Parts for KlParts {
    const LEN: usize = 2;
    fn to_values(&self) -> Vec<f64> {
        vec![self.sum, self.count]
    }
    fn from_values(v: &[f64]) -> Self {
        Self {
            sum: v[0],
            count: v[1],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// First and second moments
// ---------------------------------------------------------------------------------------------

/// Cross-rank form of a mean and variance: `sum`, `sum_sq` (sum of squares) and `count` of the
/// values.
///
/// The variance is finished as `(sum_sq - sum^2 / count) / (count - 1)` (Bessel) or `/ count`
/// (population). This is exact in exact arithmetic; in floating point it loses about
/// `mean^2 / var` ulps, which is harmless for rewards and advantages (O(1) means and spreads)
/// but not for values with a huge offset: shift them by a constant first if needed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MomentParts {
    /// Sum of the values.
    pub sum: f64,
    /// Sum of the squared values.
    pub sum_sq: f64,
    /// Number of values.
    pub count: f64,
}

impl MomentParts {
    /// The parts of all values of `x` `[N]` (one host read).
    pub fn from_values(x: Tensor<1>) -> Self {
        let count = x.dims()[0] as f64;
        let x = x.detach();
        let v = host(Tensor::cat(vec![x.clone().sum(), x.square().sum()], 0));
        Self {
            sum: v[0],
            sum_sq: v[1],
            count,
        }
    }

    /// The parts of the non-NaN values of `x` `[N]` (NaN = missing, as GRPO rewards).
    pub fn from_non_nan(x: Tensor<1>) -> Self {
        let x = x.detach();
        let valid = x.clone().is_nan().bool_not();
        let count = mask_like(&x, valid.clone()).sum();
        let x0 = zero_masked(x, valid);
        let v = host(Tensor::cat(
            vec![x0.clone().sum(), x0.square().sum(), count],
            0,
        ));
        Self {
            sum: v[0],
            sum_sq: v[1],
            count: v[2],
        }
    }

    /// The parts of the valid positions of `x` `[B, T]` (one host read).
    pub fn from_masked(x: Tensor<2>, mask: Tensor<2, Bool>) -> crate::Result<Self> {
        let mask = crate::reduce::canonical_mask(mask);
        check_same_shape("mask", &mask.dims(), &x.dims(), "x")?;
        let x = x.detach();
        let count = mask_like(&x, mask.clone()).sum();
        let x0 = zero_masked(x, mask);
        let v = host(Tensor::cat(
            vec![x0.clone().sum(), x0.square().sum(), count],
            0,
        ));
        Ok(Self {
            sum: v[0],
            sum_sq: v[1],
            count: v[2],
        })
    }

    /// `sum / count` (NaN when `count = 0`).
    pub fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// Population variance `E[x^2] - E[x]^2` (clamped at 0; NaN when `count = 0`).
    pub fn var_population(&self) -> f64 {
        ((self.sum_sq - self.sum * self.sum / self.count) / self.count).max(0.0)
    }

    /// Bessel-corrected variance (NaN when `count <= 1`, as torch's `std`).
    pub fn var_unbiased(&self) -> f64 {
        if self.count <= 1.0 {
            return f64::NAN;
        }
        ((self.sum_sq - self.sum * self.sum / self.count) / (self.count - 1.0)).max(0.0)
    }

    /// Bessel-corrected standard deviation (NaN when `count <= 1`).
    pub fn std_unbiased(&self) -> f64 {
        self.var_unbiased().sqrt()
    }

    /// Folds these (global) values into BCO's running moments: the same update as
    /// [`RunningMoments::update`] on the concatenation of every rank's rewards. Then run
    /// [`BcoLoss::forward`](crate::losses::BcoLoss::forward) with `train = false`.
    pub fn update_running(&self, running: &mut RunningMoments) {
        if self.count > 0.0 {
            running.update_with(self.mean(), self.var_population(), self.count);
        }
    }
}

impl Parts for MomentParts {
    const LEN: usize = 3;
    fn to_values(&self) -> Vec<f64> {
        vec![self.sum, self.sum_sq, self.count]
    }
    fn from_values(v: &[f64]) -> Self {
        Self {
            sum: v[0],
            sum_sq: v[1],
            count: v[2],
        }
    }
}

/// [`whiten`](crate::rl::whiten) with a given mean and (unbiased) variance, e.g. the global
/// ones from [`MomentParts`]: `(x - mean) / sqrt(var + 1e-8)` (`+ mean` with `KeepMean`).
///
/// Equals `whiten(x, Some(mask), mode)` on the concatenated batch up to torchtune's `1e-8` in
/// the mean and Bessel denominators (relative difference about `1e-8 / count`).
///
/// # Shapes
/// - x: `[B, T]` -> `[B, T]`
///
/// # Panics
/// On the errors of [`try_whiten_with`].
pub fn whiten_with(x: Tensor<2>, mean: f64, var: f64, mode: Whitening) -> Tensor<2> {
    crate::error::unwrap_or_panic(try_whiten_with(x, mean, var, mode))
}

/// Non-panicking form of [`whiten_with`]: `mean` not finite, or `var` not finite and `>= 0`
/// ([`Error::Config`] naming it; a negative variance would give NaN).
pub fn try_whiten_with(
    x: Tensor<2>,
    mean: f64,
    var: f64,
    mode: Whitening,
) -> crate::Result<Tensor<2>> {
    if !mean.is_finite() {
        return Err(Error::config("mean", "must be finite", mean));
    }
    if !(var.is_finite() && var >= 0.0) {
        return Err(Error::config("var", "must be finite and >= 0", var));
    }
    Ok(whiten_with_unchecked(x, mean, var, mode))
}

fn whiten_with_unchecked(x: Tensor<2>, mean: f64, var: f64, mode: Whitening) -> Tensor<2> {
    if mode == Whitening::None {
        return x;
    }
    let scale = 1.0 / (var + 1e-8).sqrt();
    let whitened = x.sub_scalar(mean).mul_scalar(scale);
    match mode {
        Whitening::KeepMean => whitened.add_scalar(mean),
        _ => whitened,
    }
}

// ---------------------------------------------------------------------------------------------
// Reducers
// ---------------------------------------------------------------------------------------------

/// Sums statistics over data-parallel ranks. Each rank calls [`reduce`](Self::reduce) with its
/// local parts (already summed over its micro-batches) and gets the global totals.
pub trait Reducer {
    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// Element-wise sum of `local` over all ranks (every rank receives the same totals).
    fn sum(&self, local: &[f64]) -> crate::Result<Vec<f64>>;

    /// The global parts from this rank's local parts.
    fn reduce<P: Parts>(&self, local: &P) -> crate::Result<P>
    where
        Self: Sized,
    {
        Ok(P::from_values(&self.sum(&local.to_values())?))
    }
}

/// A single rank: the totals are the local values (gradient accumulation only). To simulate
/// several ranks in one process, sum the shards' parts with [`sum_parts`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalReducer;

impl Reducer for LocalReducer {
    fn world_size(&self) -> usize {
        1
    }
    fn sum(&self, local: &[f64]) -> crate::Result<Vec<f64>> {
        Ok(local.to_vec())
    }
}

/// burn's collective all-reduce (`ReduceOperation::Sum`) across `devices`, called by the rank
/// that owns `device`.
///
/// Requirements (burn 0.22): a
/// [`DistributedContext`](burn::tensor::distributed::DistributedContext) started over the same
/// devices lives for the duration; every rank calls [`Reducer::sum`] with values of the same
/// length, concurrently (one thread per device); the backend implements the collective ops:
/// in burn 0.22 that is CUDA only (NCCL). For every other device this reducer returns
/// [`Error::Device`] instead of panicking inside burn.
///
/// The values travel as one `[k]` tensor, f64 where the device supports it (else f32: counts
/// are exact up to 2^24).
#[derive(Debug, Clone)]
pub struct CollectiveReducer {
    device: Device,
    devices: Vec<Device>,
}

impl CollectiveReducer {
    /// The reducer of the rank on `device`, among `devices` (all ranks, same order everywhere).
    pub fn new(device: Device, devices: Vec<Device>) -> crate::Result<Self> {
        if devices.is_empty() || !devices.contains(&device) {
            return Err(Error::Device {
                arg: "device",
                reason: format!("must be one of `devices` ({} given)", devices.len()),
            });
        }
        Ok(Self { device, devices })
    }

    /// Whether burn 0.22 runs collective ops on this device (CUDA only: cubecl's CUDA server
    /// is the only one with a device transport). Read from the device's debug name: burn does
    /// not expose the backend kind.
    pub fn supports(device: &Device) -> bool {
        format!("{device:?}").contains("Cuda")
    }
}

impl Reducer for CollectiveReducer {
    fn world_size(&self) -> usize {
        self.devices.len()
    }

    fn sum(&self, local: &[f64]) -> crate::Result<Vec<f64>> {
        if !Self::supports(&self.device) {
            return Err(Error::Device {
                arg: "device",
                reason: format!(
                    "burn 0.22 runs a collective all_reduce only on CUDA devices (NCCL); {:?} has \
                     none: use LocalReducer and sum_parts to simulate ranks",
                    self.device
                ),
            });
        }
        let dtype = if self.device.supports_dtype(FloatDType::F64) {
            FloatDType::F64
        } else {
            FloatDType::F32
        };
        let device = self.device.clone().without_autodiff();
        let x = Tensor::<1>::from_data(
            TensorData::new(local.to_vec(), [local.len()]),
            (&device, burn::tensor::DType::from(dtype)),
        );
        let reduced = all_reduce(x, ReduceOperation::Sum, self.devices.clone()).resolve();
        Ok(host(reduced))
    }
}
