//! Logit distillation: forward KL, reverse KL and the generalized Jensen-Shannon divergence
//! between a student's and a teacher's next-token distributions over the full vocabulary
//! (TRL 1.16's `DistillationTrainer`, GKD's `generalized_jsd_loss`).
//!
//! Per scored position, with `log p_s = log_softmax(z_s / T)` and `log p_t =
//! log_softmax(z_t / T)` (each model's raw logits first scaled by its `logit_scale` and
//! soft-capped, `z = cap tanh(scale raw / cap)`):
#![cfg_attr(
    doc,
    doc = r#"$$D_\beta = \begin{cases} \mathrm{KL}(p_t \,\|\, p_s) & \beta = 0 \text{ (forward KL)}\\ \mathrm{KL}(p_s \,\|\, p_t) & \beta = 1 \text{ (reverse KL)}\\ \beta\,\mathrm{KL}(p_t \,\|\, m) + (1-\beta)\,\mathrm{KL}(p_s \,\|\, m),\ m = (1-\beta)\,p_s + \beta\,p_t & 0 < \beta < 1 \end{cases}$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`D = KL(p_t || p_s)` (beta 0), `KL(p_s || p_t)` (beta 1), else `beta KL(p_t || m) + (1 - beta) KL(p_s || m)` with `m = (1 - beta) p_s + beta p_t`"
)]
//!
//! The loss is `sum over scored positions of D / normalizer` ([`Normalizer::TokenMean`]:
//! TRL's local mean, `sum / max(n_valid, 1)`; [`Normalizer::GlobalTokens`] with
//! `num_items_in_batch`, exact under gradient accumulation and data parallelism). There is no
//! `T^2` factor (TRL has none). The endpoints are special-cased as in TRL: the mixture formula
//! tends to 0 as `beta -> 0` or `beta -> 1`, so the loss jumps at both ends.
//!
//! Two paths share the reduction ([`DistillationLoss::try_reduce`]):
//! - logits ([`DistillationLoss::try_forward`]): `[B, T, V]` student and teacher logits;
//! - fused ([`DistillationLoss::try_forward_fused`]): hidden states and LM heads of both
//!   models, never allocating either `[N, V]` logits (tiles over rows and vocabulary, only the
//!   scored rows projected, a hand-written backward to the student's hidden states, weight and
//!   bias; natively on flex, from burn primitives in row chunks on CubeCL devices).
//!
//! The teacher never receives a gradient (its inputs are detached).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Tensor};

use super::metrics::{LossOutput, Metrics};
use crate::error::{Error, check_in_closed, check_positive};
use crate::logps::{LmHead, LmHeadLayout, LogpsImplementation, has_native_kernel};
use crate::reduce::{Normalizer, log_softmax, mask_like, zero_masked};

/// Configuration of [`DistillationLoss`] (TRL 1.16 `DistillationConfig` names).
#[derive(Config, Debug)]
pub struct DistillationLossConfig {
    /// Interpolation of the generalized JSD: 0 = forward KL `KL(teacher || student)`, 1 =
    /// reverse KL `KL(student || teacher)`, in between the JSD with mixture `(1 - beta) p_s +
    /// beta p_t`. In `[0, 1]`. Default 1.0 (TRL `DistillationConfig.beta`).
    #[config(default = 1.0)]
    pub beta: f64,
    /// Softmax temperature of both models (> 0); no `T^2` factor. Default 1.0.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiplier of the student's raw logits, applied first (Cohere / Granite). Default 1.0.
    #[config(default = 1.0)]
    pub student_logit_scale: f64,
    /// Multiplier of the teacher's raw logits. Default 1.0.
    #[config(default = 1.0)]
    pub teacher_logit_scale: f64,
    /// Student final-logit soft-capping `cap tanh(z / cap)` (Gemma 2). Default: none.
    #[config(default = "None")]
    pub student_final_logit_softcapping: Option<f64>,
    /// Teacher final-logit soft-capping. Default: none.
    #[config(default = "None")]
    pub teacher_final_logit_softcapping: Option<f64>,
    /// How the per-token divergences become the loss. Default [`Normalizer::TokenMean`]
    /// (TRL's local mean); TRL's `num_items_in_batch` is [`Normalizer::GlobalTokens`];
    /// GKD's `batchmean` without labels is `Constant(B)`, its `sum` is `Sum`.
    #[config(default = "Normalizer::TokenMean")]
    pub normalizer: Normalizer,
    /// Fused path: vocabulary columns per tile. Default: automatic (min(V, 1024)).
    #[config(default = "None")]
    pub vocab_chunk_size: Option<usize>,
    /// Fused path: token rows per tile. Default: automatic (a tile of about 2 Mi logits).
    #[config(default = "None")]
    pub token_chunk_size: Option<usize>,
    /// Fused path implementation: `Auto` runs the fused op where the device has it, `Reference`
    /// materializes both heads' logits (test oracle). Default `Auto`.
    #[config(default = "LogpsImplementation::Auto")]
    pub implementation: LogpsImplementation,
}

