//! The input of every paired preference loss ([`DpoLoss`](super::DpoLoss),
//! [`CpoLoss`](super::CpoLoss), [`OrpoLoss`](super::OrpoLoss)).

use burn::tensor::Tensor;

use super::paired::PairedLayout;
use crate::error::{Error, Result, check_dtype_like, check_same_shape};
use crate::logps::GatheredLogps;

/// A batch of `B` preference pairs: what the paired losses read, and nothing hidden.
///
/// Build it from sequence log-probs you already have ([`new`](Self::new)) or from the
/// token-level path ([`from_tokens`](Self::from_tokens), which also fills the token counts and
/// keeps the per-token log-probs for the losses that need them), then add what your loss
/// needs with the `with_*` methods. Which loss reads which field:
///
/// | field | read by |
/// |---|---|
/// | `chosen_logps`, `rejected_logps` (summed over completion tokens) | every loss |
/// | `reference_*_logps` | DPO family (absent = reference-free: `c₀ = r₀ = 0`) |
/// | `*_token_counts` | DPO `ipo` / `sigmoid_norm`; CPO `ipo` / `simpo`; ORPO (averaged log-probs) |
/// | `chosen_tokens`, `rejected_tokens` | LD-DPO (`ld_alpha`), WPO (`use_weighting`), and the NLL/SFT term when `nll_tokens` is absent |
/// | `nll_tokens` | DPO `sft`, CPO/RPO/ORPO NLL term, when it runs over other tokens than the completion (ORPO includes the prompt) |
/// | `*_log_sum_sq_probs` | WPO (`use_weighting`) |
///
/// # Shapes
/// - `chosen_logps`, `rejected_logps`, `reference_*`, `*_token_counts`: `[B]`
/// - `chosen_tokens`: `[B, Tc]`; `rejected_tokens`: `[B, Tr]`; `nll_tokens`: `[B, Tn]`
/// - `chosen_log_sum_sq_probs`: `[B, Tc]`; `rejected_log_sum_sq_probs`: `[B, Tr]`
#[derive(Debug, Clone)]
pub struct PreferenceBatch {
    /// Policy log-probs of the chosen completions, summed over completion tokens: `[B]`.
    pub chosen_logps: Tensor<1>,
    /// Policy log-probs of the rejected completions, summed over completion tokens: `[B]`.
    pub rejected_logps: Tensor<1>,
    /// Reference-model log-probs of the chosen completions: `[B]` (constants; detach them or
    /// compute them on a non-autodiff device / `model.valid()`).
    pub ref_chosen_logps: Option<Tensor<1>>,
    /// Reference-model log-probs of the rejected completions: `[B]`.
    pub ref_rejected_logps: Option<Tensor<1>>,
    /// Completion token count of each chosen sequence (float): `[B]`.
    pub chosen_token_counts: Option<Tensor<1>>,
    /// Completion token count of each rejected sequence (float): `[B]`.
    pub rejected_token_counts: Option<Tensor<1>>,
    /// Per-token policy log-probs of the chosen completions with their mask.
    pub chosen_tokens: Option<GatheredLogps>,
    /// Per-token policy log-probs of the rejected completions with their mask.
    pub rejected_tokens: Option<GatheredLogps>,
    /// Tokens the NLL / SFT term averages over, if not `chosen_tokens`.
    pub nll_tokens: Option<GatheredLogps>,
    /// Per-token `log Σ_v p_v²` of the chosen completions (WPO): `[B, Tc]`.
    pub chosen_log_sum_sq_probs: Option<Tensor<2>>,
    /// Per-token `log Σ_v p_v²` of the rejected completions (WPO): `[B, Tr]`.
    pub rejected_log_sum_sq_probs: Option<Tensor<2>>,
    /// Soft labels: the probability that the chosen completion is the better one, per pair
    /// `[B]` in `[0, 1]` (an AI judge's `P(A better than B)`, see
    /// [`ModelJudge`](crate::generate::ModelJudge)). Read by the `sigmoid` DPO loss type:
    /// `-p log σ(βδ) - (1 - p) log σ(-βδ)` (TRL's constant `label_smoothing` `ε` is `p = 1 -
    /// ε`); `None` = hard labels (`p = 1`).
    pub preference_probs: Option<Tensor<1>>,
}

