//! Loading a Hugging Face checkpoint directory: one `model.safetensors` or the shards named by
//! `model.safetensors.index.json`, each tensor read from disk, converted to the requested dtype
//! and placed on the device one at a time (no second full copy of the weights).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde_json::Value;

use super::config::{DecoderConfig, checkpoint_error};
use super::model::{Attention, DecoderBody, DecoderLayer, DecoderLm, Mlp, RmsNorm};
use super::safetensors::SafetensorsFile;
use crate::error::Result;

/// The checkpoint's tensors by name, with the names taken so far.
struct Weights {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    file_of: BTreeMap<String, usize>,
    taken: BTreeSet<String>,
    device: Device,
    dtype: FloatDType,
}

impl Weights {
    fn open(dir: &Path, device: &Device, dtype: FloatDType) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index.exists() {
            let text =
                std::fs::read_to_string(&index).map_err(|e| checkpoint_error(&index, None, e))?;
            let json: Value = serde_json::from_str(&text)
                .map_err(|e| checkpoint_error(&index, None, format!("not JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| checkpoint_error(&index, None, "no `weight_map` object"))?;
            let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut files = Vec::new();
        let mut file_of = BTreeMap::new();
        for path in names {
            let file = SafetensorsFile::open(&path)?;
            for name in file.entries.keys() {
                if file_of.insert(name.clone(), files.len()).is_some() {
                    return Err(checkpoint_error(&path, Some(name), "stored in two shards"));
                }
            }
            files.push(file);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            file_of,
            taken: BTreeSet::new(),
            device: device.clone(),
            dtype,
        })
    }

    /// Tensor `name` of shape `shape`, in the requested dtype on the device.
    fn take<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let file = self
            .file_of
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| {
                checkpoint_error(
                    &self.dir,
                    Some(name),
                    "missing (the config says this tensor exists)",
                )
            })?;
        let entry = &file.entries[name];
        if entry.shape != shape {
            return Err(checkpoint_error(
                &file.path,
                Some(name),
                format!(
                    "shape {:?}, expected {shape:?} from config.json",
                    entry.shape
                ),
            ));
        }
        let data = file.read(name)?;
        self.taken.insert(name.to_string());
        Ok(Tensor::<D>::from_data(
            data,
            (&self.device, DType::from(self.dtype)),
        ))
    }

    fn linear(&mut self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        // transformers stores `[out, in]`; burn's Linear is `[in, out]`.
        let weight = self
            .take(&format!("{name}.weight"), [d_out, d_in])?
            .transpose();
        let bias = if bias {
            Some(Param::from_tensor(
                self.take(&format!("{name}.bias"), [d_out])?,
            ))
        } else {
            None
        };
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    fn norm(&mut self, name: &str, d: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm::new(
            self.take(&format!("{name}.weight"), [d])?,
            eps,
        ))
    }
}

impl DecoderLm {
    /// Loads a Hugging Face checkpoint directory (`config.json` plus `model.safetensors` or a
    /// sharded `model.safetensors.index.json`) onto `device`, converting the stored dtype
    /// (F32, BF16, F16, F64) to `dtype`.
    ///
    /// Every tensor the config implies must be present with its shape, and every stored tensor
    /// must be used: [`Error::Checkpoint`](crate::Error::Checkpoint) names the tensor that is
    /// missing, extra or mis-shaped, or the unsupported `config.json` field. With tied
    /// embeddings a stored `lm_head.weight` (some exporters write it) is ignored.
    ///
    /// Tensors are read one at a time: the peak host memory is the model on its device plus
    /// one tensor.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: &Device,
        dtype: FloatDType,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = DecoderConfig::from_dir(dir)?;
        let mut w = Weights::open(dir, device, dtype)?;
        let (h, v, i) = (
            config.hidden_size,
            config.vocab_size,
            config.intermediate_size,
        );
        let (q_dim, kv_dim) = (
            config.num_attention_heads * config.head_dim,
            config.num_key_value_heads * config.head_dim,
        );
        let eps = config.rms_norm_eps;
        let embed_tokens = Embedding {
            weight: Param::from_tensor(w.take("model.embed_tokens.weight", [v, h])?),
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let attn = format!("{p}.self_attn");
            let (q_norm, k_norm) = if config.qk_norm {
                (
                    Some(w.norm(&format!("{attn}.q_norm"), config.head_dim, eps)?),
                    Some(w.norm(&format!("{attn}.k_norm"), config.head_dim, eps)?),
                )
            } else {
                (None, None)
            };
            let self_attn = Attention::new(
                w.linear(&format!("{attn}.q_proj"), h, q_dim, config.qkv_bias)?,
                w.linear(&format!("{attn}.k_proj"), h, kv_dim, config.qkv_bias)?,
                w.linear(&format!("{attn}.v_proj"), h, kv_dim, config.qkv_bias)?,
                w.linear(&format!("{attn}.o_proj"), q_dim, h, config.o_bias)?,
                q_norm,
                k_norm,
                &config,
            );
            let mlp = Mlp {
                gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), h, i, config.mlp_bias)?,
                up_proj: w.linear(&format!("{p}.mlp.up_proj"), h, i, config.mlp_bias)?,
                down_proj: w.linear(&format!("{p}.mlp.down_proj"), i, h, config.mlp_bias)?,
            };
            layers.push(DecoderLayer {
                self_attn,
                mlp,
                input_layernorm: w.norm(&format!("{p}.input_layernorm"), h, eps)?,
                post_attention_layernorm: w.norm(
                    &format!("{p}.post_attention_layernorm"),
                    h,
                    eps,
                )?,
            });
        }
        let norm = w.norm("model.norm", h, eps)?;
        let lm_head = if config.tie_word_embeddings {
            w.taken.insert("lm_head.weight".into());
            None
        } else {
            Some(w.linear("lm_head", h, v, false)?)
        };
        if let Some(extra) = w.file_of.keys().find(|k| !w.taken.contains(*k)) {
            let path = &w.files[w.file_of[extra]].path;
            return Err(checkpoint_error(
                path,
                Some(extra),
                "not used by a `".to_string()
                    + config
                        .raw
                        .get("model_type")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                    + "` decoder with this config.json (a different architecture, or a config that does not match the weights)",
            ));
        }
        let body = DecoderBody {
            embed_tokens,
            layers,
            norm,
        };
        Ok(DecoderLm::assemble(body, lm_head, config))
    }
}
