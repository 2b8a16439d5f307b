//! DPO (and every preference-loss family) on a tiny causal transformer, end to end.
//!
//! `cargo run --release --example dpo -- [--loss sigmoid] [--steps 150] [--device flex]
//!   [--out out/dpo] [--precompute-ref] [--seed 0]`
//!
//! The task: a prompt is 4 random digits; the *rule* is that the completion is the prompt
//! reversed. The SFT warm-up (done here, first) trains on a mix where 40% of the completions
//! reverse the prompt and 60% copy it, so the warmed-up model (the frozen reference, a
//! `valid()` copy) greedily copies. DPO pairs have the reversed completion as chosen and a
//! copy or a near miss (one digit changed) as rejected. The policy must learn, from
//! preferences alone, to reverse: the run prints held-out reward accuracy and the greedy
//! rule-following rate of the policy and of the reference, and writes `training.svg` (loss,
//! rewards/accuracies, rewards/margins) to `--out`.
//!
//! Log-probs come from the fused LM-head op (hidden states x head weight, no `[N, V]`
//! logits); the loss is the crate's shared loss core for the chosen family. Greedy completions
//! come from the crate's sampler ([`burn_rlhf::generate`]): `TinyLm` implements
//! `CausalLm` (and `CachedCausalLm` through burn's autoregressive encoder cache). The model,
//! the task's data, the warm-up and the evaluations are `common::toy`'s, shared with the
//! other examples of this task.

pub mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::{Bool, Tensor, TensorData};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::{
    BcoLossConfig, CpoLossConfig, CpoLossType, DpoLossConfig, DpoLossType, KtoLossConfig,
    LossOutput, OrpoLossConfig, PreferenceBatch, RunningMoments, UnpairedBatch, kto_kl_estimate,
};
use clap::Parser;
use common::chart;
use common::device::device_of;
use common::progress;
use common::rng::Rng;
use common::toy::{
    PROMPT, TinyLm, gather, heldout_reward_accuracy, ints, labels_of, make_pairs, rule_rate,
    step_optim, warm_up,
};

// ----------------------------------------------------------------------------- losses

/// The `--loss` values, by family.
pub const LOSSES: &[&str] = &[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
    "rpo",
    "cdpo",
    "cpo",
    "simpo",
    "alphapo",
    "orpo",
    "kto",
    "apo_zero_unpaired",
    "bco",
];

enum Objective {
    Dpo(burn_rlhf::losses::DpoLoss),
    Cpo(burn_rlhf::losses::CpoLoss),
    Orpo(burn_rlhf::losses::OrpoLoss),
    Kto(burn_rlhf::losses::KtoLoss, bool),
    Bco(burn_rlhf::losses::BcoLoss),
}

