//! Fused, chunked LM-head log-probs: `hidden [N, H]` x `weight` (`[V, H]` or `[H, V]`, see
//! [`LmHeadLayout`]) -> per-token log-probs, without ever allocating the `[N, V]` logits.
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
use burn::tensor::{IndexingUpdateOp, Shape, Slice};

use super::fused_params::FusedParams;
use super::head::LmHeadLayout;

/// Backend extension for the fused LM-head op.
///
/// Shapes: `hidden [N, H]`, `weight [V, H]` or `[H, V]` by `params.layout`, `bias [V]` (zeros
/// when the model has none),
/// `targets [N]` (negative = ignored row: all outputs 0, no gradient), output `[N, OUT_COLS]`.
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda"))
)]
pub trait FusedLogprobBackend: Backend {
    /// Packed forward outputs `[N, OUT_COLS]`.
    fn fused_logps_forward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
        valid: FloatTensor<Self>,
        params: FusedParams,
    ) -> FloatTensor<Self> {
        primitive_forward::<Self>(hidden, weight, bias, targets, valid, &params)
    }

    /// `(d hidden, d weight, d bias)` for upstream gradients `grad [N, OUT_COLS]` (columns 0
    /// and 1, log-prob and entropy, are read); `d weight` has the weight's shape (layout).
    #[allow(clippy::too_many_arguments)]
    fn fused_logps_backward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
        valid: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        params: FusedParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        primitive_backward::<Self>(hidden, weight, bias, targets, valid, saved, grad, &params)
    }
}

pub(super) fn rows<B: Backend>(t: FloatTensor<B>, start: usize, end: usize) -> FloatTensor<B> {
    let rank = t.shape().num_dims();
    let mut s = vec![Slice::new(start as isize, Some(end as isize), 1)];
    for _ in 1..rank {
        s.push(Slice::new(0, None, 1));
    }
    B::float_slice(t, &s)
}

fn int_rows<B: Backend>(t: IntTensor<B>, start: usize, end: usize) -> IntTensor<B> {
    B::int_slice(t, &[Slice::new(start as isize, Some(end as isize), 1)])
}

pub(super) fn col<B: Backend>(t: FloatTensor<B>, c: usize) -> FloatTensor<B> {
    B::float_slice(
        t,
        &[
            Slice::new(0, None, 1),
            Slice::new(c as isize, Some(c as isize + 1), 1),
        ],
    )
}

/// Transformed logits `z` for rows `[r0, r1)` over the full vocabulary (primitive path).
pub(super) fn z_rows<B: Backend>(
    hidden: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    bias: &FloatTensor<B>,
    r0: usize,
    r1: usize,
    p: &FusedParams,
) -> FloatTensor<B> {
    let v = p.vocab(&weight.shape());
    let h = rows::<B>(hidden.clone(), r0, r1);
    let w_hv = match p.layout {
        LmHeadLayout::VocabMajor => B::float_transpose(weight.clone()),
        LmHeadLayout::HiddenMajor => weight.clone(),
    };
    let raw = B::float_matmul(h, w_hv);
    let raw = B::float_add(raw, B::float_reshape(bias.clone(), Shape::new([1, v])));
    let mut a = B::float_mul_scalar(raw, Scalar::Float(p.logit_scale));
    if let Some(cap) = p.softcap {
        a = B::float_mul_scalar(
            B::float_tanh(B::float_mul_scalar(a, Scalar::Float(1.0 / cap))),
            Scalar::Float(cap),
        );
    }
    B::float_mul_scalar(a, Scalar::Float(1.0 / p.temperature))
}

