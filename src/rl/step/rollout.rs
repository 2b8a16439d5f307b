//! What the update step reads: the [`Rollout`] (one row per sequence) and the
//! [`PolicyOutput`] the user's closure returns for a row subset.

use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::error::{Error, check_positive, check_same_shape};

/// What a rollout holds for the update. Rows are sequences; `T` is the scored (completion)
/// length the log-probs are aligned with.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Token ids `[B, S]` in whatever layout the model's closure needs (prompt + completion).
    pub tokens: Tensor<2, Int>,
    /// Positions that count in the loss `[B, T]`.
    pub mask: Tensor<2, Bool>,
    /// Log-probs at rollout time `[B, T]`.
    pub old_logps: Tensor<2>,
    /// Advantages `[B, T]` (PPO/GAE) or `[B, 1]` (GRPO/RLOO: one per sequence).
    pub advantages: Tensor<2>,
    /// Values at rollout time `[B, T]` (PPO value clipping).
    pub old_values: Option<Tensor<2>>,
    /// Value targets `[B, T]`.
    pub returns: Option<Tensor<2>>,
    /// Reference-model log-probs `[B, T]`: GRPO's KL term (`beta != 0`).
    pub ref_logps: Option<Tensor<2>>,
    /// Log-probs under the distribution the tokens were sampled from `[B, T]` (a truncated
    /// top-k/top-p sampler, or a separate inference engine): GRPO's off-policy mask.
    pub sampling_logps: Option<Tensor<2>>,
    /// Importance-sampling correction `[B, T]` per token or `[B, 1]` per sequence that
    /// multiplies GRPO's per-token loss (TRL's `importance_sampling_ratio`); see
    /// [`with_truncated_importance_sampling`](Self::with_truncated_importance_sampling).
    pub importance_sampling_ratio: Option<Tensor<2>>,
    /// Attention mask of `tokens` `[B, S]` (left-padded prompts): what the model's forward
    /// needs besides the ids ([`Generation::rollout`](crate::generate::Generation::rollout)
    /// sets it).
    pub attention_mask: Option<Tensor<2, Bool>>,
    /// The sampling support of each scored token `[B, T, K]` (token ids, `-1` unused) for
    /// sampling replay: the closure recomputes log-probs over it
    /// ([`support_logps`](crate::logps::support_logps)).
    pub support: Option<Tensor<3, Int>>,
}

/// A row subset of a [`Rollout`] (same type).
pub type RolloutBatch = Rollout;

impl Rollout {
    /// A rollout with what every loss reads; add the optional fields with the `with_*`
    /// methods.
    ///
    /// # Shapes
    /// - tokens `[B, S]`, mask / old_logps `[B, T]`, advantages `[B, T]` or `[B, 1]`
    pub fn new(
        tokens: Tensor<2, Int>,
        mask: Tensor<2, Bool>,
        old_logps: Tensor<2>,
        advantages: Tensor<2>,
    ) -> Self {
        Self {
            tokens,
            mask: crate::reduce::canonical_mask(mask),
            old_logps: old_logps.detach(),
            advantages: advantages.detach(),
            old_values: None,
            returns: None,
            ref_logps: None,
            sampling_logps: None,
            importance_sampling_ratio: None,
            attention_mask: None,
            support: None,
        }
    }

    /// Adds the sampling support of each token (sampling replay).
    pub fn with_support(mut self, support: Tensor<3, Int>) -> Self {
        self.support = Some(support);
        self
    }

    /// Adds the attention mask of `tokens` (the forward of a left-padded batch needs it).
    pub fn with_attention_mask(mut self, attention_mask: Tensor<2, Bool>) -> Self {
        self.attention_mask = Some(crate::reduce::canonical_mask(attention_mask));
        self
    }

    /// Adds the values at rollout time and the value targets (PPO with a value head).
    pub fn with_values(mut self, old_values: Tensor<2>, returns: Tensor<2>) -> Self {
        self.old_values = Some(old_values.detach());
        self.returns = Some(returns.detach());
        self
    }

    /// Adds the reference log-probs (GRPO with `beta != 0`).
    pub fn with_ref_logps(mut self, ref_logps: Tensor<2>) -> Self {
        self.ref_logps = Some(ref_logps.detach());
        self
    }

    /// Adds the sampling-distribution log-probs (GRPO's off-policy mask).
    pub fn with_sampling_logps(mut self, sampling_logps: Tensor<2>) -> Self {
        self.sampling_logps = Some(sampling_logps.detach());
        self
    }

