//! Two data-parallel peers running concurrently vs one device on the whole batch (issue 18),
//! f32 on flex.
//!
//! Each peer is a thread with its own shard of the batch (shards of unequal size) and a
//! [`ThreadReducer`] (the in-process all-reduce). The cases (DPO, KTO with the global KL, BCO,
//! GRPO with the batch std, PPO with whitening) are shared with the MPI ranks of `tests/mpi`:
//! see `tests/common/dp_cases.rs`. Expected: the gradient of the whole-batch loss computed in
//! one piece with the crate's default (TRL) normalization, to 1e-5 relative to the largest
//! component. Nothing is hard-coded: the expected values come from the whole-batch run.
//!
//! burn 0.22's own collective (`all_reduce`) runs only on CUDA (see `burn_rlhf::distributed`);
//! [`burn_collective_where_available`] runs the DPO case through [`CollectiveReducer`] on two
//! CUDA devices when the test is built with `--features cuda` and `BURN_RLHF_CUDA_PEERS=2`,
//! and prints why it is skipped everywhere else.

use std::ops::Range;
use std::time::Duration;

use burn::tensor::Device;
#[cfg(feature = "cuda")]
use burn::tensor::Tensor;
use burn_rlhf::Error;
#[cfg(feature = "cuda")]
use burn_rlhf::distributed::StepCounts;
use burn_rlhf::distributed::{
    CollectiveReducer, KlParts, MomentParts, Parts, Reducer, SharedReducer, StepCounts as Counts,
    ThreadReducer,
};

use crate::dp_cases::{self, Data, Peers, Step};

/// Peers as threads of this process, one per shard, sharing a [`ThreadReducer`].
struct Threads(Vec<Range<usize>>);