impl DistillationLossConfig {
    /// Validates the configuration: `beta` in `[0, 1]`, positive temperature, scales and caps,
    /// tile sizes at least 1, a valid normalizer.
    pub fn validate(&self) -> crate::Result<()> {
        check_in_closed("beta", self.beta, 0.0, 1.0)?;
        check_positive("temperature", self.temperature)?;
        check_positive("student_logit_scale", self.student_logit_scale)?;
        check_positive("teacher_logit_scale", self.teacher_logit_scale)?;
        if let Some(cap) = self.student_final_logit_softcapping {
            check_positive("student_final_logit_softcapping", cap)?;
        }
        if let Some(cap) = self.teacher_final_logit_softcapping {
            check_positive("teacher_final_logit_softcapping", cap)?;
        }
        for (field, chunk) in [
            ("vocab_chunk_size", self.vocab_chunk_size),
            ("token_chunk_size", self.token_chunk_size),
        ] {
            if chunk == Some(0) {
                return Err(Error::Config {
                    field,
                    reason: "must be at least 1 (or None for automatic)".into(),
                    value: "Some(0)".into(),
                });
            }
        }
        self.normalizer.validate()
    }

    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<DistillationLoss> {
        self.validate()?;
        Ok(DistillationLoss {
            kind: DivergenceKind::from_beta(self.beta),
            temperature: self.temperature,
            student: Transform {
                scale: self.student_logit_scale,
                softcap: self.student_final_logit_softcapping,
            },
            teacher: Transform {
                scale: self.teacher_logit_scale,
                softcap: self.teacher_final_logit_softcapping,
            },
            normalizer: self.normalizer,
            vocab_chunk: self.vocab_chunk_size,
            token_chunk: self.token_chunk_size,
            implementation: self.implementation,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> DistillationLoss = try_init;
    }
}

pub(crate) use crate::logps::DivergenceKind;

/// A model's logit transform before the temperature: `cap tanh(scale raw / cap)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Transform {
    scale: f64,
    softcap: Option<f64>,
}

impl Transform {
    fn apply<const D: usize>(&self, raw: Tensor<D>, temperature: f64) -> Tensor<D> {
        let mut z = if self.scale == 1.0 {
            raw
        } else {
            raw.mul_scalar(self.scale)
        };
        if let Some(cap) = self.softcap {
            z = z.mul_scalar(1.0 / cap).tanh().mul_scalar(cap);
        }
        if temperature == 1.0 {
            z
        } else {
            z.mul_scalar(1.0 / temperature)
        }
    }
}

/// Per-token divergences of a batch, before the reduction.
///
/// # Shapes
/// `divergence`, `entropy`, `mask`: `[B, T]`.
#[derive(Debug, Clone)]
pub struct DivergenceTerms {
    /// The divergence `D` per position (differentiable with respect to the student); exactly 0
    /// at masked positions.
    pub divergence: Tensor<2>,
    /// The student's entropy `-sum_v p_s log p_s` per position (no gradient); 0 where masked.
    pub entropy: Tensor<2>,
    /// Scored positions.
    pub mask: Tensor<2, Bool>,
}

/// The distillation loss, built by [`DistillationLossConfig::init`]. See the module docs.
///
/// # Shapes
/// - logits path: `student_logits`, `teacher_logits` `[B, T, V]` (the same `V`), `mask`
///   `[B, T]` (`true` = a completion token that counts)
/// - fused path: `student_hidden` `[B, T, Hs]`, `teacher_hidden` `[B, T, Ht]` (widths may
///   differ), heads of vocabulary `V` each ([`LmHead`] or a burn `Linear`), `mask` `[B, T]`
/// - output: `loss` `[1]`, `per_example` `[B]` (each row's mean divergence over its scored
///   positions; 0 for a row with none)
///
/// Metrics (batch means over scored positions, no host sync): `divergence` (the token-mean
/// divergence, whatever the normalizer), `entropy` (student), `num_tokens`.
#[derive(Module, Debug)]
pub struct DistillationLoss {
    #[module(skip)]
    kind: DivergenceKind,
    temperature: f64,
    #[module(skip)]
    student: Transform,
    #[module(skip)]
    teacher: Transform,
    #[module(skip)]
    normalizer: Normalizer,
    #[module(skip)]
    vocab_chunk: Option<usize>,
    #[module(skip)]
    token_chunk: Option<usize>,
    #[module(skip)]
    implementation: LogpsImplementation,
}

/// Elementwise summands of the divergence over the vocabulary (`[..., V]`): GKD's
/// `reduction = "none"` terms. `student_logps`, `teacher_logps` are log-probs.
fn elementwise_terms<const D: usize>(
    kind: DivergenceKind,
    student_logps: Tensor<D>,
    teacher_logps: Tensor<D>,
) -> Tensor<D> {
    let (lps, lpt) = (student_logps, teacher_logps);
    match kind {
        DivergenceKind::Forward => lpt.clone().exp() * (lpt - lps),
        DivergenceKind::Reverse => lps.clone().exp() * (lps - lpt),
        DivergenceKind::Jsd(beta) => {
            // log m = logaddexp(a, b) = max + log1p(exp(-|a - b|)), max = (a + b + |a - b|) / 2.
            let a = lps.clone().add_scalar((1.0 - beta).ln());
            let b = lpt.clone().add_scalar(beta.ln());
            let gap = (a.clone() - b.clone()).abs();
            let max = (a + b + gap.clone()).mul_scalar(0.5);
            let lm = max + gap.neg().exp().log1p();
            (lpt.clone().exp() * (lpt - lm.clone())).mul_scalar(beta)
                + (lps.clone().exp() * (lps - lm)).mul_scalar(1.0 - beta)
        }
    }
}

impl DistillationLoss {
    /// `(student, teacher)` log-probs of transformed logits; the teacher detached.
    fn logps<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        // The teacher: detached, on the student's (autodiff or plain) device.
        let teacher_logits = if student_logits.is_autodiff() {
            teacher_logits.detach().autodiff()
        } else {
            teacher_logits.inner()
        };
        let zs = self.student.apply(student_logits, self.temperature);
        let zt = self.teacher.apply(teacher_logits, self.temperature);
        (log_softmax(zs, D - 1), log_softmax(zt, D - 1))
    }

