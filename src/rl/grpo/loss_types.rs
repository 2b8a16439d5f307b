//! One small function per GRPO loss type: the per-token loss, the aggregation and the clip
//! metrics, dispatched from [`GrpoLossType`] (TRL 1.16 `GRPOTrainer._compute_loss`, the
//! `if self.loss_type == ...` branches).
//!
//! | loss type | per-token loss | aggregation (then / grad-accum steps) |
//! | --- | --- | --- |
//! | grpo | [`clipped`] | `SequenceMean` |
//! | bnpo | [`clipped`] | `TokenMean` |
//! | dr_grpo | [`clipped`] | `Constant(B * max_completion_length)` |
//! | dapo | [`clipped`] | `GlobalTokens(num_items_in_batch / num_processes * gas / steps_per_generation)`, no division |
//! | cispo | [`cispo`] | as dapo |
//! | sapo | [`sapo`] | `SequenceMean` |
//! | luspo | [`clipped`] | `Constant(B)`: mean over sequences of the token sum |
//! | vespo | [`vespo`] | as dapo |
//!
//! Papers: DAPO <https://arxiv.org/abs/2503.14476>, Dr. GRPO
//! <https://arxiv.org/abs/2503.20783>, CISPO (MiniMax-M1) <https://arxiv.org/abs/2506.13585>.

use burn::tensor::{Bool, Tensor};

use super::{GrpoLossConfig, GrpoLossType};
use crate::error::Error;
use crate::losses::Metrics;
use crate::reduce::{Normalizer, mask_like, zero_masked};

use super::stats::{global_masked_mean, seq_mean_extreme};

/// What every per-token loss formula reads (all `[B, C]`, advantages `[B, 1]` or `[B, C]`).
pub(super) struct Terms {
    /// Policy log-probs (differentiable).
    pub logps: Tensor<2>,
    /// `logps - old` (token level, before any sequence averaging).
    pub log_ratio: Tensor<2>,
    /// The importance ratio `rho` (`coef_1` in TRL), token or sequence level.
    pub coef_1: Tensor<2>,
    /// Detached advantages.
    pub advantages: Tensor<2>,
    /// Valid tokens.
    pub mask: Tensor<2, Bool>,
    /// The sampler importance-sampling correction, if any.
    pub importance_sampling_ratio: Option<Tensor<2>>,
}

impl GrpoLossType {
    /// The per-token loss of this type. The clipped types with `delta` set also cap
    /// `t.coef_1` (TRL reassigns `coef_1`, and the clip metrics read the capped ratio).
    pub(super) fn per_token_loss(
        self,
        t: &mut Terms,
        c: &GrpoLossConfig,
        eps_high: f64,
        metrics: &mut Metrics,
    ) -> Tensor<2> {
        match self {
            GrpoLossType::Grpo
            | GrpoLossType::Bnpo
            | GrpoLossType::DrGrpo
            | GrpoLossType::Dapo
            | GrpoLossType::Luspo => clipped(t, c.epsilon, eps_high, c.delta),
            GrpoLossType::Cispo => cispo(t, eps_high),
            GrpoLossType::Sapo => sapo(t, c.sapo_temperature_pos, c.sapo_temperature_neg),
            GrpoLossType::Vespo => vespo(t, c, metrics),
        }
    }

    /// Whether the sampler importance ratio multiplies the per-token loss (VESPO folds it into
    /// its gamma weight instead).
    pub(super) fn multiplies_is_ratio(self) -> bool {
        self != GrpoLossType::Vespo
    }

    /// The loss type's normalizer and the divisor applied after it (TRL's aggregation).
    pub(super) fn aggregation(
        self,
        c: &GrpoLossConfig,
        batch_size: usize,
        num_items_in_batch: Option<f64>,
    ) -> crate::Result<(Normalizer, f64)> {
        let gas = c.gradient_accumulation_steps as f64;
        Ok(match self {
            GrpoLossType::Grpo | GrpoLossType::Sapo => (Normalizer::SequenceMean, gas),
            GrpoLossType::Bnpo => (Normalizer::TokenMean, gas),
            GrpoLossType::DrGrpo => (
                Normalizer::Constant((batch_size * c.max_completion_length) as f64),
                gas,
            ),
            GrpoLossType::Dapo | GrpoLossType::Cispo | GrpoLossType::Vespo => {
                let n = num_items_in_batch.ok_or_else(|| Error::MissingInput {
                    arg: "num_items_in_batch",
                    needed_by: format!(
                        "loss_type {self:?} normalizes by the step's token count: set GrpoLossInput::with_num_items_in_batch"
                    ),
                })?;
                let global =
                    n.max(1.0) / c.num_processes as f64 * gas / c.steps_per_generation as f64;
                (Normalizer::GlobalTokens(global), 1.0)
            }
            // mean over sequences of the masked token sum: sum / B
            GrpoLossType::Luspo => (Normalizer::Constant(batch_size as f64), gas),
        })
    }

