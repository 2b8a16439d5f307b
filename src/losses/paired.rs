//! The paired row layout: `2B` rows, the `B` chosen rows first, then the `B` rejected rows in
//! the same pair order. TRL's `concatenated_forward` and its reward trainer stack pairs this
//! way, so one forward pass serves both halves. [`PairedLayout`] is the one owner of that
//! arithmetic: building the rows from pairs, splitting a stacked tensor, stacking two halves,
//! and the row index of each side of a pair. [`PreferenceBatch::from_stacked`], the online
//! pairing ([`Pairs`](crate::generate::Pairs)), online DPO and the burn-train adapters use it.
//!
//! [`PreferenceBatch::from_stacked`]: super::PreferenceBatch::from_stacked

use burn::tensor::Tensor;
use burn::tensor::kind::Basic;

use crate::error::{Error, Result};
use crate::logps::GatheredLogps;

/// `B` pairs laid out as `2B` rows, chosen first (the layout TRL's `concatenated_forward` uses).
///
/// ```
/// use burn_rlhf::losses::PairedLayout;
///
/// let layout = PairedLayout::try_from_dims("stacked", &[6, 5]).unwrap();
/// assert_eq!((layout.pairs(), layout.chosen_row(1), layout.rejected_row(1)), (3, 1, 4));
/// // Rows of a source (e.g. a generation) in layout order: chosen rows, then rejected rows.
/// assert_eq!(PairedLayout::source_rows(&[7, 2], &[5, 0]), vec![7, 2, 5, 0]);
/// assert!(PairedLayout::try_from_dims("stacked", &[3, 5]).is_err());
/// assert!(PairedLayout::try_source_rows(&[7, 2], &[5]).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairedLayout {
    pairs: usize,
}

impl PairedLayout {
    /// The layout of `pairs` pairs (`2 * pairs` rows).
    pub fn new(pairs: usize) -> Self {
        Self { pairs }
    }

    /// The layout of a stacked tensor of shape `dims`: [`Error::Shape`] naming `arg` unless
    /// its row count `dims[0]` is even and at least 2.
    pub fn try_from_dims(arg: &'static str, dims: &[usize]) -> Result<Self> {
        let rows = dims.first().copied().unwrap_or(0);
        if rows == 0 || !rows.is_multiple_of(2) {
            return Err(Error::shape(
                arg,
                "[2B, ..] with B >= 1 (chosen rows first, then rejected)",
                dims,
            ));
        }
        Ok(Self::new(rows / 2))
    }

    /// Number of pairs `B`.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Number of rows `2B`.
    pub fn rows(&self) -> usize {
        2 * self.pairs
    }

    /// [`Error::Shape`] naming `arg` unless a tensor's leading dimension `dims[0]` is `2B`.
    pub fn check_rows(&self, arg: &'static str, dims: &[usize]) -> Result<()> {
        if dims.first() != Some(&self.rows()) {
            return Err(Error::shape(
                arg,
                format!(
                    "[2B, ..] = [{}, ..] (chosen rows first, then rejected)",
                    self.rows()
                ),
                dims,
            ));
        }
        Ok(())
    }

    /// The row of pair `pair`'s chosen side.
    pub fn chosen_row(&self, pair: usize) -> usize {
        pair
    }

    /// The row of pair `pair`'s rejected side.
    pub fn rejected_row(&self, pair: usize) -> usize {
        self.pairs + pair
    }

    /// The rows of a source (a generation, a dataset batch) to gather, in layout order: the
    /// chosen rows, then the rejected rows (pair `i` is `(chosen[i], rejected[i])`).
    /// [`Error::Shape`] naming `rejected` when the two lists differ in length (in every build
    /// profile).
    pub fn try_source_rows(chosen: &[usize], rejected: &[usize]) -> Result<Vec<usize>> {
        if chosen.len() != rejected.len() {
            return Err(Error::shape(
                "rejected",
                format!("[{}] (one rejected row per chosen row)", chosen.len()),
                &[rejected.len()],
            ));
        }
        Ok(chosen.iter().chain(rejected).copied().collect())
    }

    crate::error::panicking! {
        /// Panicking form of [`try_source_rows`](Self::try_source_rows).
        pub fn source_rows(chosen: &[usize], rejected: &[usize]) -> Vec<usize> = Self::try_source_rows;
    }

    /// Splits a stacked tensor `[2B, ..]` into its chosen and rejected halves `[B, ..]`
    /// (the caller checks the row count, e.g. with [`check_rows`](Self::check_rows)).
    pub fn split<const D: usize, K: Basic>(
        &self,
        stacked: Tensor<D, K>,
    ) -> (Tensor<D, K>, Tensor<D, K>) {
        let b = self.pairs;
        (stacked.clone().narrow(0, 0, b), stacked.narrow(0, b, b))
    }

    /// Splits stacked per-token log-probs `[2B, T]` into chosen and rejected `[B, T]`.
    pub fn split_tokens(&self, stacked: &GatheredLogps) -> (GatheredLogps, GatheredLogps) {
        let b = self.pairs;
        (stacked.narrow_rows(0, b), stacked.narrow_rows(b, b))
    }

    /// Stacks two halves `[B, ..]` into `[2B, ..]`, chosen first.
    pub fn stack<const D: usize, K: Basic>(
        chosen: Tensor<D, K>,
        rejected: Tensor<D, K>,
    ) -> Tensor<D, K> {
        Tensor::cat(vec![chosen, rejected], 0)
    }
}
