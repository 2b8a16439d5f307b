//! A model judge for AI feedback (Bai et al. 2022, *Constitutional AI*, §4.1; TRL's former
//! `PairRMJudge` / `HfPairwiseJudge`): any [`CausalLm`] judges by its **next-token
//! probabilities** at the end of a judging prompt, not by generated text.
//!
//! - Pairwise ([`ModelJudge::try_pairwise`]): the prompt shows a principle and two completions
//!   (`first` as option A, `second` as option B); the soft label is the probability of the A
//!   token normalized over the two choice tokens, `P(A) = p_A / (p_A + p_B)`. With
//!   `both_orders` (default) the prompt is also built with the completions swapped and the two
//!   readings averaged, `P(first better) = (P_AB(A) + P_BA(B)) / 2`, which cancels a judge's
//!   position bias; then swapping `first` and `second` gives exactly `1 - P`.
//! - Pointwise ([`ModelJudge::try_pointwise`]): the probability of a "yes" token (normalized
//!   over "yes" and "no" when a "no" token is given, else over the whole vocabulary).
//!
//! Prompts are token ids assembled from a [`JudgeTemplate`] (literal token runs and slots for
//! the principle and the completions; render a chat template with
//! `burn_rlhf::data::HfTokenizer` and split it at the slots for a chat model). Every item of
//! a call goes through **one** batched forward (left-padded) and **one** host read.
//!
//! The soft labels feed the losses directly: `PreferenceBatch::with_preference_probs` (DPO
//! `sigmoid`) and `BradleyTerryLoss::forward_soft` (reward models).

use burn::tensor::Tensor;

use super::{CausalLm, Prompts};
use crate::error::Error;

/// A slot of a [`JudgeTemplate`], filled per item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeSlot {
    /// The principle (a constitution's rule, as token ids).
    Principle,
    /// The user prompt the completions answer.
    Prompt,
    /// Pairwise: the completion shown as option A.
    OptionA,
    /// Pairwise: the completion shown as option B.
    OptionB,
    /// Pointwise: the completion judged.
    Completion,
}

/// One piece of a [`JudgeTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JudgePiece {
    /// Literal token ids.
    Tokens(Vec<i64>),
    /// A slot.
    Slot(JudgeSlot),
}

/// A judging prompt as token pieces; the judge reads the next-token distribution after the
/// last piece. Pairwise templates hold [`JudgeSlot::OptionA`] and [`JudgeSlot::OptionB`] once
/// each, pointwise templates [`JudgeSlot::Completion`] once; [`JudgeSlot::Principle`] and
/// [`JudgeSlot::Prompt`] are optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgeTemplate {
    pieces: Vec<JudgePiece>,
}

impl JudgeTemplate {
    /// A template from its pieces (checked when a judge call uses it).
    pub fn new(pieces: Vec<JudgePiece>) -> Self {
        Self { pieces }
    }

    /// The pieces.
    pub fn pieces(&self) -> &[JudgePiece] {
        &self.pieces
    }

    fn count(&self, slot: JudgeSlot) -> usize {
        self.pieces
            .iter()
            .filter(|p| **p == JudgePiece::Slot(slot))
            .count()
    }

    /// Checks that the template has exactly one of each `needed` slot and no slot of the
    /// other kind, and that it is not empty.
    fn check(&self, needed: &[JudgeSlot], forbidden: &[JudgeSlot]) -> crate::Result<()> {
        for &slot in needed {
            let n = self.count(slot);
            if n != 1 {
                return Err(Error::config(
                    "template",
                    format!("needs the slot {slot:?} exactly once"),
                    format!("{n} times"),
                ));
            }
        }
        for &slot in forbidden {
            if self.count(slot) > 0 {
                return Err(Error::config(
                    "template",
                    format!("{slot:?} has no value in this kind of judgment"),
                    format!("{:?}", self.pieces),
                ));
            }
        }
        Ok(())
    }