    /// The normalizer of one optimizer step over `rows` sequences holding `tokens` valid
    /// tokens, for an update loop that sums micro-batch losses
    /// ([`ppo_update`](crate::rl::ppo_update)): TRL's aggregation of this loss type with one
    /// micro-batch per step (`gradient_accumulation_steps = steps_per_generation = 1`), written
    /// so that each micro-batch's share adds up exactly. `dapo`, `bnpo`, `cispo`, `vespo`:
    /// the step's token count; `grpo`, `sapo`: the mean over sequences of per-sequence
    /// means; `dr_grpo`: `rows x max_completion_length`; `luspo`: `rows`.
    pub(crate) fn step_normalizer(self, c: &GrpoLossConfig, tokens: f64, rows: f64) -> Normalizer {
        let rows = rows.max(1.0);
        match self {
            GrpoLossType::Grpo | GrpoLossType::Sapo => Normalizer::GlobalSequences(rows),
            GrpoLossType::DrGrpo => Normalizer::Constant(rows * c.max_completion_length as f64),
            GrpoLossType::Luspo => Normalizer::Constant(rows),
            GrpoLossType::Dapo | GrpoLossType::Bnpo | GrpoLossType::Cispo | GrpoLossType::Vespo => {
                Normalizer::GlobalTokens(tokens.max(1.0))
            }
        }
    }

    /// The clip metrics this type logs (TRL names): `clip_ratio/*` for the clipped types,
    /// `cispo_clip_ratio` for CISPO, none for SAPO / VESPO.
    pub(super) fn clip_metrics(
        self,
        t: &Terms,
        eps_low: f64,
        eps_high: f64,
        metrics: &mut Metrics,
    ) {
        let (coef_1, adv, mask) = (&t.coef_1, &t.advantages, &t.mask);
        let negative = mask_like(adv, adv.clone().lower_elem(0.0));
        let positive = mask_like(adv, adv.clone().greater_elem(0.0));
        match self {
            GrpoLossType::Grpo
            | GrpoLossType::Bnpo
            | GrpoLossType::DrGrpo
            | GrpoLossType::Dapo
            | GrpoLossType::Luspo => {
                let low = mask_like(coef_1, coef_1.clone().lower_elem(1.0 - eps_low)) * negative;
                let high =
                    mask_like(coef_1, coef_1.clone().greater_elem(1.0 + eps_high)) * positive;
                let region = low.clone() + high.clone();
                metrics.insert("clip_ratio/low_mean", global_masked_mean(low.clone(), mask));
                metrics.insert(
                    "clip_ratio/high_mean",
                    global_masked_mean(high.clone(), mask),
                );
                metrics.insert("clip_ratio/region_mean", global_masked_mean(region, mask));
                metrics.insert("clip_ratio/low_min", seq_mean_extreme(low, mask, false));
                metrics.insert("clip_ratio/high_max", seq_mean_extreme(high, mask, true));
            }
            GrpoLossType::Cispo => {
                let clipped = mask_like(coef_1, coef_1.clone().greater_elem(eps_high)) * positive;
                metrics.insert("cispo_clip_ratio", global_masked_mean(clipped, mask));
            }
            GrpoLossType::Sapo | GrpoLossType::Vespo => {}
        }
    }
}

/// grpo / bnpo / dr_grpo / dapo / luspo: the PPO clipped surrogate
/// `-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)`, with `rho` capped at `delta`
/// (INTELLECT-2 two-sided clipping) in the unclipped branch when set.
fn clipped(t: &mut Terms, eps_low: f64, eps_high: f64, delta: Option<f64>) -> Tensor<2> {
    let coef_2 = t.coef_1.clone().clamp(1.0 - eps_low, 1.0 + eps_high);
    if let Some(delta) = delta {
        t.coef_1 = t.coef_1.clone().clamp_max(delta);
    }
    let l1 = t.coef_1.clone() * t.advantages.clone();
    let l2 = coef_2 * t.advantages.clone();
    l1.min_pair(l2).neg()
}

