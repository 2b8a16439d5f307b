//! Supervised fine-tuning: the token-normalized negative log-likelihood, by name.
//!
//! The same term TRL's `SFTTrainer` minimizes (`CrossEntropyLoss` mean over the completion
//! tokens) and the NLL inside DPO `sft`, CPO and ORPO:
#![cfg_attr(
    doc,
    doc = r#"$$L = \frac{1}{N}\sum_{b,t:\,m_{bt}} -\log \pi(y_{bt} \mid y_{<t}, x)$$"#
)]
#![cfg_attr(not(doc), doc = "`L = -sum_{valid b,t} log p(y_bt) / N`")]
//!
//! with `N` the valid tokens of this batch (`TokenMean`, TRL's default) or of the whole
//! optimizer step ([`Normalizer::GlobalTokens`], exact under gradient accumulation and data
//! parallelism).

use burn::config::Config;
use burn::module::Module;

use super::metrics::{LossOutput, Metrics};
use crate::error::Error;
use crate::logps::GatheredLogps;
use crate::reduce::{Normalizer, mask_like};

/// Configuration of [`SftLoss`].
#[derive(Config, Debug)]
pub struct SftLossConfig {
    /// How the per-token NLL becomes the loss. Default [`Normalizer::TokenMean`] (TRL); pass
    /// [`Normalizer::GlobalTokens`] with the step's token count for gradient accumulation.
    #[config(default = "Normalizer::TokenMean")]
    pub normalizer: Normalizer,
}

impl SftLossConfig {
    /// Validates the normalizer (any token normalizer, with valid constants).
    pub fn validate(&self) -> crate::Result<()> {
        self.normalizer.validate()
    }

    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<SftLoss> {
        self.validate()?;
        Ok(SftLoss {
            normalizer: self.normalizer,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> SftLoss = try_init;
    }
}

/// The SFT loss (see the module docs), built by [`SftLossConfig::init`].
///
/// # Shapes
/// - tokens: the [`GatheredLogps`] of the completions (`[B, T]` log-probs and mask, from
///   the lean gather or the fused LM-head op)
/// - output: `loss` `[1]`, `per_example` `[B]` (each row's token-mean NLL; 0 for a row with
///   no valid token)
///
/// Metrics: `nll_loss` (the batch token mean, whatever the normalizer) and `num_tokens` (the
/// valid tokens of this batch; TRL's key). No host sync.
#[derive(Module, Debug)]
pub struct SftLoss {
    #[module(skip)]
    normalizer: Normalizer,
}

impl SftLoss {
    crate::error::panicking! {
        /// The loss of a batch.
        pub fn forward(&self, tokens: &GatheredLogps) -> LossOutput = try_forward;
    }

    /// Non-panicking form of [`forward`](Self::forward): a mask of another shape
    /// ([`Error::Shape`]), an empty batch ([`Error::Empty`]); in checked mode non-finite
    /// valid log-probs ([`Error::NonFinite`]).
    pub fn try_forward(&self, tokens: &GatheredLogps) -> crate::Result<LossOutput> {
        let mask = crate::reduce::canonical_mask(tokens.mask.clone());
        crate::error::check_same_shape(
            "tokens.mask",
            &mask.dims(),
            &tokens.logps.dims(),
            "tokens.logps",
        )?;
        if tokens.logps.dims()[0] == 0 {
            return Err(Error::Empty {
                arg: "tokens",
                what: "the batch has no row".into(),
            });
        }
        crate::error::check_finite_masked(&tokens.logps, &mask, "tokens.logps")?;
        let nll = tokens.logps.clone().neg();
        let loss = self
            .normalizer
            .try_reduce_tokens(nll.clone(), mask.clone())?;
        let per_example = crate::reduce::masked_row_mean(nll.clone(), mask.clone());
        let count = mask_like(&nll, mask.clone()).sum();
        let mut metrics = Metrics::new();
        metrics.insert(
            "nll_loss",
            Normalizer::TokenMean.try_reduce_tokens(nll, mask)?.detach(),
        );
        metrics.insert("num_tokens", count);
        Ok(LossOutput {
            loss,
            per_example,
            metrics,
        })
    }
}
