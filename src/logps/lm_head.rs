//! Public API of the fused LM-head log-probs.

use burn::config::Config;
use burn::tensor::{Bool, Int, Tensor, activation};

use super::fused::fused_op;
use super::fused_params::{FusedParams, OUT_COLS};
use super::gather::{GatheredLogps, LogpsImplementation};
use super::head::{LmHead, LmHeadLayout};
use crate::backends::has_native_kernel;
use crate::error::{Error, check_positive, unwrap_or_panic};
use crate::reduce::mask_like;

/// Configuration of [`FusedLogps`], TRL's `ChunkedLogProbFunction` options by their meaning.
#[derive(Config, Debug)]
pub struct FusedLogpsConfig {
    /// Target value that marks an ignored row. Default: -100.
    #[config(default = -100)]
    pub ignore_index: i64,
    /// Softmax temperature (> 0), applied last. Default: 1.0.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiplier of the raw logits, applied first (Cohere/Granite style). Default: 1.0.
    #[config(default = 1.0)]
    pub logit_scale: f64,
    /// Final logit soft-capping `cap * tanh(z / cap)` (Gemma 2 style). Default: none.
    #[config(default = "None")]
    pub final_logit_softcapping: Option<f64>,
    /// Vocabulary columns per tile. Default: automatic (min(V, 1024)).
    #[config(default = "None")]
    pub vocab_chunk_size: Option<usize>,
    /// Token rows per tile. Default: automatic (a tile of about 2 Mi logits, 8 MiB in f32).
    #[config(default = "None")]
    pub token_chunk_size: Option<usize>,
    /// Also compute entropy (differentiable), log(sum p^2), mean logit and is-top-1.
    /// Default: false (log-probs only, the cheapest pass).
    #[config(default = false)]
    pub with_stats: bool,
    /// Check on every device that targets are in `[0, V)` or `ignore_index`
    /// ([`Error::LabelOutOfRange`]). Default: false, which still checks on the CPU backends
    /// (flex, ndarray: the targets are host memory) in every build profile, and on other
    /// devices in [checked mode](crate::set_checked_mode), in every build profile. On a
    /// GPU device outside those the targets are not read back (no sync, see
    /// [`host_reads`](crate::host_reads)): a row with an out-of-range target gets a NaN
    /// log-prob (never an out-of-bounds read).
    #[config(default = false)]
    pub check_targets: bool,
    /// Implementation. `Reference` materializes the `[N, V]` logits (test oracle).
    #[config(default = "LogpsImplementation::Auto")]
    pub implementation: LogpsImplementation,
}

impl FusedLogpsConfig {
    /// Validates the configuration.
    pub fn validate(&self) -> crate::Result<()> {
        check_positive("temperature", self.temperature)?;
        check_positive("logit_scale", self.logit_scale)?;
        if let Some(cap) = self.final_logit_softcapping {
            check_positive("final_logit_softcapping", cap)?;
        }
        for (field, value) in [
            ("vocab_chunk_size", self.vocab_chunk_size),
            ("token_chunk_size", self.token_chunk_size),
        ] {
            if value == Some(0) {
                return Err(Error::config(field, "must be >= 1", 0));
            }
        }
        Ok(())
    }

    /// Validates and builds the op.
    pub fn try_init(&self) -> crate::Result<FusedLogps> {
        self.validate()?;
        Ok(FusedLogps {
            params: FusedParams {
                temperature: self.temperature,
                logit_scale: self.logit_scale,
                softcap: self.final_logit_softcapping,
                token_chunk: self.token_chunk_size,
                vocab_chunk: self.vocab_chunk_size,
                stats: self.with_stats,
                layout: LmHeadLayout::VocabMajor,
            },
            ignore_index: self.ignore_index,
            check_targets: self.check_targets,
            implementation: self.implementation,
        })
    }

    /// Builds the op.
    ///
    /// # Panics
    /// If the configuration is invalid.
    pub fn init(&self) -> FusedLogps {
        unwrap_or_panic(self.try_init())
    }
}