/// cispo: `-sg(min(rho, eps_high)) A logp` (a truncated, detached importance weight).
fn cispo(t: &Terms, eps_high: f64) -> Tensor<2> {
    let clamped = t.coef_1.clone().clamp_max(eps_high).detach();
    (clamped * t.advantages.clone() * t.logps.clone()).neg()
}

/// sapo: the soft gate `-(4 / tau) sigmoid(tau (rho - 1)) A`, `tau = tau_pos` for `A > 0`,
/// else `tau_neg`.
fn sapo(t: &Terms, tau_pos: f64, tau_neg: f64) -> Tensor<2> {
    let adv = &t.advantages;
    let positive = adv.clone().greater_elem(0.0);
    let temps = Tensor::zeros_like(adv)
        .add_scalar(tau_neg)
        .mask_fill(positive, tau_pos);
    // sigmoid as 1 / (1 + e^-x): ndarray's sigmoid is not f64-exact.
    let gate = (temps.clone() * t.coef_1.clone().sub_scalar(1.0))
        .neg()
        .exp()
        .add_scalar(1.0)
        .recip();
    let soft = gate.mul_scalar(4.0) / temps;
    (soft * adv.clone()).neg()
}

/// vespo: `-phi(w) A logp` with the detached gamma weight
/// `phi(w) = exp(lambda + k log w - lambda w)` of the sequence ratio
/// `w = exp(clamp(sum_t m_t log rho_t [+ sum_t log is_t], ln 1e-8, 20))`; `(k, lambda)` by
/// the sign of `A`. Logs `vespo/phi_seq_mean`.
fn vespo(t: &Terms, c: &GrpoLossConfig, metrics: &mut Metrics) -> Tensor<2> {
    let lower = 1e-8f64.ln();
    let lr = t.log_ratio.clone().detach().clamp(-20.0, 20.0);
    let mut seq = zero_masked(lr, t.mask.clone()).sum_dim(1);
    if let Some(is) = &t.importance_sampling_ratio {
        // TRL sums the clamped log IS ratio over every position (unmasked).
        seq = seq + is.clone().detach().log().clamp(lower, 20.0).sum_dim(1);
    }
    let log_w = seq.clamp(lower, 20.0);
    let w = log_w.clone().exp();
    let adv = &t.advantages;
    let nonneg = adv.clone().greater_equal_elem(0.0);
    let k = Tensor::zeros_like(adv)
        .add_scalar(c.vespo_k_neg)
        .mask_fill(nonneg.clone(), c.vespo_k_pos);
    let lambda = Tensor::zeros_like(adv)
        .add_scalar(c.vespo_lambda_neg)
        .mask_fill(nonneg, c.vespo_lambda_pos)
        .clamp_min(1e-4);
    let phi = (lambda.clone() + k * log_w - lambda * w).exp();
    let bad = phi
        .clone()
        .is_nan()
        .bool_or(phi.clone().is_finite().bool_not());
    let phi = phi.clone().mask_fill(bad, 0.0).detach();
    metrics.insert(
        "vespo/phi_seq_mean",
        global_masked_mean(phi.clone(), &t.mask),
    );
    (phi * adv.clone() * t.logps.clone()).neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, t, v};
    use burn::tensor::Device;

    use crate::rl::grpo::{GrpoLossConfig, GrpoLossInput};

    #[test]
    fn clipped_surrogate_takes_the_pessimistic_branch() {
        let device = Device::flex();
        // rho = e^{ln 1.5} = 1.5, A = 1, eps = 0.2: -min(1.5, 1.2) = -1.2 per token.
        let logps = t(&[1.5f64.ln(), 1.5f64.ln()], &device).reshape([1, 2]);
        let old = t(&[0.0, 0.0], &device).reshape([1, 2]);
        let mask = old.clone().equal_elem(0.0);
        let input = GrpoLossInput::new(logps, mask, t(&[1.0], &device)).with_old_logps(old);
        let out = GrpoLossConfig::new()
            .with_loss_type(GrpoLossType::Bnpo)
            .init()
            .forward(input);
        assert_close(&v(out.loss), &[-1.2]);
        assert_close(
            &v(out.metrics.get("clip_ratio/high_mean").unwrap().clone()),
            &[1.0],
        );
    }
}