/// Token-chunked forward from backend primitives (full-vocabulary rows per chunk).
fn primitive_forward<B: Backend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    targets: IntTensor<B>,
    valid: FloatTensor<B>,
    p: &FusedParams,
) -> FloatTensor<B> {
    let n = hidden.shape()[0];
    let v = p.vocab(&weight.shape());
    // The primitive path keeps whole rows: size the row chunk from the tile budget.
    let (tn, _) = FusedParams {
        vocab_chunk: Some(v),
        ..*p
    }
    .tiles(n, v);
    let mut chunks = Vec::new();
    for r0 in (0..n).step_by(tn) {
        let r1 = (r0 + tn).min(n);
        let rn = r1 - r0;
        let z = z_rows::<B>(&hidden, &weight, &bias, r0, r1, p);
        let max = B::float_max_dim(z.clone(), 1);
        let e = B::float_exp(B::float_sub(z.clone(), max.clone()));
        let sum = B::float_sum_dim(e.clone(), 1);
        let log_sum = B::float_log(sum.clone());
        let lse = B::float_add(max.clone(), log_sum.clone());
        let mean_z = B::float_div(B::float_sum_dim(B::float_mul(z.clone(), e.clone()), 1), sum);
        let entropy = B::float_sub(lse.clone(), mean_z.clone());
        let sum_sq = B::float_sum_dim(B::float_mul(e.clone(), e), 1);
        let lss = B::float_sub(
            B::float_log(sum_sq),
            B::float_mul_scalar(log_sum, Scalar::Float(2.0)),
        );
        let mean_logit = B::float_mean_dim(z.clone(), 1);
        let idx = B::int_reshape(int_rows::<B>(targets.clone(), r0, r1), Shape::new([rn, 1]));
        let z_t = B::float_gather(1, z, idx);
        let lp = B::float_sub(z_t.clone(), lse.clone());
        // is-top-1: the target's logit is the maximum (ties resolved in the target's favour
        // on this path; the Flex kernel picks the first maximum like TRL).
        let gap = B::float_sub(max, z_t);
        let top1 = B::float_add_scalar(B::float_neg(B::float_sign(gap)), Scalar::Float(1.0));
        let packed = B::float_cat(vec![lp, entropy, lss, mean_logit, top1, lse, mean_z], 1);
        let keep = B::float_reshape(rows::<B>(valid.clone(), r0, r1), Shape::new([rn, 1]));
        chunks.push(B::float_mul(packed, keep));
    }
    B::float_cat(chunks, 0)
}

#[allow(clippy::too_many_arguments)]
fn primitive_backward<B: Backend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    targets: IntTensor<B>,
    valid: FloatTensor<B>,
    saved: FloatTensor<B>,
    grad: FloatTensor<B>,
    p: &FusedParams,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let n = hidden.shape()[0];
    let v = p.vocab(&weight.shape());
    let (tn, _) = FusedParams {
        vocab_chunk: Some(v),
        ..*p
    }
    .tiles(n, v);
    let mut d_hidden = Vec::new();
    let mut d_weight: Option<FloatTensor<B>> = None;
    let mut d_bias: Option<FloatTensor<B>> = None;
    for r0 in (0..n).step_by(tn) {
        let r1 = (r0 + tn).min(n);
        let rn = r1 - r0;
        let z = z_rows::<B>(&hidden, &weight, &bias, r0, r1, p);
        let s = rows::<B>(saved.clone(), r0, r1);
        let g = rows::<B>(grad.clone(), r0, r1);
        let keep = B::float_reshape(rows::<B>(valid.clone(), r0, r1), Shape::new([rn, 1]));
        let g_lp = B::float_mul(col::<B>(g.clone(), 0), keep.clone());
        let g_h = B::float_mul(col::<B>(g, 1), keep);
        let prob = B::float_exp(B::float_sub(z.clone(), col::<B>(s.clone(), 5)));
        // dz = g_lp (onehot - p) - g_h p (z - E[z])
        let centered = B::float_sub(z.clone(), col::<B>(s, 6));
        let inner = B::float_add(g_lp.clone(), B::float_mul(g_h, centered));
        let dz = B::float_neg(B::float_mul(prob, inner));
        let idx = B::int_reshape(int_rows::<B>(targets.clone(), r0, r1), Shape::new([rn, 1]));
        let dz = B::float_scatter(1, dz, idx, g_lp, IndexingUpdateOp::Add);
        let (dh, dw, db) = head_grads_rows::<B>(dz, z, &hidden, &weight, r0, r1, p);
        d_hidden.push(dh);
        d_weight = Some(match d_weight {
            Some(acc) => B::float_add(acc, dw),
            None => dw,
        });
        d_bias = Some(match d_bias {
            Some(acc) => B::float_add(acc, db),
            None => db,
        });
    }
    (
        B::float_cat(d_hidden, 0),
        d_weight.expect("at least one row"),
        d_bias.expect("at least one row"),
    )
}

