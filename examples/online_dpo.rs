//! Online (and iterative) DPO from a weak SFT policy: sample, score, pair, update.
//!
//! `cargo run --release --example online_dpo -- [--rounds 100] [--prompts 32]
//!   [--num-generations 4] [--epochs 1] [--refresh-ref] [--out out/online_dpo]`
//!
//! The task is the `dpo` example's (reverse 4 digits, `common::toy`), with the same tiny
//! transformer and the same weak SFT warm-up (40% reversed / 60% copied completions), but no
//! preference data: each round samples `--num-generations` completions per prompt from the current
//! policy ([`Sampler`]), scores them with two weighted reward functions (digits in the reversed
//! position, and the format "4 digits then EOS"), pairs best against worst, and takes a DPO step
//! against the frozen SFT reference ([`OnlineDpo`]). `--epochs N` trains N passes over each round's
//! pairs (iterative DPO: generate a dataset with the current policy, train on it); `--refresh-ref`
//! then makes the updated policy the next round's reference. The pairs are best vs worst of each
//! group with ties dropped (`keep_ties = false`: with 4 samples a tie carries no preference; TRL's
//! online DPO draws 2 and keeps ties) and no gradient clipping (TRL clips at 1.0).
//!
//! The metric is the fraction of held-out prompts (never training prompts: neither in the SFT
//! warm-up nor in the rounds) whose greedy completion follows the rule (`common::toy::rule`,
//! independent of the reward's format term). Prints progress, writes `rounds.svg` and ends with
//! `final: rule_rate <start> -> <end>`.

pub mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::AdamConfig;
use burn_rlhf::generate::{OnlineDpoConfig, Pairing, Prompts, SamplerConfig, Scorer};
use clap::Parser;
use common::chart;
use common::device::device_of;
use common::progress;
use common::rng::Rng;
use common::toy::{
    EOS, PROMPT, TinyLm, heldout_prompts, rule_rate, scorer, training_prompt_rows,
    warm_up_excluding,
};

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(about = "Online / iterative DPO on a tiny causal LM")]
pub struct Args {
    /// Rounds (sample + score + pair + update).
    #[arg(long, default_value_t = 100)]
    pub rounds: usize,
    /// Prompts per round.
    #[arg(long, default_value_t = 32)]
    pub prompts: usize,
    /// Completions sampled per prompt.
    #[arg(long, default_value_t = 4)]
    pub num_generations: usize,
    /// Passes over each round's pairs (> 1: iterative DPO).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Refresh the reference with the policy after each round (iterative DPO).
    #[arg(long)]
    pub refresh_ref: bool,
    /// SFT warm-up steps.
    #[arg(long, default_value_t = 150)]
    pub sft_steps: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 2e-3)]
    pub learning_rate: f64,
    /// DPO beta.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Evaluate the greedy rule rate every this many rounds.
    #[arg(long, default_value_t = 10)]
    pub eval_every: usize,
    /// Device: flex, or wgpu / cuda when built with that feature.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Output folder of the plot.
    #[arg(long, default_value = "out/online_dpo")]
    pub out: PathBuf,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print nothing while training.
    #[arg(long)]
    pub quiet: bool,
    /// Held-out prompts.
    #[arg(skip = 128usize)]
    pub heldout: usize,
    /// Model width.
    #[arg(skip = 64usize)]
    pub d_model: usize,
}

/// Per-round metrics and the evaluations.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// `(round, metrics)` of each round.
    pub rounds: Vec<(usize, BTreeMap<String, f64>)>,
    /// `(round, greedy rule rate)`; round 0 is the SFT policy.
    pub evals: Vec<(usize, f64)>,
    /// Wall time of the whole run.
    pub seconds: f64,
}

