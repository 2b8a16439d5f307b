//! Unit tests of the DPO loss: value and gradient against the closed form, config validation, TRL JSON configs.
use super::*;
use crate::test_util::{t, v};
use burn::tensor::Device;

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn sigmoid_value_and_gradient_match_closed_form() {
    let device = Device::flex().autodiff();
    let (c, r, c0, r0) = ([-3.0, -7.5], [-4.0, -2.0], [-3.5, -6.0], [-3.0, -3.0]);
    let beta = 0.1;
    let chosen = t(&c, &device).require_grad();
    let rejected = t(&r, &device).require_grad();
    let batch = PreferenceBatch::new(chosen.clone(), rejected.clone())
        .with_ref_logps(t(&c0, &device), t(&r0, &device));
    let out = DpoLossConfig::new().init().forward(&batch);
    let grads = out.loss.backward();
    let z: Vec<f64> = (0..2).map(|i| (c[i] - c0[i]) - (r[i] - r0[i])).collect();
    let want_loss: f64 = z.iter().map(|z| -sig(beta * z).ln()).sum::<f64>() / 2.0;
    assert!((v(out.loss)[0] - want_loss).abs() < 1e-14);
    let gc = v(chosen.grad(&grads).unwrap());
    let gr = v(rejected.grad(&grads).unwrap());
    for i in 0..2 {
        // dL/dc = -β σ(-βz) / B; dL/dr = +β σ(-βz) / B
        let want = -beta * sig(-beta * z[i]) / 2.0;
        assert!((gc[i] - want).abs() < 1e-15, "{} vs {want}", gc[i]);
        assert!((gr[i] + want).abs() < 1e-15);
    }
}

#[test]
fn validation_rejects_bad_configs() {
    assert!(DpoLossConfig::new().with_beta(0.0).try_init().is_err());
    assert!(DpoLossConfig::new().with_beta(f64::NAN).try_init().is_err());
    let exo = DpoLossConfig::new().with_loss_type(vec![DpoLossType::ExoPair]);
    assert!(exo.clone().try_init().is_err());
    assert!(exo.with_label_smoothing(1e-3).try_init().is_ok());
    let robust = DpoLossConfig::new().with_loss_type(vec![DpoLossType::Robust]);
    assert!(robust.clone().with_label_smoothing(0.5).try_init().is_err());
    assert!(robust.with_label_smoothing(0.0).try_init().is_ok());
    assert!(
        DpoLossConfig::new()
            .with_loss_weights(Some(vec![1.0, 2.0]))
            .try_init()
            .is_err()
    );
    assert!(
        DpoLossConfig::new()
            .with_loss_type(vec![DpoLossType::Aot])
            .with_use_weighting(true)
            .try_init()
            .is_err()
    );
    assert!(
        DpoLossConfig::new()
            .with_loss_type(vec![DpoLossType::BcoPair])
            .with_f_divergence_type(FDivergenceType::ForwardKl)
            .try_init()
            .is_err()
    );
    assert!(
        DpoLossConfig::new()
            .with_label_smoothing(0.1)
            .try_init()
            .is_err()
    );
}

#[test]
fn config_loads_trl_json() {
    // Every field present (burn's Config JSON has no per-field defaults on load).
    let json = r#"{"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0],
        "beta": 0.2, "label_smoothing": 0.0, "f_divergence_type": "reverse_kl",
        "f_alpha_divergence_coef": 0.5, "use_weighting": false, "ld_alpha": null,
        "discopop_tau": 0.05, "cdpo_label_smoothing": 0.0, "normalizer": "sequence_mean"}"#;
    let config =
        <DpoLossConfig as Config>::load_binary(json.as_bytes()).expect("valid config JSON");
    assert_eq!(
        config.loss_type,
        vec![DpoLossType::Sigmoid, DpoLossType::BcoPair, DpoLossType::Sft]
    );
    assert_eq!(config.beta, 0.2);
    assert!(config.try_init().is_ok());
    let round_trip = burn::config::config_to_json(&DpoLossConfig::rpo(0.5));
    let back = <DpoLossConfig as Config>::load_binary(round_trip.as_bytes()).unwrap();
    assert_eq!(back.loss_weights, Some(vec![1.0, 0.5]));
}
