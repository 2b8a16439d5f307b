//! TRL 1.16's dataset preprocessing, row by row: how `DPOTrainer`, `KTOTrainer`,
//! `SFTTrainer` and the online trainers (`GRPOTrainer`, `RLOOTrainer`) turn a row into token
//! ids (their `_prepare_dataset` / `tokenize_fn`, `trl/trainer/*_trainer.py`).
//!
//! - **Standard rows** get the EOS *text* appended to each completion (`chosen`, `rejected`,
//!   `completion`, SFT's `text`) unless it already ends with it, then `prompt` and
//!   `prompt + completion` are tokenized as plain text (with the tokenizer's own special
//!   tokens, e.g. Llama's BOS).
//! - **Conversational rows** are rendered with the chat template: the prompt with
//!   `add_generation_prompt=True`, prompt + completion without; no EOS is appended (the
//!   template ends the turn).
//! - The completion starts where the tokenized prompt and the tokenized prompt + completion
//!   diverge (`common_prefix_length`), which is not always after the whole prompt (a BPE merge
//!   across the boundary, or a template that renders the prompt alone differently). For a
//!   preference row the shorter of the two (chosen, rejected) prefixes is used.

use super::rows::{Message, PreferenceRow, PromptRow, SftRow, Text, UnpairedRow, extract_prompt};
use super::tokenizer::{ChatOptions, HfTokenizer};

/// A tokenized preference row (TRL's `prompt_ids`, `chosen_ids`, `rejected_ids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceTokens {
    /// Prompt ids (up to where the prompt and the completions diverge).
    pub prompt_ids: Vec<u32>,
    /// Chosen completion ids.
    pub chosen_ids: Vec<u32>,
    /// Rejected completion ids.
    pub rejected_ids: Vec<u32>,
}

/// A tokenized unpaired row (TRL's `prompt_ids`, `completion_ids`, `label`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpairedTokens {
    /// Prompt ids.
    pub prompt_ids: Vec<u32>,
    /// Completion ids.
    pub completion_ids: Vec<u32>,
    /// `true` when desirable.
    pub label: bool,
    /// The mismatched completion of KTO's KL term (see [`add_kl_completions`]).
    pub kl_completion_ids: Option<Vec<u32>>,
}

/// KTO's KL completions, as TRL 1.16's `KTOTrainer` builds them (`calculate_KL`): within each
/// block of `per_device_train_batch_size` rows, completions are rotated by one,
/// `(x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1})`. Apply it after dropping rows, as TRL does.
/// The KL term couples the rows of a batch: batch the rows in the same blocks.
pub fn add_kl_completions(rows: &mut [UnpairedTokens], per_device_train_batch_size: usize) {
    for block in rows.chunks_mut(per_device_train_batch_size.max(1)) {
        let n = block.len();
        let rotated: Vec<Vec<u32>> = (0..n)
            .map(|i| block[(i + n - 1) % n].completion_ids.clone())
            .collect();
        for (row, kl) in block.iter_mut().zip(rotated) {
            row.kl_completion_ids = Some(kl);
        }
    }
}

/// A tokenized SFT row (TRL's `input_ids`, `completion_mask`, `assistant_masks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftTokens {
    /// The whole sequence.
    pub input_ids: Vec<u32>,
    /// 1 on completion tokens (prompt-completion rows only).
    pub completion_mask: Option<Vec<u8>>,
    /// 1 on assistant tokens (with `assistant_only_loss`, from the template's
    /// `{% generation %}` blocks).
    pub assistant_masks: Option<Vec<u8>>,
}

impl SftTokens {
    /// TRL's `labels` column: the ids, with `-100` where a mask that applies is 0. The
    /// assistant mask always applies when present; the completion mask applies when
    /// `completion_only_loss` (TRL's default `None` means: on for prompt-completion rows).
    pub fn labels(&self, completion_only_loss: Option<bool>) -> Vec<i64> {
        let use_completion = completion_only_loss.unwrap_or(true);
        self.input_ids
            .iter()
            .enumerate()
            .map(|(t, &id)| {
                let completion_ok = !use_completion
                    || self
                        .completion_mask
                        .as_ref()
                        .is_none_or(|mask| mask[t] == 1);
                let assistant_ok = self
                    .assistant_masks
                    .as_ref()
                    .is_none_or(|mask| mask[t] == 1);
                if completion_ok && assistant_ok {
                    i64::from(id)
                } else {
                    crate::IGNORE_INDEX
                }
            })
            .collect()
    }
}

