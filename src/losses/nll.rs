//! The negative log-likelihood (SFT) term that DPO's `sft` loss type, CPO (`cpo_alpha`) and
//! ORPO add to their pair losses, computed from a [`PreferenceBatch`]'s chosen (or NLL) tokens.

use burn::tensor::Tensor;

use super::preference::PreferenceBatch;
use crate::error::{Error, Result};
use crate::reduce::{MeanDenominator, Normalizer, masked_mean_with};

/// The NLL (SFT) term of a paired loss, in the two ways it can enter the loss.
///
/// - `nll_normalizer = None` (TRL): the batch token mean `-Σ logp / #tokens` is added to every
///   pair's term, so with `SequenceMean` the loss is `mean(pair losses) + nll`. This term
///   **couples the batch**: it is not exact under gradient accumulation or data parallelism
///   (the token count of one micro-batch is not the step's).
/// - `nll_normalizer = Some(n)`: the NLL is reduced on its own with the token normalizer `n`
///   (e.g. [`Normalizer::GlobalTokens`] with the step's token count) and added to the
///   normalized pair loss, so micro-batch losses sum exactly to the whole step's loss.
pub(crate) struct NllTerm {
    /// Per-pair NLL for `per_example` reporting: the batch mean (TRL mode) or each pair's own
    /// token mean (separate mode).
    pub per_pair: Tensor<1>,
    /// What goes into the pair terms that the pair normalizer reduces: the batch mean (TRL
    /// mode) or 0 (separate mode).
    pub in_pair_terms: Tensor<1>,
    /// The separately normalized NLL `[1]` to add to the loss (separate mode).
    pub separate: Option<Tensor<1>>,
    /// The batch token mean (the `nll_loss` metric in both modes).
    pub batch_mean: Tensor<1>,
}

/// Validates a loss config's `nll_normalizer`: it reduces per-token terms, so every variant
/// is allowed (a sequence-only kind does not exist), but its constants must be valid.
pub(crate) fn validate_nll_normalizer(normalizer: &Option<Normalizer>) -> Result<()> {
    match normalizer {
        Some(n) => n.validate(),
        None => Ok(()),
    }
}

/// The NLL (SFT) term of DPO `sft`, CPO (`cpo_alpha`) and ORPO, reduced as `normalizer`
/// says (see [`NllTerm`]).
pub(crate) fn nll_term(
    batch: &PreferenceBatch,
    needed_by: &str,
    normalizer: Option<Normalizer>,
) -> Result<NllTerm> {
    let batch_mean = nll(batch, needed_by)?;
    let Some(normalizer) = normalizer else {
        let per_pair = Tensor::zeros_like(&batch.chosen_logps).detach() + batch_mean.clone();
        return Ok(NllTerm {
            per_pair: per_pair.clone(),
            in_pair_terms: per_pair,
            separate: None,
            batch_mean,
        });
    };
    let tokens = batch
        .nll_tokens
        .as_ref()
        .or(batch.chosen_tokens.as_ref())
        .expect("checked by nll()");
    let nll = tokens.logps.clone().neg();
    let separate = normalizer.try_reduce_tokens(nll.clone(), tokens.mask.clone())?;
    Ok(NllTerm {
        per_pair: crate::reduce::masked_row_mean(nll, tokens.mask.clone()),
        in_pair_terms: Tensor::zeros_like(&batch.chosen_logps).detach(),
        separate: Some(separate),
        batch_mean: batch_mean.detach(),
    })
}

/// The token-mean negative log-likelihood over all tokens of the NLL tokens (or the chosen
/// tokens): `-Σ logp / max(#tokens, 1)`, a scalar `[1]` (PyTorch's `CrossEntropyLoss`
/// mean, except that a batch with no token gives 0, not NaN).
pub(crate) fn nll(batch: &PreferenceBatch, needed_by: &str) -> Result<Tensor<1>> {
    let tokens = batch.nll_tokens.as_ref().or(batch.chosen_tokens.as_ref()).ok_or_else(|| {
        Error::MissingInput {
            arg: "chosen_tokens",
            needed_by: format!("{needed_by} needs per-token chosen log-probs for its NLL term: build the batch with PreferenceBatch::from_tokens or set nll_tokens"),
        }
    })?;
    Ok(masked_mean_with(
        tokens.logps.clone().neg(),
        tokens.mask.clone(),
        None,
        MeanDenominator::AtLeastOne,
    ))
}
