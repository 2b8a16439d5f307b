//! criterion: token log-probs forward + backward on flex, lean op vs `log_softmax + gather`,
//! at B=4, T=512, V=32000 (the shape). Peak memory is printed by
//! `cargo run --release --example logps_bench` (same shape, same variants).

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_rlhf::logps::LogpsImplementation;
use burn_rlhf::logps::{LabelAlignment, TokenLogpsConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn fwd_bwd(c: &mut Criterion) {
    let (b, t, v) = (4, 512, 32000);
    let device = Device::flex();
    device.seed(0);
    let base = Tensor::<3>::random([b, t, v], Distribution::Normal(0.0, 2.0), &device);
    let labels = Tensor::<2, Int>::random([b, t], Distribution::Uniform(0.0, v as f64), &device);
    let mut group = c.benchmark_group("token_logps_fwd_bwd_B4_T512_V32000");
    group.throughput(Throughput::Bytes((b * t * v * 4) as u64));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    for (name, implementation) in [
        ("lean", LogpsImplementation::Auto),
        ("naive", LogpsImplementation::Reference),
    ] {
        let op = TokenLogpsConfig::new(LabelAlignment::CausalShift)
            .with_check_labels(false)
            .with_implementation(implementation)
            .init();
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let logits = base.clone().autodiff().require_grad();
                    let out = op.forward(logits.clone(), labels.clone());
                    let grads = out.logps.sum().backward();
                    black_box(logits.grad(&grads).unwrap());
                    device.sync().unwrap();
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fwd_bwd);
criterion_main!(benches);
