//! Pairwise reward-model loss (Bradley-Terry), as TRL's `RewardTrainer.compute_loss`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::metrics::{LossOutput, Metrics};
use super::stable::log_sigmoid;
use crate::error::{Error, unwrap_or_panic};
use crate::reduce::{Normalizer, mask_like};

/// How the per-pair term `-log sigmoid(x)`, `x = r_c - r_r - m`, is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BradleyTerryForm {
    /// `-log sigmoid(x)` in a stable softplus form (TRL `RewardTrainer`, OpenRLHF
    /// `PairWiseLoss`): finite value and exact gradient for `|x|` up to the dtype's range.
    LogSigmoid,
    /// `log(1 + exp(-x))` evaluated **as written**, like OpenRLHF's `LogExpLoss`
    /// (`torch.log(1 + torch.exp(reject - chosen))`). Mathematically the same loss; kept to
    /// reproduce OpenRLHF runs rounding for rounding. It is not stable: `exp(-x)` overflows to
    /// infinity once `r_r - r_c + m` exceeds about 88 in f32 (709 in f64), and terms below about
    /// `exp(-x) < 1e-16` (f64) round to exactly 0. Prefer [`LogSigmoid`](Self::LogSigmoid).
    LogExp,
}

/// Configuration of [`BradleyTerryLoss`]. Serializes with serde (burn `Config`: every field
/// must be present when deserializing); `center_rewards_coefficient` has TRL's `RewardConfig`
/// name and meaning (`null` = off).
#[derive(Config, Debug)]
pub struct BradleyTerryLossConfig {
    /// Weight `λ` of the reward-centering term `λ · mean((r_c + r_r)²)` (Eisenstein et al. 2023,
    /// arXiv 2312.09244, eq. 2), which pushes the model towards zero-mean rewards. `None` (TRL's
    /// default) = off; TRL recommends 0.01. Must be finite and >= 0.
    pub center_rewards_coefficient: Option<f64>,
    /// How the log-sigmoid is evaluated. Default: [`BradleyTerryForm::LogSigmoid`].
    #[config(default = "BradleyTerryForm::LogSigmoid")]
    pub form: BradleyTerryForm,
    /// How the per-pair terms become the scalar loss. Default: [`Normalizer::SequenceMean`]
    /// (TRL's mean over pairs). Use [`Normalizer::GlobalSequences`] with the pair count of the
    /// whole optimizer step for exact gradient accumulation. Token normalizers are rejected.
    #[config(default = "Normalizer::SequenceMean")]
    pub normalizer: Normalizer,
}

impl BradleyTerryLossConfig {
    /// Validates the configuration.
    pub fn validate(&self) -> crate::Result<()> {
        if let Some(c) = self.center_rewards_coefficient
            && !(c.is_finite() && c >= 0.0)
        {
            return Err(Error::config(
                "center_rewards_coefficient",
                "must be finite and >= 0",
                c,
            ));
        }
        self.normalizer
            .validate_for_sequences("the Bradley-Terry loss")
    }

    /// Validates and builds the loss.
    pub fn try_init(&self) -> crate::Result<BradleyTerryLoss> {
        self.validate()?;
        Ok(BradleyTerryLoss {
            center_rewards_coefficient: self.center_rewards_coefficient.unwrap_or(0.0),
            form: self.form,
            normalizer: self.normalizer,
        })
    }

    crate::error::panicking! {
        /// Builds the loss.
        pub fn init(&self) -> BradleyTerryLoss = try_init;
    }
}

