//! The importance ratio `π_θ / π_old = exp(log_ratio)`, bounded so that finite log-probs never
//! give an infinite ratio (and a NaN gradient).
//!
//! PPO, GRPO and RLOO clip the ratio, so the loss *value* is right even when `exp(log_ratio)`
//! overflows (above ~88.7 in f32, ~11.1 in f16); but the unclipped branch still sits in the
//! graph and its backward multiplies a zero upstream gradient by `exp(log_ratio) = ∞`: NaN.
//! One such token poisons the whole optimizer step. Every ratio in the crate is therefore
//! computed here as
#![cfg_attr(
    doc,
    doc = r#"$$r = \exp\big(\operatorname{clamp}(\log\pi_\theta - \log\pi_{\text{old}},\; -L,\; L)\big),\quad L = 20$$"#
)]
#![cfg_attr(not(doc), doc = "`r = exp(clamp(logp - old_logp, -20, 20))`")]
//!
//! (the bound verl uses before its `exp`). Inside `[-20, 20]` the value and gradient are
//! exactly those of `exp(log_ratio)`; outside, the ratio saturates at `e^{±20}` (about
//! `4.9e8` / `2.1e-9`, far beyond any clip range) with zero gradient. Half-precision log-probs
//! are upcast to f32 before (`e^{20}` is not representable in f16).

use burn::tensor::Tensor;

/// `|log π_θ − log π_old|` above which the importance ratio saturates (verl's bound).
pub const LOG_RATIO_LIMIT: f64 = 20.0;

/// The bounded log-ratio `clamp(log_ratio, -20, 20)`: exact inside, zero gradient outside.
pub(crate) fn bounded_log_ratio<const D: usize>(log_ratio: Tensor<D>) -> Tensor<D> {
    log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
}

/// The importance ratio `exp(clamp(log_ratio, -20, 20))`.
pub(crate) fn importance_ratio<const D: usize>(log_ratio: Tensor<D>) -> Tensor<D> {
    bounded_log_ratio(log_ratio).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// A clipped surrogate whose unclipped branch overflows in f32 keeps a finite gradient,
    /// and inside the bound the gradient is exactly `exp(x)` (closed form).
    #[test]
    fn ratio_gradient_is_finite_and_exact_inside_the_bound() {
        let device = Device::flex().autodiff();
        let xs = [-100.0f32, -3.0, 0.5, 19.0, 95.0];
        let x = Tensor::<1>::from_data(TensorData::from(xs), &device).require_grad();
        let r = importance_ratio(x.clone());
        // -min(r * A, clip(r) * A) with A = 1: the clipped branch wins for large r.
        let loss = (r.clone().min_pair(r.clamp(0.8, 1.2))).neg().sum();
        let grads = loss.backward();
        let g: Vec<f32> = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        // x = -100 and x = -3: r < 0.8, the unclipped branch wins: d(-r)/dx = -r.
        assert_eq!(g[0], 0.0, "saturated below the bound");
        assert!((g[1] - (-(-3.0f32).exp())).abs() < 1e-6, "{}", g[1]);
        assert_eq!(g[4], 0.0);
    }
}
