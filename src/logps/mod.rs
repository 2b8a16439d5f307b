//! Log-prob gathering: per-token log-probs from logits, sequence reductions and entropy.
//!
//! - [`TokenLogps`] (from [`TokenLogpsConfig`]): logits `[B, T, V]` + labels `[B, T]`
//!   -> per-token log-probs and their validity mask, memory-lean under autodiff.
//! - [`GatheredLogps`]: the result; reduce it with [`SequenceReduction`] or pass it on.
//! - [`token_entropy`]: per-token entropy of `softmax(logits / T)`.
//! - [`FusedLogps`] (from [`FusedLogpsConfig`]): hidden states x LM-head weight ->
//!   per-token log-probs (and entropy etc.) without materializing the `[N, V]` logits.
//! - [`support_logps`]: per-token log-probs renormalized over a recorded sampling support
//!   (sampling replay).
//! - [`LmHead`]: the fused op's head with its weight layout explicit ([`LmHeadLayout`]): a burn
//!   `Linear` (`[H, V]`) or a PyTorch-layout weight (`[V, H]`).

#[cfg(feature = "flex")]
mod cpu;
mod divergence_params;
mod entropy;
mod fused;
#[cfg(feature = "flex")]
mod fused_cpu;
mod fused_divergence;
#[cfg(feature = "flex")]
mod fused_divergence_cpu;
mod fused_params;
#[cfg(feature = "flex")]
mod fused_rows;
mod gather;
mod head;
mod kernel;
mod lm_head;
mod sequence;
mod support;

pub use crate::backends::has_native_kernel;
pub(crate) use divergence_params::{DivergenceKind, DivergenceParams};
pub use entropy::token_entropy;
pub(crate) use fused_divergence::fused_divergence_op;
pub(crate) use fused_params::FusedParams;
pub use gather::{
    GatheredLogps, LabelAlignment, LogpsImplementation, TokenLogps, TokenLogpsConfig,
    token_logps_reference,
};
pub use head::{LmHead, LmHeadLayout};
pub use lm_head::{FusedLogps, FusedLogpsConfig, FusedLogpsOutput};
pub use sequence::{SequenceReduction, ld_dpo_sequence_logps};
pub use support::{support_logps, try_support_logps};