/// Bradley-Terry pairwise loss for reward models, built by [`BradleyTerryLossConfig::init`].
///
/// For pair `i` with chosen reward `r_c`, rejected reward `r_r`, optional margin `m` and
/// centering weight `λ`:
///
#[cfg_attr(
    doc,
    doc = r#"$$\ell_i = -\log\sigma\left(r_{c,i} - r_{r,i} - m_i\right) + \lambda\,(r_{c,i} + r_{r,i})^2,\qquad \mathcal{L} = \frac{1}{B}\sum_i \ell_i$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`l_i = -log sigmoid(r_c - r_r - m) + λ (r_c + r_r)^2`, `L = mean_i l_i`"
)]
///
/// (with the default [`Normalizer::SequenceMean`]; another normalizer replaces the mean). This
/// is TRL's `-logsigmoid(r_c - r_r - margin).mean() + λ * mean((r_c + r_r)**2)` exactly.
///
/// The gradient per pair is `dℓ/dr_c = -σ(-x) + 2λ(r_c + r_r)`,
/// `dℓ/dr_r = σ(-x) + 2λ(r_c + r_r)` with `x = r_c - r_r - m`.
///
/// The inputs are **rewards** (scalar scores), from any model: a [`crate::heads::RewardHead`],
/// a classifier's logit, or anything else. The margin is a constant: if you pass a tracked
/// tensor, it receives gradient `σ(-x)/B` like any other input.
///
/// Numerics: with [`BradleyTerryForm::LogSigmoid`] the term is computed as
/// `-(n - log1p(exp(2n - x)))` with `n = min(x, 0)`, i.e. `softplus(-x)` without ever
/// exponentiating a positive number, so `|x|` up to 1e4 (and beyond) gives a finite value and
/// gradient, and the gradient at `x = 0` is exactly `1/2` whichever side `min` credits.
///
/// Metrics (TRL's keys, computed without gradient): `accuracy` = fraction of pairs with
/// `r_c > r_r` (ties count as wrong), `margin` = `mean(r_c - r_r)` (the margin input is not
/// subtracted), and `min_reward`, `mean_reward`, `max_reward` over all `2B` rewards.
#[derive(Module, Debug)]
pub struct BradleyTerryLoss {
    center_rewards_coefficient: f64,
    #[module(skip)]
    form: BradleyTerryForm,
    #[module(skip)]
    normalizer: Normalizer,
}

impl BradleyTerryLoss {
    /// A copy reduced with `normalizer`, e.g. the step's global pair count from
    /// [`StepCounts::pair_normalizer`](crate::distributed::StepCounts::pair_normalizer) under
    /// data parallelism. Errors: a token normalizer ([`Error::NormalizerKind`]).
    pub fn with_normalizer(&self, normalizer: Normalizer) -> crate::Result<Self> {
        normalizer.validate_for_sequences("the Bradley-Terry loss")?;
        Ok(Self {
            normalizer,
            ..self.clone()
        })
    }

    crate::error::panicking! {
        /// Loss, per-pair terms and metrics.
        ///
        /// # Shapes
        /// - rewards_chosen: `[B]`
        /// - rewards_rejected: `[B]`
        /// - margin: `[B]` or `None` (no margin)
        /// - output: `loss` `[1]`, `per_example` `[B]`, metrics `[1]` each
        pub fn forward(
            &self,
            rewards_chosen: Tensor<1>,
            rewards_rejected: Tensor<1>,
            margin: Option<Tensor<1>>,
        ) -> LossOutput = try_forward;
    }

    /// As [`forward`](Self::forward), from TRL's stacked layout: `rewards` `[2B]` (or the model
    /// output `[2B, 1]` flattened) holds the chosen rewards first, then the rejected ones.
    ///
    /// # Panics
    /// On the errors [`try_forward_stacked`](Self::try_forward_stacked) returns.
    pub fn forward_stacked(&self, rewards: Tensor<1>, margin: Option<Tensor<1>>) -> LossOutput {
        unwrap_or_panic(self.try_forward_stacked(rewards, margin))
    }

    /// Non-panicking form of [`forward_stacked`](Self::forward_stacked): `rewards` must have an
    /// even, non-zero length.
    pub fn try_forward_stacked(
        &self,
        rewards: Tensor<1>,
        margin: Option<Tensor<1>>,
    ) -> crate::Result<LossOutput> {
        let [n] = rewards.dims();
        if n == 0 || n % 2 != 0 {
            return Err(Error::shape(
                "rewards",
                "[2B] with B >= 1 (chosen rewards first, then rejected)",
                &[n],
            ));
        }
        let chosen = rewards.clone().narrow(0, 0, n / 2);
        let rejected = rewards.narrow(0, n / 2, n / 2);
        self.try_forward(chosen, rejected, margin)
    }

    /// Non-panicking form of [`forward`](Self::forward): checks that the batch is non-empty and
    /// that `rewards_rejected` and `margin` have the shape of `rewards_chosen`. Reads nothing
    /// back from the device.
    pub fn try_forward(
        &self,
        rewards_chosen: Tensor<1>,
        rewards_rejected: Tensor<1>,
        margin: Option<Tensor<1>>,
    ) -> crate::Result<LossOutput> {
        self.forward_impl(rewards_chosen, rewards_rejected, margin, None)
    }

