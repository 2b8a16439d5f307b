//! Data-parallel and gradient-accumulation exactness (issue 10), f64 on flex.
//!
//! A tiny shared "policy" (per-token log-probs = `x @ w - 1`, one parameter vector `w`) is
//! trained on a batch split across `W` in {2, 4} simulated ranks x 2 accumulation
//! micro-batches of unequal sizes and token counts. Each micro-batch loss is reduced with the
//! step's global counts ([`StepCounts`], summed over shards = simulated all-reduce) and the
//! cross-rank statistics ([`KlParts`], [`MomentParts`]); the gradients w.r.t. `w` are
//! **summed** over micro-batches and ranks. Expected: the gradient of the loss of the whole
//! batch computed in one piece with the crate's default (TRL) normalization, to 1e-6 relative
//! (relative to the largest gradient component). Expected values come only from the
//! whole-batch computation; nothing is hard-coded.
//!
//! burn 0.22's collective `all_reduce` is not implemented for Flex/NdArray (see
//! `burn_rlhf::distributed`), so ranks are simulated here; the last test checks that the
//! collective reducer refuses a flex device with a typed error.

use crate::common;
#[path = "../../examples/dpo_data_parallel.rs"]
pub mod dpo_data_parallel;

use std::ops::Range;

use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use burn_rlhf::distributed::{
    CollectiveReducer, KlParts, LocalReducer, MomentParts, Parts, Reducer, StepCounts, sum_parts,
};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::{
    BcoLossConfig, CpoLossConfig, DpoLossConfig, DpoLossType, KtoLossConfig, OrpoLossConfig,
    PreferenceBatch, RunningMoments, UnpairedBatch, kto_kl_estimate,
};
use burn_rlhf::rl::{
    GroupAdvantageConfig, GrpoLossConfig, GrpoLossInput, GrpoLossType, PpoLossConfig, PpoLossInput,
    RewardAggregation, ScaleRewards, Whitening, whiten, whiten_with,
};
use burn_rlhf::{Error, Normalizer};
use common::Rng;

const B: usize = 24;
const T: usize = 5;
const F: usize = 3;
const TOL: f64 = 1e-6;

/// Micro-batch row counts: `W` ranks x 2 accumulation steps, deliberately unequal.
fn chunks(world: usize) -> Vec<usize> {
    match world {
        2 => vec![5, 7, 4, 8],
        4 => vec![2, 4, 3, 3, 1, 5, 4, 2],
        _ => unreachable!(),
    }
}

fn ranges(world: usize) -> Vec<Range<usize>> {
    let mut start = 0;
    chunks(world)
        .into_iter()
        .map(|n| {
            let r = start..start + n;
            start += n;
            r
        })
        .collect()
}

fn dev() -> Device {
    Device::flex().autodiff()
}

fn t1(values: Vec<f64>) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), (&dev(), DType::F64))
}

fn t2(values: Vec<f64>, shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), (&dev(), DType::F64))
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

/// `n` values in `[-scale/2, scale/2)` from the tests' one seeded generator.
trait Values {
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64>;
}
impl Values for Rng {
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.range(-0.5, 0.5) * scale).collect()
    }
}

/// The fixed data of one test: features of two completion sets, masks with unequal lengths,
/// reference log-probs, advantages, old log-prob offsets.
struct Data {
    w: Vec<f64>,
    xa: Vec<f64>,
    xb: Vec<f64>,
    mask_a: Vec<bool>,
    mask_b: Vec<bool>,
    ref_a: Vec<f64>,
    ref_b: Vec<f64>,
    adv_seq: Vec<f64>,
    adv_tok: Vec<f64>,
    old_shift: Vec<f64>,
    desirable: Vec<bool>,
}