    /// The judging prompt's token ids with the slots filled.
    fn fill(&self, principle: &[i64], prompt: &[i64], a: &[i64], b: &[i64]) -> Vec<i64> {
        let mut ids = Vec::new();
        for piece in &self.pieces {
            match piece {
                JudgePiece::Tokens(t) => ids.extend_from_slice(t),
                JudgePiece::Slot(JudgeSlot::Principle) => ids.extend_from_slice(principle),
                JudgePiece::Slot(JudgeSlot::Prompt) => ids.extend_from_slice(prompt),
                JudgePiece::Slot(JudgeSlot::OptionA | JudgeSlot::Completion) => {
                    ids.extend_from_slice(a)
                }
                JudgePiece::Slot(JudgeSlot::OptionB) => ids.extend_from_slice(b),
            }
        }
        ids
    }
}

/// One pairwise judgment: which of `first` and `second` better follows `principle`.
#[derive(Debug, Clone, Copy)]
pub struct PairwiseItem<'a> {
    /// The principle's token ids (may be empty when the template has no principle slot).
    pub principle: &'a [i64],
    /// The user prompt's token ids (may be empty when the template has no prompt slot).
    pub prompt: &'a [i64],
    /// The first completion (option A in the first reading).
    pub first: &'a [i64],
    /// The second completion.
    pub second: &'a [i64],
}

/// One pointwise judgment of `completion` under `principle`.
#[derive(Debug, Clone, Copy)]
pub struct PointwiseItem<'a> {
    /// The principle's token ids (may be empty when the template has no principle slot).
    pub principle: &'a [i64],
    /// The user prompt's token ids (may be empty when the template has no prompt slot).
    pub prompt: &'a [i64],
    /// The completion judged.
    pub completion: &'a [i64],
}

/// A model judge: choice tokens, padding and whether both orders are read. See the module
/// docs.
#[derive(Debug, Clone)]
pub struct ModelJudge {
    /// Token ids of the two answers "A" and "B" (pairwise).
    pub choice_tokens: [i64; 2],
    /// Token id of "yes" and, optionally, "no" (pointwise).
    pub yes_no_tokens: (i64, Option<i64>),
    /// Token id used for left padding (masked out of attention).
    pub pad_token_id: i64,
    /// Average both presentation orders (default true).
    pub both_orders: bool,
}

impl ModelJudge {
    /// A judge with choice tokens `a`, `b`, pointwise tokens `yes` (and `no`), padding
    /// `pad_token_id`, both orders averaged.
    pub fn new(
        choice_tokens: [i64; 2],
        yes_no_tokens: (i64, Option<i64>),
        pad_token_id: i64,
    ) -> Self {
        Self {
            choice_tokens,
            yes_no_tokens,
            pad_token_id,
            both_orders: true,
        }
    }

    /// The same judge reading one order only (position bias not cancelled).
    pub fn with_both_orders(mut self, both_orders: bool) -> Self {
        self.both_orders = both_orders;
        self
    }

