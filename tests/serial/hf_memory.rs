//! Memory of the Hugging Face decoder on flex, measured with the counting global allocator:
//! loading reads one tensor at a time (the peak stays near one copy of the weights), and
//! `DecoderLm::with_lora`'s reference (the adapter-free base TRL uses as DPO / GRPO reference)
//! is no second copy of the weights: the heap grows by far less than the weights' bytes when it
//! is made, while loading an explicit frozen copy (the control) grows it by at least them.
//!
//! Each measurement runs in a fresh child process (this test binary, re-run on one `#[ignore]`d
//! test): in a process that already ran other tests, buffers they left behind are freed while
//! the measurement runs and the heap counter goes down instead of up (seen in CI: "kept 0 B").

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, FloatDType};
use burn_rlhf::hf::DecoderLm;

use crate::lm_head_memory::examples_common::alloc;

/// Runs the `#[ignore]`d test `name` of this binary alone in a child process; panics with its
/// output unless it passed.
fn in_child(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} failed in its own process:\n{text}"
    );
}

#[test]
fn the_lora_reference_shares_the_base_weights() {
    let _serial = crate::serial();
    in_child("hf_memory::lora_reference_child");
}

#[test]
fn loading_holds_one_copy_of_the_weights() {
    let _serial = crate::serial();
    in_child("hf_memory::loading_child");
}

#[test]
#[ignore = "run in a fresh process by the_lora_reference_shares_the_base_weights"]
fn lora_reference_child() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf/llama3");
    let device = Device::flex().autodiff();
    let base = DecoderLm::from_pretrained(&dir, &device, FloatDType::F32).unwrap();
    let weight_bytes = base.num_params() * 4;

    let before = alloc::current();
    let (policy, ref_model) = base.with_lora(4, 8.0, &["q_proj", "k_proj", "v_proj", "o_proj"]);
    let grown = alloc::current().saturating_sub(before);

    let before = alloc::current();
    let copy = DecoderLm::from_pretrained(&dir, &Device::flex(), FloatDType::F32).unwrap();
    let copied = alloc::current().saturating_sub(before);
    println!(
        "weights {weight_bytes} B; policy + adapter-free reference grew the heap by {grown} B; an explicit copy by {copied} B"
    );
    assert!(
        copied >= weight_bytes,
        "the control sees a copy ({copied} < {weight_bytes})"
    );
    assert!(
        grown < weight_bytes / 4,
        "with_lora allocated {grown} B for {weight_bytes} B of weights"
    );
    drop((policy, ref_model, copy));
}

#[test]
#[ignore = "run in a fresh process by loading_holds_one_copy_of_the_weights"]
fn loading_child() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf/llama3");
    let device = Device::flex();
    let before = alloc::reset_peak();
    let model = DecoderLm::from_pretrained(&dir, &device, FloatDType::F32).unwrap();
    let peak = alloc::peak().saturating_sub(before);
    let kept = alloc::current().saturating_sub(before);
    let weight_bytes = model.num_params() * 4;
    // The largest tensor of this checkpoint: the [512, 64] embedding / lm_head (128 KiB).
    let largest = 512 * 64 * 4;
    println!("weights {weight_bytes} B; kept {kept} B; peak while loading {peak} B");
    assert!(
        kept >= weight_bytes,
        "the model holds its weights ({kept} < {weight_bytes})"
    );
    assert!(
        peak <= weight_bytes + 3 * largest,
        "loading peaked at {peak} B for {weight_bytes} B of weights (a second full copy?)"
    );
}
