//! On-policy distillation (GKD, Agarwal et al. 2024, <https://arxiv.org/abs/2306.13649>):
//! with probability `lmbda` a batch's completions are sampled from the student (the crate's
//! [`Sampler`]), otherwise they are the dataset's; the teacher scores the same tokens and the
//! student minimizes the [`DistillationLoss`] over the full vocabulary at every completion
//! position.
//!
//! TRL 1.16 names: `GKDConfig` (`trl.experimental.gkd`: `lmbda` 0.5, `beta` 0.5, the
//! temperature for sampling only) and `DistillationConfig` (`trl.DistillationConfig`: always
//! on-policy, `beta` 1.0, the temperature for sampling and the loss); both load through
//! [`crate::trl`]. As in TRL's `GKDTrainer.training_step`, the coin is flipped once per
//! batch (`random() <= lmbda`), so every row of a batch is on-policy or none is.

use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::{CausalLm, Generation, Prompts, Sampler};
use crate::error::{Error, check_in_closed, check_positive};
use crate::losses::{DistillationLoss, DistillationLossConfig, LossOutput};

/// Configuration of [`OnPolicyDistillation`].
#[derive(Config, Debug)]
pub struct OnPolicyDistillationConfig {
    /// Probability that a batch's completions come from the student (TRL GKD `lmbda`), in
    /// `[0, 1]`: 1 = always on-policy (TRL's `DistillationTrainer`), 0 = supervised KD on
    /// the dataset's completions. Default 0.5 (TRL `GKDConfig`).
    #[config(default = 0.5)]
    pub lmbda: f64,
    /// The loss (`beta`, `temperature`, scales, soft-capping, normalizer). Default: TRL GKD's
    /// `beta = 0.5` at temperature 1 (GKD's trainer never passes its temperature to the loss).
    #[config(default = "DistillationLossConfig::new().with_beta(0.5)")]
    pub loss: DistillationLossConfig,
    /// Learning rate. Default 2e-5 (TRL `SFTConfig`, which `GKDConfig` extends).
    #[config(default = 2e-5)]
    pub learning_rate: f64,
    /// Clip the gradient's global L2 norm before the optimizer step; `None` = off. Default
    /// 1.0 (TRL `max_grad_norm`).
    #[config(default = "Some(1.0)")]
    pub max_grad_norm: Option<f64>,
    /// Seed of the per-batch coin and of the sampler (combined with the step index).
    #[config(default = 0)]
    pub seed: u64,
}

