//! Flex (CPU) implementation of the fused LM-head log-prob op: token x vocab tiles, an online
//! logsumexp across vocab tiles, GEMMs through the backend's own matmul, elementwise work on
//! raw slices.
//!
//! The weight is never copied: both layouts (`[V, H]` and burn `Linear`'s `[H, V]`) are seen
//! through a `[V, H]` strided view (`weight_vh`), whose vocabulary slices are handed to the
//! strided GEMM as they are (burn-flex's 2-D matmul passes row and column strides to `gemm`).
//! `d weight` is accumulated directly in the weight's own layout.

use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Flex, TensorMetadata};
use burn::tensor::{DType, Shape, TensorData};
use rayon::prelude::*;

use super::cpu::KernelFloat;
use super::fused::{FusedParams, OUT_COLS};
use super::head::LmHeadLayout;

pub(crate) trait FusedFloat: KernelFloat + burn::tensor::Element + bytemuck::Pod {
    fn tanh(self) -> Self;
    fn div(self, o: Self) -> Self;
}
impl FusedFloat for f32 {
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    fn div(self, o: Self) -> Self {
        self / o
    }
}
impl FusedFloat for f64 {
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn div(self, o: Self) -> Self {
        self / o
    }
}

fn slice_of<F: FusedFloat>(t: &FlexTensor) -> &[F] {
    t.as_slice::<F>().expect("contiguous tile")
}

/// The weight as a `[V, H]` view, without copying: the `[H, V]` layout is transposed by
/// swapping strides.
fn weight_vh(weight: &FlexTensor, layout: LmHeadLayout) -> FlexTensor {
    match layout {
        LmHeadLayout::VocabMajor => weight.clone(),
        LmHeadLayout::HiddenMajor => weight.transpose(0, 1),
    }
}

/// The hidden rows `rows` (scored rows only, ascending) as a `[rows.len(), H]` tile: a view
/// when they are consecutive, else a gathered copy (one row tile of memory).
fn row_tile<F: FusedFloat>(hidden: &FlexTensor, rows: &[usize]) -> FlexTensor {
    let (first, len) = (rows[0], rows.len());
    if rows[len - 1] - first + 1 == len {
        return hidden.narrow(0, first, len);
    }
    let hsize = hidden.shape()[1];
    let all = slice_of::<F>(hidden);
    let mut tile = Vec::with_capacity(len * hsize);
    for &r in rows {
        tile.extend_from_slice(&all[r * hsize..(r + 1) * hsize]);
    }
    FlexTensor::from_data(TensorData::new(tile, [len, hsize]))
}

/// The scored rows (`target >= 0`): ignored rows (prompt, padding) take no GEMM work.
fn scored_rows(targets: &[i64]) -> Vec<usize> {
    (0..targets.len()).filter(|&r| targets[r] >= 0).collect()
}

/// `h @ weight[cols]^T (+ bias[cols])` for a row tile `h`, transformed to `z`, as a contiguous
/// tile (`weight` is the `[V, H]` view: `weight[cols]^T` is `W[:, cols]` of an `[H, V]`
/// weight).
fn logits_tile<F: FusedFloat>(
    h: FlexTensor,
    weight: &FlexTensor,
    bias: Option<&[F]>,
    cols: (usize, usize),
    p: &FusedParams,
) -> FlexTensor {
    let w = weight.narrow(0, cols.0, cols.1 - cols.0).transpose(0, 1);
    let mut tile = contiguous(Flex::float_matmul(h, w));
    let width = cols.1 - cols.0;
    let z = tile_mut::<F>(&mut tile);
    let scale = F::from_f64(p.logit_scale);
    let inv_t = F::from_f64(1.0 / p.temperature);
    let cap = p.softcap.map(F::from_f64);
    z.par_chunks_mut(width).for_each(|row| {
        for (j, x) in row.iter_mut().enumerate() {
            let mut a = *x;
            if let Some(b) = bias {
                a = a.add(b[cols.0 + j]);
            }
            a = a.mul(scale);
            if let Some(c) = cap {
                a = c.mul(a.div(c).tanh());
            }
            *x = a.mul(inv_t);
        }
    });
    tile
}

