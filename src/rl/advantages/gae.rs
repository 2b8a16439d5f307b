//! Generalized advantage estimation (GAE).
//!
#![cfg_attr(
    doc,
    doc = r#"$$\delta_t = r_t + \gamma V_{t+1} - V_t,\quad A_t = \sum_{k\ge t} (\gamma\lambda)^{k-t}\delta_k,\quad R_t = A_t + V_t$$"#
)]
#![cfg_attr(
    not(doc),
    doc = "`delta_t = r_t + gamma V_{t+1} - V_t`, `A_t = sum_{k>=t} (gamma lam)^(k-t) delta_k`, `R_t = A_t + V_t`"
)]
//!
//! `V_T = 0`; the advantages are then whitened ([`Whitening`]) over the mask and zeroed
//! outside it. Shapes: rewards, values, mask `[B, T]` -> advantages, returns `[B, T]`.
//!
//! Anchor: torchtune 0.6.1 `torchtune.rlhf.rewards.estimate_advantages`
//! ([`GaeConfig::torchtune`]) and TRL 1.16's PPO trainer GAE loop (the default config).
//! Paper: Schulman et al., <https://arxiv.org/abs/1506.02438>.
//!
//! Golden value: `fixtures/gae/gae_g1_l0.95_nomask.json` (torchtune
//! `estimate_advantages(values, rewards, gamma=1.0, lmbda=0.95)`, float64) gives
//! `advantages[0][0] = 0.5987293389777696`, `returns[0][0] = -0.5160461764986455`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use super::returns::reverse_cumsum_unchecked;
use super::whiten::{Whitening, whiten_unchecked};
use crate::error::{check_finite, check_in_closed, check_non_empty, check_same_shape};
use crate::reduce::zero_masked;

/// How GAE treats the mask in its recursion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GaeMasking {
    /// Rewards and values outside the mask are set to 0 before the recursion (TRL PPO), so the
    /// value beyond the last valid token of a right-padded row bootstraps to 0.
    ZeroOutside,
    /// The recursion runs over every position with the values as given; the mask is used only
    /// for whitening and zeroing afterwards (torchtune's `estimate_advantages`).
    IgnoreMask,
}

/// Configuration of [`Gae`] (generalized advantage estimation).
#[derive(Config, Debug)]
pub struct GaeConfig {
    /// Discount `gamma` in `[0, 1]`. Default 1.0 (TRL and torchtune PPO).
    #[config(default = 1.0)]
    pub gamma: f64,
    /// GAE `lambda` in `[0, 1]`. Default 0.95 (TRL and torchtune PPO).
    #[config(default = 0.95)]
    pub lam: f64,
    /// Mask handling in the recursion. Default [`GaeMasking::ZeroOutside`] (TRL): a padded
    /// position cannot leak value estimates into valid ones.
    #[config(default = "GaeMasking::ZeroOutside")]
    pub masking: GaeMasking,
    /// Whitening of the advantages. Default [`Whitening::ZeroMean`] (TRL / OpenRLHF: the usual
    /// PPO normalization); torchtune is [`Whitening::KeepMean`].
    #[config(default = "Whitening::ZeroMean")]
    pub whitening: Whitening,
}

impl GaeConfig {
    /// torchtune 0.6.1 `estimate_advantages`: mask ignored in the recursion, mean kept.
    pub fn torchtune(gamma: f64, lam: f64) -> Self {
        Self::new()
            .with_gamma(gamma)
            .with_lam(lam)
            .with_masking(GaeMasking::IgnoreMask)
            .with_whitening(Whitening::KeepMean)
    }