    /// `P(first better than second)` per item, in `[0, 1]`.
    ///
    /// Errors: a template without exactly one `OptionA` and one `OptionB` slot, or with a
    /// `Completion` slot ([`Error::Config`] naming `template`); equal choice tokens
    /// ([`Error::Config`] naming `choice_tokens`); no item, or an item with an empty
    /// completion ([`Error::Empty`] naming `items` and the item); a choice token outside the
    /// model's vocabulary ([`Error::Config`]); a model whose logits are not `[R, T, V]`
    /// ([`Error::Shape`]).
    pub fn try_pairwise<M: CausalLm + ?Sized>(
        &self,
        model: &M,
        template: &JudgeTemplate,
        items: &[PairwiseItem<'_>],
        device: &burn::tensor::Device,
    ) -> crate::Result<Vec<f64>> {
        template.check(
            &[JudgeSlot::OptionA, JudgeSlot::OptionB],
            &[JudgeSlot::Completion],
        )?;
        let [a, b] = self.choice_tokens;
        if a == b {
            return Err(Error::config(
                "choice_tokens",
                "the two answers need different tokens",
                format!("{:?}", self.choice_tokens),
            ));
        }
        crate::error::check_non_empty("items", items.len(), "no pair to judge")?;
        for (i, item) in items.iter().enumerate() {
            for (what, c) in [("first", item.first), ("second", item.second)] {
                if c.is_empty() {
                    return Err(Error::Empty {
                        arg: "items",
                        what: format!("item {i}: the {what} completion has no token"),
                    });
                }
            }
        }
        let mut rows = Vec::with_capacity(items.len() * 2);
        for item in items {
            rows.push(template.fill(item.principle, item.prompt, item.first, item.second));
            if self.both_orders {
                rows.push(template.fill(item.principle, item.prompt, item.second, item.first));
            }
        }
        let per_row = self.choice_probs(model, &rows, (a, Some(b)), device)?;
        Ok(if self.both_orders {
            // Reading 1: P(A) with first as A; reading 2: P(B) with first as B.
            per_row
                .chunks(2)
                .map(|r| 0.5 * (r[0] + (1.0 - r[1])))
                .collect()
        } else {
            per_row
        })
    }

    /// `P(yes)` per item, in `[0, 1]`: normalized over the "yes" and "no" tokens when the
    /// judge has a "no" token, else over the whole vocabulary.
    ///
    /// Errors: as [`try_pairwise`](Self::try_pairwise), for a template with exactly one
    /// `Completion` slot and no option slots.
    pub fn try_pointwise<M: CausalLm + ?Sized>(
        &self,
        model: &M,
        template: &JudgeTemplate,
        items: &[PointwiseItem<'_>],
        device: &burn::tensor::Device,
    ) -> crate::Result<Vec<f64>> {
        template.check(
            &[JudgeSlot::Completion],
            &[JudgeSlot::OptionA, JudgeSlot::OptionB],
        )?;
        let (yes, no) = self.yes_no_tokens;
        if no == Some(yes) {
            return Err(Error::config(
                "yes_no_tokens",
                "yes and no need different tokens",
                format!("{:?}", self.yes_no_tokens),
            ));
        }
        crate::error::check_non_empty("items", items.len(), "no completion to judge")?;
        if let Some(i) = items.iter().position(|it| it.completion.is_empty()) {
            return Err(Error::Empty {
                arg: "items",
                what: format!("item {i}: the completion has no token"),
            });
        }
        let rows: Vec<Vec<i64>> = items
            .iter()
            .map(|it| template.fill(it.principle, it.prompt, it.completion, &[]))
            .collect();
        self.choice_probs(model, &rows, (yes, no), device)
    }

    /// For each row, the next-token probability after its last token of `first`, normalized
    /// over `first` and `second` (over the vocabulary when `second` is `None`). One forward,
    /// one host read.
    fn choice_probs<M: CausalLm + ?Sized>(
        &self,
        model: &M,
        rows: &[Vec<i64>],
        (first, second): (i64, Option<i64>),
        device: &burn::tensor::Device,
    ) -> crate::Result<Vec<f64>> {
        let prompts = Prompts::try_left_padded(rows, self.pad_token_id, device)?;
        let [r, t] = prompts.ids.dims();
        let logits = model.logits(prompts.ids, prompts.attention_mask);
        let [lr, lt, v] = logits.dims();
        if [lr, lt] != [r, t] || v == 0 {
            return Err(Error::shape(
                "logits",
                format!(
                    "[R, T, V] = [{r}, {t}, V >= 1] (the model's logits of the judging prompts)"
                ),
                &[lr, lt, v],
            ));
        }
        for (field, token) in [("choice token", Some(first)), ("choice token", second)] {
            if let Some(token) = token
                && (token < 0 || token as usize >= v)
            {
                return Err(Error::config(
                    field,
                    format!("must be a token id of the judge's vocabulary [0, {v})"),
                    token,
                ));
            }
        }
        // Left padding: the last column is every row's last real token.
        let last = logits.narrow(1, t - 1, 1).reshape([r, v]);
        let logps = crate::reduce::log_softmax(last, 1);
        let column = |token: i64| logps.clone().narrow(1, token as usize, 1).reshape([r]);
        let probs: Tensor<1> = match second {
            // p_first / (p_first + p_second) = sigmoid(lp_first - lp_second)
            Some(second) => crate::losses::stable::sigmoid(column(first) - column(second)),
            None => column(first).exp(),
        };
        Ok(crate::host_reads::floats(probs, "judge probabilities")?)
    }
}
