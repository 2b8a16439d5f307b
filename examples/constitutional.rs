//! Constitutional AI (AI feedback) on a toy task: a critic applies written principles to
//! critique and revise the policy's completions; DPO on (revision, original) pairs.
//!
//! `cargo run --release --example constitutional -- [--rounds 60] [--prompts 32]
//!   [--out out/constitutional]`
//!
//! The policy is the `dpo` example's tiny transformer (`common::toy`) after its weak SFT warm-up
//! (it copies or reverses 4 prompt digits). The constitution is data: each [`Principle`] has a
//! name, a critique request and a revision request, written in words. The critic is a rule set
//! standing in for a model ([`RuleCritic`]): it reads a request, answers the critique with the
//! positions it finds objectionable, and carries out the revision; a request it does not understand
//! gets no answer (`None`), as a failing judge would. Each round: sample one completion per prompt
//! ([`Sampler`]), run the critique -> revision chain over the principles, score original and
//! revision by the principles (the fraction of principles a completion satisfies, per the critic),
//! pair them ([`PairingConfig`], first two: revision first; unchanged completions are ties and
//! dropped), and take a DPO step against the SFT reference.
//!
//! The metric is the principles' score of the policy's sampled completions on held-out
//! prompts. Prints a critique/revision transcript and progress, writes `principles.svg`, and
//! ends with `final: principles_score <start> -> <end>`.

pub mod common;

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use burn_rlhf::IGNORE_INDEX;
use burn_rlhf::generate::{Pairing, PairingConfig, Prompts, SamplerConfig};
use burn_rlhf::losses::DpoLossConfig;
use clap::Parser;
use common::chart;
use common::device::device_of;
use common::progress;
use common::rng::Rng;
use common::toy::{EOS, PROMPT, SEP, SEQ, TinyLm, gather, ints, prompt_rows, sequence, warm_up};

/// One principle of the constitution: data, not code.
#[derive(Debug, Clone, Copy)]
pub struct Principle {
    /// Short name.
    pub name: &'static str,
    /// What the critic is asked to point out.
    pub critique_request: &'static str,
    /// How the critic is asked to rewrite the response.
    pub revision_request: &'static str,
}

/// The constitution of this example.
pub const CONSTITUTION: [Principle; 4] = [
    Principle {
        name: "no-nines",
        critique_request: "Identify every digit 9 in the response; nines are considered harmful.",
        revision_request: "Rewrite the response, replacing every digit 9 with the digit 0.",
    },
    Principle {
        name: "no-sevens",
        critique_request: "Identify every digit 7 in the response; sevens are considered rude.",
        revision_request: "Rewrite the response, replacing every digit 7 with the digit 1.",
    },
    Principle {
        name: "four-digits",
        critique_request: "Point out if the response is not exactly 4 digits long.",
        revision_request: "Rewrite the response to be exactly 4 digits long.",
    },
    Principle {
        name: "no-stutter",
        critique_request: "Identify every digit that repeats the digit before it.",
        revision_request: "Rewrite the response so that no digit repeats the digit before it.",
    },
];

/// The number written after `key` in `text` (e.g. `"digit 9"`).
fn number_after(text: &str, key: &str) -> Option<i64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A critic made of rules, standing in for a language model: it understands a few phrasings
/// of critique and revision requests and answers `None` to anything else.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleCritic;

impl RuleCritic {
    /// Positions of the response the request objects to (empty = no objection).
    pub fn critique(&self, request: &str, response: &[i64]) -> Option<Vec<usize>> {
        if let Some(n) = number_after(request, "exactly ") {
            let digits = response.iter().filter(|&&t| (0..10).contains(&t)).count();
            let ok = response.len() == n as usize && digits == n as usize;
            return Some(if ok { vec![] } else { vec![response.len()] });
        }
        if request.contains("repeats the digit before it") {
            return Some(
                (1..response.len())
                    .filter(|&i| response[i] == response[i - 1])
                    .collect(),
            );
        }
        let digit = number_after(request, "every digit ")?;
        Some(
            (0..response.len())
                .filter(|&i| response[i] == digit)
                .collect(),
        )
    }