fn data(seed: u64) -> Data {
    let mut r = Rng::new(seed);
    // Lengths 1..=T, varying per row, so token counts differ between micro-batches.
    let lens_a: Vec<usize> = (0..B).map(|i| 1 + (i * 7 + 3) % T).collect();
    let lens_b: Vec<usize> = (0..B).map(|i| 1 + (i * 5 + 1) % T).collect();
    let mask = |lens: &[usize]| -> Vec<bool> {
        lens.iter()
            .flat_map(|&l| (0..T).map(move |t| t < l))
            .collect()
    };
    Data {
        w: r.vec(F, 1.0),
        xa: r.vec(B * T * F, 1.0),
        xb: r.vec(B * T * F, 1.0),
        mask_a: mask(&lens_a),
        mask_b: mask(&lens_b),
        ref_a: r.vec(B, 2.0).iter().map(|v| v - 4.0).collect(),
        ref_b: r.vec(B, 2.0).iter().map(|v| v - 4.0).collect(),
        adv_seq: r.vec(B, 3.0),
        adv_tok: r.vec(B * T, 3.0),
        old_shift: r.vec(B * T, 0.6),
        desirable: (0..B).map(|i| i % 3 != 1).collect(),
    }
}

impl Data {
    fn param(&self) -> Tensor<1> {
        t1(self.w.clone()).require_grad()
    }
    /// Per-token log-probs `x @ w - 1` of rows `rows` (`which` = completion set a or b).
    fn logp(&self, w: &Tensor<1>, rows: &Range<usize>, which: char) -> Tensor<2> {
        let x = if which == 'a' { &self.xa } else { &self.xb };
        let n = rows.len();
        let xs = t2(x[rows.start * T * F..rows.end * T * F].to_vec(), [n * T, F]);
        xs.matmul(w.clone().reshape([F, 1]))
            .reshape([n, T])
            .sub_scalar(1.0)
    }
    fn mask(&self, rows: &Range<usize>, which: char) -> Tensor<2, Bool> {
        let m = if which == 'a' {
            &self.mask_a
        } else {
            &self.mask_b
        };
        Tensor::from_data(
            TensorData::new(m[rows.start * T..rows.end * T].to_vec(), [rows.len(), T]),
            &dev(),
        )
    }
    fn gathered(&self, w: &Tensor<1>, rows: &Range<usize>, which: char) -> GatheredLogps {
        GatheredLogps {
            logps: self.logp(w, rows, which),
            mask: self.mask(rows, which),
        }
    }
    fn seq(&self, v: &[f64], rows: &Range<usize>) -> Tensor<1> {
        t1(v[rows.clone()].to_vec())
    }
    fn tok(&self, v: &[f64], rows: &Range<usize>) -> Tensor<2> {
        t2(v[rows.start * T..rows.end * T].to_vec(), [rows.len(), T])
    }
    fn desirable(&self, rows: &Range<usize>) -> Tensor<1, Bool> {
        Tensor::from_data(
            TensorData::new(self.desirable[rows.clone()].to_vec(), [rows.len()]),
            &dev(),
        )
    }
    /// Simulated all-reduce of the step counts of every micro-batch of every rank.
    fn counts(&self, world: usize, which: char) -> StepCounts {
        let per_shard: Vec<StepCounts> = ranges(world)
            .iter()
            .map(|r| {
                let tok = StepCounts::from_token_masks(&[self.mask(r, which)]);
                tok + StepCounts {
                    pairs: r.len() as f64,
                    ..StepCounts::default()
                }
            })
            .collect();
        sum_parts(&per_shard)
    }
}

/// d loss / d w of the whole-batch loss.
fn grad_whole(d: &Data, loss: impl Fn(&Tensor<1>, &Range<usize>) -> Tensor<1>) -> Vec<f64> {
    let w = d.param();
    let l = loss(&w, &(0..B));
    let grads = l.backward();
    host(w.grad(&grads).unwrap())
}

/// Sum over micro-batches of d loss_m / d w (each micro-batch has its own graph, as on a
/// separate rank / accumulation step).
fn grad_sharded(
    d: &Data,
    world: usize,
    loss: impl Fn(&Tensor<1>, &Range<usize>) -> Tensor<1>,
) -> Vec<f64> {
    let mut total = vec![0.0; F];
    for r in ranges(world) {
        let w = d.param();
        let grads = loss(&w, &r).backward();
        for (t, g) in total.iter_mut().zip(host(w.grad(&grads).unwrap())) {
            *t += g;
        }
    }
    total
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-8, "{what}: degenerate zero gradient");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= TOL * scale,
            "{what}: {got:?} vs whole-batch {want:?}"
        );
    }
}

