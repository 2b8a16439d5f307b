//! Unpaired (binary-feedback) losses: KTO and APO-zero-unpaired (TRL's `KTOTrainer`), and the
//! batch they read.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use super::metrics::{LossOutput, Metrics};
use super::stable::sigmoid;
use crate::error::{Error, check_positive, check_same_shape};
use crate::logps::GatheredLogps;
use crate::reduce::{MeanDenominator, Normalizer, mask_like, mean_from_sum};

/// A batch of `B` completions, each labelled desirable or undesirable.
///
/// # Shapes
/// - `logps`, `ref_logps`: `[B]` (summed over completion tokens); `desirable`: `[B]`
/// - `kl`: `[1]`
#[derive(Debug, Clone)]
pub struct UnpairedBatch {
    /// Policy log-probs of the completions `[B]`.
    pub logps: Tensor<1>,
    /// Reference log-probs of the completions `[B]` (constants).
    pub ref_logps: Tensor<1>,
    /// `true` = desirable (TRL `label = 1`), `false` = undesirable.
    pub desirable: Tensor<1, Bool>,
    /// KTO's KL estimate `[1]` (see [`kto_kl_estimate`]); `None` = not computed.
    pub kl: Option<Tensor<1>>,
}

impl UnpairedBatch {
    /// The per-class metrics KTO and BCO share (TRL's keys): `rewards/chosen`,
    /// `rewards/rejected` (class means of `rewards`), `rewards/margins`, `logps/chosen`,
    /// `logps/rejected`. A class absent from the batch gives 0 (TRL omits the key or logs
    /// NaN; knowing which needs a host sync).
    pub(crate) fn class_metrics(&self, rewards: Tensor<1>, metrics: &mut Metrics) {
        let is_desirable = mask_like(&rewards, self.desirable.clone());
        let is_undesirable = is_desirable.clone().neg().add_scalar(1.0);
        let class_mean = |x: Tensor<1>, class: &Tensor<1>| {
            mean_from_sum(
                (x * class.clone()).sum(),
                class.clone().sum(),
                MeanDenominator::AtLeastOne,
            )
        };
        let logps = self.logps.clone().detach();
        let chosen = class_mean(rewards.clone(), &is_desirable);
        let rejected = class_mean(rewards, &is_undesirable);
        metrics.insert("rewards/chosen", chosen.clone());
        metrics.insert("rewards/rejected", rejected.clone());
        metrics.insert("rewards/margins", chosen - rejected);
        metrics.insert("logps/chosen", class_mean(logps.clone(), &is_desirable));
        metrics.insert("logps/rejected", class_mean(logps, &is_undesirable));
    }

    /// A batch from sequence log-probs.
    pub fn new(logps: Tensor<1>, ref_logps: Tensor<1>, desirable: Tensor<1, Bool>) -> Self {
        let desirable = crate::reduce::canonical_mask(desirable);
        Self {
            logps,
            ref_logps: ref_logps.detach(),
            desirable,
            kl: None,
        }
    }

    crate::error::panicking! {
        /// A batch from the token-level path (log-probs summed over the mask).
        pub fn from_tokens(
            tokens: &GatheredLogps,
            ref_logps: Tensor<1>,
            desirable: Tensor<1, Bool>,
        ) -> Self = Self::try_from_tokens;
    }

    /// Non-panicking form of [`from_tokens`](Self::from_tokens): [`Error::Shape`] naming
    /// `tokens.mask` when the mask's shape differs from the log-probs'.
    pub fn try_from_tokens(
        tokens: &GatheredLogps,
        ref_logps: Tensor<1>,
        desirable: Tensor<1, Bool>,
    ) -> crate::Result<Self> {
        let desirable = crate::reduce::canonical_mask(desirable);
        check_same_shape(
            "tokens.mask",
            &tokens.mask.dims(),
            &tokens.logps.dims(),
            "tokens.logps",
        )?;
        let logps = tokens
            .try_reduce(crate::logps::SequenceReduction::Sum)
            .map_err(|e| super::preference::rename_arg(e, "tokens.logps"))?;
        crate::error::check_dtype_like("ref_logps", &ref_logps, "tokens.logps", &logps)?;
        Ok(Self::new(logps, ref_logps, desirable))
    }