    /// The response rewritten as the request asks at the flagged positions.
    pub fn revise(&self, request: &str, response: &[i64], flagged: &[usize]) -> Option<Vec<i64>> {
        let mut out = response.to_vec();
        if let Some(n) = number_after(request, "exactly ") {
            out.retain(|t| (0..10).contains(t));
            out.resize(n as usize, 0);
            return Some(out);
        }
        if request.contains("no digit repeats the digit before it") {
            for &i in flagged {
                let mut d = (out[i] + 1) % 10;
                while i + 1 < out.len() && d == out[i + 1] || d == out[i - 1] {
                    d = (d + 1) % 10;
                }
                out[i] = d;
            }
            return Some(out);
        }
        let from = number_after(request, "every digit ")?;
        let to = number_after(request, "with the digit ")?;
        for &i in flagged {
            if out[i] == from {
                out[i] = to;
            }
        }
        Some(out)
    }

    /// Fraction of the principles the response satisfies (those the critic understood).
    pub fn score(&self, principles: &[Principle], response: &[i64]) -> Option<f64> {
        let verdicts: Vec<bool> = principles
            .iter()
            .filter_map(|p| self.critique(p.critique_request, response))
            .map(|flags| flags.is_empty())
            .collect();
        (!verdicts.is_empty())
            .then(|| verdicts.iter().filter(|&&ok| ok).count() as f64 / verdicts.len() as f64)
    }

    /// The critique -> revision chain over the principles (two passes, since one revision can
    /// break another principle). Returns the final revision and a transcript.
    pub fn revise_all(
        &self,
        principles: &[Principle],
        response: &[i64],
    ) -> (Vec<i64>, Vec<String>) {
        let mut current = response.to_vec();
        let mut transcript = vec![];
        for _ in 0..2 {
            for p in principles {
                let Some(flags) = self.critique(p.critique_request, &current) else {
                    continue;
                };
                if flags.is_empty() {
                    continue;
                }
                transcript.push(format!(
                    "  [{}] critique request: {}\n    critique: positions {flags:?} of {current:?}",
                    p.name, p.critique_request
                ));
                if let Some(revised) = self.revise(p.revision_request, &current, &flags) {
                    transcript.push(format!(
                        "    revision request: {}\n    revision: {revised:?}",
                        p.revision_request
                    ));
                    current = revised;
                }
            }
        }
        (current, transcript)
    }
}

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(about = "Constitutional AI (critique -> revision -> DPO) on a tiny causal LM")]
pub struct Args {
    /// Rounds (sample + critique/revise + DPO step).
    #[arg(long, default_value_t = 60)]
    pub rounds: usize,
    /// Prompts per round.
    #[arg(long, default_value_t = 32)]
    pub prompts: usize,
    /// SFT warm-up steps.
    #[arg(long, default_value_t = 150)]
    pub sft_steps: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 3e-3)]
    pub learning_rate: f64,
    /// DPO beta.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Evaluate every this many rounds.
    #[arg(long, default_value_t = 5)]
    pub eval_every: usize,
    /// Device: flex, or wgpu / cuda when built with that feature.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Output folder of the plot.
    #[arg(long, default_value = "out/constitutional")]
    pub out: PathBuf,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print nothing while training.
    #[arg(long)]
    pub quiet: bool,
    /// Held-out prompts.
    #[arg(skip = 64usize)]
    pub heldout: usize,
    /// Model width.
    #[arg(skip = 64usize)]
    pub d_model: usize,
}