fn rel_diff(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max)
        / scale
}

// ------------------------------------------------------------------------------ DPO

fn dpo_check(loss_type: DpoLossType) {
    let d = data(11);
    let batch = |w: &Tensor<1>, r: &Range<usize>| {
        PreferenceBatch::from_tokens(d.gathered(w, r, 'a'), d.gathered(w, r, 'b'))
            .with_ref_logps(d.seq(&d.ref_a, r), d.seq(&d.ref_b, r))
    };
    let config = DpoLossConfig::new().with_loss_type(vec![loss_type]);
    let whole_loss = config.init(); // TRL default: mean over pairs
    let want = grad_whole(&d, |w, r| whole_loss.forward(&batch(w, r)).loss);
    for world in [2, 4] {
        let counts = d.counts(world, 'a');
        assert_eq!(counts.pairs, B as f64);
        let shard_loss = config
            .clone()
            .with_normalizer(counts.pair_normalizer().unwrap())
            .init();
        let got = grad_sharded(&d, world, |w, r| shard_loss.forward(&batch(w, r)).loss);
        assert_close(&got, &want, &format!("dpo {loss_type:?} world {world}"));
    }
}

#[test]
fn dpo_sigmoid_sharded_gradient_equals_whole_batch() {
    dpo_check(DpoLossType::Sigmoid);
}

#[test]
fn dpo_ipo_length_normalized_sharded_gradient_equals_whole_batch() {
    dpo_check(DpoLossType::Ipo);
}

// ------------------------------------------------------------------------- NLL / SFT terms

/// A paired loss with an NLL term (DPO `sft`, CPO `cpo_alpha`, ORPO): the whole batch with
/// TRL's defaults (pair mean + batch token-mean NLL) vs shards with the step's pair count
/// (`normalizer`) and the step's chosen-token count (`nll_normalizer`). Without the NLL
/// normalizer the shards do not match (the per-micro-batch token mean), which shows the test
/// can fail.
fn nll_check(
    what: &str,
    loss: impl Fn(Option<Normalizer>, Option<Normalizer>) -> Box<dyn Fn(&PreferenceBatch) -> Tensor<1>>,
) {
    let d = data(31);
    let batch = |w: &Tensor<1>, r: &Range<usize>| {
        PreferenceBatch::from_tokens(d.gathered(w, r, 'a'), d.gathered(w, r, 'b'))
            .with_ref_logps(d.seq(&d.ref_a, r), d.seq(&d.ref_b, r))
    };
    let whole = loss(None, None);
    let want = grad_whole(&d, |w, r| whole(&batch(w, r)));
    for world in [2, 4] {
        let counts = d.counts(world, 'a');
        let pairs = counts.pair_normalizer().unwrap();
        let tokens = counts.token_normalizer().unwrap();
        let exact = loss(Some(pairs), Some(tokens));
        let got = grad_sharded(&d, world, |w, r| exact(&batch(w, r)));
        assert_close(&got, &want, &format!("{what} world {world}"));
        let naive = loss(Some(pairs), None);
        let off = grad_sharded(&d, world, |w, r| naive(&batch(w, r)));
        assert!(
            rel_diff(&off, &want) > 1e-4,
            "{what}: the per-micro-batch NLL mean should differ ({})",
            rel_diff(&off, &want)
        );
    }
}

#[test]
fn dpo_with_sft_term_sharded_gradient_equals_whole_batch() {
    nll_check("dpo sigmoid + sft", |pairs, nll| {
        let mut config = DpoLossConfig::new()
            .with_loss_type(vec![DpoLossType::Sigmoid, DpoLossType::Sft])
            .with_loss_weights(Some(vec![1.0, 0.5]))
            .with_nll_normalizer(nll);
        if let Some(p) = pairs {
            config = config.with_normalizer(p);
        }
        let loss = config.init();
        Box::new(move |b| loss.forward(b).loss)
    });
}

