//! The DPO loss types: each type's formula (its variant's doc) and its code (the arm of
//! [`DpoLossType::term`] with the same formula in its comment), TRL 1.16
//! `DPOTrainer._compute_loss`'s `if loss_type == ...` branches.
//!
//! Papers: DPO <https://arxiv.org/abs/2305.18290>, IPO <https://arxiv.org/abs/2310.12036>,
//! SLiC <https://arxiv.org/abs/2305.10425>, RSO <https://arxiv.org/abs/2309.06657>,
//! EXO <https://arxiv.org/abs/2402.00856>, NCA <https://arxiv.org/abs/2402.05369>,
//! robust DPO <https://arxiv.org/abs/2403.00409>, BCO <https://arxiv.org/abs/2404.04656>,
//! SPPO <https://arxiv.org/abs/2405.00675>, AOT <https://arxiv.org/abs/2406.05882>,
//! APO <https://arxiv.org/abs/2408.06266>, DiscoPOP <https://arxiv.org/abs/2406.08414>,
//! f-divergences <https://arxiv.org/abs/2309.16240>.
//!
//! Golden value: `fixtures/dpo/hinge_beta0.1.json` (TRL `_compute_loss`, `loss_type =
//! ["hinge"]`, `beta = 0.1`, float64) gives `loss = 1.1472536221900986`.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::DpoLoss;
use crate::losses::stable::{log_sigmoid, relu, sigmoid};
use crate::reduce::{MeanDenominator, mean_from_sum};

/// One DPO-family loss type (TRL's `loss_type` names, JSON as in TRL: `"sigmoid"`, `"exo_pair"`, ...).
///
/// Notation (per pair): `c, r` policy log-probs of the chosen / rejected completion (summed
/// over tokens), `c₀, r₀` the reference's, `Δc = c - c₀`, `Δr = r - r₀`; `s(·)` the
/// f-divergence score ([`FDivergenceType`], identity by default), `δ = s(Δc) - s(Δr)`;
/// `|y|` completion token counts (clamped to >= 1); `ε` = `label_smoothing`, `β` = `beta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// DPO: `-log σ(βδ)`. With `cdpo_label_smoothing = ε > 0`, cDPO:
    /// `-(1-ε) log σ(βδ) - ε log σ(-βδ)` (torchtune / OpenRLHF; TRL 1.16 has no smoothing here).
    Sigmoid,
    /// SLiC / RSO hinge: `max(0, 1 - βδ)` (`β` = 1 / margin).
    Hinge,
    /// IPO, length-normalized as in TRL: `(s(Δc)/|y_w| - s(Δr)/|y_l| - 1/(2β))²`.
    /// Needs token counts.
    Ipo,
    /// EXO (pair): `σ(βδ)(log σ(βδ) - log(1-ε)) + σ(-βδ)(log σ(-βδ) - log ε)`, `0 < ε < 1`.
    ExoPair,
    /// NCA (pair): `-log σ(β s(Δc)) - ½ log σ(-β s(Δc)) - ½ log σ(-β s(Δr))`.
    NcaPair,
    /// Robust DPO: `(-(1-ε) log σ(βδ) + ε log σ(-βδ)) / (1 - 2ε)`, `0 <= ε < ½`.
    Robust,
    /// BCO (pair, TRL 1.16 form without the running-mean shift): `-log σ(βΔc) - log σ(-βΔr)`.
    BcoPair,
    /// SPPO (hard labels): `(Δc - 1/(2β))² + (Δr + 1/(2β))²`.
    SppoHard,
    /// AOT (paired): `d = sort_B(c - r) - sort_B(c₀ - r₀)`, `-(1-ε) log σ(βd) - ε log σ(-βd)`.
    /// **Batch-coupled**: the batch is sorted, so the loss of a pair depends on the others.
    Aot,
    /// AOT (unpaired): `d = sort_B(Δc) - sort_B(Δr)`, then as [`Aot`](Self::Aot). Batch-coupled.
    AotUnpaired,
    /// APO-zero: `(1 - σ(βΔc)) + σ(βΔr)`.
    ApoZero,
    /// APO-down: `σ(βΔc) + (1 - σ(βδ))`.
    ApoDown,
    /// DiscoPOP (LRML): `ℓ = βδ`, `m = σ(ℓ/τ)`: `(1-m)(-log σ(ℓ)) + m e^{-ℓ}` (`τ` = `discopop_tau`).
    Discopop,
    /// SFT: token-mean NLL of the chosen completions over the whole batch, the same scalar for
    /// every pair (TRL's convention). Weigh it with `loss_weights` (MPO, RPO).
    Sft,
    /// Length-normalized DPO with a reference: `-log σ(β(s(Δc)/|y_w| - s(Δr)/|y_l|))`.
    /// Needs token counts.
    SigmoidNorm,
}

