//! BCO: binary classifier optimization (TRL's experimental `BCOTrainer`) with its running-mean
//! reward baseline as explicit, serializable state.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::kto::UnpairedBatch;
use super::metrics::{LossOutput, Metrics};
use super::stable::log_sigmoid;
use crate::error::check_positive;
use crate::reduce::Normalizer;

/// Running mean / variance of the implicit rewards (TRL's `RunningMoments`, same update and
/// initial state). Serialize it with your checkpoint (serde; TRL writes the same four fields
/// to `running.json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunningMoments {
    /// Running mean `δ`.
    pub mean: f64,
    /// Running standard deviation (Bessel-corrected).
    pub std: f64,
    /// Running population variance.
    pub var: f64,
    /// Number of values seen (starts at 1e-24, as TRL).
    pub count: f64,
}

impl Default for RunningMoments {
    fn default() -> Self {
        Self {
            mean: 0.0,
            std: 1.0,
            var: 1.0,
            count: 1e-24,
        }
    }
}

impl RunningMoments {
    /// Folds a batch of values `[N]` in (Chan et al. parallel update). Reads the batch mean and
    /// variance back to the host: **one sync**. Across data-parallel ranks, pass the gathered
    /// values (TRL uses global statistics).
    pub fn update(&mut self, xs: Tensor<1>) {
        let n = xs.dims()[0] as f64;
        if n == 0.0 {
            return;
        }
        let values = crate::host_reads::floats(xs.detach(), "xs")
            .unwrap_or_else(|e| panic!("burn-rlhf: {e}"));
        let xs_mean = values.iter().sum::<f64>() / n;
        let xs_var = values.iter().map(|x| (x - xs_mean).powi(2)).sum::<f64>() / n;
        self.update_with(xs_mean, xs_var, n);
    }

    /// The update from a batch's mean, population variance and count.
    pub fn update_with(&mut self, xs_mean: f64, xs_var: f64, xs_count: f64) {
        let delta = xs_mean - self.mean;
        let tot_count = self.count + xs_count;
        let new_sum = xs_var * xs_count;
        let old_sum = self.var * self.count + delta * delta * self.count * xs_count / tot_count;
        self.mean += delta * xs_count / tot_count;
        let new_var = (old_sum + new_sum) / tot_count;
        self.std = (new_var * tot_count / (tot_count - 1.0)).sqrt();
        self.var = new_var;
        self.count = tot_count;
    }
}

/// Configuration of [`BcoLoss`].
#[derive(Config, Debug)]
pub struct BcoLossConfig {
    /// `β`, finite and > 0. Default: 0.1.
    #[config(default = 0.1)]
    pub beta: f64,
    /// Reduction of the per-example losses. Default: `SequenceMean` (TRL: one mean over the
    /// desirable and undesirable losses).
    #[config(default = "Normalizer::SequenceMean")]
    pub normalizer: Normalizer,
}

impl BcoLossConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> crate::Result<()> {
        check_positive("beta", self.beta)?;
        self.normalizer.validate_for_sequences("the BCO loss")
    }

    /// Validates and builds the loss.
    pub fn try_init(&self) -> crate::Result<BcoLoss> {
        self.validate()?;
        Ok(BcoLoss {
            beta: self.beta,
            normalizer: self.normalizer,
        })
    }

    crate::error::panicking! {
        /// Builds the loss.
        pub fn init(&self) -> BcoLoss = try_init;
    }
}

