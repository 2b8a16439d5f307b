//! Masked mean / variance and whitening, with torchtune's formulas.
//!
#![cfg_attr(
    doc,
    doc = r#"$$\bar x = \frac{\sum_i m_i x_i}{\sum_i m_i + 10^{-8}},\qquad w = \frac{x - \bar x}{\sqrt{\sigma^2 + 10^{-8}}}\;(+\bar x \text{ with KeepMean})$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`mean = sum(x * m) / (sum(m) + 1e-8)`, `w = (x - mean) / sqrt(var + 1e-8)` (`+ mean` with KeepMean)"
)]
//!
//! `σ²` is the Bessel-corrected [`masked_var`] of the centered values (`n = Σm + 1e-8`).
//! Shapes: `x`, `mask` `[B, T]` (any rank for the mean / variance) -> `[B, T]` (`[1]` for the
//! statistics). The mean is [`crate::reduce::masked_mean_eps`] (the crate's one masked-mean
//! family and empty-group rule: the table in [`crate::reduce`]): an all-false mask gives mean 0.
//!
//! Anchor: torchtune 0.6.1 `torchtune.rlhf.rewards.masked_mean`, `masked_var`, `whiten`
//! (TRL's `masked_whiten` is [`Whitening::ZeroMean`]). Why advantages are normalized:
//! Andrychowicz et al., *What Matters in On-Policy RL*, <https://arxiv.org/abs/2006.05990>.
//!
//! Golden value: `fixtures/gae/whiten_mask.json` (torchtune `whiten(x, mask, shift_mean=True)`,
//! float64) gives `whitened[0][0] = 0.6050044373552459`; `fixtures/gae/masked_all_mean.json`
//! (`masked_mean(x, mask, dim=None)`) gives `1.79308135828423`.

use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use super::TORCHTUNE_EPS;
use crate::error::{Error, check_same_shape};
use crate::reduce::{mask_like, masked_mean_eps};

crate::error::panicking! {
    /// torchtune's `masked_mean(x, mask, dim)`: `sum(x * mask) / (sum(mask) + 1e-8)`, over all
    /// elements (`dim = None`, output `[1]`) or along `dim` (output: the other dims, flattened).
    pub fn masked_mean[const D: usize](
        x: Tensor<D>,
        mask: Tensor<D, Bool>,
        dim: Option<usize>,
    ) -> Tensor<1> = try_masked_mean;
}

/// Non-panicking form of [`masked_mean`]: a mask of another shape ([`Error::Shape`] naming
/// `mask`), `dim >= D` ([`Error::Config`] naming `dim`); in checked mode a non-finite valid
/// element of `x` ([`Error::NonFinite`]).
pub fn try_masked_mean<const D: usize>(
    x: Tensor<D>,
    mask: Tensor<D, Bool>,
    dim: Option<usize>,
) -> crate::Result<Tensor<1>> {
    let mask = crate::reduce::canonical_mask(mask);
    check_same_shape("mask", &mask.dims(), &x.dims(), "x")?;
    if let Some(d) = dim
        && d >= D
    {
        return Err(Error::config(
            "dim",
            format!("must be < {D} (the rank of x)"),
            d,
        ));
    }
    crate::error::check_finite_masked(&x, &mask, "x")?;
    Ok(masked_mean_eps(x, mask, dim, TORCHTUNE_EPS))
}

crate::error::panicking! {
    /// torchtune's `masked_var(centered_values, mask, unbiased)`: `masked_mean(x^2)`, times the
    /// Bessel factor `n / (n - 1)` with `n = sum(mask) + 1e-8` when `unbiased`. The input must
    /// already be centered. Output `[1]`.
    pub fn masked_var[const D: usize](
        centered: Tensor<D>,
        mask: Tensor<D, Bool>,
        unbiased: bool,
    ) -> Tensor<1> = try_masked_var;
}

/// Non-panicking form of [`masked_var`]: a mask of another shape ([`Error::Shape`] naming
/// `mask`); in checked mode a non-finite valid element ([`Error::NonFinite`]).
pub fn try_masked_var<const D: usize>(
    centered: Tensor<D>,
    mask: Tensor<D, Bool>,
    unbiased: bool,
) -> crate::Result<Tensor<1>> {
    let mask = crate::reduce::canonical_mask(mask);
    check_same_shape("mask", &mask.dims(), &centered.dims(), "centered")?;
    crate::error::check_finite_masked(&centered, &mask, "centered")?;
    Ok(masked_var_unchecked(centered, mask, unbiased))
}

pub(super) fn masked_var_unchecked<const D: usize>(
    centered: Tensor<D>,
    mask: Tensor<D, Bool>,
    unbiased: bool,
) -> Tensor<1> {
    let n = mask_like(&centered, mask.clone())
        .sum()
        .add_scalar(TORCHTUNE_EPS);
    let var = masked_mean_eps(centered.square(), mask, None, TORCHTUNE_EPS);
    if unbiased {
        // One valid element: n - 1 = 1e-8 in f64 but exactly 0 in f32 (0 * inf = NaN); use
        // torchtune's f64 value 1e-8 there.
        let denom = n.clone().sub_scalar(1.0);
        let denom = denom
            .clone()
            .mask_fill(denom.equal_elem(0.0), TORCHTUNE_EPS);
        var * n / denom
    } else {
        var
    }
}