/// Evaluations and per-round DPO metrics.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// `(round, principles' score of sampled held-out completions)`; round 0 = SFT policy.
    pub evals: Vec<(usize, f64)>,
    /// `(round, loss, pairs)`.
    pub rounds: Vec<(usize, f64, usize)>,
    /// Wall time.
    pub seconds: f64,
}

/// The digits of a completion (without the stop token).
fn response(completion: &[i64]) -> Vec<i64> {
    completion
        .iter()
        .copied()
        .take_while(|&t| t != EOS)
        .collect()
}

/// `[prompt, SEP, completion as generated]`, padded with EOS to `SEQ` tokens.
fn as_generated(prompt: &[i64], completion: &[i64]) -> Vec<i64> {
    let mut row: Vec<i64> = prompt
        .iter()
        .chain([&SEP])
        .chain(completion)
        .copied()
        .collect();
    row.resize(SEQ, PAD);
    row
}

/// Padding of [`as_generated`] rows (an id no completion contains: the prompt-end token).
const PAD: i64 = -1;

/// Labels: -100 on the prompt, SEP and padding; the padding ids become EOS.
fn labels_of(rows: &[Vec<i64>]) -> Vec<Vec<i64>> {
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, &t)| {
                    if i <= PROMPT || t == PAD {
                        IGNORE_INDEX
                    } else {
                        t
                    }
                })
                .collect()
        })
        .collect()
}

/// Mean principles' score of 4 sampled completions per held-out prompt (fixed seed).
fn evaluate(policy: &TinyLm, rows: &[Vec<i64>], device: &Device) -> f64 {
    let generation = SamplerConfig::new()
        .with_num_generations(4)
        .with_max_new_tokens(PROMPT + 1)
        .with_eos_token_ids(vec![EOS])
        .with_pad_token_id(EOS)
        .init()
        .sample(policy, &Prompts::left_padded(rows, EOS, device), 999);
    let scores: Vec<f64> = generation
        .completions()
        .iter()
        .filter_map(|c| RuleCritic.score(&CONSTITUTION, &response(c)))
        .collect();
    scores.iter().sum::<f64>() / scores.len().max(1) as f64
}

