//! Fused, chunked two-head divergence: student `hidden [N, Hs]` x student LM head and teacher
//! `hidden [N, Ht]` x teacher LM head -> per-row forward KL / reverse KL / generalized JSD
//! over the full vocabulary, without allocating either `[N, V]` logits. Backward (written by
//! hand) reaches the student's hidden states, weight and bias; the teacher gets no gradient.
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
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Scalar, TensorMetadata, backend_extension};
use burn::tensor::Shape;

use super::divergence_params::{DivergenceKind, DivergenceParams};
use super::fused::{col, head_grads_rows, rows, z_rows};

/// One LM head's primitives: hidden states `[N, H]`, weight (`[V, H]` or `[H, V]` by its
/// params' layout), bias `[V]` (zeros when the model has none).
pub(crate) struct HeadTensors<B: Backend> {
    pub(crate) hidden: FloatTensor<B>,
    pub(crate) weight: FloatTensor<B>,
    pub(crate) bias: FloatTensor<B>,
}

fn head<B: Backend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> HeadTensors<B> {
    HeadTensors {
        hidden,
        weight,
        bias,
    }
}

/// Backend extension for the fused two-head divergence.
///
/// Shapes: student / teacher `hidden [N, Hs]` / `[N, Ht]`, weights `[V, H]` or `[H, V]` by
/// each head's layout, biases `[V]`, `valid [N]` (1.0 = scored row, 0.0 = masked: outputs 0,
/// no gradient, not projected on flex), output `[N, DIV_COLS]`.
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda"))
)]
pub trait FusedDivergenceBackend: Backend {
    /// Packed forward outputs `[N, DIV_COLS]`.
    #[allow(clippy::too_many_arguments)]
    fn fused_divergence_forward(
        student_hidden: FloatTensor<Self>,
        student_weight: FloatTensor<Self>,
        student_bias: FloatTensor<Self>,
        teacher_hidden: FloatTensor<Self>,
        teacher_weight: FloatTensor<Self>,
        teacher_bias: FloatTensor<Self>,
        valid: FloatTensor<Self>,
        params: DivergenceParams,
    ) -> FloatTensor<Self> {
        primitive_forward::<Self>(
            head(student_hidden, student_weight, student_bias),
            head(teacher_hidden, teacher_weight, teacher_bias),
            valid,
            &params,
        )
    }

    /// `(d student hidden, d student weight, d student bias)` for upstream gradients
    /// `grad [N, DIV_COLS]` (column 0, the divergence, is read).
    #[allow(clippy::too_many_arguments)]
    fn fused_divergence_backward(
        student_hidden: FloatTensor<Self>,
        student_weight: FloatTensor<Self>,
        student_bias: FloatTensor<Self>,
        teacher_hidden: FloatTensor<Self>,
        teacher_weight: FloatTensor<Self>,
        teacher_bias: FloatTensor<Self>,
        valid: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        params: DivergenceParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        primitive_backward::<Self>(
            head(student_hidden, student_weight, student_bias),
            head(teacher_hidden, teacher_weight, teacher_bias),
            valid,
            saved,
            grad,
            &params,
        )
    }
}

/// `sum over the vocabulary` keeping the dim: `[rows, V] -> [rows, 1]`.
fn row_sum<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_sum_dim(x, 1)
}

/// `logsumexp` per row with the maximum shifted out: `[rows, V] -> [rows, 1]`.
fn row_lse<B: Backend>(z: &FloatTensor<B>) -> FloatTensor<B> {
    let max = B::float_max_dim(z.clone(), 1);
    let sum = row_sum::<B>(B::float_exp(B::float_sub(z.clone(), max.clone())));
    B::float_add(max, B::float_log(sum))
}

