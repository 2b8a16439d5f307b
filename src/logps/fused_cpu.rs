//! Flex (CPU) implementation of the fused LM-head log-prob op: token x vocab tiles, an online
//! logsumexp across vocab tiles, elementwise work on raw slices, and the GEMMs through `gemm`
//! (the crate burn-flex's matmul uses) called directly on strided slices, so that no tile is
//! allocated per step: one reused logits tile, `d hidden` and `d weight` accumulated in place by
//! the GEMMs (`dst += lhs . rhs`).
//!
//! The weight is never copied: both layouts (`[V, H]` and burn `Linear`'s `[H, V]`) are read
//! as a `[V, H]` strided view ([`WeightView`]); `d weight` is accumulated in the weight's own
//! layout. Only the scored rows (target >= 0) enter the GEMMs.

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, TensorData};
use rayon::prelude::*;

use super::fused_params::{FusedParams, OUT_COLS};
use super::fused_rows::{FusedFloat, RowGrad, grad_row, row_first_max, row_sums};
use super::head::LmHeadLayout;

/// The weight seen as a `[V, H]` matrix without copying: its contiguous storage and the
/// (row, column) strides of the `[V, H]` view (`[H, V]` storage is read transposed).
pub(super) struct WeightView<'a, F> {
    pub(super) data: &'a [F],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<F> WeightView<'_, F> {
    /// Pointer to row `v0` of the `[V, H]` view.
    fn row_ptr(&self, v0: usize) -> *const F {
        self.data[v0 * self.rs..].as_ptr()
    }
}

/// `dst[m x n] = (accumulate ? dst : 0) + lhs[m x k] . rhs[k x n]` through `gemm` (the crate
/// burn-flex's matmul calls; AVX-512 / AVX2 kernels picked at run time), on strided operands
/// (strides in elements, row then column). Accumulating in place spares a temporary and a pass.
///
/// # Safety
/// Every pointer must address a matrix of the given shape and strides inside one allocation;
/// `dst` must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<F: FusedFloat>(
    (m, n, k): (usize, usize, usize),
    dst: (*mut F, usize, usize),
    accumulate: bool,
    lhs: (*const F, usize, usize),
    rhs: (*const F, usize, usize),
) {
    let parallelism = if m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let (zero, one) = (F::ZERO, F::from_f64(1.0));
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            if accumulate { one } else { zero },
            one,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The hidden rows `rows` (scored rows only, ascending) as a `[rows.len(), H]` block: a
/// sub-slice when they are consecutive, else gathered into `buf` (one row tile of memory).
pub(super) fn row_block<'a, F: FusedFloat>(
    hidden: &'a [F],
    h: usize,
    rows: &[usize],
    buf: &'a mut Vec<F>,
) -> &'a [F] {
    let (first, len) = (rows[0], rows.len());
    if rows[len - 1] - first + 1 == len {
        return &hidden[first * h..(first + len) * h];
    }
    buf.clear();
    for &r in rows {
        buf.extend_from_slice(&hidden[r * h..(r + 1) * h]);
    }
    buf
}

/// The scored rows (`target >= 0`): ignored rows (prompt, padding) take no GEMM work.
fn scored_rows(targets: &[i64]) -> Vec<usize> {
    (0..targets.len()).filter(|&r| targets[r] >= 0).collect()
}

