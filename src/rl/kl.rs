//! KL estimators, KL-penalized per-token rewards and KL coefficient controllers.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, check_positive, check_same_shape};
use crate::reduce::{mask_like, zero_masked};

/// Per-token estimator of `KL(pi || pi_ref)` from sampled-token log-probs (Schulman's k1/k2/k3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `k1 = logp - ref` (unbiased, can be negative). TRL PPO / torchtune / OpenRLHF reward default.
    K1,
    /// `k2 = (logp - ref)^2 / 2` (TRL legacy `mse`).
    K2,
    /// `k3 = exp(ref - logp) - (ref - logp) - 1` (unbiased, >= 0; GRPO's KL term).
    K3,
    /// `|logp - ref|` (TRL legacy `abs`).
    Abs,
}

crate::error::panicking! {
    /// Per-token KL estimate of the policy against the reference.
    ///
    #[cfg_attr(
        doc,
        doc = r#"$$\ell = \log\pi_{\text{ref}} - \log\pi:\quad k_1 = -\ell,\; k_2 = \tfrac12\ell^2,\; k_3 = e^{\ell} - \ell - 1,\; \text{abs} = |\ell|$$"#
    )]
    #[cfg_attr(
        not(doc),
        doc = "`l = ref - logp`: k1 = -l, k2 = l^2/2, k3 = exp(l) - l - 1, abs = |l|"
    )]
    ///
    /// Differentiable in both arguments.
    ///
    /// # Shapes
    /// - logps, ref_logps: any shape (the same) -> same shape
    pub fn kl_estimate[const D: usize](
        logps: Tensor<D>,
        ref_logps: Tensor<D>,
        estimator: KlEstimator,
    ) -> Tensor<D> = try_kl_estimate;
}

/// Non-panicking form of [`kl_estimate`]: shapes or dtypes that differ ([`Error::Shape`] /
/// [`Error::DType`] naming `ref_logps`); in checked mode non-finite inputs
/// ([`Error::NonFinite`]). The `k3` log-ratio is bounded like the importance ratio
/// ([`LOG_RATIO_LIMIT`](super::LOG_RATIO_LIMIT)), so finite inputs give a finite estimate and
/// gradient.
pub fn try_kl_estimate<const D: usize>(
    logps: Tensor<D>,
    ref_logps: Tensor<D>,
    estimator: KlEstimator,
) -> crate::Result<Tensor<D>> {
    check_same_shape("ref_logps", &ref_logps.dims(), &logps.dims(), "logps")?;
    crate::error::check_dtype_like("ref_logps", &ref_logps, "logps", &logps)?;
    crate::error::check_finite(&logps, "logps")?;
    crate::error::check_finite(&ref_logps, "ref_logps")?;
    Ok(kl_estimate_unchecked(logps, ref_logps, estimator))
}

pub(crate) fn kl_estimate_unchecked<const D: usize>(
    logps: Tensor<D>,
    ref_logps: Tensor<D>,
    estimator: KlEstimator,
) -> Tensor<D> {
    let log_ratio = ref_logps - logps; // l = log(ref / pi)
    match estimator {
        KlEstimator::K1 => log_ratio.neg(),
        KlEstimator::K2 => log_ratio.square().mul_scalar(0.5),
        KlEstimator::K3 => {
            // bounded like the importance ratio: exp(l) overflows f32 above ~88.7
            let l = super::ratio::bounded_log_ratio(log_ratio);
            l.clone().exp() - l - 1.0
        }
        KlEstimator::Abs => log_ratio.abs(),
    }
}

/// Configuration of [`KlPenalty`]: per-token KL-penalized rewards.
#[derive(Config, Debug)]
pub struct KlPenaltyConfig {
    /// KL coefficient `beta` (>= 0). Default 0.05 (TRL PPO `kl_coef`; torchtune configs use 0.01).
    #[config(default = 0.05)]
    pub kl_coef: f64,
    /// Estimator. Default [`KlEstimator::K1`] (TRL, torchtune).
    #[config(default = "KlEstimator::K1")]
    pub estimator: KlEstimator,
}

