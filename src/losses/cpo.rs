//! Reference-free pairwise losses: CPO (sigmoid, hinge, ipo), SimPO and AlphaPO, as TRL's
//! experimental `CPOTrainer` computes them, with CPO's NLL term.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::metrics::{LossOutput, pair_metrics};
use super::preference::PreferenceBatch;
use super::stable::{log_sigmoid, relu};
use crate::error::{Error, check_in_closed, check_positive};
use crate::reduce::{MeanDenominator, Normalizer, mean_from_sum};

/// CPO loss types (TRL's `CPOConfig.loss_type` names).
///
/// With `Z = R(y_w) - R(y_l)` (`R` = the log-prob, or the AlphaPO reward when `alpha != 0`):
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpoLossType {
    /// `-(1-ε) log σ(βZ) - ε log σ(-βZ)` on summed log-probs (CPO paper eq. 3).
    Sigmoid,
    /// `max(0, 1 - βZ)` on summed log-probs.
    Hinge,
    /// `(Z - 1/(2β))²` on **averaged** log-probs.
    Ipo,
    /// SimPO: `Z' = Z - γ/β`, `-(1-ε) log σ(βZ') - ε log σ(-βZ')` on averaged log-probs
    /// (`≡ -log σ(β(ĉ - r̂) - γ)` at `ε = 0`). The SimPO paper uses `cpo_alpha = 0`.
    Simpo,
}

/// Configuration of [`CpoLoss`] (TRL's `CPOConfig` names and defaults).
///
/// AlphaPO is `loss_type = simpo` with `alpha != 0` and `cpo_alpha = 0` (TRL's
/// `loss_type="alphapo"` shorthand): see [`CpoLossConfig::alphapo`].
#[derive(Config, Debug)]
pub struct CpoLossConfig {
    /// Loss type. Default: `sigmoid`.
    #[config(default = "CpoLossType::Sigmoid")]
    pub loss_type: CpoLossType,
    /// `β`, finite and > 0. Default: 0.1.
    #[config(default = 0.1)]
    pub beta: f64,
    /// `ε` of `sigmoid` / `simpo`, in `[0, ½]`. Default: 0.0.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Weight of the NLL (token-mean cross-entropy over the chosen completions); 0 turns it
    /// off (the per-token log-probs are then not needed). Default: 1.0.
    #[config(default = 1.0)]
    pub cpo_alpha: f64,
    /// SimPO's target margin `γ` (`simpo` only; the logits are shifted by `γ/β`). Default: 0.5.
    #[config(default = 0.5)]
    pub simpo_gamma: f64,
    /// AlphaPO `α`: the reward of a sequence becomes `(1 - p^{-α})/α` with `p = e^{logp}`
    /// (`0` = the log-prob itself). Default: 0.0.
    #[config(default = 0.0)]
    pub alpha: f64,
    /// Average the log-probs over the completion tokens (`true`) or sum them. `None` = TRL's
    /// rule: average for `ipo` and `simpo`, sum otherwise. Default: `None`.
    pub average_log_prob: Option<bool>,
    /// Reduction of the per-pair losses. Default: `SequenceMean` (TRL).
    #[config(default = "Normalizer::SequenceMean")]
    pub normalizer: Normalizer,
    /// How the NLL term is reduced. `None` (TRL): the batch token mean added to every pair's
    /// term (couples the micro-batch). `Some(n)`: reduced on its own with the token normalizer
    /// `n` and added to the normalized pair loss; `Some(Normalizer::GlobalTokens(step_tokens))`
    /// with `normalizer = GlobalSequences(step_pairs)` is exact under gradient accumulation and
    /// data parallelism. Default: `None`.
    pub nll_normalizer: Option<Normalizer>,
}

impl CpoLossConfig {
    /// SimPO with the paper's recommended settings (`β = 2`, `γ = 0.5`, no NLL).
    pub fn simpo() -> Self {
        Self::new()
            .with_loss_type(CpoLossType::Simpo)
            .with_beta(2.0)
            .with_cpo_alpha(0.0)
    }

    /// AlphaPO: SimPO with the `α` reward transform and no NLL (TRL's `loss_type="alphapo"`).
    pub fn alphapo(alpha: f64) -> Self {
        Self::simpo().with_alpha(alpha)
    }

