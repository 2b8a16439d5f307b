//! Flex (CPU) implementation of the fused two-head divergence: token x vocabulary tiles of
//! both heads' logits (the fused log-prob op's strided in-place GEMMs, [`logits_into`]), online
//! logsumexps across vocabulary tiles, and the student's gradient accumulated in place
//! ([`HeadGrads`]). Only the scored rows are projected.
//!
//! Forward: one pass over the vocabulary tiles gives both logsumexps, the student entropy and,
//! for the two KL endpoints, the divergence itself (`KL(p_t || p_s) = E_t[z_t - z_s] - lse_t +
//! lse_s`); the generalized JSD needs the logsumexps first, so it takes a second pass (as
//! TRL's `ChunkedDivergenceFunction` does). Backward recomputes both heads' tiles once.

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, TensorData};
use rayon::prelude::*;

use super::divergence_params::{DIV_COLS, DivergenceKind, DivergenceParams};
use super::fused_cpu::{
    HeadGrads, WeightView, contiguous, logits_into, row_block, weight_data, weight_geometry,
};
use super::fused_divergence::HeadTensors;
use super::fused_params::FusedParams;
use super::fused_rows::FusedFloat;

const LANES: usize = 16;

/// Tile sums of pass 1 for one row: `[sum e_s, sum e_s z_s, sum e_t, cross]` with `e_s =
/// exp(z_s - max_s)`, `e_t = exp(z_t - max_t)` and `cross = sum e_t (z_t - z_s)` (forward KL)
/// or `sum e_s (z_s - z_t)` (reverse KL), 0 for the JSD.
#[inline(always)]
fn pass1_sums_impl<F: FusedFloat>(zs: &[F], zt: &[F], max_s: F, max_t: F, kind: u8) -> [F; 4] {
    let mut acc = [[F::ZERO; LANES]; 4];
    let mut out = [F::ZERO; 4];
    let body = |a: &mut [F; 4], s: F, t: F| {
        let es = s.sub(max_s).exp();
        let et = t.sub(max_t).exp();
        a[0] = a[0].add(es);
        a[1] = a[1].add(es.mul(s));
        a[2] = a[2].add(et);
        a[3] = match kind {
            0 => a[3].add(et.mul(t.sub(s))),
            1 => a[3].add(es.mul(s.sub(t))),
            _ => a[3],
        };
    };
    let (cs, ct) = (zs.chunks_exact(LANES), zt.chunks_exact(LANES));
    let (ts, tt) = (cs.remainder(), ct.remainder());
    for (s, t) in cs.zip(ct) {
        for l in 0..LANES {
            let mut a = [acc[0][l], acc[1][l], acc[2][l], acc[3][l]];
            body(&mut a, s[l], t[l]);
            for k in 0..4 {
                acc[k][l] = a[k];
            }
        }
    }
    for (&s, &t) in ts.iter().zip(tt) {
        body(&mut out, s, t);
    }
    for (o, lanes) in out.iter_mut().zip(&acc) {
        for &x in lanes {
            *o = o.add(x);
        }
    }
    out
}

super::cpu::simd_dispatch! {
    fn pass1_sums<F: FusedFloat>(zs: &[F], zt: &[F], max_s: F, max_t: F, kind: u8) -> [F; 4] => pass1_sums_impl
}

/// `log m = logaddexp(a, b)` for the mixture's two log-terms.
#[inline(always)]
fn logaddexp<F: FusedFloat>(a: F, b: F) -> F {
    let max = a.max(b);
    let gap = a.sub(b).max(b.sub(a));
    max.add(F::from_f64(1.0).add(F::ZERO.sub(gap).exp()).ln())
}

/// The JSD's per-row constants.
#[derive(Clone, Copy)]
struct Mixture<F> {
    lse_s: F,
    lse_t: F,
    /// `log(1 - beta)`, `log(beta)`.
    log_w_s: F,
    log_w_t: F,
}