/// `z = h_block @ weight[c0 .. c0 + width]^T (+ bias)`, transformed (scale, softcap,
/// temperature), written into `z` (`[rows, width]`, row-major).
pub(super) fn logits_into<F: FusedFloat>(
    z: &mut [F],
    h_block: &[F],
    h: usize,
    weight: &WeightView<'_, F>,
    bias: Option<&[F]>,
    (c0, width): (usize, usize),
    p: &FusedParams,
) {
    let rows = h_block.len() / h;
    debug_assert_eq!(z.len(), rows * width);
    // SAFETY: z is [rows, width] row-major; h_block is [rows, h] row-major; the weight rows
    // c0 .. c0 + width exist in the [V, H] view (transposed: (k, j) -> weight[c0 + j][k]).
    unsafe {
        gemm_into(
            (rows, width, h),
            (z.as_mut_ptr(), width, 1),
            false,
            (h_block.as_ptr(), h, 1),
            (weight.row_ptr(c0), weight.cs, weight.rs),
        );
    }
    if bias.is_none() && p.logit_scale == 1.0 && p.softcap.is_none() && p.temperature == 1.0 {
        return; // z = logits: no elementwise pass
    }
    let scale = F::from_f64(p.logit_scale);
    let inv_t = F::from_f64(1.0 / p.temperature);
    let cap = p.softcap.map(F::from_f64);
    z.par_chunks_mut(width).for_each(|row| {
        for (j, x) in row.iter_mut().enumerate() {
            let mut a = *x;
            if let Some(b) = bias {
                a = a.add(b[c0 + j]);
            }
            a = a.mul(scale);
            if let Some(c) = cap {
                a = c.mul(a.div(c).tanh());
            }
            *x = a.mul(inv_t);
        }
    });
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

fn forward_typed<F: FusedFloat>(
    hidden: &[F],
    h: usize,
    weight: &WeightView<'_, F>,
    v: usize,
    bias: Option<&[F]>,
    targets: &[i64],
    p: &FusedParams,
) -> Vec<F> {
    let n = targets.len();
    let mut out = vec![F::ZERO; n * OUT_COLS];
    let scored = scored_rows(targets);
    let (tn, tv) = p.tiles(scored.len().max(1), v);
    let mut z = vec![F::ZERO; tn.min(scored.len()) * tv];
    let mut gathered = Vec::new();
    for rows in scored.chunks(tn) {
        let h_block = row_block(hidden, h, rows, &mut gathered);
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
            let width = (c0 + tv).min(v) - c0;
            let z = &mut z[..rows.len() * width];
            logits_into(z, h_block, h, weight, bias, (c0, width), p);
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
                    if t >= c0 && t < c0 + width {
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

/// `(d hidden, d weight, d bias)`; `d weight` in `p.layout`, accumulated in place by the GEMMs.
#[allow(clippy::too_many_arguments)]
fn backward_typed<F: FusedFloat>(
    hidden: &[F],
    h: usize,
    weight: &WeightView<'_, F>,
    v: usize,
    bias: Option<&[F]>,
    targets: &[i64],
    saved: &[F],
    grad: &[F],
    p: &FusedParams,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let n = targets.len();
    let scored = scored_rows(targets);
    let (tn, tv) = p.tiles(scored.len().max(1), v);
    let mut grads = HeadGrads::new(n, h, v, p.layout);
    let mut z = vec![F::ZERO; tn.min(scored.len()) * tv];
    let mut gathered = Vec::new();
    let scale = F::from_f64(p.logit_scale);
    let inv_t = F::from_f64(1.0 / p.temperature);
    let cap = p.softcap.map(F::from_f64);
    for rows in scored.chunks(tn) {
        let h_block = row_block(hidden, h, rows, &mut gathered);
        grads.begin_block(rows);
        for c0 in (0..v).step_by(tv) {
            let width = (c0 + tv).min(v) - c0;
            let dl = &mut z[..rows.len() * width];
            logits_into(dl, h_block, h, weight, bias, (c0, width), p);
            // z -> d loss / d raw logits, in place.
            dl.par_chunks_mut(width)
                .zip(rows.par_iter())
                .for_each(|(row, &r)| {
                    let t = targets[r] as usize;
                    let k = RowGrad {
                        g_lp: grad[r * OUT_COLS],
                        g_h: grad[r * OUT_COLS + 1],
                        lse: saved[r * OUT_COLS + 5],
                        mean_z: saved[r * OUT_COLS + 6],
                        inv_t,
                        cap,
                        scale,
                    };
                    grad_row(row, (t >= c0 && t < c0 + width).then(|| t - c0), &k);
                });
            grads.add_tile(dl, rows, h_block, weight, (c0, width), bias.is_some());
        }
        grads.end_block(rows);
    }
    (grads.d_hidden, grads.d_weight, grads.d_bias)
}

/// The gradients of one LM head (`d hidden`, `d weight` in the weight's layout, `d bias`),
/// accumulated tile by tile from `d loss / d raw logits` by in-place GEMMs. Shared by the
/// fused log-prob op and the fused distillation op.
pub(super) struct HeadGrads<F> {
    pub(super) d_hidden: Vec<F>,
    pub(super) d_weight: Vec<F>,
    pub(super) d_bias: Vec<F>,
    dh_block: Vec<F>,
    consecutive: bool,
    h: usize,
    v: usize,
    layout: LmHeadLayout,
}

impl<F: FusedFloat> HeadGrads<F> {
    /// Zeroed gradients for `n` rows of width `h` and a `v`-word head in `layout`.
    pub(super) fn new(n: usize, h: usize, v: usize, layout: LmHeadLayout) -> Self {
        Self {
            d_hidden: vec![F::ZERO; n * h],
            d_weight: super::cpu::zeroed_buffer::<F>(v * h),
            d_bias: vec![F::ZERO; v],
            dh_block: Vec::new(),
            consecutive: true,
            h,
            v,
            layout,
        }
    }

    /// Starts a block of rows (ascending): consecutive rows accumulate `d hidden` in place,
    /// others into a block scattered by [`end_block`](Self::end_block).
    pub(super) fn begin_block(&mut self, rows: &[usize]) {
        let len = rows.len();
        self.consecutive = rows[len - 1] - rows[0] + 1 == len;
        if !self.consecutive {
            self.dh_block.clear();
            self.dh_block.resize(len * self.h, F::ZERO);
        }
    }

    /// Adds one tile: `dl` = `d loss / d raw logits` `[rows.len(), width]` of the vocabulary
    /// columns `c0 .. c0 + width`; `h_block` the rows' hidden states `[rows.len(), H]`.
    pub(super) fn add_tile(
        &mut self,
        dl: &[F],
        rows: &[usize],
        h_block: &[F],
        weight: &WeightView<'_, F>,
        (c0, width): (usize, usize),
        has_bias: bool,
    ) {
        let (len, h, v) = (rows.len(), self.h, self.v);
        if has_bias {
            for row in dl.chunks(width) {
                for (acc, &x) in self.d_bias[c0..c0 + width].iter_mut().zip(row) {
                    *acc = acc.add(x);
                }
            }
        }
        // d hidden[rows] += dl @ weight[c0 .. c0 + width]   ([len, H]; in place when the
        // rows are consecutive, else into the block and scattered at the block's end).
        let (dst, accumulate) = if self.consecutive {
            (self.d_hidden[rows[0] * h..].as_mut_ptr(), true)
        } else {
            (self.dh_block.as_mut_ptr(), c0 > 0)
        };
        // SAFETY: dst is [len, H] row-major inside d_hidden / dh_block; dl is [len, width];
        // weight rows c0 .. c0 + width exist in the view.
        unsafe {
            gemm_into(
                (len, h, width),
                (dst, h, 1),
                accumulate,
                (dl.as_ptr(), width, 1),
                (weight.row_ptr(c0), weight.rs, weight.cs),
            );
        }
        // d weight[c0 .. c0 + width] += dl^T @ h_block, in the weight's own layout.
        // SAFETY: the destinations are the weight-shaped block of d_weight for these
        // columns; dl^T is read through strides; h_block is [len, H].
        unsafe {
            match self.layout {
                LmHeadLayout::VocabMajor => gemm_into(
                    (width, h, len),
                    (self.d_weight[c0 * h..].as_mut_ptr(), h, 1),
                    true,
                    (dl.as_ptr(), 1, width),
                    (h_block.as_ptr(), h, 1),
                ),
                LmHeadLayout::HiddenMajor => gemm_into(
                    (h, width, len),
                    (self.d_weight[c0..].as_mut_ptr(), v, 1),
                    true,
                    (h_block.as_ptr(), 1, h),
                    (dl.as_ptr(), width, 1),
                ),
            }
        }
    }

    /// Ends a block: scatters `d hidden` of non-consecutive rows.
    pub(super) fn end_block(&mut self, rows: &[usize]) {
        if !self.consecutive {
            let h = self.h;
            for (block_row, &r) in self.dh_block.chunks(h).zip(rows) {
                self.d_hidden[r * h..(r + 1) * h].copy_from_slice(block_row);
            }
        }
    }
}

pub(super) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.layout().contiguous_offsets().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// A last line of defence: `FusedLogps` always range-checks targets on the CPU backends
/// (a typed error), so this assert is never reached from the public API.
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

/// The weight as stored (any non-negative strides: a transposed or sliced view is read in
/// place; negative strides are copied once), with the `[V, H]` view's strides and `(V, H)`.
pub(super) fn weight_geometry(
    weight: FlexTensor,
    layout: LmHeadLayout,
) -> (FlexTensor, (usize, usize), (usize, usize)) {
    let weight = if weight.layout().strides().iter().all(|&st| st >= 0) {
        weight
    } else {
        weight.to_contiguous()
    };
    let st = weight.layout().strides();
    let (s0, s1) = (st[0] as usize, st[1] as usize);
    let (d0, d1) = (weight.shape()[0], weight.shape()[1]);
    match layout {
        LmHeadLayout::VocabMajor => (weight, (s0, s1), (d0, d1)),
        LmHeadLayout::HiddenMajor => (weight, (s1, s0), (d1, d0)),
    }
}

/// The weight's elements from its first one (the strides address the rest).
pub(super) fn weight_data<F: FusedFloat>(weight: &FlexTensor) -> Option<&[F]> {
    if F::dtype() != weight.dtype() {
        return None;
    }
    Some(&weight.storage::<F>()[weight.layout().start_offset()..])
}

/// The op's inputs as the kernels read them: contiguous hidden / bias, the weight as stored
/// (with its `[V, H]` view strides), the targets on the host (range-asserted).
/// `(hidden, weight view, bias)` read as `F`.
type Slices<'a, F> = (&'a [F], WeightView<'a, F>, Option<&'a [F]>);

struct Inputs {
    hidden: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    targets: Vec<i64>,
    view_strides: (usize, usize),
    v: usize,
    h: usize,
}

impl Inputs {
    fn new(
        hidden: FlexTensor,
        weight: FlexTensor,
        bias: Option<FlexTensor>,
        targets: FlexTensor,
        p: &FusedParams,
    ) -> Option<Self> {
        let targets = targets_vec(&contiguous(targets))?;
        let (weight, view_strides, (v, h)) = weight_geometry(weight, p.layout);
        assert_targets_in_range(&targets, v);
        Some(Self {
            hidden: contiguous(hidden),
            weight,
            bias: bias.map(contiguous),
            targets,
            view_strides,
            v,
            h,
        })
    }

    /// `(hidden, weight view, bias)` as `F` slices; `None` when the dtype is not `F`.
    fn slices<F: FusedFloat>(&self) -> Option<Slices<'_, F>> {
        let view = WeightView {
            data: weight_data::<F>(&self.weight)?,
            rs: self.view_strides.0,
            cs: self.view_strides.1,
        };
        let bias = match &self.bias {
            Some(b) => Some(b.as_slice::<F>()?),
            None => None,
        };
        Some((self.hidden.as_slice::<F>()?, view, bias))
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
    let x = Inputs::new(hidden, weight, bias, targets, p)?;
    let n = x.targets.len();
    macro_rules! run {
        ($f:ty) => {{
            let (hidden, view, bias) = x.slices::<$f>()?;
            let out = forward_typed::<$f>(hidden, x.h, &view, x.v, bias, &x.targets, p);
            TensorData::new(out, [n, OUT_COLS])
        }};
    }
    let out = match x.hidden.dtype() {
        DType::F32 => run!(f32),
        DType::F64 => run!(f64),
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
    let x = Inputs::new(hidden, weight, bias, targets, p)?;
    let (n, v, h) = (x.targets.len(), x.v, x.h);
    let dw_shape = match p.layout {
        LmHeadLayout::VocabMajor => Shape::new([v, h]),
        LmHeadLayout::HiddenMajor => Shape::new([h, v]),
    };
    let (saved, grad) = (contiguous(saved), contiguous(grad));
    macro_rules! run {
        ($f:ty) => {{
            let (hidden, view, bias) = x.slices::<$f>()?;
            let (saved, grad) = (saved.as_slice::<$f>()?, grad.as_slice::<$f>()?);
            let (dh, dw, db) =
                backward_typed::<$f>(hidden, h, &view, v, bias, &x.targets, saved, grad, p);
            Some((
                FlexTensor::from_data(TensorData::new(dh, Shape::new([n, h]))),
                FlexTensor::from_data(TensorData::new(dw, dw_shape.clone())),
                FlexTensor::from_data(TensorData::new(db, Shape::new([v]))),
            ))
        }};
    }
    match x.hidden.dtype() {
        DType::F32 => run!(f32),
        DType::F64 => run!(f64),
        _ => None,
    }
}
