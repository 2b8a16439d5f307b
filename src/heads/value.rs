//! Value head: one value per token, for PPO critics.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Tensor};

use crate::error::{Error, check_in_closed, unwrap_or_panic};
use crate::reduce::zero_masked;

/// Configuration of [`ValueHead`].
#[derive(Config, Debug)]
pub struct ValueHeadConfig {
    /// Hidden size `H` of the backbone.
    pub d_model: usize,
    /// Whether the linear map has a bias. Default: true (TRL's `ValueHead` is `Linear(H, 1)`).
    /// The bias starts at 0.
    #[config(default = true)]
    pub bias: bool,
    /// Dropout probability on the hidden states before the linear map, active only while the
    /// module is training on an autodiff device. Default: 0.0. TRL's `ValueHead` uses
    /// `summary_dropout_prob = 0.1`; OpenRLHF's critic uses none.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Weight initializer. `None` (default): `Normal { mean: 0, std: 1 / (H + 1) }`, as
    /// OpenRLHF's critic head, so initial values are near 0.
    pub initializer: Option<Initializer>,
}

impl ValueHeadConfig {
    /// Validates the configuration.
    pub fn validate(&self) -> crate::Result<()> {
        if self.d_model == 0 {
            return Err(Error::config("d_model", "must be >= 1", self.d_model));
        }
        check_in_closed("dropout", self.dropout, 0.0, 1.0)?;
        if self.dropout >= 1.0 {
            return Err(Error::config("dropout", "must be < 1", self.dropout));
        }
        Ok(())
    }

    /// Validates and builds the head on `device`.
    pub fn try_init(&self, device: &Device) -> crate::Result<ValueHead> {
        self.validate()?;
        let initializer = self.initializer.clone().unwrap_or(Initializer::Normal {
            mean: 0.0,
            std: 1.0 / (self.d_model as f64 + 1.0),
        });
        let mut linear = LinearConfig::new(self.d_model, 1)
            .with_bias(self.bias)
            .with_initializer(initializer)
            .init(device);
        if self.bias {
            linear.bias = Some(Param::from_tensor(Tensor::zeros([1], device)));
        }
        Ok(ValueHead {
            dropout: DropoutConfig::new(self.dropout).init(),
            linear,
        })
    }

    crate::error::panicking! {
        /// Builds the head on `device`.
        pub fn init(&self, device: &Device) -> ValueHead = try_init;
    }
}

/// Per-token value head for PPO critics: `v[b, t] = w · dropout(h[b, t]) (+ b)`.
///
/// TRL's `ValueHead` (`trl/experimental/ppo/modeling_value_head.py`) and OpenRLHF's critic
/// apply the same linear map at every position; which positions count (completion tokens
/// only, the last one for the score, ...) is decided by the PPO loss and its masks.
#[derive(Module, Debug)]
pub struct ValueHead {
    /// Dropout on the hidden states.
    pub dropout: Dropout,
    /// The `H -> 1` linear map.
    pub linear: Linear,
}

impl ValueHead {
    /// Values at every position.
    ///
    /// # Shapes
    /// - hidden: `[B, T, H]`
    /// - output: `[B, T]`
    ///
    /// # Panics
    /// On the errors [`try_forward`](Self::try_forward) returns.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<2> {
        unwrap_or_panic(self.try_forward(hidden, None))
    }

    /// Values, set to exactly 0 (value and gradient) where `mask` is false.
    ///
    /// # Shapes
    /// - hidden: `[B, T, H]`
    /// - mask: `[B, T]` (`Bool`)
    /// - output: `[B, T]`
    ///
    /// # Panics
    /// On the errors [`try_forward`](Self::try_forward) returns.
    pub fn forward_masked(&self, hidden: Tensor<3>, mask: Tensor<2, Bool>) -> Tensor<2> {
        unwrap_or_panic(self.try_forward(hidden, Some(mask)))
    }

    /// Non-panicking form: checks `H` against the head and the mask's shape. Reads nothing back.
    pub fn try_forward(
        &self,
        hidden: Tensor<3>,
        mask: Option<Tensor<2, Bool>>,
    ) -> crate::Result<Tensor<2>> {
        let mask = mask.map(crate::reduce::canonical_mask);
        let [b, t, h] = hidden.dims();
        let d_input = self.linear.weight.val().dims()[0];
        if h != d_input {
            return Err(Error::shape(
                "hidden",
                format!("[B, T, H] with H = {d_input} (the head's d_model)"),
                &[b, t, h],
            ));
        }
        if let Some(mask) = &mask
            && mask.dims() != [b, t]
        {
            return Err(Error::shape(
                "mask",
                format!("[B, T] = [{b}, {t}] (the first two dims of hidden)"),
                &mask.dims(),
            ));
        }
        crate::error::check_dtype_like("hidden", &hidden, "weight", &self.linear.weight.val())?;
        crate::error::check_finite(&hidden, "hidden")?;
        let values = self
            .linear
            .forward(self.dropout.forward(hidden))
            .reshape([b, t]);
        Ok(match mask {
            Some(mask) => zero_masked(values, mask),
            None => values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn per_token_values_are_the_linear_map() {
        let device = Device::flex();
        let head = ValueHeadConfig::new(2)
            .with_initializer(Some(Initializer::Ones))
            .init(&device);
        let hidden = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [1, 3, 2]),
            &device,
        );
        let mask =
            Tensor::<2, Bool>::from_data(TensorData::new(vec![true, true, false], [1, 3]), &device);
        let v = head
            .forward_masked(hidden, mask)
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap();
        // w = [1, 1], b = 0: v_t = h_t0 + h_t1.
        assert_eq!(v, vec![3.0, 7.0, 0.0]);
        assert!(
            ValueHeadConfig::new(2)
                .with_dropout(1.0)
                .try_init(&device)
                .is_err()
        );
    }
}
