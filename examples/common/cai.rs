//! The `constitutional` example's world: a toy task with a harm to avoid, a constitution given
//! as data, a feedback model's synthetic training data, and the ground-truth checker that only
//! the evaluation reads.
//!
//! Task: a prompt is 4 digits; the helpful answer is the digits reversed (4 tokens, then EOS).
//! Harm: the constitution forbids some digits ([`FORBIDDEN`]); the harmless and helpful answer
//! writes the withheld token [`X`] where a forbidden digit would go. Principles are token
//! sentences ending with their digit ("never say 7", "avoid 3", ...).
//!
//! The feedback model is a small LM trained beforehand on synthetic examples of three jobs,
//! labelled by a rule with noise (a share [`NOISE`] of the labels are wrong), then frozen:
//! - critique: `[CRITIQUE, principle, SEP, completion, ASK]` -> `YES` if the completion breaks
//!   the principle, else `NO`;
//! - revision: `[REVISE, principle, SEP, completion, SEP]` -> the completion with the
//!   principle's digit replaced by `X`, then EOS;
//! - comparison: `[COMPARE, principle, SEP, prompt, SEP, A, first, B, second, ASK]` -> `A` or `B`:
//!   fewer breaches of the principle wins (a tie is a coin flip: the feedback model judges
//!   harm, not the task).
//!
//! Helpfulness comes from elsewhere, as in Bai et al. (human helpfulness labels beside the AI
//! harmlessness labels): [`helpfulness_pair`] prefers the dataset's answer to a corrupted one.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_rlhf::Normalizer;
use burn_rlhf::generate::{JudgePiece, JudgeSlot, JudgeTemplate, ModelJudge};
use burn_rlhf::logps::{FusedLogpsConfig, GatheredLogps};

use super::rng::Rng;
use super::toy::TinyLm;

pub const DIGITS: i64 = 10;
pub const SEP: i64 = 10;
pub const EOS: i64 = 11;
/// The withheld digit.
pub const X: i64 = 12;
// Words.
pub const NEVER: i64 = 13;
pub const SAY: i64 = 14;
pub const AVOID: i64 = 15;
pub const DO: i64 = 16;
pub const NOT: i64 = 17;
pub const WRITE: i64 = 18;
// Answers and task markers.
pub const A: i64 = 19;
pub const B: i64 = 20;
pub const YES: i64 = 21;
pub const NO: i64 = 22;
pub const CRITIQUE: i64 = 23;
pub const REVISE: i64 = 24;
pub const COMPARE: i64 = 25;
pub const ASK: i64 = 26;
pub const VOCAB: usize = 27;
/// Prompt digits.
pub const PROMPT: usize = 4;
/// Positions of the feedback model (the longest comparison prompt plus a revision's target).
pub const FEEDBACK_LEN: usize = 24;
/// Positions of the policy and the preference model (prompt, SEP, 4 tokens, EOS).
pub const POLICY_LEN: usize = PROMPT + 1 + PROMPT + 1;
/// The digits the constitution forbids.
pub const FORBIDDEN: [i64; 2] = [3, 7];
/// Share of wrong labels in the feedback model's synthetic data.
pub const NOISE: f64 = 0.1;

/// One principle: its words (ending with the digit it forbids) and that digit.
#[derive(Debug, Clone, PartialEq)]
pub struct Principle {
    pub text: Vec<i64>,
    pub digit: i64,
}

/// The constitution: every forbidden digit in the phrasings the feedback model is trained
/// with ("never say d", "avoid d", "do not write d").
pub fn constitution() -> Vec<Principle> {
    let mut out = Vec::new();
    for &d in &FORBIDDEN {
        for words in [&[NEVER, SAY][..], &[AVOID][..], &[DO, NOT, WRITE][..]] {
            let mut text = words.to_vec();
            text.push(d);
            out.push(Principle { text, digit: d });
        }
    }
    out
}

/// The same rules rephrased in words the feedback model saw, in an order it never saw ("not
/// say d", "never write d").
pub fn rephrased() -> Vec<Principle> {
    let mut out = Vec::new();
    for &d in &FORBIDDEN {
        for words in [&[NOT, SAY][..], &[NEVER, WRITE][..]] {
            let mut text = words.to_vec();
            text.push(d);
            out.push(Principle { text, digit: d });
        }
    }
    out
}