/// `log m = logaddexp(log p_s + log(1 - beta), log p_t + log(beta))`, elementwise, as
/// `max + log1p(exp(-|a - b|))` with `max = (a + b + |a - b|) / 2`.
fn log_mixture<B: Backend>(
    student_logps: FloatTensor<B>,
    teacher_logps: FloatTensor<B>,
    beta: f64,
) -> FloatTensor<B> {
    let a = B::float_add_scalar(student_logps, Scalar::Float((1.0 - beta).ln()));
    let b = B::float_add_scalar(teacher_logps, Scalar::Float(beta.ln()));
    let gap = B::float_abs(B::float_sub(a.clone(), b.clone()));
    let max = B::float_mul_scalar(
        B::float_add(B::float_add(a, b), gap.clone()),
        Scalar::Float(0.5),
    );
    B::float_add(max, B::float_log1p(B::float_exp(B::float_neg(gap))))
}

/// Per-row log-probs of both heads for rows `[r0, r1)`: `(z_s, log p_s, log p_t, lse_s,
/// lse_t)`.
type RowLogps<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
);

fn row_logps<B: Backend>(
    student: &HeadTensors<B>,
    teacher: &HeadTensors<B>,
    r0: usize,
    r1: usize,
    p: &DivergenceParams,
) -> RowLogps<B> {
    let zs = z_rows::<B>(
        &student.hidden,
        &student.weight,
        &student.bias,
        r0,
        r1,
        &p.student,
    );
    let zt = z_rows::<B>(
        &teacher.hidden,
        &teacher.weight,
        &teacher.bias,
        r0,
        r1,
        &p.teacher,
    );
    let lse_s = row_lse::<B>(&zs);
    let lse_t = row_lse::<B>(&zt);
    let lps = B::float_sub(zs.clone(), lse_s.clone());
    let lpt = B::float_sub(zt, lse_t.clone());
    (zs, lps, lpt, lse_s, lse_t)
}

/// Row chunk size of the primitive path (whole vocabulary rows per chunk).
fn row_chunk(n: usize, v: usize, p: &DivergenceParams) -> usize {
    let whole_rows = super::fused_params::FusedParams {
        vocab_chunk: Some(v),
        ..p.student
    };
    whole_rows.tiles(n, v).0
}

/// Token-chunked forward from backend primitives (full-vocabulary rows per chunk).
fn primitive_forward<B: Backend>(
    student: HeadTensors<B>,
    teacher: HeadTensors<B>,
    valid: FloatTensor<B>,
    p: &DivergenceParams,
) -> FloatTensor<B> {
    let n = student.hidden.shape()[0];
    let v = p.student.vocab(&student.weight.shape());
    let tn = row_chunk(n, v, p);
    let mut chunks = Vec::new();
    for r0 in (0..n).step_by(tn) {
        let r1 = (r0 + tn).min(n);
        let (_, lps, lpt, lse_s, lse_t) = row_logps::<B>(&student, &teacher, r0, r1, p);
        let ps = B::float_exp(lps.clone());
        let pt = B::float_exp(lpt.clone());
        let entropy = B::float_neg(row_sum::<B>(B::float_mul(ps.clone(), lps.clone())));
        let zero = B::float_mul_scalar(lse_s.clone(), Scalar::Float(0.0));
        let (divergence, kl_s_m) = match p.kind {
            DivergenceKind::Forward => {
                (row_sum::<B>(B::float_mul(pt, B::float_sub(lpt, lps))), zero)
            }
            DivergenceKind::Reverse => {
                (row_sum::<B>(B::float_mul(ps, B::float_sub(lps, lpt))), zero)
            }
            DivergenceKind::Jsd(beta) => {
                let lm = log_mixture::<B>(lps.clone(), lpt.clone(), beta);
                let kl_t = row_sum::<B>(B::float_mul(pt, B::float_sub(lpt, lm.clone())));
                let kl_s = row_sum::<B>(B::float_mul(ps, B::float_sub(lps, lm)));
                let d = B::float_add(
                    B::float_mul_scalar(kl_t, Scalar::Float(beta)),
                    B::float_mul_scalar(kl_s.clone(), Scalar::Float(1.0 - beta)),
                );
                (d, kl_s)
            }
        };
        let packed = B::float_cat(vec![divergence, entropy, lse_s, lse_t, kl_s_m], 1);
        let keep = B::float_reshape(rows::<B>(valid.clone(), r0, r1), Shape::new([r1 - r0, 1]));
        chunks.push(B::float_mul(packed, keep));
    }
    B::float_cat(chunks, 0)
}

