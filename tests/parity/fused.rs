//! TRL 1.16 fused log-probs: `trl.kernels.ChunkedLogProbFunction.apply` (`kernel_*`) and its
//! caller `trl.trainer.utils.add_fused_lm_head` (`head_*`). Each case runs through the fused op
//! (`Auto`, with the fixture's vocabulary chunk and a small token chunk so that tiling is
//! exercised) and the materialized-logits oracle (`Reference`). Gradients are of
//! `sum(grad_logps * logps) + sum(grad_entropy * entropy)`.

use burn::tensor::Tensor;
use burn_rlhf::logps::{FusedLogpsConfig, LogpsImplementation};

use crate::common::{TestDevice, int_tensor, tensor, to_vec};
use crate::fixture::{Array, Case};
use crate::tolerance::{self, Kind, Tol};

/// TRL's outputs and gradients (float32 accumulation in TRL): [`Kind::Float32Accumulated`]
/// on every device (the `tolerance` table).
fn check(what: &str, actual: &[f64], expected: &Array) -> Result<(), String> {
    Tol::f64_device(Kind::Float32Accumulated).check(what, actual, &expected.values)
}

fn config(case: &Case, implementation: LogpsImplementation) -> FusedLogpsConfig {
    let c = &case.config;
    let outputs: Vec<String> = c["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    let mut cfg = FusedLogpsConfig::new()
        .with_temperature(c["temperature"].as_f64().unwrap())
        .with_logit_scale(c["logit_scale"].as_f64().unwrap_or(1.0))
        .with_final_logit_softcapping(c["final_logit_softcapping"].as_f64())
        .with_with_stats(outputs.len() > 1)
        .with_implementation(implementation);
    if let Some(chunk) = c["chunk_size"].as_u64() {
        cfg = cfg
            .with_vocab_chunk_size(Some(chunk as usize))
            .with_token_chunk_size(Some(5));
    }
    cfg
}

fn check_stats(
    case: &Case,
    out: &burn_rlhf::logps::FusedLogpsOutput,
    tag: &str,
) -> Result<(), String> {
    for (key, value) in [
        ("entropy", &out.entropy),
        ("log_sum_sq_probs", &out.log_sum_sq_probs),
        ("mean_logits", &out.mean_logits),
    ] {
        if let Some(want) = case.expect_opt(key) {
            let got = value.clone().ok_or(format!("{tag}: {key} not returned"))?;
            check(&format!("{tag} {key}"), &to_vec(got), &want)?;
        }
    }
    if let Some(want) = case.expect_opt("is_top1") {
        let got = out
            .is_top1
            .clone()
            .ok_or(format!("{tag}: is_top1 not returned"))?;
        let got: Vec<f64> = got
            .into_data()
            .convert::<bool>()
            .try_into_vec::<bool>()
            .unwrap()
            .into_iter()
            .map(|b| b as u8 as f64)
            .collect();
        if got != want.values {
            return Err(format!(
                "{tag} is_top1: got {got:?} expected {:?}",
                want.values
            ));
        }
    }
    Ok(())
}

pub fn chunked_kernel(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let (hidden, weight, targets) = (
        case.input("hidden"),
        case.input("weight"),
        case.input("targets"),
    );
    let bias = case.input_opt("bias");
    let g_lp = case.input("grad_logprobs");
    let g_h = case.input_opt("grad_entropy");
    for implementation in [LogpsImplementation::Auto, LogpsImplementation::Reference] {
        let tag = format!("{implementation:?}");
        let h = tensor::<2>(hidden.values.clone(), hidden.shape(), dev, &device).require_grad();
        let w = tensor::<2>(weight.values.clone(), weight.shape(), dev, &device).require_grad();
        let b = bias
            .as_ref()
            .map(|b| tensor::<1>(b.values.clone(), b.shape(), dev, &device).require_grad());
        let t = int_tensor::<1>(targets.ints(), targets.shape(), &device);
        let out = config(case, implementation)
            .init()
            .forward(h.clone(), w.clone(), b.clone(), t);
        let mut objective: Tensor<1> = (out.logps.clone()
            * tensor::<1>(g_lp.values.clone(), g_lp.shape(), dev, &device))
        .sum();
        if let (Some(g), Some(entropy)) = (&g_h, &out.entropy) {
            objective = objective
                + (entropy.clone() * tensor::<1>(g.values.clone(), g.shape(), dev, &device)).sum();
        }
        let grads = objective.backward();
        check(
            &format!("{tag} log_probs"),
            &to_vec(out.logps.clone()),
            &case.expect("log_probs"),
        )?;
        check_stats(case, &out, &tag)?;
        check_grads(case, &tag, &grads, (&h, &w, b.as_ref()))?;
        check_reference_fp64(case, dev, &tag, &out, &grads, (&h, &w, b.as_ref()))?;
    }
    Ok(())
}

/// `reference_fp64` (plain float64 torch on full logits): [`Kind::ReferenceF64`]. On an f64 device the fused op computes in f64, so it is held to that bound
/// (TRL's own outputs only reach float32 precision).
fn check_reference_fp64(
    case: &Case,
    dev: &TestDevice,
    tag: &str,
    out: &burn_rlhf::logps::FusedLogpsOutput,
    grads: &burn::tensor::Gradients,
    (h, w, b): (&Tensor<2>, &Tensor<2>, Option<&Tensor<1>>),
) -> Result<(), String> {
    case.mark_compared("reference_fp64");
    if !dev.has_f64() {
        return Ok(());
    }
    let strict = |what: &str, actual: Vec<f64>| -> Result<(), String> {
        match case.expect_nested("reference_fp64", what) {
            Some(want) => tolerance::check(
                Kind::ReferenceF64,
                dev,
                &format!("{tag} reference_fp64 {what}"),
                &actual,
                &want.values,
            ),
            None => Ok(()),
        }
    };
    strict("log_probs", to_vec(out.logps.clone()))?;
    for (key, value) in [
        ("entropy", &out.entropy),
        ("log_sum_sq_probs", &out.log_sum_sq_probs),
        ("mean_logits", &out.mean_logits),
    ] {
        if let Some(v) = value {
            strict(key, to_vec(v.clone()))?;
        }
    }
    strict("grad_hidden", to_vec(h.grad(grads).unwrap()))?;
    strict("grad_weight", to_vec(w.grad(grads).unwrap()))?;
    if let Some(b) = b {
        strict("grad_bias", to_vec(b.grad(grads).unwrap()))?;
    }
    Ok(())
}

pub fn fused_lm_head(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let (hidden, weight, labels) = (
        case.input("hidden"),
        case.input("weight"),
        case.input("labels"),
    );
    let bias = case.input_opt("bias");
    let (g_lp, g_h) = (case.input("grad_log_probs"), case.input_opt("grad_entropy"));
    for implementation in [LogpsImplementation::Auto, LogpsImplementation::Reference] {
        let tag = format!("{implementation:?}");
        let h = tensor::<3>(hidden.values.clone(), hidden.shape(), dev, &device).require_grad();
        let w = tensor::<2>(weight.values.clone(), weight.shape(), dev, &device).require_grad();
        let b = bias
            .as_ref()
            .map(|b| tensor::<1>(b.values.clone(), b.shape(), dev, &device).require_grad());
        let y = int_tensor::<2>(labels.ints(), labels.shape(), &device);
        let (gathered, out) =
            config(case, implementation)
                .init()
                .forward_causal(h.clone(), w.clone(), b.clone(), y);
        let mask: Vec<f64> = gathered
            .mask
            .clone()
            .into_data()
            .convert::<bool>()
            .try_into_vec::<bool>()
            .unwrap()
            .into_iter()
            .map(|x| x as u8 as f64)
            .collect();
        if mask != case.expect("label_mask").values {
            return Err(format!("{tag} label_mask: got {mask:?}"));
        }
        let valid = mask.iter().sum::<f64>().max(1.0);
        let loss = gathered.logps.clone().sum().neg().mul_scalar(1.0 / valid);
        check(&format!("{tag} loss"), &to_vec(loss), &case.expect("loss"))?;
        let mut objective: Tensor<1> = (gathered.logps.clone()
            * tensor::<2>(g_lp.values.clone(), g_lp.shape(), dev, &device))
        .sum();
        if let (Some(g), Some(entropy)) = (&g_h, &out.entropy) {
            let g1 = tensor::<1>(g.values.clone(), [g.values.len()], dev, &device);
            objective = objective + (entropy.clone() * g1).sum();
        }
        let grads = objective.backward();
        check(
            &format!("{tag} log_probs"),
            &to_vec(gathered.logps),
            &case.expect("log_probs"),
        )?;
        check_stats(case, &out, &tag)?;
        check_grads(case, &tag, &grads, (&h, &w, b.as_ref()))?;
    }
    Ok(())
}

/// Gradients w.r.t. hidden, weight and (when the case has one) bias against the fixture.
fn check_grads<const D: usize>(
    case: &Case,
    tag: &str,
    grads: &burn::tensor::Gradients,
    (h, w, b): (&Tensor<D>, &Tensor<2>, Option<&Tensor<1>>),
) -> Result<(), String> {
    check(
        &format!("{tag} grad_hidden"),
        &to_vec(h.grad(grads).unwrap()),
        &case.expect("grad_hidden"),
    )?;
    check(
        &format!("{tag} grad_weight"),
        &to_vec(w.grad(grads).unwrap()),
        &case.expect("grad_weight"),
    )?;
    if let (Some(b), Some(want)) = (b, case.expect_opt("grad_bias")) {
        check(
            &format!("{tag} grad_bias"),
            &to_vec(b.grad(grads).unwrap()),
            &want,
        )?;
    }
    Ok(())
}