// ----------------------------------------------------------------------------- the task

pub fn prompt(rng: &mut Rng) -> Vec<i64> {
    (0..PROMPT).map(|_| rng.below(10) as i64).collect()
}

/// The helpful answer: the prompt reversed.
pub fn reversed(prompt: &[i64]) -> Vec<i64> {
    prompt.iter().rev().copied().collect()
}

/// `completion` with every `digit` replaced by `X`.
pub fn withhold(completion: &[i64], digit: i64) -> Vec<i64> {
    completion
        .iter()
        .map(|&t| if t == digit { X } else { t })
        .collect()
}

/// The ground truth (evaluation only): no forbidden digit in the answer.
pub fn harmless(completion: &[i64]) -> bool {
    !completion.iter().any(|t| FORBIDDEN.contains(t))
}

/// The ground truth (evaluation only): `(done, asked)`: of the positions whose reversed digit
/// is allowed, how many the answer gets right. A constant answer scores about 0.1.
pub fn helpful(prompt: &[i64], completion: &[i64]) -> (usize, usize) {
    let want = reversed(prompt);
    let asked: Vec<usize> = (0..PROMPT)
        .filter(|&i| !FORBIDDEN.contains(&want[i]))
        .collect();
    let done = asked
        .iter()
        .filter(|&&i| completion.get(i) == Some(&want[i]))
        .count();
    (done, asked.len())
}

/// A preference-model row: `prompt digits, SEP, answer, EOS`, right-padded with EOS to
/// [`POLICY_LEN`], and its attention mask.
pub fn answer_row(prompt: &[i64], answer: &[i64]) -> (Vec<i64>, Vec<bool>) {
    let mut ids: Vec<i64> = prompt[..PROMPT].to_vec();
    ids.push(SEP);
    ids.extend_from_slice(answer);
    ids.push(EOS);
    let real = ids.len();
    ids.resize(POLICY_LEN, EOS);
    let mask = (0..POLICY_LEN).map(|i| i < real).collect();
    (ids, mask)
}

/// Prompt rows `digits + SEP`, none of them held out.
pub fn prompt_rows(n: usize, rng: &mut Rng, heldout: &[Vec<i64>]) -> Vec<Vec<i64>> {
    let mut rows = Vec::with_capacity(n);
    while rows.len() < n {
        let p = prompt(rng);
        if !heldout.contains(&p) {
            rows.push(p.into_iter().chain([SEP]).collect());
        }
    }
    rows
}

/// `n` held-out prompts (digits only), from a stream of their own.
pub fn heldout_prompts(n: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut rng = Rng(0x5851_F42D_4C95_7F2D ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..n).map(|_| prompt(&mut rng)).collect()
}

// ----------------------------------------------------------------------------- training

/// Right-padded rows (with EOS) as ids, and labels (-100 outside the targets).
pub fn batch(rows: &[(Vec<i64>, Vec<i64>)], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let width = rows
        .iter()
        .map(|(p, t)| p.len() + t.len())
        .max()
        .unwrap_or(1);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut labels = Vec::with_capacity(rows.len() * width);
    for (input, target) in rows {
        let n = input.len() + target.len();
        ids.extend(input.iter().chain(target).copied());
        ids.extend(std::iter::repeat_n(EOS, width - n));
        labels.extend(std::iter::repeat_n(-100, input.len()));
        labels.extend(target.iter().copied());
        labels.extend(std::iter::repeat_n(-100, width - n));
    }
    let shape = [rows.len(), width];
    (
        Tensor::from_data(TensorData::new(ids, shape), device),
        Tensor::from_data(TensorData::new(labels, shape), device),
    )
}

/// Target-token log-probs of `rows` under `model` (fused LM-head op).
pub fn gather(model: &TinyLm, rows: &[(Vec<i64>, Vec<i64>)], device: &Device) -> GatheredLogps {
    let (ids, labels) = batch(rows, device);
    FusedLogpsConfig::new()
        .with_check_targets(false)
        .init()
        .forward_causal(model.hidden(ids), model.head_weight(), None, labels)
        .0
}

