//! Side-by-side table: token log-probs fwd+bwd, the lean op vs `log_softmax + gather`.
//!
//! `cargo run --release --example logps_bench -- [--b 4] [--t 512] [--v 32000] [--reps 5]`
//!
//! Time: median wall time of `reps` runs of forward + backward + reading the gradient
//! (`device.sync()` inside). Memory: peak heap bytes above the level before the call (logits
//! and labels already allocated), counted by a global allocator, so it is exact for the CPU
//! backends. "lean, in place" is the training-loop situation where nothing but the op holds
//! the logits, so backward writes the gradient into the logits buffer.

pub mod common;

use std::time::Instant;

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_rlhf::logps::LogpsImplementation;
use burn_rlhf::logps::{LabelAlignment, TokenLogpsConfig};
use common::alloc::{self, Counting};
use common::device::usize_arg as arg;

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Naive,
    Lean,
    LeanInPlace,
}

fn run_once(
    variant: Variant,
    base: &Tensor<3>,
    labels: &Tensor<2, Int>,
    device: &Device,
) -> (f64, usize) {
    let implementation = match variant {
        Variant::Naive => LogpsImplementation::Reference,
        _ => LogpsImplementation::Auto,
    };
    let op = TokenLogpsConfig::new(LabelAlignment::CausalShift)
        .with_check_labels(false)
        .with_implementation(implementation)
        .init();
    // In place: hand the op a private copy (made before the clock starts), as a training loop
    // hands it the model's fresh logits.
    let logits = match variant {
        Variant::LeanInPlace => Tensor::<3>::from_data(base.to_data(), device),
        _ => base.clone(),
    };
    device.sync().unwrap();
    let before = alloc::reset_peak();
    let start = Instant::now();
    let logits = logits.autodiff().require_grad();
    if variant == Variant::LeanInPlace {
        // Nothing but the op holds the logits (as with a model's fresh output), so backward
        // may overwrite them with their gradient. The gradient stays in `grads`.
        let out = op.forward(logits, labels.clone());
        let grads = out.logps.sum().backward();
        device.sync().unwrap();
        let elapsed = start.elapsed().as_secs_f64();
        let extra = alloc::peak().saturating_sub(before);
        drop(grads);
        return (elapsed, extra);
    }
    let out = op.forward(logits.clone(), labels.clone());
    let loss = out.logps.sum();
    let grads = loss.backward();
    let grad = logits.grad(&grads).unwrap();
    drop(logits);
    let _checksum: f32 = grad.clone().slice([0..1, 0..1, 0..4]).sum().into_scalar();
    device.sync().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let extra = alloc::peak().saturating_sub(before);
    drop(grad);
    (elapsed, extra)
}

pub fn main() {
    let (b, t, v, reps) = (
        arg("--b", 4),
        arg("--t", 512),
        arg("--v", 32000),
        arg("--reps", 5),
    );
    let (device_name, device) = common::device::from_args().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    device.seed(0);
    let base = Tensor::<3>::random([b, t, v], Distribution::Normal(0.0, 2.0), &device);
    let labels = Tensor::<2, Int>::random([b, t], Distribution::Uniform(0.0, v as f64), &device);
    let logits_mb = (b * t * v * 4) as f64 / 1e6;
    println!(
        "token log-probs fwd+bwd on {device_name}, B={b} T={t} V={v} (logits {logits_mb:.0} MB f32), median of {reps}"
    );
    println!(
        "{:<28} {:>10} {:>16} {:>14}",
        "variant", "time ms", "peak extra MB", "x logits size"
    );
    let mut rows = Vec::new();
    for (name, variant) in [
        ("naive log_softmax+gather", Variant::Naive),
        ("lean op", Variant::Lean),
        ("lean op, in place", Variant::LeanInPlace),
    ] {
        let mut times = Vec::new();
        let mut mem = 0;
        run_once(variant, &base, &labels, &device); // warm-up
        for _ in 0..reps {
            let (s, m) = run_once(variant, &base, &labels, &device);
            times.push(s);
            mem = mem.max(m);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = times[times.len() / 2] * 1e3;
        println!(
            "{name:<28} {median:>10.1} {:>16.1} {:>14.2}",
            mem as f64 / 1e6,
            mem as f64 / 1e6 / logits_mb
        );
        rows.push((median, mem));
    }
    println!(
        "* heap allocated during fwd+bwd, the returned gradient included (it is logits-sized)"
    );
    let (naive_t, naive_m) = rows[0];
    for (i, name) in [(1, "lean op"), (2, "lean op, in place")] {
        let (t_ms, m) = rows[i];
        println!(
            "{name}: {:.1}x faster, {:.1}x less peak extra memory than naive",
            naive_t / t_ms,
            naive_m as f64 / m.max(1) as f64
        );
    }
}
