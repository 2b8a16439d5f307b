//! GRPO from samples: the crate's sampler, weighted reward functions, group advantages and the
//! GRPO loss with a KL term to the SFT reference.
//!
//! `cargo run --release --example grpo -- [--steps 60] [--prompts 16] [--num-generations 8]
//!   [--beta 0.02] [--top-k 0] [--out out/grpo]`
//!
//! Task and model: the `dpo` example's (`common::toy`: reverse 4 digits; tiny transformer; weak SFT
//! on a 40% reversed / 60% copied mix). Each step samples `--num-generations` completions per
//! prompt ([`Sampler`]), scores them with two weighted reward functions (0.8 x digits in the
//! reversed position + 0.2 x "4 digits then EOS"), and runs [`GrpoStep`] with TRL's default loss
//! type (`dapo`): group-relative advantages, reference log-probs for the KL term, the sampler's
//! log-probs as old log-probs (with `--top-k`, over each token's recorded support: sampling replay,
//! so the first ratio is exactly 1), clipping at 1.0.
//!
//! The evaluation is greedy decoding on held-out prompts (never training prompts), judged by the
//! task's rule (`common::toy::rule`), before and after. Prints progress, writes `reward.svg`, and
//! ends with `final: reward <start> -> <end>, held-out greedy rule rate <start> -> <end>` (mean
//! sampled reward of the first step and of the last 5 steps).

pub mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::AdamConfig;
use burn_rlhf::generate::{GrpoStepConfig, Prompts, SamplerConfig};
use burn_rlhf::rl::{GrpoLossConfig, GrpoLossType};
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
#[command(about = "GRPO from sampled completions on a tiny causal LM")]
pub struct Args {
    /// GRPO steps (sample + score + update).
    #[arg(long, default_value_t = 60)]
    pub steps: usize,
    /// Prompts per step.
    #[arg(long, default_value_t = 16)]
    pub prompts: usize,
    /// Completions per prompt (the GRPO group).
    #[arg(long, default_value_t = 8)]
    pub num_generations: usize,
    /// KL coefficient to the SFT reference.
    #[arg(long, default_value_t = 0.02)]
    pub beta: f64,
    /// Top-k truncation of the sampler (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// SFT warm-up steps.
    #[arg(long, default_value_t = 150)]
    pub sft_steps: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 2e-3)]
    pub learning_rate: f64,
    /// Device: flex, or wgpu / cuda when built with that feature.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Output folder of the plot.
    #[arg(long, default_value = "out/grpo")]
    pub out: PathBuf,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print nothing while training.
    #[arg(long)]
    pub quiet: bool,
    /// Held-out prompts for the greedy evaluation.
    #[arg(long, default_value_t = 200)]
    pub heldout: usize,
    /// Model width.
    #[arg(skip = 64usize)]
    pub d_model: usize,
}

/// `(step, metrics)` per step, and the wall time.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Per-step metrics (TRL names: `reward`, `reward_std`, `kl`, `loss`, ...).
    pub steps: Vec<(usize, BTreeMap<String, f64>)>,
    /// Held-out greedy rule rate before and after training.
    pub heldout_rule_rate: (f64, f64),
    /// Wall time.
    pub seconds: f64,
}

impl History {
    /// Mean sampled reward of the first step and of the last `k` steps.
    pub fn start_end(&self, k: usize) -> (f64, f64) {
        let r: Vec<f64> = self.steps.iter().map(|(_, m)| m["reward"]).collect();
        let tail = &r[r.len().saturating_sub(k)..];
        (r[0], tail.iter().sum::<f64>() / tail.len() as f64)
    }
}