/// Pass 2 of the JSD for one row tile: `[sum p_t (log p_t - log m), sum p_s (log p_s - log m)]`.
#[inline(always)]
fn pass2_sums_impl<F: FusedFloat>(zs: &[F], zt: &[F], k: &Mixture<F>) -> [F; 2] {
    let mut out = [F::ZERO; 2];
    for (&s, &t) in zs.iter().zip(zt) {
        let lps = s.sub(k.lse_s);
        let lpt = t.sub(k.lse_t);
        let lm = logaddexp(lps.add(k.log_w_s), lpt.add(k.log_w_t));
        out[0] = out[0].add(lpt.exp().mul(lpt.sub(lm)));
        out[1] = out[1].add(lps.exp().mul(lps.sub(lm)));
    }
    out
}

super::cpu::simd_dispatch! {
    fn pass2_sums<F: FusedFloat>(zs: &[F], zt: &[F], k: &Mixture<F>) -> [F; 2] => pass2_sums_impl
}

/// Per-row constants of the backward pass.
struct RowGrad<F> {
    kind: u8,
    /// Upstream gradient of the row's divergence.
    g: F,
    mix: Mixture<F>,
    /// Reverse KL: `D`; JSD: `KL(p_s || m)`.
    center: F,
    /// JSD: `1 - beta`; else 1.
    weight: F,
    inv_t: F,
    scale: F,
    cap: Option<F>,
}

/// Overwrites the student's transformed logits `zs` with `d loss / d raw student logits`.
#[inline(always)]
fn grad_row_impl<F: FusedFloat>(zs: &mut [F], zt: &[F], k: &RowGrad<F>) {
    let one = F::from_f64(1.0);
    let factor = k.g.mul(k.weight).mul(k.inv_t).mul(k.scale);
    let tanh_scale = k.cap.map(|c| one.div(k.inv_t).div(c));
    for (x, &t) in zs.iter_mut().zip(zt) {
        let s = *x;
        let lps = s.sub(k.mix.lse_s);
        let lpt = t.sub(k.mix.lse_t);
        let ps = lps.exp();
        let dz = match k.kind {
            0 => ps.sub(lpt.exp()),
            1 => ps.mul(lps.sub(lpt).sub(k.center)),
            _ => {
                let lm = logaddexp(lps.add(k.mix.log_w_s), lpt.add(k.mix.log_w_t));
                ps.mul(lps.sub(lm).sub(k.center))
            }
        };
        let mut d = dz.mul(factor);
        if let Some(ts) = tanh_scale {
            let th = s.mul(ts);
            d = d.mul(one.sub(th.mul(th)));
        }
        *x = d;
    }
}

super::cpu::simd_dispatch! {
    fn grad_row<F: FusedFloat>(zs: &mut [F], zt: &[F], k: &RowGrad<F>) => grad_row_impl
}

fn kind_code(kind: DivergenceKind) -> u8 {
    match kind {
        DivergenceKind::Forward => 0,
        DivergenceKind::Reverse => 1,
        DivergenceKind::Jsd(_) => 2,
    }
}

/// `(log(1 - beta), log(beta))` of the mixture (unused for the endpoints).
fn mixture_logs(kind: DivergenceKind) -> (f64, f64) {
    match kind {
        DivergenceKind::Jsd(beta) => ((1.0 - beta).ln(), beta.ln()),
        _ => (0.0, 0.0),
    }
}

/// One head's inputs as the kernels read them.
struct Head {
    hidden: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    view_strides: (usize, usize),
    v: usize,
    h: usize,
    params: FusedParams,
}

/// One head's `F` slices.
struct HeadSlices<'a, F> {
    hidden: &'a [F],
    weight: WeightView<'a, F>,
    bias: Option<&'a [F]>,
    h: usize,
    params: &'a FusedParams,
}

impl Head {
    fn new(t: &HeadTensors<burn::backend::Flex>, params: FusedParams, has_bias: bool) -> Self {
        let (weight, view_strides, (v, h)) = weight_geometry(t.weight.clone(), params.layout);
        Self {
            hidden: contiguous(t.hidden.clone()),
            weight,
            bias: has_bias.then(|| contiguous(t.bias.clone())),
            view_strides,
            v,
            h,
            params,
        }
    }