/// The tile's elements, mutable; the matmul output is fresh and unshared, so this does not
/// copy (`storage_mut` would copy-on-write a shared buffer).
fn tile_mut<F: FusedFloat>(tile: &mut FlexTensor) -> &mut [F] {
    let n = tile.shape().num_elements();
    &mut tile.storage_mut::<F>()[..n]
}

/// Running per-row statistics over vocab tiles.
#[derive(Clone, Copy)]
struct RowStats<F> {
    max: F,
    sum: F,     // sum exp(z - max)
    sum_z: F,   // sum z exp(z - max)
    sum_sq: F,  // sum exp(2 (z - max))
    total_z: F, // sum z
    best: F,    // first maximum value
    best_idx: usize,
    target_z: F,
}

/// `weight` is the `[V, H]` view ([`weight_vh`]).
fn forward_typed<F: FusedFloat>(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    targets: &[i64],
    p: &FusedParams,
) -> Vec<F> {
    let n = hidden.shape()[0];
    let v = weight.shape()[0];
    let bias = bias.map(slice_of::<F>);
    let mut out = vec![F::ZERO; n * OUT_COLS];
    let scored = scored_rows(targets);
    let (tn, tv) = p.tiles(scored.len().max(1), v);
    for rows in scored.chunks(tn) {
        let h_tile = row_tile::<F>(hidden, rows);
        let mut stats = vec![
            RowStats {
                max: F::NEG_INFINITY,
                sum: F::ZERO,
                sum_z: F::ZERO,
                sum_sq: F::ZERO,
                total_z: F::ZERO,
                best: F::NEG_INFINITY,
                best_idx: 0,
                target_z: F::ZERO,
            };
            rows.len()
        ];
        for c0 in (0..v).step_by(tv) {
            let c1 = (c0 + tv).min(v);
            let width = c1 - c0;
            let z_tile = logits_tile::<F>(h_tile.clone(), weight, bias, (c0, c1), p);
            let z = slice_of::<F>(&z_tile);
            stats
                .par_iter_mut()
                .zip(z.par_chunks(width))
                .zip(rows.par_iter())
                .for_each(|((s, row), &r)| {
                    let (m, arg) = row_first_max(row);
                    if m > s.best {
                        s.best = m;
                        s.best_idx = c0 + arg;
                    }
                    let new_max = s.max.max(m);
                    let alpha = s.max.sub(new_max).exp();
                    let [e_sum, ez_sum, e2_sum, z_sum] = row_sums(row, new_max, p.stats);
                    s.sum = s.sum.mul(alpha).add(e_sum);
                    s.sum_z = s.sum_z.mul(alpha).add(ez_sum);
                    s.sum_sq = s.sum_sq.mul(alpha.mul(alpha)).add(e2_sum);
                    s.total_z = s.total_z.add(z_sum);
                    s.max = new_max;
                    let t = targets[r] as usize;
                    if t >= c0 && t < c1 {
                        s.target_z = row[t - c0];
                    }
                });
        }
        for (s, &r) in stats.iter().zip(rows) {
            let row = &mut out[r * OUT_COLS..(r + 1) * OUT_COLS];
            let log_sum = s.sum.ln();
            let lse = s.max.add(log_sum);
            let mean_z = s.sum_z.div(s.sum);
            row[0] = s.target_z.sub(lse);
            row[1] = lse.sub(mean_z);
            row[2] = s.sum_sq.ln().sub(log_sum.add(log_sum));
            row[3] = s.total_z.div(F::from_f64(v as f64));
            row[4] = if s.best_idx == targets[r] as usize {
                F::from_f64(1.0)
            } else {
                F::ZERO
            };
            row[5] = lse;
            row[6] = mean_z;
        }
    }
    out
}

