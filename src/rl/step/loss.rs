//! [`StepLoss`]: how [`ppo_update`](super::ppo_update) drives each loss (PPO, GRPO, RLOO),
//! and the minibatch normalizer that makes micro-batch gradients sum exactly.

use super::rollout::{PolicyOutput, RolloutBatch};
use crate::losses::LossOutput;
use crate::reduce::{Normalizer, masked_row_sum};
use crate::rl::grpo::{GrpoLoss, GrpoLossInput, RlooLoss};
use crate::rl::ppo::{PpoLoss, PpoLossInput};

/// A loss the update step can drive.
pub trait StepLoss {
    /// The normalizer for a minibatch with `tokens` valid tokens and `rows` sequences; the
    /// micro-batch losses are reduced with it so that they **sum** to the minibatch loss.
    fn normalizer(&self, tokens: f64, rows: f64) -> Normalizer {
        let _ = rows;
        Normalizer::GlobalTokens(tokens.max(1.0))
    }
    /// Whether the loss reports `approx_kl` (needed by [`PpoStepConfig::target_kl`](super::PpoStepConfig::target_kl)).
    fn reports_approx_kl(&self) -> bool {
        false
    }
    /// The loss of one micro-batch.
    fn step_loss(
        &self,
        batch: &RolloutBatch,
        output: PolicyOutput,
        normalizer: Normalizer,
    ) -> crate::Result<LossOutput>;
}

impl StepLoss for PpoLoss {
    fn reports_approx_kl(&self) -> bool {
        true
    }
    fn step_loss(
        &self,
        batch: &RolloutBatch,
        output: PolicyOutput,
        normalizer: Normalizer,
    ) -> crate::Result<LossOutput> {
        let dims = batch.mask.dims();
        let advantages = batch.advantages.clone().expand(dims);
        let mut input = PpoLossInput::new(output.logps, batch.old_logps.clone(), advantages)
            .with_mask(batch.mask.clone());
        if let (Some(v), Some(v_old), Some(ret)) =
            (output.values, &batch.old_values, &batch.returns)
        {
            input = input.with_values(v, v_old.clone(), ret.clone());
        }
        if let Some(h) = output.entropy {
            input = input.with_entropy(h);
        }
        self.with_normalizer(normalizer).try_forward(input)
    }
}

impl StepLoss for GrpoLoss {
    /// Each loss type's own aggregation over the minibatch
    /// ([`GrpoLossType`](crate::rl::GrpoLossType): `grpo` / `sapo` per-sequence means, `dr_grpo`
    /// `rows x max_completion_length`, `luspo` `rows`, the others the token count), not a
    /// token mean for all of them.
    fn normalizer(&self, tokens: f64, rows: f64) -> Normalizer {
        let c = self.config();
        c.loss_type.step_normalizer(c, tokens, rows)
    }
    fn step_loss(
        &self,
        batch: &RolloutBatch,
        output: PolicyOutput,
        normalizer: Normalizer,
    ) -> crate::Result<LossOutput> {
        let mut input = GrpoLossInput::with_token_advantages(
            output.logps,
            batch.mask.clone(),
            batch.advantages.clone(),
        )
        .with_old_logps(batch.old_logps.clone());
        if let Some(h) = output.entropy {
            input = input.with_entropies(h);
        }
        if let Some(r) = &batch.ref_logps {
            input = input.with_ref_logps(r.clone());
        }
        if let Some(s) = &batch.sampling_logps {
            input = input.with_sampling_logps(s.clone());
        }
        if let Some(is) = &batch.importance_sampling_ratio {
            input = input.with_importance_sampling_ratio(is.clone());
        }
        self.with_normalizer(normalizer).try_forward(input)
    }
}

impl StepLoss for RlooLoss {
    fn normalizer(&self, _tokens: f64, rows: f64) -> Normalizer {
        Normalizer::GlobalSequences(rows.max(1.0))
    }
    fn step_loss(
        &self,
        batch: &RolloutBatch,
        output: PolicyOutput,
        normalizer: Normalizer,
    ) -> crate::Result<LossOutput> {
        let b = batch.len();
        let old = masked_row_sum(batch.old_logps.clone(), batch.mask.clone());
        let adv = batch.advantages.clone().slice([0..b, 0..1]).reshape([b]);
        self.with_normalizer(normalizer).try_forward(
            output.logps,
            batch.mask.clone(),
            old,
            adv,
            output.entropy,
        )
    }
}