    /// Adds an importance-sampling correction ratio (GRPO multiplies its per-token loss by it).
    pub fn with_importance_sampling_ratio(mut self, ratio: Tensor<2>) -> Self {
        self.importance_sampling_ratio = Some(ratio.detach());
        self
    }

    /// Token-level truncated importance sampling (TRL's `token_truncate` correction): the ratio
    /// `min(π_old / π_sampling, cap)` per token, from `old_logps` and the
    /// `sampling_logps` set before (bounded like every ratio, see
    /// [`LOG_RATIO_LIMIT`](crate::rl::LOG_RATIO_LIMIT)). For rollouts from another engine, with
    /// both log-probs over the same support (see [`ImportanceSamplingConfig`](crate::rl::ImportanceSamplingConfig)
    /// for TRL's four modes); against the crate's own truncated `sampling_logps` it would only
    /// scale each token by the kept mass.
    ///
    /// Errors: no `sampling_logps` ([`Error::MissingInput`]), `cap` not finite and > 0.
    pub fn with_truncated_importance_sampling(mut self, cap: f64) -> crate::Result<Self> {
        check_positive("cap", cap)?;
        let sampling = self
            .sampling_logps
            .clone()
            .ok_or_else(|| Error::MissingInput {
                arg: "sampling_logps",
                needed_by: "with_truncated_importance_sampling: call with_sampling_logps first"
                    .into(),
            })?;
        check_same_shape(
            "sampling_logps",
            &sampling.dims(),
            &self.old_logps.dims(),
            "old_logps",
        )?;
        crate::error::check_dtype_like("sampling_logps", &sampling, "old_logps", &self.old_logps)?;
        let ratio = crate::rl::ratio::importance_ratio(self.old_logps.clone() - sampling)
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
        check_same_shape("old_logps", &self.old_logps.dims(), &dims, "mask")?;
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
            "old_logps",
            &self.old_logps,
        )?;
        for (name, x) in [
            ("old_values", &self.old_values),
            ("returns", &self.returns),
            ("ref_logps", &self.ref_logps),
            ("sampling_logps", &self.sampling_logps),
        ] {
            if let Some(x) = x {
                check_same_shape(name, &x.dims(), &dims, "mask")?;
                crate::error::check_dtype_like(name, x, "old_logps", &self.old_logps)?;
                crate::error::check_finite(x, name)?;
            }
        }
        if let Some(x) = &self.importance_sampling_ratio {
            if x.dims() != dims && x.dims() != [dims[0], 1] {
                return Err(Error::shape(
                    "importance_sampling_ratio",
                    format!("{dims:?} (per token) or [{}, 1] (per sequence)", dims[0]),
                    &x.dims(),
                ));
            }
            crate::error::check_dtype_like(
                "importance_sampling_ratio",
                x,
                "old_logps",
                &self.old_logps,
            )?;
            crate::error::check_finite(x, "importance_sampling_ratio")?;
        }
        if let Some(support) = &self.support {
            let [sb, st, k] = support.dims();
            if [sb, st] != dims {
                return Err(Error::shape(
                    "support",
                    format!("[B, T, K] with [B, T] = {dims:?} (as mask)"),
                    &[sb, st, k],
                ));
            }
        }
        if let Some(m) = &self.attention_mask {
            check_same_shape("attention_mask", &m.dims(), &self.tokens.dims(), "tokens")?;
        }
        crate::error::check_finite(&self.old_logps, "old_logps")?;
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
            old_logps: pick2(&self.old_logps),
            advantages: pick2(&self.advantages),
            old_values: self.old_values.as_ref().map(pick2),
            returns: self.returns.as_ref().map(pick2),
            ref_logps: self.ref_logps.as_ref().map(pick2),
            sampling_logps: self.sampling_logps.as_ref().map(pick2),
            importance_sampling_ratio: self.importance_sampling_ratio.as_ref().map(pick2),
            attention_mask: self
                .attention_mask
                .as_ref()
                .map(|m| m.clone().int().select(0, idx.clone()).equal_elem(1)),
            support: self
                .support
                .as_ref()
                .map(|x| x.clone().select(0, idx.clone())),
        }
    }
}

/// What the user's closure returns for a batch.
#[derive(Debug, Clone)]
pub struct PolicyOutput {
    /// New per-token log-probs `[b, T]` (differentiable).
    pub logps: Tensor<2>,
    /// New value predictions `[b, T]` (PPO with a value head).
    pub values: Option<Tensor<2>>,
    /// Per-token entropies `[b, T]` (entropy bonus / metric).
    pub entropy: Option<Tensor<2>>,
}

impl PolicyOutput {
    /// Log-probs only.
    pub fn new(logps: Tensor<2>) -> Self {
        Self {
            logps,
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