/// How sequences longer than `max_length` are cut (TRL's `truncation_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationMode {
    /// Keep the first `max_length` tokens (TRL's default).
    #[default]
    KeepStart,
    /// Keep the last `max_length` tokens (deprecated in TRL 1.16 for DPO; SFT supports it).
    KeepEnd,
}

impl TruncationMode {
    /// Cuts `ids` to `max_length`.
    pub fn apply<T: Clone>(self, ids: &[T], max_length: Option<usize>) -> Vec<T> {
        match max_length {
            Some(max) if ids.len() > max => match self {
                TruncationMode::KeepStart => ids[..max].to_vec(),
                TruncationMode::KeepEnd => ids[ids.len() - max..].to_vec(),
            },
            _ => ids.to_vec(),
        }
    }
}

/// Length of the common prefix of two id lists (TRL's `common_prefix_length`).
pub fn common_prefix_length(ids: &[u32], other: &[u32]) -> usize {
    ids.iter().zip(other).take_while(|(a, b)| a == b).count()
}

fn with_eos(text: &str, eos: Option<&str>) -> String {
    match eos {
        Some(eos) if !text.ends_with(eos) => format!("{text}{eos}"),
        _ => text.to_string(),
    }
}

fn require_eos(tokenizer: &HfTokenizer) -> crate::Result<&str> {
    tokenizer.eos_token().ok_or_else(|| crate::Error::Tokenizer {
        what: "eos_token".into(),
        reason: "standard (non-conversational) rows need the tokenizer's EOS token, which TRL appends to completions".into(),
    })
}

fn format_error(field: &str) -> crate::Error {
    crate::Error::Data {
        file: "<rows>".into(),
        row: None,
        field: Some(field.into()),
        reason: "the row's fields must share one format (standard or conversational)".into(),
    }
}

/// Ids of a prompt and of prompt + completion, tokenized as TRL's `_tokenize` does.
fn tokenize_pair(
    tokenizer: &HfTokenizer,
    prompt: &Text,
    completion: &Text,
    options: &ChatOptions,
) -> crate::Result<(Vec<u32>, Vec<u32>)> {
    match (prompt, completion) {
        (Text::Conversational(prompt), Text::Conversational(completion)) => {
            let prompt_ids = chat_ids(tokenizer, prompt, true, options)?;
            let full: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
            let full_ids = chat_ids(tokenizer, &full, false, options)?;
            Ok((prompt_ids, full_ids))
        }
        (Text::Standard(prompt), Text::Standard(completion)) => Ok((
            tokenizer.encode(prompt, true)?,
            tokenizer.encode(&format!("{prompt}{completion}"), true)?,
        )),
        _ => Err(format_error("completion")),
    }
}

fn chat_ids(
    tokenizer: &HfTokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
    options: &ChatOptions,
) -> crate::Result<Vec<u32>> {
    let options = ChatOptions {
        add_generation_prompt,
        continue_final_message: false,
        return_assistant_tokens_mask: false,
        ..options.clone()
    };
    Ok(tokenizer.apply_chat_template(messages, &options)?.input_ids)
}

/// A whole conversation (no generation prompt), with its assistant mask when asked for.
fn conversation(
    tokenizer: &HfTokenizer,
    messages: &[Message],
    assistant_only_loss: bool,
    chat: &ChatOptions,
) -> crate::Result<super::tokenizer::ChatEncoding> {
    tokenizer.apply_chat_template(
        messages,
        &ChatOptions {
            add_generation_prompt: false,
            continue_final_message: false,
            return_assistant_tokens_mask: assistant_only_loss,
            ..chat.clone()
        },
    )
}

