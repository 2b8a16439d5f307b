//! Real checkpoints (feature `hf`): a Llama-family decoder that loads and saves Hugging Face
//! safetensors checkpoints, generates with a KV cache through the crate's sampler, and trains
//! with burn's LoRA.
//!
//! Covered (`model_type` in `config.json`): `llama` (Llama 3.x with `rope_type: llama3`,
//! SmolLM2, TinyLlama), `qwen2` (Qwen2 / 2.5: q/k/v biases), `qwen3` (per-head q/k RMSNorm),
//! `mistral`; grouped-query attention; tied or untied embeddings; `config.json` in
//! transformers 5's form and the 4.x form (`rope_theta`, `rope_scaling`, `torch_dtype`);
//! weights in F32, BF16, F16 or F64, one file or sharded. Sliding-window attention
//! (`sliding_window` on Mistral, `use_sliding_window` on Qwen) masks keys older than the window;
//! it changes nothing for sequences shorter than the window. Not covered: other `rope_type`s
//! (`yarn`, `dynamic`, `linear`, ...), activations other than `silu`, mixture-of-experts.
//!
//! ```no_run
//! # fn main() -> burn_rlhf::Result<()> {
//! use burn::tensor::{Device, FloatDType};
//! use burn_rlhf::hf::{DecoderLm, SaveOptions};
//!
//! let device = Device::flex();
//! let model = DecoderLm::from_pretrained("SmolLM2-135M-Instruct", &device, FloatDType::F32)?;
//! // ... train it (DPO, GRPO, LoRA: see `DecoderLm::with_lora`) ...
//! model.save_pretrained("trained", &SaveOptions::default())?;
//! # Ok(())
//! # }
//! ```
//!
//! The tensor names and layout are transformers': a burn parameter path is the checkpoint's
//! tensor name (`model.layers.0.self_attn.q_proj.weight`), so burn's
//! [`ParamGroup`](burn::module::ParamGroup::from_any_predicates) predicates name projections the way PEFT's
//! `target_modules` do. Hugging Face stores q and k for the rotate-half rotary layout; the
//! decoder applies that layout directly, so weights are loaded and saved without permutation.

mod config;
mod load;
mod model;
mod safetensors;
mod save;

pub use config::{Architecture, DecoderConfig, RopeScaling};
pub use model::{Attention, DecoderBody, DecoderLayer, DecoderLm, KvCache, Mlp, RmsNorm};
pub use save::SaveOptions;

use burn::module::{Lora, Module, ParamGroup};

impl DecoderLm {
    /// LoRA on the projections named in `target_modules` (PEFT's names: `q_proj`, `k_proj`,
    /// `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`), through burn's
    /// [`Module::apply_lora`]: `W + (alpha / rank) a b` with `a ~ N(0, 1/rank)`, `b = 0`, every
    /// base parameter frozen.
    ///
    /// Returns `(policy, ref_model)`: the adapted model and the **base model without
    /// adapters**, TRL's adapter-disabled reference for DPO / GRPO. The reference is a `valid()`
    /// view of the same base tensors (burn tensors are reference counted and the frozen base is
    /// never written), so there is no second copy of the weights.
    pub fn with_lora(self, rank: usize, alpha: f64, target_modules: &[&str]) -> (Self, Self) {
        let ref_model = self.valid();
        let group = ParamGroup::from_any_predicates(
            target_modules.iter().map(|m| format!(".{m}.")).collect(),
        );
        let policy = self.apply_lora(Lora::new(rank, alpha).set_param_group(group));
        (policy, ref_model)
    }
}