/// `weight` is the `[V, H]` view ([`weight_vh`]); `d weight` comes back in `p.layout`.
#[allow(clippy::too_many_arguments)]
fn backward_typed<F: FusedFloat>(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    targets: &[i64],
    saved: &[F],
    grad: &[F],
    p: &FusedParams,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let n = hidden.shape()[0];
    let hsize = hidden.shape()[1];
    let v = weight.shape()[0];
    let bias_s = bias.map(slice_of::<F>);
    let scored = scored_rows(targets);
    let (tn, tv) = p.tiles(scored.len().max(1), v);
    let mut d_hidden = vec![F::ZERO; n * hsize];
    let mut d_weight = vec![F::ZERO; v * hsize];
    let mut d_bias = vec![F::ZERO; v];
    let scale = F::from_f64(p.logit_scale);
    let inv_t = F::from_f64(1.0 / p.temperature);
    let cap = p.softcap.map(F::from_f64);
    for rows in scored.chunks(tn) {
        let h_tile = row_tile::<F>(hidden, rows);
        for c0 in (0..v).step_by(tv) {
            let c1 = (c0 + tv).min(v);
            let width = c1 - c0;
            let mut z_tile = logits_tile::<F>(h_tile.clone(), weight, bias_s, (c0, c1), p);
            // z -> d loss / d raw logits, in place.
            tile_mut::<F>(&mut z_tile)
                .par_chunks_mut(width)
                .zip(rows.par_iter())
                .for_each(|(row, &r)| {
                    let g_lp = grad[r * OUT_COLS];
                    let g_h = grad[r * OUT_COLS + 1];
                    let lse = saved[r * OUT_COLS + 5];
                    let mean_z = saved[r * OUT_COLS + 6];
                    let t = targets[r] as usize;
                    let local_target = (t >= c0 && t < c1).then(|| t - c0);
                    let k = RowGrad {
                        g_lp,
                        g_h,
                        lse,
                        mean_z,
                        inv_t,
                        cap,
                        scale,
                    };
                    grad_row(row, local_target, &k);
                });
            let dl = z_tile;
            if bias.is_some() {
                let dl_s = slice_of::<F>(&dl);
                for i in 0..rows.len() {
                    for j in 0..width {
                        d_bias[c0 + j] = d_bias[c0 + j].add(dl_s[i * width + j]);
                    }
                }
            }
            // d_hidden[rows] += dl @ weight[cols] (a strided view for the [H, V] layout)
            let w = weight.narrow(0, c0, width);
            let dh = Flex::float_matmul(dl.clone(), w);
            let dh_s = slice_of::<F>(&dh);
            for (dh_row, &r) in dh_s.chunks(hsize).zip(rows) {
                for (acc, &x) in d_hidden[r * hsize..(r + 1) * hsize].iter_mut().zip(dh_row) {
                    *acc = acc.add(x);
                }
            }
            let h = h_tile.clone();
            match p.layout {
                LmHeadLayout::VocabMajor => {
                    // d_weight[cols, :] += dl^T @ hidden[rows]   ([width, H], contiguous rows)
                    let dw = Flex::float_matmul(dl.transpose(0, 1), h);
                    let dw_s = slice_of::<F>(&dw);
                    d_weight[c0 * hsize..c1 * hsize]
                        .par_iter_mut()
                        .zip(dw_s.par_iter())
                        .for_each(|(acc, &x)| *acc = acc.add(x));
                }
                LmHeadLayout::HiddenMajor => {
                    // d_weight[:, cols] += hidden[rows]^T @ dl   ([H, width], a column block)
                    let dw = Flex::float_matmul(h.transpose(0, 1), dl);
                    let dw_s = slice_of::<F>(&dw);
                    d_weight
                        .par_chunks_mut(v)
                        .zip(dw_s.par_chunks(width))
                        .for_each(|(acc_row, dw_row)| {
                            for (acc, &x) in acc_row[c0..c1].iter_mut().zip(dw_row) {
                                *acc = acc.add(x);
                            }
                        });
                }
            }
        }
    }
    (d_hidden, d_weight, d_bias)
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.layout().contiguous_offsets().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// Unchecked calls (no range check requested) still never return a silent wrong value on
/// the CPU: the targets are in host memory here, so the check is free.
fn assert_targets_in_range(targets: &[i64], vocab: usize) {
    if let Some(row) = targets.iter().position(|&x| x >= vocab as i64) {
        panic!(
            "burn-rlhf: fused log-probs: target {} of row {row} is outside [0, {vocab}) (set \
             check_targets or checked mode for a typed error)",
            targets[row]
        );
    }
}

fn targets_vec(targets: &FlexTensor) -> Option<Vec<i64>> {
    if let Some(s) = targets.as_slice::<i64>() {
        Some(s.to_vec())
    } else {
        targets
            .as_slice::<i32>()
            .map(|s| s.iter().map(|&x| x as i64).collect())
    }
}

/// Forward on Flex; `None` when the dtype has no native path (the caller falls back).
/// `weight` is `[V, H]` or `[H, V]` by `p.layout`, with any strides.
pub(crate) fn forward(
    hidden: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    targets: FlexTensor,
    p: &FusedParams,
) -> Option<FlexTensor> {
    let n = hidden.shape()[0];
    let t = targets_vec(&contiguous(targets))?;
    // The weight stays as it is (any strides): only its tiles' GEMMs read it.
    let weight = weight_vh(&weight, p.layout);
    assert_targets_in_range(&t, weight.shape()[0]);
    let (hidden, bias) = (contiguous(hidden), bias.map(contiguous));
    let out = match hidden.dtype() {
        DType::F32 => TensorData::new(
            forward_typed::<f32>(&hidden, &weight, bias.as_ref(), &t, p),
            [n, OUT_COLS],
        ),
        DType::F64 => TensorData::new(
            forward_typed::<f64>(&hidden, &weight, bias.as_ref(), &t, p),
            [n, OUT_COLS],
        ),
        _ => return None,
    };
    Some(FlexTensor::from_data(out))
}

/// Backward on Flex: `(d_hidden, d_weight, d_bias)`, `d_weight` in `p.layout` (contiguous).
pub(crate) fn backward(
    hidden: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    targets: FlexTensor,
    saved: FlexTensor,
    grad: FlexTensor,
    p: &FusedParams,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let (n, h) = (hidden.shape()[0], hidden.shape()[1]);
    let weight = weight_vh(&weight, p.layout);
    let v = weight.shape()[0];
    let t = targets_vec(&contiguous(targets))?;
    let (hidden, bias) = (contiguous(hidden), bias.map(contiguous));
    let dw_shape = match p.layout {
        LmHeadLayout::VocabMajor => Shape::new([v, h]),
        LmHeadLayout::HiddenMajor => Shape::new([h, v]),
    };
    let (saved, grad) = (contiguous(saved), contiguous(grad));
    macro_rules! run {
        ($f:ty) => {{
            let (dh, dw, db) = backward_typed::<$f>(
                &hidden,
                &weight,
                bias.as_ref(),
                &t,
                saved.as_slice::<$f>()?,
                grad.as_slice::<$f>()?,
                p,
            );
            Some((
                FlexTensor::from_data(TensorData::new(dh, Shape::new([n, h]))),
                FlexTensor::from_data(TensorData::new(dw, dw_shape.clone())),
                FlexTensor::from_data(TensorData::new(db, Shape::new([v]))),
            ))
        }};
    }
    match hidden.dtype() {
        DType::F32 => run!(f32),
        DType::F64 => run!(f64),
        _ => None,
    }
}

const LANES: usize = 16;

#[inline(always)]
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `(max, index of its first occurrence)` of a row.
#[inline(always)]
fn row_first_max_impl<F: FusedFloat>(row: &[F]) -> (F, usize) {
    let mut acc = [F::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(chunk[l]);
        }
    }
    let mut m = F::NEG_INFINITY;
    for &x in acc.iter().chain(tail) {
        m = m.max(x);
    }
    let arg = row.iter().position(|&x| x == m).unwrap_or(0);
    (m, arg)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_first_max_avx2<F: FusedFloat>(row: &[F]) -> (F, usize) {
    row_first_max_impl(row)
}

fn row_first_max<F: FusedFloat>(row: &[F]) -> (F, usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { row_first_max_avx2(row) };
    }
    row_first_max_impl(row)
}