#[test]
fn cpo_sharded_gradient_equals_whole_batch() {
    nll_check("cpo sigmoid + nll", |pairs, nll| {
        let mut config = CpoLossConfig::new()
            .with_cpo_alpha(1.0)
            .with_nll_normalizer(nll);
        if let Some(p) = pairs {
            config = config.with_normalizer(p);
        }
        let loss = config.init();
        Box::new(move |b| loss.forward(b).loss)
    });
}

#[test]
fn orpo_sharded_gradient_equals_whole_batch() {
    nll_check("orpo", |pairs, nll| {
        let mut config = OrpoLossConfig::new().with_nll_normalizer(nll);
        if let Some(p) = pairs {
            config = config.with_normalizer(p);
        }
        let loss = config.init();
        Box::new(move |b| loss.forward(b).loss)
    });
}

// ------------------------------------------------------------------------------ KTO / BCO

/// KTO with the KL estimate from the cross-rank form: the whole batch uses
/// `kto_kl_estimate` over all mismatched pairs; shards sum [`KlParts`].
#[test]
fn kto_sharded_gradient_with_global_kl_equals_whole_batch() {
    let d = data(23);
    // Mismatched completions (set b) and their reference log-probs: KL logps are detached.
    let kl_logps = |r: &Range<usize>| d.gathered(&d.param(), r, 'b').sum().detach();
    let kl_ref = |r: &Range<usize>| d.seq(&d.ref_b, r).sub_scalar(1.5);
    let whole_kl = kto_kl_estimate(kl_logps(&(0..B)), kl_ref(&(0..B)));
    assert!(
        host(whole_kl.clone())[0] > 0.0,
        "test data must give a positive (unclamped) KL"
    );
    let batch = |w: &Tensor<1>, r: &Range<usize>, kl: Tensor<1>| {
        UnpairedBatch::new(
            d.gathered(w, r, 'a').sum(),
            d.seq(&d.ref_a, r),
            d.desirable(r),
        )
        .with_kl(kl)
    };
    let config = KtoLossConfig::new().with_desirable_weight(1.3);
    let whole_loss = config.init(); // TRL default: mean over examples
    let want = grad_whole(&d, |w, r| {
        whole_loss.forward(&batch(w, r, whole_kl.clone())).loss
    });
    for world in [2, 4] {
        let parts: Vec<KlParts> = ranges(world)
            .iter()
            .map(|r| KlParts::from_logps(kl_logps(r), kl_ref(r)).unwrap())
            .collect();
        let global = sum_parts(&parts);
        let kl = global.finish(&d.seq(&d.ref_a, &(0..1))).unwrap();
        assert!((host(kl.clone())[0] - host(whole_kl.clone())[0]).abs() < 1e-12);
        let counts = d.counts(world, 'a');
        let shard_loss = config
            .clone()
            .with_normalizer(Normalizer::GlobalSequences(counts.pairs))
            .init();
        let got = grad_sharded(&d, world, |w, r| {
            shard_loss.forward(&batch(w, r, kl.clone())).loss
        });
        assert_close(&got, &want, &format!("kto world {world}"));
        // The per-shard KL estimate (TRL's per-micro-batch behaviour) is a different loss.
        let local = grad_sharded(&d, world, |w, r| {
            shard_loss
                .forward(&batch(w, r, kto_kl_estimate(kl_logps(r), kl_ref(r))))
                .loss
        });
        assert!(rel_diff(&local, &want) > 1e-4, "local KL should differ");
    }
}

