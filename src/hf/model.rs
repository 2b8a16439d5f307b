//! The Llama-family decoder: embeddings, `num_hidden_layers` pre-norm blocks (grouped-query
//! attention with the rotate-half rotary embedding of Hugging Face checkpoints, a SwiGLU MLP),
//! a final RMSNorm and an LM head (its own or the tied embedding matrix). Field names follow
//! transformers', so a burn parameter path (`model.layers.0.self_attn.q_proj.weight`) is the
//! checkpoint's tensor name.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, DType, FloatDType, Int, Tensor, TensorData};

use super::config::DecoderConfig;
use crate::generate::{CachedCausalLm, CausalLm, position_ids};
use crate::logps::LmHead;
use crate::precision::upcast_half;

/// RMSNorm as transformers computes it: the mean square in f32, then `weight * x / rms`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// The scale `[d]`.
    pub weight: Param<Tensor<1>>,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// Normalizes the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x32 = if dtype == DType::F32 {
            x
        } else {
            x.cast(FloatDType::F32)
        };
        let rms = x32
            .clone()
            .square()
            .mean_dim(D - 1)
            .add_scalar(self.eps)
            .sqrt();
        let normed = (x32 / rms).cast(float_dtype(dtype));
        normed * self.weight.val().unsqueeze::<D>()
    }
}

pub(crate) fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F64 => FloatDType::F64,
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        _ => FloatDType::F32,
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[H, heads * head_dim]` (burn layout: input-major).
    pub q_proj: Linear,
    /// `[H, kv_heads * head_dim]`.
    pub k_proj: Linear,
    /// `[H, kv_heads * head_dim]`.
    pub v_proj: Linear,
    /// `[heads * head_dim, H]`.
    pub o_proj: Linear,
    /// Qwen3's per-head RMSNorm of the queries.
    pub q_norm: Option<RmsNorm>,
    /// Qwen3's per-head RMSNorm of the keys.
    pub k_norm: Option<RmsNorm>,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
    #[module(skip)]
    sliding_window: Option<usize>,
}

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[H, I]`.
    pub gate_proj: Linear,
    /// `[H, I]`.
    pub up_proj: Linear,
    /// `[I, H]`.
    pub down_proj: Linear,
}

/// One pre-norm block.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Attention.
    pub self_attn: Attention,
    /// MLP.
    pub mlp: Mlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
}

/// Embeddings, blocks and the final norm (transformers' `model.model`).
#[derive(Module, Debug)]
pub struct DecoderBody {
    /// `[V, H]`.
    pub embed_tokens: Embedding,
    /// The blocks.
    pub layers: Vec<DecoderLayer>,
    /// The final norm.
    pub norm: RmsNorm,
}

/// A Llama-family causal LM (Llama 3.x, Qwen2/2.5, Qwen3, SmolLM2, Mistral) loaded from a
/// Hugging Face checkpoint with [`DecoderLm::from_pretrained`] and written back with
/// [`DecoderLm::save_pretrained`].
///
/// It implements the crate's [`CausalLm`] (full forward) and [`CachedCausalLm`] (a KV cache:
/// each decoding step reads only the new column), so the crate's sampler draws from it. For
/// log-probs without the `[N, V]` logits, take [`hidden_states`](Self::hidden_states) and
/// [`lm_head`](Self::lm_head) to
/// [`FusedLogps::forward_causal_head`](crate::logps::FusedLogps::forward_causal_head).
///
/// Left padding: positions count from each row's first real token (transformers' generation
/// positions), padded keys are never attended. The attention softmax and the RMSNorm mean
/// square run in f32 for half-precision weights, as in transformers.
#[derive(Module, Debug)]
pub struct DecoderLm {
    /// Embeddings, blocks, final norm.
    pub model: DecoderBody,
    /// The LM head `[H, V]`; `None` when the embeddings are tied (`tie_word_embeddings`).
    pub lm_head: Option<Linear>,
    #[module(skip)]
    config: DecoderConfig,
    #[module(skip)]
    inv_freq: Vec<f64>,
}

/// The KV cache of [`DecoderLm`]: per layer the rotated keys and the values of every position
/// so far, `[B, kv_heads, S, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<(Tensor<4>, Tensor<4>)>,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let first = x.clone().narrow(3, 0, d / 2);
    let second = x.narrow(3, d / 2, d / 2);
    Tensor::cat(vec![second.neg(), first], 3)
}

