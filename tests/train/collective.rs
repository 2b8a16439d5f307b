//! Two data-parallel peers running concurrently vs one device on the whole batch (issue 18),
//! f32 on flex.
//!
//! Each peer is a thread with its own copy of a tiny shared "policy" (per-token log-probs
//! `x @ w - 1`, one parameter vector `w`) and its own shard of the batch (shards of unequal
//! size). Per step, a peer packs its local counts and batch-coupled statistics into **one**
//! reduction through a [`ThreadReducer`] (the in-process all-reduce), computes its shard's
//! loss normalized by the global counts, and all-reduces its gradient (a second reduction,
//! as DDP all-reduces gradients). Expected: the gradient of the whole-batch loss computed in
//! one piece with the crate's default (TRL) normalization, to 1e-5 relative to the largest
//! component. Nothing is hard-coded: the expected values come from the whole-batch run.
//!
//! burn 0.22's own collective (`all_reduce`) runs only on CUDA (see `burn_rlhf::distributed`);
//! [`burn_collective_where_available`] runs the DPO case through [`CollectiveReducer`] on two
//! CUDA devices when the test is built with `--features cuda` and `BURN_RLHF_CUDA_PEERS=2`,
//! and prints why it is skipped everywhere else.

use crate::common;

use std::ops::Range;
use std::time::Duration;

use burn::tensor::{Bool, Device, Tensor, TensorData};
use burn_rlhf::Error;
use burn_rlhf::distributed::{
    CollectiveReducer, KlParts, MomentParts, Parts, Reducer, StepCounts, ThreadReducer,
};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::{
    BcoLossConfig, DpoLossConfig, KtoLossConfig, PreferenceBatch, RunningMoments, UnpairedBatch,
    kto_kl_estimate,
};
use burn_rlhf::rl::{
    GroupAdvantageConfig, GrpoLossConfig, GrpoLossInput, GrpoLossType, PpoLossConfig, PpoLossInput,
    ScaleRewards, Whitening, whiten, whiten_with,
};
use common::Rng;

const B: usize = 24;
const T: usize = 5;
const F: usize = 3;
const TOL: f64 = 1e-5;
/// Two peers with unequal shards (multiples of the GRPO group size 4).
const SHARDS: [Range<usize>; 2] = [0..8, 8..24];

thread_local! {
    /// The device tensors are created on: flex (autodiff) unless a peer thread sets its own.
    static DEVICE: std::cell::RefCell<Device> = std::cell::RefCell::new(Device::flex().autodiff());
}

fn dev() -> Device {
    DEVICE.with(|d| d.borrow().clone())
}

fn t1(values: Vec<f32>) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), &dev())
}

fn t2(values: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), &dev())
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

/// Deterministic values in `[-scale/2, scale/2)` from the tests' one seeded generator.
fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| rng.range(-0.5, 0.5) as f32 * scale)
        .collect()
}

/// The fixed data of a test: features of two completion sets with ragged masks, reference
/// log-probs, rewards, token advantages, old log-prob offsets.
struct Data {
    w: Vec<f32>,
    xa: Vec<f32>,
    xb: Vec<f32>,
    mask_a: Vec<bool>,
    mask_b: Vec<bool>,
    ref_a: Vec<f32>,
    ref_b: Vec<f32>,
    rewards: Vec<f32>,
    adv_tok: Vec<f32>,
    old_shift: Vec<f32>,
    desirable: Vec<bool>,
}

fn data(seed: u64) -> Data {
    let mask = |k: usize, c: usize| -> Vec<bool> {
        (0..B)
            .flat_map(|i| (0..T).map(move |t| t < 1 + (i * k + c) % T))
            .collect()
    };
    let shift = |v: Vec<f32>| v.into_iter().map(|x| x - 4.0).collect();
    Data {
        w: values(seed, F, 1.0),
        xa: values(seed + 1, B * T * F, 1.0),
        xb: values(seed + 2, B * T * F, 1.0),
        mask_a: mask(7, 3),
        mask_b: mask(5, 1),
        ref_a: shift(values(seed + 3, B, 2.0)),
        ref_b: shift(values(seed + 4, B, 2.0)),
        rewards: values(seed + 5, B, 4.0),
        adv_tok: values(seed + 6, B * T, 3.0),
        old_shift: values(seed + 7, B * T, 0.6),
        desirable: (0..B).map(|i| i % 3 != 1).collect(),
    }
}