/// Appends the EOS text to a standard completion (TRL's `add_eos`).
fn completion_with_eos(tokenizer: &HfTokenizer, completion: &Text) -> crate::Result<Text> {
    Ok(match completion {
        Text::Standard(text) => Text::Standard(with_eos(text, Some(require_eos(tokenizer)?))),
        conversational => conversational.clone(),
    })
}

/// Tokenizes a preference row as TRL 1.16's `DPOTrainer` (also CPO/ORPO and reward-model
/// data): an implicit prompt is extracted first ([`extract_prompt`]); `chat` carries TRL's
/// `chat_template_kwargs` / `tools` for conversational rows.
pub fn tokenize_preference(
    tokenizer: &HfTokenizer,
    row: &PreferenceRow,
    chat: &ChatOptions,
) -> crate::Result<PreferenceTokens> {
    let (prompt, chosen, rejected) = match &row.prompt {
        Some(prompt) => (prompt.clone(), row.chosen.clone(), row.rejected.clone()),
        None => extract_prompt(&row.chosen, &row.rejected)?,
    };
    let chosen = completion_with_eos(tokenizer, &chosen)?;
    let rejected = completion_with_eos(tokenizer, &rejected)?;
    let (prompt_ids, prompt_chosen) = tokenize_pair(tokenizer, &prompt, &chosen, chat)?;
    let (_, prompt_rejected) = tokenize_pair(tokenizer, &prompt, &rejected, chat)?;
    let prompt_len = common_prefix_length(&prompt_ids, &prompt_chosen)
        .min(common_prefix_length(&prompt_ids, &prompt_rejected));
    Ok(PreferenceTokens {
        prompt_ids: prompt_ids[..prompt_len].to_vec(),
        chosen_ids: prompt_chosen[prompt_len..].to_vec(),
        rejected_ids: prompt_rejected[prompt_len..].to_vec(),
    })
}

/// Tokenizes an unpaired row as TRL 1.16's `KTOTrainer` (use [`unpair`](super::unpair) for
/// paired data, as TRL does).
pub fn tokenize_unpaired(
    tokenizer: &HfTokenizer,
    row: &UnpairedRow,
    chat: &ChatOptions,
) -> crate::Result<UnpairedTokens> {
    let completion = completion_with_eos(tokenizer, &row.completion)?;
    let (prompt_ids, full) = tokenize_pair(tokenizer, &row.prompt, &completion, chat)?;
    let prompt_len = common_prefix_length(&prompt_ids, &full);
    Ok(UnpairedTokens {
        prompt_ids: prompt_ids[..prompt_len].to_vec(),
        completion_ids: full[prompt_len..].to_vec(),
        label: row.label,
        kl_completion_ids: None,
    })
}

/// Tokenizes an SFT row as TRL 1.16's `SFTTrainer`. `assistant_only_loss` needs a template
/// with `{% generation %}` blocks and conversational rows; every row must then have an
/// assistant token (TRL raises otherwise).
pub fn tokenize_sft(
    tokenizer: &HfTokenizer,
    row: &SftRow,
    assistant_only_loss: bool,
    chat: &ChatOptions,
) -> crate::Result<SftTokens> {
    let tokens = match row {
        SftRow::PromptCompletion { prompt, completion } => {
            let completion = completion_with_eos(tokenizer, completion)?;
            let (prompt_ids, input_ids, assistant_masks) = match (prompt, &completion) {
                (Text::Conversational(p), Text::Conversational(c)) => {
                    let prompt_ids = chat_ids(tokenizer, p, true, chat)?;
                    let full: Vec<Message> = p.iter().chain(c).cloned().collect();
                    let encoding = conversation(tokenizer, &full, assistant_only_loss, chat)?;
                    (prompt_ids, encoding.input_ids, encoding.assistant_masks)
                }
                (Text::Standard(_), Text::Standard(_)) => {
                    let (p, f) = tokenize_pair(tokenizer, prompt, &completion, chat)?;
                    (p, f, None)
                }
                _ => return Err(format_error("completion")),
            };
            let prompt_len = common_prefix_length(&prompt_ids, &input_ids);
            let completion_mask = (0..input_ids.len())
                .map(|t| u8::from(t >= prompt_len))
                .collect();
            SftTokens {
                input_ids,
                completion_mask: Some(completion_mask),
                assistant_masks,
            }
        }
        SftRow::LanguageModeling(Text::Conversational(messages)) => {
            let encoding = conversation(tokenizer, messages, assistant_only_loss, chat)?;
            SftTokens {
                input_ids: encoding.input_ids,
                completion_mask: None,
                assistant_masks: encoding.assistant_masks,
            }
        }
        SftRow::LanguageModeling(Text::Standard(text)) => SftTokens {
            input_ids: tokenizer.encode(&with_eos(text, Some(require_eos(tokenizer)?)), true)?,
            completion_mask: None,
            assistant_masks: None,
        },
    };
    if assistant_only_loss {
        match &tokens.assistant_masks {
            Some(mask) if mask.contains(&1) => {}
            _ => {
                return Err(crate::Error::Tokenizer {
                    what: "chat_template".into(),
                    reason:
                        "assistant_only_loss: the row has no assistant token (the template needs \
                             `{% generation %}` blocks, and the row must be conversational)"
                            .into(),
                });
            }
        }
    }
    Ok(tokens)
}

