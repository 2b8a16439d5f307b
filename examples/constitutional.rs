//! Constitutional AI (Bai et al. 2022) on a toy task, every stage real and reported:
//! a helpful SFT policy, SL-CAI (a feedback model critiques and revises the policy's answers
//! under principles drawn at random from a constitution; SFT on the revisions) and RL-CAI (the
//! feedback model's soft labels on pairs of samples, a preference model trained on them with
//! the soft-label Bradley-Terry loss, then online DPO against it with the SL-CAI policy as
//! reference).
//!
//! `cargo run --release --example constitutional -- [--seeds 3] [--out out/constitutional]`
//!
//! The world is `common::cai`: a prompt is 4 digits, the helpful answer reverses them, the
//! constitution forbids the digits 3 and 7 (principles are token sentences: "never say 7",
//! "avoid 3", ...), and the harmless, helpful answer writes the withheld token `X` where a
//! forbidden digit would go. The feedback model (a small LM, width 64) is trained first on its
//! own synthetic critique / revision / comparison examples, 10% of them mislabelled, then
//! frozen; it judges through [`ModelJudge`] (next-token probabilities, both orders averaged)
//! and revises by greedy decoding with the crate's sampler.
//!
//! Evaluation (held-out prompts, never trained on; a ground-truth checker no stage reads):
//! `harmless` = share of sampled answers without a forbidden digit; `helpful` = share of the
//! allowed reversed digits in place (a constant answer scores ~0.1); `kl` = Monte-Carlo
//! KL(policy || SFT policy) per answer. Prints the per-stage table per seed and the feedback
//! model's agreement with the checker (also under rephrased principles), writes
//! `constitutional.svg`, and ends with `final: harmless <SFT> -> <RL-CAI>, helpful <SFT> ->
//! <RL-CAI>` (means over the seeds).

pub mod common;

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_rlhf::generate::{
    Generation, OnlineDpoConfig, PairwiseItem, PointwiseItem, Prompts, SamplerConfig,
};
use burn_rlhf::heads::{RewardHead, RewardHeadConfig};
use burn_rlhf::losses::BradleyTerryLossConfig;
use clap::Parser;
use common::cai::{self, EOS, POLICY_LEN, PROMPT, Principle, SEP, VOCAB, X};
use common::chart;
use common::device::device_of;
use common::rng::Rng;
use common::toy::TinyLm;

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(about = "Constitutional AI stage by stage on a toy task")]
pub struct Args {
    /// Seeds (each runs the whole pipeline).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Feedback-model training steps (48 synthetic examples each).
    #[arg(long, default_value_t = 1000)]
    pub feedback_steps: usize,
    /// SFT steps of the helpful policy.
    #[arg(long, default_value_t = 300)]
    pub sft_steps: usize,
    /// SL-CAI: prompts whose sampled answers are critiqued and revised.
    #[arg(long, default_value_t = 512)]
    pub revision_prompts: usize,
    /// SL-CAI: critique -> revision rounds per answer, each under a random principle.
    #[arg(long, default_value_t = 1)]
    pub revision_rounds: usize,
    /// SL-CAI: SFT steps on the revisions.
    #[arg(long, default_value_t = 200)]
    pub sl_steps: usize,
    /// RL-CAI: prompts with two samples each, labelled by the feedback model.
    #[arg(long, default_value_t = 1024)]
    pub pm_prompts: usize,
    /// RL-CAI: sampling temperature of the labelled pairs (above 1: more pairs that differ).
    #[arg(long, default_value_t = 1.5)]
    pub pair_temperature: f64,
    /// RL-CAI: principles drawn at random per comparison; their soft labels are averaged
    /// (Bai et al. ensemble over principles).
    #[arg(long, default_value_t = 4)]
    pub label_principles: usize,
    /// RL-CAI: preference-model width.
    #[arg(long, default_value_t = 32)]
    pub pm_width: usize,
    /// RL-CAI: preference-model layers.
    #[arg(long, default_value_t = 1)]
    pub pm_layers: usize,
    /// RL-CAI: helpfulness pairs also corrupt allowed positions with `X` (not only with wrong
    /// digits). Off by default: a small preference model then learns "`X` is bad" everywhere,
    /// against the AI labels (seen: it preferred the unwithheld answer on 65% of prompts).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub x_corruption: bool,
    /// RL-CAI: preference-model training steps (full batch).
    #[arg(long, default_value_t = 400)]
    pub pm_steps: usize,
    /// RL-CAI: online DPO rounds.
    #[arg(long, default_value_t = 60)]
    pub rl_rounds: usize,
    /// RL-CAI: prompts per round (two samples each).
    #[arg(long, default_value_t = 32)]
    pub rl_prompts: usize,
    /// RL-CAI: DPO beta (the KL to the SL-CAI policy).
    #[arg(long, default_value_t = 0.2)]
    pub beta: f64,
    /// RL-CAI: learning rate (Adam).
    #[arg(long, default_value_t = 3e-4)]
    pub rl_learning_rate: f64,
    /// Held-out prompts.
    #[arg(long, default_value_t = 200)]
    pub heldout: usize,
    /// Samples per held-out prompt.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// Device: flex, or wgpu / cuda when built with that feature.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Output folder of the plot.
    #[arg(long, default_value = "out/constitutional")]
    pub out: PathBuf,
    /// Print only the tables and the final line.
    #[arg(long)]
    pub quiet: bool,
}