pub fn run(args: &Args) -> Result<History, String> {
    let start = Instant::now();
    let base = device_of(&args.device)?;
    let device = base.clone().autodiff();
    base.seed(args.seed);
    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let say = |s: String| {
        if !args.quiet {
            println!("{s}")
        }
    };
    say(format!(
        "SFT warm-up: {} steps on a 40% rule / 60% copy mix (device {})",
        args.sft_steps, args.device
    ));
    // Held-out prompts first, from their own stream: neither the SFT warm-up nor the steps
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
    let reference = policy.valid();
    let sampler = SamplerConfig::new()
        .with_num_generations(args.num_generations)
        .with_max_new_tokens(PROMPT + 1)
        .with_top_k((args.top_k > 0).then_some(args.top_k))
        .with_eos_token_ids(vec![EOS])
        .with_pad_token_id(EOS)
        .init();
    let grpo = GrpoStepConfig::new(
        GrpoLossConfig::new()
            .with_loss_type(GrpoLossType::Dapo)
            .with_beta(args.beta),
    )
    .with_learning_rate(args.learning_rate)
    .try_init()
    .map_err(|e| e.to_string())?;
    let rewards = scorer();
    let mut optim = AdamConfig::new().init();
    let mut history = History::default();
    history.heldout_rule_rate.0 = rule_rate(&policy.valid(), &heldout, &base);
    say(format!(
        "GRPO: {} steps x {} prompts x {} samples, beta {}",
        args.steps, args.prompts, args.num_generations, args.beta
    ));
    let bar = progress::bar(args.steps, args.quiet);
    for step in 1..=args.steps {
        let rows = training_prompt_rows(args.prompts, &mut rng, &heldout);
        let prompts = Prompts::left_padded(&rows, EOS, &base);
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(step as u64);
        let generation = sampler
            .try_sample(&policy.valid(), &prompts, seed)
            .map_err(|e| e.to_string())?;
        let scores = rewards.score_all(&generation);
        let out = grpo
            .try_step(policy, &reference, &mut optim, &generation, &scores)
            .map_err(|e| e.to_string())?;
        policy = out.policy;
        let m = out.metrics;
        bar.set_message(format!("reward {:.3}", m["reward"]));
        bar.inc(1);
        if step % 5 == 0 || step == 1 || step == args.steps {
            let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
            bar.suspend(|| {
                say(format!(
                    "step {step:>3}  reward {:.3}  reward_std {:.3}  rewards/reversed/mean {:.3}  rewards/format/mean {:.3}  kl {:.4}  loss {:+.4}  frac_reward_zero_std {:.2}  ({:.1}s)",
                    get("reward"),
                    get("reward_std"),
                    get("rewards/reversed/mean"),
                    get("rewards/format/mean"),
                    get("kl"),
                    get("loss"),
                    get("frac_reward_zero_std"),
                    start.elapsed().as_secs_f64()
                ))
            });
        }
        history.steps.push((step, m));
    }
    bar.finish_and_clear();
    history.heldout_rule_rate.1 = rule_rate(&policy.valid(), &heldout, &base);
    history.seconds = start.elapsed().as_secs_f64();
    Ok(history)
}

pub fn main() {
    let args = Args::parse();
    let h = run(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let series = |key: &str| chart::Series {
        name: key.to_string(),
        points: h
            .steps
            .iter()
            .filter_map(|(i, m)| m.get(key).map(|v| (*i as f64, *v)))
            .collect(),
    };
    let path = args.out.join("reward.svg");
    chart::write_svg(
        &path,
        "GRPO on a tiny causal LM (rule: reverse the prompt)",
        &[
            chart::Panel {
                title: "reward".into(),
                x_label: "step".into(),
                series: vec![
                    series("reward"),
                    series("rewards/reversed/mean"),
                    series("rewards/format/mean"),
                ],
            },
            chart::Panel {
                title: "kl to the SFT reference".into(),
                x_label: "step".into(),
                series: vec![series("kl")],
            },
        ],
    )
    .expect("write plot");
    println!("done in {:.1} s; plot: {}", h.seconds, path.display());
    let (first, last) = h.start_end(5);
    let (before, after) = h.heldout_rule_rate;
    println!(
        "final: reward {first:.3} -> {last:.3}, held-out greedy rule rate {before:.3} -> {after:.3}"
    );
}
