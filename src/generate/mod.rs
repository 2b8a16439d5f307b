//! Online data: sample from any burn LM, score, pair, update.
//!
//! The loop behind online and iterative DPO, GRPO/RLOO and AI-feedback pipelines:
//!
//! 1. **Sample** ([`Sampler`]): `N` completions per left-padded prompt from any model that
//!    implements [`CausalLm`] (logits for a batch of ids) and optionally [`CachedCausalLm`]
//!    (an incremental step). Temperature, top-k, top-p, min-p (in Hugging Face's order, or
//!    vLLM v1's: [`TruncationOrder`]), an exact Gumbel-max draw, greedy, stop ids, seeded and
//!    reproducible; all per-token work stays on the device. The
//!    [`Generation`] holds completion ids, the completion mask (through the stop token), and the
//!    log-probs of the sampled tokens under the policy and under the truncated sampling
//!    distribution.
//! 2. **Score** ([`RewardFunctions`], [`RewardModelScorer`], [`PairwiseJudge`]): closures over
//!    completions returning `Option<f64>` (`None` = could not score), weighted.
//! 3. **Pair** ([`PairingConfig`], [`best_of_n`], [`kto_labels`]): best-vs-worst, first two (TRL
//!    `OnlineDPOTrainer`), all pairs, best-of-N; ties dropped, optional minimum margin; KTO
//!    labels by threshold. Outputs feed [`PreferenceBatch`](crate::losses::PreferenceBatch),
//!    [`UnpairedBatch`](crate::losses::UnpairedBatch) and [`Rollout`](crate::rl::Rollout).
//! 4. **Update** ([`OnlineDpo`], [`GrpoStep`]): building blocks, not a trainer.
//!
//! Everything here is backend-agnostic; the examples `online_dpo`, `grpo` and
//! `constitutional` show the loops end to end.

mod distill;
mod generation;
mod grpo;
mod judge;
mod model;
mod online;
mod pairing;
mod sampler;
mod scoring;
mod truncation;

pub use distill::{DistillationStepOutput, OnPolicyDistillation, OnPolicyDistillationConfig};
pub use generation::Generation;
pub use grpo::{AdvantageEstimator, GrpoStep, GrpoStepConfig, GrpoStepOutput};
pub use judge::{JudgePiece, JudgeSlot, JudgeTemplate, ModelJudge, PairwiseItem, PointwiseItem};
pub use model::{CachedCausalLm, CausalLm, position_ids};
pub use online::{OnlineDpo, OnlineDpoConfig, OnlineDpoLoss, OnlineDpoOutput, soft_update};
pub use pairing::{KtoLabels, Pairing, PairingConfig, Pairs, best_of_n, kto_labels};
pub use sampler::{MAX_SUPPORT_BYTES, Prompts, Sampler, SamplerConfig};
pub use scoring::{
    Completion, PairwiseJudge, RewardFunctions, RewardModelScorer, Scorer, Scores, judge_pairs,
};
pub use truncation::{Truncation, TruncationOrder};