/// Outputs of [`FusedLogps`], one value per row; all are exactly 0 on ignored rows.
#[derive(Debug, Clone)]
pub struct FusedLogpsOutput {
    /// Log-prob of each row's target `[N]` (differentiable).
    pub logps: Tensor<1>,
    /// Entropy of each row's distribution `[N]` (differentiable), with `with_stats`.
    pub entropy: Option<Tensor<1>>,
    /// `log(sum_v p_v^2)` `[N]` (WPO weights), with `with_stats`; no gradient.
    pub log_sum_sq_probs: Option<Tensor<1>>,
    /// Mean of the transformed logits over the vocabulary `[N]`, with `with_stats`; no gradient.
    pub mean_logits: Option<Tensor<1>>,
    /// Whether the target is the first maximal logit `[N]`, with `with_stats`.
    pub is_top1: Option<Tensor<1, Bool>>,
    /// Rows that count (target not ignored) `[N]`.
    pub mask: Tensor<1, Bool>,
}

/// Fused, chunked LM-head log-probs, built by [`FusedLogpsConfig::init`].
///
/// This computes, for each row `n`, with `z = softcap(scale * (hidden[n] W^T + b)) / T` (`W` the
/// `[V, H]` weight; `hidden[n] W` for the `[H, V]` layout):
/// `logprob[n] = z[target] - logsumexp(z)` (and optionally the entropy and other statistics)
/// tile by tile (token chunk x vocabulary chunk, online logsumexp), never allocating the
/// `[N, V]` logits. Backward is written by hand: it recomputes each tile, turns it into
/// `d logits` in place and accumulates `d hidden`, `d weight` and `d bias`.
///
/// # LM-head layouts
/// The weight comes in one of two layouts, named in the type by [`LmHead`]:
/// - [`LmHeadLayout::VocabMajor`] `[V, H]`: PyTorch's `nn.Linear.weight`, Hugging Face
///   `lm_head.weight`, a tied embedding table. [`forward`](Self::forward) /
///   [`forward_causal`](Self::forward_causal) take this layout as a bare tensor.
/// - [`LmHeadLayout::HiddenMajor`] `[H, V]`: burn's [`Linear`](burn::nn::Linear)
///   (`[d_input, d_output]`). Pass the module itself:
///   `fused.forward_causal_head(hidden, &model.lm_head, labels)`.
///
/// Both are read in place (the CPU kernel's tile GEMMs use strided views of the weight; no
/// transposed `V x H` copy is made) and the weight's gradient is returned in the weight's own
/// layout. With `H == V` the two layouts have the same shape and give different log-probs, so
/// the layout is never inferred from the shape: a `[H, V]` weight passed to `forward` would be
/// read as `[V, H]` (with `H != V` that is a typed shape error naming both layouts).
///
/// Accumulation happens in f32 for f16/bf16 inputs (`hidden`, `weight` and `bias` are upcast
/// to f32 once, outputs are f32), in the inputs' dtype for f32/f64.
#[derive(Debug, Clone)]
pub struct FusedLogps {
    params: FusedParams,
    ignore_index: i64,
    check_targets: bool,
    implementation: LogpsImplementation,
}

impl FusedLogps {
    /// Whether this call reads the targets back for the range check (the config's
    /// `check_targets`, a CPU device, or checked mode).
    fn checks_targets(&self, device: &burn::tensor::Device) -> bool {
        self.check_targets || crate::error::index_checks(device)
    }

    /// Per-row outputs, for a `[V, H]` weight (the [`LmHeadLayout::VocabMajor`] layout of
    /// PyTorch's `nn.Linear` and Hugging Face checkpoints). For burn's [`Linear`](burn::nn::Linear)
    /// (`[H, V]`) use [`forward_head`](Self::forward_head); this is
    /// `forward_head(hidden, LmHead::vocab_major(weight, bias), targets)`.
    ///
    /// # Shapes
    /// - hidden: `[N, H]`, weight: `[V, H]` (the LM head's weight, as `nn.Linear` stores it),
    ///   bias: `[V]`, targets: `[N]` (`Int`)
    ///
    /// # Panics
    /// On the errors of [`try_forward`](Self::try_forward).
    pub fn forward(
        &self,
        hidden: Tensor<2>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        targets: Tensor<1, Int>,
    ) -> FusedLogpsOutput {
        unwrap_or_panic(self.try_forward(hidden, weight, bias, targets))
    }

