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
            // f16 / bf16 gradients are squared and summed in f32 (as torch's `vector_norm`
            // accumulates): in f16 the square overflows once the norm passes 256.
            let s = crate::precision::upcast_half(g)
                .square()
                .sum()
                .cast(burn::tensor::FloatDType::F32);
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    factor: Tensor<1>,
}

impl ModuleVisitor for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let factor = self
                .factor
                .clone()
                .to_device(&g.device())
                .cast(g.dtype())
                .reshape([1; D]);
            self.grads.register::<D>(param.id, g * factor);
        }
    }
}

crate::error::panicking! {
    /// Clips the global L2 norm of `grads` (over `module`'s parameters) to `max_norm` like
    /// `torch.nn.utils.clip_grad_norm_` (`scale = min(1, max_norm / (norm + 1e-6))`). Returns
    /// the norm before clipping as `f64` (one host read; [`clip_grad_norm_on_device`] reads
    /// nothing).
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
    match clip_grad_norm_unchecked(module, grads, max_norm) {
        Some(norm) => Ok(crate::host_reads::scalar(norm, "grad_norm")?),
        None => Ok(0.0),
    }
}

/// [`clip_grad_norm`] without a host read: the scale `min(1, max_norm / (norm + 1e-6))` is
/// computed and applied on the device (torch's `clip_grad_norm_` does the same), and the norm
/// before clipping comes back as a `[1]` f32 tensor (`None` when `grads` holds no gradient of
/// `module`'s parameters). `max_norm` must be finite and > 0.
pub fn clip_grad_norm_on_device<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> crate::Result<Option<Tensor<1>>> {
    check_positive("max_norm", max_norm)?;
    Ok(clip_grad_norm_unchecked(module, grads, max_norm))
}

pub(super) fn clip_grad_norm_unchecked<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> Option<Tensor<1>> {
    let mut visitor = GradSquaredNorm { grads, total: None };
    module.visit(&mut visitor);
    let norm = visitor.total?.sqrt();
    let factor = norm
        .clone()
        .add_scalar(1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0);
    let mut scale = GradScale { grads, factor };
    module.visit(&mut scale);
    Some(norm)
}
