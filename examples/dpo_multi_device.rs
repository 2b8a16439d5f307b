//! DPO on data-parallel replicas through burn-train's `MultiDevice` strategy, checked against
//! single-device training on the whole batch.
//!
//! `cargo run --release --example dpo_multi_device --features train -- [--replicas 2]
//!   [--steps 20] [--batch 8] [--sft-steps 100] [--seed 0] [--out out/dpo_multi_device]`
//!
//! The `dpo` example's task and model (`common::toy`, shared, not copied): an SFT warm-up on
//! a 40% reverse / 60% copy mix, the warmed-up model frozen as the reference, then DPO on
//! "reverse" (chosen) vs "copy or near miss" (rejected) pairs, in f64 so that the comparison
//! measures the method and not f32 rounding. Two burn-train runs start from the same policy:
//!
//! - **single device**: `Learner` with the default single-device strategy, batches of
//!   `replicas x batch` pairs, TRL's mean over the pairs of the batch;
//! - **replicas**: `ExecutionStrategy::multi([device; replicas], OptimMainDevice)`: burn-train
//!   splits the data loader into one contiguous shard per replica, runs one worker thread per
//!   device, and **sums** the workers' gradients on the main device before one optimizer step.
//!   Each worker's [`PreferenceModel`] holds a [`ThreadReducer`] over the replicas
//!   (`with_reducer`): every training step sums the pair counts of all replicas in one call
//!   and normalizes its loss by that global count, so the summed gradient is the gradient of
//!   the whole step's batch.
//!
//! The single-device batches are the replicas' batches of the same step put together (the
//! item order below reproduces burn-train's split), so after `--steps` Adam steps the two
//! policies must agree up to floating-point rounding. The example prints the wall time per
//! step of both runs and, last, `final: max |param diff| vs single device <x>` with the
//! held-out reward accuracy of both policies; it fails if `x > 1e-5`.
//!
//! Why not burn's collective: burn 0.22 runs `all_reduce` only on CUDA (see
//! `burn_rlhf::distributed`, "Why burn's collective runs only on CUDA"); the `MultiDevice`
//! strategy needs none. On several CUDA GPUs, `ExecutionStrategy::ddp(devices, config)` with
//! a `CollectiveReducer` per rank is the same recipe.

pub mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::{Device, Int, Tensor};
use burn::train::renderer::CliMetricsRenderer;
use burn::train::{ExecutionStrategy, Learner, MultiDeviceOptim, SupervisedTraining};
use burn_rlhf::distributed::{ThreadReducer, check_loader_split};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::DpoLossConfig;
use burn_rlhf::train::{
    CausalLmLogps, PreferenceInput, PreferenceItem, PreferenceModel, TokenBatcher,
};
use clap::Parser;
use common::params::{max_abs_diff, warmed_up_f64};
use common::rng::Rng;
use common::toy::{EOS, TinyLm, gather, heldout_reward_accuracy, make_pairs, split_row};

const LR: f64 = 1e-3;

/// The model glue burn-train needs: per-token log-probs of the labels.
impl CausalLmLogps for TinyLm {
    fn token_logps(&self, input_ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> GatheredLogps {
        gather(self, input_ids, labels)
    }
}

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(about = "DPO on data-parallel replicas (burn-train MultiDevice) vs one device")]
pub struct Args {
    /// Data-parallel replicas (worker threads, one device each).
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Optimizer steps (one epoch).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Pairs per replica per step (the single-device batch is `replicas x batch`).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// SFT warm-up steps (batch 32) before DPO.
    #[arg(long, default_value_t = 100)]
    pub sft_steps: usize,
    /// Held-out pairs for the reward accuracy.
    #[arg(long, default_value_t = 256)]
    pub heldout: usize,
    /// Model width.
    #[arg(long, default_value_t = 32)]
    pub d_model: usize,
    /// Data and initialization seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// burn-train's log folder.
    #[arg(long, default_value = "out/dpo_multi_device")]
    pub out: PathBuf,
}

impl Default for Args {
    fn default() -> Self {
        Args::parse_from(["dpo_multi_device"])
    }
}

/// What a run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Largest `|parameter difference|` between the two trained policies.
    pub max_param_diff: f64,
    /// Largest parameter change of the single-device run (shows that training moved them).
    pub max_param_move: f64,
    /// Held-out reward accuracy of the single-device policy.
    pub accuracy_single: f64,
    /// Held-out reward accuracy of the data-parallel policy.
    pub accuracy_replicas: f64,
    /// Wall time per optimizer step: single device, replicas.
    pub seconds_per_step: (f64, f64),
    /// Reducer calls made by the replicas (one per step).
    pub reducer_calls: u64,
}

/// `n` preference items of the toy task (prompt, chosen = the prompt reversed, rejected = a copy or a near miss).
pub fn items(n: usize, rng: &mut Rng) -> Vec<PreferenceItem> {
    let pairs = make_pairs(n, rng);
    (0..n)
        .map(|i| {
            let (prompt, chosen) = split_row(&pairs.chosen[i]);
            let (_, rejected) = split_row(&pairs.rejected[i]);
            PreferenceItem {
                prompt,
                chosen,
                rejected,
                ref_logps: None,
            }
        })
        .collect()
}

/// An unshuffled loader (burn-train's split and the batch order are then known).
fn loader(items: Vec<PreferenceItem>, batch: usize) -> Arc<dyn DataLoader<PreferenceInput>> {
    DataLoaderBuilder::new(TokenBatcher::new(EOS))
        .batch_size(batch)
        .build(InMemDataset::new(items))
}

