//! The real-data examples `hf_dpo` and `hf_grpo`, shortened (flex): the committed tiny
//! checkpoint and the committed TRL-format datasets, the example's own `final:` figures, and
//! the saved model reloaded from disk.
// Each example brings its own `common` (`examples/common`), so the shared module is loaded
// once per example here.
#![allow(clippy::duplicate_mod)]

#[path = "../../examples/hf_dpo.rs"]
pub mod hf_dpo;
#[path = "../../examples/hf_grpo.rs"]
pub mod hf_grpo;

use burn::tensor::{Device, FloatDType};
use burn_rlhf::hf::DecoderLm;
use clap::Parser;

fn out_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("burn-rlhf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The saved directory loads as a checkpoint, with the tokenizer files beside it.
fn check_saved(dir: &std::path::Path) {
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
    ] {
        assert!(
            dir.join(file).exists(),
            "{} missing",
            dir.join(file).display()
        );
    }
    DecoderLm::from_pretrained(dir, &Device::flex(), FloatDType::F32).unwrap();
    burn_rlhf::data::HfTokenizer::from_pretrained(dir).unwrap();
}

#[test]
fn hf_dpo_learns_the_preference_of_the_committed_dataset() {
    let _serial = crate::serial();
    let out = out_dir("hf-dpo");
    let args = hf_dpo::Args::parse_from([
        "hf_dpo",
        "--steps",
        "15",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let s = hf_dpo::run(&args).unwrap();
    println!(
        "hf_dpo: chosen preferred {:.3} -> {:.3}, rewards/accuracies -> {:.3}, loss {:.4} -> {:.4} in {:.1}s",
        s.preference_before,
        s.preference_after,
        s.reward_accuracy_after,
        s.loss.0,
        s.loss.1,
        s.seconds
    );
    assert_eq!(s.heldout_pairs, 16);
    // The pretrained model answers "yes"; the dataset prefers "no".
    assert!(s.preference_before <= 0.5, "{}", s.preference_before);
    assert!(s.preference_after >= 0.9, "{}", s.preference_after);
    assert!(
        s.reward_accuracy_after >= 0.9,
        "{}",
        s.reward_accuracy_after
    );
    // ln 2 at the first step: the policy is the reference (closed form).
    assert!(
        (s.loss.0 - std::f64::consts::LN_2).abs() < 1e-4,
        "{}",
        s.loss.0
    );
    check_saved(&s.saved);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn hf_grpo_raises_the_reward_of_held_out_greedy_answers() {
    let _serial = crate::serial();
    let out = out_dir("hf-grpo");
    let args = hf_grpo::Args::parse_from([
        "hf_grpo",
        "--steps",
        "12",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let s = hf_grpo::run(&args).unwrap();
    println!(
        "hf_grpo: sampled reward {:.3} -> {:.3}, held-out greedy reward {:.3} -> {:.3} ({:?} -> {:?}) in {:.1}s",
        s.train_reward.0,
        s.train_reward.1,
        s.heldout_reward.0,
        s.heldout_reward.1,
        s.example_answer.0,
        s.example_answer.1,
        s.seconds
    );
    assert_eq!(s.heldout_prompts, 16);
    // Greedy answers start with "yes" before; the reward pays for "no".
    assert!(s.heldout_reward.0 <= 0.25, "{}", s.heldout_reward.0);
    assert!(s.heldout_reward.1 >= 0.75, "{}", s.heldout_reward.1);
    assert!(s.train_reward.1 > s.train_reward.0, "{:?}", s.train_reward);
    check_saved(&s.saved);
    let _ = std::fs::remove_dir_all(&out);
}
