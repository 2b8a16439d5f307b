//! Statistics as sums that add over micro-batches and ranks: the step's counts
//! ([`StepCounts`]), KTO's KL estimate ([`KlParts`]), first and second moments
//! ([`MomentParts`]), and tuples of them packed into one reduction ([`Parts`]).

use std::ops::Add;

use burn::tensor::{Bool, Tensor};

use crate::error::{Error, check_same_shape};
use crate::losses::RunningMoments;
use crate::reduce::{Normalizer, mask_like, zero_masked};

/// Reads a small float tensor back to the host as `f64` (one sync).
pub(super) fn host(x: Tensor<1>) -> Vec<f64> {
    crate::host_reads::floats(x.detach(), "parts").unwrap_or_else(|e| panic!("burn-rlhf: {e}"))
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
/// its micro-batches (and, after [`Reducer::reduce`](super::Reducer::reduce), all ranks).
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
/// `sum` of `kl_logps - ref_kl_logps` and the number of examples.
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
    /// - `kl_logps`, `ref_kl_logps`: `[B]`
    pub fn from_logps(kl_logps: Tensor<1>, ref_kl_logps: Tensor<1>) -> crate::Result<Self> {
        check_same_shape(
            "ref_kl_logps",
            &ref_kl_logps.dims(),
            &kl_logps.dims(),
            "kl_logps",
        )?;
        let count = kl_logps.dims()[0] as f64;
        let sum = host((kl_logps - ref_kl_logps).sum())[0];
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
