//! The memory-lean token log-prob op: a burn backend extension with a hand-written backward.
//!
//! `log_softmax(logits).gather(..)` under burn's autodiff records max, sub, exp, sum and log
//! separately and keeps several `[B, T, V]` intermediates alive until backward. This op keeps
//! only what backward needs: the logits themselves (a reference, not a copy) and the per-row
//! logsumexp `[B, T]`. Backward recomputes the softmax row by row and, on Flex, writes the
//! gradient into the logits buffer itself when nothing else holds it.
//!
//! Backends: Flex has a native kernel (`cpu.rs`); CubeCL devices (wgpu, CUDA) run the default
//! body built from backend primitives; any other backend is served by the pure-tensor oracle in
//! `gather.rs` (decided before dispatch by [`crate::backends::has_native_kernel`]), so an
//! unlisted backend never panics.
// Without any backend feature the extension macro routes to nothing and the op bodies go
// unused; the crate still compiles for library users who pick a backend on their own burn.
#![cfg_attr(
    not(any(feature = "flex", feature = "wgpu", feature = "cuda")),
    allow(unused_variables, dead_code)
)]

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Scalar, TensorMetadata, backend_extension,
};
use burn::tensor::{IndexingUpdateOp, Int, Shape, Tensor};

/// Backend extension for token log-probs.
///
/// Shapes: `logits [B, T, V]`, `targets [B, T]` (already clamped to `[0, V)`),
/// `valid [B, T]` (1.0 where the position counts, 0.0 where it is ignored), `scale = 1 / temperature`.
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda"))
)]
pub trait TokenLogprobBackend: Backend {
    /// Returns `(logps [B, T], logsumexp [B, T])` of `scale * logits`; the log-probs are
    /// 0 where `valid` is 0 (the logsumexp there is unspecified).
    fn token_logps_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        valid: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        primitive_forward::<Self>(logits, targets, valid, scale)
    }

    /// Returns `d logits [B, T, V] = grad * valid * scale * (onehot(target) - softmax(scale * logits))`.
    fn token_logps_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        valid: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        primitive_backward::<Self>(logits, targets, valid, lse, grad, scale)
    }
}

fn bt_shape(shape: &Shape) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2])
}

/// The op built from backend primitives (any backend; used by CubeCL devices).
fn primitive_forward<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    valid: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (b, t, _) = bt_shape(&logits.shape());
    let x = B::float_mul_scalar(logits, Scalar::Float(scale));
    let max = B::float_max_dim(B::float_detach(x.clone()), 2);
    let shifted = B::float_sub(x.clone(), max.clone());
    let sum = B::float_sum_dim(B::float_exp(shifted), 2);
    let lse = B::float_add(B::float_log(sum), max);
    let idx = B::int_reshape(targets, Shape::new([b, t, 1]));
    let picked = B::float_gather(2, x, idx);
    let lp = B::float_reshape(B::float_sub(picked, lse.clone()), Shape::new([b, t]));
    let lse = B::float_reshape(lse, Shape::new([b, t]));
    // Ignored rows keep their (finite) logsumexp: zeroing it would make backward's
    // exp(scale * x - lse) overflow to inf for large logits, and inf * 0 = NaN. The public
    // wrapper zeroes ignored log-probs with a mask fill (exact +0.0, zero gradient).
    (B::float_mul(lp, valid), lse)
}

fn primitive_backward<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    valid: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let (b, t, _) = bt_shape(&logits.shape());
    let gs = B::float_mul_scalar(B::float_mul(grad, valid), Scalar::Float(scale));
    let gs = B::float_reshape(gs, Shape::new([b, t, 1]));
    let lse = B::float_reshape(lse, Shape::new([b, t, 1]));
    let x = B::float_mul_scalar(logits, Scalar::Float(scale));
    let softmax = B::float_exp(B::float_sub(x, lse));
    let grad_logits = B::float_neg(B::float_mul(softmax, gs.clone()));
    let idx = B::int_reshape(targets, Shape::new([b, t, 1]));
    B::float_scatter(2, grad_logits, idx, gs, IndexingUpdateOp::Add)
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl TokenLogprobBackend for burn::backend::Cube {}

#[cfg(feature = "flex")]
mod flex_impl {
    use super::*;
    use crate::logps::cpu::{self, KernelFloat};
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::{DType, TensorData};

    /// Targets as `i64`, whatever the int dtype (small `[B, T]` tensor).
    fn targets_i64(targets: &FlexTensor, valid: &FlexTensor) -> Option<Vec<i64>> {
        let t: Vec<i64> = if let Some(s) = targets.as_slice::<i64>() {
            s.to_vec()
        } else if let Some(s) = targets.as_slice::<i32>() {
            s.iter().map(|&x| x as i64).collect()
        } else {
            return None;
        };
        let keep: Vec<bool> = if let Some(s) = valid.as_slice::<f32>() {
            s.iter().map(|&v| v != 0.0).collect()
        } else if let Some(s) = valid.as_slice::<f64>() {
            s.iter().map(|&v| v != 0.0).collect()
        } else {
            return None;
        };
        Some(
            t.into_iter()
                .zip(keep)
                .map(|(t, k)| if k { t } else { -1 })
                .collect(),
        )
    }

    fn as_vec<F: KernelFloat + burn::tensor::Element + bytemuck::Pod>(
        t: &FlexTensor,
    ) -> Option<Vec<F>> {
        t.as_slice::<F>().map(|s| s.to_vec())
    }

