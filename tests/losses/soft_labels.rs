//! Soft labels (AI feedback): Bradley-Terry and DPO `sigmoid` with a per-pair target
//! probability `p`: values and gradients against the closed form
//! `-p log σ(x) - (1 - p) log σ(-x)`, `d/dx = σ(x) - p`; a label of 1 equals the hard-label
//! loss exactly; a constant label `1 - ε` equals cDPO's smoothing `ε`; typed errors.

use crate::common;

use burn::tensor::Tensor;
use burn_rlhf::Error;
use burn_rlhf::losses::{BradleyTerryLossConfig, DpoLossConfig, DpoLossType, PreferenceBatch};
use common::{TestDevice, assert_close, tensor, to_vec};
use proptest::prelude::*;

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `-log σ(x)` = softplus(-x), stably.
fn softplus_neg(x: f64) -> f64 {
    (-x).max(0.0) + (-x.abs()).exp().ln_1p()
}

fn tol(dev: &TestDevice) -> (f64, f64) {
    if dev.has_f64() {
        (1e-12, 1e-13)
    } else {
        (1e-5, 1e-6)
    }
}

/// Bradley-Terry with soft labels: the mean over pairs of the closed form; d r_c = (σ(x) - p)
/// / B, d r_r = -d r_c.
fn check_bt(x: &[f64], p: &[f64], dev: &TestDevice) {
    let device = dev.autodiff();
    let b = x.len();
    let rc = tensor::<1>(x.to_vec(), [b], dev, &device).require_grad();
    let rr = tensor::<1>(vec![0.0; b], [b], dev, &device).require_grad();
    let probs = tensor::<1>(p.to_vec(), [b], dev, &device);
    let out =
        BradleyTerryLossConfig::new()
            .init()
            .forward_soft(rc.clone(), rr.clone(), None, probs);
    let grads = out.loss.backward();
    let want: f64 = x
        .iter()
        .zip(p)
        .map(|(&x, &p)| p * softplus_neg(x) + (1.0 - p) * softplus_neg(-x))
        .sum::<f64>()
        / b as f64;
    let want_grad: Vec<f64> = x
        .iter()
        .zip(p)
        .map(|(&x, &p)| (sigmoid(x) - p) / b as f64)
        .collect();
    let (rtol, atol) = tol(dev);
    assert_close("bt soft loss", &to_vec(out.loss), &[want], rtol, atol);
    assert_close(
        "bt soft d r_c",
        &to_vec(rc.grad(&grads).unwrap()),
        &want_grad,
        rtol,
        atol,
    );
    let neg: Vec<f64> = want_grad.iter().map(|g| -g).collect();
    assert_close(
        "bt soft d r_r",
        &to_vec(rr.grad(&grads).unwrap()),
        &neg,
        rtol,
        atol,
    );
}

