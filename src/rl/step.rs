//! A PPO-style update step over any burn [`Module`] and optimizer.
//!
//! [`ppo_update`] runs `epochs x shuffled minibatches x micro-batches` over a [`Rollout`]: the
//! user's closure maps the model and a row subset of the rollout to new log-probs (and values),
//! a [`StepLoss`] ([`PpoLoss`], [`GrpoLoss`] or [`RlooLoss`]) turns them into a loss normalized
//! by the **minibatch's** global count (so the micro-batch gradients sum to the minibatch
//! gradient exactly), gradients are accumulated, clipped by their global norm and applied with
//! one optimizer step per minibatch. An optional KL target stops the update early.

use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::grpo::{GrpoLoss, GrpoLossInput, RlooLoss};
use super::ppo::{PpoLoss, PpoLossInput};
use crate::error::{Error, check_positive, check_same_shape, unwrap_or_panic};
use crate::losses::LossOutput;
use crate::reduce::{Normalizer, masked_row_sum};

/// What a rollout holds for the update. Rows are sequences; `T` is the scored (completion)
/// length the log-probs are aligned with.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Token ids `[B, S]` in whatever layout the model's closure needs (prompt + completion).
    pub tokens: Tensor<2, Int>,
    /// Positions that count in the loss `[B, T]`.
    pub mask: Tensor<2, Bool>,
    /// Log-probs at rollout time `[B, T]`.
    pub old_logprobs: Tensor<2>,
    /// Advantages `[B, T]` (PPO/GAE) or `[B, 1]` (GRPO/RLOO: one per sequence).
    pub advantages: Tensor<2>,
    /// Values at rollout time `[B, T]` (PPO value clipping).
    pub old_values: Option<Tensor<2>>,
    /// Value targets `[B, T]`.
    pub returns: Option<Tensor<2>>,
    /// Reference-model log-probs `[B, T]`: GRPO's KL term (`beta != 0`).
    pub ref_logprobs: Option<Tensor<2>>,
    /// Log-probs under the distribution the tokens were sampled from `[B, T]` (a truncated
    /// top-k/top-p sampler, or a separate inference engine): GRPO's off-policy mask.
    pub sampling_logprobs: Option<Tensor<2>>,
    /// Per-token importance-sampling correction `[B, T]` that multiplies GRPO's per-token loss
    /// (TRL's `importance_sampling_ratio`); see
    /// [`with_truncated_importance_sampling`](Self::with_truncated_importance_sampling).
    pub importance_sampling_ratio: Option<Tensor<2>>,
}

/// A row subset of a [`Rollout`] (same type).
pub type RolloutBatch = Rollout;

impl Rollout {
    /// A rollout with what every loss reads; add the optional fields with the `with_*`
    /// methods.
    ///
    /// # Shapes
    /// - tokens `[B, S]`, mask / old_logprobs `[B, T]`, advantages `[B, T]` or `[B, 1]`
    pub fn new(
        tokens: Tensor<2, Int>,
        mask: Tensor<2, Bool>,
        old_logprobs: Tensor<2>,
        advantages: Tensor<2>,
    ) -> Self {
        Self {
            tokens,
            mask: crate::reduce::canonical_mask(mask),
            old_logprobs: old_logprobs.detach(),
            advantages: advantages.detach(),
            old_values: None,
            returns: None,
            ref_logprobs: None,
            sampling_logprobs: None,
            importance_sampling_ratio: None,
        }
    }

    /// Adds the values at rollout time and the value targets (PPO with a value head).
    pub fn with_values(mut self, old_values: Tensor<2>, returns: Tensor<2>) -> Self {
        self.old_values = Some(old_values.detach());
        self.returns = Some(returns.detach());
        self
    }

    /// Adds the reference log-probs (GRPO with `beta != 0`).
    pub fn with_ref_logprobs(mut self, ref_logprobs: Tensor<2>) -> Self {
        self.ref_logprobs = Some(ref_logprobs.detach());
        self
    }

    /// Adds the sampling-distribution log-probs (GRPO's off-policy mask).
    pub fn with_sampling_logprobs(mut self, sampling_logprobs: Tensor<2>) -> Self {
        self.sampling_logprobs = Some(sampling_logprobs.detach());
        self
    }

    /// Adds an importance-sampling correction ratio (GRPO multiplies its per-token loss by it).
    pub fn with_importance_sampling_ratio(mut self, ratio: Tensor<2>) -> Self {
        self.importance_sampling_ratio = Some(ratio.detach());
        self
    }

