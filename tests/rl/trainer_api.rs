//! The trainer-facing layer (issue 14): rollouts that carry reference and sampling log-probs
//! through the update step, an update step that never loses the model, a stacked preference
//! batch, the SFT loss by name.

use burn::module::{Module, Param};
use burn::optim::SgdConfig;
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::{PreferenceBatch, SftLossConfig};
use burn_rlhf::rl::{
    GrpoLossConfig, GrpoLossType, PolicyOutput, PpoLossConfig, PpoStepConfig, Rollout,
    try_ppo_update,
};
use burn_rlhf::{Error, Normalizer};
use serde_json::Value;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn fixture(path: &str) -> Value {
    let full = format!("{}/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&full).unwrap()).unwrap()
}

fn rows(v: &Value) -> (Vec<f64>, [usize; 2]) {
    let rows = v.as_array().unwrap();
    let cols = rows[0].as_array().unwrap().len();
    let flat = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    (flat, [rows.len(), cols])
}

fn t2(v: &Value) -> Tensor<2> {
    let (flat, shape) = rows(v);
    Tensor::from_data(TensorData::new(flat, shape), (&dev(), DType::F64))
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

/// The policy of the step test: its parameter *is* the per-token log-prob table.
#[derive(Module, Debug)]
struct LogpTable {
    logps: Param<Tensor<2>>,
}

/// GRPO `dapo` with `beta = 0.02` and TRL's vLLM importance-sampling correction, through
/// `ppo_update` (one epoch, one minibatch, SGD with lr 1 and no clipping): the step's loss is
/// the fixture's (TRL 1.16 `GRPOTrainer._compute_loss`, `grpo/dapo_vllm_is_ratio.json`) and the
/// parameter moves by exactly minus the fixture's gradient.
#[test]
fn grpo_with_kl_and_importance_sampling_runs_through_the_update_step() {
    let case = fixture("grpo/dapo_vllm_is_ratio.json");
    let inputs = &case["inputs"];
    let logps0 = t2(&inputs["per_token_logps"]);
    let [b, t] = logps0.dims();
    let (mask_v, _) = rows(&inputs["completion_mask"]);
    let mask = Tensor::<2, Bool>::from_data(
        TensorData::new(mask_v.iter().map(|&x| x != 0.0).collect::<Vec<_>>(), [b, t]),
        &dev(),
    );
    let adv: Vec<f64> = inputs["advantages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let advantages = Tensor::<2>::from_data(TensorData::new(adv, [b, 1]), (&dev(), DType::F64));
    // `tokens` carries each row's index, so the closure can pick its rows after the shuffle.
    let index = Tensor::<2, Int>::from_data(
        TensorData::new((0..b as i64).collect::<Vec<_>>(), [b, 1]),
        &dev(),
    );
    let rollout = Rollout::new(index, mask, t2(&inputs["old_per_token_logps"]), advantages)
        .with_ref_logps(t2(&inputs["ref_per_token_logps"]))
        .with_importance_sampling_ratio(t2(&inputs["importance_sampling_ratio"]));
    let c = &case["config"];
    assert_eq!(c["loss_type"], "dapo");
    let loss = GrpoLossConfig::new()
        .with_loss_type(GrpoLossType::Dapo)
        .with_beta(c["beta"].as_f64().unwrap())
        .with_epsilon(c["epsilon_low"].as_f64().unwrap())
        .with_epsilon_high(Some(c["epsilon_high"].as_f64().unwrap()))
        .with_use_bias_correction_kl(c["use_bias_correction_kl"].as_bool().unwrap())
        .init();
    let model = LogpTable {
        logps: Param::from_tensor(logps0.clone()),
    };
    let config = PpoStepConfig::new()
        .with_epochs(1)
        .with_learning_rate(1.0)
        .with_max_grad_norm(None);
    let mut optim = SgdConfig::new().init();
    let (model, stats) = try_ppo_update(model, &mut optim, &config, &rollout, &loss, |m, batch| {
        let n = batch.len();
        let rows = batch.tokens.clone().reshape([n]);
        PolicyOutput::new(m.logps.val().select(0, rows))
    })
    .unwrap();
    // The step normalizes by the minibatch's token count (18), which is TRL's
    // num_items_in_batch here (18, one process, no accumulation).
    assert_eq!(inputs["num_items_in_batch"].as_f64().unwrap(), 18.0);
    let want_loss = case["expected"]["loss"].as_f64().unwrap();
    let got_loss = stats.metrics["loss"];
    assert!(
        (got_loss - want_loss).abs() <= 1e-9 * want_loss.abs().max(1.0),
        "loss {got_loss} vs TRL {want_loss}"
    );
    let kl = case["expected"]["metrics"]["kl"].as_f64().unwrap();
    assert!((stats.metrics["kl"] - kl).abs() <= 1e-9, "kl metric");
    let (want_grad, _) = rows(&case["expected"]["grad_per_token_logps"]);
    let moved: Vec<f64> = host(logps0)
        .iter()
        .zip(host(model.logps.val()))
        .map(|(before, after)| before - after)
        .collect();
    for (i, (g, w)) in moved.iter().zip(&want_grad).enumerate() {
        assert!(
            (g - w).abs() <= 1e-9 + 1e-9 * w.abs(),
            "grad[{i}]: {g} vs TRL {w}"
        );
    }
    // Without the reference log-probs the same config is a typed error, and the model returns.
    let mut no_ref = rollout.clone();
    no_ref.ref_logps = None;
    let model = LogpTable {
        logps: Param::from_tensor(t2(&inputs["per_token_logps"])),
    };
    let err = try_ppo_update(model, &mut optim, &config, &no_ref, &loss, |m, batch| {
        let n = batch.len();
        PolicyOutput::new(m.logps.val().select(0, batch.tokens.clone().reshape([n])))
    })
    .unwrap_err();
    assert!(
        matches!(
            err.error,
            Error::MissingInput {
                arg: "ref_logps",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.optimizer_steps, 0);
    assert_eq!(
        host(err.model.logps.val()),
        host(t2(&inputs["per_token_logps"]))
    );
}

/// A failed update hands the model back: unchanged for an invalid config.
#[test]
fn try_ppo_update_returns_the_model_on_error() {
    let device = dev();
    let w = Tensor::<2>::from_data(TensorData::new(vec![0.25, -0.5], [1, 2]), &device);
    let model = LogpTable {
        logps: Param::from_tensor(w.clone()),
    };
    let rollout = Rollout::new(
        Tensor::<2, Int>::zeros([1, 1], &device),
        Tensor::<2, Int>::zeros([1, 2], &device).equal_elem(0),
        Tensor::zeros([1, 2], &device),
        Tensor::zeros([1, 2], &device),
    );
    let mut optim = SgdConfig::new().init();
    let bad = PpoStepConfig::new().with_target_kl(Some(f64::NAN));
    let err = try_ppo_update(
        model,
        &mut optim,
        &bad,
        &rollout,
        &PpoLossConfig::new().init(),
        |m: &LogpTable, _| PolicyOutput::new(m.logps.val()),
    )
    .unwrap_err();
    assert!(
        matches!(
            err.error,
            Error::Config {
                field: "target_kl",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(host(err.model.logps.val()), host(w));
}

/// Truncated importance sampling from the sampling log-probs: `min(exp(old - sampling), cap)`.
#[test]
fn truncated_importance_sampling_ratio_is_the_closed_form() {
    let device = dev();
    let f = |v: Vec<f64>| Tensor::<2>::from_data(TensorData::new(v, [1, 3]), (&device, DType::F64));
    let rollout = Rollout::new(
        Tensor::<2, Int>::zeros([1, 1], &device),
        Tensor::<2, Int>::zeros([1, 3], &device).equal_elem(0),
        f(vec![-1.0, -2.0, -0.5]),
        f(vec![0.0, 0.0, 0.0]),
    );
    let err = rollout
        .clone()
        .with_truncated_importance_sampling(2.0)
        .unwrap_err();
    assert!(matches!(
        err,
        Error::MissingInput {
            arg: "sampling_logps",
            ..
        }
    ));
    let r = rollout
        .with_sampling_logps(f(vec![-1.5, -1.0, -3.0]))
        .with_truncated_importance_sampling(2.0)
        .unwrap();
    let got = host(r.importance_sampling_ratio.unwrap());
    let want = [0.5f64.exp().min(2.0), (-1.0f64).exp(), 2.0];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
    }
}

/// One stacked forward (`[2B]` rows, chosen first) gives the same batch as the manual split.
#[test]
fn stacked_preference_batch_equals_the_manual_split() {
    let device = dev();
    let logps = Tensor::<2>::from_data(
        TensorData::new(
            vec![-1.0, -2.0, -0.5, -3.0, -0.25, -1.5, -2.5, -0.75],
            [4, 2],
        ),
        (&device, DType::F64),
    );
    let mask = Tensor::<2, Bool>::from_data(
        TensorData::new(
            vec![true, true, true, false, false, true, true, true],
            [4, 2],
        ),
        &device,
    );
    let stacked = GatheredLogps {
        logps: logps.clone(),
        mask: mask.clone(),
    };
    let rows = |s: usize| GatheredLogps {
        logps: logps.clone().narrow(0, s, 2),
        mask: mask.clone().narrow(0, s, 2),
    };
    let refs = Tensor::<1>::from_data(
        TensorData::new(vec![-1.0, -2.0, -3.0, -4.0], [4]),
        (&device, DType::F64),
    );
    let manual = PreferenceBatch::from_tokens(rows(0), rows(2))
        .with_ref_logps(refs.clone().narrow(0, 0, 2), refs.clone().narrow(0, 2, 2));
    let from_stacked = PreferenceBatch::try_from_stacked(stacked)
        .unwrap()
        .try_with_stacked_ref_logps(refs)
        .unwrap();
    assert_eq!(
        host(manual.chosen_logps),
        host(from_stacked.chosen_logps.clone())
    );
    assert_eq!(
        host(manual.rejected_logps),
        host(from_stacked.rejected_logps.clone())
    );
    assert_eq!(
        host(manual.ref_chosen_logps.unwrap()),
        host(from_stacked.ref_chosen_logps.clone().unwrap())
    );
    assert_eq!(
        host(manual.rejected_token_counts.unwrap()),
        host(from_stacked.rejected_token_counts.clone().unwrap())
    );
    // An odd row count is a shape error naming the argument.
    let odd = GatheredLogps {
        logps: logps.narrow(0, 0, 3),
        mask: mask.narrow(0, 0, 3),
    };
    let err = PreferenceBatch::try_from_stacked(odd).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "stacked", .. }), "{err}");
}

/// `SftLoss` is the token-normalized NLL: closed form on two rows, and exact under
/// accumulation with the step's token count.
#[test]
fn sft_loss_is_the_token_mean_nll_and_exact_under_accumulation() {
    let device = dev();
    let values = [-1.0, -2.0, -0.5, -3.0, -0.25, -1.5];
    let valid = [true, true, false, true, true, true];
    let tokens = |rows: std::ops::Range<usize>| {
        let n = rows.len();
        GatheredLogps {
            logps: Tensor::<2>::from_data(
                TensorData::new(values[rows.start * 3..rows.end * 3].to_vec(), [n, 3]),
                (&device, DType::F64),
            ),
            mask: Tensor::<2, Bool>::from_data(
                TensorData::new(valid[rows.start * 3..rows.end * 3].to_vec(), [n, 3]),
                &device,
            ),
        }
    };
    let whole = SftLossConfig::new().init().forward(&tokens(0..2));
    // (1 + 2 + 3 + 0.25 + 1.5) / 5 valid tokens
    let want = (1.0 + 2.0 + 3.0 + 0.25 + 1.5) / 5.0;
    assert!((host(whole.loss.clone())[0] - want).abs() < 1e-12);
    assert_eq!(
        host(whole.metrics.get("num_tokens").unwrap().clone()),
        vec![5.0]
    );
    let global = SftLossConfig::new()
        .with_normalizer(Normalizer::GlobalTokens(5.0))
        .init();
    let parts =
        host(global.forward(&tokens(0..1)).loss)[0] + host(global.forward(&tokens(1..2)).loss)[0];
    assert!((parts - want).abs() < 1e-12, "{parts} vs {want}");
}
