//! The real-checkpoint examples' shared parts (`hf_dpo`, `hf_grpo`): the committed defaults,
//! loading a model with its tokenizer, sequence log-probs through the fused LM-head op, and
//! saving the trained model next to its tokenizer files.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, FloatDType, Tensor};
use burn_rlhf::data::{HfTokenizer, OnMalformed, PaddedBatch, TrlRow, read_jsonl, read_parquet};
use burn_rlhf::generate::{Prompts, SamplerConfig};
use burn_rlhf::hf::{DecoderLm, SaveOptions};
use burn_rlhf::logps::{FusedLogpsConfig, GatheredLogps};

/// `fixtures/data` of this repository: the committed tiny checkpoint (`tiny_chat`) and the
/// examples' datasets (`examples/*.jsonl`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data")
}

/// The committed tiny checkpoint (a 2-layer Llama-architecture chat model with a ChatML
/// tokenizer, pretrained on yes/no answers by `scripts/make_data_fixtures.py`).
pub fn default_model() -> PathBuf {
    fixtures().join("tiny_chat")
}

/// Reads a TRL dataset file: Parquet by its `.parquet` extension, JSON Lines otherwise.
pub fn read_rows<R: TrlRow>(path: &Path) -> Result<Vec<R>, String> {
    let data = if path.extension().is_some_and(|e| e == "parquet") {
        read_parquet::<R>(path, OnMalformed::Fail)
    } else {
        read_jsonl::<R>(path, OnMalformed::Fail)
    };
    Ok(data.map_err(|e| e.to_string())?.rows)
}

/// Training and held-out rows: `--data` and `--test` when given; `--data` alone keeps its last
/// eighth for held-out; neither reads the committed `fixtures/data/examples/{stem}_{train,test}.jsonl`.
pub fn train_and_test<R: TrlRow>(
    data: Option<&Path>,
    test: Option<&Path>,
    stem: &str,
) -> Result<(Vec<R>, Vec<R>), String> {
    let committed = |split: &str| fixtures().join(format!("examples/{stem}_{split}.jsonl"));
    Ok(match (data, test) {
        (Some(data), Some(test)) => (read_rows(data)?, read_rows(test)?),
        (Some(data), None) => {
            let mut all = read_rows(data)?;
            let held_out = all.split_off(all.len() - (all.len() / 8).max(1));
            (all, held_out)
        }
        (None, test) => (
            read_rows(&committed("train"))?,
            read_rows(test.unwrap_or(&committed("test")))?,
        ),
    })
}

/// Loads a checkpoint directory and its tokenizer (in f32, for training).
pub fn load(dir: &Path, device: &Device) -> Result<(DecoderLm, HfTokenizer), String> {
    let tokenizer = HfTokenizer::from_pretrained(dir).map_err(|e| e.to_string())?;
    let model =
        DecoderLm::from_pretrained(dir, device, FloatDType::F32).map_err(|e| e.to_string())?;
    Ok((model, tokenizer))
}

/// Per-token log-probs of a right-padded batch's labels through the fused LM-head op
/// (hidden states x head weight, no `[N, V]` logits).
pub fn batch_logps(model: &DecoderLm, batch: &PaddedBatch, device: &Device) -> GatheredLogps {
    let tensors = batch.to_tensors(device);
    let hidden = model.hidden_states(tensors.input_ids, tensors.attention_mask);
    FusedLogpsConfig::new()
        .with_check_targets(false)
        .init()
        .forward_causal_head(hidden, model.lm_head(), tensors.labels)
        .0
}

/// Sequence log-prob sums `[rows]` of a batch, on the host.
pub fn sequence_logps(model: &DecoderLm, batch: &PaddedBatch, device: &Device) -> Vec<f64> {
    host(batch_logps(model, batch, device).sum())
}

/// The ids that end a completion: the checkpoint's `eos_token_id`s and the tokenizer's EOS.
pub fn eos_ids(model: &DecoderLm, tokenizer: &HfTokenizer) -> Vec<i64> {
    let mut eos = model.config().eos_token_ids.clone();
    if let Some(id) = tokenizer.eos_token_id().map(i64::from)
        && !eos.contains(&id)
    {
        eos.push(id);
    }
    eos
}

/// Greedy completions of `prompts` (token rows) through the crate's sampler over the model's
/// KV cache, decoded without special tokens. EOS: the checkpoint's and the tokenizer's.
pub fn greedy_answers(
    model: &DecoderLm,
    tokenizer: &HfTokenizer,
    prompts: &[Vec<i64>],
    max_new_tokens: usize,
    device: &Device,
) -> Result<Vec<String>, String> {
    let pad = i64::from(tokenizer.pad_token_id().ok_or("no pad or EOS token")?);
    let eos = eos_ids(model, tokenizer);
    let sampler = SamplerConfig::new()
        .with_greedy(true)
        .with_max_new_tokens(max_new_tokens)
        .with_eos_token_ids(eos)
        .with_pad_token_id(pad)
        .with_record_support(false)
        .try_init()
        .map_err(|e| e.to_string())?;
    let mut answers = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(16) {
        let batch = Prompts::try_left_padded(chunk, pad, device).map_err(|e| e.to_string())?;
        let generation = sampler
            .try_sample_cached(model, &batch, 0)
            .map_err(|e| e.to_string())?;
        for completion in generation.completions() {
            let ids: Vec<u32> = completion.iter().map(|&id| id as u32).collect();
            answers.push(tokenizer.decode(&ids, true).map_err(|e| e.to_string())?);
        }
    }
    Ok(answers)
}

/// A 1-D tensor on the host, as f64.
pub fn host(t: Tensor<1>) -> Vec<f64> {
    t.cast(FloatDType::F64)
        .into_data()
        .try_to_vec::<f64>()
        .expect("f64 data")
}

/// Saves `model` in Hugging Face layout under `out`, with the tokenizer files of `model_dir`,
/// so that `AutoModelForCausalLM.from_pretrained(out)` and `AutoTokenizer` load it.
pub fn save(model: &DecoderLm, model_dir: &Path, out: &Path) -> Result<PathBuf, String> {
    let options = SaveOptions {
        copy_files_from: Some(model_dir.to_path_buf()),
        ..SaveOptions::default()
    };
    model
        .valid()
        .save_pretrained(out, &options)
        .map_err(|e| e.to_string())?;
    Ok(out.to_path_buf())
}
