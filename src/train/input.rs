//! The adapters' inputs, the token items they are made from, and a padding batcher for burn's
//! `DataLoaderBuilder`.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::IGNORE_INDEX;

/// A batch of `B` preference pairs as token ids (the input of [`PreferenceModel`](super::PreferenceModel)).
///
/// # Shapes
/// - `chosen_ids`, `chosen_labels`: `[B, Tc]`; `rejected_ids`, `rejected_labels`: `[B, Tr]`
///   (labels: the ids with -100 on prompt and padding)
/// - `ref_chosen_logps`, `ref_rejected_logps`: `[B]` (precomputed reference log-probs, or
///   `None` to let the adapter's frozen reference compute them)
#[derive(Debug, Clone)]
pub struct PreferenceInput {
    /// Chosen rows (prompt + chosen completion).
    pub chosen_ids: Tensor<2, Int>,
    /// Labels of the chosen rows.
    pub chosen_labels: Tensor<2, Int>,
    /// Rejected rows (prompt + rejected completion).
    pub rejected_ids: Tensor<2, Int>,
    /// Labels of the rejected rows.
    pub rejected_labels: Tensor<2, Int>,
    /// Precomputed reference log-probs of the chosen completions.
    pub ref_chosen_logps: Option<Tensor<1>>,
    /// Precomputed reference log-probs of the rejected completions.
    pub ref_rejected_logps: Option<Tensor<1>>,
}

/// A batch of `N` unpaired examples with binary feedback (the input of [`KtoModel`](super::KtoModel)).
///
/// # Shapes
/// - `ids`, `labels`: `[N, T]`; `desirable`: `[N]`
/// - `kl_ids`, `kl_labels`: `[N, Tk]`, the mismatched (prompt, completion) rows of KTO's KL
///   estimate (TRL: each prompt with the next example's completion)
/// - `ref_logps`, `ref_kl_logps`: `[N]`, or `None` for the adapter's reference to compute
#[derive(Debug, Clone)]
pub struct UnpairedInput {
    /// Rows (prompt + completion).
    pub ids: Tensor<2, Int>,
    /// Labels of the rows.
    pub labels: Tensor<2, Int>,
    /// Whether each completion is desirable.
    pub desirable: Tensor<1, Bool>,
    /// Mismatched rows for the KL estimate (`kto` needs them; `apo_zero_unpaired` does not).
    pub kl_ids: Option<Tensor<2, Int>>,
    /// Labels of the mismatched rows.
    pub kl_labels: Option<Tensor<2, Int>>,
    /// Precomputed reference log-probs of the rows.
    pub ref_logps: Option<Tensor<1>>,
    /// Precomputed reference log-probs of the mismatched rows.
    pub ref_kl_logps: Option<Tensor<1>>,
}

/// A batch of SFT rows (the input of [`SftModel`](super::SftModel)).
///
/// # Shapes
/// - `ids`, `labels`: `[N, T]` (labels -100 where no loss is taken)
#[derive(Debug, Clone)]
pub struct SftInput {
    /// Rows.
    pub ids: Tensor<2, Int>,
    /// Labels.
    pub labels: Tensor<2, Int>,
}

/// A batch of `B` preference pairs for a reward model (the input of [`RewardModel`](super::RewardModel)).
///
/// # Shapes
/// - `chosen_ids`, `chosen_mask`: `[B, Tc]`; `rejected_ids`, `rejected_mask`: `[B, Tr]`
/// - `margin`: `[B]` (TRL's optional `margin` column)
#[derive(Debug, Clone)]
pub struct RewardInput {
    /// Chosen sequences.
    pub chosen_ids: Tensor<2, Int>,
    /// True on the real tokens of the chosen sequences.
    pub chosen_mask: Tensor<2, Bool>,
    /// Rejected sequences.
    pub rejected_ids: Tensor<2, Int>,
    /// True on the real tokens of the rejected sequences.
    pub rejected_mask: Tensor<2, Bool>,
    /// Per-pair margins, if any.
    pub margin: Option<Tensor<1>>,
}