/// `[sum e, sum e z, sum e^2, sum z]` with `e = exp(z - max)` (only `sum e` without stats).
#[inline(always)]
fn row_sums_impl<F: FusedFloat>(row: &[F], max: F, stats: bool) -> [F; 4] {
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut e = [F::ZERO; LANES];
    let mut out = [F::ZERO; 4];
    if stats {
        let (mut ez, mut e2, mut z) = ([F::ZERO; LANES], [F::ZERO; LANES], [F::ZERO; LANES]);
        for chunk in chunks {
            for l in 0..LANES {
                let x = chunk[l];
                let el = x.sub(max).exp();
                e[l] = e[l].add(el);
                ez[l] = ez[l].add(el.mul(x));
                e2[l] = e2[l].add(el.mul(el));
                z[l] = z[l].add(x);
            }
        }
        for &x in tail {
            let el = x.sub(max).exp();
            out[0] = out[0].add(el);
            out[1] = out[1].add(el.mul(x));
            out[2] = out[2].add(el.mul(el));
            out[3] = out[3].add(x);
        }
        for l in 0..LANES {
            out[0] = out[0].add(e[l]);
            out[1] = out[1].add(ez[l]);
            out[2] = out[2].add(e2[l]);
            out[3] = out[3].add(z[l]);
        }
    } else {
        for chunk in chunks {
            for l in 0..LANES {
                e[l] = e[l].add(chunk[l].sub(max).exp());
            }
        }
        for &x in tail {
            out[0] = out[0].add(x.sub(max).exp());
        }
        for v in e {
            out[0] = out[0].add(v);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_sums_avx2<F: FusedFloat>(row: &[F], max: F, stats: bool) -> [F; 4] {
    row_sums_impl(row, max, stats)
}

fn row_sums<F: FusedFloat>(row: &[F], max: F, stats: bool) -> [F; 4] {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { row_sums_avx2(row, max, stats) };
    }
    row_sums_impl(row, max, stats)
}

/// Per-row constants of the backward pass.
struct RowGrad<F> {
    g_lp: F,
    g_h: F,
    lse: F,
    mean_z: F,
    inv_t: F,
    cap: Option<F>,
    scale: F,
}

/// Overwrites a row of transformed logits `z` with `d loss / d raw logits`:
/// `dz = -p (g_lp + g_h (z - E[z]))` (+ `g_lp` at the target), times `dz/d raw`.
#[inline(always)]
fn grad_row_impl<F: FusedFloat>(row: &mut [F], target: Option<usize>, k: &RowGrad<F>) {
    let one = F::from_f64(1.0);
    let neg_g_lp = F::ZERO.sub(k.g_lp);
    let neg_g_h = F::ZERO.sub(k.g_h);
    let factor = k.inv_t.mul(k.scale);
    // dz/d raw = scale / T, times 1 - tanh^2 with soft-capping; the target's onehot term is
    // added after the loop (it needs the same factor).
    let target_z = target.map(|t| row[t]);
    match k.cap {
        None => {
            for x in row.iter_mut() {
                let z = *x;
                let prob = z.sub(k.lse).exp();
                let dz = prob.mul(neg_g_lp.add(neg_g_h.mul(z.sub(k.mean_z))));
                *x = dz.mul(factor);
            }
        }
        Some(c) => {
            let tanh_scale = one.div(k.inv_t).div(c);
            for x in row.iter_mut() {
                let z = *x;
                let prob = z.sub(k.lse).exp();
                let dz = prob.mul(neg_g_lp.add(neg_g_h.mul(z.sub(k.mean_z))));
                let th = z.mul(tanh_scale);
                *x = dz.mul(factor).mul(one.sub(th.mul(th)));
            }
        }
    }
    if let (Some(t), Some(z)) = (target, target_z) {
        let mut d = k.g_lp.mul(factor);
        if let Some(c) = k.cap {
            let th = z.div(k.inv_t).div(c);
            d = d.mul(one.sub(th.mul(th)));
        }
        row[t] = row[t].add(d);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn grad_row_avx2<F: FusedFloat>(row: &mut [F], target: Option<usize>, k: &RowGrad<F>) {
    grad_row_impl(row, target, k)
}

fn grad_row<F: FusedFloat>(row: &mut [F], target: Option<usize>, k: &RowGrad<F>) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { grad_row_avx2(row, target, k) };
    }
    grad_row_impl(row, target, k)
}
