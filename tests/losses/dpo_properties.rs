//! Property tests for the DPO family (one binary for the whole family).
//!
//! - Closed-form gradients: for every loss type, the autodiff gradient w.r.t. the chosen /
//!   rejected policy log-probs **and** the reference log-probs equals the derivative written
//!   out by hand below (per-pair derivative / B). `aot`, `aot_unpaired` and `discopop` are
//!   checked against central finite differences in f64.
//! - Invariances: shifting `c` and `c₀` by a constant leaves every log-ratio loss unchanged;
//!   hinge is 0 (value and gradient) past its margin; IPO is minimized at `z̄ = 1/(2β)`.
//! - Stability: `|βz|` up to 1e4 and zero-length completions give finite values and gradients;
//!   f32 agrees with f64 to 1e-5 relative.
//!
//! Runs on every f64-capable device of `common::devices()`, 256 cases per property.

use crate::common;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::{
    CpoLossConfig, CpoLossType, DpoLossConfig, DpoLossType, FDivergenceType, KtoLossConfig,
    OrpoLossConfig, PreferenceBatch, UnpairedBatch,
};
use common::{TestDevice, bool_tensor, to_vec};
use proptest::prelude::*;

const CASES: u32 = 256;

/// A score function `s(Δ)` or its derivative.
type Score = Box<dyn Fn(f64) -> f64>;

fn f64_devices() -> Vec<TestDevice> {
    common::devices()
        .into_iter()
        .filter(|d| d.has_f64())
        .collect()
}

fn t1(values: &[f64], dtype: FloatDType, device: &Device) -> Tensor<1> {
    let dtype: burn::tensor::DType = dtype.into();
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        (device, dtype),
    )
}

fn sig(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        x.exp() / (1.0 + x.exp())
    }
}

