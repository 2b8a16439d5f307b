//! Options and output layout of the fused two-head divergence op, shared by its dispatcher
//! (`fused_divergence.rs`) and its flex kernel (`fused_divergence_cpu.rs`).

use super::fused_params::FusedParams;

/// Columns of the op's packed `[N, DIV_COLS]` output: divergence `D`, student entropy, student
/// logsumexp, teacher logsumexp, `KL(p_s || m)` (generalized JSD only, else 0). The last three
/// are saved for backward.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) const DIV_COLS: usize = 5;

/// Which divergence: the two endpoints are special-cased, as in TRL (not limits of the
/// mixture formula).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum DivergenceKind {
    /// `beta = 0`: `KL(teacher || student)`.
    Forward,
    /// `beta = 1`: `KL(student || teacher)`.
    Reverse,
    /// `0 < beta < 1`: `beta KL(p_t || m) + (1 - beta) KL(p_s || m)`, `m = (1 - beta) p_s +
    /// beta p_t`.
    Jsd(f64),
}

impl DivergenceKind {
    pub(crate) fn from_beta(beta: f64) -> Self {
        if beta == 0.0 {
            Self::Forward
        } else if beta == 1.0 {
            Self::Reverse
        } else {
            Self::Jsd(beta)
        }
    }
}

/// Numeric options of the op. Each head's [`FusedParams`] carries its own logit scale,
/// soft-capping and weight layout; the temperature and the tile sizes are shared (the
/// student's tile sizes are used).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DivergenceParams {
    pub(crate) kind: DivergenceKind,
    pub(crate) student: FusedParams,
    pub(crate) teacher: FusedParams,
    /// Whether each model has a bias (else its bias tensor holds zeros and is not read on flex).
    pub(crate) student_has_bias: bool,
    pub(crate) teacher_has_bias: bool,
}