/// `steps` SFT steps (Adam, `lr`) on batches from `draw`.
pub fn sft(
    mut model: TinyLm,
    device: &Device,
    steps: usize,
    lr: f64,
    mut draw: impl FnMut() -> Vec<(Vec<i64>, Vec<i64>)>,
) -> TinyLm {
    let mut optim = AdamConfig::new().init();
    for _ in 0..steps {
        let rows = draw();
        let g = gather(&model, &rows, device);
        let nll = Normalizer::TokenMean.reduce_tokens(g.logps.neg(), g.mask);
        let grads = GradientsParams::from_grads(nll.backward(), &model);
        model = optim.step(lr, model, grads);
    }
    model
}

// ----------------------------------------------------------------------------- feedback model

/// A completion of the kinds the feedback model is shown: the reversal (a helpful policy's),
/// the reversal with forbidden digits withheld (partly or fully), random digits, or the
/// reversal with one digit changed.
pub fn synthetic_completion(prompt: &[i64], rng: &mut Rng) -> Vec<i64> {
    let r = reversed(prompt);
    let u = rng.uniform();
    if u < 0.45 {
        r
    } else if u < 0.7 {
        let mut c = r;
        for t in c.iter_mut() {
            if FORBIDDEN.contains(t) && rng.chance(0.7) {
                *t = X;
            }
        }
        c
    } else if u < 0.85 {
        (0..PROMPT).map(|_| rng.below(10) as i64).collect()
    } else {
        let mut c = r;
        let i = rng.below(PROMPT);
        c[i] = rng.below(10) as i64;
        c
    }
}

/// The comparison rule: fewer breaches of `digit` wins.
fn comparison_score(c: &[i64], digit: i64) -> i64 {
    -(c.iter().filter(|&&t| t == digit).count() as i64)
}

/// A helpfulness preference (the "human" labels of the task): the dataset's answer (the
/// reversal) over the same answer with one or two allowed positions corrupted (a wrong digit
/// or `X`). At the forbidden positions both answers hold the same token (the digit, or `X` at
/// random), so the pair says nothing about harm: that is the AI labels' job.
pub fn helpfulness_pair(prompt: &[i64], x_corruption: bool, rng: &mut Rng) -> (Vec<i64>, Vec<i64>) {
    let mut chosen = reversed(prompt);
    for t in chosen.iter_mut() {
        if FORBIDDEN.contains(t) && rng.chance(0.5) {
            *t = X;
        }
    }
    let allowed: Vec<usize> = (0..PROMPT)
        .filter(|&i| chosen[i] != X && !FORBIDDEN.contains(&chosen[i]))
        .collect();
    let mut rejected = chosen.clone();
    if allowed.is_empty() {
        // Every digit is forbidden: a wrong, allowed digit in one place.
        rejected[rng.below(PROMPT)] = 0;
        return (chosen, rejected);
    }
    for _ in 0..1 + rng.below(2) {
        let i = allowed[rng.below(allowed.len())];
        rejected[i] = if x_corruption && rng.chance(0.5) {
            X
        } else {
            // A wrong digit that is not forbidden either (so the pair stays neutral on harm).
            let mut d = (chosen[i] + 1 + rng.below(9) as i64) % 10;
            while FORBIDDEN.contains(&d) || d == chosen[i] {
                d = (d + 1) % 10;
            }
            d
        };
    }
    (chosen, rejected)
}

pub fn critique_input(principle: &[i64], completion: &[i64]) -> Vec<i64> {
    let mut v = vec![CRITIQUE];
    v.extend_from_slice(principle);
    v.push(SEP);
    v.extend_from_slice(completion);
    v.push(ASK);
    v
}

pub fn revision_input(principle: &[i64], completion: &[i64]) -> Vec<i64> {
    let mut v = vec![REVISE];
    v.extend_from_slice(principle);
    v.push(SEP);
    v.extend_from_slice(completion);
    v.push(SEP);
    v
}

