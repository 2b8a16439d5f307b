//! DPO on a Hugging Face checkpoint with a TRL preference dataset, end to end: read the JSONL
//! rows, tokenize them exactly as TRL 1.16's `DPOTrainer` does (chat template, common-prefix
//! split, `max_length`), train, measure held-out reward accuracy before and after, and save
//! the model in Hugging Face layout.
//!
//! `cargo run --release --example hf_dpo -- [--model DIR] [--data FILE] [--test FILE]
//!   [--loss sigmoid] [--beta 0.1] [--steps 40] [--batch 8] [--lr 1e-4] [--max-length 1024]
//!   [--lora RANK] [--out out/hf_dpo] [--device flex] [--seed 0]`
//!
//! Defaults run offline on the committed tiny checkpoint (`fixtures/data/tiny_chat`, a
//! 2-layer Llama-architecture chat model that answers yes/no questions either way) and a small
//! conversational preference dataset in TRL's format (`fixtures/data/examples/`) whose chosen
//! answers say "yes" and rejected ones "no". With a downloaded checkpoint and dataset:
//!
//! ```text
//! cargo run --release --example hf_dpo -- --model SmolLM2-135M-Instruct \
//!   --data ultrafeedback_binarized/train.jsonl --test ultrafeedback_binarized/test.jsonl \
//!   --lr 5e-7 --batch 4 --max-length 512 --steps 200
//! ```
//!
//! `--loss` takes any of TRL's DPO `loss_type`s (`sigmoid`, `hinge`, `ipo`, `exo_pair`,
//! `nca_pair`, `robust`, `bco_pair`, `sppo_hard`, `aot`, `aot_unpaired`, `apo_zero`,
//! `apo_down`, `discopop`, `sigmoid_norm`, ...). The reference is the loaded model, frozen (or,
//! with `--lora`, the same weights without adapters). Writes `training.svg` and the trained
//! model (`model/`, with the tokenizer files) to `--out`; the last line starts with `final:`.

pub mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use burn_rlhf::data::{
    ChatOptions, Collator, PreferenceTokens, TruncationMode, prepare_preference,
};
use burn_rlhf::hf::DecoderLm;
use burn_rlhf::losses::{DpoLossConfig, DpoLossType, PreferenceBatch};
use clap::Parser;
use common::chart;
use common::device::device_of;
use common::hf::{
    batch_logps, default_model, greedy_answers, host, load, save, sequence_logps, train_and_test,
};
use common::progress;
use common::rng::Rng;

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(about = "DPO on a Hugging Face checkpoint with a TRL preference dataset")]
pub struct Args {
    /// Checkpoint directory (config.json, safetensors, tokenizer files).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training rows (JSONL or Parquet, TRL preference format, standard or conversational).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out rows for the reward accuracy (default: the last eighth of `--data` when
    /// `--data` is given, else the committed test file).
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// TRL `loss_type`.
    #[arg(long, default_value = "sigmoid")]
    pub loss: String,
    /// DPO beta.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// TRL's `max_length` (prompt + completion), `keep_start` truncation.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Train LoRA adapters of this rank on q/k/v/o instead of all weights.
    #[arg(long)]
    pub lora: Option<usize>,
    /// Output folder (plot and trained model).
    #[arg(long, default_value = "out/hf_dpo")]
    pub out: PathBuf,
    /// Device: flex, or wgpu / cuda when built with that feature.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Seed (batch order).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print nothing while training.
    #[arg(long)]
    pub quiet: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Held-out pairs evaluated.
    pub heldout_pairs: usize,
    /// Held-out rows TRL's preprocessing dropped (prompt fills `max_length`).
    pub dropped: usize,
    /// Share of held-out pairs whose chosen completion the model prefers (sequence log-prob),
    /// before and after training.
    pub preference_before: f64,
    /// After training.
    pub preference_after: f64,
    /// TRL's `rewards/accuracies` on the held-out pairs after training (implicit reward
    /// `beta * (log pi - log pi_ref)`, chosen > rejected). It is 0 before training: the
    /// policy is the reference, so every reward is 0.
    pub reward_accuracy_after: f64,
    /// First and last training loss.
    pub loss: (f64, f64),
    /// Metrics per step.
    pub history: Vec<(usize, BTreeMap<String, f64>)>,
    /// The greedy answer to the first held-out prompt, before and after.
    pub example_answer: (String, String),
    /// Where the model was saved.
    pub saved: PathBuf,
    /// Wall time.
    pub seconds: f64,
}

