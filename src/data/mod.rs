//! Real data (feature `data`): TRL's dataset formats read from JSON Lines, Hugging Face
//! tokenizers and chat templates, TRL 1.16's preprocessing and collation.
//!
//! A row goes through the same steps as in TRL, so that the token ids match a Python pipeline
//! exactly (checked against TRL 1.16's own trainers on fixtures, `fixtures/data/`):
//!
//! 1. **Read**: [`read_jsonl`] (or `read_parquet`, feature `parquet`) into the row type of the trainer: [`PreferenceRow`] (DPO and
//!    its relatives, reward models), [`UnpairedRow`] (KTO, BCO; [`unpair`] turns preference
//!    data into it), [`SftRow`] (prompt-completion or language modeling), [`PromptRow`]
//!    (GRPO, RLOO, online DPO). Standard (strings) or conversational (lists of
//!    `{role, content}` [`Message`]s). A malformed row is an error naming its row and field,
//!    or is skipped and counted ([`OnMalformed`]).
//! 2. **Tokenize**: [`HfTokenizer`] reads a tokenizer directory (`tokenizer.json` through the
//!    `tokenizers` crate, special tokens and the chat template from `tokenizer_config.json` /
//!    `chat_template.jinja`) and renders templates with a Jinja engine set up as
//!    transformers' ([`ChatTemplate`]). [`prepare_preference`], [`prepare_unpaired`],
//!    [`prepare_sft`] and [`prepare_prompts`] apply TRL 1.16's trainer preprocessing
//!    (EOS appended to standard completions, the prompt split at the common token prefix,
//!    rows whose prompt fills `max_length` dropped).
//! 3. **Collate**: [`Collator`] builds right-padded batches with `-100` labels as TRL's
//!    collators (`max_length`, `truncation_mode`, `pad_to_multiple_of`); prompts for
//!    generation go to [`Prompts::try_left_padded`](crate::generate::Prompts::try_left_padded).
//!
//! ```no_run
//! # fn main() -> burn_rlhf::Result<()> {
//! use burn_rlhf::data::{
//!     ChatOptions, Collator, HfTokenizer, OnMalformed, PreferenceRow, TruncationMode,
//!     prepare_preference, read_jsonl,
//! };
//!
//! let tokenizer = HfTokenizer::from_pretrained("SmolLM2-135M-Instruct")?;
//! let data = read_jsonl::<PreferenceRow>("train.jsonl", OnMalformed::Fail)?;
//! let prepared = prepare_preference(
//!     &tokenizer, &data.rows, &ChatOptions::default(), Some(1024), TruncationMode::KeepStart,
//! )?;
//! let pad = tokenizer.pad_token_id().expect("a pad or EOS token");
//! let batch = Collator::new(pad).preference(&prepared.rows[..8]);
//! // batch.to_tensors(&device): input_ids / attention_mask / labels [2B, T], chosen rows first.
//! # Ok(())
//! # }
//! ```
//!
//! Parquet files (the Hub's format) read with [`read_parquet`] under feature `parquet`.
//!
//! Not covered: multimodal content parts, tool-calling rows beyond passing `tools` to the template,
//! packing and `padding_free` batches (flattened rows with `position_ids`; TRL 1.16's DPO
//! trainer disables it too, and the crate's decoder attends within padded rows).

mod collate;
mod jsonl;
#[cfg(feature = "parquet")]
mod parquet_file;
mod preprocess;
mod rows;
mod template;
mod tokenizer;

pub use collate::{BatchTensors, Collator, PaddedBatch};
pub use jsonl::{Dataset, OnMalformed, SkippedRow, parse_jsonl, read_jsonl};
#[cfg(feature = "parquet")]
#[cfg_attr(docsrs, doc(cfg(feature = "parquet")))]
pub use parquet_file::read_parquet;
pub use preprocess::{
    PreferenceTokens, Prepared, SftExample, SftOptions, SftTokens, TruncationMode, UnpairedTokens,
    add_kl_completions, common_prefix_length, prepare_preference, prepare_prompts, prepare_sft,
    prepare_unpaired, tokenize_preference, tokenize_prompt, tokenize_sft, tokenize_unpaired,
};
pub use rows::{
    Message, PreferenceRow, PromptCompletionRow, PromptRow, SftRow, Text, TrlRow, UnpairedRow,
    extract_prompt, unpair,
};
pub use template::{ChatTemplate, Rendered};
pub use tokenizer::{ChatEncoding, ChatOptions, HfTokenizer};
