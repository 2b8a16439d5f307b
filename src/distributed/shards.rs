//! Equal shards: every rank takes the same number of optimizer steps per epoch.
//!
//! A collective needs every rank in every round. burn's
//! [`split_dataloader`](burn::data::dataloader::split::split_dataloader) (what burn-train's
//! `MultiDevice` strategy calls) gives each device `num_items / devices` items and the last
//! device the remainder too, so the devices can take different numbers of batches: 9 items,
//! batch 4, 2 devices gives 4 items (1 batch) to the first and 5 (2 batches) to the second.
//! The second device's last step then waits for a rank that never comes. [`EqualShards`] keeps
//! the largest prefix of the epoch that splits into full batches on every rank (drop-last), and
//! [`check_equal_steps`] refuses a split with unequal step counts before training starts.

use std::ops::Range;

use crate::error::{Error, Result};

#[cfg(feature = "train")]
use burn::data::dataset::transform::PartialDataset;

/// An epoch cut into `ranks` equal shards of whole batches (drop-last): every rank takes
/// [`steps`](Self::steps) steps of `batch_size` items. The last [`dropped`](Self::dropped)
/// items (fewer than `batch_size * ranks`) sit the epoch out; shuffle the dataset each epoch
/// (burn's `ShuffledDataset`) so that different items do.
///
/// Every rank computes the same shards from `(num_items, batch_size, ranks)` alone: nothing is
/// exchanged.
///
/// - burn-train's `MultiDevice` strategy: give the learner [`truncate`](Self::truncate)`(dataset)`
///   (the first [`kept`](Self::kept) items); burn's split then hands every device
///   [`per_rank`](Self::per_rank) items.
/// - One process per rank (MPI): each rank loads [`shard`](Self::shard)`(dataset, rank)`, or
///   the items of [`range`](Self::range)`(rank)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EqualShards {
    num_items: usize,
    batch_size: usize,
    ranks: usize,
    steps: usize,
}

impl EqualShards {
    /// The shards of an epoch of `num_items` items, `batch_size` items per rank and step,
    /// over `ranks` ranks. Errors ([`Error::Config`]): a zero `batch_size` or `ranks`, or an
    /// epoch shorter than one batch per rank.
    pub fn drop_last(num_items: usize, batch_size: usize, ranks: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::config("batch_size", "must be >= 1", batch_size));
        }
        if ranks == 0 {
            return Err(Error::config("ranks", "must be >= 1", ranks));
        }
        let steps = num_items / (batch_size * ranks);
        if steps == 0 {
            return Err(Error::config(
                "num_items",
                format!(
                    "an epoch needs at least one batch per rank: batch_size {batch_size} x \
                     {ranks} ranks = {} items",
                    batch_size * ranks
                ),
                num_items,
            ));
        }
        Ok(Self {
            num_items,
            batch_size,
            ranks,
            steps,
        })
    }

    /// Optimizer steps per rank and epoch.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Items per rank and epoch (`steps * batch_size`).
    pub fn per_rank(&self) -> usize {
        self.steps * self.batch_size
    }

    /// Items trained on per epoch, all ranks together.
    pub fn kept(&self) -> usize {
        self.per_rank() * self.ranks
    }

    /// Items left out of the epoch (`< batch_size * ranks`).
    pub fn dropped(&self) -> usize {
        self.num_items - self.kept()
    }

    /// The items of `rank` (contiguous, as burn's split assigns them). Errors: `rank >= ranks`.
    pub fn range(&self, rank: usize) -> Result<Range<usize>> {
        if rank >= self.ranks {
            return Err(Error::config(
                "rank",
                format!("must be < ranks ({})", self.ranks),
                rank,
            ));
        }
        let n = self.per_rank();
        Ok(rank * n..(rank + 1) * n)
    }

    /// The first [`kept`](Self::kept) items of `dataset`: what burn-train's `MultiDevice`
    /// split turns into equal shards. Errors: a dataset of another length than `num_items`.
    #[cfg(feature = "train")]
    pub fn truncate<D, I>(&self, dataset: D) -> Result<PartialDataset<D, I>>
    where
        D: burn::data::dataset::Dataset<I>,
        I: Clone + Send + Sync,
    {
        self.items(dataset, 0..self.kept())
    }

    /// The items of `rank` in `dataset` (one process per rank). Errors: a dataset of another
    /// length than `num_items`, `rank >= ranks`.
    #[cfg(feature = "train")]
    pub fn shard<D, I>(&self, dataset: D, rank: usize) -> Result<PartialDataset<D, I>>
    where
        D: burn::data::dataset::Dataset<I>,
        I: Clone + Send + Sync,
    {
        let range = self.range(rank)?;
        self.items(dataset, range)
    }

    /// The items `range` of `dataset`, after checking its length.
    #[cfg(feature = "train")]
    fn items<D, I>(&self, dataset: D, range: Range<usize>) -> Result<PartialDataset<D, I>>
    where
        D: burn::data::dataset::Dataset<I>,
        I: Clone + Send + Sync,
    {
        self.check_len(dataset.len())?;
        Ok(PartialDataset::new(dataset, range.start, range.end))
    }

    #[cfg(feature = "train")]
    fn check_len(&self, len: usize) -> Result<()> {
        if len != self.num_items {
            return Err(Error::config(
                "dataset",
                format!(
                    "has {len} items; these shards were cut for {}",
                    self.num_items
                ),
                len,
            ));
        }
        Ok(())
    }
}