fn primitive_backward<B: Backend>(
    student: HeadTensors<B>,
    teacher: HeadTensors<B>,
    valid: FloatTensor<B>,
    saved: FloatTensor<B>,
    grad: FloatTensor<B>,
    p: &DivergenceParams,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let n = student.hidden.shape()[0];
    let v = p.student.vocab(&student.weight.shape());
    let tn = row_chunk(n, v, p);
    let mut d_hidden = Vec::new();
    let mut d_weight: Option<FloatTensor<B>> = None;
    let mut d_bias: Option<FloatTensor<B>> = None;
    for r0 in (0..n).step_by(tn) {
        let r1 = (r0 + tn).min(n);
        let (zs, lps, lpt, _, _) = row_logps::<B>(&student, &teacher, r0, r1, p);
        let s = rows::<B>(saved.clone(), r0, r1);
        let keep = B::float_reshape(rows::<B>(valid.clone(), r0, r1), Shape::new([r1 - r0, 1]));
        let g = B::float_mul(col::<B>(rows::<B>(grad.clone(), r0, r1), 0), keep);
        let ps = B::float_exp(lps.clone());
        // d D / d z_s per divergence (z_s the student's transformed logits).
        let dz = match p.kind {
            DivergenceKind::Forward => B::float_sub(ps, B::float_exp(lpt)),
            DivergenceKind::Reverse => {
                let centered = B::float_sub(B::float_sub(lps, lpt), col::<B>(s, 0));
                B::float_mul(ps, centered)
            }
            DivergenceKind::Jsd(beta) => {
                let lm = log_mixture::<B>(lps.clone(), lpt, beta);
                let centered = B::float_sub(B::float_sub(lps, lm), col::<B>(s, 4));
                B::float_mul_scalar(B::float_mul(ps, centered), Scalar::Float(1.0 - beta))
            }
        };
        let dz = B::float_mul(dz, g);
        let (dh, dw, db) =
            head_grads_rows::<B>(dz, zs, &student.hidden, &student.weight, r0, r1, &p.student);
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

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl FusedDivergenceBackend for burn::backend::Cube {}

#[cfg(feature = "flex")]
impl FusedDivergenceBackend for burn::backend::Flex {
    fn fused_divergence_forward(
        student_hidden: FloatTensor<Self>,
        student_weight: FloatTensor<Self>,
        student_bias: FloatTensor<Self>,
        teacher_hidden: FloatTensor<Self>,
        teacher_weight: FloatTensor<Self>,
        teacher_bias: FloatTensor<Self>,
        valid: FloatTensor<Self>,
        params: DivergenceParams,
    ) -> FloatTensor<Self> {
        let student = head(student_hidden, student_weight, student_bias);
        let teacher = head(teacher_hidden, teacher_weight, teacher_bias);
        super::fused_divergence_cpu::forward(&student, &teacher, valid.clone(), &params)
            .unwrap_or_else(|| primitive_forward::<Self>(student, teacher, valid, &params))
    }

    fn fused_divergence_backward(
        student_hidden: FloatTensor<Self>,
        student_weight: FloatTensor<Self>,
        student_bias: FloatTensor<Self>,
        teacher_hidden: FloatTensor<Self>,
        teacher_weight: FloatTensor<Self>,
        teacher_bias: FloatTensor<Self>,
        valid: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        params: DivergenceParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let student = head(student_hidden, student_weight, student_bias);
        let teacher = head(teacher_hidden, teacher_weight, teacher_bias);
        super::fused_divergence_cpu::backward(
            &student,
            &teacher,
            valid.clone(),
            saved.clone(),
            grad.clone(),
            &params,
        )
        .unwrap_or_else(|| {
            primitive_backward::<Self>(student, teacher, valid, saved, grad, &params)
        })
    }
}

impl<B: Backend + FusedDivergenceBackend, C: CheckpointStrategy> FusedDivergenceBackend
    for Autodiff<B, C>
{
    fn fused_divergence_forward(
        student_hidden: FloatTensor<Self>,
        student_weight: FloatTensor<Self>,
        student_bias: FloatTensor<Self>,
        teacher_hidden: FloatTensor<Self>,
        teacher_weight: FloatTensor<Self>,
        teacher_bias: FloatTensor<Self>,
        valid: FloatTensor<Self>,
        params: DivergenceParams,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct DivergenceBackward;

        /// Student (hidden, weight, bias), teacher (hidden, weight, bias), valid, saved.
        type State<B> = (
            [FloatTensor<B>; 3],
            [FloatTensor<B>; 3],
            FloatTensor<B>,
            FloatTensor<B>,
            DivergenceParams,
        );

        impl<B: Backend + FusedDivergenceBackend> Backward<B, 3> for DivergenceBackward {
            type State = State<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _c: &mut Checkpointer,
            ) {
                let [node_hidden, node_weight, node_bias] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let ([sh, sw, sb], [th, tw, tb], valid, saved, params) = ops.state;
                let (dh, dw, db) = B::fused_divergence_backward(
                    sh, sw, sb, th, tw, tb, valid, saved, grad, params,
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

        // The teacher and the mask never receive a gradient.
        let teacher = [
            teacher_hidden.into_primitive(),
            teacher_weight.into_primitive(),
            teacher_bias.into_primitive(),
        ];
        let valid = valid.into_primitive();
        match DivergenceBackward
            .prepare::<C>([
                student_hidden.node(),
                student_weight.node(),
                student_bias.node(),
            ])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let student = [
                    student_hidden.into_primitive(),
                    student_weight.into_primitive(),
                    student_bias.into_primitive(),
                ];
                let [sh, sw, sb] = student.clone();
                let [th, tw, tb] = teacher.clone();
                let out =
                    B::fused_divergence_forward(sh, sw, sb, th, tw, tb, valid.clone(), params);
                prep.finish((student, teacher, valid, out.clone(), params), out)
            }
            OpsKind::UnTracked(prep) => {
                let [th, tw, tb] = teacher;
                prep.finish(B::fused_divergence_forward(
                    student_hidden.into_primitive(),
                    student_weight.into_primitive(),
                    student_bias.into_primitive(),
                    th,
                    tw,
                    tb,
                    valid,
                    params,
                ))
            }
        }
    }
}

/// Calls the extension (on a device where [`crate::backends::has_native_kernel`] is true).
/// All tensors must be on the same device (autodiff or not alike).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_divergence_op(
    student: [burn::tensor::Tensor<2>; 2],
    student_bias: burn::tensor::Tensor<1>,
    teacher: [burn::tensor::Tensor<2>; 2],
    teacher_bias: burn::tensor::Tensor<1>,
    valid: burn::tensor::Tensor<1>,
    params: DivergenceParams,
) -> burn::tensor::Tensor<2> {
    let [sh, sw] = student;
    let [th, tw] = teacher;
    burn::tensor::Tensor::from_dispatch(
        <Dispatch as FusedDivergenceBackend>::fused_divergence_forward(
            sh.into_dispatch(),
            sw.into_dispatch(),
            student_bias.into_dispatch(),
            th.into_dispatch(),
            tw.into_dispatch(),
            teacher_bias.into_dispatch(),
            valid.into_dispatch(),
            params,
        ),
    )
}

/// The primitive path (what the CubeCL backends run) equals the native flex kernel: forward
/// outputs and student gradients, per divergence, with both layouts, soft-capping, biases and
/// masked rows. Run on Flex primitives (no GPU backend in the default test build).
#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::logps::divergence_params::DIV_COLS;
    use crate::logps::fused_params::FusedParams;
    use crate::logps::head::LmHeadLayout;
    use crate::test_util::flex::{host, t, uniform};
    use burn::backend::Flex;

    fn assert_close(what: &str, a: &[f64], b: &[f64]) {
        crate::test_util::flex::assert_close(what, a, b, 1e-11);
    }

    #[test]
    fn primitive_path_equals_flex_kernel() {
        let (n, hs, ht, v) = (7, 5, 6, 11);
        let mut next = uniform(11);
        let mut vals = |k: usize, s: f64| (0..k).map(|_| s * next()).collect::<Vec<f64>>();
        let (s_hidden, t_hidden) = (vals(n * hs, 1.5), vals(n * ht, 1.5));
        let (s_w_vh, t_w_vh) = (vals(v * hs, 1.0), vals(v * ht, 1.0));
        let (s_bias, t_bias) = (vals(v, 0.5), vals(v, 0.5));
        let grad = vals(n * DIV_COLS, 1.0);
        let valid = vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
        let transpose = |w: &[f64], h: usize| -> Vec<f64> {
            (0..h * v).map(|i| w[(i % v) * h + i / v]).collect()
        };
        let s_w_hv = transpose(&s_w_vh, hs);
        for kind in [
            DivergenceKind::Forward,
            DivergenceKind::Reverse,
            DivergenceKind::Jsd(0.3),
        ] {
            for layout in [LmHeadLayout::VocabMajor, LmHeadLayout::HiddenMajor] {
                let head = |scale, softcap, layout| FusedParams {
                    temperature: 0.8,
                    logit_scale: scale,
                    softcap,
                    token_chunk: Some(3),
                    vocab_chunk: Some(4),
                    stats: false,
                    layout,
                };
                let p = DivergenceParams {
                    kind,
                    student: head(1.3, Some(4.0), layout),
                    teacher: head(0.7, Some(3.0), LmHeadLayout::VocabMajor),
                    student_has_bias: true,
                    teacher_has_bias: true,
                };
                let (s_w, s_shape) = match layout {
                    LmHeadLayout::VocabMajor => (&s_w_vh, [v, hs]),
                    LmHeadLayout::HiddenMajor => (&s_w_hv, [hs, v]),
                };
                let student = || HeadTensors::<Flex> {
                    hidden: t(s_hidden.clone(), [n, hs]),
                    weight: t(s_w.clone(), s_shape),
                    bias: t(s_bias.clone(), [v]),
                };
                let teacher = || HeadTensors::<Flex> {
                    hidden: t(t_hidden.clone(), [n, ht]),
                    weight: t(t_w_vh.clone(), [v, ht]),
                    bias: t(t_bias.clone(), [v]),
                };
                let tv = || t(valid.clone(), [n]);
                let what = format!("{kind:?} {layout:?}");
                let want =
                    crate::logps::fused_divergence_cpu::forward(&student(), &teacher(), tv(), &p)
                        .unwrap();
                let got = primitive_forward::<Flex>(student(), teacher(), tv(), &p);
                assert_close(
                    &format!("{what} forward"),
                    &host(got.clone()),
                    &host(want.clone()),
                );
                let (want_dh, want_dw, want_db) = crate::logps::fused_divergence_cpu::backward(
                    &student(),
                    &teacher(),
                    tv(),
                    want,
                    t(grad.clone(), [n, DIV_COLS]),
                    &p,
                )
                .unwrap();
                let (dh, dw, db) = primitive_backward::<Flex>(
                    student(),
                    teacher(),
                    tv(),
                    got,
                    t(grad.clone(), [n, DIV_COLS]),
                    &p,
                );
                assert_eq!(dw.shape().dims::<2>(), s_shape, "{what} d weight layout");
                assert_close(&format!("{what} d hidden"), &host(dh), &host(want_dh));
                assert_close(&format!("{what} d weight"), &host(dw), &host(want_dw));
                assert_close(&format!("{what} d bias"), &host(db), &host(want_db));
            }
        }
    }
}