impl PreferenceBatch {
    /// A batch from summed sequence log-probs `[B]`; everything else absent.
    pub fn new(chosen_logps: Tensor<1>, rejected_logps: Tensor<1>) -> Self {
        Self {
            chosen_logps,
            rejected_logps,
            ref_chosen_logps: None,
            ref_rejected_logps: None,
            chosen_token_counts: None,
            rejected_token_counts: None,
            chosen_tokens: None,
            rejected_tokens: None,
            nll_tokens: None,
            chosen_log_sum_sq_probs: None,
            rejected_log_sum_sq_probs: None,
            preference_probs: None,
        }
    }

    /// The batch with soft labels (see [`preference_probs`](Self::preference_probs)).
    pub fn with_preference_probs(mut self, probs: Tensor<1>) -> Self {
        self.preference_probs = Some(probs);
        self
    }

    crate::error::panicking! {
        /// A batch from the token-level path: the sequence log-probs are the masked sums, the
        /// token counts the mask sums, and the per-token log-probs are kept (for LD-DPO, WPO and
        /// the NLL/SFT term).
        pub fn from_tokens(
            chosen: GatheredLogps,
            rejected: GatheredLogps,
        ) -> Self = Self::try_from_tokens;
    }

    /// Non-panicking form of [`from_tokens`](Self::from_tokens): [`Error::Shape`] naming
    /// `chosen_tokens.mask` / `rejected_tokens.mask` when a mask's shape differs from its
    /// log-probs'.
    pub fn try_from_tokens(chosen: GatheredLogps, rejected: GatheredLogps) -> Result<Self> {
        for (arg, t) in [
            ("chosen_tokens.mask", &chosen),
            ("rejected_tokens.mask", &rejected),
        ] {
            check_same_shape(arg, &t.mask.dims(), &t.logps.dims(), "the token log-probs")?;
        }
        let chosen_logps = chosen
            .try_reduce(crate::logps::SequenceReduction::Sum)
            .map_err(|e| rename_arg(e, "chosen_tokens.logps"))?;
        let rejected_logps = rejected
            .try_reduce(crate::logps::SequenceReduction::Sum)
            .map_err(|e| rename_arg(e, "rejected_tokens.logps"))?;
        let mut batch = Self::new(chosen_logps, rejected_logps);
        batch.chosen_token_counts = Some(chosen.token_counts());
        batch.rejected_token_counts = Some(rejected.token_counts());
        batch.chosen_tokens = Some(chosen);
        batch.rejected_tokens = Some(rejected);
        Ok(batch)
    }

    crate::error::panicking! {
        /// A batch from **one stacked forward** over `[2B]` rows, chosen rows first (the layout
        /// TRL's `concatenated_forward` and the reward loss's `forward_stacked` use): rows `0..B`
        /// are the chosen completions, rows `B..2B` the rejected ones.
        pub fn from_stacked(stacked: GatheredLogps) -> Self = Self::try_from_stacked;
    }

    /// Non-panicking form of [`from_stacked`](Self::from_stacked): an odd or zero row count
    /// is [`Error::Shape`] naming `stacked`; then as [`try_from_tokens`](Self::try_from_tokens).
    pub fn try_from_stacked(stacked: GatheredLogps) -> Result<Self> {
        let layout = PairedLayout::try_from_dims("stacked", &stacked.logps.dims())?;
        let (chosen, rejected) = layout.split_tokens(&stacked);
        Self::try_from_tokens(chosen, rejected)
    }

    /// Adds the reference model's sequence log-probs `[B]` (detached here, and moved to the
    /// policy's device: reference log-probs computed on `model.valid()`'s inner device may be
    /// passed directly). Shapes and dtypes are checked by the loss's `try_forward` (or here,
    /// with [`try_with_ref_logps`](Self::try_with_ref_logps)).
    pub fn with_ref_logps(mut self, chosen: Tensor<1>, rejected: Tensor<1>) -> Self {
        let device = self.chosen_logps.device();
        self.ref_chosen_logps = Some(onto_device(chosen.detach(), &device));
        self.ref_rejected_logps = Some(onto_device(rejected.detach(), &device));
        self
    }

