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
//! Every runner takes its bounds from the one table in [`tolerance`].

#[path = "../common/mod.rs"]
pub mod common;
pub mod cpo;
pub mod data;
pub mod distill;
pub mod dpo;
pub mod fixture;
pub mod fused;
pub mod kto;
pub mod logps;
pub mod reward;
pub mod rl;
pub mod tolerance;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::TestDevice;
use fixture::Case;

/// A runner checks one case on one device; `Err` carries the mismatch description.
type Runner = fn(&Case, &TestDevice) -> Result<(), String>;

/// Source functions (last token of `source`) that have no runner yet. Shrinks to empty.
const NOT_YET: &[&str] = &[];

fn runner(function: &str) -> Option<Runner> {
    Some(match function {
        "logits_to_logprobs" => logps::logits_to_logps,
        "get_batch_log_probs" => logps::get_batch_log_probs,
        "ChunkedLogProbFunction.apply" => fused::chunked_kernel,
        "add_fused_lm_head" => fused::fused_lm_head,
        "DPOTrainer._compute_loss" => dpo::dpo_compute_loss,
        "OnlineDPOTrainer.training_step" => rl::online_dpo_training_step,
        "DPOLoss.forward" => dpo::torchtune_dpo_loss,
        "RSOLoss.forward" => dpo::torchtune_rso_loss,
        "KTOTrainer._compute_loss" => kto::kto_compute_loss,
        "CPOTrainer.cpo_loss" => cpo::cpo_loss,
        "CPOTrainer.get_batch_loss_metrics" => cpo::cpo_batch_loss_metrics,
        "ORPOTrainer.odds_ratio_loss" => cpo::orpo_odds_ratio_loss,
        "ORPOTrainer.get_batch_loss_metrics" => cpo::orpo_batch_loss_metrics,
        "GRPOTrainer._compute_loss" => rl::grpo_compute_loss,
        "GRPOTrainer._generate_and_score_completions" => rl::grpo_advantages,
        "RLOOTrainer._compute_loss" => rl::rloo_compute_loss,
        "RLOOTrainer._generate_and_score_completions" => rl::rloo_advantages,
        "PPOLoss.forward" => rl::ppo_loss_forward,
        "get_rewards_ppo" => rl::get_rewards_ppo,
        "get_reward_penalty_mask" => rl::get_reward_penalty_mask,
        "estimate_advantages" => rl::estimate_advantages,
        "whiten" => rl::whiten,
        "masked_mean" => rl::masked_mean,
        "masked_var" => rl::masked_var,
        "RewardTrainer.compute_loss" => reward::compute_loss,
        "_chunked_divergence_loss" => distill::chunked_divergence,
        "GKDTrainer.generalized_jsd_loss" => distill::generalized_jsd,
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
    skipped: std::collections::BTreeSet<String>,
}

#[test]
fn parity() {
    let dir = fixtures_dir();
    let cases = fixture::load_all(&dir);
    assert!(
        !cases.is_empty(),
        "no fixture cases under {}",
        dir.display()
    );
    let devices = common::devices();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    // A partial fixture folder must fail, not pass: every case the manifest lists must be
    // present, and every present case must be listed.
    match fixture::manifest_groups(&dir) {
        Some(groups) => {
            for (folder, names) in &groups {
                let present: Vec<&str> = cases
                    .iter()
                    .filter(|c| &c.folder == folder)
                    .map(|c| c.name.as_str())
                    .collect();
                for name in names {
                    if !present.contains(&name.as_str()) {
                        failures.push(format!(
                            "{folder}/{name}: listed in manifest.json but missing"
                        ));
                    }
                }
                if present.len() != names.len() {
                    failures.push(format!(
                        "{folder}: {} cases on disk, manifest.json lists {}",
                        present.len(),
                        names.len()
                    ));
                }
            }
            for case in &cases {
                if !groups.contains_key(&case.folder) {
                    failures.push(format!("{}: folder not in manifest.json", case.folder));
                }
            }
        }
        None => failures.push(format!("no manifest.json in {}", dir.display())),
    }
    for case in &cases {
        let tally = tallies.entry(case.folder.clone()).or_default();
        let function = case.function();
        match runner(&function) {
            Some(run) => {
                let mut ok = true;
                for dev in &devices {
                    if let Err(msg) = run(case, dev) {
                        ok = false;
                        failures.push(format!(
                            "{}/{} on {}: {msg}",
                            case.folder, case.name, dev.name
                        ));
                    }
                }
                let uncompared = case.uncompared();
                if ok && !uncompared.is_empty() {
                    ok = false;
                    failures.push(format!(
                        "{}/{}: the fixture carries {uncompared:?}, which the runner does not compare",
                        case.folder, case.name
                    ));
                }
                tally.skipped.extend(case.skipped.borrow().iter().cloned());
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
    println!(
        "parity fixtures from {} on devices {names:?}",
        dir.display()
    );
    for (folder, t) in &tallies {
        println!(
            "{folder}: {} passed, {} failed, {} not yet implemented",
            t.passed, t.failed, t.not_yet
        );
        if !t.skipped.is_empty() {
            println!("  {folder}: not compared: {:?}", t.skipped);
        }
    }
    assert!(
        failures.is_empty(),
        "{} parity failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