    /// Whether the log-probs are averaged over tokens.
    pub fn averages_log_probs(&self) -> bool {
        self.average_log_prob.unwrap_or(matches!(
            self.loss_type,
            CpoLossType::Ipo | CpoLossType::Simpo
        ))
    }

    /// Checks the configuration.
    pub fn validate(&self) -> crate::Result<()> {
        check_positive("beta", self.beta)?;
        check_in_closed("label_smoothing", self.label_smoothing, 0.0, 0.5)?;
        if self.label_smoothing != 0.0
            && !matches!(self.loss_type, CpoLossType::Sigmoid | CpoLossType::Simpo)
        {
            return Err(Error::Conflict {
                field: "label_smoothing",
                other: "loss_type",
                reason: format!(
                    "label_smoothing is read only by the sigmoid and simpo loss types, not {:?}",
                    self.loss_type
                ),
            });
        }
        if !(self.cpo_alpha.is_finite() && self.cpo_alpha >= 0.0) {
            return Err(Error::config(
                "cpo_alpha",
                "must be finite and >= 0",
                self.cpo_alpha,
            ));
        }
        if !self.simpo_gamma.is_finite() {
            return Err(Error::config(
                "simpo_gamma",
                "must be finite",
                self.simpo_gamma,
            ));
        }
        if !self.alpha.is_finite() {
            return Err(Error::config("alpha", "must be finite", self.alpha));
        }
        super::nll::validate_nll_normalizer(&self.nll_normalizer)?;
        self.normalizer.validate_for_sequences("the CPO loss")
    }

    /// Validates and builds the loss.
    pub fn try_init(&self) -> crate::Result<CpoLoss> {
        self.validate()?;
        Ok(CpoLoss {
            loss_type: self.loss_type,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            cpo_alpha: self.cpo_alpha,
            simpo_gamma: self.simpo_gamma,
            alpha: self.alpha,
            average: self.averages_log_probs(),
            normalizer: self.normalizer,
            nll_normalizer: self.nll_normalizer,
        })
    }

    crate::error::panicking! {
        /// Builds the loss.
        pub fn init(&self) -> CpoLoss = try_init;
    }
}

/// Per-pair CPO terms: TRL's `cpo_loss` return values.
#[derive(Debug, Clone)]
pub struct PairTerms {
    /// Per-pair losses `[B]` (without the NLL term).
    pub losses: Tensor<1>,
    /// `β R(y_w)` `[B]`, detached.
    pub chosen_rewards: Tensor<1>,
    /// `β R(y_l)` `[B]`, detached.
    pub rejected_rewards: Tensor<1>,
}

/// CPO / SimPO / AlphaPO, built by [`CpoLossConfig::init`]. Reference-free.
///
#[cfg_attr(
    doc,
    doc = r#"$$L = \operatorname{normalize}_B\big(\ell(R(y_w) - R(y_l))\big) + \alpha_{\text{cpo}}\,\text{NLL}(y_w)$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`L = normalize(l(R(y_w) - R(y_l))) + cpo_alpha * NLL(y_w)`"
)]
///
/// `ℓ` per [`CpoLossType`]; `R` is the (summed or averaged) log-prob, or the AlphaPO reward.
/// The NLL is the token mean over all chosen completion tokens of the batch (PyTorch
/// `CrossEntropyLoss` with `-100` ignored), added to every pair's term so that the default
/// `SequenceMean` gives TRL's `mean(losses) + cpo_alpha · nll`. A sequence with no token gets
/// an average log-prob of 0 (TRL: NaN).
///
/// Metrics: `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`,
/// `logps/chosen`, `logps/rejected` (the log-probs as used: summed or averaged), `nll_loss`.
#[derive(Module, Debug)]
pub struct CpoLoss {
    #[module(skip)]
    loss_type: CpoLossType,
    beta: f64,
    label_smoothing: f64,
    cpo_alpha: f64,
    simpo_gamma: f64,
    alpha: f64,
    average: bool,
    #[module(skip)]
    normalizer: Normalizer,
    #[module(skip)]
    nll_normalizer: Option<Normalizer>,
}