/// Held-out preference (log-prob of chosen > rejected) and, with a reference, TRL's reward
/// accuracy.
fn evaluate(
    policy: &DecoderLm,
    ref_model: Option<&DecoderLm>,
    pairs: &[PreferenceTokens],
    collator: &Collator,
    device: &Device,
) -> (f64, f64) {
    let (mut preferred, mut accurate) = (0usize, 0usize);
    for chunk in pairs.chunks(8) {
        let batch = collator.preference(chunk);
        let n = chunk.len();
        let logps = sequence_logps(policy, &batch, device);
        let refs = ref_model.map(|m| sequence_logps(m, &batch, device));
        for i in 0..n {
            preferred += usize::from(logps[i] > logps[n + i]);
            if let Some(refs) = &refs {
                let margin = (logps[i] - refs[i]) - (logps[n + i] - refs[n + i]);
                accurate += usize::from(margin > 0.0);
            }
        }
    }
    let total = pairs.len().max(1) as f64;
    (preferred as f64 / total, accurate as f64 / total)
}

/// Trains and evaluates; see the module docs.
pub fn run(args: &Args) -> Result<Summary, String> {
    let start = Instant::now();
    let inner = device_of(&args.device)?;
    let device = inner.clone().autodiff();
    let model_dir = args.model.clone().unwrap_or_else(default_model);
    let (train_rows, test_rows) =
        train_and_test(args.data.as_deref(), args.test.as_deref(), "preference")?;
    let say = |s: String| {
        if !args.quiet {
            println!("{s}")
        }
    };
    let loss_type: DpoLossType =
        serde_json::from_value(serde_json::Value::String(args.loss.clone()))
            .map_err(|_| format!("--loss {}: not a TRL DPO loss_type", args.loss))?;
    let dpo = DpoLossConfig::new()
        .with_loss_type(vec![loss_type])
        .with_beta(args.beta)
        .try_init()
        .map_err(|e| format!("--loss {}: {e}", args.loss))?;

    let (model, tokenizer) = load(&model_dir, &device)?;
    let (mut policy, ref_model) = match args.lora {
        Some(rank) => {
            let (policy, ref_model) = model.with_lora(
                rank,
                2.0 * rank as f64,
                &["q_proj", "k_proj", "v_proj", "o_proj"],
            );
            (policy, ref_model)
        }
        None => {
            let ref_model = model.valid();
            (model, ref_model)
        }
    };
    let chat = ChatOptions::default();
    let max_length = Some(args.max_length);
    let train = prepare_preference(
        &tokenizer,
        &train_rows,
        &chat,
        max_length,
        TruncationMode::KeepStart,
    )
    .map_err(|e| e.to_string())?;
    let test = prepare_preference(
        &tokenizer,
        &test_rows,
        &chat,
        max_length,
        TruncationMode::KeepStart,
    )
    .map_err(|e| e.to_string())?;
    if train.rows.is_empty() || test.rows.is_empty() {
        return Err("no training or held-out pair left after preprocessing".into());
    }
    let pad = tokenizer
        .pad_token_id()
        .ok_or("the tokenizer has neither a pad nor an EOS token")?;
    let collator = Collator {
        max_length,
        ..Collator::new(pad)
    };
    say(format!(
        "{}: {} layers, hidden {}, vocab {}; {} training pairs, {} held-out ({} dropped by max_length {})",
        model_dir.display(),
        policy.config().num_hidden_layers,
        policy.config().hidden_size,
        policy.config().vocab_size,
        train.rows.len(),
        test.rows.len(),
        train.dropped.len() + test.dropped.len(),
        args.max_length,
    ));

    let mut summary = Summary {
        heldout_pairs: test.rows.len(),
        dropped: test.dropped.len(),
        ..Summary::default()
    };
    summary.preference_before = evaluate(&ref_model, None, &test.rows, &collator, &inner).0;
    let first_prompt = vec![
        test.rows[0]
            .prompt_ids
            .iter()
            .map(|&id| i64::from(id))
            .collect::<Vec<i64>>(),
    ];
    let answer = |m: &DecoderLm| -> Result<String, String> {
        Ok(greedy_answers(m, &tokenizer, &first_prompt, 16, &inner)?.remove(0))
    };
    summary.example_answer.0 = answer(&ref_model)?;
    say(format!(
        "held-out: the model prefers the chosen answer in {:.3} of pairs before training",
        summary.preference_before
    ));

    let mut optim = AdamConfig::new().init();
    let mut rng = Rng::new(args.seed);
    let mut order: Vec<usize> = Vec::new();
    let bar = progress::bar(args.steps, args.quiet);
    for step in 1..=args.steps {
        let picked: Vec<PreferenceTokens> = (0..args.batch)
            .map(|_| {
                if order.is_empty() {
                    order = (0..train.rows.len()).collect();
                    for i in (1..order.len()).rev() {
                        order.swap(i, rng.below(i + 1));
                    }
                }
                train.rows[order.pop().unwrap_or(0)].clone()
            })
            .collect();
        let batch = collator.preference(&picked);
        let stacked = batch_logps(&policy, &batch, &device);
        let refs = sequence_logps(&ref_model, &batch, &inner);
        let refs = Tensor::<1>::from_data(TensorData::new(refs, [2 * picked.len()]), &device);
        let out = dpo.forward(&PreferenceBatch::from_stacked(stacked).with_stacked_ref_logps(refs));
        let loss = host(out.loss.clone().reshape([1]))[0];
        let mut metrics = out.metrics.to_host();
        metrics.insert("loss".into(), loss);
        if step == 1 {
            summary.loss.0 = loss;
        }
        summary.loss.1 = loss;
        if step % 5 == 0 || step == 1 || step == args.steps {
            bar.suspend(|| say(progress::line(step, args.steps, &metrics, loss)));
        }
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
        summary.history.push((step, metrics));
        let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
        policy = optim.step(args.lr, policy, grads);
    }
    bar.finish_and_clear();

    let trained = policy.valid();
    let (preference, accuracy) =
        evaluate(&trained, Some(&ref_model), &test.rows, &collator, &inner);
    summary.preference_after = preference;
    summary.reward_accuracy_after = accuracy;
    summary.example_answer.1 = answer(&trained)?;
    summary.saved = save(&trained, &model_dir, &args.out.join("model"))?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn write_plot(args: &Args, s: &Summary) -> std::io::Result<PathBuf> {
    let path = args.out.join("training.svg");
    chart::write_svg(
        &path,
        &format!("{} on a Hugging Face checkpoint", args.loss),
        &[
            chart::history_panel("loss", &s.history, &["loss"]),
            chart::history_panel("rewards/accuracies", &s.history, &["rewards/accuracies"]),
            chart::history_panel(
                "rewards",
                &s.history,
                &["rewards/margins", "rewards/chosen", "rewards/rejected"],
            ),
        ],
    )?;
    Ok(path)
}

pub fn main() {
    let args = Args::parse();
    let summary = run(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let plot = write_plot(&args, &summary).expect("write plot");
    println!(
        "done in {:.1} s: loss {:.4} -> {:.4}; plot {}; model saved to {}",
        summary.seconds,
        summary.loss.0,
        summary.loss.1,
        plot.display(),
        summary.saved.display()
    );
    println!(
        "greedy answer to the first held-out prompt: before {:?}, after {:?}",
        summary.example_answer.0, summary.example_answer.1
    );
    println!(
        "final: held-out pairs {}: chosen preferred {:.3} -> {:.3}, rewards/accuracies 0.000 -> {:.3}",
        summary.heldout_pairs,
        summary.preference_before,
        summary.preference_after,
        summary.reward_accuracy_after
    );
}