/// DPO `sigmoid` with soft labels, policy log-probs only moving: per pair
/// `-p log σ(βδ) - (1 - p) log σ(-βδ)`, `d chosen_logps = β (σ(βδ) - p) / B`.
fn check_dpo(delta: &[f64], p: &[f64], beta: f64, dev: &TestDevice) {
    let device = dev.autodiff();
    let b = delta.len();
    let chosen = tensor::<1>(delta.to_vec(), [b], dev, &device).require_grad();
    let zeros = || tensor::<1>(vec![0.0; b], [b], dev, &device);
    let mut batch = PreferenceBatch::new(chosen.clone(), zeros())
        .with_preference_probs(tensor::<1>(p.to_vec(), [b], dev, &device));
    batch.ref_chosen_logps = Some(zeros());
    batch.ref_rejected_logps = Some(zeros());
    let out = DpoLossConfig::new().with_beta(beta).init().forward(&batch);
    let grads = out.loss.backward();
    let want: f64 = delta
        .iter()
        .zip(p)
        .map(|(&d, &p)| p * softplus_neg(beta * d) + (1.0 - p) * softplus_neg(-beta * d))
        .sum::<f64>()
        / b as f64;
    let want_grad: Vec<f64> = delta
        .iter()
        .zip(p)
        .map(|(&d, &p)| beta * (sigmoid(beta * d) - p) / b as f64)
        .collect();
    let (rtol, atol) = tol(dev);
    assert_close("dpo soft loss", &to_vec(out.loss), &[want], rtol, atol);
    assert_close(
        "dpo soft d chosen",
        &to_vec(chosen.grad(&grads).unwrap()),
        &want_grad,
        rtol,
        atol,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn soft_labels_match_the_closed_form(
        pairs in prop::collection::vec((-8.0f64..8.0, 0.0f64..=1.0), 1..7),
        beta in prop::sample::select(vec![0.05, 0.1, 0.5, 2.0]),
    ) {
        let (x, p): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
        for dev in common::devices() {
            check_bt(&x, &p, &dev);
            check_dpo(&x, &p, beta, &dev);
        }
    }
}

/// A label of exactly 1 gives today's hard-label losses bit for bit (values and gradients);
/// a constant label `1 - ε` gives cDPO's smoothing `ε` (TRL's constant case).
#[test]
fn label_one_is_the_hard_loss_and_a_constant_label_is_cdpo() {
    for dev in common::devices() {
        let device = dev.autodiff();
        let x = vec![1.5, -0.25, 3.0, -4.0];
        let ones = || tensor::<1>(vec![1.0; 4], [4], &dev, &device);
        let run_bt = |soft: bool| {
            let rc = tensor::<1>(x.clone(), [4], &dev, &device).require_grad();
            let rr = tensor::<1>(vec![0.5; 4], [4], &dev, &device);
            let loss = BradleyTerryLossConfig::new().init();
            let out = if soft {
                loss.forward_soft(rc.clone(), rr, None, ones())
            } else {
                loss.forward(rc.clone(), rr, None)
            };
            let g = rc.grad(&out.loss.backward()).unwrap();
            (to_vec(out.loss), to_vec(g))
        };
        assert_eq!(run_bt(true), run_bt(false), "{}: Bradley-Terry", dev.name);
        let run_dpo = |probs: Option<f64>, cdpo: f64| {
            let chosen = tensor::<1>(x.clone(), [4], &dev, &device).require_grad();
            let rejected = tensor::<1>(vec![0.25; 4], [4], &dev, &device);
            let mut batch = PreferenceBatch::new(chosen.clone(), rejected);
            if let Some(p) = probs {
                batch = batch.with_preference_probs(tensor::<1>(vec![p; 4], [4], &dev, &device));
            }
            let out = DpoLossConfig::new()
                .with_beta(0.3)
                .with_cdpo_label_smoothing(cdpo)
                .init()
                .forward(&batch);
            let g = chosen.grad(&out.loss.backward()).unwrap();
            (to_vec(out.loss), to_vec(g))
        };
        assert_eq!(
            run_dpo(Some(1.0), 0.0),
            run_dpo(None, 0.0),
            "{}: DPO",
            dev.name
        );
        let (soft, smoothed) = (run_dpo(Some(0.8), 0.0), run_dpo(None, 0.2));
        let (rtol, atol) = tol(&dev);
        assert_close("cdpo loss", &soft.0, &smoothed.0, rtol, atol);
        assert_close("cdpo grad", &soft.1, &smoothed.1, rtol, atol);
    }
}

#[test]
fn soft_labels_reject_other_loss_types_and_bad_shapes() {
    let device = burn::tensor::Device::flex();
    let t = |v: Vec<f64>| Tensor::<1>::from_floats(v.as_slice(), &device);
    let batch = || {
        let mut b = PreferenceBatch::new(t(vec![1.0, 2.0]), t(vec![0.0, 0.5]))
            .with_preference_probs(t(vec![0.7, 0.4]));
        b.ref_chosen_logps = Some(t(vec![0.0, 0.0]));
        b.ref_rejected_logps = Some(t(vec![0.0, 0.0]));
        b
    };
    let err = DpoLossConfig::new()
        .with_loss_type(vec![DpoLossType::Ipo])
        .init()
        .try_forward(&batch())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Config {
                field: "preference_probs",
                ..
            }
        ),
        "{err}"
    );
    let err = DpoLossConfig::new()
        .with_cdpo_label_smoothing(0.1)
        .init()
        .try_forward(&batch())
        .unwrap_err();
    assert!(matches!(&err, Error::Conflict { .. }), "{err}");
    let err = BradleyTerryLossConfig::new()
        .init()
        .try_forward_soft(t(vec![1.0, 2.0]), t(vec![0.0, 0.5]), None, t(vec![0.5]))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Shape {
                arg: "preference_probs",
                ..
            }
        ),
        "{err}"
    );
    // Checked mode reads the labels: a value outside [0, 1] is a typed error.
    let err = burn_rlhf::with_checked_mode(true, || {
        BradleyTerryLossConfig::new().init().try_forward_soft(
            t(vec![1.0, 2.0]),
            t(vec![0.0, 0.5]),
            None,
            t(vec![0.5, 1.5]),
        )
    })
    .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Config {
                field: "preference_probs",
                ..
            }
        ),
        "{err}"
    );
}
