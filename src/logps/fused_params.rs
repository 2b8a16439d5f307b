//! The fused op's options and output layout, shared by its dispatcher (`fused.rs`) and its
//! flex kernel (`fused_cpu.rs`), so the kernel sits below the dispatcher (no import cycle).

use burn::tensor::Shape;

use super::head::LmHeadLayout;

/// Columns of the op's packed `[N, OUT_COLS]` output: log-prob, entropy, log(sum p^2),
/// mean logit, is-top-1 (0/1), logsumexp, expected logit `E_p[z]` (the last two are saved
/// for backward).
pub(crate) const OUT_COLS: usize = 7;

/// Numeric options of the op (see [`super::FusedLogpsConfig`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedParams {
    /// Softmax temperature (> 0).
    pub temperature: f64,
    /// Multiplier applied to raw logits first.
    pub logit_scale: f64,
    /// Final logit soft-capping `cap * tanh(z / cap)`.
    pub softcap: Option<f64>,
    /// Rows per tile; `None` = automatic.
    pub token_chunk: Option<usize>,
    /// Vocabulary columns per tile; `None` = automatic.
    pub vocab_chunk: Option<usize>,
    /// Compute entropy, log(sum p^2), mean logit and is-top-1 (else only log-probs).
    pub stats: bool,
    /// Layout of the weight (`[V, H]` or `[H, V]`); `d weight` comes back in the same layout.
    pub layout: LmHeadLayout,
}

/// Elements per logits tile when the token chunk is automatic: 2 Mi elements (8 MiB in f32),
/// large enough for GEMM efficiency (a 2048 x 1024 x H product), small enough that the
/// tile plus its gradient GEMM outputs stay an order of magnitude below the logits.
const AUTO_TILE_ELEMENTS: usize = 2 << 20;
/// Automatic vocabulary chunk.
const AUTO_VOCAB_CHUNK: usize = 1024;

impl FusedParams {
    /// Vocabulary size of a weight of shape `dims` in this layout.
    pub(crate) fn vocab(&self, dims: &Shape) -> usize {
        match self.layout {
            LmHeadLayout::VocabMajor => dims[0],
            LmHeadLayout::HiddenMajor => dims[1],
        }
    }

    /// `(rows, columns)` per tile for `n` rows and vocabulary `v`.
    pub(crate) fn tiles(&self, n: usize, v: usize) -> (usize, usize) {
        let tv = self
            .vocab_chunk
            .unwrap_or_else(|| v.min(AUTO_VOCAB_CHUNK))
            .clamp(1, v.max(1));
        let tn = self
            .token_chunk
            .unwrap_or_else(|| (AUTO_TILE_ELEMENTS / tv).max(1))
            .clamp(1, n.max(1));
        (tn, tv)
    }
}