fn objective(name: &str) -> Result<Objective, String> {
    let dpo = |t: DpoLossType| DpoLossConfig::new().with_loss_type(vec![t]);
    let built = match name {
        "sigmoid" => dpo(DpoLossType::Sigmoid).try_init().map(Objective::Dpo),
        "hinge" => dpo(DpoLossType::Hinge).try_init().map(Objective::Dpo),
        "ipo" => dpo(DpoLossType::Ipo).try_init().map(Objective::Dpo),
        "exo_pair" => dpo(DpoLossType::ExoPair)
            .with_label_smoothing(1e-3)
            .try_init()
            .map(Objective::Dpo),
        "nca_pair" => dpo(DpoLossType::NcaPair).try_init().map(Objective::Dpo),
        "robust" => dpo(DpoLossType::Robust)
            .with_label_smoothing(0.1)
            .try_init()
            .map(Objective::Dpo),
        "bco_pair" => dpo(DpoLossType::BcoPair).try_init().map(Objective::Dpo),
        "sppo_hard" => dpo(DpoLossType::SppoHard).try_init().map(Objective::Dpo),
        "aot" => dpo(DpoLossType::Aot).try_init().map(Objective::Dpo),
        "aot_unpaired" => dpo(DpoLossType::AotUnpaired).try_init().map(Objective::Dpo),
        "apo_zero" => dpo(DpoLossType::ApoZero).try_init().map(Objective::Dpo),
        "apo_down" => dpo(DpoLossType::ApoDown).try_init().map(Objective::Dpo),
        "discopop" => dpo(DpoLossType::Discopop).try_init().map(Objective::Dpo),
        "sigmoid_norm" => dpo(DpoLossType::SigmoidNorm).try_init().map(Objective::Dpo),
        "rpo" => DpoLossConfig::rpo(1.0).try_init().map(Objective::Dpo),
        "cdpo" => dpo(DpoLossType::Sigmoid)
            .with_cdpo_label_smoothing(0.1)
            .try_init()
            .map(Objective::Dpo),
        "cpo" => CpoLossConfig::new().try_init().map(Objective::Cpo),
        "simpo" => CpoLossConfig::simpo().try_init().map(Objective::Cpo),
        "alphapo" => CpoLossConfig::alphapo(0.25)
            .with_loss_type(CpoLossType::Simpo)
            .try_init()
            .map(Objective::Cpo),
        "orpo" => OrpoLossConfig::new().try_init().map(Objective::Orpo),
        "kto" => KtoLossConfig::new()
            .try_init()
            .map(|l| Objective::Kto(l, true)),
        "apo_zero_unpaired" => KtoLossConfig::new()
            .with_loss_type(burn_rlhf::losses::KtoLossType::ApoZeroUnpaired)
            .try_init()
            .map(|l| Objective::Kto(l, false)),
        "bco" => BcoLossConfig::new().try_init().map(Objective::Bco),
        other => {
            return Err(format!(
                "--loss {other}: unknown loss (one of: {})",
                LOSSES.join(", ")
            ));
        }
    };
    built.map_err(|e| format!("--loss {name}: {e}"))
}

// ----------------------------------------------------------------------------- training

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(about = "DPO (or any preference loss) on a tiny causal LM")]
pub struct Args {
    /// Loss family (see LOSSES).
    #[arg(long, default_value = "sigmoid")]
    pub loss: String,
    /// Preference-optimization steps.
    #[arg(long, default_value_t = 150)]
    pub steps: usize,
    /// SFT warm-up steps.
    #[arg(long, default_value_t = 150)]
    pub sft_steps: usize,
    /// Pairs per step (at least 2).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Device: flex, or wgpu / cuda when built with that feature.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Output folder of the plot.
    #[arg(long, default_value = "out/dpo")]
    pub out: PathBuf,
    /// Precompute reference log-probs once instead of running the reference each step.
    #[arg(long)]
    pub precompute_ref: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print nothing while training.
    #[arg(long)]
    pub quiet: bool,
    /// Held-out pairs and prompts for evaluation.
    #[arg(skip = 256usize)]
    pub heldout: usize,
    /// Model width.
    #[arg(skip = 64usize)]
    pub d_model: usize,
}

impl Default for Args {
    fn default() -> Self {
        Args::parse_from(["dpo"])
    }
}

impl Args {
    /// Parses `argv` (program name first); errors name the flag.
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let mut a = Args::try_parse_from(args).map_err(|e| match e.kind() {
            clap::error::ErrorKind::UnknownArgument => {
                format!(
                    "unknown flag: {}",
                    e.to_string().trim_start_matches("error: ")
                )
            }
            _ => e.to_string().trim_start_matches("error: ").to_string(),
        })?;
        a.batch = a.batch.max(2);
        objective(&a.loss)?;
        Ok(a)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub first_loss: f64,
    pub last_loss: f64,
    pub heldout_reward_accuracy: f64,
    pub policy_rule_rate: f64,
    pub reference_rule_rate: f64,
    pub history: Vec<(usize, BTreeMap<String, f64>)>,
    pub seconds: f64,
    pub first_step_loss_precomputed_ref: Option<f64>,
}

fn split(g: &GatheredLogps, n: usize) -> (GatheredLogps, GatheredLogps) {
    let part = |s: usize| GatheredLogps {
        logps: g.logps.clone().narrow(0, s, n),
        mask: g.mask.clone().narrow(0, s, n),
    };
    (part(0), part(n))
}

