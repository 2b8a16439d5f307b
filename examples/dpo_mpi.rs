//! DPO across processes (and hosts) with MPI: every rank trains on its shard of each step's
//! batch, the step's counts and the gradients are all-reduced through
//! [`MpiReducer`](burn_rlhf::distributed::MpiReducer), and the result equals one process
//! training on the whole batch.
//!
//! ```text
//! cargo build --release --features mpi --example dpo_mpi
//! mpirun -np 2 target/release/examples/dpo_mpi            # one host, two processes
//! mpirun -np 4 --hostfile hosts target/release/examples/dpo_mpi   # several hosts
//! ```
//!
//! (`--allow-run-as-root` when running Open MPI as root, `--oversubscribe` for more ranks
//! than cores.)
//!
//! Every rank builds the same model (same seed) and the same data (the `dpo` example's task,
//! `common::toy`: chosen = the prompt reversed, rejected = a copy or a near miss; a short SFT
//! warm-up first, run identically on every rank). Step `s` takes `--batch` pairs; rank `r`
//! of `W` takes its contiguous share of them (shares differ by at most one pair when `W`
//! does not divide the batch). Per step, on every rank:
//!
//! 1. `reducer.reduce(&StepCounts::from_pairs(shard))`: the step's global pair count, one
//!    MPI call;
//! 2. the shard's DPO loss with `Normalizer::GlobalSequences(pairs of the step)`, backward;
//! 3. `sum_gradients(&reducer, &model, grads)`: all gradients in one MPI call;
//! 4. the same Adam step on every rank.
//!
//! Rank 0 then trains one process on the whole batch (TRL's mean over pairs) from the same
//! start and prints the largest parameter difference, and the ranks check that they hold the
//! same parameters. The `final:` line is the same for any number of processes.

pub mod common;

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use burn_rlhf::distributed::{MpiReducer, MpiRuntime, Reducer, StepCounts, sum_gradients};
use burn_rlhf::losses::{DpoLoss, DpoLossConfig, PreferenceBatch};
use clap::Parser;
use common::params::{flat_params, max_abs_diff, warmed_up_f64};
use common::toy::{TinyLm, gather, heldout_reward_accuracy, ints, labels_of as labels, make_pairs};

const LR: f64 = 1e-3;

/// Command-line options (the same on every rank).
#[derive(Debug, Clone, Parser)]
#[command(about = "DPO across MPI processes vs one process on the whole batch")]
pub struct Args {
    /// Optimizer steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Pairs per optimizer step, all ranks together.
    #[arg(long, default_value_t = 18)]
    pub batch: usize,
    /// SFT warm-up steps before DPO (the same on every rank).
    #[arg(long, default_value_t = 100)]
    pub sft_steps: usize,
    /// Held-out pairs for the final accuracy.
    #[arg(long, default_value_t = 256)]
    pub heldout: usize,
    /// Model width.
    #[arg(long, default_value_t = 32)]
    pub d_model: usize,
    /// Data and initialization seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the single-process reference run on rank 0.
    #[arg(long)]
    pub no_reference: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args::parse_from(["dpo_mpi"])
    }
}

/// What a run measured (on this rank).
#[derive(Debug, Clone)]
pub struct Summary {
    /// This rank and the number of ranks.
    pub rank: usize,
    pub world_size: usize,
    /// Pairs of this rank in each step.
    pub shard: usize,
    /// Whole-batch DPO loss of each step (the ranks' shard losses summed).
    pub losses: Vec<f64>,
    /// Held-out reward accuracy of the trained policy.
    pub heldout_accuracy: f64,
    /// Largest `|p_rank - p_rank 0|` over all parameters, summed over the ranks (0: every
    /// rank holds rank 0's parameters bitwise).
    pub max_rank_diff: f64,
    /// Largest `|p - p_one process|` (rank 0 with the reference run; NaN elsewhere).
    pub max_param_diff: f64,
    /// Largest parameter move of training (shows that it moved).
    pub max_param_move: f64,
    /// Wall time per DPO step, and the part of it spent in the two reductions (measured
    /// around the calls), split by the reducer into waiting for the other ranks and moving
    /// the values.
    pub seconds_per_step: f64,
    pub reduce_seconds_per_step: f64,
    pub wait_seconds_per_step: f64,
    pub data_seconds_per_step: f64,
    /// MPI reductions made during training (two per step).
    pub reductions: u64,
}