    crate::error::panicking! {
        /// The loss with soft labels: `preference_probs` `[B]` is the probability that the chosen
        /// completion is the better one (an AI judge's soft label, see
        /// [`ModelJudge`](crate::generate::ModelJudge)); the per-pair term is
        /// `-p log σ(x) - (1 - p) log σ(-x)`, `x = r_c - r_r - margin`. A label of 1 gives
        /// [`forward`](Self::forward) exactly.
        pub fn forward_soft(
            &self,
            rewards_chosen: Tensor<1>,
            rewards_rejected: Tensor<1>,
            margin: Option<Tensor<1>>,
            preference_probs: Tensor<1>,
        ) -> LossOutput = try_forward_soft;
    }

    /// Non-panicking form of [`forward_soft`](Self::forward_soft): the checks of
    /// [`try_forward`](Self::try_forward), `preference_probs` of shape `[B]` ([`Error::Shape`])
    /// and, in checked mode, in `[0, 1]` ([`Error::Config`]).
    pub fn try_forward_soft(
        &self,
        rewards_chosen: Tensor<1>,
        rewards_rejected: Tensor<1>,
        margin: Option<Tensor<1>>,
        preference_probs: Tensor<1>,
    ) -> crate::Result<LossOutput> {
        self.forward_impl(
            rewards_chosen,
            rewards_rejected,
            margin,
            Some(preference_probs),
        )
    }

    fn forward_impl(
        &self,
        rewards_chosen: Tensor<1>,
        rewards_rejected: Tensor<1>,
        margin: Option<Tensor<1>>,
        preference_probs: Option<Tensor<1>>,
    ) -> crate::Result<LossOutput> {
        let [b] = rewards_chosen.dims();
        if b == 0 {
            return Err(Error::Empty {
                arg: "rewards_chosen",
                what: "the batch has no pair".into(),
            });
        }
        let rejected_dims = rewards_rejected.dims();
        if rejected_dims != [b] {
            return Err(Error::shape(
                "rewards_rejected",
                format!("[B] = [{b}] (same as rewards_chosen)"),
                &rejected_dims,
            ));
        }
        if let Some(m) = &margin
            && m.dims() != [b]
        {
            return Err(Error::shape(
                "margin",
                format!("[B] = [{b}] (same as rewards_chosen)"),
                &m.dims(),
            ));
        }
        if let Some(p) = &preference_probs {
            if p.dims() != [b] {
                return Err(Error::shape(
                    "preference_probs",
                    format!("[B] = [{b}] (same as rewards_chosen)"),
                    &p.dims(),
                ));
            }
            crate::error::check_dtype_like(
                "preference_probs",
                p,
                "rewards_chosen",
                &rewards_chosen,
            )?;
            crate::error::check_probabilities(p, "preference_probs")?;
        }
        crate::error::check_dtype_like(
            "rewards_rejected",
            &rewards_rejected,
            "rewards_chosen",
            &rewards_chosen,
        )?;
        crate::error::check_dtype_like_opt(
            "margin",
            margin.as_ref(),
            "rewards_chosen",
            &rewards_chosen,
        )?;
        crate::error::check_finite(&rewards_chosen, "rewards_chosen")?;
        crate::error::check_finite(&rewards_rejected, "rewards_rejected")?;
        crate::error::check_finite_opt(margin.as_ref(), "margin")?;

        let diff = rewards_chosen.clone() - rewards_rejected.clone();
        let x = match margin {
            Some(m) => diff.clone() - m,
            None => diff.clone(),
        };
        let term = |x: Tensor<1>| match self.form {
            BradleyTerryForm::LogSigmoid => log_sigmoid(x).neg(),
            // OpenRLHF LogExpLoss, evaluated as written (see the variant's docs).
            BradleyTerryForm::LogExp => x.neg().exp().add_scalar(1.0).log(),
        };
        let mut per_pair = match preference_probs {
            // -p log σ(x) - (1 - p) log σ(-x)
            Some(p) => {
                let q = p.clone().neg().add_scalar(1.0);
                term(x.clone()) * p + term(x.neg()) * q
            }
            None => term(x),
        };
        if self.center_rewards_coefficient != 0.0 {
            let sum = rewards_chosen.clone() + rewards_rejected.clone();
            per_pair = per_pair + sum.square().mul_scalar(self.center_rewards_coefficient);
        }
        let loss = self.normalizer.try_reduce_sequences(per_pair.clone())?;
        let metrics = reward_metrics(rewards_chosen, rewards_rejected, diff);
        Ok(LossOutput {
            loss,
            per_example: per_pair,
            metrics,
        })
    }
}

