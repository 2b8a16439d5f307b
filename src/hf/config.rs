//! `config.json` of a Llama-family checkpoint, in transformers 5's form (`rope_parameters`,
//! `dtype`) and in the 4.x form most Hub checkpoints still carry (`rope_theta`, `rope_scaling`,
//! `torch_dtype`).

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The architectures the decoder covers (`model_type` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `llama` (Llama 2 / 3.x, SmolLM2, TinyLlama): optional `attention_bias` (q, k, v, o) and
    /// `mlp_bias`.
    Llama,
    /// `qwen2` (Qwen2 / 2.5): q, k, v projections always have a bias, o does not.
    Qwen2,
    /// `qwen3`: per-head RMSNorm of q and k (`q_norm`, `k_norm`) before the rotary embedding;
    /// optional `attention_bias`.
    Qwen3,
    /// `mistral`: the Llama layout without biases, with an optional sliding window.
    Mistral,
}

/// Rotary frequencies: `inv_freq[i] = theta^(-2i / head_dim)`, optionally rescaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `rope_type: default`.
    Default,
    /// `rope_type: llama3` (Llama 3.1+): long wavelengths divided by `factor`, short ones kept,
    /// the band between smoothed (transformers' `_compute_llama3_parameters`).
    Llama3 {
        /// `factor`.
        factor: f64,
        /// `low_freq_factor`.
        low_freq_factor: f64,
        /// `high_freq_factor`.
        high_freq_factor: f64,
        /// `original_max_position_embeddings`.
        original_max_position_embeddings: f64,
    },
}

/// The fields of `config.json` the decoder uses (the whole file is kept in [`raw`](Self::raw)
/// and written back on save).
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// From `model_type`.
    pub architecture: Architecture,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `num_key_value_heads` (grouped-query attention; default `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// `head_dim` (default `hidden_size / num_attention_heads`; Qwen3 sets its own).
    pub head_dim: usize,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
    /// `rope_theta` (in `rope_parameters` or at the top level).
    pub rope_theta: f64,
    /// `rope_type` and its parameters.
    pub rope_scaling: RopeScaling,
    /// Bias on the q, k, v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections (`mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm of q and k (Qwen3).
    pub qk_norm: bool,
    /// `tie_word_embeddings`: the LM head is the embedding matrix (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// Sliding-window attention span (`sliding_window`, when enabled): a query attends to the
    /// `sliding_window` most recent positions, itself included.
    pub sliding_window: Option<usize>,
    /// `bos_token_id`.
    pub bos_token_id: Option<i64>,
    /// `eos_token_id` (one id or several).
    pub eos_token_ids: Vec<i64>,
    /// `pad_token_id`.
    pub pad_token_id: Option<i64>,
    /// The file as read.
    pub raw: Value,
}