impl KlPenaltyConfig {
    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<KlPenalty> {
        if !(self.kl_coef.is_finite() && self.kl_coef >= 0.0) {
            return Err(Error::config(
                "kl_coef",
                "must be finite and >= 0",
                self.kl_coef,
            ));
        }
        Ok(KlPenalty {
            kl_coef: self.kl_coef,
            estimator: self.estimator,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> KlPenalty = try_init;
    }
}

/// Per-token rewards `r_t = -beta * kl_t`, plus the sequence score at one position per row.
#[derive(Module, Debug)]
pub struct KlPenalty {
    kl_coef: f64,
    #[module(skip)]
    estimator: KlEstimator,
}

/// Result of [`KlPenalty::forward`].
#[derive(Debug, Clone)]
pub struct KlPenaltyOutput {
    /// `kl_reward` plus the score at its position `[B, T]`.
    pub rewards: Tensor<2>,
    /// The per-token KL estimate `[B, T]` (0 outside the mask).
    pub kl: Tensor<2>,
    /// `-beta * kl` `[B, T]` (TRL's `non_score_reward`).
    pub kl_reward: Tensor<2>,
}

impl KlPenalty {
    /// The coefficient in use.
    pub fn kl_coef(&self) -> f64 {
        self.kl_coef
    }

    /// A copy with another coefficient (e.g. from a [`KlController`]).
    pub fn with_kl_coef(&self, kl_coef: f64) -> Self {
        Self {
            kl_coef,
            estimator: self.estimator,
        }
    }

    /// KL-penalized rewards.
    ///
    /// The score of row `b` is added at `score_index[b]` if given (torchtune's
    /// `valid_score_idxs`), else at the **last valid token** of the row when a mask is given,
    /// else at the last column (torchtune's default). With a mask, `kl` and `kl_reward` are 0
    /// outside it. A row with no valid token gets its score at column 0.
    ///
    /// Errors: shape mismatches ([`Error::Shape`]), `B * T = 0` ([`Error::Empty`]), a
    /// `score_index` outside `[0, T)` (one host read, see [`host_reads`](crate::host_reads):
    /// always on the CPU backends, elsewhere in checked mode; where it is not
    /// read, such a row's `rewards` are NaN) or a `kl_coef` (from
    /// [`with_kl_coef`](Self::with_kl_coef)) not finite and >= 0 ([`Error::Config`]); in
    /// checked mode non-finite inputs ([`Error::NonFinite`]).
    ///
    /// # Shapes
    /// - scores: `[B]`; logps, ref_logps, mask: `[B, T]`; score_index: `[B]` -> `[B, T]`
    pub fn try_forward(
        &self,
        scores: Tensor<1>,
        logps: Tensor<2>,
        ref_logps: Tensor<2>,
        mask: Option<Tensor<2, Bool>>,
        score_index: Option<Tensor<1, Int>>,
    ) -> crate::Result<KlPenaltyOutput> {
        let mask = mask.map(crate::reduce::canonical_mask);
        let [b, t] = logps.dims();
        check_same_shape("ref_logps", &ref_logps.dims(), &[b, t], "logps")?;
        check_same_shape("scores", &scores.dims(), &[b], "logps rows")?;
        if let Some(m) = &mask {
            check_same_shape("mask", &m.dims(), &[b, t], "logps")?;
        }
        crate::error::check_non_empty(
            "logps",
            b * t,
            &format!("shape {:?} has a zero dimension", [b, t]),
        )?;
        if !(self.kl_coef.is_finite() && self.kl_coef >= 0.0) {
            return Err(Error::config(
                "kl_coef",
                "must be finite and >= 0",
                self.kl_coef,
            ));
        }
        if let Some(idx) = &score_index {
            check_same_shape("score_index", &idx.dims(), &[b], "logps rows")?;
        }
        // The range check reads the index back: always on the CPU backends, elsewhere in
        // checked mode (see `host_reads`); unchecked, a row whose index is
        // outside [0, T) gets NaN rewards (below).
        if let Some(idx) = score_index
            .as_ref()
            .filter(|idx| crate::error::index_checks(&idx.device()))
        {
            let values = crate::host_reads::ints(idx.clone(), "score_index")?;
            if let Some(&bad) = values.iter().find(|&&i| i < 0 || i >= t as i64) {
                return Err(Error::config(
                    "score_index",
                    format!("must be in [0, T) = [0, {t})"),
                    bad,
                ));
            }
        }
        crate::error::check_dtype_like("ref_logps", &ref_logps, "logps", &logps)?;
        crate::error::check_dtype_like("scores", &scores, "logps", &logps)?;
        crate::error::check_finite(&scores, "scores")?;
        crate::error::check_finite(&logps, "logps")?;
        crate::error::check_finite(&ref_logps, "ref_logps")?;
        let device = logps.device();
        let mut kl = kl_estimate_unchecked(logps, ref_logps, self.estimator);
        if let Some(m) = &mask {
            kl = zero_masked(kl, m.clone());
        }
        let kl_reward = kl.clone().mul_scalar(-self.kl_coef);
        let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
            .reshape([1, t])
            .expand([b, t]);
        let index: Tensor<2, Int> = match (score_index, &mask) {
            (Some(idx), _) => {
                check_same_shape("score_index", &idx.dims(), &[b], "logps rows")?;
                idx.reshape([b, 1])
            }
            (None, Some(m)) => (positions.clone() * m.clone().int()).max_dim(1),
            (None, None) => Tensor::<2, Int>::full([b, 1], t as i64 - 1, &device),
        };
        let outside = index
            .clone()
            .lower_elem(0)
            .bool_or(index.clone().greater_equal_elem(t as i64));
        let at_score = positions.equal(index.expand([b, t]));
        let placed = mask_like(&kl_reward, at_score) * scores.reshape([b, 1]);
        let rewards = (kl_reward.clone() + placed).mask_fill(outside.expand([b, t]), f64::NAN);
        Ok(KlPenaltyOutput {
            rewards,
            kl,
            kl_reward,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(
            &self,
            scores: Tensor<1>,
            logps: Tensor<2>,
            ref_logps: Tensor<2>,
            mask: Option<Tensor<2, Bool>>,
            score_index: Option<Tensor<1, Int>>,
        ) -> KlPenaltyOutput = try_forward;
    }
}

/// torchtune's `get_reward_penalty_mask`: which sequences get the penalty score.
///
/// `padding_masks` is **true at padding** (torchtune's convention: EOS and after). A sequence is
/// penalized when `penalise_no_eos` and it has no padding at all (it never stopped), or when
/// `seq_lens < min_response_length`.
///
/// # Shapes
/// - padding_masks: `[B, L]`, seq_lens: `[B]` -> `[B]`
pub fn reward_penalty_mask(
    padding_masks: Tensor<2, Bool>,
    seq_lens: Tensor<1, Int>,
    penalise_no_eos: bool,
    min_response_length: Option<usize>,
) -> Tensor<1, Bool> {
    let padding_masks = crate::reduce::canonical_mask(padding_masks);
    let [b, _] = padding_masks.dims();
    let mut penalty = Tensor::<1, Int>::zeros([b], &seq_lens.device()).equal_elem(1);
    if penalise_no_eos {
        penalty = padding_masks.any_dim(1).reshape([b]).bool_not();
    }
    if let Some(min) = min_response_length {
        penalty = penalty.bool_or(seq_lens.lower_elem(min as i64));
    }
    penalty
}

/// A KL coefficient controller (fixed or adaptive). State is serializable with serde.
pub trait KlController {
    /// The current coefficient.
    fn value(&self) -> f64;
    /// Updates after a rollout with mean sequence KL `current_kl` over `n_steps` samples.
    fn update(&mut self, current_kl: f64, n_steps: usize);
}

/// A constant KL coefficient (TRL PPO, torchtune).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FixedKlController {
    /// The coefficient.
    pub value: f64,
}

impl KlController for FixedKlController {
    fn value(&self) -> f64 {
        self.value
    }
    fn update(&mut self, _current_kl: f64, _n_steps: usize) {}
}

/// Adaptive KL controller (Ziegler et al. 2019; TRL legacy `AdaptiveKLController`, OpenRLHF):
///
#[cfg_attr(
    doc,
    doc = r#"$$\beta \leftarrow \beta\left(1 + \operatorname{clip}\!\left(\tfrac{\mathrm{KL}}{\mathrm{target}} - 1, -0.2, 0.2\right)\tfrac{n}{\mathrm{horizon}}\right)$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)`"
)]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveKlController {
    /// The current coefficient (TRL legacy `init_kl_coef` 0.2).
    pub value: f64,
    /// Target KL (TRL legacy 6.0).
    pub target: f64,
    /// Horizon (TRL legacy 10000).
    pub horizon: f64,
}

impl AdaptiveKlController {
    /// A controller; `target` and `horizon` must be finite and > 0.
    pub fn try_new(init_value: f64, target: f64, horizon: f64) -> crate::Result<Self> {
        check_positive("target", target)?;
        check_positive("horizon", horizon)?;
        if !(init_value.is_finite() && init_value >= 0.0) {
            return Err(Error::config(
                "init_value",
                "must be finite and >= 0",
                init_value,
            ));
        }
        Ok(Self {
            value: init_value,
            target,
            horizon,
        })
    }
}

impl Default for AdaptiveKlController {
    fn default() -> Self {
        Self {
            value: 0.2,
            target: 6.0,
            horizon: 10000.0,
        }
    }
}

impl KlController for AdaptiveKlController {
    fn value(&self) -> f64 {
        self.value
    }
    fn update(&mut self, current_kl: f64, n_steps: usize) {
        let proportional_error = (current_kl / self.target - 1.0).clamp(-0.2, 0.2);
        self.value *= 1.0 + proportional_error * n_steps as f64 / self.horizon;
    }
}
