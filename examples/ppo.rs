//! PPO on a toy sequence task with a programmatic reward.
//!
//! Task: given a prompt digit `p` in `0..8`, generate 6 digits that count up from it
//! (`p+1, p+2, ...` mod 8). Reward = fraction of positions that follow the rule (chance is
//! 1/8). The policy is a 2-layer MLP over `[one-hot(prompt), one-hot(previous token),
//! one-hot(position)]` with a policy head and a value head; it implements the crate's
//! [`CausalLm`] (features built on the device), so rollouts come from the crate's batched
//! sampler ([`Sampler`](burn_rlhf::generate::Sampler)). Each step: sample 64 sequences, per-token rewards = `-beta * k1 KL` against the frozen
//! initial policy plus the score at the last token ([`KlPenalty`]), GAE with whitening
//! ([`Gae`]), then [`ppo_update`] (4 epochs x 4 minibatches, global-norm clipping).
//!
//! ```text
//! cargo run --release --example ppo -- --steps 120 --out out/ppo
//! ```
//!
//! Prints progress and writes `reward.svg` (mean reward and KL per step) to `--out`.

pub mod common;

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::AdamConfig;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData, activation};
use burn_rlhf::generate::{CausalLm, Prompts, SamplerConfig};
use burn_rlhf::logps::token_entropy;
use burn_rlhf::rl::{
    GaeConfig, KlPenaltyConfig, PolicyOutput, PpoLossConfig, PpoStepConfig, Rollout, ppo_update,
};
use clap::Parser;
use common::chart;
use common::progress;
use common::rng::Rng;

/// Vocabulary (digits).
pub const VOCAB: usize = 8;
/// Generated tokens per sequence.
pub const LEN: usize = 6;
const FEATURES: usize = 2 * VOCAB + LEN;

/// Policy with a shared trunk, a policy head and a value head.
#[derive(Module, Debug)]
pub struct Policy {
    hidden: Linear,
    logits: Linear,
    value: Linear,
}

impl Policy {
    /// A fresh policy.
    pub fn new(device: &Device) -> Self {
        Self {
            hidden: LinearConfig::new(FEATURES, 64).init(device),
            logits: LinearConfig::new(64, VOCAB).init(device),
            value: LinearConfig::new(64, 1).init(device),
        }
    }

    /// `[N, FEATURES]` -> (logits `[N, V]`, values `[N]`).
    fn forward(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<1>) {
        let h = activation::relu(self.hidden.forward(x));
        let n = h.dims()[0];
        (
            self.logits.forward(h.clone()),
            self.value.forward(h).reshape([n]),
        )
    }

    /// Scores full sequences `[B, 1 + LEN]` (prompt then generated tokens): per-token
    /// log-probs, values and entropies of the generated tokens, each `[B, LEN]`.
    fn score(&self, tokens: &Tensor<2, Int>) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
        let [b, _] = tokens.dims();
        let host: Vec<i64> = tokens
            .clone()
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        let mut feats = vec![0.0f32; b * LEN * FEATURES];
        let mut targets = vec![0i64; b * LEN];
        for row in 0..b {
            let seq = &host[row * (LEN + 1)..(row + 1) * (LEN + 1)];
            for t in 0..LEN {
                let f = &mut feats[(row * LEN + t) * FEATURES..(row * LEN + t + 1) * FEATURES];
                features(seq[0] as usize, seq[t] as usize, t, f);
                targets[row * LEN + t] = seq[t + 1];
            }
        }
        let device = tokens.device();
        let x = Tensor::<2>::from_data(TensorData::new(feats, [b * LEN, FEATURES]), &device);
        let (logits, values) = self.forward(x);
        let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [b * LEN, 1]), &device);
        let logp = activation::log_softmax(logits.clone(), 1)
            .gather(1, targets)
            .reshape([b, LEN]);
        let entropy = token_entropy(logits.reshape([b, LEN, VOCAB]), 1.0).unwrap();
        (logp, values.reshape([b, LEN]), entropy)
    }
}

fn features(prompt: usize, prev: usize, position: usize, out: &mut [f32]) {
    out[prompt] = 1.0;
    out[VOCAB + prev] = 1.0;
    out[2 * VOCAB + position] = 1.0;
}