/// Steps per device under burn's `split_dataloader` (burn-train's `MultiDevice` strategy):
/// device `i < devices - 1` gets `num_items / devices` items, the last one the rest; each
/// takes `ceil(items / batch_size)` steps.
pub fn split_steps(num_items: usize, batch_size: usize, devices: usize) -> Vec<usize> {
    if devices == 0 || batch_size == 0 {
        return Vec::new();
    }
    let share = num_items / devices;
    (0..devices)
        .map(|i| {
            let items = if i + 1 == devices {
                num_items - share * (devices - 1)
            } else {
                share
            };
            items.div_ceil(batch_size)
        })
        .collect()
}

/// The check to run at setup, before training: the steps per epoch of every device under
/// burn's split ([`split_steps`]), which must all be equal (else a collective round waits for
/// a device that has no batch left). Returns the common step count. Errors
/// ([`Error::Config`]): unequal steps (with the fix: [`EqualShards::truncate`]), zero
/// `batch_size` or `devices`, no step at all.
pub fn check_equal_steps(num_items: usize, batch_size: usize, devices: usize) -> Result<usize> {
    if batch_size == 0 {
        return Err(Error::config("batch_size", "must be >= 1", batch_size));
    }
    if devices == 0 {
        return Err(Error::config("devices", "must be >= 1", devices));
    }
    let steps = split_steps(num_items, batch_size, devices);
    let (low, high) = (
        *steps.iter().min().unwrap_or(&0),
        *steps.iter().max().unwrap_or(&0),
    );
    if low != high {
        let fix = EqualShards::drop_last(num_items, batch_size, devices)
            .map(|s| {
                format!(
                    "EqualShards::drop_last({num_items}, {batch_size}, {devices}).truncate(dataset) \
                     keeps {} items ({} step(s) per device, {} dropped)",
                    s.kept(),
                    s.steps(),
                    s.dropped()
                )
            })
            .unwrap_or_else(|e| e.to_string());
        return Err(Error::config(
            "num_items",
            format!(
                "burn's split over {devices} devices with batch_size {batch_size} gives unequal \
                 steps per device {steps:?}: a collective would wait for a device with no batch \
                 left; {fix}"
            ),
            num_items,
        ));
    }
    if high == 0 {
        return Err(Error::config(
            "num_items",
            format!("no step on any of the {devices} devices"),
            num_items,
        ));
    }
    Ok(high)
}

/// [`check_equal_steps`] for a burn data loader (its `num_items`) split over `devices`.
#[cfg(feature = "train")]
pub fn check_loader_split<O>(
    loader: &std::sync::Arc<dyn burn::data::dataloader::DataLoader<O>>,
    batch_size: usize,
    devices: usize,
) -> Result<usize> {
    check_equal_steps(loader.num_items(), batch_size, devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burns_split_of_nine_items_is_unequal_and_refused() {
        // burn's split_dataloader: 9 / 2 = 4 items to device 0 (1 batch of 4), 5 to device 1
        // (batches of 4 and 1).
        assert_eq!(split_steps(9, 4, 2), vec![1, 2]);
        let err = check_equal_steps(9, 4, 2).unwrap_err().to_string();
        assert!(
            err.contains("[1, 2]") && err.contains("keeps 8 items"),
            "{err}"
        );
        assert_eq!(check_equal_steps(8, 4, 2).unwrap(), 1);
        // 10 items, batch 4, 2 devices: 5 each, 2 batches each (4 + 1): equal, accepted.
        assert_eq!(check_equal_steps(10, 4, 2).unwrap(), 2);
    }

    #[test]
    fn equal_shards_cover_whole_batches_on_every_rank() {
        for n in 0..40 {
            for b in 1..5 {
                for r in 1..4 {
                    let Ok(s) = EqualShards::drop_last(n, b, r) else {
                        assert!(n < b * r);
                        continue;
                    };
                    assert_eq!(s.kept() % (b * r), 0);
                    assert!(s.dropped() < b * r);
                    assert_eq!(s.kept() + s.dropped(), n);
                    let steps = split_steps(s.kept(), b, r);
                    assert!(
                        steps.iter().all(|&k| k == s.steps()),
                        "{n} {b} {r}: {steps:?}"
                    );
                    assert_eq!(s.range(r - 1).unwrap().end, s.kept());
                }
            }
        }
        assert!(EqualShards::drop_last(3, 2, 2).is_err());
        assert!(EqualShards::drop_last(8, 4, 2).unwrap().range(2).is_err());
    }
}
