//! Numerically stable scalar functions the preference losses are built from.
//!
//! Every function here is finite (value **and** gradient) for inputs of any magnitude where
//! the mathematical function is finite, and has the exact derivative at 0 (no `abs`/`clamp`
//! kink: burn's `abs` has derivative 0 at 0, which would make `log_sigmoid'(0)` wrong).
//!
//! Note for this crate's losses: burn 0.22.1's autodiff `div_scalar` backward loses precision
//! in f64 (the gradient of `x / 0.874` is off by ~4e-8 relative: the reciprocal goes through
//! f32), so the losses multiply by the reciprocal (`mul_scalar(1.0 / s)`) instead.

use burn::tensor::Tensor;

/// `log σ(x) = -softplus(-x)`, stable for `|x|` up to the dtype's range.
///
#[cfg_attr(
    doc,
    doc = r#"$$\log\sigma(x) = \begin{cases} -\log(1 + e^{-x}) & x \ge 0 \\ x - \log(1 + e^{x}) & x < 0 \end{cases}$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`log_sigmoid(x) = -log1p(exp(-x))` for `x >= 0`, `x - log1p(exp(x))` for `x < 0`"
)]
///
/// Each branch only ever sees inputs of its own sign (the other positions are replaced by 0
/// before `exp`), so neither overflows and the discarded branch cannot inject `0 * inf = NaN`
/// into the backward pass. The derivative is `σ(-x)`, exact at 0.
pub(crate) fn log_sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let negative = x.clone().lower_elem(0.0);
    let x_pos = x.clone().mask_fill(negative.clone(), 0.0);
    let x_neg = x.mask_fill(negative.clone().bool_not(), 0.0);
    let pos_branch = x_pos.neg().exp().log1p().neg();
    let neg_branch = x_neg.clone() - x_neg.exp().log1p();
    pos_branch.mask_where(negative, neg_branch)
}

/// `σ(x) = exp(log σ(x))`: stable, and `1 - σ(x)` should be written `sigmoid(-x)`.
pub(crate) fn sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    log_sigmoid(x).exp()
}

/// `log(1 - exp(x))` for `x < 0` (a log-probability), without catastrophic cancellation
/// (TRL PR 4763 replaced the naive `log1p(-exp(x))`, which is `-inf`/NaN near 0).
///
#[cfg_attr(
    doc,
    doc = r#"$$\operatorname{log1mexp}(x) = \begin{cases} \log(1 - e^{x}) & x < -\ln 2 \\ \log(-\operatorname{expm1}(x)) & x \ge -\ln 2 \end{cases}$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`log1mexp(x) = log1p(-exp(x))` for `x < -ln 2`, `log(-expm1(x))` otherwise"
)]
///
/// burn has no `expm1`, so the near branch uses Kahan's formula
/// `expm1(x) = (u - 1) x / ln u`, `u = e^x` (exact to a few ulps; `x` itself when `u == 1`).
/// The gradient is set from its closed form `d/dx = -exp(x - log1mexp(x))` (first order only),
/// so it is as accurate as the value. `x = 0` gives `-inf` (as the math does); `x > 0` is
/// outside the domain (NaN).
pub(crate) fn log1mexp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let threshold = -std::f64::consts::LN_2;
    let constant = x.clone().detach();
    let far = constant.clone().lower_elem(threshold);
    // far branch: x < -ln 2 (its complement positions are replaced by a far value)
    let x_far = constant.clone().mask_fill(far.clone().bool_not(), -1.0);
    let far_value = x_far.exp().neg().log1p();
    // near branch: -ln 2 <= x (its complement positions are replaced by a near value)
    let x_near = constant.clone().mask_fill(far.clone(), -0.5);
    let u = x_near.clone().exp();
    let u_is_one = u.clone().equal_elem(1.0);
    let log_u = u.clone().log().mask_fill(u_is_one.clone(), 1.0);
    let kahan = (u.sub_scalar(1.0) * x_near.clone() / log_u).mask_where(u_is_one, x_near);
    let near_value = kahan.neg().log();
    let value = near_value.mask_where(far, far_value);
    let slope = (constant.clone() - value.clone()).exp().neg();
    value + (x - constant) * slope
}

/// `max(0, x)` with derivative 0 at 0 (PyTorch's `relu` convention).
pub(crate) fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let non_positive = x.clone().lower_equal_elem(0.0);
    x.mask_fill(non_positive, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::v;
    use burn::tensor::{Device, FloatDType, TensorData};

    fn t(values: Vec<f64>, device: &Device) -> Tensor<1> {
        let n = values.len();
        Tensor::from_data(
            TensorData::new(values, [n]),
            (device, FloatDType::F64.into()),
        )
    }

    #[test]
    fn log_sigmoid_values_and_gradient_at_extremes_and_zero() {
        let device = Device::flex().autodiff();
        let xs = vec![-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4];
        let x = t(xs.clone(), &device).require_grad();
        let y = log_sigmoid(x.clone());
        let grads = y.clone().sum().backward();
        let got = v(y);
        let got_grad = v(x.grad(&grads).unwrap());
        for (i, &xi) in xs.iter().enumerate() {
            // closed forms: log σ(x) = -ln(1 + e^{-x}); d/dx = σ(-x) = 1 / (1 + e^{x})
            let want = if xi >= 0.0 {
                -(-xi).exp().ln_1p()
            } else {
                xi - xi.exp().ln_1p()
            };
            let want_grad = 1.0 / (1.0 + xi.exp());
            assert!(
                (got[i] - want).abs() <= 1e-15 * want.abs().max(1.0),
                "x={xi}: {} vs {want}",
                got[i]
            );
            assert!(
                (got_grad[i] - want_grad).abs() <= 1e-15,
                "x={xi}: grad {} vs {want_grad}",
                got_grad[i]
            );
        }
    }

    #[test]
    fn log1mexp_is_accurate_near_zero_and_far_away() {
        let device = Device::flex().autodiff();
        let xs = vec![-50.0, -2.0, -0.7, -0.5, -1e-3, -1e-9];
        let x = t(xs.clone(), &device).require_grad();
        let y = log1mexp(x.clone());
        let grads = y.clone().sum().backward();
        let got = v(y);
        let got_grad = v(x.grad(&grads).unwrap());
        for (i, &xi) in xs.iter().enumerate() {
            let want = if xi < -std::f64::consts::LN_2 {
                (-(xi.exp())).ln_1p()
            } else {
                (-(xi.exp_m1())).ln()
            };
            // d/dx log(1 - e^x) = -e^x / (1 - e^x) = -1 / expm1(-x)
            let want_grad = -1.0 / (-xi).exp_m1();
            assert!(
                (got[i] - want).abs() <= 1e-14 * want.abs().max(1.0),
                "x={xi}: {} vs {want}",
                got[i]
            );
            assert!(
                (got_grad[i] - want_grad).abs() <= 1e-13 * want_grad.abs().max(1.0),
                "x={xi}: grad {} vs {want_grad}",
                got_grad[i]
            );
        }
    }
}