/// The contiguous shard of `rank` among `world` ranks: sizes differ by at most one.
pub fn shard_range(batch: usize, world: usize, rank: usize) -> std::ops::Range<usize> {
    let len = |r: usize| batch / world + usize::from(r < batch % world);
    let start: usize = (0..rank).map(len).sum();
    start..start + len(rank)
}

/// Trains on this rank's shards with `reducer` and compares with one process on the whole
/// batch (rank 0).
pub fn run(args: &Args, reducer: &MpiReducer) -> Result<Summary, String> {
    let (rank, world) = (reducer.rank(), reducer.world_size());
    if args.batch < world || args.steps == 0 {
        return Err(format!(
            "need --batch >= the number of ranks ({world}) and --steps >= 1 (got batch {}, steps {})",
            args.batch, args.steps
        ));
    }
    let base = Device::flex();
    let device = base.clone().autodiff();
    let (init, mut rng) = warmed_up_f64(args.d_model, args.sft_steps, args.seed, &base);
    let reference = init.valid();
    let pairs = make_pairs(args.steps * args.batch, &mut rng);
    let heldout = make_pairs(args.heldout, &mut rng);
    let shard = shard_range(args.batch, world, rank);

    // The summed log-probs of rows `rows` of the pairs, and the DPO batch of those rows.
    let batch_of = |model: &TinyLm, rows: std::ops::Range<usize>| {
        let (c, j) = (&pairs.chosen[rows.clone()], &pairs.rejected[rows]);
        let ref_c = gather(&reference, ints(c, &base), labels(c, &base)).sum();
        let ref_r = gather(&reference, ints(j, &base), labels(j, &base)).sum();
        PreferenceBatch::from_tokens(
            gather(model, ints(c, &device), labels(c, &device)),
            gather(model, ints(j, &device), labels(j, &device)),
        )
        .with_ref_logps(ref_c, ref_r)
    };

    // --- data parallel over the MPI ranks.
    let mut model = init.clone();
    let mut optim: ModuleOptimizer = AdamConfig::new().init();
    let (mut in_reduce, mut losses) = (Duration::ZERO, vec![]);
    let calls = reducer.calls();
    let (wait0, data0) = reducer.timings();
    let start = Instant::now();
    for step in 0..args.steps {
        let rows = step * args.batch + shard.start..step * args.batch + shard.end;
        let t = Instant::now();
        let global = reducer
            .reduce(&StepCounts::from_pairs(rows.len()))
            .map_err(|e| e.to_string())?;
        in_reduce += t.elapsed();
        let loss: DpoLoss = DpoLossConfig::new()
            .with_normalizer(global.pair_normalizer().map_err(|e| e.to_string())?)
            .init();
        let out = loss.forward(&batch_of(&model, rows));
        losses.push(out.loss.clone().into_scalar::<f64>());
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let t = Instant::now();
        let grads = sum_gradients(reducer, &model, grads).map_err(|e| e.to_string())?;
        in_reduce += t.elapsed();
        model = optim.step(LR, model, grads);
    }
    let seconds = start.elapsed().as_secs_f64();
    let reductions = reducer.calls() - calls;
    let (wait1, data1) = reducer.timings();
    // The whole-batch loss of each step is the sum of the shards' (global normalizer).
    let losses = reducer.sum(&losses).map_err(|e| e.to_string())?;

    // The ranks hold the same parameters: rank 0's reach every rank exactly (the others add
    // zeros), each rank's largest difference from them is summed (an upper bound of the
    // largest; 0 only when all are bitwise equal).
    let own = flat_params(&model);
    let zeros = vec![0.0; own.len()];
    let rank0 = reducer
        .sum(if rank == 0 { &own } else { &zeros })
        .map_err(|e| e.to_string())?;
    let local_diff = own
        .iter()
        .zip(&rank0)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    let max_rank_diff = reducer.sum(&[local_diff]).map_err(|e| e.to_string())?[0];

    // --- one process on the whole batch (rank 0), TRL's mean over pairs.
    let mut max_param_diff = f64::NAN;
    if rank == 0 && !args.no_reference {
        let whole_loss = DpoLossConfig::new().init();
        let mut single = init.clone();
        let mut optim: ModuleOptimizer = AdamConfig::new().init();
        for step in 0..args.steps {
            let rows = step * args.batch..(step + 1) * args.batch;
            let loss = whole_loss.forward(&batch_of(&single, rows)).loss;
            let grads = GradientsParams::from_grads(loss.backward(), &single);
            single = optim.step(LR, single, grads);
        }
        max_param_diff = max_abs_diff(&model, &single);
    }

    Ok(Summary {
        rank,
        world_size: world,
        shard: shard.len(),
        losses,
        heldout_accuracy: heldout_reward_accuracy(
            &model.valid(),
            &reference,
            &heldout.chosen,
            &heldout.rejected,
            &base,
        ),
        max_rank_diff,
        max_param_diff,
        max_param_move: max_abs_diff(&model, &init),
        seconds_per_step: seconds / args.steps as f64,
        reduce_seconds_per_step: in_reduce.as_secs_f64() / args.steps as f64,
        wait_seconds_per_step: (wait1 - wait0).as_secs_f64() / args.steps as f64,
        data_seconds_per_step: (data1 - data0).as_secs_f64() / args.steps as f64,
        reductions,
    })
}

