//! Reward head: a linear score on the hidden state of the last attended token.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::error::Error;

/// Index of the last attended position of each row: `max { t : attention_mask[b, t] }`, or
/// `-1` for a row with no attended position.
///
/// Computed on the device (positions masked to `-1`, then a max over `T`); nothing is read
/// back. Only the attention mask matters, so the result is the same for right padding
/// (`[x x x eos pad pad]` -> 3), left padding (`[pad pad x x x eos]` -> 5) and when the pad
/// id equals the eos id: unlike "first pad token - 1" computed from the input ids
/// (transformers 35352, TRL 3750), the eos that ends a sequence is read when it is attended.
///
/// Use [`try_last_attended_index`] to reject rows with no attended position.
///
/// # Shapes
/// - attention_mask: `[B, T]` (`Bool`; `true` = attended). From 0/1 integers write
///   `mask.equal_elem(1)`.
/// - output: `[B]` (`Int`)
pub fn last_attended_index(attention_mask: Tensor<2, Bool>) -> Tensor<1, Int> {
    let attention_mask = crate::reduce::canonical_mask(attention_mask);
    let [b, t] = attention_mask.dims();
    let device = attention_mask.device();
    let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
        .unsqueeze_dim::<2>(0)
        .expand([b, t]);
    positions
        .mask_fill(attention_mask.bool_not(), -1)
        .max_dim(1)
        .squeeze_dim::<1>(1)
}

/// [`last_attended_index`], returning [`Error::Empty`] (naming the first offending row) when a
/// row has no attended position, and [`Error::Shape`] for a zero-sized mask.
///
/// The check reads the per-row counts `[B]` back from the device (one sync; see
/// [`host_reads`](crate::host_reads)).
pub fn try_last_attended_index(attention_mask: Tensor<2, Bool>) -> crate::Result<Tensor<1, Int>> {
    let attention_mask = crate::reduce::canonical_mask(attention_mask);
    let [b, t] = attention_mask.dims();
    if b == 0 || t == 0 {
        return Err(Error::shape(
            "attention_mask",
            "[B, T] with B >= 1 and T >= 1",
            &[b, t],
        ));
    }
    check_every_row_attended(attention_mask.clone())?;
    Ok(last_attended_index(attention_mask))
}

fn check_every_row_attended(attention_mask: Tensor<2, Bool>) -> crate::Result<()> {
    // One readback of the per-row attended-token counts `[B]` (ints: a Bool reduction read
    // with `into_scalar::<bool>()` was wrong on wgpu/lavapipe).
    let counts = crate::host_reads::ints(attention_mask.int().sum_dim(1), "attention_mask")?;
    let rows: Vec<bool> = counts.iter().map(|&c| c > 0).collect();
    if rows.iter().all(|&attended| attended) {
        return Ok(());
    }
    let empty: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, &attended)| (!attended).then_some(i))
        .collect();
    Err(Error::Empty {
        arg: "attention_mask",
        what: format!(
            "row(s) {empty:?} have no attended token, so there is no last token to read the reward from"
        ),
    })
}

/// Gathers `hidden[b, index[b], :]`: `[B, T, H]`, `[B]` -> `[B, H]`. Indices must be in `[0, T)`.
fn gather_rows(hidden: Tensor<3>, index: Tensor<1, Int>) -> Tensor<2> {
    let [b, _, h] = hidden.dims();
    let index = index.reshape([b, 1, 1]).expand([b, 1, h]);
    hidden.gather(1, index).reshape([b, h])
}

/// The hidden state of each row's last attended token: `[B, T, H]` -> `[B, H]`.
///
/// Checks that the shapes agree and that every row has an attended token
/// ([`Error::Empty`] naming the rows; one `[B]` read back, see [`try_last_attended_index`]):
/// always on the CPU backends (where the read is a copy), and on other devices in
/// [checked mode](crate::set_checked_mode), in every build profile. On a GPU device
/// outside those it reads nothing (see [`host_reads`](crate::host_reads)) and a row with no
/// attended token is NaN: never a silent read of another position. Differentiable w.r.t.
/// `hidden`.
///
/// # Shapes
/// - hidden: `[B, T, H]`
/// - attention_mask: `[B, T]` (`Bool`)
/// - output: `[B, H]`
pub fn try_pool_last_attended(
    hidden: Tensor<3>,
    attention_mask: Tensor<2, Bool>,
) -> crate::Result<Tensor<2>> {
    let attention_mask = crate::reduce::canonical_mask(attention_mask);
    check_mask_shape(&hidden, &attention_mask)?;
    if crate::error::index_checks(&attention_mask.device()) {
        let index = try_last_attended_index(attention_mask)?;
        return Ok(gather_rows(hidden, index));
    }
    Ok(pool_or_nan(hidden, attention_mask))
}

