//! TRL 1.16 experimental `CPOTrainer` (`cpo/`) and `ORPOTrainer` (`orpo/`).
//!
//! `*.cpo_loss` / `*.odds_ratio_loss` cases call the per-pair functions on the given sequence
//! log-probs; `*.get_batch_loss_metrics` cases run the whole pipeline from unshifted logits
//! `[B, T, V]` through `TokenLogpsConfig::new(LabelAlignment::CausalShift)` and check the
//! gradients w.r.t. the logits.
//!
//! Not compared: the `logits/chosen` / `logits/rejected` metrics (unmasked means of the raw
//! logits): they describe the model output, not the loss, and our losses never see logits.

use burn::tensor::{FloatDType, Tensor};
use burn_rlhf::logps::{GatheredLogps, LabelAlignment, TokenLogpsConfig};
use burn_rlhf::losses::{CpoLossConfig, CpoLossType, LossOutput, OrpoLossConfig, PreferenceBatch};
use serde_json::Value;

use crate::common::{TestDevice, bool_tensor, int_tensor, to_vec};
use crate::dpo::{case_dtype, float, grad_or_zeros};
use crate::fixture::Case;
use crate::tolerance::{Kind, Tol, tol};

const MODEL_OUTPUT_METRICS: [&str; 2] = ["logits/chosen", "logits/rejected"];

fn check_loss_metrics(case: &Case, out: &LossOutput, bound: Tol) -> Result<(), String> {
    let Some(Value::Object(want)) = Some(case.expected_value("metrics")) else {
        return Err("no expected metrics".into());
    };
    let got = out.metrics.to_host();
    for (key, value) in want {
        if MODEL_OUTPUT_METRICS.contains(&key.as_str()) {
            case.skip(key, "model-output metric: a loss never sees the logits");
            continue;
        }
        let have = *got
            .get(key)
            .ok_or_else(|| format!("metric `{key}` missing"))?;
        bound.check(
            &format!("metric {key}"),
            &[have],
            &[value.as_f64().unwrap()],
        )?;
    }
    Ok(())
}

fn cpo_config(case: &Case) -> CpoLossConfig {
    let loss_type: CpoLossType = serde_json::from_value(case.config["loss_type"].clone()).unwrap();
    let mut config = CpoLossConfig::new()
        .with_loss_type(loss_type)
        .with_beta(case.config_f64("beta"))
        .with_label_smoothing(case.config_f64("label_smoothing"))
        .with_alpha(case.config_f64("alpha"));
    if let Some(gamma) = case.config["simpo_gamma"].as_f64() {
        config = config.with_simpo_gamma(gamma);
    }
    if let Some(cpo_alpha) = case.config.get("cpo_alpha").and_then(Value::as_f64) {
        config = config.with_cpo_alpha(cpo_alpha);
    }
    config
}

