//! Plain-slice CPU kernels behind the Flex implementation of the token log-prob op.
//!
//! Rows are independent: the forward pass reads each logits row twice (max, then the
//! exponential sum, while the row is still in cache) and writes two numbers; the backward pass
//! reads each row once and writes its gradient row. `f32` uses a branch-free exponential that
//! the compiler vectorizes (Cephes' `expf` polynomial, max error about 2 ulp on the reduced
//! range); `f64` uses the standard library's `exp` (it is the precision path, used for parity).

use rayon::prelude::*;

/// Rows per parallel task; large enough to amortize scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 16;
/// Independent accumulators, so that reductions vectorize without reassociation.
const LANES: usize = 16;

/// A float type the kernels run on.
pub(crate) trait KernelFloat: Copy + Send + Sync + PartialOrd + 'static {
    const ZERO: Self;
    const NEG_INFINITY: Self;
    fn from_f64(x: f64) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
}

impl KernelFloat for f32 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        if self > o { self } else { o }
    }
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f32::ln(self)
    }
}

impl KernelFloat for f64 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        if self > o { self } else { o }
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f64::ln(self)
    }
}

/// Branch-free `exp` for `f32` (Cephes `expf`): `x = n ln2 + r`, `|r| <= ln2 / 2`, degree-6
/// polynomial for `e^r`, `2^n` assembled from the exponent bits. Inputs are clamped to
/// `[-87, 88]`, so the result is always a normal float (`exp(-87)` is about 1.6e-38, far below
/// anything that changes an f32 sum of terms where the largest is 1).
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients, as published
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer and leaves that integer in the
    // mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let n_bits = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e_r = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n_bits + 127) as u32) << 23);
    e_r * two_n
}

#[inline(always)]
fn row_max<F: KernelFloat>(row: &[F]) -> F {
    let mut acc = [F::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(chunk[i]);
        }
    }
    let mut m = F::NEG_INFINITY;
    for &a in acc.iter().chain(tail) {
        m = m.max(a);
    }
    m
}

/// `sum_v exp(scale * (x_v - max))`
#[inline(always)]
fn row_sum_exp<F: KernelFloat>(row: &[F], max: F, scale: F) -> F {
    let mut acc = [F::ZERO; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].add(scale.mul(chunk[i].sub(max)).exp());
        }
    }
    let mut s = F::ZERO;
    for &x in tail {
        s = s.add(scale.mul(x.sub(max)).exp());
    }
    for a in acc {
        s = s.add(a);
    }
    s
}

/// `grad_v = -g * scale * exp(scale * x_v - lse)`, plus `g * scale` at the target.
#[inline(always)]
fn row_grad<F: KernelFloat>(row: &[F], out: &mut [F], lse: F, gs: F, scale: F, target: usize) {
    let neg_gs = F::ZERO.sub(gs);
    for (o, &x) in out.iter_mut().zip(row) {
        *o = neg_gs.mul(scale.mul(x).sub(lse).exp());
    }
    out[target] = out[target].add(gs);
}

/// Same as [`row_grad`], overwriting the logits row itself.
#[inline(always)]
fn row_grad_in_place<F: KernelFloat>(row: &mut [F], lse: F, gs: F, scale: F, target: usize) {
    let neg_gs = F::ZERO.sub(gs);
    for x in row.iter_mut() {
        *x = neg_gs.mul(scale.mul(*x).sub(lse).exp());
    }
    row[target] = row[target].add(gs);
}

#[inline(always)]
fn forward_impl<F: KernelFloat>(
    logits: &[F],
    targets: &[i64],
    vocab: usize,
    scale: f64,
    logps: &mut [F],
    lse: &mut [F],
) {
    let scale_f = F::from_f64(scale);
    logps
        .par_chunks_mut(ROWS_PER_TASK)
        .zip(lse.par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (lp_out, lse_out))| {
            let first = task * ROWS_PER_TASK;
            for (k, (lp, l)) in lp_out.iter_mut().zip(lse_out.iter_mut()).enumerate() {
                let n = first + k;
                let target = targets[n];
                if target < 0 {
                    *lp = F::ZERO;
                    *l = F::ZERO;
                    continue;
                }
                let row = &logits[n * vocab..(n + 1) * vocab];
                let max = row_max(row);
                let sum = row_sum_exp(row, max, scale_f);
                let lse_row = scale_f.mul(max).add(sum.ln());
                *l = lse_row;
                *lp = scale_f.mul(row[target as usize]).sub(lse_row);
            }
        });
}

/// Which compiled variant of the row kernels this CPU runs (AVX-512, AVX2 + FMA, portable),
/// detected once.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Simd {
    Avx512,
    Avx2,
    Portable,
}

pub(crate) fn simd() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if avx2 {
                return Simd::Avx2;
            }
        }
        Simd::Portable
    })
}