impl DpoLossType {
    /// Every loss type, in TRL's order.
    pub const ALL: [DpoLossType; 15] = [
        DpoLossType::Sigmoid,
        DpoLossType::Hinge,
        DpoLossType::Ipo,
        DpoLossType::ExoPair,
        DpoLossType::NcaPair,
        DpoLossType::Robust,
        DpoLossType::BcoPair,
        DpoLossType::SppoHard,
        DpoLossType::Aot,
        DpoLossType::AotUnpaired,
        DpoLossType::ApoZero,
        DpoLossType::ApoDown,
        DpoLossType::Discopop,
        DpoLossType::Sft,
        DpoLossType::SigmoidNorm,
    ];

    /// Whether TRL 1.16 accepts a non-default f-divergence with this loss type.
    pub fn accepts_f_divergence(self) -> bool {
        matches!(
            self,
            DpoLossType::Sigmoid
                | DpoLossType::SigmoidNorm
                | DpoLossType::Hinge
                | DpoLossType::Ipo
                | DpoLossType::ExoPair
                | DpoLossType::Robust
                | DpoLossType::Discopop
                | DpoLossType::Sft
        )
    }

    /// Whether this loss type reads `label_smoothing`.
    pub fn reads_label_smoothing(self) -> bool {
        matches!(
            self,
            DpoLossType::Robust
                | DpoLossType::ExoPair
                | DpoLossType::Aot
                | DpoLossType::AotUnpaired
        )
    }

    /// Whether the loss of one pair depends on the other pairs of the batch (sorting).
    pub fn is_batch_coupled(self) -> bool {
        matches!(self, DpoLossType::Aot | DpoLossType::AotUnpaired)
    }

    pub(super) fn needs_token_counts(self) -> bool {
        matches!(self, DpoLossType::Ipo | DpoLossType::SigmoidNorm)
    }
}

/// The f-divergence that maps each log-ratio `Δ` to a score `s(Δ)` (TRL 1.16 forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FDivergenceType {
    /// Standard DPO: `s(Δ) = Δ`.
    ReverseKl,
    /// `s(Δ) = 1 - e^{-Δ}`.
    ForwardKl,
    /// Jensen-Shannon: `s(Δ) = log 2 + log σ(Δ)`.
    JsDivergence,
    /// `s(Δ) = (e^{(α-1)Δ} - 1)/(α-1)` with `α` = `f_alpha_divergence_coef`; the exponent is
    /// clamped at 80 (11 in f16) as in TRL; `|α - 1| < 1e-6` falls back to reverse KL.
    AlphaDivergence,
}

/// What a loss type's per-pair term reads (all `[B]`).
pub(super) struct DpoTerms {
    /// Policy sequence log-probs (after LD-DPO weighting): chosen `c`, rejected `r`.
    pub chosen: Tensor<1>,
    pub rejected: Tensor<1>,
    /// Reference sequence log-probs `c₀`, `r₀`.
    pub ref_chosen: Tensor<1>,
    pub ref_rejected: Tensor<1>,
    /// Log-ratios `Δc = c - c₀`, `Δr = r - r₀`.
    pub dc: Tensor<1>,
    pub dr: Tensor<1>,
    /// f-divergence scores `s(Δc)`, `s(Δr)` and `δ = s(Δc) - s(Δr)`.
    pub sc: Tensor<1>,
    pub sr: Tensor<1>,
    pub delta: Tensor<1>,
    /// Completion token counts `|y_w|`, `|y_l|` (a count of 0 divides as 1), when a type needs them.
    pub counts: Option<(Tensor<1>, Tensor<1>)>,
    /// The `sft` term per pair, when configured.
    pub nll: Option<Tensor<1>>,
    /// Soft labels `P(chosen better)` per pair (the batch's `preference_probs`).
    pub preference_probs: Option<Tensor<1>>,
}