/// The summary lines rank 0 prints; the `final:` line depends only on the trained
/// parameters, so it is the same for any number of processes.
pub fn report(args: &Args, s: &Summary) -> Vec<String> {
    vec![
        format!(
            "{} ranks, {} steps x {} pairs (rank 0 holds {} of them)",
            s.world_size, args.steps, args.batch, s.shard
        ),
        format!(
            "loss: step 1 {:.6}, step {} {:.6}; largest parameter move {:.3e}",
            s.losses[0],
            args.steps,
            s.losses[args.steps - 1],
            s.max_param_move
        ),
        format!(
            "wall time per step: {:.4} s with {} process(es), {:.1}% of it in the reductions \
             ({:.1}% waiting for the other ranks, {:.1}% moving the values, the rest reading \
             and writing the gradients on the host; {} MPI reductions)",
            s.seconds_per_step,
            s.world_size,
            100.0 * s.reduce_seconds_per_step / s.seconds_per_step,
            100.0 * s.wait_seconds_per_step / s.seconds_per_step,
            100.0 * s.data_seconds_per_step / s.seconds_per_step,
            s.reductions
        ),
        format!(
            "ranks agree: |param diff| vs rank 0, summed over ranks {:.3e}",
            s.max_rank_diff
        ),
        format!(
            "max |param diff| vs one process on the whole batch: {:.3e}",
            s.max_param_diff
        ),
        format!(
            "final: loss {:.6} -> {:.6}, held-out reward accuracy {:.4}",
            s.losses[0],
            s.losses[args.steps - 1],
            s.heldout_accuracy
        ),
    ]
}

pub fn main() {
    let args = Args::parse();
    let mpi = MpiRuntime::init().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    mpi.abort_on_panic();
    let reducer = mpi.reducer();
    let summary = run(&args, &reducer).unwrap_or_else(|e| {
        eprintln!("error on rank {}: {e}", mpi.rank());
        reducer.abort(&e);
        std::process::exit(2)
    });
    if mpi.rank() == 0 {
        for line in report(&args, &summary) {
            println!("{line}");
        }
        if !args.no_reference && (summary.max_param_diff.is_nan() || summary.max_param_diff > 1e-6)
        {
            eprintln!("error: the ranks diverged from one process on the whole batch");
            std::process::exit(1);
        }
    }
    drop(reducer);
    drop(mpi);
}
