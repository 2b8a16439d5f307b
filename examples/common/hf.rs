//! The real-checkpoint examples' shared parts (`hf_dpo`, `hf_grpo`): the committed defaults,
//! loading a model with its tokenizer, sequence log-probs through the fused LM-head op, and
//! saving the trained model next to its tokenizer files.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, FloatDType, Tensor};
use burn_rlhf::data::{HfTokenizer, PaddedBatch};
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
