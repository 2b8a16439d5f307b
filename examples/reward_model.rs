//! Train a tiny reward model on synthetic preference pairs with the Bradley-Terry loss.
//!
//! Task: sequences of 2 to 10 digits followed by an end-of-sequence token. Of two random
//! sequences, the preferred one has the **larger digit sum** (pairs with equal sums are not
//! generated). The model never sees the sums, only which sequence of each pair was chosen, and
//! is evaluated on fresh random pairs it has never seen, so it has to learn the rule (token `d`
//! is worth `d`), not memorize pairs.
//!
//! Model: token embedding -> causal prefix sum over positions -> Linear + ReLU -> `RewardHead`
//! reading the hidden state of the **last attended token**. Every sequence is right- or
//! left-padded at random, and the pad id equals the eos id, so reading the wrong position
//! (the last column, or "first pad - 1") gives a wrong reward; the head reads the mask.
//!
//! ```text
//! cargo run --release --example reward_model -- [--steps N] [--out DIR] [--seed S]
//! ```
//!
//! Prints progress every few steps and writes `loss_accuracy.svg` (loss and held-out pairwise
//! accuracy) to `DIR` (default `out/reward_model`).

pub mod common;

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData, activation};
use burn_rlhf::heads::{RewardHead, RewardHeadConfig};
use burn_rlhf::losses::BradleyTerryLossConfig;
use common::chart;
use common::rng::Rng;

/// Digits 0..=9, then the eos id, which is also the pad id (the TRL 3750 / transformers 35352
/// setting).
const EOS: i64 = 10;
const PAD: i64 = EOS;
const VOCAB: usize = 11;
const MIN_DIGITS: usize = 2;
const MAX_DIGITS: usize = 10;
/// Padded length: up to 10 digits + eos.
const T: usize = MAX_DIGITS + 1;

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_pairs: usize,
    pub lr: f64,
    pub eval_every: usize,
    pub heldout_pairs: usize,
    pub seed: u64,
    pub d_embed: usize,
    pub d_hidden: usize,
    /// Print a progress line at every evaluation.
    pub verbose: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_pairs: 64,
            lr: 1e-2,
            eval_every: 10,
            heldout_pairs: 1000,
            seed: 7,
            d_embed: 16,
            d_hidden: 32,
            verbose: true,
        }
    }
}

/// Curves recorded during training.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// `(step, training loss)` per step.
    pub loss: Vec<(f64, f64)>,
    /// `(step, training-batch accuracy)` per step.
    pub train_accuracy: Vec<(f64, f64)>,
    /// `(step, held-out pairwise accuracy)`, step 0 = before training.
    pub heldout_accuracy: Vec<(f64, f64)>,
}

impl History {
    pub fn initial_accuracy(&self) -> f64 {
        self.heldout_accuracy.first().map_or(f64::NAN, |p| p.1)
    }
    pub fn final_accuracy(&self) -> f64 {
        self.heldout_accuracy.last().map_or(f64::NAN, |p| p.1)
    }
}

/// The reward model: embedding, causal prefix sum, one hidden layer, reward head.
#[derive(Module, Debug)]
pub struct Scorer {
    embedding: Embedding,
    hidden: Linear,
    head: RewardHead,
}

impl Scorer {
    pub fn new(cfg: &TrainConfig, device: &Device) -> Self {
        Self {
            embedding: EmbeddingConfig::new(VOCAB, cfg.d_embed).init(device),
            hidden: LinearConfig::new(cfg.d_embed, cfg.d_hidden).init(device),
            head: RewardHeadConfig::new(cfg.d_hidden).init(device),
        }
    }