/// One preference pair as token ids (a row of a TRL preference dataset, tokenized).
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceItem {
    /// Prompt tokens (not scored).
    pub prompt: Vec<i64>,
    /// Chosen completion tokens.
    pub chosen: Vec<i64>,
    /// Rejected completion tokens.
    pub rejected: Vec<i64>,
    /// Precomputed reference log-probs `(chosen, rejected)`; all items of a batch have them or
    /// none does.
    pub ref_logps: Option<(f64, f64)>,
}

/// One unpaired example as token ids (a row of a TRL KTO dataset, tokenized).
#[derive(Debug, Clone, PartialEq)]
pub struct UnpairedItem {
    /// Prompt tokens.
    pub prompt: Vec<i64>,
    /// Completion tokens.
    pub completion: Vec<i64>,
    /// TRL's `label`: the completion is desirable.
    pub desirable: bool,
}

/// One SFT example: the loss is taken on the completion only (all tokens when the prompt is
/// empty).
#[derive(Debug, Clone, PartialEq)]
pub struct SftItem {
    /// Prompt tokens (not scored).
    pub prompt: Vec<i64>,
    /// Completion tokens.
    pub completion: Vec<i64>,
}

/// One reward-model pair: whole chosen and rejected sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardItem {
    /// Chosen sequence.
    pub chosen: Vec<i64>,
    /// Rejected sequence.
    pub rejected: Vec<i64>,
    /// Optional margin.
    pub margin: Option<f64>,
}

/// Pads token items into the adapters' inputs (right padding with `pad_id`, labels -100 on
/// prompt and padding). Chosen and rejected rows share one length, so the adapters can run
/// them as one stacked `[2B, T]` forward.
#[derive(Debug, Clone, Copy)]
pub struct TokenBatcher {
    /// Id written into padding positions (never scored).
    pub pad_id: i64,
}

impl TokenBatcher {
    /// A batcher padding with `pad_id`.
    pub fn new(pad_id: i64) -> Self {
        Self { pad_id }
    }

    fn ids(&self, rows: &[Vec<i64>], t: usize, device: &Device) -> Tensor<2, Int> {
        let mut flat = Vec::with_capacity(rows.len() * t);
        for r in rows {
            flat.extend_from_slice(r);
            flat.extend(std::iter::repeat_n(self.pad_id, t - r.len()));
        }
        Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
    }

    /// Labels: -100 on the first `prompt_lens[i]` tokens and on padding.
    fn labels(
        rows: &[Vec<i64>],
        prompt_lens: &[usize],
        t: usize,
        device: &Device,
    ) -> Tensor<2, Int> {
        let mut flat = Vec::with_capacity(rows.len() * t);
        for (r, &p) in rows.iter().zip(prompt_lens) {
            flat.extend((0..t).map(|i| {
                if i < p || i >= r.len() {
                    IGNORE_INDEX
                } else {
                    r[i]
                }
            }));
        }
        Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
    }

    fn mask(rows: &[Vec<i64>], t: usize, device: &Device) -> Tensor<2, Bool> {
        let flat: Vec<bool> = rows
            .iter()
            .flat_map(|r| (0..t).map(move |i| i < r.len()))
            .collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
    }
}

fn longest(rows: &[&[Vec<i64>]]) -> usize {
    rows.iter()
        .flat_map(|r| r.iter().map(Vec::len))
        .max()
        .unwrap_or(0)
        .max(1)
}