    /// [`with_ref_logps`](Self::with_ref_logps) that checks at once: [`Error::Shape`] when a
    /// reference vector is not `[B]`, [`Error::DType`] when its dtype is not the policy
    /// log-probs' (cast it: `reference.cast(FloatDType::F32)`).
    pub fn try_with_ref_logps(self, chosen: Tensor<1>, rejected: Tensor<1>) -> Result<Self> {
        let b = self.chosen_logps.dims();
        for (arg, t) in [
            ("ref_chosen_logps", &chosen),
            ("ref_rejected_logps", &rejected),
        ] {
            check_same_shape(arg, &t.dims(), &b, "chosen_logps")?;
            check_dtype_like(arg, t, "chosen_logps", &self.chosen_logps)?;
        }
        Ok(self.with_ref_logps(chosen, rejected))
    }

    /// Adds reference log-probs from one stacked reference forward (`[2B]`, chosen first).
    ///
    /// # Panics
    /// On the errors of [`try_with_stacked_ref_logps`](Self::try_with_stacked_ref_logps).
    pub fn with_stacked_ref_logps(self, stacked: Tensor<1>) -> Self {
        crate::error::unwrap_or_panic(self.try_with_stacked_ref_logps(stacked))
    }

    /// Non-panicking form of [`with_stacked_ref_logps`](Self::with_stacked_ref_logps):
    /// [`Error::Shape`] naming `stacked_reference` unless it is `[2B]`.
    pub fn try_with_stacked_ref_logps(self, stacked: Tensor<1>) -> Result<Self> {
        let layout = PairedLayout::new(self.len());
        layout.check_rows("stacked_reference", &stacked.dims())?;
        let (chosen, rejected) = layout.split(stacked);
        self.try_with_ref_logps(chosen, rejected)
    }

    /// Adds per-sequence completion token counts `[B]` (float, in the log-probs' dtype).
    pub fn with_token_counts(mut self, chosen: Tensor<1>, rejected: Tensor<1>) -> Self {
        self.chosen_token_counts = Some(chosen);
        self.rejected_token_counts = Some(rejected);
        self
    }

    /// Sets the tokens the NLL / SFT term averages over (default: `chosen_tokens`).
    pub fn with_nll_tokens(mut self, tokens: GatheredLogps) -> Self {
        self.nll_tokens = Some(tokens);
        self
    }

    /// Adds the per-token `log Σ_v p_v²` WPO needs (`[B, Tc]`, `[B, Tr]`, aligned with the
    /// token log-probs). Compute it from logits `z` as `logsumexp(2z) - 2 logsumexp(z)`.
    pub fn with_log_sum_sq_probs(mut self, chosen: Tensor<2>, rejected: Tensor<2>) -> Self {
        self.chosen_log_sum_sq_probs = Some(chosen.detach());
        self.rejected_log_sum_sq_probs = Some(rejected.detach());
        self
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.chosen_logps.dims()[0]
    }

    /// True when the batch has no pair.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every present field against `B` (and the token fields against each other).
    pub fn validate(&self) -> Result<()> {
        let b = self.chosen_logps.dims();
        if b[0] == 0 {
            return Err(Error::Empty {
                arg: "chosen_logps",
                what: "the batch has no pair".into(),
            });
        }
        check_same_shape(
            "rejected_logps",
            &self.rejected_logps.dims(),
            &b,
            "chosen_logps",
        )?;
        let vectors = [
            ("ref_chosen_logps", &self.ref_chosen_logps),
            ("ref_rejected_logps", &self.ref_rejected_logps),
            ("chosen_token_counts", &self.chosen_token_counts),
            ("rejected_token_counts", &self.rejected_token_counts),
            ("preference_probs", &self.preference_probs),
        ];
        check_dtype_like(
            "rejected_logps",
            &self.rejected_logps,
            "chosen_logps",
            &self.chosen_logps,
        )?;
        for (arg, t) in vectors {
            if let Some(t) = t {
                check_same_shape(arg, &t.dims(), &b, "chosen_logps")?;
                check_dtype_like(arg, t, "chosen_logps", &self.chosen_logps)?;
                crate::error::check_finite(t, arg)?;
            }
        }
        crate::error::check_finite(&self.chosen_logps, "chosen_logps")?;
        crate::error::check_finite(&self.rejected_logps, "rejected_logps")?;
        if let Some(p) = &self.preference_probs {
            crate::error::check_probabilities(p, "preference_probs")?;
        }
        if self.ref_chosen_logps.is_some() != self.ref_rejected_logps.is_some() {
            let missing = if self.ref_chosen_logps.is_none() {
                "ref_chosen_logps"
            } else {
                "ref_rejected_logps"
            };
            return Err(Error::MissingInput {
                arg: missing,
                needed_by: "the reference log-probs come in pairs: give both ref_chosen_logps and ref_rejected_logps, or neither".into(),
            });
        }
        let tokens = [
            ("chosen_tokens", &self.chosen_tokens),
            ("rejected_tokens", &self.rejected_tokens),
            ("nll_tokens", &self.nll_tokens),
        ];
        for (arg, t) in tokens {
            if let Some(t) = t {
                let dims = t.logps.dims();
                check_same_shape(format_mask(arg), &t.mask.dims(), &dims, arg)?;
                check_dtype_like(arg, &t.logps, "chosen_logps", &self.chosen_logps)?;
                crate::error::check_finite_masked(&t.logps, &t.mask, arg)?;
                if dims[0] != b[0] {
                    return Err(Error::shape(
                        arg,
                        format!("[B, T] with B = {}", b[0]),
                        &dims,
                    ));
                }
            }
        }
        let sq = [
            (
                "chosen_log_sum_sq_probs",
                &self.chosen_log_sum_sq_probs,
                &self.chosen_tokens,
            ),
            (
                "rejected_log_sum_sq_probs",
                &self.rejected_log_sum_sq_probs,
                &self.rejected_tokens,
            ),
        ];
        for (arg, t, tokens) in sq {
            if let Some(t) = t {
                check_dtype_like(arg, t, "chosen_logps", &self.chosen_logps)?;
                crate::error::check_finite(t, arg)?;
            }
            if let (Some(t), Some(tokens)) = (t, tokens) {
                check_same_shape(arg, &t.dims(), &tokens.logps.dims(), "the token log-probs")?;
            }
        }
        Ok(())
    }

