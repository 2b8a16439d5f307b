//! The digit-reversal task of the `dpo` family of examples (`dpo`, `dpo_learner`,
//! `dpo_multi_device`, `dpo_data_parallel`, `online_dpo`, `grpo`, `constitutional`,
//! `sampler_bench`).
//!
//! A prompt is [`PROMPT`] random digits; the *rule* is that the completion is the prompt
//! reversed. Rows are `[prompt, SEP, completion, EOS]` ([`SEQ`] tokens). [`TinyLm`] is a tiny
//! causal transformer: training reads its log-probs through the crate's fused LM-head op
//! ([`gather`], no `[N, V]` logits), the crate's sampler decodes it through [`CausalLm`] and
//! [`CachedCausalLm`] (burn's autoregressive encoder cache). [`warm_up`] is the weak SFT
//! warm-up (a mix of reversed and copied completions), [`make_pairs`] the preference data,
//! [`rule_rate`] and [`heldout_reward_accuracy`] the evaluations, and [`scorer`] with the
//! prompt helpers the reward and prompts of the online examples.

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::TransformerEncoderAutoregressiveCache;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_rlhf::generate::{
    CachedCausalLm, CausalLm, Completion, Prompts, RewardFunctions, SamplerConfig, position_ids,
};
use burn_rlhf::logps::{FusedLogpsConfig, GatheredLogps};
use burn_rlhf::{IGNORE_INDEX, Normalizer};

use super::rng::Rng;

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
        Self::with_vocab(d_model, layers, VOCAB, max_len, device)
    }

    /// A model over a vocabulary of `vocab` tokens with `max_len` positions (the
    /// `constitutional` example's policy, feedback model and preference model).
    pub fn with_vocab(
        d_model: usize,
        layers: usize,
        vocab: usize,
        max_len: usize,
        device: &Device,
    ) -> Self {
        Self {
            tokens: EmbeddingConfig::new(vocab, d_model).init(device),
            positions: EmbeddingConfig::new(max_len, d_model).init(device),
            encoder: TransformerEncoderConfig::new(d_model, 4 * d_model, 4, layers)
                .with_dropout(0.0)
                .init(device),
            lm_head: LinearConfig::new(d_model, vocab)
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
/// The rule's completion with one digit changed.
pub fn near_miss(p: &[i64], rng: &mut Rng) -> Vec<i64> {
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
pub fn labels(seq: &[i64]) -> Vec<i64> {
    seq.iter()
        .enumerate()
        .map(|(i, &x)| if i <= PROMPT { IGNORE_INDEX } else { x })
        .collect()
}
/// Prompt (digits + SEP) and completion (digits + EOS) of a `[prompt, SEP, completion, EOS]` row.
pub fn split_row(row: &[i64]) -> (Vec<i64>, Vec<i64>) {
    (row[..=PROMPT].to_vec(), row[PROMPT + 1..].to_vec())
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

/// Labels of token rows: `-100` on the prompt and SEP.
pub fn labels_of(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    ints(&rows.iter().map(|r| labels(r)).collect::<Vec<_>>(), device)
}

// ----------------------------------------------------------------------------- log-probs

/// Completion log-probs of `ids` under `model`, through the fused LM-head op.
pub fn gather(model: &TinyLm, ids: Tensor<2, Int>, lbl: Tensor<2, Int>) -> GatheredLogps {
    FusedLogpsConfig::new()
        .with_check_targets(false)
        .init()
        .forward_causal(model.hidden(ids), model.head_weight(), None, lbl)
        .0
}

// ----------------------------------------------------------------------------- evaluation

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

// ----------------------------------------------------------------------------- training

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
        let nll = Normalizer::TokenMean.reduce_tokens(g.logps.neg(), g.mask);
        if step % 50 == 0 || step == steps {
            log(step, nll.clone().into_scalar::<f64>());
        }
        model = step_optim(model, &mut optim, 3e-3, nll);
    }
    model
}

/// One optimizer step of `model` on `loss`.
pub fn step_optim(model: TinyLm, optim: &mut ModuleOptimizer, lr: f64, loss: Tensor<1>) -> TinyLm {
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optim.step(lr, model, grads)
}

// ----------------------------------------------------------------------------- online examples

/// The prompt's digits reversed (the sampler's prompt is digits + SEP).
fn reversed_prompt(c: &Completion) -> Vec<i64> {
    rule(&c.prompt[..PROMPT])
}

/// The scorer: 0.8 x fraction of digits in their reversed position + 0.2 x format.
pub fn scorer() -> RewardFunctions {
    RewardFunctions::new()
        .with("reversed", 0.8, |c: &Completion| {
            let want = reversed_prompt(c);
            let hits = want
                .iter()
                .zip(c.completion)
                .filter(|(a, b)| a == b)
                .count();
            Some(hits as f64 / PROMPT as f64)
        })
        .with("format", 0.2, |c: &Completion| {
            let ok = c.completion.len() == PROMPT + 1
                && c.completion[..PROMPT].iter().all(|&t| t < SEP)
                && c.finished;
            Some(if ok { 1.0 } else { 0.0 })
        })
}

/// Prompt rows `digits + SEP`.
pub fn prompt_rows(n: usize, rng: &mut Rng) -> Vec<Vec<i64>> {
    (0..n)
        .map(|_| prompt(rng).into_iter().chain([SEP]).collect())
        .collect()
}

/// `n` held-out prompts (digits only) for `seed`, from a stream of their own.
pub fn heldout_prompts(n: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut rng = Rng(0xA076_1D64_78BD_642F ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..n).map(|_| prompt(&mut rng)).collect()
}

/// `n` training prompts, none of them a held-out prompt (`heldout` holds the digits, without
/// the separator).
pub fn training_prompt_rows(n: usize, rng: &mut Rng, heldout: &[Vec<i64>]) -> Vec<Vec<i64>> {
    let mut rows = Vec::with_capacity(n);
    while rows.len() < n {
        let digits = prompt(rng);
        if !heldout.contains(&digits) {
            rows.push(digits.into_iter().chain([SEP]).collect());
        }
    }
    rows
}
