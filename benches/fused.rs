//! criterion: fused LM-head log-probs fwd+bwd on flex at N=2048, H=1024, V=32000 (f32): the
//! fused op (`[V, H]` weight, and a burn `Linear` head `[H, V]`), the fused op with half the
//! rows ignored (the first 256 of every 512-token sequence: prompt tokens), materialized
//! logits + lean gather, and the bare GEMMs. The memory table is
//! printed by `cargo run --release --example fused_bench`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_rlhf::logps::FusedLogpsConfig;
use burn_rlhf::logps::{LabelAlignment, TokenLogpsConfig};
use criterion::{Criterion, criterion_group, criterion_main};

fn fused(c: &mut Criterion) {
    let (n, h, v) = (2048, 1024, 32000);
    let device = Device::flex();
    device.seed(0);
    let hidden = Tensor::<2>::random([n, h], Distribution::Normal(0.0, 1.0), &device);
    let weight = Tensor::<2>::random([v, h], Distribution::Normal(0.0, 0.03), &device);
    let targets = Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, v as f64), &device);
    let mut group = c.benchmark_group("fused_lm_head_fwd_bwd_N2048_H1024_V32000");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .warm_up_time(Duration::from_secs(3));
    fn timed(device: &Device, f: &dyn Fn(), iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        device.sync().unwrap();
        start.elapsed()
    }
    let fused_op = FusedLogpsConfig::new().with_check_targets(false).init();
    let run_fused = || {
        let (hh, ww) = (
            hidden.clone().autodiff().require_grad(),
            weight.clone().autodiff().require_grad(),
        );
        let grads = fused_op
            .forward(hh.clone(), ww.clone(), None, targets.clone())
            .logps
            .sum()
            .backward();
        black_box((hh.grad(&grads), ww.grad(&grads)));
    };
    group.bench_function("fused", |b| {
        b.iter_custom(|iters| timed(&device, &run_fused, iters))
    });
    // Half the rows ignored: the first 256 of every 512 (prompt tokens, label -100).
    let prompt = Tensor::<1, burn::tensor::Bool>::from_data(
        burn::tensor::TensorData::new((0..n).map(|i| i % 512 < 256).collect::<Vec<_>>(), [n]),
        &device,
    );
    let half_ignored = targets.clone().mask_fill(prompt, -100);
    let run_fused_half = || {
        let (hh, ww) = (
            hidden.clone().autodiff().require_grad(),
            weight.clone().autodiff().require_grad(),
        );
        let grads = fused_op
            .forward(hh.clone(), ww.clone(), None, half_ignored.clone())
            .logps
            .sum()
            .backward();
        black_box((hh.grad(&grads), ww.grad(&grads)));
    };
    group.bench_function("fused_half_rows_ignored", |b| {
        b.iter_custom(|iters| timed(&device, &run_fused_half, iters))
    });
    let weight_hv = Tensor::<2>::random([h, v], Distribution::Normal(0.0, 0.03), &device);
    let run_fused_linear = || {
        let hh = hidden.clone().autodiff().require_grad();
        let linear = Linear {
            weight: Param::from_tensor(weight_hv.clone().autodiff()),
            bias: None,
        };
        let grads = fused_op
            .forward_head(hh.clone(), &linear, targets.clone())
            .logps
            .sum()
            .backward();
        black_box((hh.grad(&grads), linear.weight.val().grad(&grads)));
    };
    group.bench_function("fused_linear_head", |b| {
        b.iter_custom(|iters| timed(&device, &run_fused_linear, iters))
    });
    let gather = TokenLogpsConfig::new(LabelAlignment::Aligned)
        .with_check_labels(false)
        .init();
    let run_materialized = || {
        let (hh, ww) = (
            hidden.clone().autodiff().require_grad(),
            weight.clone().autodiff().require_grad(),
        );
        let logits = hh
            .clone()
            .matmul(ww.clone().transpose())
            .unsqueeze_dim::<3>(0);
        let grads = gather
            .forward(logits, targets.clone().unsqueeze_dim::<2>(0))
            .logps
            .sum()
            .backward();
        black_box((hh.grad(&grads), ww.grad(&grads)));
    };
    group.bench_function("materialized_lean_gather", |b| {
        b.iter_custom(|iters| timed(&device, &run_materialized, iters))
    });
    let run_gemms = || {
        let logits = hidden.clone().matmul(weight.clone().transpose());
        let dh = logits.clone().matmul(weight.clone());
        let dw = logits.transpose().matmul(hidden.clone());
        let again = hidden.clone().matmul(weight.clone().transpose());
        black_box((dh, dw, again));
    };
    group.bench_function("bare_gemms", |b| {
        b.iter_custom(|iters| timed(&device, &run_gemms, iters))
    });
    group.finish();
}

criterion_group!(benches, fused);
criterion_main!(benches);
