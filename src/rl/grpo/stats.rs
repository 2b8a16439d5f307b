//! The masked statistics GRPO's metrics and masks read: TRL's `global_masked_mean` (one
//! process), the per-sequence min / max of the clip metrics and `torch.quantile` of the
//! top-entropy mask.

use burn::tensor::{Bool, Tensor};

use crate::reduce::{MeanDenominator, masked_mean_with, masked_row_mean};

/// Mean over valid tokens (or over rows for `[B, 1]` values), clamped count: TRL's
/// `global_masked_mean` on one process.
pub(super) fn global_masked_mean(x: Tensor<2>, mask: &Tensor<2, Bool>) -> Tensor<1> {
    let [b, c] = x.dims();
    if c == 1 && mask.dims()[1] != 1 {
        return x.sum().mul_scalar(1.0 / b as f64);
    }
    masked_mean_with(
        x.expand(mask.dims()),
        mask.clone(),
        None,
        MeanDenominator::AtLeastOne,
    )
}

/// Per-sequence means reduced by min or max, leaving empty rows out (TRL: NaN means, then
/// `nanmin` / `nanmax`); 0 when every row is empty.
pub(super) fn seq_mean_extreme(x: Tensor<2>, mask: &Tensor<2, Bool>, max: bool) -> Tensor<1> {
    let [b, c] = x.dims();
    let (per_seq, empty) = if c == 1 && mask.dims()[1] != 1 {
        let x = x.reshape([b]);
        let empty = x.clone().is_nan();
        (x, empty)
    } else {
        let x = x.expand(mask.dims());
        let empty = mask.clone().int().sum_dim(1).reshape([b]).equal_elem(0);
        (masked_row_mean(x, mask.clone()), empty)
    };
    let extreme = if max {
        per_seq.mask_fill(empty, f64::NEG_INFINITY).max()
    } else {
        per_seq.mask_fill(empty, f64::INFINITY).min()
    };
    // No sequence with a valid token: 0, not the +-inf of an empty min/max.
    let empty = extreme.clone().is_inf();
    extreme.mask_fill(empty, 0.0)
}

/// `torch.quantile(values, q)` (linear interpolation) of the valid entries; `None` if empty.
pub(super) fn masked_quantile(
    values: Tensor<2>,
    mask: Tensor<2, Bool>,
    q: f64,
) -> Option<Tensor<1>> {
    let selected = values.mask_select(mask);
    let n = selected.dims()[0];
    if n == 0 {
        return None;
    }
    let sorted = selected.sort(0);
    let pos = q * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let a = sorted.clone().narrow(0, lo, 1);
    let b = sorted.narrow(0, hi, 1);
    Some(a.clone() + (b - a).mul_scalar(pos - lo as f64))
}
