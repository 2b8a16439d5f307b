//! ORPO: odds-ratio preference optimization (TRL's experimental `ORPOTrainer`), with the
//! stable `log1mexp` of TRL PR 4763.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::metrics::{LossOutput, pair_metrics};
use super::preference::PreferenceBatch;
use super::stable::{log_sigmoid, log1mexp};
use crate::error::check_positive;
use crate::reduce::{MeanDenominator, Normalizer, mean_from_sum};

/// Configuration of [`OrpoLoss`] (TRL's `ORPOConfig` names and defaults).
#[derive(Config, Debug)]
pub struct OrpoLossConfig {
    /// `β` (the paper's `λ`), finite and > 0. Default: 0.1.
    #[config(default = 0.1)]
    pub beta: f64,
    /// Reduction of the per-pair terms. Default: `SequenceMean` (TRL).
    #[config(default = "Normalizer::SequenceMean")]
    pub normalizer: Normalizer,
    /// How the NLL term is reduced. `None` (TRL): the batch token mean added to every pair's
    /// term (couples the micro-batch). `Some(n)`: reduced on its own with the token normalizer
    /// `n` and added to the normalized pair loss; `Some(Normalizer::GlobalTokens(step_tokens))`
    /// with `normalizer = GlobalSequences(step_pairs)` is exact under gradient accumulation and
    /// data parallelism. Default: `None`.
    pub nll_normalizer: Option<Normalizer>,
}

impl OrpoLossConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> crate::Result<()> {
        check_positive("beta", self.beta)?;
        super::nll::validate_nll_normalizer(&self.nll_normalizer)?;
        self.normalizer.validate_for_sequences("the ORPO loss")
    }

    /// Validates and builds the loss.
    pub fn try_init(&self) -> crate::Result<OrpoLoss> {
        self.validate()?;
        Ok(OrpoLoss {
            beta: self.beta,
            normalizer: self.normalizer,
            nll_normalizer: self.nll_normalizer,
        })
    }

    crate::error::panicking! {
        /// Builds the loss.
        pub fn init(&self) -> OrpoLoss = try_init;
    }
}

/// TRL's `odds_ratio_loss` outputs.
#[derive(Debug, Clone)]
pub struct OddsRatioTerms {
    /// `β log σ(log_odds)` per pair `[B]` (TRL's sign: the loss **subtracts** its mean).
    pub losses: Tensor<1>,
    /// `log_odds = (ĉ - r̂) - (log(1 - e^ĉ) - log(1 - e^r̂))` per pair `[B]`.
    pub log_odds: Tensor<1>,
    /// `β ĉ` `[B]`, detached.
    pub chosen_rewards: Tensor<1>,
    /// `β r̂` `[B]`, detached.
    pub rejected_rewards: Tensor<1>,
}

/// Upper bound of the averaged log-probs ORPO takes the odds of (`p <= 1 - 1e-6`).
const MAX_AVG_LOGP: f64 = -1e-6;

/// ORPO, built by [`OrpoLossConfig::init`]. Reference-free; works on **average** log-probs.
///
#[cfg_attr(
    doc,
    doc = r#"$$L = \text{NLL}(y_w) - \beta \operatorname{mean}_B \log\sigma\Big((\hat c - \hat r) - \big(\log(1 - e^{\hat c}) - \log(1 - e^{\hat r})\big)\Big)$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`L = NLL(y_w) - beta * mean log_sigmoid((c - r) - (log1mexp(c) - log1mexp(r)))`"
)]
///
/// with `ĉ, r̂` the completion log-probs averaged over tokens (`chosen_logps / chosen_token_counts`;
/// a sequence with no token gets 0, TRL gives NaN), clamped to at most `-1e-6` (an average of
/// 0 has infinite odds: loss and gradient would be NaN; the gradient is 0 above the clamp).
/// `log(1 - e^x)` is computed with the `log1mexp` branch (Mächler 2012), finite for averages up to 0⁻ (the naive
/// `log1p(-exp(x))` of Liger/axolotl is not).
///
/// The NLL is the token mean over `nll_tokens` (TRL: chosen prompt **and** completion tokens,
/// every position with attention; set it with [`PreferenceBatch::with_nll_tokens`]) or, if
/// absent, over `chosen_tokens`. TRL computes the odds ratio in float32 (`.float()`); this
/// computes it in the inputs' dtype.
///
/// Metrics: `rewards/*` (`β ĉ`, `β r̂`), `logps/*` (averages), `nll_loss`, `log_odds_ratio`
/// (`mean log σ(log_odds)`), `log_odds_chosen` (`mean log_odds`).
#[derive(Module, Debug)]
pub struct OrpoLoss {
    beta: f64,
    #[module(skip)]
    normalizer: Normalizer,
    #[module(skip)]
    nll_normalizer: Option<Normalizer>,
}

impl OrpoLoss {
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