impl Data {
    fn param(&self) -> Tensor<1> {
        t1(self.w.clone()).require_grad()
    }
    fn logp(&self, w: &Tensor<1>, r: &Range<usize>, set_a: bool) -> Tensor<2> {
        let x = if set_a { &self.xa } else { &self.xb };
        let xs = t2(x[r.start * T * F..r.end * T * F].to_vec(), [r.len() * T, F]);
        xs.matmul(w.clone().reshape([F, 1]))
            .reshape([r.len(), T])
            .sub_scalar(1.0)
    }
    fn mask(&self, r: &Range<usize>, set_a: bool) -> Tensor<2, Bool> {
        let m = if set_a { &self.mask_a } else { &self.mask_b };
        Tensor::from_data(
            TensorData::new(m[r.start * T..r.end * T].to_vec(), [r.len(), T]),
            &dev(),
        )
    }
    fn gathered(&self, w: &Tensor<1>, r: &Range<usize>, set_a: bool) -> GatheredLogps {
        GatheredLogps {
            logps: self.logp(w, r, set_a),
            mask: self.mask(r, set_a),
        }
    }
    fn seq(&self, v: &[f32], r: &Range<usize>) -> Tensor<1> {
        t1(v[r.clone()].to_vec())
    }
    fn tok(&self, v: &[f32], r: &Range<usize>) -> Tensor<2> {
        t2(v[r.start * T..r.end * T].to_vec(), [r.len(), T])
    }
    fn desirable(&self, r: &Range<usize>) -> Tensor<1, Bool> {
        Tensor::from_data(
            TensorData::new(self.desirable[r.clone()].to_vec(), [r.len()]),
            &dev(),
        )
    }
}

/// d loss / d w of the whole batch in one piece.
fn whole(d: &Data, loss: impl Fn(&Tensor<1>) -> Tensor<1>) -> Vec<f64> {
    let w = d.param();
    let grads = loss(&w).backward();
    host(w.grad(&grads).unwrap())
}