/// `(losses, chosen_rewards, rejected_rewards, extra expected keys)` of a per-pair function.
type PairOutputs = (
    Tensor<1>,
    Tensor<1>,
    Tensor<1>,
    Vec<(&'static str, Tensor<1>)>,
);

/// Per-pair functions: `losses`, rewards, gradients of `mean(losses)`.
fn pair_case(
    case: &Case,
    dev: &TestDevice,
    dtype: FloatDType,
    bound: Tol,
    run: &dyn Fn(Tensor<1>, Tensor<1>) -> PairOutputs,
) -> Result<(), String> {
    let device = dev.autodiff();
    let chosen = float::<1>(&case.input("policy_chosen_logps"), dtype, &device).require_grad();
    let rejected = float::<1>(&case.input("policy_rejected_logps"), dtype, &device).require_grad();
    let (losses, chosen_rewards, rejected_rewards, extra) = run(chosen.clone(), rejected.clone());
    let grads = losses.clone().mean().backward();
    bound.check("losses", &to_vec(losses), &case.expect("losses").values)?;
    bound.check(
        "chosen_rewards",
        &to_vec(chosen_rewards),
        &case.expect("chosen_rewards").values,
    )?;
    bound.check(
        "rejected_rewards",
        &to_vec(rejected_rewards),
        &case.expect("rejected_rewards").values,
    )?;
    for (key, value) in extra {
        bound.check(key, &to_vec(value), &case.expect(key).values)?;
    }
    bound.check(
        "grad_policy_chosen_logps",
        &grad_or_zeros(&chosen, &grads),
        &case.expect("grad_policy_chosen_logps").values,
    )?;
    bound.check(
        "grad_policy_rejected_logps",
        &grad_or_zeros(&rejected, &grads),
        &case.expect("grad_policy_rejected_logps").values,
    )
}

/// `CPOTrainer.cpo_loss`.
pub fn cpo_loss(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let loss = cpo_config(case)
        .try_init()
        .map_err(|e| format!("config rejected: {e}"))?;
    pair_case(
        case,
        dev,
        case_dtype(case, dev),
        tol(Kind::Values, dev),
        &|c, r| {
            let t = loss.pair_terms(c, r);
            (t.losses, t.chosen_rewards, t.rejected_rewards, vec![])
        },
    )
}

/// `ORPOTrainer.odds_ratio_loss` (TRL computes it in float32: [`Kind::OddsRatioNearZero`]).
pub fn orpo_odds_ratio_loss(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let loss = OrpoLossConfig::new()
        .with_beta(case.config_f64("beta"))
        .try_init()
        .map_err(|e| format!("config rejected: {e}"))?;
    // 1e-6 on f64 devices, 1e-3 on f32-only ones (log1mexp near 0: see `tolerance`).
    let bound = tol(Kind::OddsRatioNearZero, dev);
    pair_case(case, dev, case_dtype(case, dev), bound, &|c, r| {
        let t = loss.odds_ratio(c, r);
        let ratio = burn::tensor::activation::log_sigmoid(t.log_odds.clone()).mean();
        let extra = vec![
            ("log_odds_ratio", ratio),
            ("log_odds_chosen", t.log_odds.mean()),
        ];
        (t.losses, t.chosen_rewards, t.rejected_rewards, extra)
    })
}

struct Side {
    logits: Tensor<3>,
    tokens: GatheredLogps,
}

/// Gathers one side's completion log-probs (labels, `-100` ignored, causal shift).
fn side(case: &Case, prefix: &str, dev: &TestDevice, dtype: FloatDType) -> Side {
    let device = dev.autodiff();
    let logits =
        float::<3>(&case.input(&format!("{prefix}_logits")), dtype, &device).require_grad();
    let labels = case.input(&format!("{prefix}_labels"));
    let op = TokenLogpsConfig::new(LabelAlignment::CausalShift).init();
    let tokens = op.forward(
        logits.clone(),
        int_tensor::<2>(labels.ints(), labels.shape(), &device),
    );
    Side { logits, tokens }
}

fn check_full(
    case: &Case,
    out: &LossOutput,
    chosen: &Side,
    rejected: &Side,
    values: Tol,
    metrics: Tol,
) -> Result<(), String> {
    let grads = out.loss.backward();
    values.check(
        "loss",
        &to_vec(out.loss.clone()),
        &case.expect("loss").values,
    )?;
    check_loss_metrics(case, out, metrics)?;
    values.check(
        "grad_chosen_logits",
        &grad_or_zeros(&chosen.logits, &grads),
        &case.expect("grad_chosen_logits").values,
    )?;
    values.check(
        "grad_rejected_logits",
        &grad_or_zeros(&rejected.logits, &grads),
        &case.expect("grad_rejected_logits").values,
    )
}

/// `CPOTrainer.get_batch_loss_metrics`: logps summed (sigmoid, hinge) or averaged (ipo, simpo)
/// over the completion labels; NLL = token mean over the chosen labels.
pub fn cpo_batch_loss_metrics(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let dtype = case_dtype(case, dev);
    let config = cpo_config(case).with_average_log_prob(Some(case.config_bool("average_log_prob")));
    let loss = config
        .try_init()
        .map_err(|e| format!("config rejected: {e}"))?;
    let chosen = side(case, "chosen", dev, dtype);
    let rejected = side(case, "rejected", dev, dtype);
    let batch = PreferenceBatch::from_tokens(chosen.tokens.clone(), rejected.tokens.clone());
    let out = loss
        .try_forward(&batch)
        .map_err(|e| format!("forward: {e}"))?;
    check_full(
        case,
        &out,
        &chosen,
        &rejected,
        tol(Kind::Values, dev),
        tol(Kind::Metrics, dev),
    )
}

/// `ORPOTrainer.get_batch_loss_metrics`: average logps over the completion labels; NLL over
/// every chosen position with attention (prompt included), TRL's ORPO convention.
pub fn orpo_batch_loss_metrics(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let dtype = case_dtype(case, dev);
    let device = dev.autodiff();
    let loss = OrpoLossConfig::new()
        .with_beta(case.config_f64("beta"))
        .try_init()
        .map_err(|e| format!("config rejected: {e}"))?;
    let chosen = side(case, "chosen", dev, dtype);
    let rejected = side(case, "rejected", dev, dtype);
    let ids = case.input("chosen_input_ids");
    let attention = case.input("chosen_attention_mask");
    let nll_tokens = TokenLogpsConfig::new(LabelAlignment::CausalShift)
        .init()
        .forward_masked(
            chosen.logits.clone(),
            int_tensor::<2>(ids.ints(), ids.shape(), &device),
            bool_tensor::<2>(attention.bools(), attention.shape(), &device),
        );
    let batch = PreferenceBatch::from_tokens(chosen.tokens.clone(), rejected.tokens.clone())
        .with_nll_tokens(nll_tokens);
    let out = loss
        .try_forward(&batch)
        .map_err(|e| format!("forward: {e}"))?;
    // The odds ratio runs in float32 inside TRL: `Kind::Metrics` (1e-6 / 1e-7) for everything.
    check_full(
        case,
        &out,
        &chosen,
        &rejected,
        tol(Kind::Metrics, dev),
        tol(Kind::Metrics, dev),
    )
}
