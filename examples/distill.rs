//! On-policy distillation (GKD) of a larger teacher into a smaller student.
//!
//! `cargo run --release --example distill -- [--steps 150] [--prompts 32] [--lmbda 0.5]
//!   [--beta 0.5] [--out out/distill]`
//!
//! Task: the `dpo` family's (`common::toy`: reverse 4 digits). The teacher (a tiny transformer,
//! width 64, 2 layers) is trained first by SFT on the rule; the student (width 24, 1 layer)
//! starts from a weak SFT warm-up (40% reversed / 60% copied completions). Each step flips
//! GKD's coin (`OnPolicyDistillation`, TRL `GKDConfig` defaults `lmbda = 0.5`, `beta = 0.5`):
//! on-policy, the student samples one completion per prompt with the crate's sampler; otherwise
//! the dataset's completion (the rule) is used; the teacher scores the same tokens and the
//! student minimizes the generalized JSD over the full vocabulary at every completion position.
//!
//! Evaluation on held-out prompts (never trained on): the per-token forward KL(teacher ||
//! student) on the rule's completions, and the greedy rule rate. Writes `distill.svg`, ends with
//! `final: held-out KL(teacher||student) <a> -> <b> per token, held-out greedy rule rate <c> ->
//! <d> (teacher <t>)`.