    fn forward_typed<F>(
        logits: &FlexTensor,
        targets: &[i64],
        scale: f64,
    ) -> Option<(FlexTensor, FlexTensor)>
    where
        F: KernelFloat + burn::tensor::Element + bytemuck::Pod,
    {
        let (b, t, v) = bt_shape(&logits.shape());
        let x = logits.as_slice::<F>()?;
        let (lp, lse) = cpu::forward(x, targets, v, scale);
        Some((
            FlexTensor::from_data(TensorData::new(lp, [b, t])),
            FlexTensor::from_data(TensorData::new(lse, [b, t])),
        ))
    }

    fn backward_typed<F>(
        mut logits: FlexTensor,
        targets: &[i64],
        lse: &FlexTensor,
        grad: &FlexTensor,
        scale: f64,
    ) -> Result<FlexTensor, FlexTensor>
    where
        F: KernelFloat + burn::tensor::Element + bytemuck::Pod,
    {
        let shape = logits.shape();
        let (b, t, v) = bt_shape(&shape);
        let (Some(lse), Some(grad)) = (as_vec::<F>(lse), as_vec::<F>(grad)) else {
            return Err(logits);
        };
        if logits.as_slice::<F>().is_none() {
            return Err(logits);
        }
        let exact = logits.layout().contiguous_offsets() == Some((0, b * t * v))
            && logits.bytes().len() == b * t * v * std::mem::size_of::<F>();
        // In place when we hold the only reference to an exactly-sized buffer.
        if exact && let Some(buf) = logits.try_storage_mut::<F>() {
            cpu::backward(None, buf, targets, &lse, &grad, v, scale);
            return Ok(logits);
        }
        let x = logits.as_slice::<F>().expect("checked above");
        let mut out = cpu::zeroed_buffer::<F>(b * t * v);
        cpu::backward(Some(x), &mut out, targets, &lse, &grad, v, scale);
        Ok(FlexTensor::from_data(TensorData::new(out, [b, t, v])))
    }

    impl TokenLogprobBackend for Flex {
        fn token_logps_forward(
            logits: FlexTensor,
            targets: FlexTensor,
            valid: FlexTensor,
            scale: f64,
        ) -> (FlexTensor, FlexTensor) {
            if let Some(idx) = targets_i64(&targets, &valid) {
                let out = match logits.dtype() {
                    DType::F32 => forward_typed::<f32>(&logits, &idx, scale),
                    DType::F64 => forward_typed::<f64>(&logits, &idx, scale),
                    _ => None,
                };
                if let Some(out) = out {
                    return out;
                }
            }
            primitive_forward::<Flex>(logits, targets, valid, scale)
        }

        fn token_logps_backward(
            logits: FlexTensor,
            targets: FlexTensor,
            valid: FlexTensor,
            lse: FlexTensor,
            grad: FlexTensor,
            scale: f64,
        ) -> FlexTensor {
            let Some(idx) = targets_i64(&targets, &valid) else {
                return primitive_backward::<Flex>(logits, targets, valid, lse, grad, scale);
            };
            let attempt = match logits.dtype() {
                DType::F32 => backward_typed::<f32>(logits, &idx, &lse, &grad, scale),
                DType::F64 => backward_typed::<f64>(logits, &idx, &lse, &grad, scale),
                _ => Err(logits),
            };
            match attempt {
                Ok(out) => out,
                Err(logits) => primitive_backward::<Flex>(logits, targets, valid, lse, grad, scale),
            }
        }
    }
}

impl<B: Backend + TokenLogprobBackend, C: CheckpointStrategy> TokenLogprobBackend
    for Autodiff<B, C>
{
    fn token_logps_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        valid: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct TokenLogpsBackward;

        impl<B: Backend + TokenLogprobBackend> Backward<B, 1> for TokenLogpsBackward {
            /// (logits [B,T,V], targets [B,T], valid [B,T], lse [B,T], scale)
            type State = (
                FloatTensor<B>,
                IntTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                f64,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let Some(node) = parent else { return };
                let (logits, targets, valid, lse, scale) = ops.state;
                let grad_logits = B::token_logps_backward(logits, targets, valid, lse, grad, scale);
                grads.register::<B>(node.id, grad_logits);
            }
        }

        // `valid` is a constant mask: its gradient is never needed.
        let valid = valid.into_primitive();
        match TokenLogpsBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let logits = logits.into_primitive();
                let (lp, lse) =
                    B::token_logps_forward(logits.clone(), targets.clone(), valid.clone(), scale);
                let lp = prep.finish((logits, targets, valid, lse.clone(), scale), lp);
                (lp, Self::from_inner(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (lp, lse) =
                    B::token_logps_forward(logits.into_primitive(), targets, valid, scale);
                (prep.finish(lp), Self::from_inner(lse))
            }
        }
    }
}

/// Calls the extension on a device that has it (see [`crate::backends::has_native_kernel`]).
/// Returns `(logps [B, T], logsumexp [B, T])`; only the first carries a gradient.
pub(crate) fn token_logps_op(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    valid: Tensor<2>,
    scale: f64,
) -> (Tensor<2>, Tensor<2>) {
    let (lp, lse) = <Dispatch as TokenLogprobBackend>::token_logps_forward(
        logits.into_dispatch(),
        targets.into_dispatch(),
        valid.into_dispatch(),
        scale,
    );
    (Tensor::from_dispatch(lp), Tensor::from_dispatch(lse))
}
