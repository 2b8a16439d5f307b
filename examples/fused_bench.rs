//! Side-by-side table for the fused LM-head log-probs, forward + backward on flex:
//! (a) the fused op on a `[V, H]` weight, (a') the fused op on a burn `Linear` head (`[H, V]`
//! weight read in place, `forward_head(hidden, &linear, targets)`), (b) materialized logits
//! (`hidden @ W^T`) + the lean token gather, (c) the bare GEMMs the fused op must do (logits,
//! recompute, d hidden, d weight).
//!
//! `cargo run --release --example fused_bench -- [--n 2048] [--h 1024] [--v 32000] [--reps 3]
//! [--skip-materialized] [--ignored-fraction 0.5] [--seq 512] [--dpo-step]`
//!
//! `--ignored-fraction F` adds (a) with the first `F` of every `--seq`-token sequence ignored
//! (label -100, as prompt tokens are in DPO/GRPO batches) and prints its time against all rows
//! scored (the op's work should follow the scored rows). `--dpo-step` adds a DPO training step:
//! fused log-probs of the `[2B, T]` chosen-then-rejected rows (`N = 2B x T`, 40% prompt
//! tokens) -> sigmoid DPO -> backward, against the same step through materialized logits.
//!
//! Peak extra memory = peak heap above the level after inputs are allocated, minus the
//! gradients every variant must return (d hidden [N, H] + d weight [V, H]); counted by a
//! global allocator, exact on the CPU backend.

pub mod common;

use std::time::Instant;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_rlhf::logps::FusedLogpsConfig;
use burn_rlhf::logps::{LabelAlignment, TokenLogpsConfig};
use common::alloc::{self, Counting};
use common::device::{f64_arg, usize_arg as arg};

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Clone, Copy)]
enum Variant {
    Fused,
    FusedIgnored,
    FusedLinear,
    Materialized,
    BareGemms,
}