    fn slices<F: FusedFloat>(&self) -> Option<HeadSlices<'_, F>> {
        Some(HeadSlices {
            hidden: self.hidden.as_slice::<F>()?,
            weight: WeightView {
                data: weight_data::<F>(&self.weight)?,
                rs: self.view_strides.0,
                cs: self.view_strides.1,
            },
            bias: match &self.bias {
                Some(b) => Some(b.as_slice::<F>()?),
                None => None,
            },
            h: self.h,
            params: &self.params,
        })
    }
}

/// Scored rows (`valid != 0`), ascending; `None` for a dtype without a native path. The mask
/// is host memory on flex: read in place, not through a device read.
fn valid_rows(valid: FlexTensor) -> Option<Vec<usize>> {
    let valid = contiguous(valid);
    let flags: Vec<bool> = if let Some(v) = valid.as_slice::<f32>() {
        v.iter().map(|&x| x != 0.0).collect()
    } else {
        valid.as_slice::<f64>()?.iter().map(|&x| x != 0.0).collect()
    };
    Some((0..flags.len()).filter(|&r| flags[r]).collect())
}

/// Per-row running statistics of pass 1.
#[derive(Clone, Copy)]
struct RowStats<F> {
    max_s: F,
    max_t: F,
    sums: [F; 4],
}

/// Fills `z` (`[rows, width]`) with one head's transformed logits for columns `c0..c0+width`.
fn head_logits<F: FusedFloat>(
    z: &mut [F],
    head: &HeadSlices<'_, F>,
    h_block: &[F],
    cols: (usize, usize),
) {
    logits_into(
        z,
        h_block,
        head.h,
        &head.weight,
        head.bias,
        cols,
        head.params,
    );
}