/// The programmatic reward: fraction of generated tokens equal to `previous + 1 (mod V)`.
pub fn reward(seq: &[i64]) -> f64 {
    (0..LEN)
        .filter(|&t| seq[t + 1] == (seq[t] + 1) % VOCAB as i64)
        .count() as f64
        / LEN as f64
}

/// One-hot `[B, T, classes]` of `ids` `[B, T]`, on the device.
fn one_hot(ids: Tensor<2, Int>, classes: usize) -> Tensor<3> {
    let [b, t] = ids.dims();
    let device = ids.device();
    let range = Tensor::<1, Int>::arange(0..classes as i64, &device)
        .reshape([1, 1, classes])
        .expand([b, t, classes]);
    ids.unsqueeze_dim::<3>(2)
        .expand([b, t, classes])
        .equal(range)
        .float()
}

/// Next-token logits for the sampler: the features of every position built on the device.
/// Rows are `[prompt digit, generated...]` (no padding: every prompt is one token).
impl CausalLm for Policy {
    fn logits(&self, ids: Tensor<2, Int>, _attention_mask: Tensor<2, Bool>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let prompt = ids.clone().narrow(1, 0, 1).expand([b, t]);
        let position = Tensor::<1, Int>::arange(0..t as i64, &device)
            .reshape([1, t])
            .expand([b, t]);
        let x = Tensor::cat(
            vec![
                one_hot(prompt, VOCAB),
                one_hot(ids, VOCAB),
                one_hot(position, LEN),
            ],
            2,
        );
        self.forward(x.reshape([b * t, FEATURES]))
            .0
            .reshape([b, t, VOCAB])
    }
}

/// Samples `batch` sequences with the (non-autodiff) policy through the crate's sampler:
/// `[batch, 1 + LEN]` token ids (a random prompt digit, then `LEN` sampled tokens).
fn sample(
    policy: &Policy,
    batch: usize,
    rng: &mut Rng,
    seed: u64,
    device: &Device,
) -> Tensor<2, Int> {
    let prompts: Vec<Vec<i64>> = (0..batch)
        .map(|_| vec![(rng.uniform() * VOCAB as f64) as i64 % VOCAB as i64])
        .collect();
    SamplerConfig::new()
        .with_max_new_tokens(LEN)
        .init()
        .sample(policy, &Prompts::left_padded(&prompts, 0, device), seed)
        .ids()
}

/// Training options.
pub struct TrainOptions {
    /// PPO steps (rollout + update).
    pub steps: usize,
    /// Sequences per rollout.
    pub batch: usize,
    /// Print progress every this many steps (0 = silent).
    pub log_every: usize,
    /// Seed.
    pub seed: u64,
}

