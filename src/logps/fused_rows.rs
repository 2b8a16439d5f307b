//! The per-row kernels of the fused op's flex path, over one logits tile row: first maximum,
//! the exponential sums of the online logsumexp, and the row's gradient. Each is compiled three
//! times (AVX-512, AVX2 + FMA, portable) and picked at run time ([`super::cpu::simd`]).

use super::cpu::KernelFloat;

/// The float types of the fused kernel (f32, f64).
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

const LANES: usize = 16;

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

super::cpu::simd_dispatch! {
    pub(super) fn row_first_max<F: FusedFloat>(row: &[F]) -> (F, usize) => row_first_max_impl
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

super::cpu::simd_dispatch! {
    pub(super) fn row_sums<F: FusedFloat>(row: &[F], max: F, stats: bool) -> [F; 4] => row_sums_impl
}

/// Per-row constants of the backward pass.
pub(super) struct RowGrad<F> {
    pub(super) g_lp: F,
    pub(super) g_h: F,
    pub(super) lse: F,
    pub(super) mean_z: F,
    pub(super) inv_t: F,
    pub(super) cap: Option<F>,
    pub(super) scale: F,
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

super::cpu::simd_dispatch! {
    pub(super) fn grad_row<F: FusedFloat>(row: &mut [F], target: Option<usize>, k: &RowGrad<F>) => grad_row_impl
}