fn floats(values: Vec<f64>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

fn concat(a: &[i64], b: &[i64]) -> Vec<i64> {
    a.iter().chain(b).copied().collect()
}

impl Batcher<PreferenceItem, PreferenceInput> for TokenBatcher {
    /// # Panics
    /// If some items carry reference log-probs and others do not.
    fn batch(&self, items: Vec<PreferenceItem>, device: &Device) -> PreferenceInput {
        let chosen: Vec<_> = items.iter().map(|i| concat(&i.prompt, &i.chosen)).collect();
        let rejected: Vec<_> = items
            .iter()
            .map(|i| concat(&i.prompt, &i.rejected))
            .collect();
        let prompts: Vec<_> = items.iter().map(|i| i.prompt.len()).collect();
        let t = longest(&[&chosen, &rejected]);
        let with_ref = items.iter().filter(|i| i.ref_logps.is_some()).count();
        assert!(
            with_ref == 0 || with_ref == items.len(),
            "burn-rlhf: {with_ref} of {} preference items carry reference log-probs; give them for all or none",
            items.len()
        );
        let (ref_c, ref_r) = if with_ref > 0 {
            let (c, r): (Vec<f64>, Vec<f64>) = items.iter().filter_map(|i| i.ref_logps).unzip();
            (Some(floats(c, device)), Some(floats(r, device)))
        } else {
            (None, None)
        };
        PreferenceInput {
            chosen_ids: self.ids(&chosen, t, device),
            chosen_labels: Self::labels(&chosen, &prompts, t, device),
            rejected_ids: self.ids(&rejected, t, device),
            rejected_labels: Self::labels(&rejected, &prompts, t, device),
            ref_chosen_logps: ref_c,
            ref_rejected_logps: ref_r,
        }
    }
}

impl Batcher<UnpairedItem, UnpairedInput> for TokenBatcher {
    /// The KL rows pair each prompt with the next item's completion (the last with the
    /// first), as TRL's KTO does within a batch; a batch of one item has none.
    fn batch(&self, items: Vec<UnpairedItem>, device: &Device) -> UnpairedInput {
        let n = items.len();
        let rows: Vec<_> = items
            .iter()
            .map(|i| concat(&i.prompt, &i.completion))
            .collect();
        let prompts_of: Vec<&[i64]> = items.iter().map(|i| i.prompt.as_slice()).collect();
        let completions_of: Vec<&[i64]> = items.iter().map(|i| i.completion.as_slice()).collect();
        let kl: Vec<_> = crate::losses::kto_mismatched_pairs(&prompts_of, &completions_of)
            .map(|pairs| pairs.into_iter().map(|(p, c)| concat(p, c)).collect())
            .unwrap_or_default();
        let prompts: Vec<_> = items.iter().map(|i| i.prompt.len()).collect();
        let desirable: Vec<bool> = items.iter().map(|i| i.desirable).collect();
        let t = longest(&[&rows]);
        let tk = longest(&[&kl]);
        let (kl_ids, kl_labels) = if n >= 2 {
            (
                Some(self.ids(&kl, tk, device)),
                Some(Self::labels(&kl, &prompts, tk, device)),
            )
        } else {
            (None, None)
        };
        UnpairedInput {
            ids: self.ids(&rows, t, device),
            labels: Self::labels(&rows, &prompts, t, device),
            desirable: Tensor::from_data(TensorData::new(desirable, [n]), device),
            kl_ids,
            kl_labels,
            ref_logps: None,
            ref_kl_logps: None,
        }
    }
}

impl Batcher<SftItem, SftInput> for TokenBatcher {
    fn batch(&self, items: Vec<SftItem>, device: &Device) -> SftInput {
        let rows: Vec<_> = items
            .iter()
            .map(|i| concat(&i.prompt, &i.completion))
            .collect();
        let prompts: Vec<_> = items.iter().map(|i| i.prompt.len()).collect();
        let t = longest(&[&rows]);
        SftInput {
            ids: self.ids(&rows, t, device),
            labels: Self::labels(&rows, &prompts, t, device),
        }
    }
}

impl Batcher<RewardItem, RewardInput> for TokenBatcher {
    /// # Panics
    /// If some items carry a margin and others do not.
    fn batch(&self, items: Vec<RewardItem>, device: &Device) -> RewardInput {
        let chosen: Vec<_> = items.iter().map(|i| i.chosen.clone()).collect();
        let rejected: Vec<_> = items.iter().map(|i| i.rejected.clone()).collect();
        let t = longest(&[&chosen, &rejected]);
        let margins: Vec<f64> = items.iter().filter_map(|i| i.margin).collect();
        assert!(
            margins.is_empty() || margins.len() == items.len(),
            "burn-rlhf: {} of {} reward items carry a margin; give it for all or none",
            margins.len(),
            items.len()
        );
        RewardInput {
            chosen_ids: self.ids(&chosen, t, device),
            chosen_mask: Self::mask(&chosen, t, device),
            rejected_ids: self.ids(&rejected, t, device),
            rejected_mask: Self::mask(&rejected, t, device),
            margin: (!margins.is_empty()).then(|| floats(margins, device)),
        }
    }
}