fn log_sig(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// One batch of pairs on the host.
#[derive(Debug, Clone)]
struct Pairs {
    c: Vec<f64>,
    r: Vec<f64>,
    c0: Vec<f64>,
    r0: Vec<f64>,
    nc: Vec<f64>,
    nr: Vec<f64>,
}

impl Pairs {
    fn len(&self) -> usize {
        self.c.len()
    }
}

fn pairs(max_abs: f64) -> impl Strategy<Value = Pairs> {
    (1usize..5).prop_flat_map(move |b| {
        let v = || proptest::collection::vec(-max_abs..0.0f64, b);
        let n = || proptest::collection::vec(1u32..20, b);
        (v(), v(), v(), v(), n(), n()).prop_map(|(c, r, c0, r0, nc, nr)| Pairs {
            c,
            r,
            c0,
            r0,
            nc: nc.into_iter().map(f64::from).collect(),
            nr: nr.into_iter().map(f64::from).collect(),
        })
    })
}

/// Autodiff leaves for one batch; the reference log-probs are leaves too (set directly, not
/// through `with_ref_logps`, which detaches them) so their gradient can be checked.
struct Leaves {
    c: Tensor<1>,
    r: Tensor<1>,
    c0: Tensor<1>,
    r0: Tensor<1>,
    batch: PreferenceBatch,
}

fn leaves(p: &Pairs, dtype: FloatDType, device: &Device) -> Leaves {
    let leaf = |v: &[f64]| {
        let x = t1(v, dtype, device);
        if device.is_autodiff() {
            x.require_grad()
        } else {
            x
        }
    };
    let (c, r, c0, r0) = (leaf(&p.c), leaf(&p.r), leaf(&p.c0), leaf(&p.r0));
    let mut batch = PreferenceBatch::new(c.clone(), r.clone())
        .with_token_counts(t1(&p.nc, dtype, device), t1(&p.nr, dtype, device));
    batch.ref_chosen_logps = Some(c0.clone());
    batch.ref_rejected_logps = Some(r0.clone());
    Leaves {
        c,
        r,
        c0,
        r0,
        batch,
    }
}

struct Evaluated {
    loss: f64,
    gc: Vec<f64>,
    gr: Vec<f64>,
    gc0: Vec<f64>,
    gr0: Vec<f64>,
}

fn grad(x: &Tensor<1>, grads: &burn::tensor::Gradients) -> Vec<f64> {
    x.grad(grads)
        .map(to_vec)
        .unwrap_or_else(|| vec![0.0; x.dims()[0]])
}

fn evaluate(config: &DpoLossConfig, p: &Pairs, dtype: FloatDType, device: &Device) -> Evaluated {
    let l = leaves(p, dtype, device);
    let out = config.init().forward(&l.batch);
    let loss = to_vec(out.loss.clone())[0];
    if !device.is_autodiff() {
        return Evaluated {
            loss,
            gc: vec![],
            gr: vec![],
            gc0: vec![],
            gr0: vec![],
        };
    }
    let grads = out.loss.backward();
    Evaluated {
        loss,
        gc: grad(&l.c, &grads),
        gr: grad(&l.r, &grads),
        gc0: grad(&l.c0, &grads),
        gr0: grad(&l.r0, &grads),
    }
}

fn close(what: &str, got: f64, want: f64, rtol: f64, atol: f64) -> Result<(), TestCaseError> {
    prop_assert!(
        (got - want).abs() <= atol + rtol * want.abs(),
        "{what}: got {got}, want {want} (diff {})",
        (got - want).abs()
    );
    Ok(())
}

/// Per-pair derivatives `(∂ℓ/∂Δc, ∂ℓ/∂Δr)` written out by hand, for the reverse-KL score.
fn closed_form(loss_type: DpoLossType, beta: f64, eps: f64, p: &Pairs, i: usize) -> (f64, f64) {
    let dc = p.c[i] - p.c0[i];
    let dr = p.r[i] - p.r0[i];
    let z = dc - dr;
    let x = beta * z;
    let (xc, xr) = (beta * dc, beta * dr);
    match loss_type {
        // ℓ = -log σ(βz): ∂ℓ/∂z = -β σ(-βz)
        DpoLossType::Sigmoid => (-beta * sig(-x), beta * sig(-x)),
        // ℓ = max(0, 1 - βz): ∂ℓ/∂z = -β on 1 - βz > 0
        DpoLossType::Hinge => {
            let g = if 1.0 - x > 0.0 { -beta } else { 0.0 };
            (g, -g)
        }
        // ℓ = (Δc/n_c - Δr/n_r - 1/(2β))²
        DpoLossType::Ipo => {
            let e = dc / p.nc[i] - dr / p.nr[i] - 0.5 / beta;
            (2.0 * e / p.nc[i], -2.0 * e / p.nr[i])
        }
        // ∂ℓ/∂x = σ(x)σ(-x)(x - log((1-ε)/ε))
        DpoLossType::ExoPair => {
            let g = beta * sig(x) * sig(-x) * (x - ((1.0 - eps) / eps).ln());
            (g, -g)
        }
        // ℓ = -log σ(xc) - ½ log σ(-xc) - ½ log σ(-xr)
        DpoLossType::NcaPair => (beta * (-sig(-xc) + 0.5 * sig(xc)), beta * 0.5 * sig(xr)),
        // ∂ℓ/∂x = (-(1-ε) σ(-x) - ε σ(x)) / (1 - 2ε)
        DpoLossType::Robust => {
            let g = beta * (-(1.0 - eps) * sig(-x) - eps * sig(x)) / (1.0 - 2.0 * eps);
            (g, -g)
        }
        // ℓ = -log σ(xc) - log σ(-xr)
        DpoLossType::BcoPair => (-beta * sig(-xc), beta * sig(xr)),
        // ℓ = (Δc - 1/(2β))² + (Δr + 1/(2β))²
        DpoLossType::SppoHard => (2.0 * (dc - 0.5 / beta), 2.0 * (dr + 0.5 / beta)),
        // ℓ = σ(-xc) + σ(xr)
        DpoLossType::ApoZero => (-beta * sig(xc) * sig(-xc), beta * sig(xr) * sig(-xr)),
        // ℓ = σ(xc) + σ(-x)
        DpoLossType::ApoDown => (
            beta * sig(xc) * sig(-xc) - beta * sig(x) * sig(-x),
            beta * sig(x) * sig(-x),
        ),
        // ℓ = -log σ(β(Δc/n_c - Δr/n_r))
        DpoLossType::SigmoidNorm => {
            let zn = beta * (dc / p.nc[i] - dr / p.nr[i]);
            (-beta * sig(-zn) / p.nc[i], beta * sig(-zn) / p.nr[i])
        }
        other => unreachable!("{other:?} is checked by finite differences"),
    }
}

fn config_for(loss_type: DpoLossType, beta: f64, eps: f64) -> DpoLossConfig {
    let config = DpoLossConfig::new()
        .with_loss_type(vec![loss_type])
        .with_beta(beta);
    if loss_type.reads_label_smoothing() {
        config.with_label_smoothing(eps)
    } else {
        config
    }
}

fn eps_for(loss_type: DpoLossType, eps: f64) -> f64 {
    match loss_type {
        DpoLossType::ExoPair => eps.max(1e-3),
        DpoLossType::Robust => eps.min(0.45),
        _ => eps,
    }
}

const CLOSED_FORM: [DpoLossType; 11] = [
    DpoLossType::Sigmoid,
    DpoLossType::Hinge,
    DpoLossType::Ipo,
    DpoLossType::ExoPair,
    DpoLossType::NcaPair,
    DpoLossType::Robust,
    DpoLossType::BcoPair,
    DpoLossType::SppoHard,
    DpoLossType::ApoZero,
    DpoLossType::ApoDown,
    DpoLossType::SigmoidNorm,
];

fn check_closed_form(
    loss_type: DpoLossType,
    p: &Pairs,
    beta: f64,
    eps: f64,
) -> Result<(), TestCaseError> {
    let eps = eps_for(loss_type, eps);
    let config = config_for(loss_type, beta, eps);
    let b = p.len() as f64;
    for dev in f64_devices() {
        let e = evaluate(&config, p, FloatDType::F64, &dev.autodiff());
        for i in 0..p.len() {
            let (gc, gr) = closed_form(loss_type, beta, eps, p, i);
            let scale = 1e-12 * (1.0 + gc.abs().max(gr.abs()));
            close(
                &format!("{loss_type:?} dL/dc[{i}] on {}", dev.name),
                e.gc[i],
                gc / b,
                1e-9,
                scale,
            )?;
            close(
                &format!("{loss_type:?} dL/dr[{i}]"),
                e.gr[i],
                gr / b,
                1e-9,
                scale,
            )?;
            close(
                &format!("{loss_type:?} dL/dc0[{i}]"),
                e.gc0[i],
                -gc / b,
                1e-9,
                scale,
            )?;
            close(
                &format!("{loss_type:?} dL/dr0[{i}]"),
                e.gr0[i],
                -gr / b,
                1e-9,
                scale,
            )?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn closed_form_gradients_every_loss_type(p in pairs(40.0), beta in 0.01f64..2.0, eps in 0.0f64..0.45) {
        for loss_type in CLOSED_FORM {
            check_closed_form(loss_type, &p, beta, eps)?;
        }
    }

    #[test]
    fn cdpo_label_smoothing_closed_form(p in pairs(40.0), beta in 0.01f64..2.0, eps in 0.0f64..0.5) {
        // ℓ = -(1-ε) log σ(x) - ε log σ(-x): ∂ℓ/∂z = -β((1-ε) σ(-x) - ε σ(x))
        let config = DpoLossConfig::new().with_beta(beta).with_cdpo_label_smoothing(eps);
        let e = evaluate(&config, &p, FloatDType::F64, &Device::flex().autodiff());
        let b = p.len() as f64;
        for i in 0..p.len() {
            let x = beta * ((p.c[i] - p.c0[i]) - (p.r[i] - p.r0[i]));
            let g = -beta * ((1.0 - eps) * sig(-x) - eps * sig(x));
            close("cDPO dL/dc", e.gc[i], g / b, 1e-9, 1e-13)?;
            close("cDPO dL/dr0", e.gr0[i], g / b, 1e-9, 1e-13)?;
        }
    }

    #[test]
    fn f_divergence_sigmoid_closed_form(p in pairs(5.0), beta in 0.01f64..2.0, alpha in 0.1f64..0.9, which in 0usize..3) {
        // ℓ = -log σ(β(s(Δc) - s(Δr))): ∂ℓ/∂Δc = -β σ(-βδ) s'(Δc), ∂ℓ/∂Δr = β σ(-βδ) s'(Δr)
        let (kind, s, ds): (FDivergenceType, Score, Score) = match which {
            0 => (FDivergenceType::ForwardKl, Box::new(|d: f64| 1.0 - (-d).exp()), Box::new(|d: f64| (-d).exp())),
            1 => (FDivergenceType::JsDivergence, Box::new(|d: f64| 2f64.ln() + log_sig(d)), Box::new(|d: f64| sig(-d))),
            _ => (
                FDivergenceType::AlphaDivergence,
                Box::new(move |d: f64| (((alpha - 1.0) * d).exp() - 1.0) / (alpha - 1.0)),
                Box::new(move |d: f64| ((alpha - 1.0) * d).exp()),
            ),
        };
        let config = DpoLossConfig::new()
            .with_beta(beta)
            .with_f_divergence_type(kind)
            .with_f_alpha_divergence_coef(alpha);
        let e = evaluate(&config, &p, FloatDType::F64, &Device::flex().autodiff());
        let b = p.len() as f64;
        for i in 0..p.len() {
            let (dc, dr) = (p.c[i] - p.c0[i], p.r[i] - p.r0[i]);
            let delta = s(dc) - s(dr);
            let gc = -beta * sig(-beta * delta) * ds(dc);
            let gr = beta * sig(-beta * delta) * ds(dr);
            close(&format!("{kind:?} dL/dc"), e.gc[i], gc / b, 1e-9, 1e-13)?;
            close(&format!("{kind:?} dL/dr"), e.gr[i], gr / b, 1e-9, 1e-13)?;
            close(&format!("{kind:?} dL/dc0"), e.gc0[i], -gc / b, 1e-9, 1e-13)?;
        }
    }

    #[test]
    fn finite_difference_gradients_aot_discopop(p in pairs(20.0), beta in 0.05f64..1.0, eps in 0.0f64..0.5, tau in 0.05f64..2.0) {
        let h = 1e-6;
        let device = Device::flex().autodiff();
        for loss_type in [DpoLossType::Aot, DpoLossType::AotUnpaired, DpoLossType::Discopop] {
            let config = config_for(loss_type, beta, eps).with_discopop_tau(tau);
            let e = evaluate(&config, &p, FloatDType::F64, &device);
            let plain = Device::flex();
            let loss_at = |q: &Pairs| evaluate(&config, q, FloatDType::F64, &plain).loss;
            for i in 0..p.len() {
                for (name, field, got) in [("c", 0, e.gc[i]), ("r", 1, e.gr[i]), ("c0", 2, e.gc0[i]), ("r0", 3, e.gr0[i])] {
                    let shift = |d: f64| {
                        let mut q = p.clone();
                        match field { 0 => q.c[i] += d, 1 => q.r[i] += d, 2 => q.c0[i] += d, _ => q.r0[i] += d }
                        q
                    };
                    let fd = (loss_at(&shift(h)) - loss_at(&shift(-h))) / (2.0 * h);
                    // central differences: round-off ~ 1e-16 |L| / h, truncation O(h²)
                    close(&format!("{loss_type:?} dL/d{name}[{i}] vs finite difference"), got, fd, 1e-5, 1e-9 * (1.0 + e.loss.abs()))?;
                }
            }
        }
    }

    #[test]
    fn shifting_policy_and_reference_leaves_dpo_unchanged(p in pairs(40.0), beta in 0.01f64..2.0, k in -30.0f64..30.0) {
        for loss_type in DpoLossType::ALL {
            if matches!(loss_type, DpoLossType::Sft) {
                continue; // reads per-token log-probs, not log-ratios
            }
            let config = config_for(loss_type, beta, eps_for(loss_type, 0.1));
            let device = Device::flex();
            let base = evaluate(&config, &p, FloatDType::F64, &device).loss;
            let mut q = p.clone();
            q.c.iter_mut().for_each(|x| *x += k);
            q.c0.iter_mut().for_each(|x| *x += k);
            let shifted = evaluate(&config, &q, FloatDType::F64, &device).loss;
            close(&format!("{loss_type:?} under c, c0 += {k}"), shifted, base, 1e-9, 1e-12)?;
        }
    }

    #[test]
    fn hinge_is_zero_past_its_margin(p in pairs(20.0), beta in 0.01f64..2.0, extra in 0.0f64..50.0) {
        // Move every pair past the margin: βz >= 1.
        let mut q = p.clone();
        for i in 0..q.len() {
            let z = (q.c[i] - q.c0[i]) - (q.r[i] - q.r0[i]);
            q.c[i] += 1.0 / beta - z + extra;
        }
        let config = config_for(DpoLossType::Hinge, beta, 0.0);
        let e = evaluate(&config, &q, FloatDType::F64, &Device::flex().autodiff());
        prop_assert!(e.loss.abs() < 1e-9, "hinge past margin: {}", e.loss);
        prop_assert!(e.gc.iter().chain(&e.gr).all(|g| *g == 0.0), "hinge gradient past margin");
    }

    #[test]
    fn ipo_is_minimized_at_half_inverse_beta_per_token(p in pairs(20.0), beta in 0.05f64..2.0, off in -3.0f64..3.0) {
        // Put every pair at z̄ = Δc/n_c - Δr/n_r = 1/(2β) (+ off).
        let place = |off: f64| {
            let mut q = p.clone();
            for i in 0..q.len() {
                let zbar = (q.c[i] - q.c0[i]) / q.nc[i] - (q.r[i] - q.r0[i]) / q.nr[i];
                q.c[i] += (0.5 / beta + off - zbar) * q.nc[i];
            }
            q
        };
        let config = config_for(DpoLossType::Ipo, beta, 0.0);
        let device = Device::flex().autodiff();
        let at_min = evaluate(&config, &place(0.0), FloatDType::F64, &device);
        prop_assert!(at_min.loss.abs() < 1e-12, "IPO at its minimum: {}", at_min.loss);
        prop_assert!(at_min.gc.iter().all(|g| g.abs() < 1e-9), "IPO gradient at its minimum: {:?}", at_min.gc);
        let elsewhere = evaluate(&config, &place(off), FloatDType::F64, &device).loss;
        close("IPO off its minimum", elsewhere, off * off, 1e-9, 1e-12)?;
    }

    #[test]
    fn extreme_margins_are_finite(p in pairs(1.0), sign in prop::sample::select(vec![-1.0f64, 1.0]), magnitude in 1.0f64..1e4) {
        // |βz| up to 1e4 (β = 1): z = ±magnitude on every pair, both dtypes.
        let mut q = p.clone();
        for i in 0..q.len() {
            q.c0[i] = q.c[i] - sign * magnitude / 2.0;
            q.r0[i] = q.r[i] + sign * magnitude / 2.0;
        }
        for dtype in [FloatDType::F64, FloatDType::F32] {
            for loss_type in DpoLossType::ALL {
                if matches!(loss_type, DpoLossType::Sft) {
                    continue; // covered by zero_length_completions_are_finite
                }
                let config = config_for(loss_type, 1.0, eps_for(loss_type, 0.1));
                let e = evaluate(&config, &q, dtype, &Device::flex().autodiff());
                prop_assert!(e.loss.is_finite(), "{loss_type:?} {dtype:?} z = {}: loss {}", sign * magnitude, e.loss);
                for g in e.gc.iter().chain(&e.gr).chain(&e.gc0).chain(&e.gr0) {
                    prop_assert!(g.is_finite(), "{loss_type:?} {dtype:?} z = {}: gradient {g}", sign * magnitude);
                }
            }
        }
    }

    #[test]
    fn f32_agrees_with_f64(p in pairs(20.0), beta in 0.05f64..1.0) {
        // Inputs rounded to f32 first, so only the computation differs.
        let round = |v: &Vec<f64>| v.iter().map(|&x| x as f32 as f64).collect::<Vec<_>>();
        let q = Pairs { c: round(&p.c), r: round(&p.r), c0: round(&p.c0), r0: round(&p.r0), ..p.clone() };
        for loss_type in DpoLossType::ALL {
            if matches!(loss_type, DpoLossType::Sft) {
                continue;
            }
            let config = config_for(loss_type, beta, eps_for(loss_type, 0.1));
            let device = Device::flex();
            let wide = evaluate(&config, &q, FloatDType::F64, &device).loss;
            let narrow = evaluate(&config, &q, FloatDType::F32, &device).loss;
            // 1e-5 relative; the 1e-6 absolute floor is for losses that are (nearly) 0.
            close(&format!("{loss_type:?} f32 vs f64"), narrow, wide, 1e-5, 1e-6)?;
        }
    }

    #[test]
    fn sft_gradient_is_minus_one_over_token_count(b in 1usize..4, t in 1usize..6, seed in any::<u64>()) {
        let mut rng = common::Rng::new(seed);
        let device = Device::flex().autodiff();
        let n = b * t;
        let lp: Vec<f64> = (0..n).map(|_| -rng.range(0.0, 5.0)).collect();
        let mask: Vec<bool> = (0..n).map(|_| rng.uniform() < 0.7).collect();
        let valid = mask.iter().filter(|m| **m).count() as f64;
        let lp: Vec<f64> = lp.iter().zip(&mask).map(|(x, m)| if *m { *x } else { 0.0 }).collect();
        let x = Tensor::<2>::from_data(TensorData::new(lp.clone(), [b, t]), (&device, FloatDType::F64.into())).require_grad();
        let chosen = GatheredLogps { logps: x.clone(), mask: bool_tensor::<2>(mask.clone(), [b, t], &device) };
        let rejected = GatheredLogps {
            logps: Tensor::zeros([b, t], (&device, FloatDType::F64.into())),
            mask: bool_tensor::<2>(vec![true; n], [b, t], &device),
        };
        let batch = PreferenceBatch::from_tokens(chosen, rejected);
        let out = DpoLossConfig::new().with_loss_type(vec![DpoLossType::Sft]).init().forward(&batch);
        // L = -Σ_valid logp / N: ∂L/∂logp_t = -1/N on valid tokens, 0 elsewhere (N >= 1).
        let want = -lp.iter().sum::<f64>() / valid.max(1.0);
        close("sft loss", to_vec(out.loss.clone())[0], want, 1e-12, 1e-14)?;
        let grads = out.loss.backward();
        let g = to_vec(x.grad(&grads).unwrap());
        for (gi, m) in g.iter().zip(&mask) {
            let want = if *m { -1.0 / valid.max(1.0) } else { 0.0 };
            close("sft gradient", *gi, want, 1e-12, 1e-15)?;
        }
    }

    #[test]
    fn cpo_and_orpo_closed_form(p in pairs(3.0), beta in 0.05f64..2.0, gamma in 0.0f64..2.0) {
        let device = Device::flex().autodiff();
        let b = p.len() as f64;
        // Averages strictly below 0 for ORPO.
        let ca: Vec<f64> = p.c.iter().map(|x| x - 1e-3).collect();
        let ra: Vec<f64> = p.r.iter().map(|x| x - 1e-3).collect();
        for (kind, label) in [(CpoLossType::Sigmoid, "sigmoid"), (CpoLossType::Hinge, "hinge"), (CpoLossType::Ipo, "ipo"), (CpoLossType::Simpo, "simpo")] {
            let loss = CpoLossConfig::new().with_loss_type(kind).with_beta(beta).with_simpo_gamma(gamma).init();
            let c = t1(&ca, FloatDType::F64, &device).require_grad();
            let r = t1(&ra, FloatDType::F64, &device).require_grad();
            let terms = loss.pair_terms(c.clone(), r.clone());
            let grads = terms.losses.mean().backward();
            let (gc, gr) = (grad(&c, &grads), grad(&r, &grads));
            for i in 0..p.len() {
                let z = ca[i] - ra[i];
                let g = match kind {
                    CpoLossType::Sigmoid => -beta * sig(-beta * z),
                    CpoLossType::Hinge => if 1.0 - beta * z > 0.0 { -beta } else { 0.0 },
                    CpoLossType::Ipo => 2.0 * (z - 0.5 / beta),
                    CpoLossType::Simpo => -beta * sig(-(beta * z - gamma)),
                };
                close(&format!("CPO {label} dL/dc"), gc[i], g / b, 1e-9, 1e-13)?;
                close(&format!("CPO {label} dL/dr"), gr[i], -g / b, 1e-9, 1e-13)?;
            }
        }
        // ORPO: o = logit(p_c) - logit(p_r); ∂(β log σ(o))/∂ĉ = β σ(-o) / (1 - p_c).
        let orpo = OrpoLossConfig::new().with_beta(beta).init();
        let c = t1(&ca, FloatDType::F64, &device).require_grad();
        let r = t1(&ra, FloatDType::F64, &device).require_grad();
        let terms = orpo.odds_ratio(c.clone(), r.clone());
        let grads = terms.losses.mean().backward();
        let (gc, gr) = (grad(&c, &grads), grad(&r, &grads));
        for i in 0..p.len() {
            let logit = |x: f64| x - (-x.exp_m1()).ln();
            let o = logit(ca[i]) - logit(ra[i]);
            close("ORPO dL/dc", gc[i], beta * sig(-o) / (-ca[i].exp_m1()) / b, 1e-8, 1e-12)?;
            close("ORPO dL/dr", gr[i], -beta * sig(-o) / (-ra[i].exp_m1()) / b, 1e-8, 1e-12)?;
        }
    }

    #[test]
    fn kto_closed_form(p in pairs(20.0), beta in 0.01f64..2.0, kl in 0.0f64..3.0, wd in 0.5f64..1.5, wu in 0.5f64..1.5, seed in any::<u64>()) {
        let device = Device::flex().autodiff();
        let mut rng = common::Rng::new(seed);
        let desirable: Vec<bool> = (0..p.len()).map(|_| rng.uniform() < 0.5).collect();
        let logps = t1(&p.c, FloatDType::F64, &device).require_grad();
        let batch = UnpairedBatch::new(logps.clone(), t1(&p.c0, FloatDType::F64, &device), bool_tensor::<1>(desirable.clone(), [p.len()], &device))
            .with_kl(t1(&[kl], FloatDType::F64, &device));
        let out = KtoLossConfig::new().with_beta(beta).with_desirable_weight(wd).with_undesirable_weight(wu).init().forward(&batch);
        let grads = out.loss.backward();
        let g = grad(&logps, &grads);
        let b = p.len() as f64;
        for i in 0..p.len() {
            let d = p.c[i] - p.c0[i];
            // desirable ℓ = λ_D (1 - σ(β(Δ - KL))): ∂ℓ/∂Δ = -λ_D β σ(x)σ(-x), x = β(Δ - KL);
            // undesirable ℓ = λ_U (1 - σ(β(KL - Δ))): ∂ℓ/∂Δ = +λ_U β σ(x)σ(-x), x = β(KL - Δ).
            let want = if desirable[i] {
                let x = beta * (d - kl);
                -wd * beta * sig(x) * sig(-x)
            } else {
                let x = beta * (kl - d);
                wu * beta * sig(x) * sig(-x)
            };
            close("KTO dL/dlogp", g[i], want / b, 1e-9, 1e-14)?;
        }
    }
}

#[test]
fn zero_length_completions_are_finite() {
    // One chosen and one rejected completion with no token at all (TRL 1033: IPO NaN).
    for dev in f64_devices() {
        let device = dev.autodiff();
        for loss_type in DpoLossType::ALL {
            let b = 2;
            let t = 3;
            let lp = vec![-1.0, -2.0, -0.5, 0.0, 0.0, 0.0];
            let chosen_mask = vec![true, true, true, false, false, false];
            let rejected_mask = vec![false, false, false, true, true, false];
            let x = Tensor::<2>::from_data(
                TensorData::new(lp.clone(), [b, t]),
                (&device, FloatDType::F64.into()),
            )
            .require_grad();
            let y = Tensor::<2>::from_data(
                TensorData::new(lp.clone(), [b, t]),
                (&device, FloatDType::F64.into()),
            )
            .require_grad();
            let chosen = GatheredLogps {
                logps: x.clone().mask_fill(
                    bool_tensor::<2>(chosen_mask.clone(), [b, t], &device).bool_not(),
                    0.0,
                ),
                mask: bool_tensor::<2>(chosen_mask, [b, t], &device),
            };
            let rejected = GatheredLogps {
                logps: y.clone().mask_fill(
                    bool_tensor::<2>(rejected_mask.clone(), [b, t], &device).bool_not(),
                    0.0,
                ),
                mask: bool_tensor::<2>(rejected_mask, [b, t], &device),
            };
            let batch = PreferenceBatch::from_tokens(chosen, rejected).with_ref_logps(
                t1(&[-3.0, -1.0], FloatDType::F64, &device),
                t1(&[0.0, -2.0], FloatDType::F64, &device),
            );
            let config =
                config_for(loss_type, 0.1, eps_for(loss_type, 0.1)).with_ld_alpha(Some(0.5));
            let out = config.init().forward(&batch);
            let loss = to_vec(out.loss.clone())[0];
            assert!(
                loss.is_finite(),
                "{loss_type:?} on {}: loss {loss}",
                dev.name
            );
            let grads = out.loss.backward();
            for g in to_vec(x.grad(&grads).unwrap_or_else(|| x.zeros_like()))
                .into_iter()
                .chain(to_vec(y.grad(&grads).unwrap_or_else(|| y.zeros_like())))
            {
                assert!(g.is_finite(), "{loss_type:?} on {}: gradient {g}", dev.name);
            }
        }
    }
}