#[allow(clippy::too_many_arguments)]
fn run_once(
    variant: Variant,
    hidden: &Tensor<2>,
    weight: &Tensor<2>,
    weight_hv: &Tensor<2>,
    targets: &Tensor<1, Int>,
    ignored_targets: &Tensor<1, Int>,
    device: &Device,
) -> (f64, usize) {
    device.sync().unwrap();
    let before = alloc::reset_peak();
    let start = Instant::now();
    let h = hidden.clone().autodiff().require_grad();
    let w = weight.clone().autodiff().require_grad();
    let (dh, dw) = match variant {
        Variant::FusedLinear => {
            // A burn `Linear` head (`LinearLayout::Row`): a contiguous `[H, V]` parameter.
            let linear = Linear {
                weight: Param::from_tensor(weight_hv.clone().autodiff()),
                bias: None,
            };
            let out = FusedLogpsConfig::new()
                .with_check_targets(false)
                .init()
                .forward_head(h.clone(), &linear, targets.clone());
            let grads = out.logps.sum().backward();
            let dw = linear.weight.val().grad(&grads).unwrap();
            assert_eq!(dw.dims(), [weight.dims()[1], weight.dims()[0]]);
            (h.grad(&grads).unwrap(), dw)
        }
        Variant::Fused | Variant::FusedIgnored => {
            let targets = match variant {
                Variant::FusedIgnored => ignored_targets,
                _ => targets,
            };
            let out = FusedLogpsConfig::new()
                .with_check_targets(false)
                .init()
                .forward(h.clone(), w.clone(), None, targets.clone());
            let grads = out.logps.sum().backward();
            (h.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        }
        Variant::Materialized => {
            let logits = h
                .clone()
                .matmul(w.clone().transpose())
                .unsqueeze_dim::<3>(0);
            let labels = targets.clone().unsqueeze_dim::<2>(0);
            let op = TokenLogpsConfig::new(LabelAlignment::Aligned)
                .with_check_labels(false)
                .init();
            let grads = op.forward(logits, labels).logps.sum().backward();
            (h.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        }
        Variant::BareGemms => {
            // The four products the fused op performs, with nothing in between.
            let (h, w) = (h.inner(), w.inner());
            let logits = h.clone().matmul(w.clone().transpose());
            drop(logits);
            let recomputed = h.clone().matmul(w.clone().transpose());
            let dh = recomputed.clone().matmul(w);
            let dw = recomputed.transpose().matmul(h);
            (dh, dw)
        }
    };
    let _ = dh.clone().slice([0..1, 0..1]).into_scalar::<f32>()
        + dw.clone().slice([0..1, 0..1]).into_scalar::<f32>();
    device.sync().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let grads_bytes = (dh.shape().num_elements() + dw.shape().num_elements()) * 4;
    let extra = alloc::peak()
        .saturating_sub(before)
        .saturating_sub(grads_bytes);
    (elapsed, extra)
}

/// `targets` with the first `fraction` of every `seq`-row sequence set to -100 (prompt).
fn with_prompt(targets: &Tensor<1, Int>, seq: usize, fraction: f64) -> Tensor<1, Int> {
    let n = targets.dims()[0];
    let prompt = ((seq as f64) * fraction).round() as usize;
    let keep: Vec<bool> = (0..n).map(|i| i % seq >= prompt).collect();
    let keep = Tensor::<1, burn::tensor::Bool>::from_data(
        burn::tensor::TensorData::new(keep, [n]),
        &targets.device(),
    );
    targets.clone().mask_fill(keep.bool_not(), -100)
}

/// One DPO step on `[2B, T]` rows (chosen then rejected): log-probs through the fused op or
/// through materialized logits + the lean gather, sequence sums, sigmoid DPO, backward.
fn dpo_step(
    fused: bool,
    hidden: &Tensor<2>,
    weight: &Tensor<2>,
    targets: &Tensor<1, Int>,
    seq: usize,
    device: &Device,
) -> f64 {
    device.sync().unwrap();
    let start = Instant::now();
    let h = hidden.clone().autodiff().require_grad();
    let w = weight.clone().autodiff().require_grad();
    let n = h.dims()[0];
    let rows = n / seq;
    let tokens = if fused {
        FusedLogpsConfig::new()
            .with_check_targets(false)
            .init()
            .forward(h.clone(), w.clone(), None, targets.clone())
            .logps
    } else {
        let logits = h
            .clone()
            .matmul(w.clone().transpose())
            .unsqueeze_dim::<3>(0);
        TokenLogpsConfig::new(LabelAlignment::Aligned)
            .with_check_labels(false)
            .init()
            .forward(logits, targets.clone().unsqueeze_dim::<2>(0))
            .logps
            .reshape([n])
    };
    let seq_logps = tokens.reshape([rows, seq]).sum_dim(1).reshape([rows]);
    let b = rows / 2;
    let batch = burn_rlhf::losses::PreferenceBatch::new(
        seq_logps.clone().narrow(0, 0, b),
        seq_logps.narrow(0, b, b),
    )
    .with_ref_logps(
        Tensor::<1>::zeros([b], device).sub_scalar(1000.0),
        Tensor::<1>::zeros([b], device).sub_scalar(1000.0),
    );
    let out = burn_rlhf::losses::DpoLossConfig::new()
        .init()
        .forward(&batch);
    let grads = out.loss.backward();
    let (dh, dw) = (h.grad(&grads).unwrap(), w.grad(&grads).unwrap());
    let _ =
        dh.slice([0..1, 0..1]).into_scalar::<f32>() + dw.slice([0..1, 0..1]).into_scalar::<f32>();
    device.sync().unwrap();
    start.elapsed().as_secs_f64()
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

pub fn main() {
    let (n, h, v, reps, seq) = (
        arg("--n", 2048),
        arg("--h", 1024),
        arg("--v", 32000),
        arg("--reps", 3),
        arg("--seq", 512),
    );
    let ignored_fraction = f64_arg("--ignored-fraction", 0.5);
    let skip_materialized = std::env::args().any(|a| a == "--skip-materialized");
    let dpo = std::env::args().any(|a| a == "--dpo-step");
    let (device_name, device) = common::device::from_args().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    device.seed(0);
    let hidden = Tensor::<2>::random([n, h], Distribution::Normal(0.0, 1.0), &device);
    let weight = Tensor::<2>::random([v, h], Distribution::Normal(0.0, 0.03), &device);
    let weight_hv = Tensor::<2>::random([h, v], Distribution::Normal(0.0, 0.03), &device);
    let targets = Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, v as f64), &device);
    let ignored = with_prompt(&targets, seq, ignored_fraction);
    let gflop = 4.0 * 2.0 * (n * h * v) as f64 / 1e9;
    println!(
        "fused LM-head log-probs fwd+bwd on {device_name} (f32), N={n} H={h} V={v}; logits would be {:.0} MB; median of {reps}",
        (n * v * 4) as f64 / 1e6
    );
    println!(
        "{:<44} {:>9} {:>10} {:>16}",
        "variant", "time ms", "GFLOP/s*", "peak extra MB"
    );
    let ignored_name = format!(
        "(a-i) fused op, {:.0}% of rows ignored",
        ignored_fraction * 100.0
    );
    let mut rows = Vec::new();
    for (name, variant) in [
        ("(a) fused op, [V, H] weight", Variant::Fused),
        (ignored_name.as_str(), Variant::FusedIgnored),
        (
            "(a') fused op, burn Linear head [H, V]",
            Variant::FusedLinear,
        ),
        (
            "(b) materialized logits + lean gather",
            Variant::Materialized,
        ),
        (
            "(c) bare GEMMs (4 products, no softmax)",
            Variant::BareGemms,
        ),
    ] {
        if skip_materialized && matches!(variant, Variant::Materialized) {
            rows.push((f64::NAN, 0));
            continue;
        }
        let once = || {
            run_once(
                variant, &hidden, &weight, &weight_hv, &targets, &ignored, &device,
            )
        };
        once();
        let mut times = Vec::new();
        let mut mem = 0;
        for _ in 0..reps {
            let (s, m) = once();
            times.push(s);
            mem = mem.max(m);
        }
        let t = median(times);
        println!(
            "{name:<44} {:>9.0} {:>10.1} {:>16.1}",
            t * 1e3,
            gflop / t,
            mem as f64 / 1e6
        );
        rows.push((t, mem));
    }
    println!("* GFLOP/s counts the 4 GEMMs ({gflop:.0} GFLOP) for every variant");
    let (fa, ma) = rows[0];
    let (fi, _) = rows[1];
    let (fl, ml) = rows[2];
    let (fb, mb) = rows[3];
    let (fc, _) = rows[4];
    println!("fused / bare GEMMs time: {:.2}x (target <= 1.3x)", fa / fc);
    println!(
        "{:.0}% of rows ignored / all rows scored: {:.2}x time (target <= 0.55x at 50%)",
        ignored_fraction * 100.0,
        fi / fa
    );
    println!(
        "Linear head vs [V, H] weight: {:.2}x time, {:+.1} MB peak extra (a V x H copy is {:.0} MB)",
        fl / fa,
        (ml as f64 - ma as f64) / 1e6,
        (v * h * 4) as f64 / 1e6
    );
    if !skip_materialized {
        println!(
            "fused vs materialized: {:.2}x time, {:.1}x less peak extra memory (target >= 10x)",
            fb / fa,
            mb as f64 / ma.max(1) as f64
        );
    }
    if dpo {
        assert!(
            n % (2 * seq) == 0,
            "--dpo-step needs --n a multiple of 2 x --seq"
        );
        let prompt = with_prompt(&targets, seq, 0.4);
        println!(
            "DPO step ({} pairs x {seq} tokens, 40% prompt): fused log-probs -> sigmoid DPO -> backward",
            n / seq / 2
        );
        for (name, fused) in [("fused op", true), ("materialized logits", false)] {
            if !fused && skip_materialized {
                continue;
            }
            dpo_step(fused, &hidden, &weight, &prompt, seq, &device);
            let t = median(
                (0..reps)
                    .map(|_| dpo_step(fused, &hidden, &weight, &prompt, seq, &device))
                    .collect(),
            );
            println!("  {name:<24} {:>9.0} ms", t * 1e3);
        }
    }
}