    /// Sets the KL estimate (`[1]`, detached here).
    pub fn with_kl(mut self, kl: Tensor<1>) -> Self {
        self.kl = Some(kl.detach());
        self
    }

    /// Checks the shapes.
    pub fn validate(&self) -> crate::Result<()> {
        let b = self.logps.dims();
        if b[0] == 0 {
            return Err(Error::Empty {
                arg: "logps",
                what: "the batch has no completion".into(),
            });
        }
        check_same_shape("ref_logps", &self.ref_logps.dims(), &b, "logps")?;
        check_same_shape("desirable", &self.desirable.dims(), &b, "logps")?;
        crate::error::check_dtype_like("ref_logps", &self.ref_logps, "logps", &self.logps)?;
        if let Some(kl) = &self.kl {
            check_same_shape("kl", &kl.dims(), &[1], "a scalar")?;
            crate::error::check_dtype_like("kl", kl, "logps", &self.logps)?;
            crate::error::check_finite(kl, "kl")?;
        }
        crate::error::check_finite(&self.logps, "logps")?;
        crate::error::check_finite(&self.ref_logps, "ref_logps")?;
        Ok(())
    }

    /// Per-completion implicit rewards `β (logp - ref)` `[B]`, detached.
    pub fn rewards(&self, beta: f64) -> Tensor<1> {
        (self.logps.clone() - self.ref_logps.clone())
            .mul_scalar(beta)
            .detach()
    }
}

/// KTO's mismatched (prompt, completion) pairs for the KL estimate: prompt `i` with completion
/// `i + 1` of the same batch (the last prompt with the first completion), as TRL's KTO builds
/// its KL batch. Score the policy and the reference on these rows, sum over completion tokens
/// and pass both to [`kto_kl_estimate`].
///
/// Errors: fewer than two examples ([`Error::Empty`]: a batch of one has no mismatched pair),
/// `prompts` and `completions` of different lengths ([`Error::Shape`]).
pub fn kto_mismatched_pairs<P: Clone, C: Clone>(
    prompts: &[P],
    completions: &[C],
) -> crate::Result<Vec<(P, C)>> {
    let n = prompts.len();
    if completions.len() != n {
        return Err(Error::shape(
            "completions",
            format!("[{n}] (one per prompt)"),
            &[completions.len()],
        ));
    }
    if n < 2 {
        return Err(Error::Empty {
            arg: "prompts",
            what: format!("KTO's KL estimate needs at least 2 examples to mismatch, got {n}"),
        });
    }
    Ok((0..n)
        .map(|i| (prompts[i].clone(), completions[(i + 1) % n].clone()))
        .collect())
}

crate::error::panicking! {
    /// KTO's KL estimate from mismatched completions (TRL: completion `i+1` scored under prompt
    /// `i`): `max(0, mean(kl_logps - ref_kl_logps))`, **detached**.
    ///
    /// **Batch-coupled**: every example's loss depends on the batch mean through this estimate.
    /// With data parallelism TRL averages the (unclamped) means over ranks before clamping; do the
    /// same (all-reduce the mean) before passing it on. Gradient accumulation: the estimate is per
    /// micro-batch, as in TRL.
    ///
    /// # Shapes
    /// - `kl_logps`, `ref_kl_logps`: `[B]` -> `[1]`
    pub fn kto_kl_estimate(
        kl_logps: Tensor<1>,
        ref_kl_logps: Tensor<1>,
    ) -> Tensor<1> = try_kto_kl_estimate;
}

/// Non-panicking form of [`kto_kl_estimate`]: `B = 0` ([`Error::Empty`]), shapes or dtypes
/// that differ ([`Error::Shape`] / [`Error::DType`] naming `ref_kl_logps`); in checked
/// mode non-finite inputs ([`Error::NonFinite`]).
pub fn try_kto_kl_estimate(
    kl_logps: Tensor<1>,
    ref_kl_logps: Tensor<1>,
) -> crate::Result<Tensor<1>> {
    crate::error::check_non_empty(
        "kl_logps",
        kl_logps.dims()[0],
        "the batch has no completion",
    )?;
    check_same_shape(
        "ref_kl_logps",
        &ref_kl_logps.dims(),
        &kl_logps.dims(),
        "kl_logps",
    )?;
    crate::error::check_dtype_like("ref_kl_logps", &ref_kl_logps, "kl_logps", &kl_logps)?;
    crate::error::check_finite(&kl_logps, "kl_logps")?;
    crate::error::check_finite(&ref_kl_logps, "ref_kl_logps")?;
    Ok((kl_logps - ref_kl_logps).mean().clamp_min(0.0).detach())
}