impl CpoLoss {
    /// A copy reduced with the step's global counts, as
    /// [`DpoLoss::with_normalizers`](crate::losses::DpoLoss::with_normalizers).
    pub fn with_normalizers(
        &self,
        normalizer: Normalizer,
        nll_normalizer: Option<Normalizer>,
    ) -> Self {
        Self {
            normalizer,
            nll_normalizer,
            ..self.clone()
        }
    }

    /// Whether the loss has an NLL term (`cpo_alpha != 0`), whose normalizer counts tokens.
    pub fn has_nll_term(&self) -> bool {
        self.cpo_alpha != 0.0
    }

    crate::error::panicking! {
        /// TRL's `cpo_loss`: per-pair losses and rewards from sequence log-probs `[B]` that are
        /// already reduced as this loss expects (averaged for `ipo`/`simpo` by default).
        pub fn pair_terms(
            &self,
            chosen_logps: Tensor<1>,
            rejected_logps: Tensor<1>,
        ) -> PairTerms = try_pair_terms;
    }

    /// Non-panicking form of [`pair_terms`](Self::pair_terms): shapes or dtypes that differ
    /// ([`Error::Shape`] / [`Error::DType`] naming `rejected_logps`); in checked mode non-finite
    /// inputs ([`Error::NonFinite`]).
    pub fn try_pair_terms(
        &self,
        chosen_logps: Tensor<1>,
        rejected_logps: Tensor<1>,
    ) -> crate::Result<PairTerms> {
        check_pair(
            "chosen_logps",
            &chosen_logps,
            "rejected_logps",
            &rejected_logps,
        )?;
        Ok(self.pair_terms_unchecked(chosen_logps, rejected_logps))
    }

    fn pair_terms_unchecked(
        &self,
        chosen_logps: Tensor<1>,
        rejected_logps: Tensor<1>,
    ) -> PairTerms {
        let (chosen, rejected) = if self.alpha != 0.0 {
            (
                self.alpha_reward(chosen_logps),
                self.alpha_reward(rejected_logps),
            )
        } else {
            (chosen_logps, rejected_logps)
        };
        let beta = self.beta;
        let logits = chosen.clone() - rejected.clone();
        let eps = self.label_smoothing;
        let smoothed = |x: Tensor<1>| {
            log_sigmoid(x.clone()).mul_scalar(-(1.0 - eps)) - log_sigmoid(x.neg()).mul_scalar(eps)
        };
        let losses = match self.loss_type {
            CpoLossType::Sigmoid => smoothed(logits.mul_scalar(beta)),
            CpoLossType::Simpo => {
                smoothed(logits.sub_scalar(self.simpo_gamma / beta).mul_scalar(beta))
            }
            CpoLossType::Hinge => relu(logits.mul_scalar(-beta).add_scalar(1.0)),
            CpoLossType::Ipo => logits.sub_scalar(1.0 / (2.0 * beta)).square(),
        };
        PairTerms {
            losses,
            chosen_rewards: chosen.mul_scalar(beta).detach(),
            rejected_rewards: rejected.mul_scalar(beta).detach(),
        }
    }

    /// `(1 - p^{-α})/α = (1 - e^{-α logp})/α`.
    fn alpha_reward(&self, logps: Tensor<1>) -> Tensor<1> {
        logps
            .mul_scalar(-self.alpha)
            .exp()
            .neg()
            .add_scalar(1.0)
            .mul_scalar(1.0 / self.alpha)
    }

    crate::error::panicking! {
        /// The loss, per-pair losses (NLL term included) and metrics.
        pub fn forward(&self, batch: &PreferenceBatch) -> LossOutput = try_forward;
    }

