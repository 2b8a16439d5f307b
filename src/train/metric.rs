//! The adapters' output and burn-train metrics under TRL's names.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::TensorReadError;
use burn::train::logger::{FileMetricLogger, MetricLogger};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{
    Adaptor, ItemLazy, LossInput, LossMetric, Metric, MetricAttributes, MetricDefinition,
    MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::{InferenceStep, LearnerModel, SupervisedTraining, TrainStep};

use crate::losses::{LossOutput, Metrics};

/// What every adapter's step returns: the loss and the loss's metrics under TRL's keys.
#[derive(Debug, Clone)]
pub struct TrlOutput {
    /// The scalar loss `[1]`.
    pub loss: Tensor1,
    /// The metrics (`rewards/accuracies`, `logps/chosen`, ...), `[1]` device tensors.
    pub metrics: Metrics,
    /// Examples (pairs, sequences) in the batch: the weight of this batch in epoch means.
    pub batch_size: usize,
}

type Tensor1 = burn::tensor::Tensor<1>;

impl TrlOutput {
    /// From a loss's output.
    pub fn new(out: LossOutput, batch_size: usize) -> Self {
        Self {
            loss: out.loss,
            metrics: out.metrics,
            batch_size,
        }
    }
}

impl ItemLazy for TrlOutput {
    fn sync(self) -> Result<Self, burn::tensor::ExecutionError> {
        // As burn-train's own outputs: flush the producing stream, and hand the metric thread
        // tensors off the autodiff backend (no tape kept alive, no read-back here).
        self.loss.device().flush()?;
        let mut metrics = Metrics::new();
        for key in self.metrics.keys() {
            let value = self.metrics.get(key).expect("key listed").clone();
            metrics.insert(key, value.without_autodiff());
        }
        Ok(Self {
            loss: self.loss.without_autodiff(),
            metrics,
            batch_size: self.batch_size,
        })
    }
}

impl Adaptor<LossInput> for TrlOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

/// The input of [`TrlMetric`]: every metric of a step.
#[derive(Debug, Clone)]
pub struct TrlMetricInput {
    /// The step's metrics.
    pub metrics: Metrics,
    /// The batch's weight in epoch means.
    pub batch_size: usize,
}

impl Adaptor<TrlMetricInput> for TrlOutput {
    fn adapt(&self) -> TrlMetricInput {
        TrlMetricInput {
            metrics: self.metrics.clone(),
            batch_size: self.batch_size,
        }
    }
}

/// One of a loss's metrics as a burn-train numeric metric, named by its TRL key
/// (`rewards/accuracies`, ...). Batch values are averaged over the epoch weighted by batch
/// size. A key the step did not produce shows as not available.
#[derive(Clone)]
pub struct TrlMetric {
    key: Arc<String>,
    state: NumericMetricState,
}

impl TrlMetric {
    /// Keys of the paired preference losses (DPO family, CPO, ORPO).
    pub const PREFERENCE_KEYS: [&'static str; 6] = [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ];
    /// Keys of KTO.
    pub const KTO_KEYS: [&'static str; 6] = [
        "kl",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ];
    /// Keys of the Bradley-Terry reward loss.
    pub const REWARD_KEYS: [&'static str; 5] = [
        "accuracy",
        "margin",
        "mean_reward",
        "min_reward",
        "max_reward",
    ];
    /// Keys of SFT.
    pub const SFT_KEYS: [&'static str; 1] = ["num_tokens"];

    /// The metric reading `key`.
    pub fn new(key: &str) -> Self {
        Self {
            key: Arc::new(key.to_string()),
            state: NumericMetricState::new(),
        }
    }
}

impl Metric for TrlMetric {
    type Input = TrlMetricInput;

    fn name(&self) -> MetricName {
        self.key.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: !matches!(self.key.as_str(), "kl" | "nll_loss"),
        }
        .into()
    }

    fn update(
        &mut self,
        item: &TrlMetricInput,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        let Some(value) = item.metrics.get(&self.key) else {
            return Ok(SerializedEntry::not_available(None));
        };
        let value = value.clone().try_into_scalar::<f64>()?;
        self.state.update(value, item.batch_size.max(1));
        Ok(self
            .state
            .compute_update(FormatOptions::new(self.name()).precision(4)))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self
            .state
            .compute_final(FormatOptions::new(self.name()).precision(4)))
    }

    fn clear(&mut self) {
        self.state.reset()
    }
}

impl Numeric for TrlMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}

/// burn-train's [`FileMetricLogger`] for metrics whose names hold `/` (TRL's keys): the
/// dashboard shows `rewards/accuracies`, the log file is `rewards-accuracies.log` (burn's
/// logger would try to open `rewards/accuracies.log` in a missing folder and panic).
pub struct TrlFileMetricLogger {
    inner: FileMetricLogger,
}

impl TrlFileMetricLogger {
    /// Logs under `directory` (as [`FileMetricLogger::new`]).
    pub fn new(directory: impl AsRef<Path>) -> Self {
        Self {
            inner: FileMetricLogger::new(directory),
        }
    }

    /// The file-name form of a metric name.
    pub fn file_name(name: &str) -> String {
        name.replace(['/', '\\'], "-")
    }

    /// The epoch mean of a metric logged under `directory` (batch values weighted by their
    /// batch size), or `None` when it was not logged.
    pub fn epoch_mean(
        directory: impl AsRef<Path>,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> Option<f64> {
        let entries = Self::new(directory).read_numeric(name, epoch, split).ok()?;
        let (mut sum, mut weight) = (0.0, 0.0);
        for entry in entries {
            let (value, count) = match entry {
                NumericEntry::Aggregated {
                    aggregated_value,
                    count,
                } => (aggregated_value, count as f64),
                other => (other.current(), 1.0),
            };
            sum += value * count;
            weight += count;
        }
        (weight > 0.0).then(|| sum / weight)
    }
}

impl MetricLogger for TrlFileMetricLogger {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        self.inner.log(update, epoch, split)
    }

    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        self.inner
            .read_numeric(&Self::file_name(name), epoch, split)
    }

    fn log_metric_definition(&mut self, mut definition: MetricDefinition) {
        definition.name = Arc::new(Self::file_name(&definition.name));
        self.inner.log_metric_definition(definition)
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        self.inner.log_epoch_summary(summary)
    }
}

/// Registers TRL-named metrics on a [`SupervisedTraining`].
pub trait TrlMetricsExt: Sized {
    /// Adds burn's [`LossMetric`] and a [`TrlMetric`] per key, for training and validation,
    /// and logs them to files under `directory` with [`TrlFileMetricLogger`] (instead of
    /// burn-train's default file logger, which cannot write names holding `/`).
    fn trl_metrics(self, keys: &[&str], directory: impl AsRef<Path>) -> Self;
}

impl<M> TrlMetricsExt for SupervisedTraining<M>
where
    M: LearnerModel,
    <M as TrainStep>::Output: Adaptor<LossInput> + Adaptor<TrlMetricInput>,
    <M as InferenceStep>::Output: Adaptor<LossInput> + Adaptor<TrlMetricInput>,
{
    fn trl_metrics(self, keys: &[&str], directory: impl AsRef<Path>) -> Self {
        let mut training = self
            .with_metric_logger(TrlFileMetricLogger::new(directory))
            .metric_train_numeric(LossMetric::new())
            .metric_valid_numeric(LossMetric::new());
        for key in keys {
            training = training
                .metric_train_numeric(TrlMetric::new(key))
                .metric_valid_numeric(TrlMetric::new(key));
        }
        training
    }
}