impl Peers for Threads {
    fn run(&self, d: &Data, step: &Step<'_>) -> (Vec<f64>, u64) {
        let reducer = ThreadReducer::new(self.0.len())
            .unwrap()
            .with_timeout(Duration::from_secs(60));
        let results: Vec<Vec<f64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .0
                .iter()
                .map(|shard| {
                    let shared = SharedReducer::new(reducer.clone());
                    let (float, device) = (dp_cases::FLOAT.get(), dp_cases::dev());
                    scope.spawn(move || {
                        dp_cases::FLOAT.set(float);
                        dp_cases::DEVICE.with(|d| *d.borrow_mut() = device);
                        let w = d.param();
                        let loss = step(&shared, &w, shard);
                        let local = dp_cases::host(w.grad(&loss.backward()).unwrap());
                        shared.sum(&local).unwrap()
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
}

fn two_threads() -> Threads {
    Threads(dp_cases::shards(2))
}

#[test]
fn dpo_two_peers_equal_one_device() {
    dp_cases::dpo(&two_threads());
}

/// KTO with the global KL estimate: counts and [`KlParts`] packed in one reduction.
#[test]
fn kto_two_peers_with_global_kl_equal_one_device() {
    dp_cases::kto(&two_threads());
}

/// BCO: the running reward mean updated with the step's global moments (packed with the
/// counts), then every shard with `train = false`.
#[test]
fn bco_two_peers_with_global_running_mean_equal_one_device() {
    dp_cases::bco(&two_threads());
}

/// GRPO with batch-scaled advantages (`scale_rewards = batch`: the batch std couples the
/// ranks) and the `grpo` aggregation (mean over sequences): the reward moments and the
/// counts in one reduction; groups of 4 stay on one peer.
#[test]
fn grpo_two_peers_with_batch_std_equal_one_device() {
    dp_cases::grpo(&two_threads());
}

/// PPO with whitened advantages (torchtune's masked whitening of the whole batch) and the
/// token-mean loss: the advantage moments and the token count in one reduction.
#[test]
fn ppo_two_peers_with_whitening_equal_one_device() {
    dp_cases::ppo(&two_threads());
}

/// Three peers (shards of 4, 8 and 12) in f64: the same cases at 1e-6.
#[test]
fn three_peers_in_f64_equal_one_device() {
    let threads = Threads(dp_cases::shards(3));
    let run = |case: fn(&dyn Peers)| {
        std::thread::scope(|s| {
            s.spawn(|| {
                dp_cases::FLOAT.set(burn::tensor::DType::F64);
                case(&threads)
            })
            .join()
            .unwrap()
        })
    };
    for case in [
        dp_cases::dpo,
        dp_cases::kto,
        dp_cases::bco,
        dp_cases::grpo,
        dp_cases::ppo,
    ] {
        run(case);
    }
}

/// The packing of several parts into one reduction round-trips, and a packed reduction across
/// concurrent peers equals the part-by-part sums.
#[test]
fn packed_parts_round_trip_across_peers() {
    type Packed = (Counts, KlParts, MomentParts);
    let local = |rank: usize| -> Packed {
        let k = rank as f64 + 1.0;
        (
            Counts {
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
        Counts {
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
        .with_timeout(Duration::from_millis(50))
        .with_first_round_timeout(Some(Duration::from_millis(50)));
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

/// The first round waits out a slow rank (JIT and autotuning on CubeCL devices) far beyond the
/// per-round timeout; a later round does not.
#[test]
fn thread_reducer_first_round_has_its_own_timeout() {
    let reducer = ThreadReducer::new(2)
        .unwrap()
        .with_timeout(Duration::from_millis(50));
    let late = reducer.clone();
    let slow = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        late.sum(&[2.0])
    });
    assert_eq!(
        reducer.sum(&[1.0]).unwrap(),
        vec![3.0],
        "first round, 400 ms late rank"
    );
    assert_eq!(slow.join().unwrap().unwrap(), vec![3.0]);
    // Second round: the 50 ms timeout applies.
    let err = reducer.sum(&[1.0]).unwrap_err();
    assert!(
        matches!(&err, Error::Collective { reason, .. } if reason.contains("1 of 2 ranks arrived within 50ms")),
        "{err}"
    );
}

/// A rank that fails calls `abort` instead of the reduction: the waiting rank returns that
/// rank's error at once (not after the timeout), and later calls see the broken group.
#[test]
fn thread_reducer_abort_fails_the_waiting_ranks_fast() {
    let reducer = ThreadReducer::new(3).unwrap();
    let started = std::time::Instant::now();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let r = reducer.clone();
            std::thread::spawn(move || (r.sum(&[1.0]), std::time::Instant::now()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    reducer.abort("shape mismatch: `rejected_ids` expected [4, T] (as chosen_ids), got [3, 7]");
    for h in waiting {
        let (result, at) = h.join().unwrap();
        let waited = at.duration_since(started);
        assert!(waited < Duration::from_secs(1), "waited {waited:?}");
        assert!(
            matches!(&result, Err(Error::Collective { reason, .. })
                if reason.contains("a rank failed") && reason.contains("got [3, 7]")),
            "{result:?}"
        );
    }
    assert!(matches!(
        reducer.sum(&[1.0]).unwrap_err(),
        Error::Collective { reason, .. } if reason.contains("broken") && reason.contains("got [3, 7]")
    ));
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
    use crate::dp_cases::{B, DEVICE, assert_close, dpo_batch, dpo_data, host, whole};
    use burn::tensor::distributed::{DistributedConfig, DistributedContext, ReduceOperation};
    use burn_rlhf::losses::DpoLossConfig;

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
        let d = dpo_data();
        let batch = |w: &Tensor<1>, r: &Range<usize>| dpo_batch(&d, w, r);
        let config = DpoLossConfig::new();
        let want = whole(&d, |w| config.init().forward(&batch(w, &(0..B))).loss);
        let shards = dp_cases::shards(2);
        let grads: Vec<Vec<f64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = shards
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