    /// Token-level truncated importance sampling (TRL's `token_truncate` correction): the ratio
    /// `min(π_old / π_sampling, cap)` per token, from `old_logprobs` and the
    /// `sampling_logprobs` set before (bounded like every ratio, see
    /// [`LOG_RATIO_LIMIT`](super::LOG_RATIO_LIMIT)). Corrects for sampling from a truncated
    /// (top-k/top-p) or stale distribution.
    ///
    /// Errors: no `sampling_logprobs` ([`Error::MissingInput`]), `cap` not finite and > 0.
    pub fn with_truncated_importance_sampling(mut self, cap: f64) -> crate::Result<Self> {
        check_positive("cap", cap)?;
        let sampling = self
            .sampling_logprobs
            .clone()
            .ok_or_else(|| Error::MissingInput {
                arg: "sampling_logprobs",
                needed_by: "with_truncated_importance_sampling: call with_sampling_logprobs first"
                    .into(),
            })?;
        check_same_shape(
            "sampling_logprobs",
            &sampling.dims(),
            &self.old_logprobs.dims(),
            "old_logprobs",
        )?;
        crate::error::check_dtype_like(
            "sampling_logprobs",
            &sampling,
            "old_logprobs",
            &self.old_logprobs,
        )?;
        let ratio = super::ratio::importance_ratio(self.old_logprobs.clone() - sampling)
            .clamp_max(cap)
            .detach();
        self.importance_sampling_ratio = Some(ratio);
        Ok(self)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.mask.dims()[0]
    }

    /// True when there is no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that the shapes agree and the rollout has rows ([`Error::Empty`] otherwise); in
    /// checked mode also that the float fields are finite ([`Error::NonFinite`]).
    pub fn validate(&self) -> crate::Result<()> {
        let dims = self.mask.dims();
        crate::error::check_non_empty("mask", dims[0], "the rollout has no row (B = 0)")?;
        if self.tokens.dims()[0] != dims[0] {
            return Err(Error::shape(
                "tokens",
                format!("[{}, S] (rows as mask)", dims[0]),
                &self.tokens.dims(),
            ));
        }
        check_same_shape("old_logprobs", &self.old_logprobs.dims(), &dims, "mask")?;
        let adv = self.advantages.dims();
        if adv != dims && adv != [dims[0], 1] {
            return Err(Error::shape(
                "advantages",
                format!("{dims:?} or [{}, 1]", dims[0]),
                &adv,
            ));
        }
        crate::error::check_dtype_like(
            "advantages",
            &self.advantages,
            "old_logprobs",
            &self.old_logprobs,
        )?;
        for (name, x) in [
            ("old_values", &self.old_values),
            ("returns", &self.returns),
            ("ref_logprobs", &self.ref_logprobs),
            ("sampling_logprobs", &self.sampling_logprobs),
            ("importance_sampling_ratio", &self.importance_sampling_ratio),
        ] {
            if let Some(x) = x {
                check_same_shape(name, &x.dims(), &dims, "mask")?;
                crate::error::check_dtype_like(name, x, "old_logprobs", &self.old_logprobs)?;
                crate::error::check_finite(x, name)?;
            }
        }
        crate::error::check_finite(&self.old_logprobs, "old_logprobs")?;
        crate::error::check_finite(&self.advantages, "advantages")?;
        Ok(())
    }

    /// The rows `rows` (in that order).
    pub fn select(&self, rows: &[usize]) -> Rollout {
        let device = self.mask.device();
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &device,
        );
        let pick2 = |x: &Tensor<2>| x.clone().select(0, idx.clone());
        Rollout {
            tokens: self.tokens.clone().select(0, idx.clone()),
            // (select on a Bool tensor yields a U8-stored mask on flex that bool ops reject)
            mask: self.mask.clone().int().select(0, idx.clone()).equal_elem(1),
            old_logprobs: pick2(&self.old_logprobs),
            advantages: pick2(&self.advantages),
            old_values: self.old_values.as_ref().map(pick2),
            returns: self.returns.as_ref().map(pick2),
            ref_logprobs: self.ref_logprobs.as_ref().map(pick2),
            sampling_logprobs: self.sampling_logprobs.as_ref().map(pick2),
            importance_sampling_ratio: self.importance_sampling_ratio.as_ref().map(pick2),
        }
    }
}