pub fn run(args: &Args) -> Result<History, String> {
    let start = Instant::now();
    let base = device_of(&args.device)?;
    let device = base.clone().autodiff();
    base.seed(args.seed);
    let mut rng = Rng(0x5DEE_CE66_D1A4_F87B ^ args.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let say = |s: String| {
        if !args.quiet {
            println!("{s}")
        }
    };
    say(format!(
        "SFT warm-up: {} steps on a 40% rule / 60% copy mix (device {})",
        args.sft_steps, args.device
    ));
    // Held-out prompts first, from their own stream: neither the SFT warm-up nor the rounds
    // train on them.
    let heldout = heldout_prompts(args.heldout, args.seed);
    let mut policy = warm_up_excluding(
        TinyLm::new(args.d_model, 2, &device),
        &device,
        args.sft_steps,
        32,
        0.4,
        &mut rng,
        &heldout,
        |step, nll| say(format!("  sft step {step:>4} nll {nll:.4}")),
    );
    let mut reference = policy.valid();
    let sampler = SamplerConfig::new()
        .with_num_generations(args.num_generations)
        .with_max_new_tokens(PROMPT + 1)
        .with_eos_token_ids(vec![EOS])
        .with_pad_token_id(EOS)
        .init();
    let online = OnlineDpoConfig::new()
        .with_beta(args.beta)
        .with_pairing(Pairing::BestVsWorst)
        .with_keep_ties(false)
        .with_max_grad_norm(None)
        .with_learning_rate(args.learning_rate)
        .with_epochs(args.epochs)
        .with_refresh_ref_model(args.refresh_ref)
        .try_init()
        .map_err(|e| e.to_string())?;
    let scorer = scorer();
    let mut optim = AdamConfig::new().init();
    let mut history = History::default();
    let rate = rule_rate(&policy.valid(), &heldout, &base);
    history.evals.push((0, rate));
    say(format!(
        "online DPO: {} rounds x {} prompts x {} samples (epochs {}, refresh_ref {}); SFT greedy rule rate {rate:.3}",
        args.rounds, args.prompts, args.num_generations, args.epochs, args.refresh_ref
    ));
    let bar = progress::bar(args.rounds, args.quiet);
    for round in 1..=args.rounds {
        let rows = training_prompt_rows(args.prompts, &mut rng, &heldout);
        let prompts = Prompts::left_padded(&rows, EOS, &base);
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(round as u64);
        let generation = sampler
            .try_sample(&policy.valid(), &prompts, seed)
            .map_err(|e| e.to_string())?;
        let scores = scorer.score(&generation);
        let out = online
            .try_step(policy, &mut reference, &mut optim, &generation, &scores)
            .map_err(|e| e.to_string())?;
        policy = out.policy;
        let m = out.metrics;
        bar.set_message(format!(
            "score {:.3} pairs {}",
            m.get("objective/scores").copied().unwrap_or(f64::NAN),
            m["num_pairs"]
        ));
        bar.inc(1);
        if round % args.eval_every == 0 || round == args.rounds {
            let rate = rule_rate(&policy.valid(), &heldout, &base);
            history.evals.push((round, rate));
            let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
            bar.suspend(|| {
                say(format!(
                    "round {round:>3}  objective/scores {:.3}  pairs {:>3}  loss {:.4}  rewards/accuracies {:.3}  rewards/margins {:+.3}  objective/kl {:+.3}  greedy rule rate {rate:.3}  ({:.1}s)",
                    get("objective/scores"),
                    get("num_pairs"),
                    get("loss"),
                    get("rewards/accuracies"),
                    get("rewards/margins"),
                    get("objective/kl"),
                    start.elapsed().as_secs_f64()
                ))
            });
        }
        history.rounds.push((round, m));
    }
    bar.finish_and_clear();
    history.seconds = start.elapsed().as_secs_f64();
    Ok(history)
}

fn write_plot(args: &Args, h: &History) -> std::io::Result<PathBuf> {
    let series = |key: &str| chart::Series {
        name: key.to_string(),
        points: h
            .rounds
            .iter()
            .filter_map(|(i, m)| m.get(key).map(|v| (*i as f64, *v)))
            .collect(),
    };
    let path = args.out.join("rounds.svg");
    chart::write_svg(
        &path,
        "online DPO on a tiny causal LM (rule: reverse the prompt)",
        &[
            chart::Panel {
                title: "policy quality".into(),
                x_label: "round".into(),
                series: vec![
                    chart::Series {
                        name: "greedy rule rate".into(),
                        points: h.evals.iter().map(|&(r, v)| (r as f64, v)).collect(),
                    },
                    series("objective/scores"),
                ],
            },
            chart::Panel {
                title: "DPO".into(),
                x_label: "round".into(),
                series: vec![series("loss"), series("rewards/accuracies")],
            },
            chart::Panel {
                title: "objective/kl".into(),
                x_label: "round".into(),
                series: vec![series("objective/kl")],
            },
        ],
    )?;
    Ok(path)
}

pub fn main() {
    let args = Args::parse();
    let h = run(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let path = write_plot(&args, &h).expect("write plot");
    println!("done in {:.1} s; plot: {}", h.seconds, path.display());
    let (first, last) = (h.evals[0].1, h.evals[h.evals.len() - 1].1);
    println!("final: rule_rate {first:.3} -> {last:.3}");
}