    /// Non-panicking form of [`forward`](Self::forward). Needs token counts when averaging and
    /// per-token chosen log-probs when `cpo_alpha != 0`. Reference log-probs are ignored.
    pub fn try_forward(&self, batch: &PreferenceBatch) -> crate::Result<LossOutput> {
        batch.validate()?;
        let (chosen, rejected) = if self.average {
            let (cc, cr) = batch.token_counts("CPO ipo / simpo (averaged log-probs)")?;
            (
                mean_from_sum(batch.chosen_logps.clone(), cc, MeanDenominator::AtLeastOne),
                mean_from_sum(
                    batch.rejected_logps.clone(),
                    cr,
                    MeanDenominator::AtLeastOne,
                ),
            )
        } else {
            (batch.chosen_logps.clone(), batch.rejected_logps.clone())
        };
        let terms = self.pair_terms_unchecked(chosen.clone(), rejected.clone());
        let (loss, per_example, nll) = if self.cpo_alpha != 0.0 {
            let nll = super::nll::nll_term(
                batch,
                "CPO's NLL term (cpo_alpha != 0)",
                self.nll_normalizer,
            )?;
            let in_terms = terms.losses.clone() + nll.in_pair_terms.mul_scalar(self.cpo_alpha);
            let mut loss = self.normalizer.try_reduce_sequences(in_terms)?;
            if let Some(separate) = nll.separate {
                loss = loss + separate.mul_scalar(self.cpo_alpha);
            }
            let per_example = terms.losses.clone() + nll.per_pair.mul_scalar(self.cpo_alpha);
            (loss, per_example, nll.batch_mean)
        } else {
            let loss = self.normalizer.try_reduce_sequences(terms.losses.clone())?;
            let zero = Tensor::zeros([1], (&chosen.device(), chosen.dtype()));
            (loss, terms.losses.clone(), zero)
        };
        let mut metrics = pair_metrics(
            terms.chosen_rewards.clone(),
            terms.rejected_rewards.clone(),
            chosen,
            rejected,
        );
        metrics.insert("nll_loss", nll);
        Ok(LossOutput {
            loss,
            per_example,
            metrics,
        })
    }
}

/// Checks two `[B]` sequence log-prob vectors of one call against each other.
pub(crate) fn check_pair(
    chosen_arg: &'static str,
    chosen: &Tensor<1>,
    rejected_arg: &'static str,
    rejected: &Tensor<1>,
) -> crate::Result<()> {
    crate::error::check_non_empty(chosen_arg, chosen.dims()[0], "the batch has no pair")?;
    crate::error::check_same_shape(rejected_arg, &rejected.dims(), &chosen.dims(), chosen_arg)?;
    crate::error::check_dtype_like(rejected_arg, rejected, chosen_arg, chosen)?;
    crate::error::check_finite(chosen, chosen_arg)?;
    crate::error::check_finite(rejected, rejected_arg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{t, v};
    use burn::tensor::Device;

    #[test]
    fn simpo_value_and_gradient_match_closed_form() {
        // ℓ = -log σ(β(ĉ - r̂) - γ); dℓ/dĉ = -β σ(-(β(ĉ - r̂) - γ)); mean over 2 pairs.
        let device = Device::flex().autodiff();
        let (c, r) = ([-1.2, -0.4], [-1.0, -2.5]);
        let (beta, gamma) = (2.0, 0.5);
        let chosen = t(&c, &device).require_grad();
        let rejected = t(&r, &device).require_grad();
        let loss = CpoLossConfig::simpo().with_simpo_gamma(gamma).init();
        let terms = loss.pair_terms(chosen.clone(), rejected.clone());
        let grads = terms.losses.clone().mean().backward();
        let got = v(terms.losses);
        let gc = v(chosen.grad(&grads).unwrap());
        for i in 0..2 {
            let x: f64 = beta * (c[i] - r[i]) - gamma;
            let want = (1.0 + (-x).exp()).ln();
            let want_grad = -beta / (1.0 + x.exp()) / 2.0;
            assert!((got[i] - want).abs() < 1e-14, "{} vs {want}", got[i]);
            assert!(
                (gc[i] - want_grad).abs() < 1e-14,
                "{} vs {want_grad}",
                gc[i]
            );
        }
    }

    #[test]
    fn alphapo_reward_transform() {
        let device = Device::flex();
        let loss = CpoLossConfig::alphapo(0.25).init();
        let terms = loss.pair_terms(t(&[-2.0], &device), t(&[-3.0], &device));
        let want = 2.0 * (1.0 - (0.25f64 * 2.0).exp()) / 0.25;
        assert!((v(terms.chosen_rewards)[0] - want).abs() < 1e-13);
    }
}