/// One point per step: `(step, mean reward, mean sequence KL to the reference)`.
pub fn train(options: &TrainOptions, device: &Device) -> Vec<(usize, f64, f64)> {
    let device = device.clone().autodiff();
    device.seed(options.seed);
    let mut policy = Policy::new(&device);
    let reference = policy.valid();
    let mut optim = AdamConfig::new().init();
    let kl_penalty = KlPenaltyConfig::new().with_kl_coef(0.02).init();
    let gae = GaeConfig::new().with_gamma(1.0).with_lam(0.95).init();
    let loss = PpoLossConfig::new()
        .with_epsilon(0.2)
        .with_vf_coef(0.5)
        .with_entropy_coef(0.01)
        .init();
    let step_config = PpoStepConfig::new()
        .with_epochs(4)
        .with_num_minibatches(4)
        .with_learning_rate(3e-3);
    let mut rng = Rng::new(options.seed);
    let mut history = Vec::with_capacity(options.steps);
    let bar = progress::bar(options.steps, options.log_every == 0);
    let start = Instant::now();
    for step in 0..options.steps {
        let snapshot = policy.valid();
        let inner = device.clone().inner();
        let seed = options
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(step as u64);
        let tokens = sample(&snapshot, options.batch, &mut rng, seed, &inner);
        let seqs: Vec<i64> = tokens
            .clone()
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        let scores: Vec<f64> = seqs.chunks(LEN + 1).map(reward).collect();
        let mean_reward = scores.iter().sum::<f64>() / scores.len() as f64;
        let (old_logp, old_values, _) = snapshot.score(&tokens);
        let (ref_logp, _, _) = reference.score(&tokens);
        let mask = Tensor::<2, Int>::ones([options.batch, LEN], &inner).equal_elem(1);
        let scores_t = Tensor::<1>::from_data(
            TensorData::new(
                scores.iter().map(|&s| s as f32).collect::<Vec<_>>(),
                [options.batch],
            ),
            &inner,
        );
        let shaped = kl_penalty.forward(
            scores_t,
            old_logp.clone(),
            ref_logp,
            Some(mask.clone()),
            None,
        );
        let kl = shaped.kl.clone().sum_dim(1).mean().into_scalar::<f64>();
        let adv = gae.forward(shaped.rewards, old_values.clone(), Some(mask.clone()));
        let rollout = Rollout::new(tokens, mask, old_logp, adv.advantages)
            .with_values(old_values, adv.returns);
        let config = step_config.clone().with_seed(step as u64);
        let (updated, stats) = ppo_update(
            policy,
            &mut optim,
            &config,
            &rollout,
            &loss,
            |model: &Policy, batch| {
                let tokens = batch.tokens.clone();
                let (logp, values, entropy) = model.score(&tokens);
                PolicyOutput::new(logp)
                    .with_values(values)
                    .with_entropy(entropy)
            },
        );
        policy = updated;
        history.push((step, mean_reward, kl));
        bar.inc(1);
        bar.set_message(format!("reward {mean_reward:.3}"));
        if options.log_every > 0 && (step % options.log_every == 0 || step + 1 == options.steps) {
            let m = &stats.metrics;
            bar.suspend(|| println!(
                "step {step:4}  reward {mean_reward:.3}  kl {kl:.3}  policy_loss {:+.4}  value_loss {:.4}  \
                 clipfrac {:.3}  approx_kl {:.4}  entropy {:.3}  ({:.1}s)",
                m["policy_loss"],
                m["value_loss"],
                m["clipfrac"],
                m["approx_kl"],
                m["entropy"],
                start.elapsed().as_secs_f64()
            ));
        }
    }
    bar.finish_and_clear();
    history
}

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "PPO on a toy counting task")]
struct Cli {
    /// PPO steps.
    #[arg(long, default_value_t = 120)]
    steps: usize,
    /// Output folder of the plot.
    #[arg(long, default_value = "out/ppo")]
    out: PathBuf,
}

pub fn main() {
    let Cli { steps, out } = Cli::parse();
    let device = Device::default();
    println!(
        "PPO toy task: count up from the prompt digit (V = {VOCAB}, L = {LEN}, chance reward {:.3})",
        1.0 / VOCAB as f64
    );
    let start = Instant::now();
    let history = train(
        &TrainOptions {
            steps,
            batch: 64,
            log_every: 10,
            seed: 7,
        },
        &device,
    );
    let tail = &history[history.len().saturating_sub(5)..];
    let final_reward = tail.iter().map(|h| h.1).sum::<f64>() / tail.len() as f64;
    println!(
        "done: {steps} steps in {:.1}s; first reward {:.3}, final reward (mean of last {}) {final_reward:.3}",
        start.elapsed().as_secs_f64(),
        history[0].1,
        tail.len()
    );
    std::fs::create_dir_all(&out).expect("create output dir");
    let path = out.join("reward.svg");
    chart::write_svg(
        &path,
        "PPO on the count-up task",
        &[
            chart::Panel {
                title: "mean reward".into(),
                x_label: "step".into(),
                series: vec![chart::Series {
                    name: "reward".into(),
                    points: history.iter().map(|h| (h.0 as f64, h.1)).collect(),
                }],
            },
            chart::Panel {
                title: "KL to reference (per sequence)".into(),
                x_label: "step".into(),
                series: vec![chart::Series {
                    name: "kl".into(),
                    points: history.iter().map(|h| (h.0 as f64, h.2)).collect(),
                }],
            },
        ],
    )
    .expect("write reward.svg");
    println!("wrote {}", path.display());
}