/// One stage's held-out figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Eval {
    pub harmless: f64,
    pub helpful: f64,
    pub kl: f64,
}

/// The feedback model's agreement with the checker on fresh noise-free items.
#[derive(Debug, Clone, Copy, Default)]
pub struct Agreement {
    pub critique: f64,
    pub revision: f64,
    pub comparison: f64,
    pub critique_rephrased: f64,
    pub revision_rephrased: f64,
    pub comparison_rephrased: f64,
}

/// One seed's run.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    pub seed: u64,
    pub sft: Eval,
    pub sl_cai: Eval,
    pub rl_cai: Eval,
    pub agreement: Agreement,
    /// Share of SL-CAI answers the critique flagged, and of those the revision changed.
    pub flagged: f64,
    pub revised: f64,
    /// Share of held-out prompts where the preference model scores the reversal with its
    /// forbidden digits withheld above the plain reversal.
    pub pm_harm_accuracy: f64,
    /// Online DPO: mean preference-model score of the samples per round.
    pub rl_scores: Vec<f64>,
    pub seconds: f64,
}

/// The preference model: a small transformer and the crate's reward head on the last
/// attended token.
#[derive(Module, Debug)]
pub struct PreferenceModel {
    lm: TinyLm,
    head: RewardHead,
}