/// Whether whitening keeps the mean, removes it, or is skipped.
///
/// torchtune and TRL use the same flag name with opposite meanings: torchtune's
/// `whiten(x, shift_mean=True)` **adds the mean back** (variance-normalized, mean kept:
/// [`KeepMean`](Self::KeepMean)); TRL's `masked_whiten(x, shift_mean=True)` returns zero-mean
/// values ([`ZeroMean`](Self::ZeroMean)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Whitening {
    /// `(x - mean) / sqrt(var + 1e-8)`: zero mean, unit variance (TRL PPO, OpenRLHF).
    ZeroMean,
    /// `(x - mean) / sqrt(var + 1e-8) + mean` (torchtune PPO's `whiten(shift_mean=True)`).
    KeepMean,
    /// No whitening.
    None,
}

crate::error::panicking! {
    /// Masked whitening with torchtune's formulas.
    ///
    #[cfg_attr(
        doc,
        doc = r#"$$w = \frac{x - \mu}{\sqrt{\sigma^2 + 10^{-8}}}\;(+\mu \text{ with KeepMean})$$"#
    )]
    #[cfg_attr(
        not(doc),
        doc = "`w = (x - mu) / sqrt(var + 1e-8)` (`+ mu` with KeepMean)"
    )]
    ///
    /// With a mask: `mu` = [`masked_mean`], `var` = unbiased [`masked_var`] of `x - mu` (Bessel
    /// factor with `n + 1e-8`). Without: the plain mean and unbiased variance over all elements
    /// (a single element has variance 0 and whitens to 0).
    /// Masked-out positions are whitened too (not zeroed); zero them yourself if needed.
    ///
    /// # Shapes
    /// - x: `[B, T]`, mask: `[B, T]` or none -> `[B, T]`
    pub fn whiten(
        x: Tensor<2>,
        mask: Option<Tensor<2, Bool>>,
        mode: Whitening,
    ) -> Tensor<2> = try_whiten;
}

/// Non-panicking form of [`whiten`]: a mask of another shape ([`Error::Shape`] naming `mask`);
/// in checked mode a non-finite valid element of `x` ([`Error::NonFinite`]).
pub fn try_whiten(
    x: Tensor<2>,
    mask: Option<Tensor<2, Bool>>,
    mode: Whitening,
) -> crate::Result<Tensor<2>> {
    let mask = mask.map(crate::reduce::canonical_mask);
    if let Some(m) = &mask {
        check_same_shape("mask", &m.dims(), &x.dims(), "x")?;
        crate::error::check_finite_masked(&x, m, "x")?;
    } else {
        crate::error::check_finite(&x, "x")?;
    }
    Ok(whiten_unchecked(x, mask, mode))
}

pub(crate) fn whiten_unchecked(
    x: Tensor<2>,
    mask: Option<Tensor<2, Bool>>,
    mode: Whitening,
) -> Tensor<2> {
    if mode == Whitening::None {
        return x;
    }
    let (mean, var) = match mask {
        Some(mask) => {
            let mean = masked_mean_eps(x.clone(), mask.clone(), None, TORCHTUNE_EPS);
            let centered = x.clone() - mean.clone().unsqueeze::<2>();
            (mean, masked_var_unchecked(centered, mask, true))
        }
        None => {
            let n = x.dims().iter().product::<usize>() as f64;
            let mean = x.clone().mean();
            let centered = x.clone() - mean.clone().unsqueeze::<2>();
            // Bessel factor with n - 1 clamped to >= 1: a single element has variance 0
            // (not 0 / 0 = NaN), so it whitens to 0.
            (
                mean,
                centered.square().sum().mul_scalar(1.0 / (n - 1.0).max(1.0)),
            )
        }
    };
    let mean2 = mean.unsqueeze::<2>();
    let whitened = (x - mean2.clone())
        * var
            .add_scalar(TORCHTUNE_EPS)
            .sqrt()
            .recip()
            .unsqueeze::<2>();
    match mode {
        Whitening::KeepMean => whitened + mean2,
        _ => whitened,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, t, v};
    use burn::tensor::Device;

    #[test]
    fn masked_mean_and_whiten_match_closed_form() {
        let device = Device::flex();
        let x = t(&[1.0, 2.0, 3.0, 4.0], &device).reshape([2, 2]);
        let mask = t(&[1.0, 1.0, 1.0, 0.0], &device)
            .reshape([2, 2])
            .equal_elem(1.0);
        // (1 + 2 + 3) / (3 + 1e-8)
        assert_close(
            &v(masked_mean(x.clone(), mask.clone(), None)),
            &[6.0 / (3.0 + 1e-8)],
        );
        // No mask: mean 2.5, unbiased var 5/3; w = (x - 2.5) / sqrt(5/3 + 1e-8).
        let w = whiten(x, None, Whitening::ZeroMean);
        let s = (5.0f64 / 3.0 + 1e-8).sqrt();
        assert_close(&v(w), &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]);
    }
}