/// The single-device order of `items`: batch `k` holds every replica's batch `k`.
/// burn-train's `split_dataloader` gives replica `r` the contiguous items
/// `[r * n / R, (r + 1) * n / R)`, and each replica batches its shard in order.
fn whole_batch_order(
    items: &[PreferenceItem],
    replicas: usize,
    batch: usize,
) -> Vec<PreferenceItem> {
    let shard = items.len() / replicas;
    let steps = shard / batch;
    let mut out = Vec::with_capacity(items.len());
    for step in 0..steps {
        for r in 0..replicas {
            let start = r * shard + step * batch;
            out.extend_from_slice(&items[start..start + batch]);
        }
    }
    out
}

/// Held-out reward accuracy: the share of pairs where the policy's implicit reward margin
/// over the reference is positive (as the `dpo` example computes it).
fn reward_accuracy(
    policy: &TinyLm,
    reference: &TinyLm,
    heldout: &[PreferenceItem],
    device: &Device,
) -> f64 {
    let rows = |pick: fn(&PreferenceItem) -> &Vec<i64>| -> Vec<Vec<i64>> {
        heldout
            .iter()
            .map(|i| [i.prompt.clone(), pick(i).clone()].concat())
            .collect()
    };
    let (chosen, rejected) = (rows(|i| &i.chosen), rows(|i| &i.rejected));
    heldout_reward_accuracy(policy, reference, &chosen, &rejected, device)
}

/// Both trainings from the same warmed-up policy.
pub fn run(args: &Args) -> Result<Summary, String> {
    if args.replicas < 1 || args.batch < 2 || args.steps < 1 {
        return Err("--replicas >= 1, --batch >= 2 and --steps >= 1 are required".into());
    }
    let base = Device::flex();
    let device = base.clone().autodiff();
    // --- SFT warm-up (f32, plain loop), then the policy in f64; the reference is its frozen copy.
    let (init, mut rng) = warmed_up_f64(args.d_model, args.sft_steps, args.seed, &base);
    let reference = init.valid();

    let n = args.steps * args.replicas * args.batch;
    let train = items(n, &mut rng);
    let heldout = items(args.heldout, &mut rng);
    let valid = || {
        loader(
            heldout[..args.batch.min(heldout.len())].to_vec(),
            args.batch,
        )
    };
    let training = |dir: &str, train: Arc<dyn DataLoader<PreferenceInput>>| {
        SupervisedTraining::new(args.out.join(dir), train, valid())
            .renderer(Box::new(CliMetricsRenderer::new()))
            .with_application_logger(None)
            .num_epochs(1)
    };
    let dpo = DpoLossConfig::new().init();

    // --- One device, batches of `replicas x batch` pairs.
    let start = Instant::now();
    let single = training(
        "single",
        loader(
            whole_batch_order(&train, args.replicas, args.batch),
            args.replicas * args.batch,
        ),
    )
    .launch(Learner::new(
        PreferenceModel::new(init.clone(), Some(reference.clone()), dpo.clone()),
        AdamConfig::new().init(),
        LR,
    ))
    .model
    .policy;
    let single_seconds = start.elapsed().as_secs_f64() / args.steps as f64;

    // --- Replicas: burn-train's MultiDevice strategy, a ThreadReducer for the global count.
    let reducer = ThreadReducer::new(args.replicas).map_err(|e| e.to_string())?;
    // Setup check: burn's split must give every device the same number of steps (else a
    // device with a batch left waits in its reduction); `EqualShards::truncate` fixes an
    // epoch that does not split evenly.
    let train = loader(train, args.batch);
    check_loader_split(&train, args.batch, args.replicas).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let replicated = training("replicas", train)
        .with_training_strategy(
            ExecutionStrategy::multi(
                vec![device.clone(); args.replicas],
                MultiDeviceOptim::OptimMainDevice,
            )
            .into(),
        )
        .launch(Learner::new(
            PreferenceModel::new(init.clone(), Some(reference.clone()), dpo)
                .with_reducer(reducer.clone()),
            AdamConfig::new().init(),
            LR,
        ))
        .model
        .policy;
    let replicas_seconds = start.elapsed().as_secs_f64() / args.steps as f64;

    Ok(Summary {
        max_param_diff: max_abs_diff(&single, &replicated),
        max_param_move: max_abs_diff(&single, &init),
        accuracy_single: reward_accuracy(&single, &reference, &heldout, &base),
        accuracy_replicas: reward_accuracy(&replicated, &reference, &heldout, &base),
        seconds_per_step: (single_seconds, replicas_seconds),
        reducer_calls: reducer.calls(),
    })
}

pub fn main() {
    let args = Args::parse();
    let s = run(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    println!(
        "{} steps; single device: batches of {} pairs; {} replicas x {} pairs (burn-train MultiDevice, summed gradients)",
        args.steps,
        args.replicas * args.batch,
        args.replicas,
        args.batch
    );
    println!(
        "wall time per step: single device {:.3} s, {} replicas {:.3} s (ratio {:.2})",
        s.seconds_per_step.0,
        args.replicas,
        s.seconds_per_step.1,
        s.seconds_per_step.1 / s.seconds_per_step.0
    );
    println!("reducer calls: {} ({} steps)", s.reducer_calls, args.steps);
    println!(
        "largest parameter move of the single-device run: {:.3e}",
        s.max_param_move
    );
    println!(
        "final: max |param diff| vs single device {:.3e}; held-out reward accuracy: single device {:.3}, replicas {:.3}",
        s.max_param_diff, s.accuracy_single, s.accuracy_replicas
    );
    if s.max_param_diff > 1e-5 {
        eprintln!("error: the replicas diverged from single-device training");
        std::process::exit(1);
    }
}
