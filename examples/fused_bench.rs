//! Side-by-side table for the fused LM-head log-probs, forward + backward on flex:
//! (a) the fused op on a `[V, H]` weight, (a') the fused op on a burn `Linear` head (`[H, V]`
//! weight read in place, `forward_head(hidden, &linear, targets)`), (b) materialized logits
//! (`hidden @ W^T`) + the lean token gather, (c) the bare GEMMs the fused op must do (logits,
//! recompute, d hidden, d weight).
//!
//! `cargo run --release --example fused_bench -- [--n 2048] [--h 1024] [--v 32000] [--reps 3]
//! [--skip-materialized]`
//!
//! Peak extra memory = peak heap above the level after inputs are allocated, minus the
//! gradients every variant must return (d hidden [N, H] + d weight [V, H]); counted by a
//! global allocator, exact on the CPU backend.

#[path = "common/alloc.rs"]
mod alloc;
#[path = "common/device.rs"]
mod device_arg;

use std::time::Instant;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_rlhf::logprobs::FusedLogprobsConfig;
use burn_rlhf::{LabelAlignment, TokenLogprobsConfig};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

use device_arg::usize_arg as arg;

#[derive(Clone, Copy)]
enum Variant {
    Fused,
    FusedLinear,
    Materialized,
    BareGemms,
}

fn run_once(
    variant: Variant,
    hidden: &Tensor<2>,
    weight: &Tensor<2>,
    weight_hv: &Tensor<2>,
    targets: &Tensor<1, Int>,
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
            let out = FusedLogprobsConfig::new()
                .with_check_targets(false)
                .init()
                .forward_head(h.clone(), &linear, targets.clone());
            let grads = out.logprobs.sum().backward();
            let dw = linear.weight.val().grad(&grads).unwrap();
            assert_eq!(dw.dims(), [weight.dims()[1], weight.dims()[0]]);
            (h.grad(&grads).unwrap(), dw)
        }
        Variant::Fused => {
            let out = FusedLogprobsConfig::new()
                .with_check_targets(false)
                .init()
                .forward(h.clone(), w.clone(), None, targets.clone());
            let grads = out.logprobs.sum().backward();
            (h.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        }
        Variant::Materialized => {
            let logits = h
                .clone()
                .matmul(w.clone().transpose())
                .unsqueeze_dim::<3>(0);
            let labels = targets.clone().unsqueeze_dim::<2>(0);
            let op = TokenLogprobsConfig::new(LabelAlignment::Aligned)
                .with_check_labels(false)
                .init();
            let grads = op.forward(logits, labels).logprobs.sum().backward();
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

fn main() {
    let (n, h, v, reps) = (
        arg("--n", 2048),
        arg("--h", 1024),
        arg("--v", 32000),
        arg("--reps", 3),
    );
    let skip_materialized = std::env::args().any(|a| a == "--skip-materialized");
    let (device_name, device) = device_arg::from_args().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    device.seed(0);
    let hidden = Tensor::<2>::random([n, h], Distribution::Normal(0.0, 1.0), &device);
    let weight = Tensor::<2>::random([v, h], Distribution::Normal(0.0, 0.03), &device);
    let weight_hv = Tensor::<2>::random([h, v], Distribution::Normal(0.0, 0.03), &device);
    let targets = Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, v as f64), &device);
    let gflop = 4.0 * 2.0 * (n * h * v) as f64 / 1e9;
    println!(
        "fused LM-head log-probs fwd+bwd on {device_name} (f32), N={n} H={h} V={v}; logits would be {:.0} MB; median of {reps}",
        (n * v * 4) as f64 / 1e6
    );
    println!(
        "{:<44} {:>9} {:>10} {:>16}",
        "variant", "time ms", "GFLOP/s*", "peak extra MB"
    );
    let mut rows = Vec::new();
    for (name, variant) in [
        ("(a) fused op, [V, H] weight", Variant::Fused),
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
        run_once(variant, &hidden, &weight, &weight_hv, &targets, &device);
        let mut times = Vec::new();
        let mut mem = 0;
        for _ in 0..reps {
            let (s, m) = run_once(variant, &hidden, &weight, &weight_hv, &targets, &device);
            times.push(s);
            mem = mem.max(m);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let t = times[times.len() / 2];
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
    let (fl, ml) = rows[1];
    let (fb, mb) = rows[2];
    let (fc, _) = rows[3];
    println!("fused / bare GEMMs time: {:.2}x (target <= 1.3x)", fa / fc);
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
}