    /// Non-panicking form of [`forward`](Self::forward) (`[V, H]` weight).
    pub fn try_forward(
        &self,
        hidden: Tensor<2>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        targets: Tensor<1, Int>,
    ) -> crate::Result<FusedLogpsOutput> {
        self.try_forward_head(hidden, LmHead::vocab_major(weight, bias), targets)
    }

    /// Per-row outputs for an [`LmHead`]: a burn [`Linear`](burn::nn::Linear) (`&linear`
    /// converts), or a weight with its layout named ([`LmHead::vocab_major`],
    /// [`LmHead::hidden_major`]). Either layout is read in place (no transposed copy) and its
    /// gradient comes back in the same layout.
    ///
    /// # Shapes
    /// - hidden: `[N, H]`, head: weight `[V, H]` or `[H, V]` by its layout, bias `[V]`,
    ///   targets: `[N]` (`Int`)
    ///
    /// # Panics
    /// On the errors of [`try_forward_head`](Self::try_forward_head).
    pub fn forward_head(
        &self,
        hidden: Tensor<2>,
        head: impl Into<LmHead>,
        targets: Tensor<1, Int>,
    ) -> FusedLogpsOutput {
        unwrap_or_panic(self.try_forward_head(hidden, head, targets))
    }

    /// Non-panicking form of [`forward_head`](Self::forward_head).
    pub fn try_forward_head(
        &self,
        hidden: Tensor<2>,
        head: impl Into<LmHead>,
        targets: Tensor<1, Int>,
    ) -> crate::Result<FusedLogpsOutput> {
        self.forward_checked(hidden, head.into(), targets, false)
    }

    /// `weight` and `bias` against `hidden [n, h]`; returns the vocabulary size.
    fn check_head(head: &LmHead, n: usize, h: usize) -> crate::Result<usize> {
        let dims = head.weight().dims();
        let (hw, v) = head.sizes();
        if hw != h {
            let expected = match head.layout() {
                LmHeadLayout::VocabMajor => format!(
                    "[V, H] with H = {h} (hidden size of `hidden` {:?}); a burn `Linear` \
                     weight [H, V] goes in as `LmHead::hidden_major` / `LmHead::from_linear`",
                    [n, h]
                ),
                LmHeadLayout::HiddenMajor => format!(
                    "[H, V] with H = {h} (hidden size of `hidden` {:?}, burn `Linear` layout); \
                     a PyTorch-layout weight [V, H] goes in as `LmHead::vocab_major`",
                    [n, h]
                ),
            };
            return Err(Error::shape("weight", expected, &dims));
        }
        if let Some(b) = head.bias()
            && b.dims() != [v]
        {
            return Err(Error::shape(
                "bias",
                format!("[V] = [{v}] (vocabulary size of `weight` {dims:?})"),
                &b.dims(),
            ));
        }
        Ok(v)
    }

