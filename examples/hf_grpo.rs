//! GRPO on a Hugging Face checkpoint from TRL prompt-only data, end to end: read the prompts,
//! render them with the model's chat template as TRL 1.16's `GRPOTrainer` does, sample groups
//! of completions with the crate's sampler over the model's KV cache, score them with a reward
//! function on the decoded text, take GRPO steps, measure the reward of greedy answers on
//! held-out prompts before and after, and save the model in Hugging Face layout.
//!
//! `cargo run --release --example hf_grpo -- [--model DIR] [--data FILE] [--test FILE]
//!   [--steps 30] [--prompts 8] [--num-generations 8] [--max-new-tokens 8] [--beta 0.04]
//!   [--lr 1e-3] [--word no] [--out out/hf_grpo] [--device flex] [--seed 0]`
//!
//! Defaults run offline on the committed tiny checkpoint (`fixtures/data/tiny_chat`, which
//! samples "yes, ..." and "no, ..." answers about equally often and answers "yes" greedily)
//! and the committed conversational prompt-only dataset
//! (`fixtures/data/examples/prompts_*.jsonl`). The reward is 1 when the decoded answer starts
//! with `--word` (case-insensitive, after leading spaces; default "no", against the greedy
//! habit), else 0. With a
//! downloaded checkpoint and prompts:
//!
//! ```text
//! cargo run --release --example hf_grpo -- --model SmolLM2-135M-Instruct \
//!   --data prompts.jsonl --word Yes --max-new-tokens 16 --lr 1e-6 --prompts 4
//! ```
//!
//! Writes `reward.svg` and the trained model (`model/`, with the tokenizer files) to `--out`;
//! the last line starts with `final:`.

pub mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::Device;
use burn_rlhf::data::{ChatOptions, HfTokenizer, prepare_prompts};
use burn_rlhf::generate::{
    Completion, GrpoStepConfig, Prompts, RewardFunctions, Sampler, SamplerConfig,
};
use burn_rlhf::hf::DecoderLm;
use burn_rlhf::rl::{GrpoLossConfig, GrpoLossType};
use clap::Parser;
use common::chart;
use common::device::device_of;
use common::hf::{default_model, eos_ids, greedy_answers, load, save, train_and_test};
use common::progress;
use common::rng::Rng;

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(about = "GRPO on a Hugging Face checkpoint from TRL prompt-only data")]
pub struct Args {
    /// Checkpoint directory (config.json, safetensors, tokenizer files).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training prompts (JSONL or Parquet, TRL prompt-only format).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out prompts (default: the last eighth of `--data` when it is given, else the
    /// committed test file).
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// GRPO steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Prompts per step.
    #[arg(long, default_value_t = 8)]
    pub prompts: usize,
    /// Completions per prompt (the group).
    #[arg(long, default_value_t = 8)]
    pub num_generations: usize,
    /// Longest completion.
    #[arg(long, default_value_t = 8)]
    pub max_new_tokens: usize,
    /// KL coefficient to the reference (the loaded model).
    #[arg(long, default_value_t = 0.04)]
    pub beta: f64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// The reward pays for answers that start with this word.
    #[arg(long, default_value = "no")]
    pub word: String,
    /// Output folder (plot and trained model).
    #[arg(long, default_value = "out/hf_grpo")]
    pub out: PathBuf,
    /// Device: flex, or wgpu / cuda when built with that feature.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Seed (prompt order and sampling).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print nothing while training.
    #[arg(long)]
    pub quiet: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Held-out prompts.
    pub heldout_prompts: usize,
    /// Mean reward of greedy answers on the held-out prompts, before and after.
    pub heldout_reward: (f64, f64),
    /// A greedy held-out answer before and after (decoded).
    pub example_answer: (String, String),
    /// Mean sampled reward of the first step and of the last five.
    pub train_reward: (f64, f64),
    /// Metrics per step.
    pub history: Vec<(usize, BTreeMap<String, f64>)>,
    /// Where the model was saved.
    pub saved: PathBuf,
    /// Wall time.
    pub seconds: f64,
}

/// 1 when the decoded completion starts with `word` (case-insensitive), else 0.
fn reward_of(tokenizer: &HfTokenizer, ids: &[i64], word: &str) -> f64 {
    let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
    let text = tokenizer.decode(&ids, true).unwrap_or_default();
    f64::from(u8::from(
        text.trim_start()
            .to_lowercase()
            .starts_with(&word.to_lowercase()),
    ))
}

/// Greedy answers of `model` to `prompts`: mean reward and the first answer.
fn greedy_reward(
    model: &DecoderLm,
    tokenizer: &HfTokenizer,
    prompts: &[Vec<i64>],
    args: &Args,
    device: &Device,
) -> Result<(f64, String), String> {
    let answers = greedy_answers(model, tokenizer, prompts, args.max_new_tokens, device)?;
    let word = args.word.to_lowercase();
    let hits = answers
        .iter()
        .filter(|a| a.trim_start().to_lowercase().starts_with(&word))
        .count();
    Ok((
        hits as f64 / answers.len().max(1) as f64,
        answers.first().cloned().unwrap_or_default(),
    ))
}