    fn check_logits(
        student_logits: &Tensor<3>,
        teacher_logits: &Tensor<3>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> crate::Result<()> {
        let [b, t, v] = student_logits.dims();
        if teacher_logits.dims() != [b, t, v] {
            return Err(Error::shape(
                "teacher_logits",
                format!(
                    "[B, T, V] = {:?} (the shape of `student_logits`; student and teacher must share the vocabulary)",
                    [b, t, v]
                ),
                &teacher_logits.dims(),
            ));
        }
        if let Some(mask) = mask
            && mask.dims() != [b, t]
        {
            return Err(Error::shape(
                "mask",
                format!(
                    "[B, T] = {:?} (of `student_logits` {:?})",
                    [b, t],
                    [b, t, v]
                ),
                &mask.dims(),
            ));
        }
        if b == 0 || v == 0 {
            return Err(Error::Empty {
                arg: "student_logits",
                what: format!("shape {:?}", [b, t, v]),
            });
        }
        crate::error::check_dtype_like(
            "teacher_logits",
            teacher_logits,
            "student_logits",
            student_logits,
        )?;
        crate::error::check_finite(student_logits, "student_logits")?;
        crate::error::check_finite(teacher_logits, "teacher_logits")
    }

    crate::error::panicking! {
        /// The loss from materialized logits (see the type's `# Shapes`).
        pub fn forward(
            &self,
            student_logits: Tensor<3>,
            teacher_logits: Tensor<3>,
            mask: Tensor<2, Bool>,
        ) -> LossOutput = try_forward;
    }

    /// Non-panicking form of [`forward`](Self::forward): [`Error::Shape`] when the logits or
    /// the mask disagree (a different vocabulary included), [`Error::Empty`] for `B = 0` or
    /// `V = 0`, [`Error::DType`] for logits of different dtypes.
    pub fn try_forward(
        &self,
        student_logits: Tensor<3>,
        teacher_logits: Tensor<3>,
        mask: Tensor<2, Bool>,
    ) -> crate::Result<LossOutput> {
        let terms = self.try_terms(student_logits, teacher_logits, mask)?;
        self.try_reduce(&terms)
    }

    /// Per-token divergences and student entropies from materialized logits (the first half of
    /// [`try_forward`](Self::try_forward)).
    pub fn try_terms(
        &self,
        student_logits: Tensor<3>,
        teacher_logits: Tensor<3>,
        mask: Tensor<2, Bool>,
    ) -> crate::Result<DivergenceTerms> {
        let mask = crate::reduce::canonical_mask(mask);
        Self::check_logits(&student_logits, &teacher_logits, Some(&mask))?;
        let student_logits = crate::precision::accumulate_in_f32(student_logits, "student_logits")?;
        let teacher_logits = crate::precision::accumulate_in_f32(teacher_logits, "teacher_logits")?;
        let (lps, lpt) = self.logps(student_logits, teacher_logits);
        let entropy = (lps.clone().detach().exp() * lps.clone().detach())
            .sum_dim(2)
            .squeeze_dim::<2>(2)
            .neg();
        let divergence = elementwise_terms(self.kind, lps, lpt)
            .sum_dim(2)
            .squeeze_dim::<2>(2);
        Ok(DivergenceTerms {
            divergence: zero_masked(divergence, mask.clone()),
            entropy: zero_masked(entropy, mask.clone()),
            mask,
        })
    }

    /// The elementwise summands `[B, T, V]` of the divergence (GKD's `reduction = "none"`):
    /// `p_t (log p_t - log p_s)` (forward KL), `p_s (log p_s - log p_t)` (reverse KL), or
    /// `beta p_t (log p_t - log m) + (1 - beta) p_s (log p_s - log m)`; no mask applied.
    /// Materializes the logits (no fused form).
    pub fn try_elementwise(
        &self,
        student_logits: Tensor<3>,
        teacher_logits: Tensor<3>,
    ) -> crate::Result<Tensor<3>> {
        Self::check_logits(&student_logits, &teacher_logits, None)?;
        let student_logits = crate::precision::accumulate_in_f32(student_logits, "student_logits")?;
        let teacher_logits = crate::precision::accumulate_in_f32(teacher_logits, "teacher_logits")?;
        let (lps, lpt) = self.logps(student_logits, teacher_logits);
        Ok(elementwise_terms(self.kind, lps, lpt))
    }

    /// The shared reduction of both paths: the configured normalizer over the scored
    /// positions, per-row means and the metrics.
    ///
    /// Errors: a mask of another shape ([`Error::Shape`]), `B = 0` ([`Error::Empty`]).
    pub fn try_reduce(&self, terms: &DivergenceTerms) -> crate::Result<LossOutput> {
        let mask = crate::reduce::canonical_mask(terms.mask.clone());
        crate::error::check_same_shape(
            "terms.mask",
            &mask.dims(),
            &terms.divergence.dims(),
            "terms.divergence",
        )?;
        if terms.divergence.dims()[0] == 0 {
            return Err(Error::Empty {
                arg: "terms",
                what: "the batch has no row".into(),
            });
        }
        let d = terms.divergence.clone();
        let loss = self.normalizer.try_reduce_tokens(d.clone(), mask.clone())?;
        let per_example = crate::reduce::masked_row_mean(d.clone(), mask.clone());
        let mut metrics = Metrics::new();
        metrics.insert(
            "divergence",
            Normalizer::TokenMean.try_reduce_tokens(d.clone(), mask.clone())?,
        );
        metrics.insert(
            "entropy",
            Normalizer::TokenMean.try_reduce_tokens(terms.entropy.clone(), mask.clone())?,
        );
        metrics.insert("num_tokens", mask_like(&d, mask).sum());
        Ok(LossOutput {
            loss,
            per_example,
            metrics,
        })
    }

    crate::error::panicking! {
        /// The loss through the fused two-head op (see the type's `# Shapes`).
        pub fn forward_fused(
            &self,
            student_hidden: Tensor<3>,
            student_head: impl Into<LmHead>,
            teacher_hidden: Tensor<3>,
            teacher_head: impl Into<LmHead>,
            mask: Tensor<2, Bool>,
        ) -> LossOutput = try_forward_fused;
    }

    /// Non-panicking form of [`forward_fused`](Self::forward_fused).
    pub fn try_forward_fused(
        &self,
        student_hidden: Tensor<3>,
        student_head: impl Into<LmHead>,
        teacher_hidden: Tensor<3>,
        teacher_head: impl Into<LmHead>,
        mask: Tensor<2, Bool>,
    ) -> crate::Result<LossOutput> {
        let terms = self.try_terms_fused(
            student_hidden,
            student_head,
            teacher_hidden,
            teacher_head,
            mask,
        )?;
        self.try_reduce(&terms)
    }

    /// Per-token divergences and entropies through the fused op (the first half of
    /// [`try_forward_fused`](Self::try_forward_fused)).
    ///
    /// Errors ([`Error::Shape`] naming the argument): hidden states that are not `[B, T, H]`
    /// with the same `B, T`, a head whose hidden size differs from its hidden states' width,
    /// a bias that is not `[V]`, a teacher vocabulary different from the student's, a mask
    /// that is not `[B, T]`; [`Error::Empty`] for an empty batch; [`Error::DType`] for mixed
    /// dtypes within a model.
    pub fn try_terms_fused(
        &self,
        student_hidden: Tensor<3>,
        student_head: impl Into<LmHead>,
        teacher_hidden: Tensor<3>,
        teacher_head: impl Into<LmHead>,
        mask: Tensor<2, Bool>,
    ) -> crate::Result<DivergenceTerms> {
        let (student_head, teacher_head) = (student_head.into(), teacher_head.into());
        let [b, t, hs] = student_hidden.dims();
        let [bt, tt, ht] = teacher_hidden.dims();
        if [bt, tt] != [b, t] {
            return Err(Error::shape(
                "teacher_hidden",
                format!(
                    "[B, T, Ht] with [B, T] = {:?} (of `student_hidden` {:?})",
                    [b, t],
                    [b, t, hs]
                ),
                &teacher_hidden.dims(),
            ));
        }
        let mask = crate::reduce::canonical_mask(mask);
        if mask.dims() != [b, t] {
            return Err(Error::shape(
                "mask",
                format!("[B, T] = {:?} (of `student_hidden`)", [b, t]),
                &mask.dims(),
            ));
        }
        let v = check_head("student_head", &student_head, hs)?;
        let vt = check_head("teacher_head", &teacher_head, ht)?;
        if vt != v {
            return Err(Error::shape(
                "teacher_head.weight",
                format!(
                    "a vocabulary of V = {v} (the student head's, weight {:?}); distillation over the full vocabulary needs the same tokenizer",
                    student_head.weight().dims()
                ),
                &teacher_head.weight().dims(),
            ));
        }
        let n = b * t;
        if n == 0 || hs == 0 || ht == 0 {
            return Err(Error::Empty {
                arg: "student_hidden",
                what: format!(
                    "student_hidden {:?}, teacher_hidden {:?}",
                    [b, t, hs],
                    [b, t, ht]
                ),
            });
        }
        let (sw, sb, s_layout) = student_head.into_parts();
        let (tw, tb, t_layout) = teacher_head.into_parts();
        crate::error::check_dtype_like(
            "student_head.weight",
            &sw,
            "student_hidden",
            &student_hidden,
        )?;
        crate::error::check_dtype_like_opt(
            "student_head.bias",
            sb.as_ref(),
            "student_hidden",
            &student_hidden,
        )?;
        crate::error::check_dtype_like(
            "teacher_head.weight",
            &tw,
            "teacher_hidden",
            &teacher_hidden,
        )?;
        crate::error::check_dtype_like_opt(
            "teacher_head.bias",
            tb.as_ref(),
            "teacher_hidden",
            &teacher_hidden,
        )?;
        crate::error::check_finite(&student_hidden, "student_hidden")?;
        crate::error::check_finite(&teacher_hidden, "teacher_hidden")?;
        let f32_ = |x: Tensor<2>, arg| crate::precision::accumulate_in_f32(x, arg);
        let sh = f32_(student_hidden.reshape([n, hs]), "student_hidden")?;
        let sw = f32_(sw, "student_head.weight")?;
        let sb = sb
            .map(|x| crate::precision::accumulate_in_f32(x, "student_head.bias"))
            .transpose()?;
        // The teacher: detached, in the student's dtype and on its (autodiff or plain) device.
        let like = |x: Tensor<2>| {
            let x = x.detach().cast(sh.dtype());
            if sh.is_autodiff() {
                x.autodiff()
            } else {
                x.inner()
            }
        };
        let th = like(teacher_hidden.reshape([n, ht]));
        let tw = like(tw);
        let tb = tb.map(|x| like(x.unsqueeze_dim::<2>(0)).squeeze_dim::<1>(0));
        let mask_flat = mask.clone().reshape([n]);
        let native =
            self.implementation == LogpsImplementation::Auto && has_native_kernel(&sh.device());
        let (divergence, entropy) = if native {
            let params = self.fused_params(s_layout, t_layout, sb.is_some(), tb.is_some());
            let zeros = || Tensor::<1>::zeros([v], (&sh.device(), sh.dtype()));
            let sb = sb.unwrap_or_else(zeros);
            let tb = tb.unwrap_or_else(zeros);
            let valid = mask_like(
                &Tensor::<1>::zeros([n], (&sh.device(), sh.dtype())),
                mask_flat,
            );
            let packed =
                crate::logps::fused_divergence_op([sh, sw], sb, [th, tw], tb, valid, params);
            let column = |c: usize| packed.clone().narrow(1, c, 1).reshape([b, t]);
            (column(0), column(1).detach())
        } else {
            let logits = |h: Tensor<2>, w: Tensor<2>, bias: Option<Tensor<1>>, layout| {
                let w_hv = match layout {
                    LmHeadLayout::VocabMajor => w.transpose(),
                    LmHeadLayout::HiddenMajor => w,
                };
                let mut z = h.matmul(w_hv);
                if let Some(bias) = bias {
                    z = z + bias.unsqueeze_dim::<2>(0);
                }
                z.reshape([b, t, v])
            };
            let terms = self.try_terms(
                logits(sh, sw, sb, s_layout),
                logits(th, tw, tb, t_layout),
                mask.clone(),
            )?;
            (terms.divergence, terms.entropy)
        };
        Ok(DivergenceTerms {
            divergence,
            entropy,
            mask,
        })
    }

    fn fused_params(
        &self,
        student_layout: LmHeadLayout,
        teacher_layout: LmHeadLayout,
        student_has_bias: bool,
        teacher_has_bias: bool,
    ) -> crate::logps::DivergenceParams {
        let head = |tr: Transform, layout| crate::logps::FusedParams {
            temperature: self.temperature,
            logit_scale: tr.scale,
            softcap: tr.softcap,
            token_chunk: self.token_chunk,
            vocab_chunk: self.vocab_chunk,
            stats: false,
            layout,
        };
        crate::logps::DivergenceParams {
            kind: self.kind,
            student: head(self.student, student_layout),
            teacher: head(self.teacher, teacher_layout),
            student_has_bias,
            teacher_has_bias,
        }
    }

    /// The divergence this loss computes.
    pub fn beta(&self) -> f64 {
        match self.kind {
            DivergenceKind::Forward => 0.0,
            DivergenceKind::Reverse => 1.0,
            DivergenceKind::Jsd(beta) => beta,
        }
    }
}

/// `head`'s vocabulary size after checking it against hidden states of width `h`.
fn check_head(arg: &'static str, head: &LmHead, h: usize) -> crate::Result<usize> {
    let (hw, v) = head.sizes();
    let dims = head.weight().dims();
    if hw != h {
        let layout = match head.layout() {
            LmHeadLayout::VocabMajor => "[V, H]",
            LmHeadLayout::HiddenMajor => "[H, V] (burn `Linear`)",
        };
        return Err(Error::Shape {
            arg,
            expected: format!("a weight {layout} with H = {h} (the width of its hidden states)"),
            got: dims.to_vec(),
        });
    }
    if let Some(bias) = head.bias()
        && bias.dims() != [v]
    {
        return Err(Error::Shape {
            arg,
            expected: format!("a bias [V] = [{v}] (vocabulary of its weight {dims:?})"),
            got: bias.dims().to_vec(),
        });
    }
    Ok(v)
}