    /// Rewards `[B]` for tokens `[B, T]` with attention mask `[B, T]`.
    ///
    /// Position `t`'s hidden state summarizes tokens `0..=t` (pads included, as a causal model
    /// would see them), so only the last attended position holds the whole sequence and
    /// nothing after it.
    pub fn forward(&self, tokens: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<1> {
        let prefix = self
            .embedding
            .forward(tokens)
            .cumsum(1)
            .div_scalar(T as f64);
        let h = activation::relu(self.hidden.forward(prefix));
        self.head.forward_reward(h, mask)
    }
}

/// A batch of pairs, chosen rows first: tokens `[2B, T]`, mask `[2B, T]`.
pub struct PairBatch {
    pub tokens: Tensor<2, Int>,
    pub mask: Tensor<2, Bool>,
    pub pairs: usize,
}

fn random_digits(rng: &mut Rng) -> Vec<i64> {
    let len = MIN_DIGITS + rng.below(MAX_DIGITS - MIN_DIGITS + 1);
    (0..len).map(|_| rng.below(10) as i64).collect()
}

/// Appends eos and pads to `T` on a random side.
fn pad_row(digits: &[i64], rng: &mut Rng, tokens: &mut Vec<i64>, mask: &mut Vec<bool>) {
    let mut seq = digits.to_vec();
    seq.push(EOS);
    let pad = T - seq.len();
    let left = rng.below(2) == 0;
    if left {
        tokens.extend(std::iter::repeat_n(PAD, pad));
        mask.extend(std::iter::repeat_n(false, pad));
    }
    tokens.extend(&seq);
    mask.extend(std::iter::repeat_n(true, seq.len()));
    if !left {
        tokens.extend(std::iter::repeat_n(PAD, pad));
        mask.extend(std::iter::repeat_n(false, pad));
    }
}

/// `pairs` fresh pairs whose digit sums differ; the larger sum is chosen.
pub fn make_batch(pairs: usize, rng: &mut Rng, device: &Device) -> PairBatch {
    let mut chosen = Vec::with_capacity(pairs);
    let mut rejected = Vec::with_capacity(pairs);
    while chosen.len() < pairs {
        let a = random_digits(rng);
        let b = random_digits(rng);
        let (sa, sb): (i64, i64) = (a.iter().sum(), b.iter().sum());
        if sa == sb {
            continue;
        }
        let (c, r) = if sa > sb { (a, b) } else { (b, a) };
        chosen.push(c);
        rejected.push(r);
    }
    let mut tokens = Vec::with_capacity(2 * pairs * T);
    let mut mask = Vec::with_capacity(2 * pairs * T);
    for digits in chosen.iter().chain(&rejected) {
        pad_row(digits, rng, &mut tokens, &mut mask);
    }
    PairBatch {
        tokens: Tensor::from_data(TensorData::new(tokens, [2 * pairs, T]), device),
        mask: Tensor::from_data(TensorData::new(mask, [2 * pairs, T]), device),
        pairs,
    }
}

/// Held-out pairwise accuracy `mean(r_c > r_r)` without gradient tracking.
pub fn accuracy(model: &Scorer, batch: &PairBatch) -> f64 {
    let rewards = model
        .valid()
        .forward(batch.tokens.clone(), batch.mask.clone());
    let b = batch.pairs;
    let chosen = rewards.clone().narrow(0, 0, b);
    let rejected = rewards.narrow(0, b, b);
    let correct = chosen.greater(rejected).int().sum().into_scalar::<i64>();
    correct as f64 / b as f64
}

/// Trains and returns the curves.
pub fn train(cfg: &TrainConfig, device: &Device) -> History {
    let device = device.clone().autodiff();
    device.seed(cfg.seed);
    let mut rng = Rng::new(cfg.seed);
    let heldout = make_batch(
        cfg.heldout_pairs,
        &mut Rng::new(cfg.seed ^ 0xDEAD_BEEF),
        &device,
    );
    let mut model = Scorer::new(cfg, &device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = BradleyTerryLossConfig::new().init();
    let mut history = History::default();

    let start = Instant::now();
    let acc0 = accuracy(&model, &heldout);
    history.heldout_accuracy.push((0.0, acc0));
    if cfg.verbose {
        println!(
            "step    0  held-out accuracy {:5.1}%  (before training)",
            100.0 * acc0
        );
    }
    for step in 1..=cfg.steps {
        let batch = make_batch(cfg.batch_pairs, &mut rng, &device);
        let rewards = model.forward(batch.tokens, batch.mask);
        let out = loss_fn.forward_stacked(rewards, None);
        let loss = out.loss.clone().into_scalar::<f64>();
        let train_acc = out
            .metrics
            .get("accuracy")
            .unwrap()
            .clone()
            .into_scalar::<f64>();
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        model = optim.step(cfg.lr, model, grads);
        history.loss.push((step as f64, loss));
        history.train_accuracy.push((step as f64, train_acc));
        if step % cfg.eval_every == 0 || step == cfg.steps {
            let acc = accuracy(&model, &heldout);
            history.heldout_accuracy.push((step as f64, acc));
            if cfg.verbose {
                println!(
                    "step {step:4}  loss {loss:.4}  batch accuracy {:5.1}%  held-out accuracy {:5.1}%  ({:.1}s)",
                    100.0 * train_acc,
                    100.0 * acc,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    history
}

/// Writes the loss and accuracy curves as an SVG.
pub fn write_plot(history: &History, path: &std::path::Path) -> std::io::Result<()> {
    let panels = [
        chart::Panel {
            title: "Bradley-Terry loss".into(),
            x_label: "step".into(),
            series: vec![chart::Series {
                name: "training loss".into(),
                points: history.loss.clone(),
            }],
        },
        chart::Panel {
            title: "Pairwise accuracy".into(),
            x_label: "step".into(),
            series: vec![
                chart::Series {
                    name: "batch (train)".into(),
                    points: history.train_accuracy.clone(),
                },
                chart::Series {
                    name: "held-out".into(),
                    points: history.heldout_accuracy.clone(),
                },
            ],
        },
    ];
    chart::write_svg(path, "reward_model: digit-sum preferences", &panels)
}

fn parse_args() -> (TrainConfig, PathBuf) {
    let mut cfg = TrainConfig::default();
    let mut out = PathBuf::from("out/reward_model");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            "--steps" => cfg.steps = value("--steps").parse().expect("--steps N"),
            "--out" => out = PathBuf::from(value("--out")),
            "--seed" => cfg.seed = value("--seed").parse().expect("--seed S"),
            "-h" | "--help" => {
                println!("usage: reward_model [--steps N] [--out DIR] [--seed S]");
                std::process::exit(0);
            }
            other => panic!("unknown argument `{other}` (try --help)"),
        }
    }
    (cfg, out)
}

pub fn main() {
    let (cfg, out) = parse_args();
    let device = Device::flex();
    println!(
        "reward_model: {} steps x {} pairs, Adam lr {}, {} held-out pairs, device {device:?}",
        cfg.steps, cfg.batch_pairs, cfg.lr, cfg.heldout_pairs
    );
    let start = Instant::now();
    let history = train(&cfg, &device);
    let secs = start.elapsed().as_secs_f64();
    std::fs::create_dir_all(&out).expect("create output dir");
    let path = out.join("loss_accuracy.svg");
    write_plot(&history, &path).expect("write plot");
    println!(
        "done in {secs:.1}s: held-out pairwise accuracy {:.1}% -> {:.1}%, final loss {:.4}; plot: {}",
        100.0 * history.initial_accuracy(),
        100.0 * history.final_accuracy(),
        history.loss.last().map_or(f64::NAN, |p| p.1),
        path.display()
    );
}