/// `(d hidden rows, d weight, d bias)` of rows `[r0, r1)` from `dz = d loss / d z` (`z` the
/// transformed logits `[r1 - r0, V]` of those rows): the chain through `1 / T`, soft-capping
/// and the logit scale, then the two GEMMs. Shared by the fused log-prob and distillation ops.
pub(super) fn head_grads_rows<B: Backend>(
    dz: FloatTensor<B>,
    z: FloatTensor<B>,
    hidden: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    r0: usize,
    r1: usize,
    p: &FusedParams,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let v = p.vocab(&weight.shape());
    let mut dz = B::float_mul_scalar(dz, Scalar::Float(1.0 / p.temperature));
    if let Some(cap) = p.softcap {
        // d(cap tanh(a / cap)) / da = 1 - tanh^2, and tanh = z T / cap.
        let th = B::float_mul_scalar(z, Scalar::Float(p.temperature / cap));
        let one_minus = B::float_neg(B::float_add_scalar(
            B::float_mul(th.clone(), th),
            Scalar::Float(-1.0),
        ));
        dz = B::float_mul(dz, one_minus);
    }
    let d_raw = B::float_mul_scalar(dz, Scalar::Float(p.logit_scale));
    let h_rows = rows::<B>(hidden.clone(), r0, r1);
    let (dh, dw) = match p.layout {
        LmHeadLayout::VocabMajor => (
            B::float_matmul(d_raw.clone(), weight.clone()),
            B::float_matmul(B::float_transpose(d_raw.clone()), h_rows),
        ),
        LmHeadLayout::HiddenMajor => (
            B::float_matmul(d_raw.clone(), B::float_transpose(weight.clone())),
            B::float_matmul(B::float_transpose(h_rows), d_raw.clone()),
        ),
    };
    let db = B::float_reshape(
        B::float_sum_dim(B::float_transpose(d_raw), 1),
        Shape::new([v]),
    );
    (dh, dw, db)
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl FusedLogprobBackend for burn::backend::Cube {}

#[cfg(feature = "flex")]
impl FusedLogprobBackend for burn::backend::Flex {
    fn fused_logps_forward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
        valid: FloatTensor<Self>,
        params: FusedParams,
    ) -> FloatTensor<Self> {
        let row_targets = masked_targets::<Self>(targets.clone(), valid.clone());
        super::fused_cpu::forward(
            hidden.clone(),
            weight.clone(),
            Some(bias.clone()),
            row_targets,
            &params,
        )
        .unwrap_or_else(|| primitive_forward::<Self>(hidden, weight, bias, targets, valid, &params))
    }

    fn fused_logps_backward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
        valid: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        params: FusedParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let row_targets = masked_targets::<Self>(targets.clone(), valid.clone());
        super::fused_cpu::backward(
            hidden.clone(),
            weight.clone(),
            Some(bias.clone()),
            row_targets,
            saved.clone(),
            grad.clone(),
            &params,
        )
        .unwrap_or_else(|| {
            primitive_backward::<Self>(hidden, weight, bias, targets, valid, saved, grad, &params)
        })
    }
}

/// Targets with ignored rows set to -1 (`targets * valid + (valid - 1)`), as `Int`.
#[cfg(feature = "flex")]
fn masked_targets<B: Backend>(targets: IntTensor<B>, valid: FloatTensor<B>) -> IntTensor<B> {
    let dtype = targets.dtype();
    let valid_i = B::float_into_int(valid, dtype.into());
    B::int_sub_scalar(
        B::int_add(B::int_mul(targets, valid_i.clone()), valid_i),
        Scalar::Int(1),
    )
}

impl<B: Backend + FusedLogprobBackend, C: CheckpointStrategy> FusedLogprobBackend
    for Autodiff<B, C>
{
    fn fused_logps_forward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
        valid: FloatTensor<Self>,
        params: FusedParams,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedBackward;

        type State<B> = (
            FloatTensor<B>,
            FloatTensor<B>,
            FloatTensor<B>,
            IntTensor<B>,
            FloatTensor<B>,
            FloatTensor<B>,
            FusedParams,
        );

        impl<B: Backend + FusedLogprobBackend> Backward<B, 3> for FusedBackward {
            type State = State<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _c: &mut Checkpointer,
            ) {
                let [node_hidden, node_weight, node_bias] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (hidden, weight, bias, targets, valid, saved, params) = ops.state;
                let (dh, dw, db) = B::fused_logps_backward(
                    hidden, weight, bias, targets, valid, saved, grad, params,
                );
                if let Some(node) = node_hidden {
                    grads.register::<B>(node.id, dh);
                }
                if let Some(node) = node_weight {
                    grads.register::<B>(node.id, dw);
                }
                if let Some(node) = node_bias {
                    grads.register::<B>(node.id, db);
                }
            }
        }

        let valid = valid.into_primitive();
        match FusedBackward
            .prepare::<C>([hidden.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (h, w, b) = (
                    hidden.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                );
                let out = B::fused_logps_forward(
                    h.clone(),
                    w.clone(),
                    b.clone(),
                    targets.clone(),
                    valid.clone(),
                    params,
                );
                prep.finish((h, w, b, targets, valid, out.clone(), params), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_logps_forward(
                hidden.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                targets,
                valid,
                params,
            )),
        }
    }
}

/// Calls the extension (on a device where [`crate::backends::has_native_kernel`] is true).
pub(crate) fn fused_op(
    hidden: burn::tensor::Tensor<2>,
    weight: burn::tensor::Tensor<2>,
    bias: burn::tensor::Tensor<1>,
    targets: burn::tensor::Tensor<1, burn::tensor::Int>,
    valid: burn::tensor::Tensor<1>,
    params: FusedParams,
) -> burn::tensor::Tensor<2> {
    burn::tensor::Tensor::from_dispatch(<Dispatch as FusedLogprobBackend>::fused_logps_forward(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        targets.into_dispatch(),
        valid.into_dispatch(),
        params,
    ))
}