/// BCO, built by [`BcoLossConfig::init`]: with `ρ = β(logp - ref)` and `δ` the running mean of
/// `ρ` over all examples seen (desirable and undesirable),
///
#[cfg_attr(
    doc,
    doc = r#"$$\ell_i = \begin{cases} -\log\sigma(\rho_i - \delta) & \text{desirable} \\ -\log\sigma(-(\rho_i - \delta)) & \text{undesirable} \end{cases}\qquad L = \operatorname{normalize}_B(\ell)$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`l_i = -log_sigmoid(rho_i - delta)` (desirable), `-log_sigmoid(-(rho_i - delta))` (undesirable)"
)]
///
/// **Batch-coupled and stateful**: `δ` is updated with this batch's rewards before it is used
/// (as TRL, when training), so the result depends on the history; it is a constant for the
/// gradient. TRL's optional UDM density-ratio weighting of undesirable examples is not
/// included.
///
/// Metrics: `rewards/chosen`, `rewards/rejected` (class means, 0 for a class absent from the
/// batch; TRL: NaN),
/// `rewards/margins`, `logps/chosen`, `logps/rejected`, `delta`.
#[derive(Module, Debug)]
pub struct BcoLoss {
    beta: f64,
    #[module(skip)]
    normalizer: Normalizer,
}

impl BcoLoss {
    crate::error::panicking! {
        /// The loss; updates `running` with this batch's rewards first when `train` is true
        /// (one host sync).
        pub fn forward(
            &self,
            batch: &UnpairedBatch,
            running: &mut RunningMoments,
            train: bool,
        ) -> LossOutput = try_forward;
    }

    /// Non-panicking form of [`forward`](Self::forward).
    pub fn try_forward(
        &self,
        batch: &UnpairedBatch,
        running: &mut RunningMoments,
        train: bool,
    ) -> crate::Result<LossOutput> {
        batch.validate()?;
        let rho = (batch.logps.clone() - batch.ref_logps.clone()).mul_scalar(self.beta);
        if train {
            running.update(rho.clone().detach());
        }
        let shifted = rho.clone().sub_scalar(running.mean);
        let per_example = log_sigmoid(shifted.clone()).neg().mask_where(
            batch.desirable.clone().bool_not(),
            log_sigmoid(shifted.neg()).neg(),
        );
        let loss = self.normalizer.try_reduce_sequences(per_example.clone())?;

        let rewards = rho.detach();
        let mut metrics = Metrics::new();
        batch.class_metrics(rewards.clone(), &mut metrics);
        metrics.insert(
            "delta",
            Tensor::zeros([1], (&rewards.device(), rewards.dtype())).add_scalar(running.mean),
        );
        Ok(LossOutput {
            loss,
            per_example,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::t;
    use burn::tensor::{Bool, Device, TensorData};

    #[test]
    fn bco_uses_the_updated_running_mean_and_closed_form_gradient() {
        let device = Device::flex().autodiff();
        let (lp, rf, beta) = ([-3.0, -5.0, -1.0], [-4.0, -4.5, -2.0], 0.5);
        let logps = t(&lp, &device).require_grad();
        let desirable =
            Tensor::<1, Bool>::from_data(TensorData::new(vec![true, false, true], [3]), &device);
        let batch = UnpairedBatch::new(logps.clone(), t(&rf, &device), desirable);
        let mut running = RunningMoments::default();
        let out = BcoLossConfig::new()
            .with_beta(beta)
            .init()
            .forward(&batch, &mut running, true);
        let rho: Vec<f64> = (0..3).map(|i| beta * (lp[i] - rf[i])).collect();
        // First update from count ~0: the mean becomes the batch mean.
        let delta = rho.iter().sum::<f64>() / 3.0;
        assert!((running.mean - delta).abs() < 1e-12);
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let sign = [1.0, -1.0, 1.0];
        let want: f64 = (0..3)
            .map(|i| -s(sign[i] * (rho[i] - delta)).ln())
            .sum::<f64>()
            / 3.0;
        let got: f64 = out.loss.clone().into_scalar::<f64>();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        let grads = out.loss.backward();
        let g = logps
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap();
        for i in 0..3 {
            // d/dlogp of -log σ(sign (ρ - δ)) = -sign β σ(-sign (ρ - δ)), δ constant.
            let want = -sign[i] * beta * s(-sign[i] * (rho[i] - delta)) / 3.0;
            assert!((g[i] - want).abs() < 1e-14);
        }
    }
}
