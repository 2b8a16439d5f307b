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
//! [`CausalLm`] (and [`CachedCausalLm`] through burn's autoregressive encoder cache).
#![allow(dead_code)]

#[path = "common/device.rs"]
mod device_arg;
#[path = "common/chart.rs"]
pub mod plot;
#[path = "common/rng.rs"]
mod rng;
pub use rng::Rng;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::TransformerEncoderAutoregressiveCache;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_rlhf::generate::{CachedCausalLm, CausalLm, Prompts, SamplerConfig, position_ids};
use burn_rlhf::logprobs::FusedLogprobsConfig;
use burn_rlhf::losses::{
    BcoLossConfig, CpoLossConfig, CpoLossType, DpoLossConfig, DpoLossType, KtoLossConfig,
    LossOutput, OrpoLossConfig, PreferenceBatch, RunningMoments, UnpairedBatch, kto_kl_estimate,
};
use burn_rlhf::{GatheredLogprobs, IGNORE_INDEX, Normalizer};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

pub const DIGITS: usize = 10;
pub const SEP: i64 = 10;
pub const EOS: i64 = 11;
pub const VOCAB: usize = 12;
pub const PROMPT: usize = 4;
pub const SEQ: usize = PROMPT + 1 + PROMPT + 1; // prompt SEP completion EOS

// ----------------------------------------------------------------------------- model

#[derive(Module, Debug)]
pub struct TinyLm {
    tokens: Embedding,
    positions: Embedding,
    encoder: TransformerEncoder,
    lm_head: Linear,
}

impl TinyLm {
    pub fn new(d_model: usize, layers: usize, device: &Device) -> Self {
        Self::with_max_len(d_model, layers, SEQ, device)
    }

    /// A model with `max_len` positions (the examples use `SEQ`; the sampler benchmark more).
    pub fn with_max_len(d_model: usize, layers: usize, max_len: usize, device: &Device) -> Self {
        Self {
            tokens: EmbeddingConfig::new(VOCAB, d_model).init(device),
            positions: EmbeddingConfig::new(max_len, d_model).init(device),
            encoder: TransformerEncoderConfig::new(d_model, 4 * d_model, 4, layers)
                .with_dropout(0.0)
                .init(device),
            lm_head: LinearConfig::new(d_model, VOCAB)
                .with_bias(false)
                .init(device),
        }
    }