impl DecoderConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| checkpoint_error(&path, None, e))?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| checkpoint_error(&path, None, format!("not JSON: {e}")))?;
        Self::from_json(raw).map_err(|e| match e {
            Error::Checkpoint { tensor, reason, .. } => Error::Checkpoint {
                path: path.display().to_string(),
                tensor,
                reason,
            },
            other => other,
        })
    }

    /// Parses a `config.json` value.
    pub fn from_json(raw: Value) -> Result<Self> {
        let field_error = |field: &str, reason: String| Error::Checkpoint {
            path: "config.json".into(),
            tensor: None,
            reason: format!("`{field}`: {reason}"),
        };
        let usize_field = |name: &str| -> Result<usize> {
            raw.get(name)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| field_error(name, "missing or not a non-negative integer".into()))
        };
        let opt_usize = |name: &str| raw.get(name).and_then(Value::as_u64).map(|v| v as usize);
        let opt_f64 = |name: &str| raw.get(name).and_then(Value::as_f64);
        let opt_bool = |name: &str| raw.get(name).and_then(Value::as_bool);
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| field_error("model_type", "missing".into()))?;
        let architecture = match model_type {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "mistral" => Architecture::Mistral,
            other => {
                return Err(field_error(
                    "model_type",
                    format!("`{other}` is not supported (llama, qwen2, qwen3, mistral)"),
                ));
            }
        };
        if let Some(act) = raw.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(field_error(
                "hidden_act",
                format!("`{act}` is not supported (silu)"),
            ));
        }
        let hidden_size = usize_field("hidden_size")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(field_error("num_attention_heads", "must be > 0".into()));
        }
        let num_key_value_heads = opt_usize("num_key_value_heads").unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(field_error(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} must divide num_attention_heads = {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match raw.get("head_dim") {
            Some(Value::Number(n)) => n.as_u64().map(|v| v as usize).unwrap_or(0),
            _ => hidden_size / num_attention_heads,
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(field_error(
                "head_dim",
                format!("{head_dim} must be even and > 0"),
            ));
        }
        // transformers 5: `rope_parameters` holds theta and the type; 4.x: top-level
        // `rope_theta` and `rope_scaling` (null for the default rope, `type` in old files).
        let rope = raw
            .get("rope_parameters")
            .filter(|v| v.is_object())
            .or_else(|| raw.get("rope_scaling").filter(|v| v.is_object()));
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .or_else(|| opt_f64("rope_theta"))
            .unwrap_or(10_000.0);
        let rope_type = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let rope_scaling = match rope_type {
            "default" => RopeScaling::Default,
            "llama3" => {
                let r = rope.expect("rope_type came from it");
                let get = |k: &str| {
                    r.get(k).and_then(Value::as_f64).ok_or_else(|| {
                        field_error("rope_parameters", format!("llama3 rope needs `{k}`"))
                    })
                };
                RopeScaling::Llama3 {
                    factor: get("factor")?,
                    low_freq_factor: get("low_freq_factor")?,
                    high_freq_factor: get("high_freq_factor")?,
                    original_max_position_embeddings: get("original_max_position_embeddings")?,
                }
            }
            other => {
                return Err(field_error(
                    "rope_type",
                    format!("`{other}` is not supported (default, llama3)"),
                ));
            }
        };
        let attention_bias = opt_bool("attention_bias").unwrap_or(false);
        let (qkv_bias, o_bias, qk_norm) = match architecture {
            Architecture::Llama => (attention_bias, attention_bias, false),
            Architecture::Qwen2 => (true, false, false),
            Architecture::Qwen3 => (attention_bias, attention_bias, true),
            Architecture::Mistral => (false, false, false),
        };
        let sliding_window = match architecture {
            // Qwen configs carry a window that is used only with `use_sliding_window`.
            Architecture::Qwen2 | Architecture::Qwen3
                if !opt_bool("use_sliding_window").unwrap_or(false) =>
            {
                None
            }
            _ => opt_usize("sliding_window"),
        };
        let eos_token_ids = match raw.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
            _ => vec![],
        };
        Ok(Self {
            architecture,
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: opt_f64("rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            qkv_bias,
            o_bias,
            mlp_bias: opt_bool("mlp_bias").unwrap_or(false),
            qk_norm,
            tie_word_embeddings: opt_bool("tie_word_embeddings").unwrap_or(false),
            sliding_window,
            bos_token_id: raw.get("bos_token_id").and_then(Value::as_i64),
            eos_token_ids,
            pad_token_id: raw.get("pad_token_id").and_then(Value::as_i64),
            raw,
        })
    }

    /// The rotary inverse frequencies `[head_dim / 2]`, as transformers computes them (in f64
    /// here; transformers uses f32, a difference of about 1e-7 relative).
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        match &self.rope_scaling {
            RopeScaling::Default => base,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_freq_wavelen {
                            f / factor
                        } else if wavelen < high_freq_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

pub(crate) fn checkpoint_error(
    path: &Path,
    tensor: Option<&str>,
    reason: impl std::fmt::Display,
) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        tensor: tensor.map(str::to_string),
        reason: reason.to_string(),
    }
}
