//! A PPO-style update step over any burn [`Module`] and optimizer.
//!
//! [`ppo_update`] runs `epochs x shuffled minibatches x micro-batches` over a [`Rollout`]: the
//! user's closure maps the model and a row subset of the rollout to new log-probs (and values),
//! a [`StepLoss`] ([`PpoLoss`](crate::rl::PpoLoss), [`GrpoLoss`](crate::rl::GrpoLoss) or
//! [`RlooLoss`](crate::rl::RlooLoss)) turns them into a loss normalized
//! by the **minibatch's** global count (so the micro-batch gradients sum to the minibatch
//! gradient exactly), gradients are accumulated, clipped by their global norm and applied with
//! one optimizer step per minibatch. An optional KL target stops the update early.
//!
//! Files: `rollout` ([`Rollout`], [`PolicyOutput`]), `loss` ([`StepLoss`] for each loss),
//! `grad` ([`clip_grad_norm`]), this file (the loop). Anchor: TRL 1.16's PPO trainer loop
//! (`num_ppo_epochs` x `num_mini_batches` x `gradient_accumulation_steps`). Paper: Schulman
//! et al., *Proximal Policy Optimization Algorithms*, <https://arxiv.org/abs/1707.06347>.

mod grad;
mod loss;
mod rollout;

use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use grad::clip_grad_norm_unchecked;
pub use grad::{clip_grad_norm, clip_grad_norm_on_device, try_clip_grad_norm};
pub use loss::StepLoss;
pub use rollout::{PolicyOutput, Rollout, RolloutBatch};

use crate::error::{Error, check_positive};
use crate::losses::LossOutput;

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
    /// Stop the update once a minibatch's mean `approx_kl` exceeds this; `None` = off. Only
    /// [`PpoLoss`](crate::rl::PpoLoss) reports `approx_kl`: with a GRPO or RLOO loss a
    /// `target_kl` is an [`Error::Conflict`] (it would do nothing).
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
    /// Every loss metric plus `loss` and `grad_norm` (pre-clip): `loss`, `policy_loss` and
    /// `value_loss` are each minibatch's value (the sum of its micro-batch shares) averaged
    /// over minibatches; the other metrics are averaged over micro-batches, `grad_norm` over
    /// optimizer steps.
    pub metrics: BTreeMap<String, f64>,
    /// Optimizer steps taken.
    pub optimizer_steps: usize,
    /// Whether the KL target stopped the update early.
    pub early_stopped: bool,
}

/// Minimal xorshift64* for the shuffles of the update loops (`ppo_update`, `OnlineDpo`; no
/// dependency).
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
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
    pub(crate) fn shuffle(&mut self, v: &mut [usize]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
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

/// Loss terms reduced with the minibatch's normalizer: each micro-batch holds a share, and
/// the shares add up to the minibatch's value (reported as such, like `loss`).
const SUMMED_METRICS: [&str; 2] = ["policy_loss", "value_loss"];

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
    if config.target_kl.is_some() && !loss.reports_approx_kl() {
        return Err(Error::Conflict {
            field: "target_kl",
            other: "loss",
            reason: "early stopping reads the loss's `approx_kl`, which only PpoLoss reports; \
                     unset target_kl for GRPO / RLOO losses"
                .into(),
        });
    }
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
    // One read per update: the per-row token counts, for each minibatch's global normalizer.
    let row_tokens: Vec<f64> =
        crate::host_reads::ints(rollout.mask.clone().int().sum_dim(1), "rollout.mask")?
            .into_iter()
            .map(|x| x as f64)
            .collect();
    let mut rng = XorShift::new(config.seed);
    // Metrics stay on the device (sum, count) until the end of the update: no read per
    // micro-batch. With `target_kl`, the minibatch's `approx_kl` is read once (early stopping).
    let mut sums: BTreeMap<String, (Tensor<1>, usize)> = BTreeMap::new();
    let mut add = |key: &str, v: Tensor<1>| {
        let v = v.detach();
        match sums.get_mut(key) {
            Some(e) => {
                e.0 = e.0.clone() + v;
                e.1 += 1;
            }
            None => {
                sums.insert(key.to_string(), (v, 1));
            }
        }
    };
    'epochs: for _ in 0..config.epochs {
        let mut order: Vec<usize> = (0..b).collect();
        rng.shuffle(&mut order);
        for minibatch in order.chunks(mb_size) {
            let tokens: f64 = minibatch.iter().map(|&r| row_tokens[r]).sum();
            let normalizer = loss.normalizer(tokens, minibatch.len() as f64);
            let mut accumulator = GradientsAccumulator::<M>::new();
            let mut kl_sum: Option<Tensor<1>> = None;
            for micro in minibatch.chunks(micro_size) {
                let batch = rollout.select(micro);
                let model = slot.as_ref().expect("model in its slot");
                let out = forward(model, &batch);
                let LossOutput {
                    loss: l, metrics, ..
                } = loss.step_loss(&batch, out, normalizer)?;
                let grads = GradientsParams::from_grads(l.backward(), model);
                accumulator.accumulate(model, grads);
                // The micro-batch losses (and the loss terms reduced with the step's
                // normalizer) sum to the minibatch's value; log that sum's average.
                add("loss", l.mul_scalar(gas as f64));
                for key in metrics.keys().map(str::to_string).collect::<Vec<_>>() {
                    let mut v = metrics.get(&key).expect("listed key").clone();
                    if SUMMED_METRICS.contains(&key.as_str()) {
                        v = v.mul_scalar(gas as f64);
                    }
                    if key == "approx_kl" {
                        let v = v.clone();
                        kl_sum = Some(match kl_sum.take() {
                            Some(t) => t + v,
                            None => v,
                        });
                    }
                    add(&key, v);
                }
            }
            let mut grads = accumulator.grads();
            let model = slot.take().expect("model in its slot");
            if let Some(max_norm) = config.max_grad_norm
                && let Some(norm) = clip_grad_norm_unchecked(&model, &mut grads, max_norm)
            {
                add("grad_norm", norm);
            }
            *slot = Some(optim.step(config.learning_rate, model, grads));
            stats.optimizer_steps += 1;
            if let (Some(target), Some(kl)) = (config.target_kl, kl_sum)
                && crate::host_reads::scalar(kl, "approx_kl")? / gas as f64 > target
            {
                stats.early_stopped = true;
                break 'epochs;
            }
        }
    }
    // One read for all the metrics of the update.
    let (keys, means): (Vec<String>, Vec<Tensor<1>>) = sums
        .into_iter()
        .map(|(k, (s, n))| (k, s.div_scalar(n as f64)))
        .unzip();
    if !means.is_empty() {
        let values = crate::host_reads::floats_cat(means, "metrics")?;
        stats.metrics = keys.into_iter().zip(values).collect();
    }
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
