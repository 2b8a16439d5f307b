//! DPO on `N` data-parallel replicas with summed gradients, checked against single-device
//! training on the whole batch.
//!
//! `cargo run --release --example dpo_data_parallel -- [--replicas 4] [--steps 10]
//!   [--batch 16] [--seed 0]`
//!
//! Both runs start from the same tiny causal transformer (f64, flex) and see the same pairs (the
//! `dpo` example's task, `common::toy`: chosen = the prompt reversed, rejected = a copy or a near
//! miss; the reference is the initial model):
//!
//! - **single device**: one DPO loss over the whole batch (TRL's mean over pairs), one Adam
//!   step;
//! - **replicas**: every replica holds its own copy of the model and optimizer and computes
//!   the loss of its shard (shards differ in size when `N` does not divide the batch) with
//!   [`Normalizer::GlobalSequences`]`(pairs of the whole step)`, the global count coming from
//!   the shards' [`StepCounts`] summed ([`sum_parts`], the simulated all-reduce). The
//!   replicas' gradients are summed (the all-reduce of gradients) and every replica applies
//!   the same summed gradients with its own optimizer.
//!
//! After `--steps` steps it prints the largest `|parameter difference|` between the two runs
//! (and between replicas) and fails if it exceeds 1e-5.
//!
//! # Which burn mechanism, and the multi-GPU recipe
//!
//! This example *simulates* the replicas sequentially in one process: the all-reduce is a sum
//! of tensors ([`sum_parts`] for the statistics). For replicas that really run concurrently
//! see the `dpo_multi_device` example (burn-train's `MultiDevice` strategy, one worker thread
//! per device, a `ThreadReducer` for the counts). burn 0.22's collective ops
//! (`burn::tensor::distributed::{DistributedContext, all_reduce}`) run only on CUDA (see
//! `burn_rlhf::distributed`, "Why burn's collective runs only on CUDA"). On several CUDA GPUs,
//! the same code runs one thread per device:
//!
//! 1. `let _ctx = DistributedContext::init(devices.clone(), DistributedConfig {
//!    all_reduce_op: ReduceOperation::Sum })` once, kept alive for training;
//! 2. in each device thread, per step: the local [`StepCounts`] of all its micro-batches ->
//!    `CollectiveReducer::new(device, devices).reduce(&counts)` (burn's `all_reduce`, `Sum`)
//!    -> `counts.pair_normalizer()` for the loss; pack KTO's [`KlParts`](burn_rlhf::distributed::KlParts)
//!    or BCO/GRPO/whitening [`MomentParts`](burn_rlhf::distributed::MomentParts) into the same
//!    call as a tuple;
//! 3. backward each micro-batch, accumulate with `GradientsAccumulator` (no `1/G`), then
//!    replace each gradient by `all_reduce(grad, ReduceOperation::Sum, devices.clone())
//!    .resolve()` (the step in `all_reduce_gradients` below) and take the optimizer step.
//!
//! burn-train's `MultiDevice` strategy sums the workers' gradients (step 3 done for you);
//! if a strategy averages them instead, multiply the loss by the number of devices (or divide
//! the global count by it).

pub mod common;

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use burn_rlhf::distributed::{Parts, StepCounts, sum_parts};
use burn_rlhf::losses::{DpoLoss, DpoLossConfig, PreferenceBatch};
use common::params::{ToF64, max_abs_diff};
use common::rng::Rng;
use common::toy::{TinyLm, gather, ints, labels_of as labels, make_pairs};

const LR: f64 = 1e-3;

// ----------------------------------------------------------------------------- training

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Args {
    /// Simulated data-parallel replicas `N`.
    pub replicas: usize,
    /// Optimizer steps `k`.
    pub steps: usize,
    /// Pairs per optimizer step (all replicas together).
    pub batch: usize,
    /// Model width.
    pub d_model: usize,
    /// Data and initialization seed.
    pub seed: u64,
    /// No per-step output.
    pub quiet: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            replicas: 4,
            steps: 10,
            batch: 18,
            d_model: 32,
            seed: 0,
            quiet: false,
        }
    }
}

