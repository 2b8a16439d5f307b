//! Writing a [`DecoderLm`] back as a Hugging Face checkpoint directory that
//! `AutoModelForCausalLM.from_pretrained(dir)` loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{DType, FloatDType, Tensor};
use serde_json::Value;

use super::config::checkpoint_error;
use super::model::{DecoderLm, RmsNorm};
use super::safetensors::{Pending, write};
use crate::error::Result;

/// How [`DecoderLm::save_pretrained`] writes.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// The stored dtype; `None` = the model's own (the dtype of its embedding matrix).
    pub dtype: Option<FloatDType>,
    /// Shards above this many bytes (transformers' `max_shard_size`); default 5 GB.
    pub max_shard_bytes: u64,
    /// A directory to copy the tokenizer and generation files from (`tokenizer.json`,
    /// `tokenizer_config.json`, `special_tokens_map.json`, `tokenizer.model`, `vocab.json`,
    /// `merges.txt`, `generation_config.json`, `chat_template.jinja`), when they exist there.
    pub copy_files_from: Option<PathBuf>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            max_shard_bytes: 5_000_000_000,
            copy_files_from: None,
        }
    }
}

const COPIED: [&str; 8] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
];

fn dtype_json(dtype: FloatDType) -> &'static str {
    match dtype {
        FloatDType::F64 => "float64",
        FloatDType::F16 => "float16",
        FloatDType::BF16 => "bfloat16",
        _ => "float32",
    }
}

impl DecoderLm {
    /// Writes the model as a Hugging Face checkpoint directory: the tensors under their
    /// transformers names (LoRA adapters merged: each parameter's effective value is written),
    /// `lm_head.weight` omitted when the embeddings are tied, safetensors metadata
    /// `{"format": "pt"}` (transformers 4.x refuses files without it), shards of at most
    /// `max_shard_bytes` with `model.safetensors.index.json` above that, and `config.json` (the
    /// loaded one, its `dtype` / `torch_dtype` set to the stored dtype). Tensors are converted
    /// and written one at a time.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>, options: &SaveOptions) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| checkpoint_error(dir, None, e))?;
        let model = self.clone().valid();
        let dtype = options
            .dtype
            .unwrap_or_else(|| FloatDType::from(model.model.embed_tokens.weight.val().dtype()));
        let mut tensors: Vec<Pending<'_>> = Vec::new();
        let mut add = |name: String, tensor: Tensor<2>| tensors.push(pending(name, tensor, dtype));
        let body = &model.model;
        add(
            "model.embed_tokens.weight".into(),
            body.embed_tokens.weight.val(),
        );
        let mut vectors: Vec<(String, Tensor<1>)> = Vec::new();
        for (l, layer) in body.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            let a = &layer.self_attn;
            for (name, linear) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &layer.mlp.gate_proj),
                ("mlp.up_proj", &layer.mlp.up_proj),
                ("mlp.down_proj", &layer.mlp.down_proj),
            ] {
                add_linear(&mut add, &mut vectors, &format!("{p}.{name}"), linear);
            }
            let mut norm = |name: &str, n: &RmsNorm| {
                vectors.push((format!("{p}.{name}.weight"), n.weight.val()));
            };
            if let Some(n) = &a.q_norm {
                norm("self_attn.q_norm", n);
            }
            if let Some(n) = &a.k_norm {
                norm("self_attn.k_norm", n);
            }
            norm("input_layernorm", &layer.input_layernorm);
            norm("post_attention_layernorm", &layer.post_attention_layernorm);
        }
        vectors.push(("model.norm.weight".into(), body.norm.weight.val()));
        if let Some(head) = &model.lm_head {
            add_linear(&mut add, &mut vectors, "lm_head", head);
        }
        for (name, t) in vectors {
            tensors.push(pending(name, t, dtype));
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));

        // Shards: consecutive tensors up to max_shard_bytes each.
        let mut shards: Vec<Vec<Pending<'_>>> = vec![vec![]];
        let mut size = 0u64;
        let total: u64 = tensors.iter().map(Pending::size).sum();
        for t in tensors {
            if size > 0 && size + t.size() > options.max_shard_bytes {
                shards.push(vec![]);
                size = 0;
            }
            size += t.size();
            shards.last_mut().expect("one shard").push(t);
        }
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let n = shards.len();
        for stale in ["model.safetensors", "model.safetensors.index.json"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        if n == 1 {
            let shard = shards.pop().expect("one shard");
            write(&dir.join("model.safetensors"), shard, &metadata)?;
        } else {
            let mut weight_map = serde_json::Map::new();
            for (k, shard) in shards.into_iter().enumerate() {
                let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
                for t in &shard {
                    weight_map.insert(t.name.clone(), Value::String(file.clone()));
                }
                write(&dir.join(&file), shard, &metadata)?;
            }
            let index = serde_json::json!({
                "metadata": {"total_size": total},
                "weight_map": weight_map,
            });
            write_json(&dir.join("model.safetensors.index.json"), &index)?;
        }

        let mut config = self.config().raw.clone();
        if let Some(map) = config.as_object_mut() {
            let key = if map.contains_key("torch_dtype") && !map.contains_key("dtype") {
                "torch_dtype"
            } else {
                "dtype"
            };
            map.insert(key.into(), Value::String(dtype_json(dtype).into()));
        }
        write_json(&dir.join("config.json"), &config)?;
        if let Some(from) = &options.copy_files_from {
            for name in COPIED {
                let src = from.join(name);
                if src.exists() && src != dir.join(name) {
                    std::fs::copy(&src, dir.join(name))
                        .map_err(|e| checkpoint_error(&src, None, e))?;
                }
            }
        }
        Ok(())
    }
}

fn add_linear(
    add: &mut impl FnMut(String, Tensor<2>),
    vectors: &mut Vec<(String, Tensor<1>)>,
    name: &str,
    linear: &Linear,
) {
    // burn's `[in, out]` back to transformers' `[out, in]`.
    add(format!("{name}.weight"), linear.weight.val().transpose());
    if let Some(bias) = &linear.bias {
        vectors.push((format!("{name}.bias"), bias.val()));
    }
}

fn pending<'a, const D: usize>(name: String, tensor: Tensor<D>, dtype: FloatDType) -> Pending<'a> {
    let stored: DType = dtype.into();
    Pending {
        name,
        dtype: stored,
        shape: tensor.dims().to_vec(),
        bytes: Box::new(move || crate::host_reads::bytes(tensor.cast(dtype))),
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON value");
    std::fs::write(path, text + "\n").map_err(|e| checkpoint_error(path, None, e))
}