impl OnPolicyDistillationConfig {
    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<OnPolicyDistillation> {
        check_in_closed("lmbda", self.lmbda, 0.0, 1.0)?;
        check_positive("learning_rate", self.learning_rate)?;
        if let Some(n) = self.max_grad_norm {
            check_positive("max_grad_norm", n)?;
        }
        Ok(OnPolicyDistillation {
            loss: self.loss.try_init()?,
            config: self.clone(),
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> OnPolicyDistillation = try_init;
    }
}

/// On-policy distillation; build with [`OnPolicyDistillationConfig::init`].
#[derive(Debug, Clone)]
pub struct OnPolicyDistillation {
    config: OnPolicyDistillationConfig,
    loss: DistillationLoss,
}

/// What [`OnPolicyDistillation::try_step`] returns.
#[derive(Debug, Clone)]
pub struct DistillationStepOutput<M> {
    /// The updated student.
    pub student: M,
    /// The rows trained on (sampled or from the dataset).
    pub batch: Generation,
    /// Whether the batch was sampled from the student.
    pub on_policy: bool,
    /// `loss`, `divergence` (token mean), `entropy` (student, token mean), `num_tokens`,
    /// `on_policy` (0 or 1).
    pub metrics: BTreeMap<String, f64>,
}

/// `splitmix64`: a well-mixed 64-bit value of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl OnPolicyDistillation {
    /// The configuration.
    pub fn config(&self) -> &OnPolicyDistillationConfig {
        &self.config
    }

    /// The loss.
    pub fn loss(&self) -> &DistillationLoss {
        &self.loss
    }

    /// Whether batch `step` is on-policy: a uniform draw in `[0, 1)` from `(seed, step)`
    /// compared with `lmbda` (TRL: `random.random() <= lmbda`). Deterministic, so every
    /// data-parallel rank agrees.
    pub fn on_policy(&self, step: u64) -> bool {
        let u = (mix(self.config.seed ^ mix(step)) >> 11) as f64 / (1u64 << 53) as f64;
        self.config.lmbda >= 1.0 || (self.config.lmbda > 0.0 && u <= self.config.lmbda)
    }

    /// The distillation loss of `batch`: student and teacher logits of the same prompt +
    /// completion rows, compared at every completion position (mask: the completion mask).
    /// The student is differentiated when it lives on an autodiff device; the teacher never
    /// is.
    ///
    /// Errors: a model whose logits are not `[R, P + C, V]`, vocabularies that differ, and
    /// the loss's errors.
    pub fn try_loss<S: CausalLm + ?Sized, T: CausalLm + ?Sized>(
        &self,
        student: &S,
        teacher: &T,
        batch: &Generation,
    ) -> crate::Result<LossOutput> {
        let student_logits = batch.try_completion_logits(student)?;
        let teacher_logits = batch.try_completion_logits(teacher)?.detach();
        let device = student_logits.device();
        self.loss.try_forward(
            student_logits,
            teacher_logits,
            batch.completion_mask.clone().to_device(&device),
        )
    }

    /// One step: flips the batch's coin ([`on_policy`](Self::on_policy)); on-policy, samples
    /// one completion per prompt from the student (`student.valid()`) with `sampler`,
    /// otherwise uses `completions` (the dataset's, one per prompt, each ending with its EOS
    /// token); then one clipped optimizer step on [`try_loss`](Self::try_loss).
    ///
    /// `student` lives on an autodiff device; `teacher` is frozen (any device of the same
    /// backend). `sampler` must draw one completion per prompt (`num_generations = 1`);
    /// TRL's `max_new_tokens` / `max_completion_length` and temperature are its settings.
    ///
    /// Errors: `completions` not one per prompt or with an empty row, a sampler drawing more
    /// than one completion per prompt ([`Error::Config`]), and [`try_loss`](Self::try_loss)'s
    /// errors.
    #[allow(clippy::too_many_arguments)]
    pub fn try_step<M: CausalLm + Module, T: CausalLm + ?Sized>(
        &self,
        student: M,
        teacher: &T,
        optim: &mut ModuleOptimizer,
        sampler: &Sampler,
        prompts: &Prompts,
        completions: &[Vec<i64>],
        step: u64,
    ) -> crate::Result<DistillationStepOutput<M>> {
        if sampler.config().num_generations != 1 {
            return Err(Error::config(
                "sampler.num_generations",
                "must be 1 (one completion per prompt, as in the dataset)",
                sampler.config().num_generations,
            ));
        }
        let on_policy = self.on_policy(step);
        let batch = if on_policy {
            sampler.try_sample(&student.valid(), prompts, mix(self.config.seed ^ step))?
        } else {
            Generation::try_from_completions(prompts, completions, sampler.config().pad_token_id)?
        };
        let out = self.try_loss(&student, teacher, &batch)?;
        let mut metrics = out.metrics.clone();
        metrics.insert("loss", out.loss.clone());
        let mut grads = GradientsParams::from_grads(out.loss.backward(), &student);
        if let Some(max_norm) = self.config.max_grad_norm {
            crate::rl::clip_grad_norm_on_device(&student, &mut grads, max_norm)?;
        }
        let student = optim.step(self.config.learning_rate, student, grads);
        let mut host = metrics.to_host();
        host.insert("on_policy".into(), on_policy as u8 as f64);
        Ok(DistillationStepOutput {
            student,
            batch,
            on_policy,
            metrics: host,
        })
    }
}

impl Generation {
    /// A [`Generation`] from given completions (a dataset's, or a teacher's): one per prompt,
    /// right-padded with `pad_token_id`, the mask true on every given token. `logps` and
    /// `sampling_logps` are 0 (nothing was sampled), every row is `finished`,
    /// `num_generations` is 1.
    ///
    /// Errors: not one completion per prompt ([`Error::Shape`]), an empty completion
    /// ([`Error::Empty`]).
    pub fn try_from_completions(
        prompts: &Prompts,
        completions: &[Vec<i64>],
        pad_token_id: i64,
    ) -> crate::Result<Generation> {
        let r = prompts.len();
        if completions.len() != r {
            return Err(Error::shape(
                "completions",
                format!("one completion per prompt ({r})"),
                &[completions.len()],
            ));
        }
        if let Some(i) = completions.iter().position(Vec::is_empty) {
            return Err(Error::Empty {
                arg: "completions",
                what: format!("completion {i} has no token"),
            });
        }
        let c = completions.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(r * c);
        let mut mask = Vec::with_capacity(r * c);
        for row in completions {
            ids.extend(row.iter().copied());
            ids.extend(std::iter::repeat_n(pad_token_id, c - row.len()));
            mask.extend(std::iter::repeat_n(true, row.len()));
            mask.extend(std::iter::repeat_n(false, c - row.len()));
        }
        let device = prompts.ids.device();
        let zeros = Tensor::<2>::zeros([r, c], &device);
        Ok(Generation {
            prompt_ids: prompts.ids.clone(),
            prompt_mask: prompts.attention_mask.clone(),
            completion_ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [r, c]), &device),
            completion_mask: Tensor::<2, Bool>::from_data(TensorData::new(mask, [r, c]), &device),
            logps: zeros.clone(),
            sampling_logps: zeros,
            finished: Tensor::<1, Bool>::from_data(TensorData::new(vec![true; r], [r]), &device),
            num_generations: 1,
            logps_temperature: 1.0,
            max_new_tokens: c,
            support: None,
        })
    }
}
