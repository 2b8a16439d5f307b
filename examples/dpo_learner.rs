//! The `dpo` example's task trained through burn-train's `Learner` with burn-rlhf's adapters.
//!
//! `cargo run --release --example dpo_learner --features train -- [--steps 150]
//!   [--sft-steps 150] [--batch 32] [--seed 0] [--out out/dpo_learner] [--precompute-ref]`
//!
//! Same model, task and data as `dpo` (`common::toy`, shared, not copied): an SFT warm-up on
//! a 40% reverse / 60% copy mix (here a `Learner` over [`SftModel`]), the warmed-up model
//! frozen as the reference, then DPO on "reverse" (chosen) vs "copy or near miss" (rejected)
//! pairs (a `Learner` over [`PreferenceModel`], one epoch of `--steps` batches). The held-out
//! reward accuracy is computed as `dpo` computes it. burn-train runs with its plain CLI
//! renderer (no terminal needed); the metrics under TRL's names (`rewards/accuracies`, ...)
//! are logged to `--out/dpo/{train,valid}/epoch-1/*.log` and printed at the end.
//!
//! What the user writes for burn-train: `impl CausalLmLogps for TinyLm` (one call to the fused
//! log-prob op), the item lists, and the usual `Learner` / `SupervisedTraining` setup.

pub mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::{Device, Int, Tensor};
use burn::train::metric::store::Split;
use burn::train::renderer::CliMetricsRenderer;
use burn::train::{Learner, SupervisedTraining};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::DpoLossConfig;
use burn_rlhf::train::{
    CausalLmLogps, PreferenceItem, PreferenceModel, SftItem, SftModel, TokenBatcher,
    TrlFileMetricLogger, TrlMetric, TrlMetricsExt,
};
use common::rng::Rng;
use common::toy::{
    EOS, PROMPT, TinyLm, gather, heldout_reward_accuracy, ints, labels_of, make_pairs, split_row,
};

/// The one piece of model glue burn-train needs: per-token log-probs of the labels.
impl CausalLmLogps for TinyLm {
    fn token_logps(&self, input_ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> GatheredLogps {
        gather(self, input_ids, labels)
    }
}

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// DPO batches (one epoch).
    pub steps: usize,
    /// SFT warm-up batches.
    pub sft_steps: usize,
    /// Pairs (DPO) or sequences (SFT) per batch.
    pub batch: usize,
    /// Seed of the data and of the model initialization.
    pub seed: u64,
    /// Output folder (burn-train's logs).
    pub out: PathBuf,
    /// Precompute the reference log-probs into the items (TRL's `precompute_ref_log_probs`).
    pub precompute_ref: bool,
    /// Held-out pairs.
    pub heldout: usize,
    /// Model width.
    pub d_model: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 150,
            sft_steps: 150,
            batch: 32,
            seed: 0,
            out: PathBuf::from("out/dpo_learner"),
            precompute_ref: false,
            heldout: 256,
            d_model: 64,
        }
    }
}

impl Options {
    /// Parses `--steps N --sft-steps N --batch N --seed N --out DIR --precompute-ref`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut it = args.iter().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--precompute-ref" {
                o.precompute_ref = true;
                continue;
            }
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let number = || -> Result<usize, String> {
                value
                    .parse()
                    .map_err(|_| format!("{flag} needs a positive integer, got {value}"))
            };
            match flag.as_str() {
                "--steps" => o.steps = number()?.max(1),
                "--sft-steps" => o.sft_steps = number()?.max(1),
                "--batch" => o.batch = number()?.max(2),
                "--seed" => o.seed = number()? as u64,
                "--out" => o.out = PathBuf::from(value),
                other => {
                    return Err(format!(
                        "unknown flag {other} (flags: --steps --sft-steps --batch --seed --out --precompute-ref)"
                    ));
                }
            }
        }
        Ok(o)
    }
}

/// What a run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Held-out reward accuracy: policy vs reference implicit reward (as the `dpo` example).
    pub heldout_reward_accuracy: f64,
    /// Epoch means of the DPO metrics under TRL's keys, (key, train, valid).
    pub metrics: Vec<(String, Option<f64>, Option<f64>)>,
    /// Parameters of the DPO learner's model (the policy alone) and of the policy.
    pub params: (usize, usize),
    /// Wall time.
    pub seconds: f64,
}

fn loader<I, O>(
    items: Vec<I>,
    batch: usize,
    seed: u64,
) -> std::sync::Arc<dyn burn::data::dataloader::DataLoader<O>>
where
    I: Clone + Send + Sync + std::fmt::Debug + 'static,
    O: Send + Clone + std::fmt::Debug + 'static,
    TokenBatcher: burn::data::dataloader::batcher::Batcher<I, O>,
{
    DataLoaderBuilder::new(TokenBatcher::new(EOS))
        .batch_size(batch)
        .shuffle(seed)
        .build(InMemDataset::new(items))
}

/// burn-train's supervised training with the plain CLI renderer and TRL-named metrics.
fn training<M>(
    dir: &Path,
    keys: &[&str],
    train: std::sync::Arc<
        dyn burn::data::dataloader::DataLoader<<M as burn::train::TrainStep>::Input>,
    >,
    valid: std::sync::Arc<
        dyn burn::data::dataloader::DataLoader<<M as burn::train::InferenceStep>::Input>,
    >,
) -> SupervisedTraining<M>
where
    M: burn::train::LearnerModel,
    SupervisedTraining<M>: TrlMetricsExt,
{
    SupervisedTraining::new(dir, train, valid)
        .trl_metrics(keys, dir)
        .renderer(Box::new(CliMetricsRenderer::new()))
        .with_application_logger(None)
        .num_epochs(1)
}