fn preference_loss(
    obj: &Objective,
    chosen: GatheredLogps,
    rejected: GatheredLogps,
    ref_c: Tensor<1>,
    ref_r: Tensor<1>,
    kl: Option<Tensor<1>>,
    running: &mut RunningMoments,
) -> LossOutput {
    let n = chosen.logps.dims()[0];
    match obj {
        Objective::Dpo(loss) => loss
            .forward(&PreferenceBatch::from_tokens(chosen, rejected).with_ref_logps(ref_c, ref_r)),
        Objective::Cpo(loss) => loss.forward(&PreferenceBatch::from_tokens(chosen, rejected)),
        Objective::Orpo(loss) => loss.forward(&PreferenceBatch::from_tokens(chosen, rejected)),
        Objective::Kto(_, _) | Objective::Bco(_) => {
            let device = chosen.logps.device();
            let logps = Tensor::cat(vec![chosen.sum(), rejected.sum()], 0);
            let refs = Tensor::cat(vec![ref_c, ref_r], 0);
            let desirable = Tensor::cat(
                vec![
                    Tensor::<1, Bool>::full([n], true, &device),
                    Tensor::<1, Bool>::full([n], false, &device),
                ],
                0,
            );
            let batch = UnpairedBatch::new(logps, refs, desirable);
            match obj {
                Objective::Kto(loss, with_kl) => {
                    let batch = match (with_kl, kl) {
                        (true, Some(kl)) => batch.with_kl(kl),
                        _ => batch,
                    };
                    loss.forward(&batch)
                }
                Objective::Bco(loss) => loss.forward(&batch, running, true),
                _ => unreachable!(),
            }
        }
    }
}