impl Args {
    /// Parses `--replicas N --steps K --batch B --d-model D --seed S --quiet`.
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let mut a = Args::default();
        let mut i = 1;
        while i < args.len() {
            if args[i] == "--quiet" {
                a.quiet = true;
                i += 1;
                continue;
            }
            let value: usize = args
                .get(i + 1)
                .ok_or(format!("{} needs a value", args[i]))?
                .parse()
                .map_err(|_| format!("{} needs a non-negative integer", args[i]))?;
            match args[i].as_str() {
                "--replicas" => a.replicas = value,
                "--steps" => a.steps = value,
                "--batch" => a.batch = value,
                "--d-model" => a.d_model = value,
                "--seed" => a.seed = value as u64,
                other => {
                    return Err(format!(
                        "unknown flag {other} (flags: --replicas --steps --batch --d-model --seed --quiet)"
                    ));
                }
            }
            i += 2;
        }
        if a.replicas == 0 || a.batch < a.replicas {
            return Err(format!(
                "need 1 <= --replicas <= --batch (got {} replicas, batch {})",
                a.replicas, a.batch
            ));
        }
        Ok(a)
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Largest `|p_replica - p_single|` over all parameters (and replicas) after the last step.
    pub max_param_diff: f64,
    /// Largest `|p_final - p_initial|` of single-device training (shows that training moved).
    pub max_param_move: f64,
    /// Whole-batch loss per step (single device).
    pub losses: Vec<f64>,
    /// Shard sizes of one step.
    pub shards: Vec<usize>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The contiguous shard of each replica: sizes differ by at most one.
fn shard_ranges(batch: usize, replicas: usize) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    (0..replicas)
        .map(|r| {
            let len = batch / replicas + usize::from(r < batch % replicas);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// The simulated all-reduce of gradients: every replica receives, for every parameter, the
/// sum of all replicas' gradients. (On GPUs: `all_reduce(grad, ReduceOperation::Sum,
/// devices).resolve()` in each device's thread.)
fn all_reduce_gradients(model: &TinyLm, per_replica: Vec<GradientsParams>) -> Vec<GradientsParams> {
    struct SumGrads {
        per_replica: Vec<GradientsParams>,
        out: Vec<GradientsParams>,
    }
    impl ModuleVisitor for SumGrads {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let sum = self
                .per_replica
                .iter()
                .filter_map(|g| g.get::<D>(param.id))
                .reduce(|a, b| a + b);
            if let Some(sum) = sum {
                for out in &mut self.out {
                    out.register(param.id, sum.clone());
                }
            }
        }
    }
    let n = per_replica.len();
    let mut visitor = SumGrads {
        per_replica,
        out: (0..n).map(|_| GradientsParams::new()).collect(),
    };
    model.visit(&mut visitor);
    visitor.out
}

/// Runs single-device and replicated training from the same start and compares them.
pub fn run(args: &Args) -> Result<Summary, String> {
    let start = Instant::now();
    let base = Device::flex();
    let device = base.clone().autodiff();
    base.seed(args.seed);
    let mut rng = Rng((0x9E37_79B9_7F4A_7C15 ^ args.seed.wrapping_mul(0x2545_F491_4F6C_DD1D)) | 1);
    let say = |s: String| {
        if !args.quiet {
            println!("{s}")
        }
    };

    let init = TinyLm::new(args.d_model, 1, &device).map(&mut ToF64);
    let reference = init.valid();
    let pairs = make_pairs(args.steps * args.batch, &mut rng);
    let (chosen, rejected) = (pairs.chosen, pairs.rejected);
    let shards = shard_ranges(args.batch, args.replicas);
    say(format!(
        "{} steps x {} pairs; {} simulated replicas with shards {:?}",
        args.steps,
        args.batch,
        args.replicas,
        shards.iter().map(|r| r.len()).collect::<Vec<_>>()
    ));

    // The loss of rows `r` of step `step`'s batch under `model`.
    let pair_loss = |model: &TinyLm, loss: &DpoLoss, step: usize, r: std::ops::Range<usize>| {
        let rows = step * args.batch + r.start..step * args.batch + r.end;
        let (c, j) = (&chosen[rows.clone()], &rejected[rows]);
        let ref_c = gather(&reference, ints(c, &base), labels(c, &base)).sum();
        let ref_r = gather(&reference, ints(j, &base), labels(j, &base)).sum();
        let batch = PreferenceBatch::from_tokens(
            gather(model, ints(c, &device), labels(c, &device)),
            gather(model, ints(j, &device), labels(j, &device)),
        )
        .with_ref_logps(ref_c, ref_r);
        loss.forward(&batch).loss
    };

    // --- single device, whole batch, TRL's mean over pairs.
    let whole_loss = DpoLossConfig::new().init();
    let mut single = init.clone();
    let mut optim: ModuleOptimizer = AdamConfig::new().init();
    let mut losses = vec![];
    for step in 0..args.steps {
        let loss = pair_loss(&single, &whole_loss, step, 0..args.batch);
        losses.push(loss.clone().into_scalar::<f64>());
        let grads = GradientsParams::from_grads(loss.backward(), &single);
        single = optim.step(LR, single, grads);
        say(format!("  step {:>3} loss {:.6}", step + 1, losses[step]));
    }

    // --- N replicas: own model and optimizer each, global pair count, summed gradients.
    let mut replicas: Vec<(TinyLm, ModuleOptimizer)> = (0..args.replicas)
        .map(|_| (init.clone(), AdamConfig::new().init()))
        .collect();
    for step in 0..args.steps {
        // Each replica knows only its shard; the global count is the all-reduced sum.
        let local: Vec<StepCounts> = shards
            .iter()
            .map(|r| StepCounts::from_pairs(r.len()))
            .collect();
        let global = sum_parts(&local);
        assert_eq!(global.to_values()[2], args.batch as f64);
        let loss = DpoLossConfig::new()
            .with_normalizer(global.pair_normalizer().map_err(|e| e.to_string())?)
            .init();
        let grads: Vec<GradientsParams> = replicas
            .iter()
            .zip(&shards)
            .map(|((model, _), r)| {
                let l = pair_loss(model, &loss, step, r.clone());
                GradientsParams::from_grads(l.backward(), model)
            })
            .collect();
        let reduced = all_reduce_gradients(&replicas[0].0, grads);
        replicas = replicas
            .into_iter()
            .zip(reduced)
            .map(|((model, mut optim), g)| (optim.step(LR, model, g), optim))
            .collect();
    }

    let max_param_diff = replicas
        .iter()
        .map(|(m, _)| max_abs_diff(m, &single))
        .fold(0.0, f64::max);
    let summary = Summary {
        max_param_diff,
        max_param_move: max_abs_diff(&single, &init),
        losses,
        shards: shards.iter().map(|r| r.len()).collect(),
        seconds: start.elapsed().as_secs_f64(),
    };
    say(format!(
        "max |param diff| replicas vs single device after {} steps: {:.3e} (largest parameter move {:.3e}; {:.1}s)",
        args.steps, summary.max_param_diff, summary.max_param_move, summary.seconds
    ));
    Ok(summary)
}

pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args = match Args::parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(s) if s.max_param_diff <= 1e-5 => {
            println!("OK: data-parallel DPO equals single-device DPO (<= 1e-5)")
        }
        Ok(s) => {
            eprintln!("FAILED: max |param diff| {:.3e} > 1e-5", s.max_param_diff);
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}