/// Tokenizes a prompt for generation as TRL 1.16's online trainers (`GRPOTrainer`,
/// `RLOOTrainer`: `_tokenize_prompts`): a conversational prompt is rendered with the
/// generation prompt (always: TRL does not continue a final assistant message here) and
/// tokenized without added special tokens (the template writes them); a standard prompt is
/// tokenized as plain text, with the tokenizer's own special tokens. Prompts are not cut.
pub fn tokenize_prompt(
    tokenizer: &HfTokenizer,
    row: &PromptRow,
    chat: &ChatOptions,
) -> crate::Result<Vec<u32>> {
    match &row.prompt {
        Text::Conversational(messages) => chat_ids(tokenizer, messages, true, chat),
        Text::Standard(text) => tokenizer.encode(text, true),
    }
}

/// Rows tokenized for training, with the dataset rows they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared<T> {
    /// The tokenized rows that are kept.
    pub rows: Vec<T>,
    /// For each kept row, its index in the input.
    pub source_rows: Vec<usize>,
    /// Indices of the input rows TRL drops before training (their prompt alone fills
    /// `max_length`).
    pub dropped: Vec<usize>,
}

fn at_row<T>(result: crate::Result<T>, index: usize) -> crate::Result<T> {
    result.map_err(|err| match err {
        crate::Error::Data {
            file,
            field,
            reason,
            ..
        } => crate::Error::Data {
            file,
            row: Some(index + 1),
            field,
            reason,
        },
        other => crate::Error::Data {
            file: "<rows>".into(),
            row: Some(index + 1),
            field: None,
            reason: other.to_string(),
        },
    })
}

fn prepare<R, T>(
    rows: &[R],
    tokenize: impl Fn(&R) -> crate::Result<T>,
    prompt_len: impl Fn(&T) -> usize,
    drop_at: Option<usize>,
) -> crate::Result<Prepared<T>> {
    let mut prepared = Prepared {
        rows: Vec::with_capacity(rows.len()),
        source_rows: Vec::with_capacity(rows.len()),
        dropped: Vec::new(),
    };
    for (index, row) in rows.iter().enumerate() {
        let tokens = at_row(tokenize(row), index)?;
        if drop_at.is_some_and(|max| prompt_len(&tokens) >= max) {
            prepared.dropped.push(index);
        } else {
            prepared.rows.push(tokens);
            prepared.source_rows.push(index);
        }
    }
    Ok(prepared)
}

