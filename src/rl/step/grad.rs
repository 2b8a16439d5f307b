//! Global-norm gradient clipping over a burn [`Module`]'s parameters (as
//! `torch.nn.utils.clip_grad_norm_`).
//!
#![cfg_attr(
    doc,
    doc = r#"$$\lVert g \rVert = \sqrt{\textstyle\sum_p \lVert g_p \rVert_2^2},\qquad g_p \leftarrow g_p \cdot \frac{\text{max\_norm}}{\lVert g \rVert + 10^{-6}} \text{ if } \lVert g \rVert > \text{max\_norm}$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`norm = sqrt(sum_p |g_p|^2)`, `g_p *= max_norm / (norm + 1e-6)` when `norm > max_norm`"
)]
//!
//! Anchor: PyTorch `torch.nn.utils.clip_grad_norm_` (what TRL's and torchtune's trainers call
//! through `accelerate` / directly). Paper: Pascanu et al., *On the difficulty of training
//! recurrent neural networks*, <https://arxiv.org/abs/1211.5063>.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::error::check_positive;

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

crate::error::panicking! {
    /// Clips the global L2 norm of `grads` (over `module`'s parameters) to `max_norm` like
    /// `torch.nn.utils.clip_grad_norm_` (`scale = max_norm / (norm + 1e-6)` when above). Returns
    /// the norm before clipping (one host read).
    pub fn clip_grad_norm[M: Module](
        module: &M,
        grads: &mut GradientsParams,
        max_norm: f64,
    ) -> f64 = try_clip_grad_norm;
}

/// Non-panicking form of [`clip_grad_norm`]: `max_norm` must be finite and > 0
/// ([`Error::Config`](crate::Error::Config) naming `max_norm`; a negative value would flip the gradient's sign).
pub fn try_clip_grad_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> crate::Result<f64> {
    check_positive("max_norm", max_norm)?;
    Ok(clip_grad_norm_unchecked(module, grads, max_norm))
}

pub(super) fn clip_grad_norm_unchecked<M: Module>(
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