/// The pairwise judging template (the same layout as the comparison training rows).
pub fn comparison_template() -> JudgeTemplate {
    JudgeTemplate::new(vec![
        JudgePiece::Tokens(vec![COMPARE]),
        JudgePiece::Slot(JudgeSlot::Principle),
        JudgePiece::Tokens(vec![SEP]),
        JudgePiece::Slot(JudgeSlot::Prompt),
        JudgePiece::Tokens(vec![SEP, A]),
        JudgePiece::Slot(JudgeSlot::OptionA),
        JudgePiece::Tokens(vec![B]),
        JudgePiece::Slot(JudgeSlot::OptionB),
        JudgePiece::Tokens(vec![ASK]),
    ])
}

/// The pointwise critique template: `P(YES)` = the completion breaks the principle.
pub fn critique_template() -> JudgeTemplate {
    JudgeTemplate::new(vec![
        JudgePiece::Tokens(vec![CRITIQUE]),
        JudgePiece::Slot(JudgeSlot::Principle),
        JudgePiece::Tokens(vec![SEP]),
        JudgePiece::Slot(JudgeSlot::Completion),
        JudgePiece::Tokens(vec![ASK]),
    ])
}

/// The feedback model's judge: answers `A` / `B`, `YES` / `NO`, padding EOS.
pub fn judge() -> ModelJudge {
    ModelJudge::new([A, B], (YES, Some(NO)), EOS)
}

/// One synthetic training example of each job, labelled by the rule with `NOISE`.
pub fn synthetic_examples(rng: &mut Rng, principles: &[Principle]) -> Vec<(Vec<i64>, Vec<i64>)> {
    let principle = &principles[rng.below(principles.len())];
    let p = prompt(rng);
    let c = synthetic_completion(&p, rng);
    let flip = |rng: &mut Rng| rng.chance(NOISE);
    // Critique.
    let breaks = c.contains(&principle.digit) != flip(rng);
    let critique = (
        critique_input(&principle.text, &c),
        vec![if breaks { YES } else { NO }],
    );
    // Revision (a noisy label leaves the completion as it was).
    let mut target = if flip(rng) {
        c.clone()
    } else {
        withhold(&c, principle.digit)
    };
    target.push(EOS);
    let revision = (revision_input(&principle.text, &c), target);
    // Comparison.
    let other = synthetic_completion(&p, rng);
    let (sa, sb) = (
        comparison_score(&c, principle.digit),
        comparison_score(&other, principle.digit),
    );
    let first_wins = match sa.cmp(&sb) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => rng.chance(0.5),
    } != flip(rng);
    let mut input = vec![COMPARE];
    input.extend_from_slice(&principle.text);
    input.push(SEP);
    input.extend_from_slice(&p);
    input.extend([SEP, A]);
    input.extend_from_slice(&c);
    input.push(B);
    input.extend_from_slice(&other);
    input.push(ASK);
    let comparison = (input, vec![if first_wins { A } else { B }]);
    vec![critique, revision, comparison]
}

/// Trains the feedback model on `steps` batches of `batch / 3` examples of each job.
pub fn train_feedback_model(device: &Device, steps: usize, batch: usize, rng: &mut Rng) -> TinyLm {
    let principles = constitution();
    let model = TinyLm::with_vocab(64, 2, VOCAB, FEEDBACK_LEN, device);
    sft(model, device, steps, 2e-3, || {
        (0..batch.div_ceil(3))
            .flat_map(|_| synthetic_examples(rng, &principles))
            .collect()
    })
}

/// The comparison rule's verdict for a pair (for the agreement table; `None` on a tie).
pub fn rule_prefers_first(first: &[i64], second: &[i64], digit: i64) -> Option<bool> {
    let (a, b) = (
        comparison_score(first, digit),
        comparison_score(second, digit),
    );
    (a != b).then_some(a > b)
}

/// The policy: width 32, 2 layers.
pub fn policy_model(device: &Device) -> TinyLm {
    TinyLm::with_vocab(32, 2, VOCAB, POLICY_LEN, device)
}

/// Tokens the policy's sampler never draws (words, answers, markers, SEP).
pub fn non_answer_tokens() -> Vec<i64> {
    (SEP..VOCAB as i64)
        .filter(|&t| t != EOS && t != X)
        .collect()
}

/// Parameter count of a model (the sizes table).
pub fn num_params<M: Module>(m: &M) -> usize {
    m.num_params()
}
