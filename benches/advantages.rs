//! GAE at B = 64, T = 1024 on the CPU (flex): the blocked Toeplitz scan (`Gae::forward`, mask
//! ignored like torchtune, and mask-aware with whitening like TRL) against a host loop over T
//! on the same tensors (the torchtune `estimate_advantages` algorithm, one tensor op chain per
//! time step), which is what a port of the Python loop costs in burn.

use std::hint::black_box;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_rlhf::rl::{GaeConfig, discounted_reverse_cumsum};
use criterion::{Criterion, criterion_group, criterion_main};

const B: usize = 64;
const T: usize = 1024;

fn inputs(device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<2, Bool>) {
    let mut s = 0x2545_F491u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % 10_000) as f32 / 5_000.0 - 1.0
    };
    let rewards: Vec<f32> = (0..B * T).map(|_| next()).collect();
    let values: Vec<f32> = (0..B * T).map(|_| next()).collect();
    // Right padding: row b has 512 + 8b valid tokens.
    let lens: Vec<i64> = (0..B as i64).map(|b| 512 + 8 * b).collect();
    let r = Tensor::<2>::from_data(TensorData::new(rewards, [B, T]), device);
    let v = Tensor::<2>::from_data(TensorData::new(values, [B, T]), device);
    let pos = Tensor::<1, Int>::arange(0..T as i64, device)
        .reshape([1, T])
        .expand([B, T]);
    let len = Tensor::<2, Int>::from_data(TensorData::new(lens, [B, 1]), device).expand([B, T]);
    (r, v, pos.lower(len))
}

/// torchtune's loop, literally: for t in reversed(range(T)): delta_t, lastgaelam.
fn gae_host_loop(rewards: &Tensor<2>, values: &Tensor<2>, gamma: f64, lam: f64) -> Tensor<2> {
    let mut last: Option<Tensor<2>> = None;
    let mut out = Vec::with_capacity(T);
    for t in (0..T).rev() {
        let next = if t + 1 < T {
            values.clone().slice([0..B, t + 1..t + 2])
        } else {
            values.clone().slice([0..B, 0..1]).zeros_like()
        };
        let delta = rewards.clone().slice([0..B, t..t + 1]) + next.mul_scalar(gamma)
            - values.clone().slice([0..B, t..t + 1]);
        let cur = match last {
            Some(l) => delta + l.mul_scalar(gamma * lam),
            None => delta,
        };
        out.push(cur.clone());
        last = Some(cur);
    }
    out.reverse();
    Tensor::cat(out, 1)
}

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let (r, v, m) = inputs(&device);
    let torchtune = GaeConfig::torchtune(1.0, 0.95).init();
    let trl = GaeConfig::new().init();
    let mut group = c.benchmark_group("gae_b64_t1024");
    group.sample_size(20);
    group.bench_function("scan_torchtune_semantics", |bench| {
        bench.iter(|| {
            let out = torchtune.forward(r.clone(), v.clone(), Some(m.clone()));
            black_box(out.advantages.into_data());
        })
    });
    group.bench_function("scan_trl_semantics", |bench| {
        bench.iter(|| {
            let out = trl.forward(r.clone(), v.clone(), Some(m.clone()));
            black_box(out.advantages.into_data());
        })
    });
    group.bench_function("reverse_cumsum_only", |bench| {
        bench.iter(|| black_box(discounted_reverse_cumsum(r.clone(), 0.95).into_data()))
    });
    group.bench_function("host_loop_over_t", |bench| {
        bench.iter(|| black_box(gae_host_loop(&r, &v, 1.0, 0.95).into_data()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