/// Unchecked pooling: `-1` (no attended token) is clamped to a valid index for the gather,
/// and those rows are then written NaN.
fn pool_or_nan(hidden: Tensor<3>, attention_mask: Tensor<2, Bool>) -> Tensor<2> {
    let [b, _, h] = hidden.dims();
    let index = last_attended_index(attention_mask);
    let empty = index.clone().lower_elem(0);
    let pooled = gather_rows(hidden, index.clamp_min(0));
    pooled.mask_fill(empty.unsqueeze_dim::<2>(1).expand([b, h]), f64::NAN)
}

crate::error::panicking! {
    /// Panicking form of [`try_pool_last_attended`].
    pub fn pool_last_attended(
        hidden: Tensor<3>,
        attention_mask: Tensor<2, Bool>,
    ) -> Tensor<2> = try_pool_last_attended;
}

fn check_mask_shape(hidden: &Tensor<3>, attention_mask: &Tensor<2, Bool>) -> crate::Result<()> {
    let [b, t, h] = hidden.dims();
    let dims = attention_mask.dims();
    if dims != [b, t] {
        return Err(Error::shape(
            "attention_mask",
            format!(
                "[B, T] = [{b}, {t}] (the first two dims of hidden {:?})",
                [b, t, h]
            ),
            &dims,
        ));
    }
    Ok(())
}

/// Configuration of [`RewardHead`].
#[derive(Config, Debug)]
pub struct RewardHeadConfig {
    /// Hidden size `H` of the backbone.
    pub d_model: usize,
    /// Number of scores `K` (1 for a scalar reward; more for multi-objective rewards, like
    /// `num_labels` of transformers' `AutoModelForSequenceClassification`). Default: 1.
    #[config(default = 1)]
    pub num_scores: usize,
    /// Whether the linear map has a bias. Default: false, as transformers' sequence-classification
    /// `score` layer and OpenRLHF's `value_head` (a bias shifts every reward equally, which the
    /// pairwise loss cannot see). When enabled the bias starts at 0.
    #[config(default = false)]
    pub bias: bool,
    /// Weight initializer. `None` (default): `Normal { mean: 0, std: 1 / (H + 1) }`, OpenRLHF's
    /// reward-head initialization, which starts every reward near 0 (pairwise accuracy ~50%).
    pub initializer: Option<Initializer>,
    /// Check that every row has an attended token, returning [`Error::Empty`] otherwise, as
    /// [`try_pool_last_attended`] does: always on the CPU backends, on other devices in
    /// checked mode (one `[B]` read; elsewhere such a row's scores are NaN).
    /// Default: true. When false, nothing is read on any device and a row with no attended
    /// token always gets NaN scores (never a silent read of another position).
    #[config(default = true)]
    pub check_attended: bool,
}

impl RewardHeadConfig {
    /// Validates the configuration.
    pub fn validate(&self) -> crate::Result<()> {
        if self.d_model == 0 {
            return Err(Error::config("d_model", "must be >= 1", self.d_model));
        }
        if self.num_scores == 0 {
            return Err(Error::config("num_scores", "must be >= 1", self.num_scores));
        }
        Ok(())
    }

    /// Validates and builds the head on `device`.
    pub fn try_init(&self, device: &Device) -> crate::Result<RewardHead> {
        self.validate()?;
        let initializer = self.initializer.clone().unwrap_or(Initializer::Normal {
            mean: 0.0,
            std: 1.0 / (self.d_model as f64 + 1.0),
        });
        let mut linear = LinearConfig::new(self.d_model, self.num_scores)
            .with_bias(self.bias)
            .with_initializer(initializer)
            .init(device);
        if self.bias {
            linear.bias = Some(Param::from_tensor(Tensor::zeros([self.num_scores], device)));
        }
        Ok(RewardHead {
            linear,
            check_attended: self.check_attended,
        })
    }

    crate::error::panicking! {
        /// Builds the head on `device`.
        pub fn init(&self, device: &Device) -> RewardHead = try_init;
    }
}

/// Reward head: `score = W h_last (+ b)`, where `h_last` is the backbone's hidden state at the
/// **last attended token** of each sequence ([`last_attended_index`]).
///
/// This is the reward model of TRL's `RewardTrainer` (a sequence-classification head with one
/// label) and OpenRLHF's reward model, read from the attention mask so that right padding, left
/// padding and `pad_token_id == eos_token_id` all read the sequence's last real token. Feed its
/// scores (`[B]` from [`forward_reward`](Self::forward_reward)) to
/// [`crate::losses::BradleyTerryLoss`].
#[derive(Module, Debug)]
pub struct RewardHead {
    /// The `H -> K` linear map.
    pub linear: Linear,
    check_attended: bool,
}

