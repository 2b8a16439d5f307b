//! Collation into padded batches, as TRL 1.16's collators (`DataCollatorForPreference`,
//! `DataCollatorForUnpairedPreference`, `DataCollatorForLanguageModeling`): each sequence is
//! `prompt + completion`, cut to `max_length`, right-padded with the pad id to the longest
//! row (or a multiple of `pad_to_multiple_of`). Labels are the ids where the completion mask
//! is 1 and `-100` elsewhere, in input coordinates: score them with
//! [`LabelAlignment::CausalShift`](crate::logps::LabelAlignment::CausalShift).

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::preprocess::{PreferenceTokens, SftExample, TruncationMode, UnpairedTokens};

/// A right-padded batch on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedBatch {
    /// Token ids `[rows, cols]`, row-major.
    pub input_ids: Vec<i64>,
    /// 1 on real tokens `[rows, cols]`.
    pub attention_mask: Vec<i64>,
    /// Labels `[rows, cols]`: the id on scored tokens, `-100` elsewhere (padding included).
    pub labels: Vec<i64>,
    /// Number of rows.
    pub rows: usize,
    /// Padded length.
    pub cols: usize,
}

/// The tensors of a [`PaddedBatch`].
#[derive(Debug, Clone)]
pub struct BatchTensors {
    /// `[B, T]` token ids.
    pub input_ids: Tensor<2, Int>,
    /// `[B, T]`, `true` on real tokens.
    pub attention_mask: Tensor<2, Bool>,
    /// `[B, T]` labels with `-100` on positions that are not scored.
    pub labels: Tensor<2, Int>,
}

impl PaddedBatch {
    /// Pads rows of `(ids, labels)` to one length.
    pub fn right_padded(
        rows: &[(Vec<u32>, Vec<i64>)],
        pad_token_id: u32,
        pad_to_multiple_of: Option<usize>,
    ) -> Self {
        let longest = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let cols = match pad_to_multiple_of {
            Some(m) if m > 1 => longest.div_ceil(m) * m,
            _ => longest,
        };
        let mut batch = Self {
            input_ids: Vec::with_capacity(rows.len() * cols),
            attention_mask: Vec::with_capacity(rows.len() * cols),
            labels: Vec::with_capacity(rows.len() * cols),
            rows: rows.len(),
            cols,
        };
        for (ids, labels) in rows {
            let pad = cols - ids.len();
            batch.input_ids.extend(ids.iter().map(|&id| i64::from(id)));
            batch
                .input_ids
                .extend(std::iter::repeat_n(i64::from(pad_token_id), pad));
            batch
                .attention_mask
                .extend(std::iter::repeat_n(1, ids.len()));
            batch.attention_mask.extend(std::iter::repeat_n(0, pad));
            batch.labels.extend_from_slice(labels);
            batch
                .labels
                .extend(std::iter::repeat_n(crate::IGNORE_INDEX, pad));
        }
        batch
    }

    /// One row of the ids.
    pub fn row_ids(&self, row: usize) -> &[i64] {
        &self.input_ids[row * self.cols..(row + 1) * self.cols]
    }

    /// The completion mask (1 where the label is scored), as TRL's `completion_mask`.
    pub fn completion_mask(&self) -> Vec<i64> {
        self.labels
            .iter()
            .map(|&l| i64::from(l != crate::IGNORE_INDEX))
            .collect()
    }

    /// The batch as tensors on `device`.
    pub fn to_tensors(&self, device: &Device) -> BatchTensors {
        let shape = [self.rows, self.cols];
        BatchTensors {
            input_ids: Tensor::from_data(TensorData::new(self.input_ids.clone(), shape), device),
            attention_mask: Tensor::<2, Int>::from_data(
                TensorData::new(self.attention_mask.clone(), shape),
                device,
            )
            .equal_elem(1),
            labels: Tensor::from_data(TensorData::new(self.labels.clone(), shape), device),
        }
    }
}

/// Padding and truncation of a collator (TRL's collator arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collator {
    /// Padding id (the tokenizer's pad token, else its EOS: see
    /// [`HfTokenizer::pad_token_id`](super::HfTokenizer::pad_token_id)).
    pub pad_token_id: u32,
    /// Longest sequence kept; `None` keeps everything. TRL's configs default to 1024.
    pub max_length: Option<usize>,
    /// Which end is kept (DPO and SFT; KTO always keeps the start).
    pub truncation_mode: TruncationMode,
    /// Pad the length up to a multiple of this.
    pub pad_to_multiple_of: Option<usize>,
}

impl Collator {
    /// A collator with TRL's defaults: `max_length` 1024, `keep_start`, no multiple.
    pub fn new(pad_token_id: u32) -> Self {
        Self {
            pad_token_id,
            max_length: Some(1024),
            truncation_mode: TruncationMode::KeepStart,
            pad_to_multiple_of: None,
        }
    }

    /// `prompt + completion`, labelled on the completion, then cut.
    fn sequence(
        &self,
        prompt: &[u32],
        completion: &[u32],
        mode: TruncationMode,
    ) -> (Vec<u32>, Vec<i64>) {
        let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
        let labels: Vec<i64> = std::iter::repeat_n(crate::IGNORE_INDEX, prompt.len())
            .chain(completion.iter().map(|&id| i64::from(id)))
            .collect();
        (
            mode.apply(&ids, self.max_length),
            mode.apply(&labels, self.max_length),
        )
    }

