//! Adapters with no reference model: SFT and the reward model.

use burn::module::{Module, ModuleDisplay};
use burn::tensor::{Bool, Tensor};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use super::{CausalLmLogps, RewardInput, SequenceRewardModel, SftInput, TrlOutput};
use crate::Normalizer;
use crate::distributed::{Reducer, SharedReducer, StepCounts};
use crate::error::{Error, Result, check_non_empty, check_same_shape};
use crate::losses::{BradleyTerryLoss, BradleyTerryLossConfig, LossOutput, Metrics};
use crate::reduce::mask_like;

/// A burn-train model for supervised fine-tuning: the token-mean negative log-likelihood of
/// the labels (`Normalizer::TokenMean` over the batch's labelled tokens, TRL's SFT loss).
/// Metric: `num_tokens`, the labelled tokens of the batch (TRL logs the running total).
///
/// With [`with_reducer`](Self::with_reducer), training steps divide by the labelled tokens of
/// the whole step summed over the ranks (`Normalizer::GlobalTokens`, one host read of the
/// local count and one reducer call), as
/// [`PreferenceModel`](super::PreferenceModel#data-parallel) does with pairs.
#[derive(Module, Debug)]
pub struct SftModel<M> {
    /// The trained model.
    pub model: M,
    #[module(skip)]
    reducer: Option<SharedReducer>,
}

impl<M> SftModel<M> {
    /// The adapter.
    pub fn new(model: M) -> Self {
        Self {
            model,
            reducer: None,
        }
    }

    /// Training steps normalize by the step's global token count, summed by `reducer`.
    pub fn with_reducer(mut self, reducer: impl Reducer + 'static) -> Self {
        self.reducer = Some(SharedReducer::new(reducer));
        self
    }
}

impl<M: CausalLmLogps + Module + ModuleDisplay> SftModel<M> {
    /// The loss of one batch. Errors: labels of another shape than the ids, an empty batch.
    pub fn try_forward(&self, input: SftInput) -> Result<TrlOutput> {
        self.forward_with(input, None)
    }

    fn forward_with(&self, input: SftInput, reducer: Option<&SharedReducer>) -> Result<TrlOutput> {
        let [n, t] = input.ids.dims();
        check_non_empty("ids", n, "the batch has no row")?;
        check_same_shape("labels", &input.labels.dims(), &[n, t], "ids")?;
        let tokens = self.model.token_logps(input.ids, input.labels);
        let count = mask_like(&tokens.logps, tokens.mask.clone()).sum();
        let normalizer = match reducer {
            None => Normalizer::TokenMean,
            Some(reducer) => {
                let local = StepCounts {
                    tokens: crate::reduce::global_token_count(std::slice::from_ref(&tokens.mask)),
                    ..StepCounts::default()
                };
                reducer.reduce(&local)?.token_normalizer()?
            }
        };
        let loss = normalizer.try_reduce_tokens(tokens.logps.neg(), tokens.mask)?;
        let mut metrics = Metrics::new();
        metrics.insert("num_tokens", count);
        let out = LossOutput {
            per_example: loss.clone(),
            loss,
            metrics,
        };
        Ok(TrlOutput::new(out, n))
    }

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(&self, input: SftInput) -> TrlOutput = try_forward;
    }
}

impl<M: CausalLmLogps + Module + ModuleDisplay> TrainStep for SftModel<M> {
    type Input = SftInput;
    type Output = TrlOutput;

    fn step(&self, input: SftInput) -> TrainOutput<TrlOutput> {
        let out = super::step_or_abort(
            self.forward_with(input, self.reducer.as_ref()),
            self.reducer.as_ref(),
        );
        let grads = out.loss.backward();
        TrainOutput::new(self, grads, out)
    }
}

impl<M: CausalLmLogps + Module + ModuleDisplay> InferenceStep for SftModel<M> {
    type Input = SftInput;
    type Output = TrlOutput;

    fn step(&self, input: SftInput) -> TrlOutput {
        self.forward(input)
    }
}

/// A burn-train model for a pairwise reward model (TRL's `RewardTrainer`): one forward on the
/// stacked `[2B, T]` chosen-then-rejected rows, then the Bradley-Terry loss. Metrics:
/// [`TrlMetric::REWARD_KEYS`](super::TrlMetric::REWARD_KEYS).
///
/// With [`with_reducer`](Self::with_reducer), training steps divide by the pairs of the whole
/// step summed over the ranks (`Normalizer::GlobalSequences`, one reducer call), so the
/// ranks' gradients sum to the gradient of the whole batch (without it, burn-train's
/// `MultiDevice` strategy sums per-rank *means*: `W` times too large with equal shards, and
/// weighted wrongly with unequal ones).
#[derive(Module, Debug)]
pub struct RewardModel<M> {
    /// The trained reward model.
    pub model: M,
    #[module(skip)]
    loss: BradleyTerryLoss,
    #[module(skip)]
    reducer: Option<SharedReducer>,
}