    /// Validates and builds.
    pub fn try_init(&self) -> crate::Result<Gae> {
        check_in_closed("gamma", self.gamma, 0.0, 1.0)?;
        check_in_closed("lam", self.lam, 0.0, 1.0)?;
        Ok(Gae {
            gamma: self.gamma,
            lam: self.lam,
            masking: self.masking,
            whitening: self.whitening,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> Gae = try_init;
    }
}

/// Generalized advantage estimation (see [`GaeConfig`]).
#[derive(Module, Debug)]
pub struct Gae {
    gamma: f64,
    lam: f64,
    #[module(skip)]
    masking: GaeMasking,
    #[module(skip)]
    whitening: Whitening,
}

/// Result of [`Gae::forward`].
#[derive(Debug, Clone)]
pub struct GaeOutput {
    /// Advantages `[B, T]` (whitened as configured; 0 where the mask is false).
    pub advantages: Tensor<2>,
    /// Returns `[B, T]` = raw (unwhitened) advantages + values: the value-function targets.
    pub returns: Tensor<2>,
}

impl Gae {
    /// GAE over `[B, T]` rewards and values.
    ///
    #[cfg_attr(
        doc,
        doc = r#"$$\delta_t = r_t + \gamma V_{t+1} - V_t,\quad A_t = \sum_{k\ge t} (\gamma\lambda)^{k-t}\delta_k,\quad R_t = A_t + V_t$$"#
    )]
    #[cfg_attr(
        not(doc),
        doc = "`delta_t = r_t + gamma V_{t+1} - V_t`, `A_t = sum_{k>=t} (gamma lam)^(k-t) delta_k`, `R_t = A_t + V_t`"
    )]
    ///
    /// `V_T = 0` (no bootstrap past the last column). Then the advantages are whitened over
    /// the mask and zeroed outside it.
    ///
    /// # Shapes
    /// - rewards, values, mask: `[B, T]`
    pub fn try_forward(
        &self,
        rewards: Tensor<2>,
        values: Tensor<2>,
        mask: Option<Tensor<2, Bool>>,
    ) -> crate::Result<GaeOutput> {
        let mask = mask.map(crate::reduce::canonical_mask);
        check_same_shape("values", &values.dims(), &rewards.dims(), "rewards")?;
        if let Some(m) = &mask {
            check_same_shape("mask", &m.dims(), &rewards.dims(), "rewards")?;
        }
        let [rb, rt] = rewards.dims();
        check_non_empty(
            "rewards",
            rb * rt,
            &format!("shape {:?} has a zero dimension", [rb, rt]),
        )?;
        crate::error::check_dtype_like("values", &values, "rewards", &rewards)?;
        check_finite(&rewards, "rewards")?;
        check_finite(&values, "values")?;
        let (rewards, values) = match (&mask, self.masking) {
            (Some(m), GaeMasking::ZeroOutside) => (
                zero_masked(rewards, m.clone()),
                zero_masked(values, m.clone()),
            ),
            _ => (rewards, values),
        };
        let [b, t] = values.dims();
        let next_values = Tensor::cat(
            vec![
                values.clone().slice([0..b, 1..t]),
                Tensor::zeros_like(&values).slice([0..b, 0..1]),
            ],
            1,
        );
        let delta = rewards + next_values.mul_scalar(self.gamma) - values.clone();
        let raw = reverse_cumsum_unchecked(delta, self.gamma * self.lam);
        let returns = raw.clone() + values;
        let advantages = match mask {
            Some(m) => zero_masked(whiten_unchecked(raw, Some(m.clone()), self.whitening), m),
            None => whiten_unchecked(raw, None, self.whitening),
        };
        Ok(GaeOutput {
            advantages,
            returns,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(
            &self,
            rewards: Tensor<2>,
            values: Tensor<2>,
            mask: Option<Tensor<2, Bool>>,
        ) -> GaeOutput = try_forward;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, t, v};
    use burn::tensor::Device;

    #[test]
    fn gae_matches_hand_computed_deltas() {
        let device = Device::flex();
        let rewards = t(&[1.0, 0.0], &device).reshape([1, 2]);
        let values = t(&[0.5, 0.25], &device).reshape([1, 2]);
        // delta = [1 + 0.25 - 0.5, 0 + 0 - 0.25] = [0.75, -0.25]; lam = 1: A = [0.5, -0.25].
        let gae = GaeConfig::new()
            .with_gamma(1.0)
            .with_lam(1.0)
            .with_whitening(Whitening::None)
            .init();
        let out = gae.forward(rewards, values, None);
        assert_close(&v(out.advantages), &[0.5, -0.25]);
        assert_close(&v(out.returns), &[1.0, 0.0]);
    }
}