impl PreferenceModel {
    fn new(width: usize, layers: usize, device: &Device) -> Self {
        Self {
            lm: TinyLm::with_vocab(width, layers, VOCAB, POLICY_LEN, device),
            head: RewardHeadConfig::new(width).init(device),
        }
    }
    fn rewards(&self, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<1> {
        self.head
            .forward_reward(self.lm.hidden_masked(ids, mask.clone()), mask)
    }
}

fn policy_sampler(num_generations: usize) -> burn_rlhf::generate::Sampler {
    SamplerConfig::new()
        .with_num_generations(num_generations)
        .with_max_new_tokens(PROMPT + 1)
        .with_eos_token_ids(vec![EOS])
        .with_pad_token_id(EOS)
        .with_suppress_token_ids(cai::non_answer_tokens())
        .init()
}

/// The answer part of a completion (up to 4 tokens, EOS dropped).
fn answer(c: &[i64]) -> Vec<i64> {
    c.iter()
        .copied()
        .filter(|&t| t != EOS)
        .take(PROMPT)
        .collect()
}

/// Held-out figures of `policy` (samples at temperature 1, a fixed seed).
fn evaluate(
    policy: &TinyLm,
    sft: &TinyLm,
    heldout: &[Vec<i64>],
    samples: usize,
    device: &Device,
) -> Eval {
    let rows: Vec<Vec<i64>> = heldout
        .iter()
        .map(|p| p.iter().copied().chain([SEP]).collect())
        .collect();
    let g = policy_sampler(samples).sample(policy, &Prompts::left_padded(&rows, EOS, device), 7);
    let completions = g.completions();
    let (mut harmless, mut done, mut asked) = (0usize, 0usize, 0usize);
    for (i, c) in completions.iter().enumerate() {
        let a = answer(c);
        harmless += cai::harmless(&a) as usize;
        let (d, n) = cai::helpful(&heldout[i / samples], &a);
        done += d;
        asked += n;
    }
    let policy_sum = g.logps.clone().sum_dim(1).squeeze_dim::<1>(1);
    let sft_tokens = g.completion_logps(sft, 1.0);
    let sft_sum = sft_tokens.sum();
    let kl = (policy_sum - sft_sum).mean().into_scalar::<f64>();
    Eval {
        harmless: harmless as f64 / completions.len() as f64,
        helpful: done as f64 / asked.max(1) as f64,
        kl,
    }
}

/// Greedy revisions by the feedback model: `(principle, completion)` -> the revised answer
/// (the original when the output is not 4 digits / `X`).
fn revise(fm: &TinyLm, items: &[(&Principle, Vec<i64>)], device: &Device) -> Vec<Vec<i64>> {
    if items.is_empty() {
        return vec![];
    }
    let rows: Vec<Vec<i64>> = items
        .iter()
        .map(|(p, c)| cai::revision_input(&p.text, c))
        .collect();
    let g = SamplerConfig::new()
        .with_greedy(true)
        .with_max_new_tokens(PROMPT + 1)
        .with_eos_token_ids(vec![EOS])
        .with_pad_token_id(EOS)
        .with_suppress_token_ids(cai::non_answer_tokens())
        .init()
        .sample(fm, &Prompts::left_padded(&rows, EOS, device), 0);
    g.completions()
        .iter()
        .zip(items)
        .map(|(out, (_, c))| {
            let a = answer(out);
            let ok = a.len() == PROMPT && a.iter().all(|&t| t < SEP || t == X);
            if ok { a } else { c.clone() }
        })
        .collect()
}

/// A probe of the feedback model: a principle, a prompt and two answers.
type Probe = (Principle, Vec<i64>, Vec<i64>, Vec<i64>);

fn agreement(fm: &TinyLm, rng: &mut Rng, device: &Device) -> Agreement {
    let judge = cai::judge();
    let mut out = Agreement::default();
    for (rephrased, principles) in [(false, cai::constitution()), (true, cai::rephrased())] {
        let n = 300;
        let items: Vec<Probe> = (0..n)
            .map(|_| {
                let p = principles[rng.below(principles.len())].clone();
                let prompt = cai::prompt(rng);
                let a = cai::synthetic_completion(&prompt, rng);
                let b = cai::synthetic_completion(&prompt, rng);
                (p, prompt, a, b)
            })
            .collect();
        let crit = judge
            .try_pointwise(
                fm,
                &cai::critique_template(),
                &items
                    .iter()
                    .map(|(p, _, a, _)| PointwiseItem {
                        principle: &p.text,
                        prompt: &[],
                        completion: a,
                    })
                    .collect::<Vec<_>>(),
                device,
            )
            .expect("critique");
        let critique = items
            .iter()
            .zip(&crit)
            .filter(|((p, _, a, _), y)| (**y > 0.5) == a.contains(&p.digit))
            .count() as f64
            / n as f64;
        let revised = revise(
            fm,
            &items
                .iter()
                .map(|(p, _, a, _)| (p, a.clone()))
                .collect::<Vec<_>>(),
            device,
        );
        let revision = items
            .iter()
            .zip(&revised)
            .filter(|((p, _, a, _), r)| **r == cai::withhold(a, p.digit))
            .count() as f64
            / n as f64;
        let labels = judge
            .try_pairwise(
                fm,
                &cai::comparison_template(),
                &items
                    .iter()
                    .map(|(p, prompt, a, b)| PairwiseItem {
                        principle: &p.text,
                        prompt,
                        first: a,
                        second: b,
                    })
                    .collect::<Vec<_>>(),
                device,
            )
            .expect("comparison");
        let decided: Vec<bool> = items
            .iter()
            .zip(&labels)
            .filter_map(|((p, _, a, b), &l)| {
                cai::rule_prefers_first(a, b, p.digit).map(|first| first == (l > 0.5))
            })
            .collect();
        let comparison =
            decided.iter().filter(|&&x| x).count() as f64 / decided.len().max(1) as f64;
        if rephrased {
            out.critique_rephrased = critique;
            out.revision_rephrased = revision;
            out.comparison_rephrased = comparison;
        } else {
            out.critique = critique;
            out.revision = revision;
            out.comparison = comparison;
        }
    }
    out
}

pub fn run_seed(args: &Args, seed: u64, say: &dyn Fn(String)) -> Result<SeedReport, String> {
    let start = Instant::now();
    let base = device_of(&args.device)?;
    let device = base.clone().autodiff();
    base.seed(seed);
    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let heldout = cai::heldout_prompts(args.heldout, seed);
    let mut report = SeedReport {
        seed,
        ..SeedReport::default()
    };

    // The feedback model: trained on its own noisy synthetic data, then frozen.
    let fm = cai::train_feedback_model(&device, args.feedback_steps, 48, &mut rng).valid();
    report.agreement = agreement(&fm, &mut rng, &base);
    say(format!(
        "seed {seed}: feedback model {:?}",
        report.agreement
    ));

    // 1. Helpful SFT: the reversal, nothing about harm.
    let sft = {
        let heldout = heldout.clone();
        let mut rng = Rng(rng.next_u64() | 1);
        cai::sft(
            cai::policy_model(&device),
            &device,
            args.sft_steps,
            3e-3,
            move || {
                cai::prompt_rows(32, &mut rng, &heldout)
                    .into_iter()
                    .map(|p| {
                        let mut t = cai::reversed(&p[..PROMPT]);
                        t.push(EOS);
                        (p, t)
                    })
                    .collect()
            },
        )
    };
    let sft_ref = sft.valid();
    report.sft = evaluate(&sft_ref, &sft_ref, &heldout, args.samples, &base);
    say(format!("seed {seed}: SFT {:?}", report.sft));

    // 2. SL-CAI: critique -> revision under random principles, then SFT on the revisions.
    let constitution = cai::constitution();
    let prompts = cai::prompt_rows(args.revision_prompts, &mut rng, &heldout);
    let g = policy_sampler(1).sample(&sft_ref, &Prompts::left_padded(&prompts, EOS, &base), seed);
    let mut answers: Vec<Vec<i64>> = g.completions().iter().map(|c| answer(c)).collect();
    let (mut flagged, mut changed) = (0usize, 0usize);
    let judge = cai::judge();
    for _ in 0..args.revision_rounds {
        let drawn: Vec<&Principle> = (0..answers.len())
            .map(|_| &constitution[rng.below(constitution.len())])
            .collect();
        let critiques = judge
            .try_pointwise(
                &fm,
                &cai::critique_template(),
                &drawn
                    .iter()
                    .zip(&answers)
                    .map(|(p, a)| PointwiseItem {
                        principle: &p.text,
                        prompt: &[],
                        completion: a,
                    })
                    .collect::<Vec<_>>(),
                &base,
            )
            .map_err(|e| e.to_string())?;
        let to_revise: Vec<usize> = (0..answers.len()).filter(|&i| critiques[i] > 0.5).collect();
        let items: Vec<(&Principle, Vec<i64>)> = to_revise
            .iter()
            .map(|&i| (drawn[i], answers[i].clone()))
            .collect();
        let revised = revise(&fm, &items, &base);
        flagged += to_revise.len();
        for (&i, r) in to_revise.iter().zip(revised) {
            changed += (r != answers[i]) as usize;
            answers[i] = r;
        }
    }
    report.flagged = flagged as f64 / (answers.len() * args.revision_rounds) as f64;
    report.revised = changed as f64 / flagged.max(1) as f64;
    let revisions: Vec<(Vec<i64>, Vec<i64>)> = prompts
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.len() == PROMPT)
        .map(|(p, a)| (p.clone(), a.iter().copied().chain([EOS]).collect()))
        .collect();
    let sl = {
        let mut rng = Rng(rng.next_u64() | 1);
        cai::sft(sft.clone(), &device, args.sl_steps, 2e-3, move || {
            (0..32)
                .map(|_| revisions[rng.below(revisions.len())].clone())
                .collect()
        })
    };
    report.sl_cai = evaluate(&sl.valid(), &sft_ref, &heldout, args.samples, &base);
    say(format!(
        "seed {seed}: SL-CAI {:?} (critique flagged {:.2}, revision changed {:.2} of those)",
        report.sl_cai, report.flagged, report.revised
    ));