    fn forward_checked(
        &self,
        hidden: Tensor<2>,
        head: LmHead,
        targets: Tensor<1, Int>,
        range_checked: bool,
    ) -> crate::Result<FusedLogpsOutput> {
        let [n, h] = hidden.dims();
        let v = Self::check_head(&head, n, h)?;
        let (weight, bias, layout) = head.into_parts();
        if targets.dims() != [n] {
            return Err(Error::shape(
                "targets",
                format!("[N] = [{n}] (rows of `hidden`)"),
                &targets.dims(),
            ));
        }
        if n == 0 || h == 0 || v == 0 {
            return Err(Error::Empty {
                arg: "hidden",
                what: format!("hidden {:?}, weight {:?}", [n, h], weight.dims()),
            });
        }
        let valid = targets.clone().not_equal_elem(self.ignore_index);
        let out_of_range = if range_checked {
            None
        } else {
            super::gather::guard_label_range(
                &targets,
                &valid,
                super::gather::LabelRange {
                    arg: "targets",
                    vocab: v,
                    ignore_index: self.ignore_index,
                    first_col: 0,
                    always: self.check_targets,
                },
            )?
        };
        crate::error::check_dtype_like("weight", &weight, "hidden", &hidden)?;
        crate::error::check_dtype_like_opt("bias", bias.as_ref(), "hidden", &hidden)?;
        crate::error::check_finite(&hidden, "hidden")?;
        crate::error::check_finite(&weight, "weight")?;
        if let Some(b) = &bias {
            crate::error::check_finite(b, "bias")?;
        }
        let hidden = crate::precision::accumulate_in_f32(hidden, "hidden")?;
        let weight = crate::precision::accumulate_in_f32(weight, "weight")?;
        let bias = bias
            .map(|b| crate::precision::accumulate_in_f32(b, "bias"))
            .transpose()?;
        let unsafe_target = match &out_of_range {
            Some(bad) => valid.clone().bool_not().bool_or(bad.clone()),
            None => valid.clone().bool_not(),
        };
        let safe = targets.mask_fill(unsafe_target, 0);
        let native =
            self.implementation == LogpsImplementation::Auto && has_native_kernel(&hidden.device());
        let params = FusedParams {
            layout,
            ..self.params
        };
        let packed = if native {
            let bias =
                bias.unwrap_or_else(|| Tensor::<1>::zeros([v], (&hidden.device(), hidden.dtype())));
            let valid_f = mask_like(
                &Tensor::<1>::zeros([n], (&hidden.device(), hidden.dtype())),
                valid.clone(),
            );
            fused_op(hidden, weight, bias, safe, valid_f, params)
        } else {
            self.reference(hidden, weight, layout, bias, safe, valid.clone())
        };
        let column = |c: usize| packed.clone().narrow(1, c, 1).squeeze_dim::<1>(1);
        let stats = self.params.stats;
        let detached = |c: usize| stats.then(|| column(c).detach());
        let logps = match out_of_range {
            Some(bad) => column(0).mask_fill(bad, f64::NAN),
            None => column(0),
        };
        Ok(FusedLogpsOutput {
            logps,
            entropy: stats.then(|| column(1)),
            log_sum_sq_probs: detached(2),
            mean_logits: detached(3),
            is_top1: stats.then(|| column(4).detach().greater_elem(0.5)),
            mask: valid,
        })
    }

    /// Causal-LM convenience for a `[V, H]` weight (PyTorch layout; for burn's
    /// [`Linear`](burn::nn::Linear) use [`try_forward_causal_head`](Self::try_forward_causal_head)):
    /// scores `hidden[:, :-1]` against `labels[:, 1:]` and returns the
    /// same [`GatheredLogps`] as [`super::TokenLogps`] with
    /// [`super::LabelAlignment::CausalShift`] on materialized logits, so every loss consumes
    /// both paths identically. Also returns the full per-row output (`[B * (T-1)]`).
    ///
    /// # Shapes
    /// - hidden: `[B, T, H]`, weight: `[V, H]`, bias: `[V]`, labels: `[B, T]` -> `[B, T-1]`
    pub fn try_forward_causal(
        &self,
        hidden: Tensor<3>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        labels: Tensor<2, Int>,
    ) -> crate::Result<(GatheredLogps, FusedLogpsOutput)> {
        self.try_forward_causal_head(hidden, LmHead::vocab_major(weight, bias), labels)
    }

    /// Panicking form of [`try_forward_causal`](Self::try_forward_causal) (`[V, H]` weight).
    ///
    /// # Panics
    /// On the errors of [`try_forward_causal`](Self::try_forward_causal).
    pub fn forward_causal(
        &self,
        hidden: Tensor<3>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        labels: Tensor<2, Int>,
    ) -> (GatheredLogps, FusedLogpsOutput) {
        unwrap_or_panic(self.try_forward_causal(hidden, weight, bias, labels))
    }