impl Attention {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
        o_proj: Linear,
        q_norm: Option<RmsNorm>,
        k_norm: Option<RmsNorm>,
        config: &DecoderConfig,
    ) -> Self {
        Self {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            sliding_window: config.sliding_window,
        }
    }

    /// `x` `[B, T, H]`; `cos`/`sin` `[B, 1, T, head_dim]`; `allowed` `[B, 1, T, S]` (S = cached
    /// positions + T). Returns the output and this layer's keys and values over all S.
    fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        allowed: &Tensor<4, Bool>,
        past: Option<(Tensor<4>, Tensor<4>)>,
    ) -> (Tensor<3>, Tensor<4>, Tensor<4>) {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let split = |y: Tensor<3>, heads: usize| y.reshape([b, t, heads, hd]);
        let mut q = split(self.q_proj.forward(x.clone()), nh);
        let mut k = split(self.k_proj.forward(x.clone()), nkv);
        let v = split(self.v_proj.forward(x), nkv).swap_dims(1, 2);
        if let Some(norm) = &self.q_norm {
            q = norm.forward(q);
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(k);
        }
        let rope = |y: Tensor<4>| y.clone() * cos.clone() + rotate_half(y) * sin.clone();
        let q = rope(q.swap_dims(1, 2));
        let k = rope(k.swap_dims(1, 2));
        let (k, v) = match past {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        let s = k.dims()[2];
        let repeat = |y: Tensor<4>| {
            y.unsqueeze_dim::<5>(2)
                .expand([b, nkv, nh / nkv, s, hd])
                .reshape([b, nh, s, hd])
        };
        let dtype = FloatDType::from(q.dtype());
        let scores = upcast_half(
            q.matmul(repeat(k.clone()).swap_dims(2, 3))
                .mul_scalar(1.0 / (hd as f64).sqrt()),
        );
        let masked = scores.mask_fill(allowed.clone().bool_not().expand([b, nh, t, s]), -1e30);
        let probs = softmax(masked, 3).cast(dtype);
        let out = probs
            .matmul(repeat(v.clone()))
            .swap_dims(1, 2)
            .reshape([b, t, nh * hd]);
        (self.o_proj.forward(out), k, v)
    }
}

impl DecoderLm {
    pub(crate) fn assemble(
        model: DecoderBody,
        lm_head: Option<Linear>,
        config: DecoderConfig,
    ) -> Self {
        let inv_freq = config.inv_freq();
        Self {
            model,
            lm_head,
            config,
            inv_freq,
        }
    }

    /// The checkpoint's `config.json`.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The LM head as the fused log-prob op takes it: the `lm_head` `Linear`, or the tied
    /// embedding matrix (vocab-major).
    pub fn lm_head(&self) -> LmHead {
        match &self.lm_head {
            Some(linear) => LmHead::from_linear(linear),
            None => LmHead::vocab_major(self.model.embed_tokens.weight.val(), None),
        }
    }

    /// The last hidden states (after the final norm), the LM head's input.
    ///
    /// # Shapes
    /// - ids, attention_mask: `[B, T]` (left padding; `true` = real token)
    /// - output: `[B, T, H]`
    ///
    /// # Panics
    /// On the errors of [`try_hidden_states`](Self::try_hidden_states).
    pub fn hidden_states(&self, ids: Tensor<2, Int>, attention_mask: Tensor<2, Bool>) -> Tensor<3> {
        crate::error::unwrap_or_panic(self.try_hidden_states(ids, attention_mask))
    }

    /// Non-panicking form of [`hidden_states`](Self::hidden_states): `attention_mask` of
    /// another shape than `ids` ([`Error::Shape`](crate::Error::Shape)), no row or column
    /// ([`Error::Empty`](crate::Error::Empty)), and on the CPU backends (or in checked mode) a
    /// token id outside `[0, vocab_size)` ([`Error::LabelOutOfRange`](crate::Error::LabelOutOfRange)
    /// naming `ids`; on a GPU outside checked mode the ids are not read).
    pub fn try_hidden_states(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Bool>,
    ) -> crate::Result<Tensor<3>> {
        let dims = ids.dims();
        crate::error::check_same_shape("attention_mask", &attention_mask.dims(), &dims, "ids")?;
        crate::error::check_non_empty("ids", dims[0] * dims[1], "no token (B = 0 or T = 0)")?;
        if crate::error::index_checks(&ids.device()) {
            let values = crate::host_reads::ints(ids.clone(), "ids").map_err(crate::Error::from)?;
            let vocab = self.config.vocab_size as i64;
            if let Some((index, &value)) = values
                .iter()
                .enumerate()
                .find(|(_, v)| !(0..vocab).contains(*v))
            {
                return Err(crate::Error::LabelOutOfRange {
                    arg: "ids",
                    value,
                    position: index,
                    vocab_size: self.config.vocab_size,
                    ignore_index: crate::IGNORE_INDEX,
                });
            }
        }
        let positions = position_ids(attention_mask.clone());
        Ok(self.forward_hidden(ids, positions, attention_mask, None))
    }

