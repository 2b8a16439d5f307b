//! Whitening with a given (global) mean and variance: the data-parallel form of
//! [`whiten`](super::whiten), finished from the step's summed
//! [`MomentParts`](crate::distributed::MomentParts).

use burn::tensor::Tensor;

use super::Whitening;
use crate::error::Error;

crate::error::panicking! {
    /// [`whiten`](super::whiten) with a given mean and (unbiased) variance, e.g. the global
    /// ones from [`MomentParts`](crate::distributed::MomentParts):
    /// `(x - mean) / sqrt(var + 1e-8)` (`+ mean` with `KeepMean`).
    ///
    /// Equals `whiten(x, Some(mask), mode)` on the concatenated batch up to torchtune's `1e-8`
    /// in the mean and Bessel denominators (relative difference about `1e-8 / count`).
    ///
    /// # Shapes
    /// - x: `[B, T]` -> `[B, T]`
    pub fn whiten_with(x: Tensor<2>, mean: f64, var: f64, mode: Whitening) -> Tensor<2> = try_whiten_with;
}

/// Non-panicking form of [`whiten_with`]: `mean` not finite, or `var` not finite and `>= 0`
/// ([`Error::Config`] naming it; a negative variance would give NaN).
pub fn try_whiten_with(
    x: Tensor<2>,
    mean: f64,
    var: f64,
    mode: Whitening,
) -> crate::Result<Tensor<2>> {
    if !mean.is_finite() {
        return Err(Error::config("mean", "must be finite", mean));
    }
    if !(var.is_finite() && var >= 0.0) {
        return Err(Error::config("var", "must be finite and >= 0", var));
    }
    Ok(whiten_with_unchecked(x, mean, var, mode))
}

fn whiten_with_unchecked(x: Tensor<2>, mean: f64, var: f64, mode: Whitening) -> Tensor<2> {
    if mode == Whitening::None {
        return x;
    }
    let scale = 1.0 / (var + 1e-8).sqrt();
    let whitened = x.sub_scalar(mean).mul_scalar(scale);
    match mode {
        Whitening::KeepMean => whitened.add_scalar(mean),
        _ => whitened,
    }
}