/// BCO: the running mean updated once with the step's global reward moments (summed
/// [`MomentParts`]) equals the update on the whole batch; then shards with `train = false`
/// and a global count give the whole-batch gradient.
#[test]
fn bco_sharded_gradient_with_global_running_mean_equals_whole_batch() {
    let d = data(37);
    let beta = 0.5;
    let batch = |w: &Tensor<1>, r: &Range<usize>| {
        UnpairedBatch::new(
            d.gathered(w, r, 'a').sum(),
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
    let whole_loss = config.init();
    let mut whole_running = start;
    let want = grad_whole(&d, |w, r| {
        whole_loss
            .forward(&batch(w, r), &mut whole_running.clone(), true)
            .loss
    });
    whole_loss.forward(&batch(&d.param(), &(0..B)), &mut whole_running, true);
    for world in [2, 4] {
        let parts: Vec<MomentParts> = ranges(world)
            .iter()
            .map(|r| MomentParts::from_values(batch(&d.param(), r).rewards(beta)))
            .collect();
        let mut running = start;
        sum_parts(&parts).update_running(&mut running);
        for (a, b) in [
            (running.mean, whole_running.mean),
            (running.var, whole_running.var),
            (running.std, whole_running.std),
            (running.count, whole_running.count),
        ] {
            assert!(
                (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                "{running:?} vs {whole_running:?}"
            );
        }
        let shard_loss = config
            .clone()
            .with_normalizer(Normalizer::GlobalSequences(B as f64))
            .init();
        let got = grad_sharded(&d, world, |w, r| {
            shard_loss
                .forward(&batch(w, r), &mut running.clone(), false)
                .loss
        });
        assert_close(&got, &want, &format!("bco world {world}"));
    }
}

// ------------------------------------------------------------------------------ GRPO / PPO

fn grpo_input(d: &Data, w: &Tensor<1>, r: &Range<usize>) -> GrpoLossInput {
    let logp = d.logp(w, r, 'a');
    let old = logp.clone().detach() + d.tok(&d.old_shift, r);
    GrpoLossInput::new(logp, d.mask(r, 'a'), d.seq(&d.adv_seq, r)).with_old_logps(old)
}

/// GRPO `dapo`: TRL's native aggregation on the whole batch (`num_items_in_batch` = its
/// tokens) = (a) shards with `GlobalTokens(step tokens)`, gradients summed; (b) TRL's own
/// convention on shards (`num_processes = W`, `gradient_accumulation_steps =
/// steps_per_generation = 2`: one generation batch per optimizer step), gradients averaged
/// over ranks (DDP mean) and summed over accumulation steps.
#[test]
fn grpo_dapo_sharded_gradient_equals_whole_batch() {
    let d = data(41);
    let total = d.counts(2, 'a').tokens;
    let base = GrpoLossConfig::new()
        .with_loss_type(GrpoLossType::Dapo)
        .with_epsilon_high(Some(0.28));
    let whole = base.init();
    let want = grad_whole(&d, |w, r| {
        whole
            .forward(grpo_input(&d, w, r).with_num_items_in_batch(total))
            .loss
    });
    for world in [2, 4] {
        let counts = d.counts(world, 'a');
        assert_eq!(counts.tokens, total);
        let global = base
            .clone()
            .with_normalizer(Some(counts.token_normalizer().unwrap()))
            .init();
        let got = grad_sharded(&d, world, |w, r| global.forward(grpo_input(&d, w, r)).loss);
        assert_close(
            &got,
            &want,
            &format!("grpo dapo GlobalTokens world {world}"),
        );

        let trl = base
            .clone()
            .with_num_processes(world)
            .with_gradient_accumulation_steps(2)
            .with_steps_per_generation(2)
            .init();
        let summed = grad_sharded(&d, world, |w, r| {
            trl.forward(grpo_input(&d, w, r).with_num_items_in_batch(total))
                .loss
        });
        let averaged: Vec<f64> = summed.iter().map(|g| g / world as f64).collect();
        assert_close(
            &averaged,
            &want,
            &format!("grpo dapo TRL convention world {world}"),
        );
    }
}

/// GRPO `grpo`: mean over sequences of per-sequence token means = shards with
/// `GlobalSequences(step sequences)`.
#[test]
fn grpo_grpo_sharded_gradient_equals_whole_batch() {
    let d = data(43);
    let base = GrpoLossConfig::new().with_loss_type(GrpoLossType::Grpo);
    let whole = base.init();
    let want = grad_whole(&d, |w, r| whole.forward(grpo_input(&d, w, r)).loss);
    for world in [2, 4] {
        let counts = d.counts(world, 'a');
        assert_eq!(counts.sequences, B as f64);
        let global = base
            .clone()
            .with_normalizer(Some(counts.sequence_normalizer().unwrap()))
            .init();
        let got = grad_sharded(&d, world, |w, r| global.forward(grpo_input(&d, w, r)).loss);
        assert_close(&got, &want, &format!("grpo grpo world {world}"));
    }
}

fn ppo_input(d: &Data, w: &Tensor<1>, r: &Range<usize>) -> PpoLossInput {
    let logp = d.logp(w, r, 'a');
    let old = logp.clone().detach() + d.tok(&d.old_shift, r);
    // A value head sharing the parameter: v = 0.5 (x @ w), clipped against shifted old values.
    let values = logp.clone().mul_scalar(0.5);
    let old_values = values.clone().detach() + d.tok(&d.old_shift, r).mul_scalar(0.7);
    let returns = d.tok(&d.adv_tok, r).mul_scalar(0.5);
    PpoLossInput::new(logp, old, d.tok(&d.adv_tok, r))
        .with_mask(d.mask(r, 'a'))
        .with_values(values, old_values, returns)
}

/// PPO (policy + clipped value loss): TokenMean on the whole batch = `GlobalTokens(step
/// tokens)` on shards, gradients summed.
#[test]
fn ppo_sharded_gradient_equals_whole_batch() {
    let d = data(47);
    let config = PpoLossConfig::new().with_vf_coef(0.5);
    let whole = config.init();
    let want = grad_whole(&d, |w, r| whole.forward(ppo_input(&d, w, r)).loss);
    for world in [2, 4] {
        let counts = d.counts(world, 'a');
        let global = whole.with_normalizer(counts.token_normalizer().unwrap());
        let got = grad_sharded(&d, world, |w, r| global.forward(ppo_input(&d, w, r)).loss);
        assert_close(&got, &want, &format!("ppo world {world}"));
    }
}

/// The bug class of TRL 2617 / 5619 / OpenRLHF 1249: a per-micro-batch token mean, averaged
/// over accumulation steps and ranks, is **not** the whole-batch gradient when micro-batches
/// hold different token counts.
#[test]
fn naive_per_microbatch_mean_does_not_match() {
    let d = data(47);
    let whole = PpoLossConfig::new().init(); // TokenMean
    let want = grad_whole(&d, |w, r| whole.forward(ppo_input(&d, w, r)).loss);
    for world in [2, 4] {
        let summed = grad_sharded(&d, world, |w, r| whole.forward(ppo_input(&d, w, r)).loss);
        let averaged: Vec<f64> = summed.iter().map(|g| g / (2 * world) as f64).collect();
        let diff = rel_diff(&averaged, &want);
        assert!(
            diff > 1e-3,
            "naive mean should differ (world {world}): {diff}"
        );
    }
}

// ------------------------------------------------------------------------------ statistics

/// GRPO advantages with batch-scaled rewards (and GDPO's batch normalization): shards using
/// the summed [`MomentParts`] reproduce the whole-batch advantages; shard-local statistics
/// do not.
#[test]
fn grpo_batch_scaled_advantages_from_reduced_parts() {
    let mut r = Rng::new(5);
    let (g, k) = (4, 2);
    let n = B; // 6 prompts x 4 completions
    let mut rewards = r.vec(n * k, 4.0);
    rewards[5 * k] = f64::NAN; // a missing reward of one function
    rewards[9 * k] = f64::NAN; // a fully unscorable completion
    rewards[9 * k + 1] = f64::NAN;
    let rw = |rows: Range<usize>| {
        t2(
            rewards[rows.start * k..rows.end * k].to_vec(),
            [rows.len(), k],
        )
    };
    for aggregation in [
        RewardAggregation::SumThenNormalize,
        RewardAggregation::NormalizeThenSum,
    ] {
        let config = GroupAdvantageConfig::new()
            .with_num_generations(g)
            .with_scale_rewards(ScaleRewards::Batch)
            .with_multi_objective_aggregation(aggregation)
            .with_reward_weights(Some(vec![1.0, 0.5]));
        assert!(config.is_batch_coupled());
        let want = host(config.forward(rw(0..n)).advantages);
        // Shards of whole groups: 2 ranks x 2 micro-batches and 4 x ... (3 groups max per rank).
        for shards in [vec![8, 4, 8, 4], vec![4, 4, 8, 4, 4]] {
            let mut bounds = vec![];
            let mut s = 0;
            for len in &shards {
                bounds.push(s..s + len);
                s += len;
            }
            let parts: Vec<MomentParts> = bounds
                .iter()
                .map(|b| config.batch_reward_parts(rw(b.clone())).unwrap())
                .collect();
            let global = sum_parts(&parts);
            let got: Vec<f64> = bounds
                .iter()
                .flat_map(|b| {
                    host(
                        config
                            .try_forward_with_batch_stats(rw(b.clone()), &global)
                            .unwrap()
                            .advantages,
                    )
                })
                .collect();
            assert_close(&got, &want, &format!("{aggregation:?} {shards:?}"));
            let local: Vec<f64> = bounds
                .iter()
                .flat_map(|b| host(config.forward(rw(b.clone())).advantages))
                .collect();
            assert!(
                rel_diff(&local, &want) > 1e-3,
                "shard-local stats should differ"
            );
        }
    }
}

/// Masked whitening with the global mean / variance from summed parts matches whitening the
/// concatenated batch (up to torchtune's 1e-8 in the denominators).
#[test]
fn whitening_from_reduced_parts() {
    let d = data(53);
    let x = |r: &Range<usize>| d.tok(&d.adv_tok, r).add_scalar(0.7);
    let mask = |r: &Range<usize>| d.mask(r, 'a');
    for mode in [Whitening::ZeroMean, Whitening::KeepMean] {
        let want = host(whiten(x(&(0..B)), Some(mask(&(0..B))), mode));
        for world in [2, 4] {
            let parts: Vec<MomentParts> = ranges(world)
                .iter()
                .map(|r| MomentParts::from_masked(x(r), mask(r)).unwrap())
                .collect();
            let global = sum_parts(&parts);
            let got: Vec<f64> = ranges(world)
                .iter()
                .flat_map(|r| {
                    host(whiten_with(
                        x(r),
                        global.mean(),
                        global.var_unbiased(),
                        mode,
                    ))
                })
                .collect();
            assert_close(&got, &want, &format!("whiten {mode:?} world {world}"));
        }
    }
}

/// Step counts: tokens = valid positions, sequences = rows, summed over micro-batches.
#[test]
fn step_counts_from_masks() {
    let d = data(3);
    let want_tokens = d.mask_a.iter().filter(|&&m| m).count() as f64;
    let masks: Vec<_> = ranges(4).iter().map(|r| d.mask(r, 'a')).collect();
    let c = StepCounts::from_token_masks(&masks);
    assert_eq!(c.tokens, want_tokens);
    assert_eq!(c.sequences, B as f64);
    assert_eq!(
        StepCounts::from_pairs(3) + StepCounts::from_pairs(2),
        StepCounts::from_pairs(5)
    );
    assert!(StepCounts::default().token_normalizer().is_err());
}

/// The local reducer is the identity (one rank); burn 0.22's collective all_reduce does not
/// exist for Flex, so the collective reducer refuses it with a typed error (no panic).
#[test]
fn reducers() {
    let parts = KlParts {
        sum: 1.5,
        count: 3.0,
    };
    assert_eq!(LocalReducer.reduce(&parts).unwrap(), parts);
    assert_eq!(LocalReducer.world_size(), 1);
    let flex = Device::flex();
    assert!(!CollectiveReducer::supports(&flex));
    assert!(!CollectiveReducer::supports(&flex.clone().autodiff()));
    let reducer = CollectiveReducer::new(flex.clone(), vec![flex.clone()]).unwrap();
    assert!(matches!(
        reducer.reduce(&parts),
        Err(Error::Device { arg: "device", .. })
    ));
    assert!(CollectiveReducer::new(flex, vec![]).is_err());
}

/// A simulated world of ranks for one step: every rank's packed values are summed element-wise
/// (what a `Sum` all-reduce returns to each rank), and the number of reduction calls is
/// counted.
struct SimulatedWorld {
    ranks: Vec<Vec<f64>>,
    calls: std::sync::atomic::AtomicUsize,
}

impl Reducer for SimulatedWorld {
    fn world_size(&self) -> usize {
        self.ranks.len()
    }
    fn sum(&self, local: &[f64]) -> burn_rlhf::Result<Vec<f64>> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(
            self.ranks.iter().all(|r| r.len() == local.len()),
            "every rank packs the same layout"
        );
        Ok((0..local.len())
            .map(|i| self.ranks.iter().map(|r| r[i]).sum())
            .collect())
    }
}

/// The step's counts and every batch-coupled statistic travel in **one** reduction: a tuple of
/// parts packs them (round trip exact), and the reduced tuple equals the per-part sums.
#[test]
fn packed_parts_reduce_in_one_call_and_round_trip() {
    let d = data(41);
    let shards: Vec<(StepCounts, KlParts, MomentParts, MomentParts)> = ranges(2)
        .iter()
        .map(|r| {
            let w = d.param();
            let counts = StepCounts::from_token_masks(&[d.mask(r, 'a')])
                + StepCounts {
                    pairs: r.len() as f64,
                    ..StepCounts::default()
                };
            let kl = KlParts::from_logps(d.gathered(&w, r, 'a').sum(), d.seq(&d.ref_a, r)).unwrap();
            let rewards = MomentParts::from_values(d.seq(&d.adv_seq, r));
            let tokens = MomentParts::from_masked(d.tok(&d.adv_tok, r), d.mask(r, 'a')).unwrap();
            (counts, kl, rewards, tokens)
        })
        .collect();
    // Round trip of the packing.
    for s in &shards {
        let values = s.to_values();
        assert_eq!(values.len(), 3 + 2 + 3 + 3);
        let back = <(StepCounts, KlParts, MomentParts, MomentParts)>::from_values(&values);
        assert_eq!(back.to_values(), values);
    }
    // One call for everything, and the totals are the per-part sums over ranks.
    let world = SimulatedWorld {
        ranks: shards.iter().map(|s| s.to_values()).collect(),
        calls: std::sync::atomic::AtomicUsize::new(0),
    };
    let reduced = world.reduce(&shards[0]).unwrap();
    assert_eq!(
        world.calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one collective call per step"
    );
    let counts: Vec<StepCounts> = shards.iter().map(|s| s.0).collect();
    let kls: Vec<KlParts> = shards.iter().map(|s| s.1).collect();
    assert_eq!(reduced.0, sum_parts(&counts));
    assert_eq!(reduced.1, sum_parts(&kls));
    assert_eq!(reduced.0.tokens, d.counts(2, 'a').tokens);
    assert_eq!(reduced.0.pairs, B as f64);
}

// ------------------------------------------------------------------------------ example

/// The `dpo_data_parallel` example, shortened: 4 simulated replicas with summed gradients end
/// at the parameters of single-device whole-batch training (1e-5).
#[test]
fn dpo_data_parallel_example_matches_single_device() {
    let args = dpo_data_parallel::Args {
        replicas: 4,
        steps: 3,
        batch: 8,
        d_model: 16,
        quiet: true,
        ..dpo_data_parallel::Args::default()
    };
    let s = dpo_data_parallel::run(&args).unwrap();
    println!(
        "max |param diff| {:e}, moved {:e}",
        s.max_param_diff, s.max_param_move
    );
    assert!(s.max_param_diff <= 1e-5, "{}", s.max_param_diff);
    assert!(s.max_param_move > 1e-4, "training moved the parameters");
}
