//! TRL 1.16 `DPOTrainer._compute_loss` (`dpo/`) and torchtune 0.6.1 `DPOLoss` / `RSOLoss`
//! (`torchtune_dpo/`), through [`DpoLoss`].
//!
//! The DPO cases feed the per-token log-probs and masks through the token-level path
//! (`PreferenceBatch::from_tokens`), so the gradients checked are w.r.t. the token log-probs,
//! as in the fixtures.

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::{DpoLossConfig, DpoLossType, FDivergenceType, LossOutput, PreferenceBatch};
use serde_json::Value;

use crate::common::{TestDevice, bool_tensor, to_vec};
use crate::fixture::{Array, Case};
use crate::tolerance::{Kind, Tol, tol};

/// The float dtype a case runs in on this device: the fixture's (`config.dtype`), or f32
/// where the device has no f64.
pub fn case_dtype(case: &Case, dev: &TestDevice) -> FloatDType {
    let wants_f32 = case.config.get("dtype").and_then(Value::as_str) == Some("float32");
    if wants_f32 || !dev.has_f64() {
        FloatDType::F32
    } else {
        FloatDType::F64
    }
}

pub fn float<const D: usize>(a: &Array, dtype: FloatDType, device: &Device) -> Tensor<D> {
    let dtype: DType = dtype.into();
    Tensor::<D>::from_data(
        TensorData::new(a.values.clone(), a.shape::<D>()),
        (device, dtype),
    )
}

/// Compares every metric present in `expected.metrics` (our output may have more keys).
pub fn check_metrics(case: &Case, out: &LossOutput, bound: Tol) -> Result<(), String> {
    let Some(Value::Object(want)) = Some(case.expected_value("metrics")) else {
        return Ok(());
    };
    let got = out.metrics.to_host();
    for (key, value) in want {
        let want = value
            .as_f64()
            .ok_or_else(|| format!("metric {key} is not a number"))?;
        let have = *got
            .get(key)
            .ok_or_else(|| format!("metric `{key}` missing (have {:?})", got.keys()))?;
        bound.check(&format!("metric {key}"), &[have], &[want])?;
    }
    Ok(())
}

/// The gradient of a leaf, or zeros when the loss does not depend on it (burn returns `None`).
pub fn grad_or_zeros<const D: usize>(x: &Tensor<D>, grads: &burn::tensor::Gradients) -> Vec<f64> {
    match x.grad(grads) {
        Some(g) => to_vec(g),
        None => vec![0.0; x.shape().num_elements()],
    }
}

fn loss_type(name: &str) -> DpoLossType {
    serde_json::from_value(Value::String(name.into()))
        .unwrap_or_else(|e| panic!("loss type {name}: {e}"))
}

fn f_divergence(name: &str) -> FDivergenceType {
    serde_json::from_value(Value::String(name.into()))
        .unwrap_or_else(|e| panic!("f-divergence {name}: {e}"))
}