pub fn run(args: &Args) -> Result<Summary, String> {
    let start = Instant::now();
    let base = device_of(&args.device)?;
    let device = base.clone().autodiff();
    base.seed(args.seed);
    let mut rng = Rng::new(args.seed);
    let obj = objective(&args.loss)?;
    let say = |s: String| {
        if !args.quiet {
            println!("{s}")
        }
    };

    // --- SFT warm-up on a 40% reverse / 60% copy mix.
    say(format!(
        "SFT warm-up: {} steps on a 40% rule / 60% copy mix (device {})",
        args.sft_steps, args.device
    ));
    let model = warm_up(
        TinyLm::new(args.d_model, 2, &device),
        &device,
        args.sft_steps,
        args.batch,
        0.4,
        &mut rng,
        |step, nll| say(format!("  sft step {step:>4} nll {nll:.4}")),
    );
    let mut model = model;
    let reference = model.valid(); // frozen copy, no autodiff

    // --- Data: training pairs (with optional precomputed reference log-probs), held-out pairs.
    let train = make_pairs(args.steps * args.batch, &mut rng);
    let heldout = make_pairs(args.heldout, &mut rng);
    let heldout_prompts: Vec<Vec<i64>> = heldout
        .chosen
        .iter()
        .map(|s| s[..PROMPT].to_vec())
        .collect();
    let ref_logps = |rows: &[Vec<i64>]| -> Tensor<1> {
        let inner = base.clone();
        gather(&reference, ints(rows, &inner), labels_of(rows, &inner)).sum()
    };
    let precomputed: Option<(Vec<f64>, Vec<f64>)> = args.precompute_ref.then(|| {
        let to_vec = |t: Tensor<1>| {
            t.into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap()
        };
        (
            to_vec(ref_logps(&train.chosen)),
            to_vec(ref_logps(&train.rejected)),
        )
    });
    if precomputed.is_some() {
        say(format!(
            "reference log-probs precomputed for {} pairs; the reference model is not used in training",
            train.chosen.len()
        ));
    }

    // --- Preference optimization.
    say(format!(
        "{} on {} pairs, batch {}, {} steps",
        args.loss,
        train.chosen.len(),
        args.batch,
        args.steps
    ));
    let mut optim = AdamConfig::new().init();
    let mut running = RunningMoments::default();
    let mut summary = Summary::default();
    let bar = progress::bar(args.steps, args.quiet);
    for step in 1..=args.steps {
        let lo = (step - 1) * args.batch;
        let chosen = &train.chosen[lo..lo + args.batch];
        let rejected = &train.rejected[lo..lo + args.batch];
        let both: Vec<Vec<i64>> = chosen.iter().chain(rejected).cloned().collect();
        let g = gather(&model, ints(&both, &device), labels_of(&both, &device));
        let (gc, gr) = split(&g, args.batch);
        let (ref_c, ref_r) = match &precomputed {
            Some((c, r)) => (
                Tensor::<1>::from_data(
                    TensorData::new(c[lo..lo + args.batch].to_vec(), [args.batch]),
                    &device,
                ),
                Tensor::<1>::from_data(
                    TensorData::new(r[lo..lo + args.batch].to_vec(), [args.batch]),
                    &device,
                ),
            ),
            None => (ref_logps(chosen).autodiff(), ref_logps(rejected).autodiff()),
        };
        // KTO's KL term: the policy and reference on mismatched (prompt, completion) pairs.
        let kl = matches!(obj, Objective::Kto(_, true)).then(|| {
            let shifted: Vec<Vec<i64>> = (0..args.batch)
                .map(|i| {
                    let other = &chosen[(i + 1) % args.batch];
                    let mut s = chosen[i][..=PROMPT].to_vec();
                    s.extend_from_slice(&other[PROMPT + 1..]);
                    s
                })
                .collect();
            let policy = gather(
                &model,
                ints(&shifted, &device),
                labels_of(&shifted, &device),
            )
            .sum()
            .detach();
            kto_kl_estimate(policy, ref_logps(&shifted).autodiff())
        });
        let out = preference_loss(&obj, gc, gr, ref_c, ref_r, kl, &mut running);
        let loss_value = out.loss.clone().into_scalar::<f64>();
        if step == 1 {
            summary.first_loss = loss_value;
        }
        summary.last_loss = loss_value;
        let mut metrics = out.metrics.to_host();
        metrics.insert("loss".into(), loss_value);
        if step % 10 == 0 || step == 1 || step == args.steps {
            bar.suspend(|| say(progress::line(step, args.steps, &metrics, loss_value)));
        }
        bar.set_message(format!("loss {loss_value:.4}"));
        bar.inc(1);
        summary.history.push((step, metrics));
        model = step_optim(model, &mut optim, 1e-3, out.loss);
    }

    bar.finish_and_clear();

    // --- Evaluation on held-out pairs and prompts.
    let policy = model.valid();
    summary.heldout_reward_accuracy = heldout_reward_accuracy(
        &policy,
        &reference,
        &heldout.chosen,
        &heldout.rejected,
        &base,
    );
    summary.policy_rule_rate = rule_rate(&policy, &heldout_prompts, &base);
    summary.reference_rule_rate = rule_rate(&reference, &heldout_prompts, &base);
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn write_plot(args: &Args, s: &Summary) -> std::io::Result<PathBuf> {
    let series = |key: &str| chart::Series {
        name: key.to_string(),
        points: s
            .history
            .iter()
            .filter_map(|(i, m)| m.get(key).map(|v| (*i as f64, *v)))
            .collect(),
    };
    let panel = |title: &str, keys: &[&str]| chart::Panel {
        title: title.to_string(),
        x_label: "step".into(),
        series: keys.iter().map(|k| series(k)).collect(),
    };
    let path = args.out.join("training.svg");
    chart::write_svg(
        &path,
        &format!(
            "{} on a tiny causal LM (rule: reverse the prompt)",
            args.loss
        ),
        &[
            panel("loss", &["loss"]),
            panel("rewards/accuracies", &["rewards/accuracies"]),
            panel(
                "rewards",
                &["rewards/margins", "rewards/chosen", "rewards/rejected"],
            ),
        ],
    )?;
    Ok(path)
}

pub fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let args = Args::parse(&argv).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let summary = run(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let path = write_plot(&args, &summary).expect("write plot");
    println!(
        "done in {:.1} s: loss {:.4} -> {:.4}",
        summary.seconds, summary.first_loss, summary.last_loss
    );
    println!(
        "held-out reward accuracy (policy vs reference implicit reward): {:.3}",
        summary.heldout_reward_accuracy
    );
    println!(
        "greedy completions following the rule: policy {:.3}, reference {:.3}",
        summary.policy_rule_rate, summary.reference_rule_rate
    );
    println!("plot: {}", path.display());
}