/// Runs one step on two concurrent peers. `step(reducer, w, shard)` reduces the step's parts
/// (one call) and returns the shard's loss; each peer then all-reduces its gradient. Returns
/// the summed gradient (the same on every peer: checked) and the number of reductions.
fn peers(
    d: &Data,
    step: impl Fn(&ThreadReducer, &Tensor<1>, &Range<usize>) -> Tensor<1> + Sync,
) -> (Vec<f64>, u64) {
    let reducer = ThreadReducer::new(SHARDS.len())
        .unwrap()
        .with_timeout(Duration::from_secs(60));
    let results: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = SHARDS
            .iter()
            .map(|shard| {
                let reducer = reducer.clone();
                let step = &step;
                scope.spawn(move || {
                    let w = d.param();
                    let loss = step(&reducer, &w, shard);
                    let local = host(w.grad(&loss.backward()).unwrap());
                    reducer.sum(&local).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        results.iter().all(|g| g == &results[0]),
        "every peer receives the same gradient: {results:?}"
    );
    (results[0].clone(), reducer.calls())
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-6, "{what}: degenerate zero gradient");
    let diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    assert!(
        diff <= TOL * scale,
        "{what}: peers {got:?} vs one device {want:?} (max diff {diff:e}, scale {scale:e})"
    );
}

fn assert_one_reduction_per_step(calls: u64, what: &str) {
    assert_eq!(
        calls, 2,
        "{what}: one reduction for the step's parts + one for the gradients"
    );
}

#[test]
fn dpo_two_peers_equal_one_device() {
    let d = data(11);
    let batch = |w: &Tensor<1>, r: &Range<usize>| {
        PreferenceBatch::from_tokens(d.gathered(w, r, true), d.gathered(w, r, false))
            .with_ref_logps(d.seq(&d.ref_a, r), d.seq(&d.ref_b, r))
    };
    let config = DpoLossConfig::new();
    let want = whole(&d, |w| config.init().forward(&batch(w, &(0..B))).loss);
    let (got, calls) = peers(&d, |reducer, w, r| {
        let counts = reducer.reduce(&StepCounts::from_pairs(r.len())).unwrap();
        assert_eq!(counts.pairs, B as f64);
        let loss = config
            .clone()
            .with_normalizer(counts.pair_normalizer().unwrap())
            .init();
        loss.forward(&batch(w, r)).loss
    });
    assert_close(&got, &want, "dpo");
    assert_one_reduction_per_step(calls, "dpo");
    // Each peer's own mean (no global count) sums to a different gradient: the test can fail.
    let (local, _) = peers(&d, |reducer, w, r| {
        reducer.reduce(&StepCounts::from_pairs(r.len())).unwrap();
        config.init().forward(&batch(w, r)).loss
    });
    let diff = local
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    assert!(diff > 1e-3, "local means should differ ({diff:e})");
}

/// KTO with the global KL estimate: counts and [`KlParts`] packed in one reduction.
#[test]
fn kto_two_peers_with_global_kl_equal_one_device() {
    let d = data(23);
    let kl_logps = |r: &Range<usize>| d.gathered(&d.param(), r, false).sum().detach();
    let kl_ref = |r: &Range<usize>| d.seq(&d.ref_b, r).sub_scalar(1.5);
    let batch = |w: &Tensor<1>, r: &Range<usize>, kl: Tensor<1>| {
        UnpairedBatch::new(
            d.gathered(w, r, true).sum(),
            d.seq(&d.ref_a, r),
            d.desirable(r),
        )
        .with_kl(kl)
    };
    let whole_kl = kto_kl_estimate(kl_logps(&(0..B)), kl_ref(&(0..B)));
    assert!(
        host(whole_kl.clone())[0] > 0.0,
        "the KL must not clamp at 0"
    );
    let config = KtoLossConfig::new().with_desirable_weight(1.3);
    let want = whole(&d, |w| {
        config
            .init()
            .forward(&batch(w, &(0..B), whole_kl.clone()))
            .loss
    });
    let (got, calls) = peers(&d, |reducer, w, r| {
        let local = (
            StepCounts::from_sequences(r.len()),
            KlParts::from_logps(kl_logps(r), kl_ref(r)).unwrap(),
        );
        let (counts, kl) = reducer.reduce(&local).unwrap();
        let kl = kl.finish(&d.seq(&d.ref_a, r)).unwrap();
        let loss = config
            .clone()
            .with_normalizer(counts.sequence_normalizer().unwrap())
            .init();
        loss.forward(&batch(w, r, kl)).loss
    });
    assert_close(&got, &want, "kto");
    assert_one_reduction_per_step(calls, "kto");
}

/// BCO: the running reward mean updated with the step's global moments (packed with the
/// counts), then every shard with `train = false`.
#[test]
fn bco_two_peers_with_global_running_mean_equal_one_device() {
    let d = data(37);
    let beta = 0.5;
    let batch = |w: &Tensor<1>, r: &Range<usize>| {
        UnpairedBatch::new(
            d.gathered(w, r, true).sum(),
            d.seq(&d.ref_a, r),
            d.desirable(r),
        )
    };
    let start = RunningMoments {
        mean: 0.3,
        std: 1.2,
        var: 1.44,
        count: 40.0,
    };
    let config = BcoLossConfig::new().with_beta(beta);
    let want = whole(&d, |w| {
        config
            .init()
            .forward(&batch(w, &(0..B)), &mut start.clone(), true)
            .loss
    });
    let (got, calls) = peers(&d, |reducer, w, r| {
        let local = (
            StepCounts::from_sequences(r.len()),
            MomentParts::from_values(batch(w, r).rewards(beta)),
        );
        let (counts, moments) = reducer.reduce(&local).unwrap();
        let mut running = start;
        moments.update_running(&mut running);
        let loss = config
            .clone()
            .with_normalizer(counts.sequence_normalizer().unwrap())
            .init();
        loss.forward(&batch(w, r), &mut running, false).loss
    });
    assert_close(&got, &want, "bco");
    assert_one_reduction_per_step(calls, "bco");
}

/// GRPO with batch-scaled advantages (`scale_rewards = batch`: the batch std couples the
/// ranks) and the `grpo` aggregation (mean over sequences): the reward moments and the
/// counts in one reduction; groups of 4 stay on one peer.
#[test]
fn grpo_two_peers_with_batch_std_equal_one_device() {
    let d = data(43);
    let advantages = GroupAdvantageConfig::new()
        .with_num_generations(4)
        .with_scale_rewards(ScaleRewards::Batch);
    let rewards = |r: &Range<usize>| t2(d.rewards[r.clone()].to_vec(), [r.len(), 1]);
    let input = |w: &Tensor<1>, r: &Range<usize>, adv: Tensor<1>| {
        let logp = d.logp(w, r, true);
        let old = logp.clone().detach() + d.tok(&d.old_shift, r);
        GrpoLossInput::new(logp, d.mask(r, true), adv).with_old_logps(old)
    };
    let config = GrpoLossConfig::new().with_loss_type(GrpoLossType::Grpo);
    let want = whole(&d, |w| {
        let adv = advantages.forward(rewards(&(0..B))).advantages;
        config.init().forward(input(w, &(0..B), adv)).loss
    });
    let (got, calls) = peers(&d, |reducer, w, r| {
        let local = (
            StepCounts::from_sequences(r.len()),
            advantages.batch_reward_parts(rewards(r)).unwrap(),
        );
        let (counts, moments) = reducer.reduce(&local).unwrap();
        let adv = advantages
            .try_forward_with_batch_stats(rewards(r), &moments)
            .unwrap()
            .advantages;
        let loss = config
            .clone()
            .with_normalizer(Some(counts.sequence_normalizer().unwrap()))
            .init();
        loss.forward(input(w, r, adv)).loss
    });
    assert_close(&got, &want, "grpo batch std");
    assert_one_reduction_per_step(calls, "grpo");
}

/// PPO with whitened advantages (torchtune's masked whitening of the whole batch) and the
/// token-mean loss: the advantage moments and the token count in one reduction.
#[test]
fn ppo_two_peers_with_whitening_equal_one_device() {
    let d = data(47);
    let input = |w: &Tensor<1>, r: &Range<usize>, adv: Tensor<2>| {
        let logp = d.logp(w, r, true);
        let old = logp.clone().detach() + d.tok(&d.old_shift, r);
        PpoLossInput::new(logp, old, adv).with_mask(d.mask(r, true))
    };
    let raw = |r: &Range<usize>| d.tok(&d.adv_tok, r).add_scalar(0.7);
    let config = PpoLossConfig::new();
    let want = whole(&d, |w| {
        let all = 0..B;
        let adv = whiten(raw(&all), Some(d.mask(&all, true)), Whitening::ZeroMean);
        config.init().forward(input(w, &all, adv)).loss
    });
    let (got, calls) = peers(&d, |reducer, w, r| {
        let local = (
            StepCounts::from_token_masks(&[d.mask(r, true)]),
            MomentParts::from_masked(raw(r), d.mask(r, true)).unwrap(),
        );
        let (counts, moments) = reducer.reduce(&local).unwrap();
        let adv = whiten_with(
            raw(r),
            moments.mean(),
            moments.var_unbiased(),
            Whitening::ZeroMean,
        );
        let loss = config
            .init()
            .with_normalizer(counts.token_normalizer().unwrap());
        loss.forward(input(w, r, adv)).loss
    });
    assert_close(&got, &want, "ppo whitening");
    assert_one_reduction_per_step(calls, "ppo");
}

/// The packing of several parts into one reduction round-trips, and a packed reduction across
/// concurrent peers equals the part-by-part sums.
#[test]
fn packed_parts_round_trip_across_peers() {
    type Packed = (StepCounts, KlParts, MomentParts);
    let local = |rank: usize| -> Packed {
        let k = rank as f64 + 1.0;
        (
            StepCounts {
                tokens: 10.0 * k,
                sequences: 2.0 * k,
                pairs: k,
            },
            KlParts {
                sum: 0.25 * k,
                count: 3.0 * k,
            },
            MomentParts {
                sum: -1.5 * k,
                sum_sq: 4.0 * k,
                count: 5.0 * k,
            },
        )
    };
    let packed = local(1);
    let values = packed.to_values();
    assert_eq!(values.len(), Packed::LEN);
    assert_eq!(Packed::from_values(&values), packed);

    let world = 3;
    let reducer = ThreadReducer::new(world).unwrap();
    let reduced: Vec<Packed> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let reducer = reducer.clone();
                scope.spawn(move || reducer.reduce(&local(rank)).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // 1 + 2 + 3 = 6 times the unit values, on every peer, in one reduction.
    let want = (
        StepCounts {
            tokens: 60.0,
            sequences: 12.0,
            pairs: 6.0,
        },
        KlParts {
            sum: 1.5,
            count: 18.0,
        },
        MomentParts {
            sum: -9.0,
            sum_sq: 24.0,
            count: 30.0,
        },
    );
    assert!(reduced.iter().all(|r| *r == want), "{reduced:?}");
    assert_eq!(reducer.calls(), 1);
}

/// A peer that never arrives makes the round fail on the waiting peer with a typed error
/// (no hang), and the group stays broken; values of different lengths are rejected.
#[test]
fn thread_reducer_failures_are_typed() {
    let reducer = ThreadReducer::new(2)
        .unwrap()
        .with_timeout(Duration::from_millis(50));
    let err = reducer.sum(&[1.0]).unwrap_err();
    assert!(
        matches!(&err, Error::Collective { op: "sum", world_size: 2, reason } if reason.contains("1 of 2 ranks")),
        "{err}"
    );
    assert!(matches!(
        reducer.sum(&[1.0]).unwrap_err(),
        Error::Collective { reason, .. } if reason.contains("broken")
    ));

    let reducer = ThreadReducer::new(2).unwrap();
    let results: Vec<_> = std::thread::scope(|scope| {
        let a = reducer.clone();
        let b = reducer.clone();
        let ha = scope.spawn(move || a.sum(&[1.0, 2.0]));
        let hb = scope.spawn(move || b.sum(&[1.0]));
        vec![ha.join().unwrap(), hb.join().unwrap()]
    });
    for r in results {
        assert!(
            matches!(&r, Err(Error::Collective { reason, .. }) if reason.contains("different lengths")),
            "{r:?}"
        );
    }
    assert!(ThreadReducer::new(0).is_err());
}

/// burn's collective `all_reduce` as the reducer: on two CUDA devices (feature `cuda`,
/// `BURN_RLHF_CUDA_PEERS=2`) the DPO case runs through [`CollectiveReducer`]; elsewhere the
/// reducer refuses the device with a typed error and the test prints why it is skipped.
#[test]
fn burn_collective_where_available() {
    let flex = Device::flex();
    let refused = CollectiveReducer::new(flex.clone(), vec![flex.clone(), flex])
        .unwrap()
        .sum(&[1.0])
        .unwrap_err();
    assert!(
        matches!(&refused, Error::Device { reason, .. } if reason.contains("only on CUDA")),
        "{refused}"
    );
    #[cfg(feature = "cuda")]
    if std::env::var("BURN_RLHF_CUDA_PEERS").as_deref() == Ok("2") {
        cuda::dpo_over_burn_collective();
        return;
    }
    println!(
        "skipped: burn 0.22 runs its collective all_reduce only on CUDA devices (cubecl-cuda's \
         NCCL transport; burn-dispatch refuses Flex/NdArray and cubecl's wgpu/CPU runtimes have \
         no device transport). Run with --features cuda and BURN_RLHF_CUDA_PEERS=2 on a machine \
         with two CUDA GPUs. Refused here with: {refused}"
    );
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use burn::tensor::distributed::{DistributedConfig, DistributedContext, ReduceOperation};

    /// The DPO case with one thread per CUDA device and burn's collective for the counts and
    /// the gradients.
    pub fn dpo_over_burn_collective() {
        let devices = vec![Device::cuda(0), Device::cuda(1)];
        let _context = DistributedContext::init(
            devices.clone(),
            DistributedConfig {
                all_reduce_op: ReduceOperation::Sum,
            },
        );
        let d = data(11);
        let batch = |w: &Tensor<1>, r: &Range<usize>| {
            PreferenceBatch::from_tokens(d.gathered(w, r, true), d.gathered(w, r, false))
                .with_ref_logps(d.seq(&d.ref_a, r), d.seq(&d.ref_b, r))
        };
        let config = DpoLossConfig::new();
        let want = whole(&d, |w| config.init().forward(&batch(w, &(0..B))).loss);
        let grads: Vec<Vec<f64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = SHARDS
                .iter()
                .zip(&devices)
                .map(|(r, device)| {
                    let devices = devices.clone();
                    let config = config.clone();
                    let batch = &batch;
                    let d = &d;
                    scope.spawn(move || {
                        DEVICE.with(|d| *d.borrow_mut() = device.clone().autodiff());
                        let reducer = CollectiveReducer::new(device.clone(), devices).unwrap();
                        let counts = reducer.reduce(&StepCounts::from_pairs(r.len())).unwrap();
                        let loss = config
                            .with_normalizer(counts.pair_normalizer().unwrap())
                            .init();
                        let w = d.param();
                        let l = loss.forward(&batch(&w, r)).loss;
                        let local = host(w.grad(&l.backward()).unwrap());
                        reducer.sum(&local).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for g in &grads {
            assert_close(g, &want, "dpo over burn's collective (CUDA)");
        }
        println!("burn collective (CUDA x2): DPO gradients match one device");
    }
}