    /// Causal-LM convenience for an [`LmHead`] (a burn [`Linear`](burn::nn::Linear): pass
    /// `&linear`): scores `hidden[:, :-1]` against `labels[:, 1:]`, as
    /// [`try_forward_causal`](Self::try_forward_causal) does for a `[V, H]` weight.
    ///
    /// # Shapes
    /// - hidden: `[B, T, H]`, head: weight `[H, V]` (burn `Linear`) or `[V, H]` by its layout,
    ///   bias `[V]`, labels: `[B, T]` -> `[B, T-1]`
    pub fn try_forward_causal_head(
        &self,
        hidden: Tensor<3>,
        head: impl Into<LmHead>,
        labels: Tensor<2, Int>,
    ) -> crate::Result<(GatheredLogps, FusedLogpsOutput)> {
        let head = head.into();
        let [b, t, h] = hidden.dims();
        if labels.dims() != [b, t] {
            return Err(Error::shape(
                "labels",
                format!("[B, T] = [{b}, {t}] (first dims of hidden)"),
                &labels.dims(),
            ));
        }
        if t < 2 {
            return Err(Error::shape(
                "hidden",
                "T >= 2 (one position is lost to the causal shift)",
                &[b, t, h],
            ));
        }
        let range_checked = self.checks_targets(&labels.device());
        if range_checked {
            // Checked on the caller's `labels`, so a bad label is reported at its own position.
            let v = Self::check_head(&head, b * (t - 1), h)?;
            super::gather::check_label_range(&labels, "labels", v, self.ignore_index, 1)?;
        }
        let rows = b * (t - 1);
        let hidden = hidden.narrow(1, 0, t - 1).reshape([rows, h]);
        let targets = labels.narrow(1, 1, t - 1).reshape([rows]);
        let out = self.forward_checked(hidden, head, targets, range_checked)?;
        let gathered = GatheredLogps {
            logps: out.logps.clone().reshape([b, t - 1]),
            mask: out.mask.clone().reshape([b, t - 1]),
        };
        Ok((gathered, out))
    }

    /// Panicking form of [`try_forward_causal_head`](Self::try_forward_causal_head).
    ///
    /// # Panics
    /// On the errors of [`try_forward_causal_head`](Self::try_forward_causal_head).
    pub fn forward_causal_head(
        &self,
        hidden: Tensor<3>,
        head: impl Into<LmHead>,
        labels: Tensor<2, Int>,
    ) -> (GatheredLogps, FusedLogpsOutput) {
        unwrap_or_panic(self.try_forward_causal_head(hidden, head, labels))
    }

    /// The materialized-logits oracle: the same packed `[N, OUT_COLS]` layout from plain tensor
    /// ops (autodiff differentiates it).
    fn reference(
        &self,
        hidden: Tensor<2>,
        weight: Tensor<2>,
        layout: LmHeadLayout,
        bias: Option<Tensor<1>>,
        targets: Tensor<1, Int>,
        valid: Tensor<1, Bool>,
    ) -> Tensor<2> {
        let p = &self.params;
        let [n, _] = hidden.dims();
        let mut raw = match layout {
            LmHeadLayout::VocabMajor => hidden.matmul(weight.transpose()),
            LmHeadLayout::HiddenMajor => hidden.matmul(weight),
        };
        if let Some(b) = bias {
            raw = raw + b.unsqueeze_dim::<2>(0);
        }
        let mut z = raw.mul_scalar(p.logit_scale);
        if let Some(cap) = p.softcap {
            z = activation::tanh(z.mul_scalar(1.0 / cap)).mul_scalar(cap);
        }
        let z = z.mul_scalar(1.0 / p.temperature);
        let lse = crate::reduce::logsumexp(z.clone(), 1);
        let logp = z.clone() - lse.clone();
        let lp = logp
            .clone()
            .gather(1, targets.clone().unsqueeze_dim::<2>(1));
        let probs = logp.clone().exp();
        let mean_z = (probs.clone() * z.clone()).sum_dim(1);
        let entropy = (probs.clone() * logp.clone()).sum_dim(1).neg();
        let lss = (probs.clone() * probs).sum_dim(1).log();
        let mean = z.clone().mean_dim(1);
        let first_max = z.clone().argmax(1);
        let top1 = mask_like(&mean, first_max.equal(targets.unsqueeze_dim::<2>(1)));
        let packed = Tensor::cat(vec![lp, entropy, lss, mean, top1, lse, mean_z], 1);
        debug_assert_eq!(packed.dims(), [n, OUT_COLS]);
        let keep = mask_like(
            &Tensor::<2>::zeros([n, 1], (&packed.device(), packed.dtype())),
            valid.unsqueeze_dim::<2>(1),
        );
        packed * keep
    }
}