/// Runs the SFT warm-up and DPO through burn-train.
pub fn run(o: &Options) -> Result<Summary, String> {
    let start = Instant::now();
    let device = Device::flex();
    device.seed(o.seed);
    let mut rng = Rng::new(o.seed);

    // --- SFT warm-up on a 40% reverse / 60% copy mix.
    let sft_items = |n: usize, rng: &mut Rng| -> Vec<SftItem> {
        let pairs = make_pairs(n, rng);
        pairs
            .chosen
            .iter()
            .map(|row| {
                let (prompt, reversed) = split_row(row);
                let completion = if rng.chance(0.4) {
                    reversed
                } else {
                    let mut copy = row[..PROMPT].to_vec();
                    copy.push(EOS);
                    copy
                };
                SftItem { prompt, completion }
            })
            .collect()
    };
    let sft_train = sft_items(o.sft_steps * o.batch, &mut rng);
    let sft_valid = sft_items(o.batch, &mut rng);
    let sft = training::<SftModel<TinyLm>>(
        &o.out.join("sft"),
        &TrlMetric::SFT_KEYS,
        loader(sft_train, o.batch, o.seed),
        loader(sft_valid, o.batch, o.seed),
    )
    .launch(Learner::new(
        SftModel::new(TinyLm::new(o.d_model, 2, &device.clone().autodiff())),
        AdamConfig::new().init(),
        3e-3,
    ));
    let reference = sft.model.model.valid(); // frozen copy, no autodiff

    // --- Preference pairs; the reference log-probs optionally precomputed into the items.
    let pair_items = |n: usize, rng: &mut Rng, precompute: bool| -> Vec<PreferenceItem> {
        let pairs = make_pairs(n, rng);
        let refs = precompute.then(|| {
            let sums = |rows: &[Vec<i64>]| -> Vec<f64> {
                gather(&reference, ints(rows, &device), labels_of(rows, &device))
                    .sum()
                    .into_data()
                    .convert::<f64>()
                    .try_into_vec::<f64>()
                    .unwrap()
            };
            (sums(&pairs.chosen), sums(&pairs.rejected))
        });
        (0..n)
            .map(|i| {
                let (prompt, chosen) = split_row(&pairs.chosen[i]);
                let (_, rejected) = split_row(&pairs.rejected[i]);
                PreferenceItem {
                    prompt,
                    chosen,
                    rejected,
                    ref_logps: refs.as_ref().map(|(c, r)| (c[i], r[i])),
                }
            })
            .collect()
    };
    let train = pair_items(o.steps * o.batch, &mut rng, o.precompute_ref);
    let heldout = pair_items(o.heldout, &mut rng, o.precompute_ref);

    // --- DPO: the policy starts from the warmed-up model; the reference is held out of the
    // optimizer and the checkpoint (or absent when its log-probs are precomputed).
    let policy = sft.model.model.train(); // back on the autodiff device, trainable
    let model = PreferenceModel::new(
        policy.clone(),
        (!o.precompute_ref).then(|| reference.clone()),
        DpoLossConfig::new().init(),
    );
    let params = (model.num_params(), policy.num_params());
    let dir = o.out.join("dpo");
    let result = training::<PreferenceModel<TinyLm>>(
        &dir,
        &TrlMetric::PREFERENCE_KEYS,
        loader(train, o.batch, o.seed),
        loader(heldout.clone(), o.batch, o.seed),
    )
    .launch(Learner::new(model, AdamConfig::new().init(), 1e-3));
    let policy = result.model.policy; // validation mode

    // --- Held-out reward accuracy, computed as the `dpo` example does.
    let rows = |pick: fn(&PreferenceItem) -> &Vec<i64>| -> Vec<Vec<i64>> {
        heldout
            .iter()
            .map(|i| [i.prompt.clone(), pick(i).clone()].concat())
            .collect()
    };
    let (chosen, rejected) = (rows(|i| &i.chosen), rows(|i| &i.rejected));
    let heldout_reward_accuracy =
        heldout_reward_accuracy(&policy, &reference, &chosen, &rejected, &device);

    let metrics = TrlMetric::PREFERENCE_KEYS
        .iter()
        .map(|k| {
            (
                k.to_string(),
                TrlFileMetricLogger::epoch_mean(&dir, k, 1, &Split::Train),
                TrlFileMetricLogger::epoch_mean(&dir, k, 1, &Split::Valid),
            )
        })
        .collect();
    Ok(Summary {
        heldout_reward_accuracy,
        metrics,
        params,
        seconds: start.elapsed().as_secs_f64(),
    })
}

pub fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let options = Options::parse(&argv).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let s = run(&options).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    println!("done in {:.1} s", s.seconds);
    println!("metric (epoch mean)        train      valid");
    for (key, train, valid) in &s.metrics {
        let f = |v: &Option<f64>| v.map_or("     -".to_string(), |v| format!("{v:+.4}"));
        println!("{key:<24} {:>8} {:>10}", f(train), f(valid));
    }
    println!(
        "learner model parameters {} = policy parameters {} (the reference is not a parameter)",
        s.params.0, s.params.1
    );
    println!(
        "held-out reward accuracy (policy vs reference implicit reward): {:.3}",
        s.heldout_reward_accuracy
    );
}