    /// Last hidden states `[B, T, d]`.
    pub fn hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let pos = Tensor::<1, Int>::arange(0..t as i64, &device)
            .unsqueeze_dim::<2>(0)
            .repeat_dim(0, b);
        let x = self.tokens.forward(ids) + self.positions.forward(pos);
        let mask = generate_autoregressive_mask(b, t, &device);
        self.encoder
            .forward(TransformerEncoderInput::new(x).mask_attn(mask))
    }

    /// Last hidden states `[B, T, d]` of left-padded rows: positions count from the first
    /// real token and padding is masked out of attention (equal to [`hidden`](Self::hidden)
    /// without padding).
    pub fn hidden_masked(&self, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<3> {
        self.encoder.forward(self.encoder_input(ids, mask))
    }

    fn encoder_input(&self, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> TransformerEncoderInput {
        let [b, t] = ids.dims();
        let device = ids.device();
        let x = self.tokens.forward(ids) + self.positions.forward(position_ids(mask.clone()));
        TransformerEncoderInput::new(x)
            .mask_attn(generate_autoregressive_mask(b, t, &device))
            .mask_pad(mask.bool_not())
    }

    /// The LM head's weight as `[V, d]` (burn's `Linear` stores `[d, V]`).
    pub fn head_weight(&self) -> Tensor<2> {
        self.lm_head.weight.val().transpose()
    }
}

/// Full logits for the sampler (training uses the fused op on [`TinyLm::hidden`]).
impl CausalLm for TinyLm {
    fn logits(&self, ids: Tensor<2, Int>, attention_mask: Tensor<2, Bool>) -> Tensor<3> {
        self.lm_head
            .forward(self.hidden_masked(ids, attention_mask))
    }
}

/// Incremental decoding through burn's autoregressive encoder cache (it caches each layer's
/// per-position projections and feed-forward outputs; attention still spans all positions).
impl CachedCausalLm for TinyLm {
    type Cache = TransformerEncoderAutoregressiveCache;

    fn init_cache(&self) -> Self::Cache {
        self.encoder.new_autoregressive_cache()
    }

    fn forward_step(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Bool>,
        cache: &mut Self::Cache,
    ) -> Tensor<2> {
        let [b, t] = ids.dims();
        let input = self.encoder_input(ids, attention_mask);
        let hidden = self.encoder.forward_autoregressive_inference(input, cache);
        let [_, _, d] = hidden.dims();
        self.lm_head
            .forward(hidden.narrow(1, t - 1, 1).reshape([b, d]))
    }
}

// ----------------------------------------------------------------------------- data

/// A random prompt of `PROMPT` digits.
pub fn prompt(rng: &mut Rng) -> Vec<i64> {
    (0..PROMPT).map(|_| rng.below(DIGITS) as i64).collect()
}
/// The rule: the prompt reversed.
pub fn rule(p: &[i64]) -> Vec<i64> {
    p.iter().rev().copied().collect()
}
fn near_miss(p: &[i64], rng: &mut Rng) -> Vec<i64> {
    let mut c = rule(p);
    let i = rng.below(PROMPT);
    c[i] = ((c[i] as usize + 1 + rng.below(DIGITS - 1)) % DIGITS) as i64;
    c
}
/// `[prompt, SEP, completion, EOS]`.
pub fn sequence(p: &[i64], c: &[i64]) -> Vec<i64> {
    let mut s = p.to_vec();
    s.push(SEP);
    s.extend_from_slice(c);
    s.push(EOS);
    s
}
/// Labels: -100 on the prompt and SEP (the model is scored on completion + EOS).
fn labels(seq: &[i64]) -> Vec<i64> {
    seq.iter()
        .enumerate()
        .map(|(i, &x)| if i <= PROMPT { IGNORE_INDEX } else { x })
        .collect()
}

/// Preference pairs as token rows (`[prompt, SEP, completion, EOS]`).
pub struct Pairs {
    pub chosen: Vec<Vec<i64>>,
    pub rejected: Vec<Vec<i64>>,
}

/// `n` pairs: chosen reverses the prompt; rejected copies it (60%) or misses one digit.
pub fn make_pairs(n: usize, rng: &mut Rng) -> Pairs {
    let mut pairs = Pairs {
        chosen: vec![],
        rejected: vec![],
    };
    for _ in 0..n {
        let mut p = prompt(rng);
        while rule(&p) == p {
            p = prompt(rng); // palindromes would make "copy" follow the rule
        }
        pairs.chosen.push(sequence(&p, &rule(&p)));
        let bad = if rng.chance(0.6) {
            p.clone()
        } else {
            near_miss(&p, rng)
        };
        pairs.rejected.push(sequence(&p, &bad));
    }
    pairs
}

/// Token rows as an `Int` tensor `[rows, SEQ]`.
pub fn ints(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::<2, Int>::from_data(TensorData::new(flat, [rows.len(), SEQ]), device)
}

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

/// The device named by `--device`.
pub fn device_of(name: &str) -> Result<Device, String> {
    match name {
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        other => Err(format!(
            "--device {other}: not available in this build (available: {:?})",
            device_arg::available()
        )),
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

/// Held-out reward accuracy: the share of pairs (full `[prompt, SEP, completion, EOS]` rows)
/// where the policy's implicit reward margin over the reference is positive.
pub fn heldout_reward_accuracy(
    policy: &TinyLm,
    reference: &TinyLm,
    chosen: &[Vec<i64>],
    rejected: &[Vec<i64>],
    device: &Device,
) -> f64 {
    let eval = |m: &TinyLm, rows: &[Vec<i64>]| {
        gather(m, ints(rows, device), labels_of(rows, device)).sum()
    };
    let margin = (eval(policy, chosen) - eval(reference, chosen))
        - (eval(policy, rejected) - eval(reference, rejected));
    margin.greater_elem(0.0).float().mean().into_scalar::<f64>()
}

/// Completion log-probs of `ids` under `model`, through the fused LM-head op.
pub fn gather(model: &TinyLm, ids: Tensor<2, Int>, lbl: Tensor<2, Int>) -> GatheredLogprobs {
    FusedLogprobsConfig::new()
        .with_check_targets(false)
        .init()
        .forward_causal(model.hidden(ids), model.head_weight(), None, lbl)
        .0
}

fn split(g: &GatheredLogprobs, n: usize) -> (GatheredLogprobs, GatheredLogprobs) {
    let part = |s: usize| GatheredLogprobs {
        logprobs: g.logprobs.clone().narrow(0, s, n),
        mask: g.mask.clone().narrow(0, s, n),
    };
    (part(0), part(n))
}

/// Labels of token rows: `-100` on the prompt and SEP.
pub fn labels_of(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    ints(&rows.iter().map(|r| labels(r)).collect::<Vec<_>>(), device)
}

fn preference_loss(
    obj: &Objective,
    chosen: GatheredLogprobs,
    rejected: GatheredLogprobs,
    ref_c: Tensor<1>,
    ref_r: Tensor<1>,
    kl: Option<Tensor<1>>,
    running: &mut RunningMoments,
) -> LossOutput {
    let n = chosen.logprobs.dims()[0];
    match obj {
        Objective::Dpo(loss) => loss
            .forward(&PreferenceBatch::from_tokens(chosen, rejected).with_reference(ref_c, ref_r)),
        Objective::Cpo(loss) => loss.forward(&PreferenceBatch::from_tokens(chosen, rejected)),
        Objective::Orpo(loss) => loss.forward(&PreferenceBatch::from_tokens(chosen, rejected)),
        Objective::Kto(_, _) | Objective::Bco(_) => {
            let device = chosen.logprobs.device();
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

fn progress(step: usize, total: usize, m: &BTreeMap<String, f64>, loss: f64) -> String {
    let width = 24;
    let filled = (step * width) / total.max(1);
    let bar: String = "#".repeat(filled) + &".".repeat(width - filled);
    let get = |k: &str| {
        m.get(k)
            .map(|v| format!("{v:+.3}"))
            .unwrap_or_else(|| "   -  ".into())
    };
    format!(
        "[{bar}] {step:>4}/{total} loss {loss:.4} rewards/accuracies {} rewards/margins {} rewards/chosen {} rewards/rejected {}",
        get("rewards/accuracies"),
        get("rewards/margins"),
        get("rewards/chosen"),
        get("rewards/rejected")
    )
}

/// Greedy completions of `prompts` from the crate's sampler; returns the fraction whose
/// digits follow the rule exactly.
pub fn rule_rate(model: &TinyLm, prompts: &[Vec<i64>], device: &Device) -> f64 {
    let rows: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| p.iter().copied().chain([SEP]).collect())
        .collect();
    // Exactly PROMPT digits: SEP and EOS are suppressed.
    let generation = SamplerConfig::new()
        .with_greedy(true)
        .with_max_new_tokens(PROMPT)
        .with_suppress_token_ids(vec![SEP, EOS])
        .init()
        .sample(model, &Prompts::left_padded(&rows, EOS, device), 0);
    let ok = generation
        .completions()
        .iter()
        .zip(prompts)
        .filter(|(c, p)| c[..] == rule(p)[..])
        .count();
    ok as f64 / prompts.len() as f64
}

/// SFT on a mix where `reverse_fraction` of the completions follow the rule and the rest
/// copy the prompt; `log(step, nll)` is called every 50 steps and at the end.
pub fn warm_up(
    model: TinyLm,
    device: &Device,
    steps: usize,
    batch: usize,
    reverse_fraction: f64,
    rng: &mut Rng,
    log: impl FnMut(usize, f64),
) -> TinyLm {
    warm_up_excluding(model, device, steps, batch, reverse_fraction, rng, &[], log)
}

/// [`warm_up`] on prompts that are not in `exclude` (held-out prompts of the online examples;
/// with `exclude` empty the data are exactly `warm_up`'s).
#[allow(clippy::too_many_arguments)]
pub fn warm_up_excluding(
    mut model: TinyLm,
    device: &Device,
    steps: usize,
    batch: usize,
    reverse_fraction: f64,
    rng: &mut Rng,
    exclude: &[Vec<i64>],
    mut log: impl FnMut(usize, f64),
) -> TinyLm {
    // (`device` is passed in: reading a parameter here would initialize it early and change
    // the random stream of burn's lazy parameter initialization.)
    let mut optim = AdamConfig::new().init();
    for step in 1..=steps {
        let rows: Vec<Vec<i64>> = (0..batch)
            .map(|_| {
                let mut p = prompt(rng);
                while exclude.contains(&p) {
                    p = prompt(rng);
                }
                let c = if rng.chance(reverse_fraction) {
                    rule(&p)
                } else {
                    p.clone()
                };
                sequence(&p, &c)
            })
            .collect();
        let g = gather(&model, ints(&rows, device), labels_of(&rows, device));
        let nll = Normalizer::TokenMean.reduce_tokens(g.logprobs.neg(), g.mask);
        if step % 50 == 0 || step == steps {
            log(step, nll.clone().into_scalar::<f64>());
        }
        model = step_optim(model, &mut optim, 3e-3, nll);
    }
    model
}

/// A progress bar on stderr (hidden when `quiet` or not a terminal).
pub fn progress_bar(total: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("[{bar:24}] {pos:>4}/{len} {msg}")
            .expect("valid template")
            .progress_chars("#>."),
    );
    bar
}

fn step_optim(model: TinyLm, optim: &mut ModuleOptimizer, lr: f64, loss: Tensor<1>) -> TinyLm {
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optim.step(lr, model, grads)
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
    let bar = progress_bar(args.steps, args.quiet);
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
            bar.suspend(|| say(progress(step, args.steps, &metrics, loss_value)));
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
    let series = |key: &str| plot::Series {
        name: key.to_string(),
        points: s
            .history
            .iter()
            .filter_map(|(i, m)| m.get(key).map(|v| (*i as f64, *v)))
            .collect(),
    };
    let panel = |title: &str, keys: &[&str]| plot::Panel {
        title: title.to_string(),
        x_label: "step".into(),
        series: keys.iter().map(|k| series(k)).collect(),
    };
    let path = args.out.join("training.svg");
    plot::write_svg(
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

fn main() {
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