/// What the user's closure returns for a batch.
#[derive(Debug, Clone)]
pub struct PolicyOutput {
    /// New per-token log-probs `[b, T]` (differentiable).
    pub logprobs: Tensor<2>,
    /// New value predictions `[b, T]` (PPO with a value head).
    pub values: Option<Tensor<2>>,
    /// Per-token entropies `[b, T]` (entropy bonus / metric).
    pub entropy: Option<Tensor<2>>,
}

impl PolicyOutput {
    /// Log-probs only.
    pub fn new(logprobs: Tensor<2>) -> Self {
        Self {
            logprobs,
            values: None,
            entropy: None,
        }
    }
    /// Adds values.
    pub fn with_values(mut self, values: Tensor<2>) -> Self {
        self.values = Some(values);
        self
    }
    /// Adds entropies.
    pub fn with_entropy(mut self, entropy: Tensor<2>) -> Self {
        self.entropy = Some(entropy);
        self
    }
}

/// A loss the update step can drive.
pub trait StepLoss {
    /// The normalizer for a minibatch with `tokens` valid tokens and `rows` sequences; the
    /// micro-batch losses are reduced with it so that they **sum** to the minibatch loss.
    fn normalizer(&self, tokens: f64, rows: f64) -> Normalizer {
        let _ = rows;
        Normalizer::GlobalTokens(tokens.max(1.0))
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
    fn step_loss(
        &self,
        batch: &RolloutBatch,
        output: PolicyOutput,
        normalizer: Normalizer,
    ) -> crate::Result<LossOutput> {
        let dims = batch.mask.dims();
        let advantages = batch.advantages.clone().expand(dims);
        let mut input = PpoLossInput::new(output.logprobs, batch.old_logprobs.clone(), advantages)
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
    fn step_loss(
        &self,
        batch: &RolloutBatch,
        output: PolicyOutput,
        normalizer: Normalizer,
    ) -> crate::Result<LossOutput> {
        let mut input = GrpoLossInput::with_token_advantages(
            output.logprobs,
            batch.mask.clone(),
            batch.advantages.clone(),
        )
        .with_old_logprobs(batch.old_logprobs.clone());
        if let Some(h) = output.entropy {
            input = input.with_entropies(h);
        }
        if let Some(r) = &batch.ref_logprobs {
            input = input.with_ref_logprobs(r.clone());
        }
        if let Some(s) = &batch.sampling_logprobs {
            input = input.with_sampling_logprobs(s.clone());
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
        let old = masked_row_sum(batch.old_logprobs.clone(), batch.mask.clone());
        let adv = batch.advantages.clone().slice([0..b, 0..1]).reshape([b]);
        self.with_normalizer(normalizer).try_forward(
            output.logprobs,
            batch.mask.clone(),
            old,
            adv,
            output.entropy,
        )
    }
}

/// Configuration of [`ppo_update`]. Defaults follow TRL's PPO (`num_ppo_epochs` 4,
/// `num_mini_batches` 1, `max_grad_norm` 1.0).
#[derive(Config, Debug)]
pub struct PpoStepConfig {
    /// Passes over the rollout. Default 4.
    #[config(default = 4)]
    pub epochs: usize,
    /// Minibatches per epoch (one optimizer step each); must divide the rollout rows. Default 1.
    #[config(default = 1)]
    pub num_minibatches: usize,
    /// Micro-batches per minibatch (gradient accumulation); must divide the minibatch. Default 1.
    #[config(default = 1)]
    pub gradient_accumulation_steps: usize,
    /// Learning rate passed to the optimizer. Default 1e-5.
    #[config(default = 1e-5)]
    pub learning_rate: f64,
    /// Clip the gradient's **global** L2 norm (over all parameters, like
    /// `torch.nn.utils.clip_grad_norm_`) before each optimizer step; `None` = off. Default 1.0.
    /// (burn's `GradientClippingConfig` on the optimizer clips per parameter instead.)
    #[config(default = "Some(1.0)")]
    pub max_grad_norm: Option<f64>,
    /// Stop the update once a minibatch's mean `approx_kl` exceeds this; `None` = off.
    pub target_kl: Option<f64>,
    /// Seed of the minibatch shuffle (xorshift). Vary it per update (e.g. the step index).
    #[config(default = 0)]
    pub seed: u64,
}

impl PpoStepConfig {
    /// Rejects a non-positive or non-finite `learning_rate`, `max_grad_norm` or `target_kl`
    /// (a NaN `target_kl` would silently disable early stopping), and zero `epochs`,
    /// `num_minibatches` or `gradient_accumulation_steps`.
    pub fn validate(&self) -> crate::Result<()> {
        check_positive("learning_rate", self.learning_rate)?;
        if let Some(n) = self.max_grad_norm {
            check_positive("max_grad_norm", n)?;
        }
        if let Some(kl) = self.target_kl {
            check_positive("target_kl", kl)?;
        }
        for (field, value) in [
            ("epochs", self.epochs),
            ("num_minibatches", self.num_minibatches),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
        ] {
            if value == 0 {
                return Err(Error::config(field, "must be >= 1", value));
            }
        }
        Ok(())
    }
}

/// Averages and counters of one [`ppo_update`].
#[derive(Debug, Clone, Default)]
pub struct StepStats {
    /// Every loss metric plus `loss` and `grad_norm` (pre-clip), averaged over micro-batches
    /// (`grad_norm` over optimizer steps).
    pub metrics: BTreeMap<String, f64>,
    /// Optimizer steps taken.
    pub optimizer_steps: usize,
    /// Whether the KL target stopped the update early.
    pub early_stopped: bool,
}

/// Minimal xorshift64* for the shuffle (no dependency).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn shuffle(&mut self, v: &mut [usize]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

struct GradSquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for GradSquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum().cast(burn::tensor::FloatDType::F32);
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads
                .register::<D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Clips the global L2 norm of `grads` (over `module`'s parameters) to `max_norm` like
/// `torch.nn.utils.clip_grad_norm_` (`scale = max_norm / (norm + 1e-6)` when above). Returns
/// the norm before clipping (one host read).
///
/// # Panics
/// On the errors of [`try_clip_grad_norm`].
pub fn clip_grad_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    unwrap_or_panic(try_clip_grad_norm(module, grads, max_norm))
}

/// Non-panicking form of [`clip_grad_norm`]: `max_norm` must be finite and > 0
/// ([`Error::Config`] naming `max_norm`; a negative value would flip the gradient's sign).
pub fn try_clip_grad_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> crate::Result<f64> {
    check_positive("max_norm", max_norm)?;
    Ok(clip_grad_norm_unchecked(module, grads, max_norm))
}

fn clip_grad_norm_unchecked<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let mut visitor = GradSquaredNorm { grads, total: None };
    module.visit(&mut visitor);
    let norm = visitor
        .total
        .map(|t| t.into_scalar::<f64>().sqrt())
        .unwrap_or(0.0);
    if norm > max_norm {
        let mut scale = GradScale {
            grads,
            factor: max_norm / (norm + 1e-6),
        };
        module.visit(&mut scale);
    }
    norm
}

/// A failed [`try_ppo_update`]: the error, and the model, which is never lost.
///
/// `model` is the model as it was when the error occurred: unchanged when the configuration or
/// the rollout is invalid (checked before any step), or after the optimizer steps already
/// taken when a loss fails in a later minibatch (`optimizer_steps` says how many).
#[derive(Debug)]
pub struct StepError<M> {
    /// The model (see above).
    pub model: M,
    /// What went wrong.
    pub error: Error,
    /// Optimizer steps taken before the error.
    pub optimizer_steps: usize,
}

impl<M> std::fmt::Display for StepError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (after {} optimizer steps)",
            self.error, self.optimizer_steps
        )
    }
}

