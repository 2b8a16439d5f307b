//! The inputs of [`GrpoLoss::forward`](super::GrpoLoss::forward), their checks and the
//! half-precision upcast.

use burn::tensor::{Bool, Tensor};

use crate::error::{Error, check_same_shape};

/// Inputs of [`GrpoLoss::forward`](super::GrpoLoss::forward).
///
/// # Shapes
/// `[B, C]` per-token tensors; advantages `[B, 1]` (one per sequence) or `[B, C]`.
#[derive(Debug, Clone)]
pub struct GrpoLossInput {
    /// Per-token log-probs of the completion (differentiable).
    pub logps: Tensor<2>,
    /// Valid completion tokens (completion mask, and tool mask if any).
    pub mask: Tensor<2, Bool>,
    /// Advantages `[B, 1]` or `[B, C]`.
    pub advantages: Tensor<2>,
    /// Log-probs at generation time; `None` = on-policy (`logps.detach()`: ratio 1).
    pub old_logps: Option<Tensor<2>>,
    /// Reference log-probs (required when `beta != 0`).
    pub ref_logps: Option<Tensor<2>>,
    /// Per-token entropies (metric, top-entropy mask, entropy bonus).
    pub entropies: Option<Tensor<2>>,
    /// Sampler (e.g. vLLM) log-probs for the off-policy mask; `None` = `old_logps`.
    pub sampling_logps: Option<Tensor<2>>,
    /// Importance weight of the sampler correction, `[B, T]` per token (TRL's `token_*`
    /// modes) or `[B, 1]` per sequence (`sequence_*` modes): multiplies the per-token loss;
    /// VESPO folds it into its gamma weight.
    pub importance_sampling_ratio: Option<Tensor<2>>,
    /// Active tokens of the whole generation batch (dapo/cispo/vespo normalizer).
    pub num_items_in_batch: Option<f64>,
}

impl GrpoLossInput {
    /// Required inputs; advantages per sequence `[B]`.
    pub fn new(logps: Tensor<2>, mask: Tensor<2, Bool>, advantages: Tensor<1>) -> Self {
        let mask = crate::reduce::canonical_mask(mask);
        let b = advantages.dims()[0];
        Self::with_token_advantages(logps, mask, advantages.reshape([b, 1]))
    }
    /// Required inputs; advantages `[B, 1]` or per token `[B, C]`.
    pub fn with_token_advantages(
        logps: Tensor<2>,
        mask: Tensor<2, Bool>,
        advantages: Tensor<2>,
    ) -> Self {
        let mask = crate::reduce::canonical_mask(mask);
        Self {
            logps,
            mask,
            advantages,
            old_logps: None,
            ref_logps: None,
            entropies: None,
            sampling_logps: None,
            importance_sampling_ratio: None,
            num_items_in_batch: None,
        }
    }
    /// Sets the generation-time log-probs.
    pub fn with_old_logps(mut self, x: Tensor<2>) -> Self {
        self.old_logps = Some(x);
        self
    }
    /// Sets the reference log-probs.
    pub fn with_ref_logps(mut self, x: Tensor<2>) -> Self {
        self.ref_logps = Some(x);
        self
    }
    /// Sets the entropies.
    pub fn with_entropies(mut self, x: Tensor<2>) -> Self {
        self.entropies = Some(x);
        self
    }
    /// Sets the sampler log-probs.
    pub fn with_sampling_logps(mut self, x: Tensor<2>) -> Self {
        self.sampling_logps = Some(x);
        self
    }
    /// Sets the sampler importance ratio.
    pub fn with_importance_sampling_ratio(mut self, x: Tensor<2>) -> Self {
        self.importance_sampling_ratio = Some(x);
        self
    }
    /// Sets the generation batch's token count.
    pub fn with_num_items_in_batch(mut self, n: f64) -> Self {
        self.num_items_in_batch = Some(n);
        self
    }
}

impl GrpoLossInput {
    /// Checks shapes, dtypes, `num_items_in_batch` and (in checked mode) finiteness, then
    /// upcasts half-precision tensors to f32 (f16 overflows `e^11`) and detaches the
    /// advantages.
    pub(super) fn checked(self) -> crate::Result<Self> {
        let dims = self.logps.dims();
        let [b, t] = dims;
        let mask = crate::reduce::canonical_mask(self.mask);
        check_same_shape("mask", &mask.dims(), &dims, "logps")?;
        let adv_dims = self.advantages.dims();
        if adv_dims != [b, 1] && adv_dims != dims {
            return Err(Error::shape(
                "advantages",
                format!("[{b}, 1] or [{b}, {t}]"),
                &adv_dims,
            ));
        }
        let optional = [
            ("old_logps", &self.old_logps),
            ("ref_logps", &self.ref_logps),
            ("entropies", &self.entropies),
            ("sampling_logps", &self.sampling_logps),
        ];
        for (name, x) in optional {
            if let Some(x) = x {
                check_same_shape(name, &x.dims(), &dims, "logps")?;
            }
        }
        if let Some(x) = &self.importance_sampling_ratio
            && x.dims() != [b, 1]
            && x.dims() != dims
        {
            return Err(Error::shape(
                "importance_sampling_ratio",
                format!("[{b}, {t}] (per token) or [{b}, 1] (per sequence)"),
                &x.dims(),
            ));
        }
        crate::error::check_non_empty(
            "logps",
            b * t,
            &format!("shape {:?} has a zero dimension", [b, t]),
        )?;
        if let Some(n) = self.num_items_in_batch
            && !(n.is_finite() && n >= 0.0)
        {
            return Err(Error::config(
                "num_items_in_batch",
                "must be finite and >= 0",
                n,
            ));
        }
        let logps = &self.logps;
        crate::error::check_dtype_like("advantages", &self.advantages, "logps", logps)?;
        crate::error::check_finite(logps, "logps")?;
        crate::error::check_finite(&self.advantages, "advantages")?;
        for (name, x) in optional {
            crate::error::check_dtype_like_opt(name, x.as_ref(), "logps", logps)?;
            crate::error::check_finite_opt(x.as_ref(), name)?;
        }
        use crate::precision::upcast_half;
        Ok(Self {
            logps: upcast_half(self.logps),
            mask,
            advantages: upcast_half(self.advantages).detach(),
            old_logps: self.old_logps.map(upcast_half),
            ref_logps: self.ref_logps.map(upcast_half),
            entropies: self.entropies.map(upcast_half),
            sampling_logps: self.sampling_logps.map(upcast_half),
            importance_sampling_ratio: self.importance_sampling_ratio.map(upcast_half),
            num_items_in_batch: self.num_items_in_batch,
        })
    }
}