pub mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::AdamConfig;
use burn_rlhf::generate::{Generation, OnPolicyDistillationConfig, Prompts, SamplerConfig};
use burn_rlhf::losses::DistillationLossConfig;
use clap::Parser;
use common::chart;
use common::device::device_of;
use common::progress;
use common::rng::Rng;
use common::toy::{
    EOS, PROMPT, TinyLm, heldout_prompts, rule, rule_rate, training_prompt_rows, warm_up_excluding,
};

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(about = "On-policy distillation of a tiny teacher LM into a smaller student")]
pub struct Args {
    /// Distillation steps.
    #[arg(long, default_value_t = 150)]
    pub steps: usize,
    /// Prompts per step.
    #[arg(long, default_value_t = 32)]
    pub prompts: usize,
    /// Probability that a step's completions are the student's own samples (GKD `lmbda`).
    #[arg(long, default_value_t = 0.5)]
    pub lmbda: f64,
    /// Generalized JSD interpolation: 0 forward KL, 1 reverse KL (GKD `beta`).
    #[arg(long, default_value_t = 0.5)]
    pub beta: f64,
    /// Teacher SFT steps (on the rule).
    #[arg(long, default_value_t = 400)]
    pub teacher_steps: usize,
    /// Student warm-up steps (40% rule / 60% copy).
    #[arg(long, default_value_t = 100)]
    pub student_steps: usize,
    /// Learning rate (Adam) of the distillation.
    #[arg(long, default_value_t = 2e-3)]
    pub learning_rate: f64,
    /// Device: flex, or wgpu / cuda when built with that feature.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Output folder of the plot.
    #[arg(long, default_value = "out/distill")]
    pub out: PathBuf,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Held-out prompts.
    #[arg(long, default_value_t = 200)]
    pub heldout: usize,
    /// Print nothing while training.
    #[arg(long)]
    pub quiet: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Per-step metrics (`loss`, `divergence`, `entropy`, `on_policy`, and every 10 steps
    /// `heldout_kl`).
    pub steps: Vec<(usize, BTreeMap<String, f64>)>,
    /// Held-out per-token KL(teacher || student), before and after.
    pub heldout_kl: (f64, f64),
    /// Held-out greedy rule rate of the student, before and after; the teacher's.
    pub rule_rate: (f64, f64),
    /// The teacher's held-out greedy rule rate.
    pub teacher_rule_rate: f64,
    /// Wall time.
    pub seconds: f64,
}

/// Prompt rows (`digits + SEP`) and the rule's completions (`reversed digits + EOS`).
fn rule_batch(rows: &[Vec<i64>]) -> Vec<Vec<i64>> {
    rows.iter()
        .map(|r| {
            let mut c = rule(&r[..PROMPT]);
            c.push(EOS);
            c
        })
        .collect()
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
    let heldout = heldout_prompts(args.heldout, args.seed);
    say(format!(
        "teacher: width 64, 2 layers, {} SFT steps on the rule (device {})",
        args.teacher_steps, args.device
    ));
    let teacher = warm_up_excluding(
        TinyLm::new(64, 2, &device),
        &device,
        args.teacher_steps,
        32,
        1.0,
        &mut rng,
        &heldout,
        |step, nll| say(format!("  teacher step {step:>4} nll {nll:.4}")),
    )
    .valid();
    say(format!(
        "student: width 24, 1 layer, {} warm-up steps on a 40% rule / 60% copy mix",
        args.student_steps
    ));
    let mut student = warm_up_excluding(
        TinyLm::new(24, 1, &device),
        &device,
        args.student_steps,
        32,
        0.4,
        &mut rng,
        &heldout,
        |step, nll| say(format!("  student step {step:>4} nll {nll:.4}")),
    );
    let gkd = OnPolicyDistillationConfig::new()
        .with_lmbda(args.lmbda)
        .with_loss(DistillationLossConfig::new().with_beta(args.beta))
        .with_learning_rate(args.learning_rate)
        .with_seed(args.seed)
        .try_init()
        .map_err(|e| e.to_string())?;
    // Held-out forward KL(teacher || student) per token on the rule's completions.
    let eval = OnPolicyDistillationConfig::new()
        .with_loss(DistillationLossConfig::new().with_beta(0.0))
        .try_init()
        .map_err(|e| e.to_string())?;
    let heldout_rows: Vec<Vec<i64>> = heldout
        .iter()
        .map(|p| {
            let mut r = p.clone();
            r.push(common::toy::SEP);
            r
        })
        .collect();
    let heldout_batch = Generation::try_from_completions(
        &Prompts::left_padded(&heldout_rows, EOS, &base),
        &rule_batch(&heldout_rows),
        EOS,
    )
    .map_err(|e| e.to_string())?;
    let heldout_kl = |student: &TinyLm| -> Result<f64, String> {
        let out = eval
            .try_loss(student, &teacher, &heldout_batch)
            .map_err(|e| e.to_string())?;
        Ok(out.loss.into_scalar::<f64>())
    };
    let sampler = SamplerConfig::new()
        .with_num_generations(1)
        .with_max_new_tokens(PROMPT + 1)
        .with_eos_token_ids(vec![EOS])
        .with_pad_token_id(EOS)
        .init();
    let mut history = History {
        teacher_rule_rate: rule_rate(&teacher, &heldout, &base),
        ..History::default()
    };
    history.heldout_kl.0 = heldout_kl(&student.valid())?;
    history.rule_rate.0 = rule_rate(&student.valid(), &heldout, &base);
    say(format!(
        "before: held-out KL {:.4}, student rule rate {:.3}, teacher rule rate {:.3}",
        history.heldout_kl.0, history.rule_rate.0, history.teacher_rule_rate
    ));
    history.steps.push((
        0,
        BTreeMap::from([("heldout_kl".to_string(), history.heldout_kl.0)]),
    ));
    let mut optim = AdamConfig::new().init();
    let bar = progress::bar(args.steps, args.quiet);
    for step in 1..=args.steps {
        let rows = training_prompt_rows(args.prompts, &mut rng, &heldout);
        let prompts = Prompts::left_padded(&rows, EOS, &base);
        let out = gkd
            .try_step(
                student,
                &teacher,
                &mut optim,
                &sampler,
                &prompts,
                &rule_batch(&rows),
                step as u64,
            )
            .map_err(|e| e.to_string())?;
        student = out.student;
        let mut m = out.metrics;
        if step % 10 == 0 || step == args.steps {
            let kl = heldout_kl(&student.valid())?;
            m.insert("heldout_kl".into(), kl);
            bar.suspend(|| {
                say(format!(
                    "step {step:>3}  loss {:.4}  on_policy {}  entropy {:.3}  held-out KL {kl:.4}  ({:.1}s)",
                    m["loss"],
                    m["on_policy"],
                    m["entropy"],
                    start.elapsed().as_secs_f64()
                ))
            });
        }
        bar.inc(1);
        history.steps.push((step, m));
    }
    bar.finish_and_clear();
    history.heldout_kl.1 = heldout_kl(&student.valid())?;
    history.rule_rate.1 = rule_rate(&student.valid(), &heldout, &base);
    history.seconds = start.elapsed().as_secs_f64();
    Ok(history)
}

pub fn main() {
    let args = Args::parse();
    let h = run(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let path = args.out.join("distill.svg");
    chart::write_svg(
        &path,
        "On-policy distillation (GKD) of a tiny teacher into a smaller student",
        &[
            chart::history_panel("training divergence (generalized JSD)", &h.steps, &["loss"]),
            chart::history_panel(
                "held-out KL(teacher || student) per token",
                &h.steps,
                &["heldout_kl"],
            ),
        ],
    )
    .unwrap_or_else(|e| eprintln!("could not write {}: {e}", path.display()));
    println!("wrote {} ({:.1} s)", path.display(), h.seconds);
    println!(
        "final: held-out KL(teacher||student) {:.4} -> {:.4} per token, held-out greedy rule rate {:.3} -> {:.3} (teacher {:.3})",
        h.heldout_kl.0, h.heldout_kl.1, h.rule_rate.0, h.rule_rate.1, h.teacher_rule_rate
    );
}
