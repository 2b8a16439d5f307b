//! Loss outputs and the metrics users log.

use std::collections::BTreeMap;

use burn::tensor::Tensor;

use crate::reduce::mask_like;

/// Metrics as device tensors (`[1]` each), keyed by the anchor's own metric names
/// (`rewards/chosen`, `rewards/accuracies`, `logps/rejected`, `kl`, ...).
///
/// Nothing is read back to the host until [`Metrics::to_host`] is called, so logging every
/// step costs no sync unless the caller asks for the numbers.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    values: BTreeMap<String, Tensor<1>>,
}

impl Metrics {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) a metric. The tensor is detached: metrics carry no gradient.
    pub fn insert(&mut self, key: impl Into<String>, value: Tensor<1>) {
        self.values.insert(key.into(), value.detach());
    }

    /// The metric's tensor, if present.
    pub fn get(&self, key: &str) -> Option<&Tensor<1>> {
        self.values.get(key)
    }

    /// Metric names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Number of metrics.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when there is no metric.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Adds every metric of `other`, prefixing the keys with `prefix` (e.g. `"eval_"`).
    pub fn extend_prefixed(&mut self, prefix: &str, other: Metrics) {
        for (k, v) in other.values {
            self.values.insert(format!("{prefix}{k}"), v);
        }
    }

    /// Reads every metric back to the host as `f64`, in **one** transfer (the metrics are
    /// concatenated on the device first; see [`host_reads`](crate::host_reads)).
    ///
    /// # Panics
    /// If the backend fails to read the values back.
    pub fn to_host(&self) -> BTreeMap<String, f64> {
        if self.values.is_empty() {
            return BTreeMap::new();
        }
        let all: Vec<Tensor<1>> = self
            .values
            .values()
            .map(|v| v.clone().reshape([1]))
            .collect();
        let values = crate::host_reads::floats_cat(all, "metrics")
            .unwrap_or_else(|e| panic!("burn-rlhf: {e}"));
        self.values.keys().cloned().zip(values).collect()
    }
}

/// What every loss returns.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The scalar loss `[1]` that is differentiated (after the configured normalizer).
    pub loss: Tensor<1>,
    /// The per-example (per pair / per sequence) loss terms `[B]` before normalization.
    pub per_example: Tensor<1>,
    /// Logged metrics under the anchor's names.
    pub metrics: Metrics,
}

/// Mean of a `[B]` tensor of 0/1 comparisons, in the dtype of `like`.
pub(crate) fn fraction_greater(a: Tensor<1>, b: Tensor<1>) -> Tensor<1> {
    let like = a.clone();
    mask_like(&like, a.greater(b)).mean()
}

/// The metrics every paired loss reports (TRL's keys): `rewards/chosen`, `rewards/rejected`,
/// `rewards/accuracies`, `rewards/margins` (from the per-pair rewards `[B]`), `logps/chosen`,
/// `logps/rejected` (batch means of the sequence log-probs as the loss used them).
pub(crate) fn pair_metrics(
    chosen_rewards: Tensor<1>,
    rejected_rewards: Tensor<1>,
    chosen_logps: Tensor<1>,
    rejected_logps: Tensor<1>,
) -> Metrics {
    let (c, r) = (chosen_rewards, rejected_rewards);
    let mut metrics = Metrics::new();
    metrics.insert("rewards/chosen", c.clone().mean());
    metrics.insert("rewards/rejected", r.clone().mean());
    metrics.insert("rewards/accuracies", fraction_greater(c.clone(), r.clone()));
    metrics.insert("rewards/margins", (c - r).mean());
    metrics.insert("logps/chosen", chosen_logps.mean());
    metrics.insert("logps/rejected", rejected_logps.mean());
    metrics
}