/// Defines `$name`, which runs `$imp` compiled for the best instruction set this CPU has
/// (AVX-512, AVX2 + FMA, or portable; [`simd`] detects it once). `$imp` must be
/// `#[inline(always)]` so that each variant gets its own code.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$F:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:ident) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$F: $bound>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512<$F: $bound>($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2<$F: $bound>($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                match $crate::logps::cpu::simd() {
                    // SAFETY: the CPU has the features each variant was compiled for.
                    $crate::logps::cpu::Simd::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::logps::cpu::Simd::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::logps::cpu::Simd::Portable => {}
                }
            }
            $imp($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

simd_dispatch! {
    fn forward_rows<F: KernelFloat>(
        logits: &[F],
        targets: &[i64],
        vocab: usize,
        scale: f64,
        logps: &mut [F],
        lse: &mut [F],
    ) => forward_impl
}

simd_dispatch! {
    fn backward_rows<F: KernelFloat>(
        logits: Option<&[F]>,
        out: &mut [F],
        targets: &[i64],
        lse: &[F],
        grad: &[F],
        vocab: usize,
        scale: f64,
    ) => backward_impl
}

/// Forward pass over `N = targets.len()` rows of width `vocab`: writes the log-prob of each
/// row's target under `softmax(scale * row)` and the row's `logsumexp(scale * row)`. Rows with
/// a negative target get 0 for both.
pub(crate) fn forward<F: KernelFloat>(
    logits: &[F],
    targets: &[i64],
    vocab: usize,
    scale: f64,
) -> (Vec<F>, Vec<F>) {
    let n = targets.len();
    debug_assert_eq!(logits.len(), n * vocab);
    let mut logps = vec![F::ZERO; n];
    let mut lse = vec![F::ZERO; n];
    forward_rows(logits, targets, vocab, scale, &mut logps, &mut lse);
    (logps, lse)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_impl<F: KernelFloat>(
    logits: Option<&[F]>,
    out: &mut [F],
    targets: &[i64],
    lse: &[F],
    grad: &[F],
    vocab: usize,
    scale: f64,
) {
    let scale_f = F::from_f64(scale);
    out.par_chunks_mut(ROWS_PER_TASK * vocab)
        .enumerate()
        .for_each(|(task, block)| {
            let first = task * ROWS_PER_TASK;
            for (k, out_row) in block.chunks_exact_mut(vocab).enumerate() {
                let n = first + k;
                let target = targets[n];
                if target < 0 {
                    out_row.fill(F::ZERO);
                    continue;
                }
                let gs = grad[n].mul(scale_f);
                match logits {
                    Some(all) => {
                        let row = &all[n * vocab..(n + 1) * vocab];
                        row_grad(row, out_row, lse[n], gs, scale_f, target as usize);
                    }
                    None => row_grad_in_place(out_row, lse[n], gs, scale_f, target as usize),
                }
            }
        });
}

/// Backward pass: `d logits = g * scale * (onehot(target) - softmax(scale * logits))` per row,
/// zero for rows with a negative target. With `logits = None`, `out` holds the logits on entry
/// and is overwritten with their gradient (no allocation).
pub(crate) fn backward<F: KernelFloat>(
    logits: Option<&[F]>,
    out: &mut [F],
    targets: &[i64],
    lse: &[F],
    grad: &[F],
    vocab: usize,
    scale: f64,
) {
    backward_rows(logits, out, targets, lse, grad, vocab, scale)
}

/// A zeroed buffer of `len` elements for a large gradient. The memory comes from the
/// allocator's zeroed allocation (for large sizes, fresh pages that the OS zeroes when first
/// touched: nothing is written here), and on Linux it is marked for transparent huge pages
/// (`madvise(MADV_HUGEPAGE)`, honoured where the system's THP mode is `madvise` or `always`)
/// before it is touched, so writing a logits-sized gradient takes 2 MiB page faults instead of
/// 4 KiB ones (a 262 MB gradient: ~130 faults instead of ~64 000).
pub(crate) fn zeroed_buffer<F: KernelFloat>(len: usize) -> Vec<F> {
    let layout = std::alloc::Layout::array::<F>(len).expect("buffer size overflows");
    if layout.size() == 0 {
        return vec![F::ZERO; len];
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<F>();
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = ptr as usize;
        let aligned = start.next_multiple_of(HUGE);
        let end = (start + layout.size()) / HUGE * HUGE;
        if layout.size() >= 4 * HUGE && end > aligned {
            // SAFETY: the range lies inside this allocation; MADV_HUGEPAGE is advice only (it
            // changes neither the contents nor the mapping's validity).
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    // SAFETY: allocated by the global allocator with `Layout::array::<F>(len)`, zeroed (all-zero
    // bits are `F::ZERO` for f32 / f64), `len` elements initialized, capacity `len`.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_matches_std_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.013;
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "worst relative error {worst}"
        );
    }
}