impl RewardHead {
    crate::error::panicking! {
        /// Scores `[B, K]`.
        ///
        /// # Shapes
        /// - hidden: `[B, T, H]`
        /// - attention_mask: `[B, T]` (`Bool`, `true` = attended)
        /// - output: `[B, K]`
        pub fn forward(
            &self,
            hidden: Tensor<3>,
            attention_mask: Tensor<2, Bool>,
        ) -> Tensor<2> = try_forward;
    }

    /// Non-panicking form of [`forward`](Self::forward): checks the shapes and (with
    /// `check_attended`, one boolean read back) that every row has an attended token.
    pub fn try_forward(
        &self,
        hidden: Tensor<3>,
        attention_mask: Tensor<2, Bool>,
    ) -> crate::Result<Tensor<2>> {
        let attention_mask = crate::reduce::canonical_mask(attention_mask);
        check_mask_shape(&hidden, &attention_mask)?;
        let [b, t, h] = hidden.dims();
        let d_input = self.linear.weight.val().dims()[0];
        if h != d_input {
            return Err(Error::shape(
                "hidden",
                format!("[B, T, H] with H = {d_input} (the head's d_model)"),
                &[b, t, h],
            ));
        }
        if b == 0 || t == 0 {
            return Err(Error::shape(
                "hidden",
                "[B, T, H] with B >= 1 and T >= 1",
                &[b, t, h],
            ));
        }
        crate::error::check_dtype_like("hidden", &hidden, "weight", &self.linear.weight.val())?;
        crate::error::check_finite(&hidden, "hidden")?;
        let pooled = if self.check_attended {
            try_pool_last_attended(hidden, attention_mask)?
        } else {
            pool_or_nan(hidden, attention_mask)
        };
        Ok(self.linear.forward(pooled))
    }

    crate::error::panicking! {
        /// The scalar reward `[B]` of a one-score head.
        pub fn forward_reward(
            &self,
            hidden: Tensor<3>,
            attention_mask: Tensor<2, Bool>,
        ) -> Tensor<1> = try_forward_reward;
    }

    /// Non-panicking form of [`forward_reward`](Self::forward_reward); also an error when the
    /// head has `K != 1` scores.
    pub fn try_forward_reward(
        &self,
        hidden: Tensor<3>,
        attention_mask: Tensor<2, Bool>,
    ) -> crate::Result<Tensor<1>> {
        let attention_mask = crate::reduce::canonical_mask(attention_mask);
        let k = self.num_scores();
        if k != 1 {
            return Err(Error::config(
                "num_scores",
                "forward_reward needs a one-score head; use forward for [B, K] scores",
                k,
            ));
        }
        let scores = self.try_forward(hidden, attention_mask)?;
        let [b, _] = scores.dims();
        Ok(scores.reshape([b]))
    }

    /// Number of scores `K`.
    pub fn num_scores(&self) -> usize {
        self.linear.weight.val().dims()[1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn mask(rows: &[&[u8]], device: &Device) -> Tensor<2, Bool> {
        let t = rows[0].len();
        let values: Vec<bool> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&v| v != 0))
            .collect();
        Tensor::from_data(TensorData::new(values, [rows.len(), t]), device)
    }

    #[test]
    fn index_right_left_and_holes() {
        let device = Device::flex();
        let m = mask(
            &[
                &[1, 1, 1, 0, 0],
                &[0, 0, 1, 1, 1],
                &[1, 0, 1, 0, 0],
                &[0, 0, 0, 0, 0],
            ],
            &device,
        );
        let idx = last_attended_index(m.clone())
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap();
        assert_eq!(idx, vec![2, 4, 2, -1]);
        let err = try_last_attended_index(m).unwrap_err();
        assert!(err.to_string().contains("[3]"), "{err}");
    }

    #[test]
    fn default_init_is_small_and_biasless() {
        let device = Device::flex();
        let head = RewardHeadConfig::new(16).init(&device);
        assert!(head.linear.bias.is_none());
        assert_eq!(head.num_scores(), 1);
        let w = head
            .linear
            .weight
            .val()
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap();
        assert!(w.iter().all(|x| x.abs() < 6.0 / 17.0));
        let head = RewardHeadConfig::new(4)
            .with_bias(true)
            .with_num_scores(3)
            .init(&device);
        let b = head
            .linear
            .bias
            .unwrap()
            .val()
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap();
        assert_eq!(b, vec![0.0; 3]);
        assert!(RewardHeadConfig::new(0).try_init(&device).is_err());
    }
}