    // 3. RL-CAI: AI soft labels on sample pairs -> preference model -> online DPO.
    let pm_prompts = cai::prompt_rows(args.pm_prompts, &mut rng, &heldout);
    let pairs = policy_sampler(2)
        .config()
        .clone()
        .with_temperature(args.pair_temperature)
        .init()
        .sample(
            &sl.valid(),
            &Prompts::left_padded(&pm_prompts, EOS, &base),
            seed + 1,
        );
    let all: Vec<Vec<i64>> = pairs.completions().iter().map(|c| answer(c)).collect();
    // Pairs with an empty answer (a sample that stopped at once) are left out.
    let kept: Vec<usize> = (0..pm_prompts.len())
        .filter(|&i| !all[2 * i].is_empty() && !all[2 * i + 1].is_empty())
        .collect();
    let pm_prompts: Vec<Vec<i64>> = kept.iter().map(|&i| pm_prompts[i].clone()).collect();
    let comps: Vec<Vec<i64>> = kept
        .iter()
        .flat_map(|&i| [all[2 * i].clone(), all[2 * i + 1].clone()])
        .collect();
    let mut labels = vec![0.0; pm_prompts.len()];
    for _ in 0..args.label_principles {
        let drawn: Vec<&Principle> = (0..pm_prompts.len())
            .map(|_| &constitution[rng.below(constitution.len())])
            .collect();
        let one = judge
            .try_pairwise(
                &fm,
                &cai::comparison_template(),
                &(0..pm_prompts.len())
                    .map(|i| PairwiseItem {
                        principle: &drawn[i].text,
                        prompt: &pm_prompts[i][..PROMPT],
                        first: &comps[2 * i],
                        second: &comps[2 * i + 1],
                    })
                    .collect::<Vec<_>>(),
                &base,
            )
            .map_err(|e| e.to_string())?;
        for (l, p) in labels.iter_mut().zip(one) {
            *l += p / args.label_principles as f64;
        }
    }
    // The preference model's data: the AI harmlessness pairs (soft labels) and helpfulness
    // pairs from the task's dataset (label 1).
    let mut rows: Vec<(Vec<i64>, Vec<i64>, f64)> = (0..pm_prompts.len())
        .map(|i| (comps[2 * i].clone(), comps[2 * i + 1].clone(), labels[i]))
        .collect();
    let mut pair_prompts: Vec<Vec<i64>> = pm_prompts.iter().map(|p| p[..PROMPT].to_vec()).collect();
    for p in cai::prompt_rows(args.pm_prompts, &mut rng, &heldout) {
        let (chosen, rejected) = cai::helpfulness_pair(&p[..PROMPT], args.x_corruption, &mut rng);
        rows.push((chosen, rejected, 1.0));
        pair_prompts.push(p[..PROMPT].to_vec());
    }
    let n = rows.len();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for side in 0..2 {
        for ((a, b, _), p) in rows.iter().zip(&pair_prompts) {
            let (i, m) = cai::answer_row(p, if side == 0 { a } else { b });
            ids.extend(i);
            mask.extend(m);
        }
    }
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2 * n, POLICY_LEN]), &device);
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [2 * n, POLICY_LEN]), &device);
    let probs = Tensor::<1>::from_data(
        TensorData::new(rows.iter().map(|r| r.2).collect::<Vec<_>>(), [n]),
        &device,
    );
    let mut pm = PreferenceModel::new(args.pm_width, args.pm_layers, &device);
    let bt = BradleyTerryLossConfig::new().init();
    let mut optim = AdamConfig::new().init();
    for _ in 0..args.pm_steps {
        let r = pm.rewards(ids.clone(), mask.clone());
        let out = bt.forward_soft(
            r.clone().narrow(0, 0, n),
            r.narrow(0, n, n),
            None,
            probs.clone(),
        );
        let grads = GradientsParams::from_grads(out.loss.backward(), &pm);
        pm = optim.step(2e-3, pm, grads);
    }
    let pm = pm.valid();
    report.pm_harm_accuracy = {
        // Held-out answers: the reversal against the same with its forbidden digits withheld.
        let pairs: Vec<(Vec<i64>, Vec<i64>, Vec<i64>)> = heldout
            .iter()
            .filter(|p| p.iter().any(|d| cai::FORBIDDEN.contains(d)))
            .map(|p| {
                let r = cai::reversed(p);
                let mut safe = r.clone();
                for d in cai::FORBIDDEN {
                    safe = cai::withhold(&safe, d);
                }
                (p.clone(), safe, r)
            })
            .collect();
        let n = pairs.len();
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for side in 0..2 {
            for (p, safe, raw) in &pairs {
                let (i, m) = cai::answer_row(p, if side == 0 { safe } else { raw });
                ids.extend(i);
                mask.extend(m);
            }
        }
        let r: Vec<f64> = pm
            .rewards(
                Tensor::<2, Int>::from_data(TensorData::new(ids, [2 * n, POLICY_LEN]), &base),
                Tensor::<2, Bool>::from_data(TensorData::new(mask, [2 * n, POLICY_LEN]), &base),
            )
            .into_data()
            .convert::<f64>()
            .try_into_vec()
            .unwrap();
        (0..n).filter(|&i| r[i] > r[n + i]).count() as f64 / n.max(1) as f64
    };
    say(format!(
        "seed {seed}: preference model prefers the withheld answer on {:.3} of held-out prompts",
        report.pm_harm_accuracy
    ));
    let mut reference = sl.valid();
    let mut policy = sl;
    let dpo = OnlineDpoConfig::new()
        .with_beta(args.beta)
        .with_learning_rate(args.rl_learning_rate)
        .with_max_grad_norm(None)
        .init();
    let mut optim = AdamConfig::new().init();
    let sampler = policy_sampler(2);
    for round in 0..args.rl_rounds {
        let rows = cai::prompt_rows(args.rl_prompts, &mut rng, &heldout);
        let g: Generation = sampler.sample(
            &policy.valid(),
            &Prompts::left_padded(&rows, EOS, &base),
            seed * 100_003 + round as u64,
        );
        let scores: Vec<f64> = pm
            .rewards(g.ids(), g.attention_mask())
            .into_data()
            .convert::<f64>()
            .try_into_vec()
            .unwrap();
        report
            .rl_scores
            .push(scores.iter().sum::<f64>() / scores.len() as f64);
        let scores: Vec<Option<f64>> = scores.into_iter().map(Some).collect();
        policy = dpo
            .try_step(policy, &mut reference, &mut optim, &g, &scores)
            .map_err(|e| e.to_string())?
            .policy;
    }
    report.rl_cai = evaluate(&policy.valid(), &sft_ref, &heldout, args.samples, &base);
    say(format!("seed {seed}: RL-CAI {:?}", report.rl_cai));
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Every seed.
pub fn run(args: &Args) -> Result<Vec<SeedReport>, String> {
    let quiet = args.quiet;
    let say = move |s: String| {
        if !quiet {
            println!("{s}")
        }
    };
    (args.seed..args.seed + args.seeds)
        .map(|seed| run_seed(args, seed, &say))
        .collect()
}

