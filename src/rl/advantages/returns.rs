//! Discounted reverse scans: the discounted reverse cumulative sum and REINFORCE returns.
//!
#![cfg_attr(
    doc,
    doc = r#"$$y_t = \sum_{k \ge t} c^{\,k-t} x_k \qquad (y_t = x_t + c\, y_{t+1}),\qquad G_t = \sum_{k \ge t} \gamma^{k-t} m_k r_k$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`y_t = sum_{k >= t} c^(k - t) x_k` (`y_t = x_t + c y_{t+1}`), `G_t = sum_{k >= t} gamma^(k - t) m_k r_k`"
)]
//!
//! Shapes: `x`, `rewards`, `mask` `[B, T]` -> `[B, T]`. Computed as a blocked upper-triangular
//! Toeplitz matmul (blocks of 128 columns): one host loop over `ceil(T / 128)` blocks, never
//! over elements.
//!
//! Anchor: the reverse loop of torchtune 0.6.1 `torchtune.rlhf.rewards.estimate_advantages`
//! (the same scan with `c = γλ`; with `γ = λ = 1` its returns are exactly this sum) and
//! OpenRLHF's `get_cumulative_returns`. Paper: Schulman et al., *High-Dimensional Continuous
//! Control Using Generalized Advantage Estimation*, <https://arxiv.org/abs/1506.02438>.
//!
//! Golden value: `fixtures/gae/gae_g1_l1_mask.json` (torchtune
//! `estimate_advantages(values, rewards, gamma=1, lmbda=1, masks)`) has
//! `returns[0][0] = 0.02389018548782923`, the undiscounted sum of row 0's rewards, which
//! `discounted_reverse_cumsum(rewards, 1.0)[0][0]` reproduces.

use burn::tensor::{Bool, Tensor};

use super::super::constant_like;
use super::SCAN_BLOCK;
use crate::error::{check_in_closed, check_same_shape};
use crate::reduce::zero_masked;

crate::error::panicking! {
    /// Discounted reverse cumulative sum along dim 1:
    #[cfg_attr(
        doc,
        doc = r#"$$y_t = \sum_{k \ge t} c^{\,k-t} x_k \qquad (y_t = x_t + c\, y_{t+1})$$"#
    )]
    #[cfg_attr(
        not(doc),
        doc = "`y_t = sum_{k >= t} c^(k - t) x_k` (`y_t = x_t + c y_{t+1}`)"
    )]
    ///
    /// Computed as a blocked upper-triangular Toeplitz matmul (blocks of 128 columns, one small
    /// host loop over blocks carrying `y` at each block's start), so cost is `O(B T 128)` and there
    /// is no per-element host loop. `discount` must be in `[0, 1]`.
    ///
    /// # Shapes
    /// - x: `[B, T]` -> `[B, T]`
    pub fn discounted_reverse_cumsum(
        x: Tensor<2>,
        discount: f64,
    ) -> Tensor<2> = try_discounted_reverse_cumsum;
}

/// Non-panicking form of [`discounted_reverse_cumsum`]: `discount` outside `[0, 1]`
/// ([`Error::Config`](crate::Error::Config)); in checked mode a non-finite `x` ([`Error::NonFinite`](crate::Error::NonFinite)).
pub fn try_discounted_reverse_cumsum(x: Tensor<2>, discount: f64) -> crate::Result<Tensor<2>> {
    check_in_closed("discount", discount, 0.0, 1.0)?;
    crate::error::check_finite(&x, "x")?;
    Ok(reverse_cumsum_unchecked(x, discount))
}

pub(super) fn reverse_cumsum_unchecked(x: Tensor<2>, discount: f64) -> Tensor<2> {
    let [b, t] = x.dims();
    if t == 0 {
        return x;
    }
    let block = t.min(SCAN_BLOCK);
    // Transposed Toeplitz block: mt[j][i] = c^(j - i) for j >= i, else 0.
    let toeplitz = |k: usize| -> (Tensor<2>, Tensor<2>) {
        let mut m = vec![0.0; k * k];
        for j in 0..k {
            for i in 0..=j {
                m[j * k + i] = discount.powi((j - i) as i32);
            }
        }
        // Carry weights: w[i] = c^(k - i), multiplies y at the next block's first position.
        let w: Vec<f64> = (0..k).map(|i| discount.powi((k - i) as i32)).collect();
        (constant_like(&x, m, [k, k]), constant_like(&x, w, [1, k]))
    };
    let full = toeplitz(block);
    let mut blocks = Vec::with_capacity(t.div_ceil(block));
    let mut carry: Option<Tensor<2>> = None; // [B, 1]: y at the first position of the next block
    let mut end = t;
    while end > 0 {
        let start = end.saturating_sub(block);
        let k = end - start;
        let (mt, w) = if k == block {
            full.clone()
        } else {
            toeplitz(k)
        };
        let xb = x.clone().slice([0..b, start..end]);
        let mut yb = xb.matmul(mt);
        if let Some(c) = carry {
            yb = yb + c * w;
        }
        carry = Some(yb.clone().slice([0..b, 0..1]));
        blocks.push(yb);
        end = start;
    }
    blocks.reverse();
    Tensor::cat(blocks, 1)
}

crate::error::panicking! {
    /// REINFORCE returns `G_t = sum_{k >= t} gamma^(k - t) r_k` over valid positions (rewards at
    /// masked-out positions count 0).
    ///
    /// # Shapes
    /// - rewards, mask: `[B, T]` -> `[B, T]` (0 where the mask is false)
    pub fn discounted_returns(
        rewards: Tensor<2>,
        mask: Tensor<2, Bool>,
        gamma: f64,
    ) -> Tensor<2> = try_discounted_returns;
}

/// Non-panicking form of [`discounted_returns`]: a mask of another shape ([`Error::Shape`](crate::Error::Shape)
/// naming `mask`), `gamma` outside `[0, 1]` ([`Error::Config`](crate::Error::Config)); in checked mode a non-finite
/// valid reward ([`Error::NonFinite`](crate::Error::NonFinite)).
pub fn try_discounted_returns(
    rewards: Tensor<2>,
    mask: Tensor<2, Bool>,
    gamma: f64,
) -> crate::Result<Tensor<2>> {
    let mask = crate::reduce::canonical_mask(mask);
    check_same_shape("mask", &mask.dims(), &rewards.dims(), "rewards")?;
    check_in_closed("gamma", gamma, 0.0, 1.0)?;
    crate::error::check_finite_masked(&rewards, &mask, "rewards")?;
    let r = zero_masked(rewards, mask.clone());
    Ok(zero_masked(reverse_cumsum_unchecked(r, gamma), mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, t, v};
    use burn::tensor::Device;

    #[test]
    fn reverse_cumsum_matches_the_recursion_across_block_boundaries() {
        let device = Device::flex();
        // y_t = x_t + 0.5 y_{t+1} over [1, 1, 1]: [1.75, 1.5, 1].
        let y = discounted_reverse_cumsum(t(&[1.0, 1.0, 1.0], &device).reshape([1, 3]), 0.5);
        assert_close(&v(y), &[1.75, 1.5, 1.0]);
        // c = 1 over 300 ones (three 128-wide blocks): y_t = 300 - t.
        let y = discounted_reverse_cumsum(t(&[1.0; 300], &device).reshape([1, 300]), 1.0);
        let want: Vec<f64> = (0..300).map(|i| (300 - i) as f64).collect();
        assert_close(&v(y), &want);
    }
}
