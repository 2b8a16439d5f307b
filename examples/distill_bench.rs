//! Side-by-side table for the fused two-head distillation loss, forward + backward on flex:
//! (a) the fused op (`DistillationLoss::forward_fused`, student and teacher `[V, H]` heads), (b)
//! the same loss on materialized logits (`hidden @ W^T` for both models, then
//! `DistillationLoss::forward`). Run TRL's `_chunked_divergence_loss` beside it with
//! `benches/peers/torch_bench.py distill` (same shapes, same threads).
//!
//! `cargo run --release --example distill_bench -- [--n 2048] [--h 1024] [--v 128000]
//! [--beta 0.5] [--reps 1] [--materialized]`
//!
//! Peak extra memory = peak heap above the level after the inputs are allocated, minus the
//! gradients every variant must return (student d hidden `[N, H]` + d weight `[V, H]`); counted
//! by a global allocator, exact on the CPU backend.

pub mod common;

use std::time::Instant;

use burn::tensor::{Bool, Distribution, Tensor};
use burn_rlhf::logps::LmHead;
use burn_rlhf::losses::DistillationLossConfig;
use common::alloc::{self, Counting};
use common::device::{f64_arg, usize_arg as arg};

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    let (n, h, v) = (arg("--n", 2048), arg("--h", 1024), arg("--v", 128_000));
    let reps = arg("--reps", 1);
    let beta = f64_arg("--beta", 0.5);
    let materialized = std::env::args().any(|a| a == "--materialized");
    let (device_name, device) = common::device::from_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    println!(
        "distillation loss fwd+bwd, N={n} H={h} V={v} beta={beta}, device {device_name}, f32, \
         AVX-512: {}",
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| c.contains("avx512f"))
            .unwrap_or(false)
    );
    let dist = Distribution::Normal(0.0, 1.0);
    let s_hidden = Tensor::<3>::random([1, n, h], dist, &device);
    let t_hidden = Tensor::<3>::random([1, n, h], dist, &device);
    let s_weight = Tensor::<2>::random([v, h], dist, &device).mul_scalar(0.02);
    let t_weight = Tensor::<2>::random([v, h], dist, &device).mul_scalar(0.02);
    let mask = Tensor::<2, Bool>::ones([1, n], &device);
    let loss = DistillationLossConfig::new().with_beta(beta).init();
    let grads_bytes = (n * h + v * h) * 4;
    let mut variants = vec!["fused"];
    if materialized {
        variants.push("materialized");
    }
    println!(
        "{:<14} {:>10} {:>16} {:>10}",
        "variant", "time ms", "peak extra MB", "loss"
    );
    for variant in variants {
        for _ in 0..reps {
            device.sync().unwrap();
            let before = alloc::reset_peak();
            let start = Instant::now();
            let sh = s_hidden.clone().autodiff().require_grad();
            let sw = s_weight.clone().autodiff().require_grad();
            let th = t_hidden.clone().autodiff();
            let tw = t_weight.clone().autodiff();
            let out = match variant {
                "fused" => loss.forward_fused(
                    sh.clone(),
                    LmHead::vocab_major(sw.clone(), None),
                    th,
                    LmHead::vocab_major(tw, None),
                    mask.clone().autodiff(),
                ),
                _ => loss.forward(
                    sh.clone()
                        .matmul(sw.clone().transpose().unsqueeze_dim::<3>(0)),
                    th.matmul(tw.transpose().unsqueeze_dim::<3>(0)),
                    mask.clone().autodiff(),
                ),
            };
            let value = out.loss.clone().into_scalar::<f64>();
            let grads = out.loss.backward();
            let (dh, dw) = (sh.grad(&grads).unwrap(), sw.grad(&grads).unwrap());
            let _ = dh.slice([0..1, 0..1, 0..1]).into_scalar::<f32>()
                + dw.slice([0..1, 0..1]).into_scalar::<f32>();
            device.sync().unwrap();
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let extra = alloc::peak()
                .saturating_sub(before)
                .saturating_sub(grads_bytes);
            println!(
                "{variant:<14} {ms:>10.1} {:>16.1} {value:>10.6}",
                extra as f64 / 1e6
            );
        }
    }
}