    /// Reference log-probs, or zeros (reference-free) when absent.
    pub(crate) fn ref_logps_or_zeros(&self) -> (Tensor<1>, Tensor<1>) {
        match (&self.ref_chosen_logps, &self.ref_rejected_logps) {
            (Some(c), Some(r)) => (c.clone(), r.clone()),
            _ => (
                Tensor::zeros_like(&self.chosen_logps).detach(),
                Tensor::zeros_like(&self.rejected_logps).detach(),
            ),
        }
    }

    /// Token counts, from the explicit field or the token masks.
    pub(crate) fn token_counts(&self, needed_by: &str) -> Result<(Tensor<1>, Tensor<1>)> {
        let chosen = self
            .chosen_token_counts
            .clone()
            .or_else(|| self.chosen_tokens.as_ref().map(GatheredLogps::token_counts));
        let rejected = self.rejected_token_counts.clone().or_else(|| {
            self.rejected_tokens
                .as_ref()
                .map(GatheredLogps::token_counts)
        });
        match (chosen, rejected) {
            (Some(c), Some(r)) => Ok((c, r)),
            _ => Err(Error::MissingInput {
                arg: "chosen_token_counts, rejected_token_counts",
                needed_by: format!(
                    "{needed_by} needs per-sequence token counts: set them with PreferenceBatch::with_token_counts (or build the batch with PreferenceBatch::from_tokens)"
                ),
            }),
        }
    }

    /// The per-token chosen and rejected log-probs, or an error naming the feature.
    pub(crate) fn tokens(&self, needed_by: &str) -> Result<(&GatheredLogps, &GatheredLogps)> {
        match (&self.chosen_tokens, &self.rejected_tokens) {
            (Some(c), Some(r)) => Ok((c, r)),
            _ => Err(Error::MissingInput {
                arg: "chosen_tokens, rejected_tokens",
                needed_by: format!(
                    "{needed_by} needs per-token log-probs: build the batch with PreferenceBatch::from_tokens"
                ),
            }),
        }
    }
}

/// `t` on `device` (a no-op when it is already there).
fn onto_device(t: Tensor<1>, device: &burn::tensor::Device) -> Tensor<1> {
    if &t.device() == device {
        t
    } else {
        t.to_device(device)
    }
}

/// A non-finite error of an inner call re-labelled with the caller's argument name.
pub(crate) fn rename_arg(error: Error, arg: &'static str) -> Error {
    match error {
        Error::NonFinite { .. } => Error::NonFinite { arg },
        other => other,
    }
}

fn format_mask(arg: &'static str) -> &'static str {
    match arg {
        "chosen_tokens" => "chosen_tokens.mask",
        "rejected_tokens" => "rejected_tokens.mask",
        _ => "nll_tokens.mask",
    }
}