impl DpoTerms {
    /// `s(Δc)/|y_w| - s(Δr)/|y_l|` (ipo, sigmoid_norm).
    fn length_normalized_margin(&self) -> Tensor<1> {
        let (cc, cr) = self
            .counts
            .clone()
            .expect("counts computed for ipo / sigmoid_norm");
        let per_token =
            |score: Tensor<1>, count| mean_from_sum(score, count, MeanDenominator::AtLeastOne);
        per_token(self.sc.clone(), cc) - per_token(self.sr.clone(), cr)
    }
}

impl DpoLossType {
    /// The per-pair term `ℓ` of this loss type `[B]`, formula by formula as the variant docs.
    pub(super) fn term(self, t: &DpoTerms, p: &DpoLoss) -> Tensor<1> {
        let beta = p.beta;
        match self {
            // -(1-ε) log σ(βδ) - ε log σ(-βδ), ε = cdpo_label_smoothing (0: DPO)
            // With soft labels p: -p log σ(βδ) - (1-p) log σ(-βδ).
            DpoLossType::Sigmoid => match &t.preference_probs {
                Some(probs) => soft_sigmoid(t.delta.clone().mul_scalar(beta), probs.clone()),
                None => smoothed_sigmoid(t.delta.clone().mul_scalar(beta), p.cdpo_label_smoothing),
            },
            // max(0, 1 - βδ)
            DpoLossType::Hinge => relu(t.delta.clone().mul_scalar(-beta).add_scalar(1.0)),
            // (s(Δc)/|y_w| - s(Δr)/|y_l| - 1/(2β))²
            DpoLossType::Ipo => t
                .length_normalized_margin()
                .sub_scalar(1.0 / (2.0 * beta))
                .square(),
            // σ(βδ)(log σ(βδ) - log(1-ε)) + σ(-βδ)(log σ(-βδ) - log ε)
            DpoLossType::ExoPair => {
                let eps = p.label_smoothing;
                let x = t.delta.clone().mul_scalar(beta);
                let log_qw = log_sigmoid(x.clone());
                let log_ql = log_sigmoid(x.neg());
                log_qw.clone().exp() * log_qw.sub_scalar((-eps).ln_1p())
                    + log_ql.clone().exp() * log_ql.sub_scalar(eps.ln())
            }
            // -log σ(β s(Δc)) - ½ log σ(-β s(Δc)) - ½ log σ(-β s(Δr))
            DpoLossType::NcaPair => {
                let xc = t.sc.clone().mul_scalar(beta);
                let xr = t.sr.clone().mul_scalar(beta);
                log_sigmoid(xc.clone()).neg()
                    - log_sigmoid(xc.neg()).mul_scalar(0.5)
                    - log_sigmoid(xr.neg()).mul_scalar(0.5)
            }
            // (-(1-ε) log σ(βδ) + ε log σ(-βδ)) / (1 - 2ε)
            DpoLossType::Robust => {
                let eps = p.label_smoothing;
                let x = t.delta.clone().mul_scalar(beta);
                (log_sigmoid(x.clone()).mul_scalar(-(1.0 - eps))
                    + log_sigmoid(x.neg()).mul_scalar(eps))
                .mul_scalar(1.0 / (1.0 - 2.0 * eps))
            }
            // -log σ(β s(Δc)) - log σ(-β s(Δr))
            DpoLossType::BcoPair => {
                log_sigmoid(t.sc.clone().mul_scalar(beta)).neg()
                    - log_sigmoid(t.sr.clone().mul_scalar(-beta))
            }
            // (s(Δc) - 1/(2β))² + (s(Δr) + 1/(2β))²
            DpoLossType::SppoHard => {
                let half = 0.5 / beta;
                t.sc.clone().sub_scalar(half).square() + t.sr.clone().add_scalar(half).square()
            }
            // d = sort_B(c - r) - sort_B(c₀ - r₀); -(1-ε) log σ(βd) - ε log σ(-βd)
            DpoLossType::Aot => {
                let policy = sorted(t.chosen.clone() - t.rejected.clone());
                let reference = sorted(t.ref_chosen.clone() - t.ref_rejected.clone());
                smoothed_sigmoid((policy - reference).mul_scalar(beta), p.label_smoothing)
            }
            // d = sort_B(Δc) - sort_B(Δr); as aot
            DpoLossType::AotUnpaired => {
                let x = (sorted(t.dc.clone()) - sorted(t.dr.clone())).mul_scalar(beta);
                smoothed_sigmoid(x, p.label_smoothing)
            }
            // (1 - σ(βΔc)) + σ(βΔr)
            DpoLossType::ApoZero => {
                sigmoid(t.dc.clone().mul_scalar(-beta)) + sigmoid(t.dr.clone().mul_scalar(beta))
            }
            // σ(βΔc) + (1 - σ(βδ))
            DpoLossType::ApoDown => {
                sigmoid(t.dc.clone().mul_scalar(beta)) + sigmoid(t.delta.clone().mul_scalar(-beta))
            }
            // ℓ = βδ, m = σ(ℓ/τ): (1-m)(-log σ(ℓ)) + m e^{-ℓ}
            DpoLossType::Discopop => {
                let tau = p.discopop_tau;
                let l = t.delta.clone().mul_scalar(beta);
                // (1 - m) = σ(-ℓ/τ); m e^{-ℓ} = exp(log σ(ℓ/τ) - ℓ), finite where the
                // product is (ℓ ≪ 0 with τ < 1), unlike the naive σ(ℓ/τ) · e^{-ℓ}.
                let logistic =
                    sigmoid(l.clone().mul_scalar(-1.0 / tau)) * log_sigmoid(l.clone()).neg();
                let exponential = (log_sigmoid(l.clone().mul_scalar(1.0 / tau)) - l).exp();
                logistic + exponential
            }
            // token-mean NLL of the chosen completions (the same scalar for every pair)
            DpoLossType::Sft => t.nll.clone().expect("nll computed for the sft type"),
            // -log σ(β(s(Δc)/|y_w| - s(Δr)/|y_l|))
            DpoLossType::SigmoidNorm => {
                log_sigmoid(t.length_normalized_margin().mul_scalar(beta)).neg()
            }
        }
    }
}

/// `-(1-ε) log σ(x) - ε log σ(-x)` (plain `-log σ(x)` at ε = 0).
fn smoothed_sigmoid(x: Tensor<1>, eps: f64) -> Tensor<1> {
    if eps == 0.0 {
        log_sigmoid(x).neg()
    } else {
        log_sigmoid(x.clone()).mul_scalar(-(1.0 - eps)) - log_sigmoid(x.neg()).mul_scalar(eps)
    }
}

/// `-p log σ(x) - (1 - p) log σ(-x)` with a per-pair target probability `p` (a label of
/// exactly 1 gives `-log σ(x)` exactly: the second term is multiplied by 0).
pub(crate) fn soft_sigmoid(x: Tensor<1>, p: Tensor<1>) -> Tensor<1> {
    let q = p.clone().neg().add_scalar(1.0);
    (log_sigmoid(x.clone()) * p + log_sigmoid(x.neg()) * q).neg()
}

/// Ascending sort along the batch, differentiable (the gradient follows each element).
fn sorted(x: Tensor<1>) -> Tensor<1> {
    let (_, indices) = x.clone().detach().sort_with_indices(0);
    x.gather(0, indices)
}
