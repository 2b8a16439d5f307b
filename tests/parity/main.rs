//! Parity with the anchors: walks the fixture folder and runs every case it finds.
//!
//! Fixtures: `fixtures/` in this repository (a copy of the shared set, see
//! `fixtures/PROVENANCE.md`), or the folder named by `BURN_RLHF_FIXTURES`. Each case is
//! dispatched on the last token of its `source` field (`...get_batch_log_probs`). A case whose
//! function has no runner fails the test, unless the function is listed in [`NOT_YET`]; later
//! work shrinks that list to empty. One line per folder is printed:
//! `<folder>: N passed, M failed, K not yet implemented`.
//!
//! Every case runs on every device under test (`tests/common`): in f64 with the fixture
//! README's tolerances where the device computes f64, else in f32 with relaxed tolerances.

#[path = "../common/mod.rs"]
mod common;
mod fixture;
mod logprobs;
mod reward;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::TestDevice;
use fixture::Case;

/// A runner checks one case on one device; `Err` carries the mismatch description.
type Runner = fn(&Case, &TestDevice) -> Result<(), String>;

/// Source functions (last token of `source`) that have no runner yet. Shrinks to empty.
const NOT_YET: &[&str] = &[
    // dpo/, cpo/, orpo/, kto/, torchtune_dpo/: the DPO-family issue.
    "DPOTrainer._compute_loss",
    "KTOTrainer._compute_loss",
    "CPOTrainer.get_batch_loss_metrics",
    "CPOTrainer.cpo_loss",
    "ORPOTrainer.get_batch_loss_metrics",
    "ORPOTrainer.odds_ratio_loss",
    "DPOLoss.forward",
    "RSOLoss.forward",
    // grpo/, rloo/, ppo/, gae/: the online-RL issue.
    "GRPOTrainer._compute_loss",
    "GRPOTrainer._generate_and_score_completions",
    "RLOOTrainer._compute_loss",
    "RLOOTrainer._generate_and_score_completions",
    "PPOLoss.forward",
    "get_rewards_ppo",
    "get_reward_penalty_mask",
    "estimate_advantages",
    "whiten",
    "masked_mean",
    "masked_var",
    // logprob/: the fused LM-head issue.
    "ChunkedLogProbFunction.apply",
    "add_fused_lm_head",
];

fn runner(function: &str) -> Option<Runner> {
    Some(match function {
        "logits_to_logprobs" => logprobs::logits_to_logprobs,
        "get_batch_log_probs" => logprobs::get_batch_log_probs,
        "RewardTrainer.compute_loss" => reward::compute_loss,
        _ => return None,
    })
}

fn fixtures_dir() -> PathBuf {
    match std::env::var_os("BURN_RLHF_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    not_yet: usize,
}

#[test]
fn parity() {
    let dir = fixtures_dir();
    let cases = fixture::load_all(&dir);
    assert!(!cases.is_empty(), "no fixture cases under {}", dir.display());
    let devices = common::devices();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        let tally = tallies.entry(case.folder.clone()).or_default();
        let function = case.function();
        match runner(&function) {
            Some(run) => {
                let mut ok = true;
                for dev in &devices {
                    if let Err(msg) = run(case, dev) {
                        ok = false;
                        failures.push(format!("{}/{} on {}: {msg}", case.folder, case.name, dev.name));
                    }
                }
                if ok {
                    tally.passed += 1;
                } else {
                    tally.failed += 1;
                }
            }
            None if NOT_YET.contains(&function.as_str()) => tally.not_yet += 1,
            None => {
                tally.failed += 1;
                failures.push(format!(
                    "{}/{}: no runner for source function `{function}` and it is not in NOT_YET",
                    case.folder, case.name
                ));
            }
        }
    }
    let names: Vec<_> = devices.iter().map(|d| d.name).collect();
    println!("parity fixtures from {} on devices {names:?}", dir.display());
    for (folder, t) in &tallies {
        println!("{folder}: {} passed, {} failed, {} not yet implemented", t.passed, t.failed, t.not_yet);
    }
    assert!(failures.is_empty(), "{} parity failures:\n{}", failures.len(), failures.join("\n"));
}
