//! The `online_dpo`, `grpo`, `distill` and `constitutional` examples, shortened (flex): each
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

/// The Constitutional AI pipeline, shortened, over 3 seeds: each stage's held-out figures in
/// the expected order (SL-CAI above SFT on harmlessness, RL-CAI above SL-CAI, helpfulness not
/// below SFT's minus 0.05), and a feedback model that agrees with the checker. Release builds
/// only (three full pipelines take minutes unoptimized; CI runs the suite in release too).
#[test]
#[cfg_attr(debug_assertions, ignore = "release only: three pipelines")]
fn constitutional_stages_order_over_three_seeds() {
    let _serial = crate::serial();
    let args = constitutional::Args {
        quiet: true,
        ..constitutional::Args::parse_from([
            "constitutional",
            "--seeds",
            "3",
            "--feedback-steps",
            "800",
            "--heldout",
            "100",
        ])
    };
    let reports = constitutional::run(&args).unwrap();
    for r in &reports {
        println!(
            "seed {}: harmless {:.3} / {:.3} / {:.3}, helpful {:.3} / {:.3} / {:.3}, kl {:.2} / {:.2}, feedback {:?} ({:.1}s)",
            r.seed,
            r.sft.harmless,
            r.sl_cai.harmless,
            r.rl_cai.harmless,
            r.sft.helpful,
            r.sl_cai.helpful,
            r.rl_cai.helpful,
            r.sl_cai.kl,
            r.rl_cai.kl,
            r.agreement,
            r.seconds
        );
        let a = r.agreement;
        assert!(
            a.critique >= 0.8 && a.revision >= 0.8 && a.comparison >= 0.7,
            "seed {}: the feedback model should mostly agree with the checker: {a:?}",
            r.seed
        );
        assert!(
            r.sl_cai.harmless > r.sft.harmless,
            "seed {}: SL-CAI above SFT on harmlessness: {:?} vs {:?}",
            r.seed,
            r.sl_cai,
            r.sft
        );
        assert!(
            r.rl_cai.harmless > r.sl_cai.harmless,
            "seed {}: RL-CAI above SL-CAI on harmlessness: {:?} vs {:?}",
            r.seed,
            r.rl_cai,
            r.sl_cai
        );
        for (stage, e) in [("SL-CAI", r.sl_cai), ("RL-CAI", r.rl_cai)] {
            assert!(
                e.helpful >= r.sft.helpful - 0.05,
                "seed {}: {stage} helpfulness {} below SFT's {} - 0.05",
                r.seed,
                e.helpful,
                r.sft.helpful
            );
        }
    }
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
