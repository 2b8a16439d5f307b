//! The one tolerance policy of the parity runners: every runner asks [`tol`] for the bound of
//! the array it compares, by what the array is ([`Kind`]) and the device it ran on.
//!
//! Comparison: `|actual - expected| <= atol + rtol |expected|` elementwise
//! ([`crate::common::check_close`]); a *scaled* `atol` is multiplied by
//! `max(1, max |expected|)` of that array.
//!
//! | [`Kind`] | fixture README row | device with f64 | f32-only device (wgpu) |
//! |---|---|---|---|
//! | `Values` | float64 losses, gradients, advantages, per-token outputs | 1e-9 / 1e-12 | 1e-4 / 1e-5 scaled |
//! | `Metrics` | `metrics` (some float32-rounded); `orpo` (odds ratio in float32) | 1e-6 / 1e-7 | 1e-4 / 1e-5 scaled |
//! | `F32Case` | `dpo/*_f32` (float32 end to end) | 1e-5 / 1e-6 | 1e-4 / 1e-5 scaled |
//! | `OddsRatioNearZero` | `orpo` per-pair odds ratio | 1e-6 / 1e-7 | 1e-3 / 1e-5 scaled |
//! | `Float32Accumulated` | `logprob` TRL outputs and gradients | 1e-4 / 1e-5 scaled | 1e-4 / 1e-5 scaled |
//! | `ReferenceF64` | `logprob` `reference_fp64` | 1e-9 / 1e-12 | not compared |
//!
//! The f32-only column is one rule: `rtol = max(f64 rtol, 1e-4)`, `atol = 1e-5` scaled
//! ([`Tol::on`]), except `OddsRatioNearZero`: on f32-only devices `log(1 - exp(x))` for `x`
//! near 0 has condition number ~`1/|x|`, and GPU transcendentals (Vulkan allows `log()` an
//! *absolute* error of 2^-21 near 1) turn that into ~5e-4 relative error on the
//! `ratio_near_zero_logps` case. The same figures are in the README's "What was tested where"
//! table and `fixtures/README.md` ("Recommended tolerances").

use crate::common::{TestDevice, check_close};

/// What a compared array is; picks its row of the table in the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Float64 losses, gradients, advantages, rewards, per-token outputs.
    Values,
    /// Logged metrics (some are float32-rounded counts or fractions in the anchor), and
    /// anything the anchor computes internally in float32 (the ORPO odds ratio).
    Metrics,
    /// A case the fixture runs in float32 end to end (`config.dtype = "float32"`).
    F32Case,
    /// The ORPO per-pair odds ratio, whose `log1mexp` near 0 is ill-conditioned in f32.
    OddsRatioNearZero,
    /// TRL's fused log-prob kernel outputs and gradients (float32 accumulation in TRL).
    Float32Accumulated,
    /// The fixtures' independent float64 cross-check (`reference_fp64`); f64 devices only.
    ReferenceF64,
}

/// One bound: `|a - e| <= atol' + rtol |e|`, `atol' = atol * max(1, max |e|)` when `scaled`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance (times the array's max magnitude when `scaled`).
    pub atol: f64,
    /// Whether `atol` scales with the array's largest magnitude (floored at 1).
    pub scaled: bool,
}

/// f32-only devices: the relative floor and the scaled absolute floor.
const F32_DEVICE_RTOL: f64 = 1e-4;
const F32_DEVICE_ATOL: f64 = 1e-5;

const fn exact_scale(rtol: f64, atol: f64) -> Tol {
    Tol {
        rtol,
        atol,
        scaled: false,
    }
}

impl Tol {
    /// The bound on a device that computes f64 (the fixture README's column).
    pub const fn f64_device(kind: Kind) -> Tol {
        match kind {
            Kind::Values | Kind::ReferenceF64 => exact_scale(1e-9, 1e-12),
            Kind::Metrics | Kind::OddsRatioNearZero => exact_scale(1e-6, 1e-7),
            Kind::F32Case => exact_scale(1e-5, 1e-6),
            Kind::Float32Accumulated => Tol {
                rtol: 1e-4,
                atol: 1e-5,
                scaled: true,
            },
        }
    }

    /// `self` on `dev`: unchanged where the device computes f64, else relaxed to the f32-only
    /// column (`rtol >= 1e-4`, `atol = 1e-5` scaled).
    pub fn on(self, dev: &TestDevice) -> Tol {
        if dev.has_f64() {
            self
        } else {
            Tol {
                rtol: self.rtol.max(F32_DEVICE_RTOL),
                atol: F32_DEVICE_ATOL,
                scaled: true,
            }
        }
    }

    /// Compares `actual` with `expected` under this bound; `Err` names `what` and the worst index.
    pub fn check(self, what: &str, actual: &[f64], expected: &[f64]) -> Result<(), String> {
        let atol = if self.scaled {
            self.atol * expected.iter().fold(1.0f64, |m, x| m.max(x.abs()))
        } else {
            self.atol
        };
        check_close(what, actual, expected, self.rtol, atol)
    }
}

/// The bound for an array of `kind` computed on `dev` (the table in the module docs).
pub fn tol(kind: Kind, dev: &TestDevice) -> Tol {
    let t = Tol::f64_device(kind).on(dev);
    match kind {
        Kind::OddsRatioNearZero if !dev.has_f64() => Tol {
            rtol: t.rtol.max(1e-3),
            ..t
        },
        _ => t,
    }
}

/// Shorthand: `tol(kind, dev).check(what, actual, expected)`.
pub fn check(
    kind: Kind,
    dev: &TestDevice,
    what: &str,
    actual: &[f64],
    expected: &[f64],
) -> Result<(), String> {
    tol(kind, dev).check(what, actual, expected)
}