impl<M: std::fmt::Debug> std::error::Error for StepError<M> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<M> From<StepError<M>> for Error {
    fn from(e: StepError<M>) -> Self {
        e.error
    }
}

/// Runs the update (see the module docs) and returns the updated model and averaged metrics.
///
/// `forward(&model, &batch)` must compute the new log-probs (and values / entropies if the loss
/// uses them) for the rows of `batch`, aligned with `batch.mask`, on an autodiff device.
///
/// # Errors
/// On an invalid configuration, a rollout whose rows are not divisible into minibatches and
/// micro-batches, or a loss error: a [`StepError`] that hands the model back.
pub fn try_ppo_update<M, L, F>(
    model: M,
    optim: &mut ModuleOptimizer,
    config: &PpoStepConfig,
    rollout: &Rollout,
    loss: &L,
    forward: F,
) -> Result<(M, StepStats), StepError<M>>
where
    M: Module,
    L: StepLoss,
    F: FnMut(&M, &RolloutBatch) -> PolicyOutput,
{
    let mut stats = StepStats::default();
    let mut slot = Some(model);
    match update_in_place(&mut slot, optim, config, rollout, loss, forward, &mut stats) {
        Ok(()) => Ok((slot.expect("the model is put back after every step"), stats)),
        Err(error) => Err(StepError {
            model: slot.expect("the model is put back after every step"),
            error,
            optimizer_steps: stats.optimizer_steps,
        }),
    }
}