/// `DPOTrainer._compute_loss`.
pub fn dpo_compute_loss(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let dtype = case_dtype(case, dev);
    let c = &case.config;
    let types: Vec<DpoLossType> = c["loss_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| loss_type(v.as_str().unwrap()))
        .collect();
    let weights: Vec<f64> = c["loss_weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let config = DpoLossConfig::new()
        .with_loss_type(types)
        .with_loss_weights(Some(weights))
        .with_beta(case.config_f64("beta"))
        .with_label_smoothing(case.config_f64("label_smoothing"))
        .with_ld_alpha(c["ld_alpha"].as_f64())
        .with_f_divergence_type(f_divergence(c["f_divergence_type"].as_str().unwrap()))
        .with_f_alpha_divergence_coef(case.config_f64("f_alpha_divergence_coef"))
        .with_use_weighting(case.config_bool("use_weighting"))
        .with_discopop_tau(case.config_f64("discopop_tau"));
    let loss = config
        .try_init()
        .map_err(|e| format!("config rejected: {e}"))?;

    let chosen_lp = case.input("chosen_token_logps");
    let rejected_lp = case.input("rejected_token_logps");
    let chosen_mask = case.input("chosen_mask");
    let rejected_mask = case.input("rejected_mask");
    let chosen_x = float::<2>(&chosen_lp, dtype, &device).require_grad();
    let rejected_x = float::<2>(&rejected_lp, dtype, &device).require_grad();
    let chosen = GatheredLogps {
        logps: chosen_x.clone(),
        mask: bool_tensor::<2>(chosen_mask.bools(), chosen_mask.shape(), &device),
    };
    let rejected = GatheredLogps {
        logps: rejected_x.clone(),
        mask: bool_tensor::<2>(rejected_mask.bools(), rejected_mask.shape(), &device),
    };
    let mut batch = PreferenceBatch::from_tokens(chosen, rejected).with_ref_logps(
        float::<1>(&case.input("ref_chosen_logps"), dtype, &device),
        float::<1>(&case.input("ref_rejected_logps"), dtype, &device),
    );
    if let (Some(cs), Some(rs)) = (
        case.input_opt("chosen_log_sum_sq_probs"),
        case.input_opt("rejected_log_sum_sq_probs"),
    ) {
        batch = batch.with_log_sum_sq_probs(
            float::<2>(&cs, dtype, &device),
            float::<2>(&rs, dtype, &device),
        );
    }
    let out = loss
        .try_forward(&batch)
        .map_err(|e| format!("forward: {e}"))?;
    let grads = out.loss.backward();

    let (values, metrics_tol) = if dtype == FloatDType::F32 {
        (tol(Kind::F32Case, dev), tol(Kind::F32Case, dev))
    } else {
        (tol(Kind::Values, dev), tol(Kind::Metrics, dev))
    };
    values.check(
        "loss",
        &to_vec(out.loss.clone()),
        &case.expect("loss").values,
    )?;
    check_metrics(case, &out, metrics_tol)?;
    values.check(
        "grad_chosen_token_logps",
        &grad_or_zeros(&chosen_x, &grads),
        &case.expect("grad_chosen_token_logps").values,
    )?;
    values.check(
        "grad_rejected_token_logps",
        &grad_or_zeros(&rejected_x, &grads),
        &case.expect("grad_rejected_token_logps").values,
    )?;
    Ok(())
}

/// torchtune `DPOLoss.forward` (cDPO) and `RSOLoss.forward` (hinge): per-example losses,
/// rewards, gradients of `mean(losses)`.
fn torchtune(case: &Case, dev: &TestDevice, config: DpoLossConfig) -> Result<(), String> {
    let device = dev.autodiff();
    let dtype = case_dtype(case, dev);
    let chosen = float::<1>(&case.input("policy_chosen_logps"), dtype, &device).require_grad();
    let rejected = float::<1>(&case.input("policy_rejected_logps"), dtype, &device).require_grad();
    let batch = PreferenceBatch::new(chosen.clone(), rejected.clone()).with_ref_logps(
        float::<1>(&case.input("reference_chosen_logps"), dtype, &device),
        float::<1>(&case.input("reference_rejected_logps"), dtype, &device),
    );
    let loss = config
        .try_init()
        .map_err(|e| format!("config rejected: {e}"))?;
    let out = loss
        .try_forward(&batch)
        .map_err(|e| format!("forward: {e}"))?;
    let (chosen_rewards, rejected_rewards) =
        loss.implicit_rewards(&batch).map_err(|e| e.to_string())?;
    let grads = out.loss.backward();
    let values = tol(Kind::Values, dev);
    values.check(
        "losses",
        &to_vec(out.per_example),
        &case.expect("losses").values,
    )?;
    values.check(
        "chosen_rewards",
        &to_vec(chosen_rewards),
        &case.expect("chosen_rewards").values,
    )?;
    values.check(
        "rejected_rewards",
        &to_vec(rejected_rewards),
        &case.expect("rejected_rewards").values,
    )?;
    values.check(
        "grad_policy_chosen_logps",
        &grad_or_zeros(&chosen, &grads),
        &case.expect("grad_policy_chosen_logps").values,
    )?;
    values.check(
        "grad_policy_rejected_logps",
        &grad_or_zeros(&rejected, &grads),
        &case.expect("grad_policy_rejected_logps").values,
    )
}

pub fn torchtune_dpo_loss(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let config =
        DpoLossConfig::torchtune_dpo(case.config_f64("beta"), case.config_f64("label_smoothing"));
    torchtune(case, dev, config)
}

pub fn torchtune_rso_loss(case: &Case, dev: &TestDevice) -> Result<(), String> {
    torchtune(
        case,
        dev,
        DpoLossConfig::torchtune_rso(case.config_f64("gamma")),
    )
}