    crate::error::panicking! {
        /// TRL's `odds_ratio_loss` on average log-probs `[B]` (each < 0).
        pub fn odds_ratio(
            &self,
            chosen_logps: Tensor<1>,
            rejected_logps: Tensor<1>,
        ) -> OddsRatioTerms = try_odds_ratio;
    }

    /// Non-panicking form of [`odds_ratio`](Self::odds_ratio): shapes or dtypes that differ
    /// ([`Error::Shape`](crate::Error::Shape) / [`Error::DType`](crate::Error::DType) naming `rejected_logps`); in checked mode
    /// non-finite inputs ([`Error::NonFinite`](crate::Error::NonFinite)).
    pub fn try_odds_ratio(
        &self,
        chosen_logps: Tensor<1>,
        rejected_logps: Tensor<1>,
    ) -> crate::Result<OddsRatioTerms> {
        super::cpo::check_pair(
            "chosen_logps",
            &chosen_logps,
            "rejected_logps",
            &rejected_logps,
        )?;
        Ok(self.odds_ratio_unchecked(chosen_logps, rejected_logps))
    }

    fn odds_ratio_unchecked(
        &self,
        chosen_logps: Tensor<1>,
        rejected_logps: Tensor<1>,
    ) -> OddsRatioTerms {
        let log_odds = (chosen_logps.clone() - rejected_logps.clone())
            - (log1mexp(chosen_logps.clone()) - log1mexp(rejected_logps.clone()));
        OddsRatioTerms {
            losses: log_sigmoid(log_odds.clone()).mul_scalar(self.beta),
            log_odds,
            chosen_rewards: chosen_logps.mul_scalar(self.beta).detach(),
            rejected_rewards: rejected_logps.mul_scalar(self.beta).detach(),
        }
    }

    crate::error::panicking! {
        /// The loss, per-pair terms (`nll - β log σ(log_odds)`) and metrics.
        pub fn forward(&self, batch: &PreferenceBatch) -> LossOutput = try_forward;
    }

    /// Non-panicking form of [`forward`](Self::forward). Needs token counts and per-token
    /// chosen log-probs (or `nll_tokens`).
    pub fn try_forward(&self, batch: &PreferenceBatch) -> crate::Result<LossOutput> {
        batch.validate()?;
        let (cc, cr) = batch.token_counts("ORPO (averaged log-probs)")?;
        // Clamped below 0: an average log-prob of 0 (a completion with no token, or p = 1)
        // has infinite odds, and log1mexp(0) = -inf made the loss and gradient NaN.
        let average = |logps: Tensor<1>, count| {
            mean_from_sum(logps, count, MeanDenominator::AtLeastOne).clamp_max(MAX_AVG_LOGP)
        };
        let chosen = average(batch.chosen_logps.clone(), cc);
        let rejected = average(batch.rejected_logps.clone(), cr);
        let terms = self.odds_ratio_unchecked(chosen.clone(), rejected.clone());
        let nll_term = super::nll::nll_term(batch, "ORPO's NLL term", self.nll_normalizer)?;
        let mut loss = self
            .normalizer
            .try_reduce_sequences(nll_term.in_pair_terms - terms.losses.clone())?;
        if let Some(separate) = nll_term.separate {
            loss = loss + separate;
        }
        let per_example = nll_term.per_pair - terms.losses.clone();
        let nll = nll_term.batch_mean;
        let mut metrics = pair_metrics(
            terms.chosen_rewards.clone(),
            terms.rejected_rewards.clone(),
            chosen,
            rejected,
        );
        metrics.insert("nll_loss", nll);
        metrics.insert("log_odds_ratio", log_sigmoid(terms.log_odds.clone()).mean());
        metrics.insert("log_odds_chosen", terms.log_odds.mean());
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
    use burn::tensor::Device;

    #[test]
    fn odds_ratio_value_and_gradient_match_closed_form() {
        // log_odds = log(p_c/(1-p_c)) - log(p_r/(1-p_r)); d log_odds / dĉ = 1/(1 - p_c);
        // d(β log σ(o))/dĉ = β σ(-o) / (1 - p_c).
        let device = Device::flex().autodiff();
        let (c, r) = (-0.3f64, -1.7f64);
        let beta = 0.1;
        let chosen = t(&[c], &device).require_grad();
        let terms = OrpoLossConfig::new()
            .init()
            .odds_ratio(chosen.clone(), t(&[r], &device));
        let grads = terms.losses.clone().sum().backward();
        let (pc, pr) = (c.exp(), r.exp());
        let o = (pc / (1.0 - pc)).ln() - (pr / (1.0 - pr)).ln();
        let want = beta * -(1.0 + (-o).exp()).ln();
        let want_grad = beta / (1.0 + o.exp()) / (1.0 - pc);
        assert!((v(terms.log_odds)[0] - o).abs() < 1e-14);
        assert!((v(terms.losses)[0] - want).abs() < 1e-15);
        assert!((v(chosen.grad(&grads).unwrap())[0] - want_grad).abs() < 1e-14);
    }
}