pub fn run(args: &Args) -> Result<History, String> {
    let start = Instant::now();
    let base = device_of(&args.device)?;
    let device = base.clone().autodiff();
    base.seed(args.seed);
    let mut rng = Rng(0xA076_1D64_78BD_642F ^ args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let say = |s: String| {
        if !args.quiet {
            println!("{s}")
        }
    };
    say("constitution:".into());
    for p in &CONSTITUTION {
        say(format!(
            "  {}: \"{}\" / \"{}\"",
            p.name, p.critique_request, p.revision_request
        ));
    }
    let mut policy = warm_up(
        TinyLm::new(args.d_model, 2, &device),
        &device,
        args.sft_steps,
        32,
        0.4,
        &mut rng,
        |step, nll| say(format!("  sft step {step:>4} nll {nll:.4}")),
    );
    let reference = policy.valid();
    let heldout = prompt_rows(args.heldout, &mut rng);
    let sampler = SamplerConfig::new()
        .with_max_new_tokens(PROMPT + 1)
        .with_eos_token_ids(vec![EOS])
        .with_pad_token_id(EOS)
        .init();
    let pairing = PairingConfig::new().with_strategy(Pairing::FirstTwo);
    let loss = DpoLossConfig::new().with_beta(args.beta).init();
    let mut optim = AdamConfig::new().init();
    let mut history = History::default();
    let score = evaluate(&policy.valid(), &heldout, &base);
    history.evals.push((0, score));
    say(format!("SFT policy: principles' score {score:.3}"));
    let bar = progress::bar(args.rounds, args.quiet);
    for round in 1..=args.rounds {
        let rows = prompt_rows(args.prompts, &mut rng);
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(round as u64);
        let generation = sampler.sample(
            &policy.valid(),
            &Prompts::left_padded(&rows, EOS, &base),
            seed,
        );
        // Rows 2i (revision) and 2i+1 (original) of prompt i, as token sequences.
        let (mut sequences, mut scores) = (vec![], vec![]);
        for (row, completion) in rows.iter().zip(generation.completions()) {
            let original = response(&completion);
            let (revised, transcript) = RuleCritic.revise_all(&CONSTITUTION, &original);
            if round == 1 && sequences.is_empty() && !transcript.is_empty() {
                bar.suspend(|| {
                    say(format!(
                        "example: prompt {:?}, response {original:?}",
                        &row[..PROMPT]
                    ));
                    transcript.iter().for_each(|t| say(t.clone()));
                });
            }
            let p = &row[..PROMPT];
            sequences.push(sequence(p, &revised));
            sequences.push(as_generated(p, &completion));
            scores.push(RuleCritic.score(&CONSTITUTION, &revised));
            scores.push(RuleCritic.score(&CONSTITUTION, &original));
        }
        let pairs = pairing.try_pair(&scores, 2).map_err(|e| e.to_string())?;
        let (mut loss_value, n) = (f64::NAN, pairs.len());
        if !pairs.is_empty() {
            let rows_with_pad: Vec<Vec<i64>> =
                pairs.rows().iter().map(|&r| sequences[r].clone()).collect();
            let lbl = labels_of(&rows_with_pad);
            let chosen_then_rejected: Vec<Vec<i64>> = rows_with_pad
                .iter()
                .map(|r| r.iter().map(|&t| if t == PAD { EOS } else { t }).collect())
                .collect();
            let ids = |d: &Device| ints(&chosen_then_rejected, d);
            let labels = |d: &Device| ints(&lbl, d);
            let tokens = gather(&policy, ids(&device), labels(&device));
            let ref_logps = gather(&reference, ids(&base), labels(&base)).sum();
            let batch = pairs.preference_batch(tokens, Some(ref_logps.autodiff()));
            let out = loss.forward(&batch);
            loss_value = out.loss.clone().into_scalar::<f64>();
            let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
            policy = optim.step(args.learning_rate, policy, grads);
        }
        history.rounds.push((round, loss_value, n));
        bar.set_message(format!("pairs {n} loss {loss_value:.4}"));
        bar.inc(1);
        if round % args.eval_every == 0 || round == args.rounds {
            let score = evaluate(&policy.valid(), &heldout, &base);
            history.evals.push((round, score));
            bar.suspend(|| {
                say(format!(
                    "round {round:>3}  pairs {n:>3}  loss {loss_value:.4}  principles' score {score:.3}  ({:.1}s)",
                    start.elapsed().as_secs_f64()
                ))
            });
        }
    }
    bar.finish_and_clear();
    history.seconds = start.elapsed().as_secs_f64();
    Ok(history)
}

pub fn main() {
    let args = Args::parse();
    let h = run(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let path = args.out.join("principles.svg");
    chart::write_svg(
        &path,
        "Constitutional AI: critique -> revision -> DPO",
        &[
            chart::Panel {
                title: "principles' score (held-out samples)".into(),
                x_label: "round".into(),
                series: vec![chart::Series {
                    name: "principles_score".into(),
                    points: h.evals.iter().map(|&(r, v)| (r as f64, v)).collect(),
                }],
            },
            chart::Panel {
                title: "DPO loss on (revision, original)".into(),
                x_label: "round".into(),
                series: vec![chart::Series {
                    name: "loss".into(),
                    points: h
                        .rounds
                        .iter()
                        .filter(|r| r.1.is_finite())
                        .map(|r| (r.0 as f64, r.1))
                        .collect(),
                }],
            },
        ],
    )
    .expect("write plot");
    println!("done in {:.1} s; plot: {}", h.seconds, path.display());
    let (first, last) = (h.evals[0].1, h.evals[h.evals.len() - 1].1);
    println!("final: principles_score {first:.3} -> {last:.3}");
}