/// Trains and evaluates; see the module docs.
pub fn run(args: &Args) -> Result<Summary, String> {
    let start = Instant::now();
    let inner = device_of(&args.device)?;
    let device = inner.clone().autodiff();
    inner.seed(args.seed);
    let model_dir = args.model.clone().unwrap_or_else(default_model);
    let (train_rows, test_rows) =
        train_and_test(args.data.as_deref(), args.test.as_deref(), "prompts")?;
    let say = |s: String| {
        if !args.quiet {
            println!("{s}")
        }
    };
    let (mut policy, tokenizer) = load(&model_dir, &device)?;
    let tokenizer = Arc::new(tokenizer);
    let ref_model = policy.valid();
    let chat = ChatOptions::default();
    let to_i64 = |rows: Vec<Vec<u32>>| -> Vec<Vec<i64>> {
        rows.into_iter()
            .map(|r| r.into_iter().map(i64::from).collect())
            .collect()
    };
    let train = to_i64(
        prepare_prompts(&tokenizer, &train_rows, &chat)
            .map_err(|e| e.to_string())?
            .rows,
    );
    let test = to_i64(
        prepare_prompts(&tokenizer, &test_rows, &chat)
            .map_err(|e| e.to_string())?
            .rows,
    );
    let pad = i64::from(tokenizer.pad_token_id().ok_or("no pad or EOS token")?);
    let eos = eos_ids(&policy, &tokenizer);
    say(format!(
        "{}: {} layers, hidden {}; {} training prompts, {} held-out; reward: the answer starts with {:?}",
        model_dir.display(),
        policy.config().num_hidden_layers,
        policy.config().hidden_size,
        train.len(),
        test.len(),
        args.word
    ));
    let mut summary = Summary {
        heldout_prompts: test.len(),
        ..Summary::default()
    };
    let (before, answer) = greedy_reward(&ref_model, &tokenizer, &test, args, &inner)?;
    summary.heldout_reward.0 = before;
    summary.example_answer.0 = answer;

    let sampler: Sampler = SamplerConfig::new()
        .with_num_generations(args.num_generations)
        .with_max_new_tokens(args.max_new_tokens)
        .with_eos_token_ids(eos.clone())
        .with_pad_token_id(pad)
        .try_init()
        .map_err(|e| e.to_string())?;
    let grpo = GrpoStepConfig::new(
        GrpoLossConfig::new()
            .with_loss_type(GrpoLossType::Dapo)
            .with_beta(args.beta),
    )
    .with_learning_rate(args.lr)
    .try_init()
    .map_err(|e| e.to_string())?;
    let (word, scorer_tokenizer) = (args.word.clone(), Arc::clone(&tokenizer));
    let rewards = RewardFunctions::new().with("starts_with_word", 1.0, move |c: &Completion| {
        Some(reward_of(&scorer_tokenizer, c.completion, &word))
    });
    let mut optim = AdamConfig::new().init();
    let mut rng = Rng::new(args.seed);
    let bar = progress::bar(args.steps, args.quiet);
    for step in 1..=args.steps {
        let rows: Vec<Vec<i64>> = (0..args.prompts)
            .map(|_| train[rng.below(train.len())].clone())
            .collect();
        let prompts = Prompts::try_left_padded(&rows, pad, &inner).map_err(|e| e.to_string())?;
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(step as u64);
        let generation = sampler
            .try_sample_cached(&policy.valid(), &prompts, seed)
            .map_err(|e| e.to_string())?;
        let scores = rewards.score_all(&generation);
        let out = grpo
            .try_step(policy, &ref_model, &mut optim, &generation, &scores)
            .map_err(|e| e.to_string())?;
        policy = out.policy;
        let metrics = out.metrics;
        let get = |k: &str| metrics.get(k).copied().unwrap_or(f64::NAN);
        bar.set_message(format!("reward {:.3}", get("reward")));
        bar.inc(1);
        if step % 5 == 0 || step == 1 || step == args.steps {
            bar.suspend(|| {
                say(format!(
                    "step {step:>3}  reward {:.3}  reward_std {:.3}  kl {:.4}  loss {:+.4}  completions/mean_length {:.1}  ({:.1}s)",
                    get("reward"),
                    get("reward_std"),
                    get("kl"),
                    get("loss"),
                    get("completions/mean_length"),
                    start.elapsed().as_secs_f64()
                ))
            });
        }
        summary.history.push((step, metrics));
    }
    bar.finish_and_clear();
    let rewards_seen: Vec<f64> = summary.history.iter().map(|(_, m)| m["reward"]).collect();
    let tail = &rewards_seen[rewards_seen.len().saturating_sub(5)..];
    summary.train_reward = (
        rewards_seen.first().copied().unwrap_or(f64::NAN),
        tail.iter().sum::<f64>() / tail.len().max(1) as f64,
    );
    let trained = policy.valid();
    let (after, answer) = greedy_reward(&trained, &tokenizer, &test, args, &inner)?;
    summary.heldout_reward.1 = after;
    summary.example_answer.1 = answer;
    summary.saved = save(&trained, &model_dir, &args.out.join("model"))?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

pub fn main() {
    let args = Args::parse();
    let s = run(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let path = args.out.join("reward.svg");
    chart::write_svg(
        &path,
        "GRPO on a Hugging Face checkpoint",
        &[
            chart::history_panel("reward (sampled)", &s.history, &["reward"]),
            chart::history_panel("kl to the reference", &s.history, &["kl"]),
        ],
    )
    .expect("write plot");
    println!(
        "done in {:.1} s; plot {}; model saved to {}",
        s.seconds,
        path.display(),
        s.saved.display()
    );
    println!(
        "held-out greedy answer: before {:?}, after {:?}",
        s.example_answer.0, s.example_answer.1
    );
    println!(
        "final: sampled reward {:.3} -> {:.3}, held-out greedy reward ({} prompts) {:.3} -> {:.3}",
        s.train_reward.0,
        s.train_reward.1,
        s.heldout_prompts,
        s.heldout_reward.0,
        s.heldout_reward.1
    );
}