impl<M> RewardModel<M> {
    /// The adapter; the config is validated here.
    pub fn try_new(model: M, config: &BradleyTerryLossConfig) -> Result<Self> {
        Ok(Self {
            model,
            loss: config.try_init()?,
            reducer: None,
        })
    }

    /// Training steps normalize by the step's global pair count, summed by `reducer` (the
    /// config's own normalizer is replaced in training steps; validation keeps it).
    pub fn with_reducer(mut self, reducer: impl Reducer + 'static) -> Self {
        self.reducer = Some(SharedReducer::new(reducer));
        self
    }

    crate::error::panicking! {
        /// Panicking form of [`try_new`](Self::try_new) (an invalid config).
        pub fn new(model: M, config: &BradleyTerryLossConfig) -> Self = Self::try_new;
    }
}

/// The mask made canonical (a `U8` mask, as `select` returns on flex, cannot be concatenated
/// with a `Bool` one) and right-padded with `false` to `t` columns.
fn pad_mask(mask: Tensor<2, Bool>, t: usize) -> Tensor<2, Bool> {
    let mask = crate::reduce::canonical_mask(mask);
    let [n, w] = mask.dims();
    if w == t {
        return mask;
    }
    let device = mask.device();
    Tensor::cat(
        vec![mask, Tensor::<2, Bool>::full([n, t - w], false, &device)],
        1,
    )
}

fn pad_ids(ids: Tensor<2, burn::tensor::Int>, t: usize) -> Tensor<2, burn::tensor::Int> {
    let [n, w] = ids.dims();
    if w == t {
        return ids;
    }
    let device = ids.device();
    Tensor::cat(vec![ids, Tensor::zeros([n, t - w], &device)], 1)
}

impl<M: SequenceRewardModel + Module + ModuleDisplay> RewardModel<M> {
    /// The loss and metrics of one batch. Errors: inconsistent shapes, an empty batch, a
    /// reward vector of another length than `2B`, and the loss's own errors.
    pub fn try_forward(&self, input: RewardInput) -> Result<TrlOutput> {
        self.forward_with(input, None)
    }

    fn forward_with(
        &self,
        input: RewardInput,
        reducer: Option<&SharedReducer>,
    ) -> Result<TrlOutput> {
        let [b, tc] = input.chosen_ids.dims();
        check_non_empty("chosen_ids", b, "the batch has no pair")?;
        check_same_shape(
            "chosen_mask",
            &input.chosen_mask.dims(),
            &[b, tc],
            "chosen_ids",
        )?;
        let [b2, tr] = input.rejected_ids.dims();
        if b2 != b {
            return Err(Error::shape(
                "rejected_ids",
                format!("[{b}, T] (as chosen_ids)"),
                &[b2, tr],
            ));
        }
        check_same_shape(
            "rejected_mask",
            &input.rejected_mask.dims(),
            &[b, tr],
            "rejected_ids",
        )?;
        let t = tc.max(tr);
        let ids = Tensor::cat(
            vec![pad_ids(input.chosen_ids, t), pad_ids(input.rejected_ids, t)],
            0,
        );
        let mask = Tensor::cat(
            vec![
                pad_mask(input.chosen_mask, t),
                pad_mask(input.rejected_mask, t),
            ],
            0,
        );
        let rewards = self.model.rewards(ids, mask);
        crate::losses::PairedLayout::new(b).check_rows("rewards", &rewards.dims())?;
        let out = match reducer {
            None => self.loss.try_forward_stacked(rewards, input.margin)?,
            Some(reducer) => {
                let global = reducer.reduce(&StepCounts::from_pairs(b))?;
                self.loss
                    .with_normalizer(global.pair_normalizer()?)?
                    .try_forward_stacked(rewards, input.margin)?
            }
        };
        Ok(TrlOutput::new(out, b))
    }

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(&self, input: RewardInput) -> TrlOutput = try_forward;
    }
}

impl<M: SequenceRewardModel + Module + ModuleDisplay> TrainStep for RewardModel<M> {
    type Input = RewardInput;
    type Output = TrlOutput;

    fn step(&self, input: RewardInput) -> TrainOutput<TrlOutput> {
        let out = super::step_or_abort(
            self.forward_with(input, self.reducer.as_ref()),
            self.reducer.as_ref(),
        );
        let grads = out.loss.backward();
        TrainOutput::new(self, grads, out)
    }
}

impl<M: SequenceRewardModel + Module + ModuleDisplay> InferenceStep for RewardModel<M> {
    type Input = RewardInput;
    type Output = TrlOutput;

    fn step(&self, input: RewardInput) -> TrlOutput {
        self.forward(input)
    }
}