/// TRL's reward metrics: `accuracy`, `margin`, `min_reward`, `mean_reward`, `max_reward`.
fn reward_metrics(chosen: Tensor<1>, rejected: Tensor<1>, diff: Tensor<1>) -> Metrics {
    let chosen = chosen.detach();
    let rejected = rejected.detach();
    let diff = diff.detach();
    let mut metrics = Metrics::new();
    let correct = chosen.clone().greater(rejected.clone());
    metrics.insert("accuracy", mask_like(&diff, correct).mean());
    metrics.insert("margin", diff.mean());
    let all = Tensor::cat(vec![chosen, rejected], 0);
    metrics.insert("min_reward", all.clone().min());
    metrics.insert("mean_reward", all.clone().mean());
    metrics.insert("max_reward", all.max());
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn f64_tensor(values: &[f64], device: &Device) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            (device, burn::tensor::DType::F64),
        )
    }

    fn host(t: Tensor<1>) -> Vec<f64> {
        t.into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()
    }

    #[test]
    fn log_exp_form_matches_log_sigmoid_in_range_and_overflows_outside() {
        let device = Device::flex();
        let rc = f64_tensor(&[0.3, -2.0, 5.0], &device);
        let rr = f64_tensor(&[1.1, 4.0, -3.0], &device);
        let a = BradleyTerryLossConfig::new().init();
        let b = BradleyTerryLossConfig::new()
            .with_form(BradleyTerryForm::LogExp)
            .init();
        let la = host(a.forward(rc.clone(), rr.clone(), None).loss)[0];
        let lb = host(b.forward(rc, rr, None).loss)[0];
        assert!((la - lb).abs() < 1e-12);
        // r_r - r_c = 800: exp overflows in the literal form, not in the stable one.
        let rc = f64_tensor(&[0.0], &device);
        let rr = f64_tensor(&[800.0], &device);
        assert!((host(a.forward(rc.clone(), rr.clone(), None).loss)[0] - 800.0).abs() < 1e-9);
        assert!(host(b.forward(rc, rr, None).loss)[0].is_infinite());
    }

    #[test]
    fn config_validation_and_shape_errors() {
        let bad = BradleyTerryLossConfig::new().with_center_rewards_coefficient(Some(-1.0));
        assert!(matches!(bad.try_init(), Err(Error::Config { .. })));
        let bad = BradleyTerryLossConfig::new().with_normalizer(Normalizer::TokenMean);
        assert!(matches!(bad.try_init(), Err(Error::NormalizerKind { .. })));
        let device = Device::flex();
        let loss = BradleyTerryLossConfig::new().init();
        let err = loss
            .try_forward(
                f64_tensor(&[1.0, 2.0], &device),
                f64_tensor(&[1.0], &device),
                None,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Shape {
                    arg: "rewards_rejected",
                    ..
                }
            ),
            "{err}"
        );
        let err = loss
            .try_forward(
                f64_tensor(&[1.0, 2.0], &device),
                f64_tensor(&[1.0, 0.0], &device),
                Some(f64_tensor(&[1.0, 2.0, 3.0], &device)),
            )
            .unwrap_err();
        assert!(matches!(err, Error::Shape { arg: "margin", .. }), "{err}");
        let err = loss
            .try_forward_stacked(f64_tensor(&[1.0, 2.0, 3.0], &device), None)
            .unwrap_err();
        assert!(matches!(err, Error::Shape { arg: "rewards", .. }), "{err}");
    }

    #[test]
    fn config_serde_uses_trl_names() {
        let json = r#"{"center_rewards_coefficient": 0.01, "form": "log_exp", "normalizer": "sequence_mean"}"#;
        let config: BradleyTerryLossConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.center_rewards_coefficient, Some(0.01));
        assert_eq!(config.form, BradleyTerryForm::LogExp);
        // TRL's default (`null` = off) and a serde round trip.
        let json = r#"{"center_rewards_coefficient": null, "form": "log_sigmoid", "normalizer": {"global_sequences": 64.0}}"#;
        let config: BradleyTerryLossConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.center_rewards_coefficient, None);
        assert_eq!(config.normalizer, Normalizer::GlobalSequences(64.0));
        let back: BradleyTerryLossConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back.normalizer, config.normalizer);
        assert_eq!(back.form, config.form);
    }
}