/// Unpaired loss types (TRL's `KTOConfig.loss_type` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KtoLossType {
    /// KTO: desirable `1 - σ(β(Δ - KL))`, undesirable `1 - σ(β(KL - Δ))`. Needs the KL estimate.
    Kto,
    /// APO-zero (unpaired): desirable `1 - σ(βΔ)`, undesirable `σ(βΔ)`. No KL.
    ApoZeroUnpaired,
}

/// Configuration of [`KtoLoss`] (TRL's `KTOConfig` names and defaults).
#[derive(Config, Debug)]
pub struct KtoLossConfig {
    /// Loss type. Default: `kto`.
    #[config(default = "KtoLossType::Kto")]
    pub loss_type: KtoLossType,
    /// `β`, finite and > 0. Default: 0.1.
    #[config(default = 0.1)]
    pub beta: f64,
    /// `λ_D`, weight of the desirable losses (finite, >= 0). Default: 1.0.
    #[config(default = 1.0)]
    pub desirable_weight: f64,
    /// `λ_U`, weight of the undesirable losses (finite, >= 0). Default: 1.0. TRL's docs advise
    /// `λ_D n_D / (λ_U n_U)` in `[1, 4/3]`.
    #[config(default = 1.0)]
    pub undesirable_weight: f64,
    /// Reduction of the per-example losses. Default: `SequenceMean` (TRL: one mean over all
    /// examples of both classes).
    #[config(default = "Normalizer::SequenceMean")]
    pub normalizer: Normalizer,
}

impl KtoLossConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> crate::Result<()> {
        check_positive("beta", self.beta)?;
        for (field, w) in [
            ("desirable_weight", self.desirable_weight),
            ("undesirable_weight", self.undesirable_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(Error::config(field, "must be finite and >= 0", w));
            }
        }
        self.normalizer.validate_for_sequences("the KTO loss")
    }

    /// Validates and builds the loss.
    pub fn try_init(&self) -> crate::Result<KtoLoss> {
        self.validate()?;
        Ok(KtoLoss {
            loss_type: self.loss_type,
            beta: self.beta,
            desirable_weight: self.desirable_weight,
            undesirable_weight: self.undesirable_weight,
            normalizer: self.normalizer,
        })
    }

    crate::error::panicking! {
        /// Builds the loss.
        pub fn init(&self) -> KtoLoss = try_init;
    }
}

/// KTO / APO-zero-unpaired, built by [`KtoLossConfig::init`].
///
#[cfg_attr(
    doc,
    doc = r#"$$\ell_i = \begin{cases} \lambda_D\,\big(1 - \sigma(\beta(\Delta_i - \widehat{KL}))\big) & \text{desirable} \\ \lambda_U\,\big(1 - \sigma(\beta(\widehat{KL} - \Delta_i))\big) & \text{undesirable} \end{cases}\qquad L = \operatorname{normalize}_B(\ell)$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`l_i = w_D (1 - sigmoid(beta (D_i - KL)))` (desirable), `w_U (1 - sigmoid(beta (KL - D_i)))` (undesirable)"
)]
///
/// with `Δ = logp - ref` and `KL` the detached estimate of [`kto_kl_estimate`]. The default
/// `SequenceMean` is TRL's `nanmean(cat(λ_D ℓ_D, λ_U ℓ_U))`.
///
/// Metrics (no host sync): `kl`, `rewards/chosen` and `logps/chosen` (means over the desirable
/// examples), `rewards/rejected`, `logps/rejected`, `rewards/margins`. TRL omits the keys of a
/// class absent from the batch; knowing that would need a sync, so here they are 0 (finite
/// inputs never give a NaN metric, e.g. with a batch of one).
#[derive(Module, Debug)]
pub struct KtoLoss {
    #[module(skip)]
    loss_type: KtoLossType,
    beta: f64,
    desirable_weight: f64,
    undesirable_weight: f64,
    #[module(skip)]
    normalizer: Normalizer,
}