    /// DPO batch `[2B, T]`: the `B` chosen rows, then the `B` rejected rows (TRL's layout, and
    /// [`PairedLayout`](crate::losses::PairedLayout)'s).
    pub fn preference(&self, rows: &[PreferenceTokens]) -> PaddedBatch {
        let mut sequences: Vec<_> = rows
            .iter()
            .map(|r| self.sequence(&r.prompt_ids, &r.chosen_ids, self.truncation_mode))
            .collect();
        sequences.extend(
            rows.iter()
                .map(|r| self.sequence(&r.prompt_ids, &r.rejected_ids, self.truncation_mode)),
        );
        PaddedBatch::right_padded(&sequences, self.pad_token_id, self.pad_to_multiple_of)
    }

    /// KTO batch `[B, T]` and the labels (`true` = desirable). KTO keeps the start.
    pub fn unpaired(&self, rows: &[UnpairedTokens]) -> (PaddedBatch, Vec<bool>) {
        let sequences: Vec<_> = rows
            .iter()
            .map(|r| self.sequence(&r.prompt_ids, &r.completion_ids, TruncationMode::KeepStart))
            .collect();
        (
            PaddedBatch::right_padded(&sequences, self.pad_token_id, self.pad_to_multiple_of),
            rows.iter().map(|r| r.label).collect(),
        )
    }

    /// KTO's KL batch `[B, T]`: each prompt with its mismatched completion
    /// ([`add_kl_completions`](super::add_kl_completions)); `None` when the rows have none.
    pub fn unpaired_kl(&self, rows: &[UnpairedTokens]) -> Option<PaddedBatch> {
        let sequences: Option<Vec<_>> = rows
            .iter()
            .map(|r| {
                r.kl_completion_ids
                    .as_ref()
                    .map(|kl| self.sequence(&r.prompt_ids, kl, TruncationMode::KeepStart))
            })
            .collect();
        sequences.map(|s| PaddedBatch::right_padded(&s, self.pad_token_id, self.pad_to_multiple_of))
    }

    /// SFT batch `[B, T]` of preprocessed rows ([`prepare_sft`](super::prepare_sft) already
    /// cut them; the collator pads, labels with `-100`).
    pub fn sft(&self, rows: &[SftExample]) -> PaddedBatch {
        let sequences: Vec<_> = rows
            .iter()
            .map(|r| (r.input_ids.clone(), r.labels.clone()))
            .collect();
        PaddedBatch::right_padded(&sequences, self.pad_token_id, self.pad_to_multiple_of)
    }
}

/// Tokenized TRL rows as burn-train items (feature `train`), for the
/// [`TokenBatcher`](crate::train::TokenBatcher) of the DPO-family and KTO adapters. The
/// batcher right-pads and labels the prompt `-100` as [`Collator`] does, but does not cut to
/// `max_length`: cut the rows first (or use [`Collator`]) where TRL would.
#[cfg(feature = "train")]
mod train_items {
    use super::super::preprocess::{PreferenceTokens, UnpairedTokens};
    use crate::train::{PreferenceItem, UnpairedItem};

    fn ids(tokens: &[u32]) -> Vec<i64> {
        tokens.iter().map(|&id| i64::from(id)).collect()
    }

    impl From<&PreferenceTokens> for PreferenceItem {
        fn from(row: &PreferenceTokens) -> Self {
            PreferenceItem {
                prompt: ids(&row.prompt_ids),
                chosen: ids(&row.chosen_ids),
                rejected: ids(&row.rejected_ids),
                ref_logps: None,
            }
        }
    }

    impl From<&UnpairedTokens> for UnpairedItem {
        fn from(row: &UnpairedTokens) -> Self {
            UnpairedItem {
                prompt: ids(&row.prompt_ids),
                completion: ids(&row.completion_ids),
                desirable: row.label,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use burn::data::dataloader::batcher::Batcher;
        use burn::tensor::{Device, Int, Tensor};

        use super::super::{Collator, PreferenceTokens};
        use crate::train::{PreferenceItem, TokenBatcher};

        fn host(t: Tensor<2, Int>) -> Vec<i64> {
            t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
        }

        /// The burn-train batcher and the TRL collator give the same ids and labels for the
        /// same rows (no truncation): two independent paddings of one layout.
        #[test]
        fn token_batcher_and_collator_agree() {
            let rows = vec![
                PreferenceTokens {
                    prompt_ids: vec![5, 6, 7],
                    chosen_ids: vec![8, 9],
                    rejected_ids: vec![10],
                },
                PreferenceTokens {
                    prompt_ids: vec![11],
                    chosen_ids: vec![12],
                    rejected_ids: vec![13, 14, 15],
                },
            ];
            let device = Device::flex();
            let items: Vec<PreferenceItem> = rows.iter().map(PreferenceItem::from).collect();
            let input = TokenBatcher::new(0).batch(items, &device);
            let batch = Collator {
                max_length: None,
                ..Collator::new(0)
            }
            .preference(&rows);
            let stacked = |a: Tensor<2, Int>, b: Tensor<2, Int>| host(Tensor::cat(vec![a, b], 0));
            assert_eq!(
                stacked(input.chosen_ids, input.rejected_ids),
                batch.input_ids
            );
            assert_eq!(
                stacked(input.chosen_labels, input.rejected_labels),
                batch.labels
            );
        }
    }
}