/// Mean of a stage's figure over the seeds.
pub fn mean(reports: &[SeedReport], f: impl Fn(&SeedReport) -> f64) -> f64 {
    reports.iter().map(f).sum::<f64>() / reports.len() as f64
}

pub fn main() {
    let args = Args::parse();
    let reports = run(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    println!("\n| seed | stage | harmless | helpful | KL to SFT |");
    println!("|---:|---|---:|---:|---:|");
    for r in &reports {
        for (stage, e) in [("SFT", r.sft), ("SL-CAI", r.sl_cai), ("RL-CAI", r.rl_cai)] {
            println!(
                "| {} | {stage} | {:.3} | {:.3} | {:.3} |",
                r.seed, e.harmless, e.helpful, e.kl
            );
        }
    }
    println!(
        "\nfeedback model vs the checker (fresh items, noise-free labels; training labels had 10% noise):"
    );
    println!(
        "| seed | critique | revision | comparison | critique (rephrased) | revision (rephrased) | comparison (rephrased) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in &reports {
        let a = r.agreement;
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.seed,
            a.critique,
            a.revision,
            a.comparison,
            a.critique_rephrased,
            a.revision_rephrased,
            a.comparison_rephrased
        );
    }
    let stage_series = |name: &str, f: &dyn Fn(&SeedReport) -> f64| chart::Series {
        name: name.to_string(),
        points: reports.iter().map(|r| (r.seed as f64, f(r))).collect(),
    };
    let path = args.out.join("constitutional.svg");
    chart::write_svg(
        &path,
        "Constitutional AI stage by stage (held-out, per seed)",
        &[
            chart::Panel {
                title: "harmless".into(),
                x_label: "seed".into(),
                series: vec![
                    stage_series("SFT", &|r| r.sft.harmless),
                    stage_series("SL-CAI", &|r| r.sl_cai.harmless),
                    stage_series("RL-CAI", &|r| r.rl_cai.harmless),
                ],
            },
            chart::Panel {
                title: "helpful".into(),
                x_label: "seed".into(),
                series: vec![
                    stage_series("SFT", &|r| r.sft.helpful),
                    stage_series("SL-CAI", &|r| r.sl_cai.helpful),
                    stage_series("RL-CAI", &|r| r.rl_cai.helpful),
                ],
            },
            chart::Panel {
                title: "RL-CAI: preference-model score of the samples".into(),
                x_label: "round".into(),
                series: reports
                    .iter()
                    .map(|r| chart::Series {
                        name: format!("seed {}", r.seed),
                        points: r
                            .rl_scores
                            .iter()
                            .enumerate()
                            .map(|(i, &s)| (i as f64, s))
                            .collect(),
                    })
                    .collect(),
            },
        ],
    )
    .unwrap_or_else(|e| eprintln!("could not write {}: {e}", path.display()));
    let secs: f64 = reports.iter().map(|r| r.seconds).sum();
    println!("\nwrote {} ({secs:.1} s)", path.display());
    println!(
        "final: harmless {:.3} -> {:.3}, helpful {:.3} -> {:.3}",
        mean(&reports, |r| r.sft.harmless),
        mean(&reports, |r| r.rl_cai.harmless),
        mean(&reports, |r| r.sft.helpful),
        mean(&reports, |r| r.rl_cai.helpful),
    );
}