/// The update on a model held in `slot` (taken out only for the optimizer step, which cannot
/// fail), so every error leaves the current model in place.
fn update_in_place<M, L, F>(
    slot: &mut Option<M>,
    optim: &mut ModuleOptimizer,
    config: &PpoStepConfig,
    rollout: &Rollout,
    loss: &L,
    mut forward: F,
    stats: &mut StepStats,
) -> crate::Result<()>
where
    M: Module,
    L: StepLoss,
    F: FnMut(&M, &RolloutBatch) -> PolicyOutput,
{
    rollout.validate()?;
    config.validate()?;
    let b = rollout.len();
    let (mb, gas) = (config.num_minibatches, config.gradient_accumulation_steps);
    if config.epochs == 0
        || mb == 0
        || gas == 0
        || !b.is_multiple_of(mb)
        || !(b / mb).is_multiple_of(gas)
    {
        return Err(Error::Conflict {
            field: "num_minibatches",
            other: "rollout",
            reason: format!(
                "epochs ({}) >= 1 and rollout rows ({b}) must split into num_minibatches ({mb}) x \
                 gradient_accumulation_steps ({gas}) equal parts",
                config.epochs
            ),
        });
    }
    let mb_size = b / mb;
    let micro_size = mb_size / gas;
    let row_tokens: Vec<f64> = rollout
        .mask
        .clone()
        .int()
        .sum_dim(1)
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| Error::Backend {
            arg: "rollout.mask",
            detail: format!("{e:?}"),
        })?
        .into_iter()
        .map(|x| x as f64)
        .collect();
    let mut rng = XorShift::new(config.seed);
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut add = |key: &str, v: f64| {
        let e = sums.entry(key.to_string()).or_insert((0.0, 0));
        e.0 += v;
        e.1 += 1;
    };
    'epochs: for _ in 0..config.epochs {
        let mut order: Vec<usize> = (0..b).collect();
        rng.shuffle(&mut order);
        for minibatch in order.chunks(mb_size) {
            let tokens: f64 = minibatch.iter().map(|&r| row_tokens[r]).sum();
            let normalizer = loss.normalizer(tokens, minibatch.len() as f64);
            let mut accumulator = GradientsAccumulator::<M>::new();
            let mut kl_sum = 0.0;
            for micro in minibatch.chunks(micro_size) {
                let batch = rollout.select(micro);
                let model = slot.as_ref().expect("model in its slot");
                let out = forward(model, &batch);
                let LossOutput {
                    loss: l, metrics, ..
                } = loss.step_loss(&batch, out, normalizer)?;
                let grads = GradientsParams::from_grads(l.backward(), model);
                accumulator.accumulate(model, grads);
                // The micro-batch losses sum to the minibatch loss; log that sum's average.
                add("loss", l.into_scalar::<f64>() * gas as f64);
                for (k, v) in metrics.to_host() {
                    if k == "approx_kl" {
                        kl_sum += v;
                    }
                    add(&k, v);
                }
            }
            let mut grads = accumulator.grads();
            let model = slot.take().expect("model in its slot");
            if let Some(max_norm) = config.max_grad_norm {
                let norm = clip_grad_norm_unchecked(&model, &mut grads, max_norm);
                add("grad_norm", norm);
            }
            *slot = Some(optim.step(config.learning_rate, model, grads));
            stats.optimizer_steps += 1;
            if let Some(target) = config.target_kl
                && kl_sum / gas as f64 > target
            {
                stats.early_stopped = true;
                break 'epochs;
            }
        }
    }
    stats.metrics = sums
        .into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect();
    Ok(())
}

/// Panicking form of [`try_ppo_update`].
///
/// # Panics
/// On the errors listed there.
pub fn ppo_update<M, L, F>(
    model: M,
    optim: &mut ModuleOptimizer,
    config: &PpoStepConfig,
    rollout: &Rollout,
    loss: &L,
    forward: F,
) -> (M, StepStats)
where
    M: Module,
    L: StepLoss,
    F: FnMut(&M, &RolloutBatch) -> PolicyOutput,
{
    match try_ppo_update(model, optim, config, rollout, loss, forward) {
        Ok(done) => done,
        Err(e) => panic!("burn-rlhf: {e}"),
    }
}