    /// Logits from hidden states `[B, T, H]` -> `[B, T, V]`.
    pub fn project(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(linear) => linear.forward(hidden),
            None => {
                let weight = self.model.embed_tokens.weight.val();
                hidden.matmul(weight.transpose().unsqueeze::<3>())
            }
        }
    }

    /// `cos`, `sin` `[B, 1, T, head_dim]` at `positions` `[B, T]`, in the model's dtype.
    fn rotary(&self, positions: Tensor<2, Int>, dtype: DType) -> (Tensor<4>, Tensor<4>) {
        let [b, t] = positions.dims();
        let device = positions.device();
        let half = self.inv_freq.len();
        let inv_freq = Tensor::<1>::from_data(
            TensorData::new(self.inv_freq.iter().map(|&f| f as f32).collect(), [half]),
            (&device, DType::F32),
        );
        let freqs = positions.float().cast(FloatDType::F32).reshape([b, t, 1])
            * inv_freq.reshape([1, 1, half]);
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(1);
        let cast = |x: Tensor<4>| x.cast(FloatDType::from(dtype));
        (cast(emb.clone().cos()), cast(emb.sin()))
    }

    /// `[B, 1, T, S]`: key `s` is visible from query `t` (query column `offset + t`) when it is
    /// a real token, not in the future, and inside the sliding window.
    fn allowed(&self, key_mask: &Tensor<2, Bool>, t: usize, offset: usize) -> Tensor<4, Bool> {
        let [b, s] = key_mask.dims();
        let window = self.config.sliding_window.unwrap_or(usize::MAX);
        let causal: Vec<bool> = (0..t)
            .flat_map(|i| (0..s).map(move |j| j <= offset + i && offset + i - j < window.max(1)))
            .collect();
        let device = key_mask.device();
        let causal = Tensor::<2, Bool>::from_data(TensorData::new(causal, [t, s]), &device);
        let causal = causal.reshape([1, 1, t, s]).expand([b, 1, t, s]);
        let keys = key_mask.clone().reshape([b, 1, 1, s]).expand([b, 1, t, s]);
        causal.bool_and(keys)
    }

    /// Runs the blocks on `ids` `[B, Tn]` at `positions`; `key_mask` `[B, S]` covers the cached
    /// positions and the new ones. Updates `cache` when given. Returns the normed hidden states.
    fn forward_hidden(
        &self,
        ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        key_mask: Tensor<2, Bool>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let t = ids.dims()[1];
        let s = key_mask.dims()[1];
        let mut x = self.model.embed_tokens.forward(ids);
        let (cos, sin) = self.rotary(positions, x.dtype());
        let allowed = self.allowed(&key_mask, t, s - t);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let past = cache.as_ref().and_then(|c| c.layers.get(i).cloned());
            let (attn, k, v) = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                &cos,
                &sin,
                &allowed,
                past,
            );
            if let Some(c) = cache.as_mut() {
                if i < c.layers.len() {
                    c.layers[i] = (k, v);
                } else {
                    c.layers.push((k, v));
                }
            }
            x = x + attn;
            let mlp = &layer.mlp;
            let h = layer.post_attention_layernorm.forward(x.clone());
            let y = mlp
                .down_proj
                .forward(silu(mlp.gate_proj.forward(h.clone())) * mlp.up_proj.forward(h));
            x = x + y;
        }
        self.model.norm.forward(x)
    }
}

impl CausalLm for DecoderLm {
    fn logits(&self, ids: Tensor<2, Int>, attention_mask: Tensor<2, Bool>) -> Tensor<3> {
        self.project(self.hidden_states(ids, attention_mask))
    }
}

impl CachedCausalLm for DecoderLm {
    type Cache = KvCache;

    fn init_cache(&self) -> KvCache {
        KvCache::default()
    }

    fn forward_step(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Bool>,
        cache: &mut KvCache,
    ) -> Tensor<2> {
        let [b, t] = ids.dims();
        if cache.len() >= t {
            // A cache from another call: start over (the sampler makes one per call).
            *cache = KvCache::default();
        }
        let cached = cache.len();
        let new = t - cached;
        let positions = position_ids(attention_mask.clone()).narrow(1, cached, new);
        let hidden = self.forward_hidden(
            ids.narrow(1, cached, new),
            positions,
            attention_mask,
            Some(cache),
        );
        let last = hidden.narrow(1, new - 1, 1);
        self.project(last).reshape([b, self.config.vocab_size])
    }
}