/// [`tokenize_preference`] over a dataset, dropping what `DPOTrainer` drops: with
/// `max_length` set and `keep_start` truncation, rows whose prompt alone fills `max_length`.
/// Errors name the 1-based row.
pub fn prepare_preference(
    tokenizer: &HfTokenizer,
    rows: &[PreferenceRow],
    chat: &ChatOptions,
    max_length: Option<usize>,
    truncation_mode: TruncationMode,
) -> crate::Result<Prepared<PreferenceTokens>> {
    let drop_at = max_length.filter(|_| truncation_mode == TruncationMode::KeepStart);
    prepare(
        rows,
        |row| tokenize_preference(tokenizer, row, chat),
        |t| t.prompt_ids.len(),
        drop_at,
    )
}

/// [`tokenize_unpaired`] over a dataset, dropping what `KTOTrainer` drops: with `max_length`
/// set, rows whose prompt alone fills it.
pub fn prepare_unpaired(
    tokenizer: &HfTokenizer,
    rows: &[UnpairedRow],
    chat: &ChatOptions,
    max_length: Option<usize>,
) -> crate::Result<Prepared<UnpairedTokens>> {
    prepare(
        rows,
        |row| tokenize_unpaired(tokenizer, row, chat),
        |t| t.prompt_ids.len(),
        max_length,
    )
}

/// SFT preprocessing options, TRL 1.16's `SFTConfig` fields of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SftOptions {
    /// Cut sequences to this length in the dataset step; `None` keeps everything. TRL default
    /// 1024.
    pub max_length: Option<usize>,
    /// Which end is kept. TRL default: `keep_start`.
    pub truncation_mode: TruncationMode,
    /// Loss on the completion only; `None` (TRL's default) means on for prompt-completion
    /// rows, off for language modeling rows.
    pub completion_only_loss: Option<bool>,
    /// Loss on the assistant's tokens only (conversational rows and a template with
    /// `{% generation %}` blocks). TRL default: false.
    pub assistant_only_loss: bool,
}

impl Default for SftOptions {
    fn default() -> Self {
        Self {
            max_length: Some(1024),
            truncation_mode: TruncationMode::KeepStart,
            completion_only_loss: None,
            assistant_only_loss: false,
        }
    }
}

/// An SFT training row as TRL's dataset holds it after preprocessing: `input_ids` and
/// `labels` (`-100` where no loss is taken), both cut to `max_length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Labels, same length.
    pub labels: Vec<i64>,
}

/// [`tokenize_sft`] over a dataset, then TRL 1.16's `SFTTrainer` dataset steps: labels from
/// the masks that apply ([`SftTokens::labels`]), cut to `max_length`, and, with `max_length`
/// set, rows left without any scored token dropped.
pub fn prepare_sft(
    tokenizer: &HfTokenizer,
    rows: &[SftRow],
    chat: &ChatOptions,
    options: &SftOptions,
) -> crate::Result<Prepared<SftExample>> {
    let mode = options.truncation_mode;
    let example = |tokens: SftTokens| {
        let labels = tokens.labels(options.completion_only_loss);
        SftExample {
            input_ids: mode.apply(&tokens.input_ids, options.max_length),
            labels: mode.apply(&labels, options.max_length),
        }
    };
    let mut prepared = prepare(
        rows,
        |row| tokenize_sft(tokenizer, row, options.assistant_only_loss, chat).map(example),
        |_| 0,
        None,
    )?;
    if options.max_length.is_some() {
        let mut kept = Prepared {
            rows: Vec::new(),
            source_rows: Vec::new(),
            dropped: prepared.dropped,
        };
        for (row, source) in prepared.rows.into_iter().zip(prepared.source_rows) {
            if row.labels.iter().any(|&l| l != crate::IGNORE_INDEX) {
                kept.rows.push(row);
                kept.source_rows.push(source);
            } else {
                kept.dropped.push(source);
            }
        }
        prepared = kept;
    }
    Ok(prepared)
}

/// [`tokenize_prompt`] over a dataset (nothing is dropped).
pub fn prepare_prompts(
    tokenizer: &HfTokenizer,
    rows: &[PromptRow],
    chat: &ChatOptions,
) -> crate::Result<Prepared<Vec<u32>>> {
    prepare(
        rows,
        |row| tokenize_prompt(tokenizer, row, chat),
        |_| 0,
        None,
    )
}