fn forward_typed<F: FusedFloat>(
    s: &HeadSlices<'_, F>,
    t: &HeadSlices<'_, F>,
    rows_all: &[usize],
    n: usize,
    v: usize,
    p: &DivergenceParams,
) -> Vec<F> {
    let mut out = vec![F::ZERO; n * DIV_COLS];
    if rows_all.is_empty() {
        return out;
    }
    let kind = kind_code(p.kind);
    let (log_w_s, log_w_t) = mixture_logs(p.kind);
    let (tn, tv) = p.student.tiles(rows_all.len(), v);
    let mut zs = vec![F::ZERO; tn.min(rows_all.len()) * tv];
    let mut zt = vec![F::ZERO; tn.min(rows_all.len()) * tv];
    let (mut gather_s, mut gather_t) = (Vec::new(), Vec::new());
    for rows in rows_all.chunks(tn) {
        let hs = row_block(s.hidden, s.h, rows, &mut gather_s);
        let ht = row_block(t.hidden, t.h, rows, &mut gather_t);
        let mut stats = vec![
            RowStats {
                max_s: F::NEG_INFINITY,
                max_t: F::NEG_INFINITY,
                sums: [F::ZERO; 4],
            };
            rows.len()
        ];
        for c0 in (0..v).step_by(tv) {
            let width = (c0 + tv).min(v) - c0;
            let (zs, zt) = (&mut zs[..rows.len() * width], &mut zt[..rows.len() * width]);
            head_logits(zs, s, hs, (c0, width));
            head_logits(zt, t, ht, (c0, width));
            stats
                .par_iter_mut()
                .zip(zs.par_chunks(width).zip(zt.par_chunks(width)))
                .for_each(|(st, (rs, rt))| {
                    let ms = rs.iter().fold(F::NEG_INFINITY, |a, &x| a.max(x));
                    let mt = rt.iter().fold(F::NEG_INFINITY, |a, &x| a.max(x));
                    let (new_s, new_t) = (st.max_s.max(ms), st.max_t.max(mt));
                    let (alpha_s, alpha_t) = (st.max_s.sub(new_s).exp(), st.max_t.sub(new_t).exp());
                    let tile = pass1_sums(rs, rt, new_s, new_t, kind);
                    let cross_alpha = if kind == 0 { alpha_t } else { alpha_s };
                    st.sums[0] = st.sums[0].mul(alpha_s).add(tile[0]);
                    st.sums[1] = st.sums[1].mul(alpha_s).add(tile[1]);
                    st.sums[2] = st.sums[2].mul(alpha_t).add(tile[2]);
                    st.sums[3] = st.sums[3].mul(cross_alpha).add(tile[3]);
                    st.max_s = new_s;
                    st.max_t = new_t;
                });
        }
        let mut mixtures = Vec::with_capacity(rows.len());
        for (st, &r) in stats.iter().zip(rows) {
            let row = &mut out[r * DIV_COLS..(r + 1) * DIV_COLS];
            let lse_s = st.max_s.add(st.sums[0].ln());
            let lse_t = st.max_t.add(st.sums[2].ln());
            row[1] = lse_s.sub(st.sums[1].div(st.sums[0]));
            row[2] = lse_s;
            row[3] = lse_t;
            row[0] = match kind {
                0 => st.sums[3].div(st.sums[2]).sub(lse_t).add(lse_s),
                1 => st.sums[3].div(st.sums[0]).sub(lse_s).add(lse_t),
                _ => F::ZERO,
            };
            mixtures.push(Mixture {
                lse_s,
                lse_t,
                log_w_s: F::from_f64(log_w_s),
                log_w_t: F::from_f64(log_w_t),
            });
        }
        if let DivergenceKind::Jsd(beta) = p.kind {
            let mut kl = vec![[F::ZERO; 2]; rows.len()];
            for c0 in (0..v).step_by(tv) {
                let width = (c0 + tv).min(v) - c0;
                let (zs, zt) = (&mut zs[..rows.len() * width], &mut zt[..rows.len() * width]);
                head_logits(zs, s, hs, (c0, width));
                head_logits(zt, t, ht, (c0, width));
                kl.par_iter_mut()
                    .zip(zs.par_chunks(width).zip(zt.par_chunks(width)))
                    .zip(mixtures.par_iter())
                    .for_each(|((acc, (rs, rt)), mix)| {
                        let [kt, ks] = pass2_sums(rs, rt, mix);
                        acc[0] = acc[0].add(kt);
                        acc[1] = acc[1].add(ks);
                    });
            }
            let (b, one_minus_b) = (F::from_f64(beta), F::from_f64(1.0 - beta));
            for (acc, &r) in kl.iter().zip(rows) {
                let row = &mut out[r * DIV_COLS..(r + 1) * DIV_COLS];
                row[0] = b.mul(acc[0]).add(one_minus_b.mul(acc[1]));
                row[4] = acc[1];
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn backward_typed<F: FusedFloat>(
    s: &HeadSlices<'_, F>,
    t: &HeadSlices<'_, F>,
    rows_all: &[usize],
    n: usize,
    v: usize,
    saved: &[F],
    grad: &[F],
    p: &DivergenceParams,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let mut grads = HeadGrads::new(n, s.h, v, s.params.layout);
    if rows_all.is_empty() {
        return (grads.d_hidden, grads.d_weight, grads.d_bias);
    }
    let kind = kind_code(p.kind);
    let (log_w_s, log_w_t) = mixture_logs(p.kind);
    let weight = match p.kind {
        DivergenceKind::Jsd(beta) => F::from_f64(1.0 - beta),
        _ => F::from_f64(1.0),
    };
    let sp = s.params;
    let (inv_t, scale, cap) = (
        F::from_f64(1.0 / sp.temperature),
        F::from_f64(sp.logit_scale),
        sp.softcap.map(F::from_f64),
    );
    let (tn, tv) = sp.tiles(rows_all.len(), v);
    let mut zs = vec![F::ZERO; tn.min(rows_all.len()) * tv];
    let mut zt = vec![F::ZERO; tn.min(rows_all.len()) * tv];
    let (mut gather_s, mut gather_t) = (Vec::new(), Vec::new());
    for rows in rows_all.chunks(tn) {
        let hs = row_block(s.hidden, s.h, rows, &mut gather_s);
        let ht = row_block(t.hidden, t.h, rows, &mut gather_t);
        grads.begin_block(rows);
        for c0 in (0..v).step_by(tv) {
            let width = (c0 + tv).min(v) - c0;
            let (dl, zt) = (&mut zs[..rows.len() * width], &mut zt[..rows.len() * width]);
            head_logits(dl, s, hs, (c0, width));
            head_logits(zt, t, ht, (c0, width));
            dl.par_chunks_mut(width)
                .zip(zt.par_chunks(width))
                .zip(rows.par_iter())
                .for_each(|((rs, rt), &r)| {
                    let sv = &saved[r * DIV_COLS..(r + 1) * DIV_COLS];
                    let k = RowGrad {
                        kind,
                        g: grad[r * DIV_COLS],
                        mix: Mixture {
                            lse_s: sv[2],
                            lse_t: sv[3],
                            log_w_s: F::from_f64(log_w_s),
                            log_w_t: F::from_f64(log_w_t),
                        },
                        center: if kind == 1 { sv[0] } else { sv[4] },
                        weight,
                        inv_t,
                        scale,
                        cap,
                    };
                    grad_row(rs, rt, &k);
                });
            grads.add_tile(dl, rows, hs, &s.weight, (c0, width), s.bias.is_some());
        }
        grads.end_block(rows);
    }
    (grads.d_hidden, grads.d_weight, grads.d_bias)
}

/// Forward on Flex; `None` when the dtype has no native path (the caller falls back).
pub(crate) fn forward(
    student: &HeadTensors<burn::backend::Flex>,
    teacher: &HeadTensors<burn::backend::Flex>,
    valid: FlexTensor,
    p: &DivergenceParams,
) -> Option<FlexTensor> {
    let (s, t) = (
        Head::new(student, p.student, p.student_has_bias),
        Head::new(teacher, p.teacher, p.teacher_has_bias),
    );
    let n = s.hidden.shape()[0];
    let rows = valid_rows(valid)?;
    macro_rules! run {
        ($f:ty) => {{
            let (ss, ts) = (s.slices::<$f>()?, t.slices::<$f>()?);
            let out = forward_typed::<$f>(&ss, &ts, &rows, n, s.v, p);
            TensorData::new(out, [n, DIV_COLS])
        }};
    }
    let out = match s.hidden.dtype() {
        DType::F32 => run!(f32),
        DType::F64 => run!(f64),
        _ => return None,
    };
    Some(FlexTensor::from_data(out))
}

/// Backward on Flex: `(d hidden, d weight, d bias)` of the student, `d weight` in its layout.
pub(crate) fn backward(
    student: &HeadTensors<burn::backend::Flex>,
    teacher: &HeadTensors<burn::backend::Flex>,
    valid: FlexTensor,
    saved: FlexTensor,
    grad: FlexTensor,
    p: &DivergenceParams,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let (s, t) = (
        Head::new(student, p.student, p.student_has_bias),
        Head::new(teacher, p.teacher, p.teacher_has_bias),
    );
    let (n, v, h) = (s.hidden.shape()[0], s.v, s.h);
    let rows = valid_rows(valid)?;
    let dw_shape = match p.student.layout {
        super::head::LmHeadLayout::VocabMajor => Shape::new([v, h]),
        super::head::LmHeadLayout::HiddenMajor => Shape::new([h, v]),
    };
    let (saved, grad) = (contiguous(saved), contiguous(grad));
    macro_rules! run {
        ($f:ty) => {{
            let (ss, ts) = (s.slices::<$f>()?, t.slices::<$f>()?);
            let (saved, grad) = (saved.as_slice::<$f>()?, grad.as_slice::<$f>()?);
            let (dh, dw, db) = backward_typed::<$f>(&ss, &ts, &rows, n, v, saved, grad, p);
            Some((
                FlexTensor::from_data(TensorData::new(dh, Shape::new([n, h]))),
                FlexTensor::from_data(TensorData::new(dw, dw_shape.clone())),
                FlexTensor::from_data(TensorData::new(db, Shape::new([v]))),
            ))
        }};
    }
    match s.hidden.dtype() {
        DType::F32 => run!(f32),
        DType::F64 => run!(f64),
        _ => None,
    }
}
