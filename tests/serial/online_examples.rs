//! The `online_dpo`, `grpo`, `distill` and `constitutional` examples, shortened (debug build, flex): each
//! example's own metric must move in the right direction by a clear margin.
// Each example brings its own `common` (`examples/common`), so the shared module is loaded
// once per example here.
#![allow(clippy::duplicate_mod)]

#[path = "../../examples/constitutional.rs"]
pub mod constitutional;
#[path = "../../examples/distill.rs"]
pub mod distill;
#[path = "../../examples/grpo.rs"]
pub mod grpo;
#[path = "../../examples/online_dpo.rs"]
pub mod online_dpo;

use clap::Parser;

#[test]
fn online_dpo_raises_the_rule_rate() {
    let _serial = crate::serial();
    let args = online_dpo::Args {
        d_model: 32,
        heldout: 64,
        quiet: true,
        ..online_dpo::Args::parse_from([
            "online_dpo",
            "--rounds",
            "30",
            "--learning-rate",
            "3e-3",
            "--prompts",
            "16",
            "--sft-steps",
            "60",
            "--eval-every",
            "30",
        ])
    };
    let h = online_dpo::run(&args).unwrap();
    let (first, last) = (h.evals[0].1, h.evals[h.evals.len() - 1].1);
    println!("rule rate {first:.3} -> {last:.3} in {:.1}s", h.seconds);
    assert!(first <= 0.6, "starts from a weak policy: {first}");
    assert!(
        last >= first + 0.3,
        "rule rate should rise: {first} -> {last}"
    );
}

#[test]
fn grpo_raises_the_reward() {
    let _serial = crate::serial();
    let args = grpo::Args {
        d_model: 32,
        quiet: true,
        ..grpo::Args::parse_from([
            "grpo",
            "--steps",
            "20",
            "--prompts",
            "8",
            "--sft-steps",
            "60",
        ])
    };
    let h = grpo::run(&args).unwrap();
    let (first, last) = h.start_end(3);
    println!("reward {first:.3} -> {last:.3} in {:.1}s", h.seconds);
    assert!(
        last >= first + 0.15,
        "reward should rise: {first} -> {last}"
    );
}

#[test]
fn constitutional_raises_the_principles_score() {
    let _serial = crate::serial();
    let args = constitutional::Args {
        d_model: 32,
        heldout: 32,
        quiet: true,
        ..constitutional::Args::parse_from([
            "constitutional",
            "--rounds",
            "20",
            "--prompts",
            "16",
            "--sft-steps",
            "60",
            "--eval-every",
            "20",
        ])
    };
    let h = constitutional::run(&args).unwrap();
    let (first, last) = (h.evals[0].1, h.evals[h.evals.len() - 1].1);
    println!(
        "principles' score {first:.3} -> {last:.3} in {:.1}s",
        h.seconds
    );
    assert!(
        last >= first + 0.1,
        "principles' score should rise: {first} -> {last}"
    );
}

#[test]
fn the_critic_reads_the_constitution() {
    let _serial = crate::serial();
    use constitutional::{CONSTITUTION, RuleCritic};
    let critic = RuleCritic;
    let response = [9, 9, 7, 3];
    assert_eq!(
        critic.critique(CONSTITUTION[0].critique_request, &response),
        Some(vec![0, 1])
    );
    assert_eq!(
        critic.critique(CONSTITUTION[3].critique_request, &response),
        Some(vec![1])
    );
    assert_eq!(
        critic.critique(CONSTITUTION[2].critique_request, &[1, 2]),
        Some(vec![2])
    );
    assert_eq!(critic.critique("Is the response polite?", &response), None);
    let (revised, _) = critic.revise_all(&CONSTITUTION, &response);
    assert_eq!(
        critic.score(&CONSTITUTION, &revised),
        Some(1.0),
        "{revised:?}"
    );
    // Only "four-digits" holds.
    assert_eq!(critic.score(&CONSTITUTION, &response), Some(0.25));
    let (revised, _) = critic.revise_all(&CONSTITUTION, &[5]);
    assert_eq!(
        critic.score(&CONSTITUTION, &revised),
        Some(1.0),
        "{revised:?}"
    );
}

#[test]
fn distill_halves_the_heldout_kl() {
    let _serial = crate::serial();
    let args = distill::Args {
        quiet: true,
        ..distill::Args::parse_from([
            "distill",
            "--steps",
            "40",
            "--prompts",
            "16",
            "--teacher-steps",
            "250",
            "--student-steps",
            "60",
            "--heldout",
            "64",
        ])
    };
    let h = distill::run(&args).unwrap();
    let (before, after) = h.heldout_kl;
    println!(
        "held-out KL {before:.4} -> {after:.4}, rule rate {:.3} -> {:.3} (teacher {:.3}) in {:.1}s",
        h.rule_rate.0, h.rule_rate.1, h.teacher_rule_rate, h.seconds
    );
    assert!(
        h.teacher_rule_rate >= 0.9,
        "the teacher must know the task: {}",
        h.teacher_rule_rate
    );
    assert!(
        after <= 0.5 * before,
        "held-out KL(teacher || student) should fall by half: {before} -> {after}"
    );
}
