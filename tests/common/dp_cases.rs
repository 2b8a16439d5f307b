//! The data-parallel cases shared by the in-process peers (`tests/train/collective.rs`, a
//! [`ThreadReducer`](burn_rlhf::distributed::ThreadReducer) between threads) and the MPI ranks
//! (`tests/mpi`, an [`MpiReducer`](burn_rlhf::distributed) between processes).
//!
//! Each case computes the gradient of one loss on the whole batch in one piece (the crate's
//! default, TRL's normalization), then runs one step on the peers: every peer packs its
//! local counts and batch-coupled statistics into **one** reduction, computes its shard's loss
//! normalized by the global counts, and all-reduces its gradient (a second reduction). The
//! peers' summed gradient must equal the whole-batch gradient to 1e-5 (f32) / 1e-6 (f64)
//! relative to its largest component. Nothing is hard-coded: the expected values come from
//! the whole-batch run. The tiny "policy" is per-token log-probs `x @ w - 1` with one
//! parameter vector `w`.

#![allow(dead_code)]

use std::ops::Range;

use crate::common::Rng;

use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use burn_rlhf::distributed::{KlParts, MomentParts, Reducer, SharedReducer, StepCounts};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::{
    BcoLossConfig, DpoLossConfig, KtoLossConfig, PreferenceBatch, RunningMoments, UnpairedBatch,
    kto_kl_estimate,
};
use burn_rlhf::rl::{
    GroupAdvantageConfig, GrpoLossConfig, GrpoLossInput, GrpoLossType, PpoLossConfig, PpoLossInput,
    ScaleRewards, Whitening, whiten, whiten_with,
};

/// One step of a case on one peer: `(reducer, w, shard) -> the shard's loss`, after reducing
/// the step's parts through `reducer` (one call).
pub type Step<'a> = dyn Fn(&SharedReducer, &Tensor<1>, &Range<usize>) -> Tensor<1> + Sync + 'a;

/// How the peers run: threads of this process, or MPI ranks.
pub trait Peers {
    /// Runs `step` on every peer's shard; each peer then all-reduces its gradient through the
    /// same reducer. Returns the summed gradient as this process sees it (checked to be the
    /// same on every peer) and the number of reductions of the step.
    fn run(&self, d: &Data, step: &Step<'_>) -> (Vec<f64>, u64);
}

/// Unequal shards of the batch (multiples of the GRPO group size 4) for `peers` peers.
pub fn shards(peers: usize) -> Vec<Range<usize>> {
    match peers {
        1 => std::iter::once(0..B).collect(),
        2 => vec![0..8, 8..24],
        3 => vec![0..4, 4..12, 12..24],
        4 => vec![0..4, 4..8, 8..16, 16..24],
        _ => panic!("shards for 1 to 4 peers"),
    }
}

pub const B: usize = 24;
const T: usize = 5;
const F: usize = 3;

thread_local! {
    /// The device tensors are created on: flex (autodiff) unless a peer thread sets its own.
    pub static DEVICE: std::cell::RefCell<Device> = std::cell::RefCell::new(Device::flex().autodiff());
    /// The float dtype of the cases' tensors (f32 unless a peer sets f64).
    pub static FLOAT: std::cell::Cell<DType> = const { std::cell::Cell::new(DType::F32) };
}

pub fn dev() -> Device {
    DEVICE.with(|d| d.borrow().clone())
}

/// Relative tolerance of the comparisons: 1e-5 in f32, 1e-6 in f64.
pub fn tol() -> f64 {
    if FLOAT.get() == DType::F64 {
        1e-6
    } else {
        1e-5
    }
}

fn t1(values: Vec<f32>) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), (&dev(), FLOAT.get()))
}

fn t2(values: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), (&dev(), FLOAT.get()))
}

pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
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
pub struct Data {
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

pub fn data(seed: u64) -> Data {
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
    pub fn param(&self) -> Tensor<1> {
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
pub fn whole(d: &Data, loss: impl Fn(&Tensor<1>) -> Tensor<1>) -> Vec<f64> {
    let w = d.param();
    let grads = loss(&w).backward();
    host(w.grad(&grads).unwrap())
}

pub fn assert_close(got: &[f64], want: &[f64], what: &str) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-6, "{what}: degenerate zero gradient");
    let diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    assert!(
        diff <= tol() * scale,
        "{what}: peers {got:?} vs one device {want:?} (max diff {diff:e}, scale {scale:e})"
    );
}

pub fn assert_one_reduction_per_step(calls: u64, what: &str) {
    assert_eq!(
        calls, 2,
        "{what}: one reduction for the step's parts + one for the gradients"
    );
}

/// The DPO case's data (seed 11).
pub fn dpo_data() -> Data {
    data(11)
}

/// The DPO batch of rows `r`: set a chosen, set b rejected, with their reference log-probs.
pub fn dpo_batch(d: &Data, w: &Tensor<1>, r: &Range<usize>) -> PreferenceBatch {
    PreferenceBatch::from_tokens(d.gathered(w, r, true), d.gathered(w, r, false))
        .with_ref_logps(d.seq(&d.ref_a, r), d.seq(&d.ref_b, r))
}

pub fn dpo(peers: &dyn Peers) {
    let d = dpo_data();
    let batch = |w: &Tensor<1>, r: &Range<usize>| dpo_batch(&d, w, r);
    let config = DpoLossConfig::new();
    let want = whole(&d, |w| config.init().forward(&batch(w, &(0..B))).loss);
    let (got, calls) = peers.run(&d, &|reducer, w, r| {
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
    let (local, _) = peers.run(&d, &|reducer, w, r| {
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
pub fn kto(peers: &dyn Peers) {
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
    let (got, calls) = peers.run(&d, &|reducer, w, r| {
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
pub fn bco(peers: &dyn Peers) {
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
    let (got, calls) = peers.run(&d, &|reducer, w, r| {
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
pub fn grpo(peers: &dyn Peers) {
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
    let (got, calls) = peers.run(&d, &|reducer, w, r| {
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
pub fn ppo(peers: &dyn Peers) {
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
    let (got, calls) = peers.run(&d, &|reducer, w, r| {
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