#[allow(dead_code)]
fn _assert_autodiff_backend<B: AutodiffBackend>() {}

/// The primitive path (what the CubeCL backends run) with either weight layout equals the
/// native flex kernel on the host-transposed `[V, H]` weight: forward outputs and gradients,
/// `d weight` returned in the weight's own layout. Run on Flex primitives, since no GPU backend
/// is compiled in the default test build.
#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::logps::fused_params::OUT_COLS;
    use crate::test_util::flex::{host, t, uniform};
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::TensorData;

    fn assert_close(what: &str, a: &[f64], b: &[f64]) {
        crate::test_util::flex::assert_close(what, a, b, 1e-10);
    }

    #[test]
    fn primitive_path_reads_both_layouts() {
        let (n, h, v) = (7, 5, 11);
        let mut next = uniform(7);
        let hidden: Vec<f64> = (0..n * h).map(|_| next()).collect();
        let w_vh: Vec<f64> = (0..v * h).map(|_| next()).collect();
        let w_hv: Vec<f64> = (0..h * v).map(|i| w_vh[(i % v) * h + i / v]).collect();
        let bias: Vec<f64> = (0..v).map(|_| next()).collect();
        let grad: Vec<f64> = (0..n * OUT_COLS).map(|_| next()).collect();
        let targets = vec![3i64, 0, 10, 0, 7, 1, 9];
        let valid = vec![1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        let params = |layout| FusedParams {
            temperature: 0.8,
            logit_scale: 1.3,
            softcap: Some(4.0),
            token_chunk: Some(3),
            vocab_chunk: Some(4),
            stats: true,
            layout,
        };
        let tg = || FlexTensor::from_data(TensorData::new(targets.clone(), [n]));
        let tv = || FlexTensor::from_data(TensorData::new(valid.clone(), [n]));
        let b = || FlexTensor::from_data(TensorData::new(bias.clone(), [v]));
        // The native kernel on `[V, H]` (ignored rows as -1).
        let masked: Vec<i64> = targets
            .iter()
            .zip(&valid)
            .map(|(&t, &ok)| if ok > 0.5 { t } else { -1 })
            .collect();
        let p_vh = params(LmHeadLayout::VocabMajor);
        let want = super::super::fused_cpu::forward(
            t(hidden.clone(), [n, h]),
            t(w_vh.clone(), [v, h]),
            Some(b()),
            FlexTensor::from_data(TensorData::new(masked.clone(), [n])),
            &p_vh,
        )
        .unwrap();
        let (want_dh, want_dw, want_db) = super::super::fused_cpu::backward(
            t(hidden.clone(), [n, h]),
            t(w_vh.clone(), [v, h]),
            Some(b()),
            FlexTensor::from_data(TensorData::new(masked, [n])),
            want.clone(),
            t(grad.clone(), [n, OUT_COLS]),
            &p_vh,
        )
        .unwrap();
        for (layout, w, w_shape) in [
            (LmHeadLayout::VocabMajor, &w_vh, [v, h]),
            (LmHeadLayout::HiddenMajor, &w_hv, [h, v]),
        ] {
            let p = params(layout);
            let out = primitive_forward::<Flex>(
                t(hidden.clone(), [n, h]),
                t(w.clone(), w_shape),
                b(),
                tg(),
                tv(),
                &p,
            );
            let what = format!("{layout:?}");
            // Column 4 (is-top-1) resolves ties differently on this path; no ties here.
            assert_close(
                &format!("{what} forward"),
                &host(out.clone()),
                &host(want.clone()),
            );
            let (dh, dw, db) = primitive_backward::<Flex>(
                t(hidden.clone(), [n, h]),
                t(w.clone(), w_shape),
                b(),
                tg(),
                tv(),
                out,
                t(grad.clone(), [n, OUT_COLS]),
                &p,
            );
            assert_eq!(dw.shape().dims::<2>(), w_shape, "{what} d weight layout");
            let dw = match layout {
                LmHeadLayout::VocabMajor => host(dw),
                LmHeadLayout::HiddenMajor => host(dw.transpose(0, 1).to_contiguous()),
            };
            assert_close(
                &format!("{what} d hidden"),
                &host(dh),
                &host(want_dh.clone()),
            );
            assert_close(&format!("{what} d weight"), &dw, &host(want_dw.clone()));
            assert_close(&format!("{what} d bias"), &host(db), &host(want_db.clone()));
        }
    }
}