impl KtoLoss {
    /// A copy reduced with `normalizer` (examples), e.g. the step's global sequence count from
    /// [`StepCounts`](crate::distributed::StepCounts) under data parallelism.
    pub fn with_normalizer(&self, normalizer: Normalizer) -> Self {
        Self {
            normalizer,
            ..self.clone()
        }
    }

    crate::error::panicking! {
        /// The loss, per-example (weighted) losses and metrics.
        pub fn forward(&self, batch: &UnpairedBatch) -> LossOutput = try_forward;
    }

    /// Non-panicking form of [`forward`](Self::forward); `kto` needs `batch.kl`.
    pub fn try_forward(&self, batch: &UnpairedBatch) -> crate::Result<LossOutput> {
        batch.validate()?;
        let beta = self.beta;
        let delta = batch.logps.clone() - batch.ref_logps.clone();
        let kl = match (self.loss_type, &batch.kl) {
            (_, Some(kl)) => kl.clone(),
            (KtoLossType::Kto, None) => {
                return Err(Error::MissingInput {
                    arg: "kl",
                    needed_by: "the kto loss type needs the KL estimate: UnpairedBatch::with_kl(kto_kl_estimate(..))".into(),
                });
            }
            (KtoLossType::ApoZeroUnpaired, None) => {
                Tensor::zeros([1], (&delta.device(), delta.dtype()))
            }
        };
        let (desirable_loss, undesirable_loss) = match self.loss_type {
            // 1 - σ(x) is written σ(-x): exact in the tails.
            KtoLossType::Kto => (
                sigmoid((delta.clone() - kl.clone()).mul_scalar(-beta)),
                sigmoid((delta.clone() - kl.clone()).mul_scalar(beta)),
            ),
            KtoLossType::ApoZeroUnpaired => (
                sigmoid(delta.clone().mul_scalar(-beta)),
                sigmoid(delta.clone().mul_scalar(beta)),
            ),
        };
        let per_example = undesirable_loss
            .mul_scalar(self.undesirable_weight)
            .mask_where(
                batch.desirable.clone(),
                desirable_loss.mul_scalar(self.desirable_weight),
            );
        let loss = self.normalizer.try_reduce_sequences(per_example.clone())?;

        let mut metrics = Metrics::new();
        metrics.insert("kl", kl);
        batch.class_metrics(delta.mul_scalar(beta).detach(), &mut metrics);
        Ok(LossOutput {
            loss,
            per_example,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{t, v};
    use burn::tensor::{Device, TensorData};

    #[test]
    fn kto_value_and_gradient_match_closed_form() {
        // desirable: ℓ = 1 - σ(β(Δ - KL)), dℓ/dlogp = -β σ(x) σ(-x); undesirable: x = β(KL - Δ),
        // dℓ/dlogp = +β σ(x) σ(-x). Mean over B = 2.
        let device = Device::flex().autodiff();
        let (lp, rf, kl, beta) = ([-3.0, -5.0], [-4.0, -4.5], 0.3, 0.1);
        let logps = t(&lp, &device).require_grad();
        let desirable =
            Tensor::<1, Bool>::from_data(TensorData::new(vec![true, false], [2]), &device);
        let batch = UnpairedBatch::new(logps.clone(), t(&rf, &device), desirable)
            .with_kl(t(&[kl], &device));
        let out = KtoLossConfig::new().init().forward(&batch);
        let grads = out.loss.backward();
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let x0 = beta * ((lp[0] - rf[0]) - kl);
        let x1 = beta * (kl - (lp[1] - rf[1]));
        let want = ((1.0 - s(x0)) + (1.0 - s(x1))) / 2.0;
        assert!((v(out.loss)[0] - want).abs() < 1e-15);
        let g = v(logps.grad(&grads).unwrap());
        assert!((g[0] + beta * s(x0) * s(-x0) / 2.0).abs() < 1e-15);
        assert!((g[1] - beta * s(x1) * s(-x1) / 2.0).abs() < 1e-15);
    }
}
