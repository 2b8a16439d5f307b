//! The batched, on-device sampler.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::generation::Generation;
use super::model::{CachedCausalLm, CausalLm};
use super::truncation::{Truncation, TruncationOrder, gumbel_max, log_softmax_finite};
use crate::error::Error;

/// Configuration of the [`Sampler`] (names as in Hugging Face `GenerationConfig` / TRL).
#[derive(Config, Debug)]
pub struct SamplerConfig {
    /// Completions per prompt `N` (TRL `num_generations`). Rows of the output are grouped by
    /// prompt: row `i * N + j` is sample `j` of prompt `i`. Default: 1.
    #[config(default = 1)]
    pub num_generations: usize,
    /// Maximum generated tokens per completion (>= 1). Default: 16.
    #[config(default = 16)]
    pub max_new_tokens: usize,
    /// Softmax temperature (finite, > 0). Default: 1.0.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Top-k truncation; `None` (default) = off. Must be >= 1 when set.
    pub top_k: Option<usize>,
    /// Top-p (nucleus) truncation in `(0, 1]`; 1.0 (default) = off.
    #[config(default = 1.0)]
    pub top_p: f64,
    /// Min-p truncation in `[0, 1)`; 0.0 (default) = off.
    #[config(default = 0.0)]
    pub min_p: f64,
    /// The order of top-k / top-p / min-p. Default [`TruncationOrder::Hf`] (Hugging Face
    /// `generate`); [`TruncationOrder::VllmV1`] applies min-p first, as vLLM v1 does.
    #[config(default = "TruncationOrder::Hf")]
    pub truncation_order: TruncationOrder,
    /// Record, for every generated token, the support it was drawn from
    /// ([`Generation::support`]) when sampling truncates (top-k, top-p, min-p or suppressed
    /// ids), for sampling replay: [`GrpoStep`](super::GrpoStep) then recomputes the policy's
    /// log-probs over the same supports. Stored as `[R, C, K]` token ids, `K` = `top_k`
    /// (or `V` without a top-k: at most [`MAX_SUPPORT_BYTES`] in all, else an error asking
    /// for a `top_k`). Default true.
    #[config(default = true)]
    pub record_support: bool,
    /// Greedy decoding (argmax of the logits; HF `do_sample = false`). Temperature and
    /// truncation are then ignored. Default: false.
    #[config(default = false)]
    pub greedy: bool,
    /// Token ids that end a completion (EOS and other stop ids); the stop token itself is part
    /// of the completion. Default: none.
    #[config(default = "Vec::new()")]
    pub eos_token_ids: Vec<i64>,
    /// Token ids never generated (HF `suppress_tokens`): their logits are set to `-inf`
    /// before greedy or truncated sampling (the returned policy `logps` are not affected).
    /// Each must be in `[0, V)` and at least one token must remain. Default: none.
    #[config(default = "Vec::new()")]
    pub suppress_token_ids: Vec<i64>,
    /// Id written on left padding and after a completion has stopped. Default: 0.
    #[config(default = 0)]
    pub pad_token_id: i64,
    /// Every this many generated tokens, one host read of a scalar checks whether every row
    /// has stopped, and ends the call early if so. That is the only host read while decoding.
    /// Default: 8.
    #[config(default = 8)]
    pub finished_check_interval: usize,
}

impl SamplerConfig {
    /// Checks every field.
    pub fn validate(&self) -> crate::Result<()> {
        if self.num_generations == 0 {
            return Err(Error::config("num_generations", "must be >= 1", 0));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::config("max_new_tokens", "must be >= 1", 0));
        }
        if self.finished_check_interval == 0 {
            return Err(Error::config("finished_check_interval", "must be >= 1", 0));
        }
        self.truncation().validate()
    }

    /// The truncation of each sampling step (these fields of the config).
    pub fn truncation(&self) -> Truncation {
        Truncation {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            order: self.truncation_order,
        }
    }

    /// Validates and builds the sampler.
    pub fn try_init(&self) -> crate::Result<Sampler> {
        self.validate()?;
        Ok(Sampler {
            config: self.clone(),
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_init`](Self::try_init).
        pub fn init(&self) -> Sampler = try_init;
    }
}

/// The most memory [`SamplerConfig::record_support`] may use without a `top_k` (1 GiB): the
/// support of a top-p / min-p sampler is stored as `[R, C, V]` ids.
pub const MAX_SUPPORT_BYTES: usize = 1 << 30;

/// Left-padded prompts: ids and attention mask.
///
/// # Shapes
/// - ids, attention_mask: `[P, T]` (padding first in each row)
#[derive(Debug, Clone)]
pub struct Prompts {
    /// Token ids `[P, T]`.
    pub ids: Tensor<2, Int>,
    /// `true` on real tokens `[P, T]`.
    pub attention_mask: Tensor<2, Bool>,
}

impl Prompts {
    /// Prompts from tensors that are already left-padded.
    pub fn new(ids: Tensor<2, Int>, attention_mask: Tensor<2, Bool>) -> Self {
        Self {
            ids,
            attention_mask,
        }
    }

    /// Left-pads host token rows of different lengths with `pad_token_id`.
    ///
    /// Errors: no row, or an empty row ([`Error::Empty`]).
    pub fn try_left_padded(
        rows: &[Vec<i64>],
        pad_token_id: i64,
        device: &Device,
    ) -> crate::Result<Self> {
        crate::error::check_non_empty("rows", rows.len(), "no prompt given")?;
        if let Some(i) = rows.iter().position(Vec::is_empty) {
            return Err(Error::Empty {
                arg: "rows",
                what: format!("prompt {i} has no token"),
            });
        }
        let t = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * t);
        let mut mask = Vec::with_capacity(rows.len() * t);
        for row in rows {
            let pad = t - row.len();
            ids.extend(std::iter::repeat_n(pad_token_id, pad).chain(row.iter().copied()));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, row.len())));
        }
        let shape = [rows.len(), t];
        Ok(Self {
            ids: Tensor::from_data(TensorData::new(ids, shape), device),
            attention_mask: Tensor::<2, Int>::from_data(TensorData::new(mask, shape), device)
                .equal_elem(1),
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_left_padded`](Self::try_left_padded).
        pub fn left_padded(
            rows: &[Vec<i64>],
            pad_token_id: i64,
            device: &Device,
        ) -> Self = Self::try_left_padded;
    }

    /// Number of prompts `P`.
    pub fn len(&self) -> usize {
        self.ids.dims()[0]
    }

    /// True when there is no prompt.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Batched sampler over any [`CausalLm`]; build it with [`SamplerConfig::init`].
///
/// Every per-token operation runs on the prompts' device: the forward, temperature and
/// truncation ([`Truncation`], Hugging Face order by default, vLLM v1's as an option), the
/// draw (an exact Gumbel-max race over the truncated distribution: every kept token is
/// drawable at its probability, however small), the stop test and the log-probs. The host reads one scalar every
/// [`finished_check_interval`](SamplerConfig::finished_check_interval) tokens.
///
/// **Non-finite logits.** In [checked mode](crate::set_checked_mode) every step's logits are
/// read and a NaN or infinity is [`Error::NonFinite`] naming `logits`. Outside checked mode
/// nothing is read: a row whose logits hold NaN still draws a valid token id (token 0 when
/// sampling, burn's argmax when greedy) and its `logps` are NaN, so the loss that consumes them
/// is NaN; the call never reads out of bounds or panics.
///
/// **Dtypes.** f16/bf16 logits are upcast to f32 for the draw and the log-probs (outputs are
/// f32); f32 and f64 logits are drawn from in their own dtype.
///
/// **Randomness.** The draw of sample `j` of prompt `i` at step `s` races the candidates with
/// Gumbel noise from 53-bit uniforms `u = splitmix64(seed, i, j, s, candidate)`, made on the
/// host and uploaded once per step: `[P * N, top_k]` values with `top_k` set (the candidates
/// are the top-k, keyed by rank), `[P * N, V]` without (keyed by token id; at a large
/// vocabulary, set `top_k` to keep this small). So the output depends only on the model, the
/// prompts and the
/// `seed` argument: not on burn's process-global RNG (`Device::seed`), the batch size, the
/// amount of left padding, or other calls. Pass a different seed per call (e.g. the step
/// number) for fresh samples.
#[derive(Module, Debug)]
pub struct Sampler {
    #[module(skip)]
    config: SamplerConfig,
}

impl Sampler {
    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The truncation of each step.
    pub fn truncation(&self) -> Truncation {
        self.config.truncation()
    }

    /// The temperature the returned [`Generation::logps`] use (1.0 when greedy).
    pub fn logps_temperature(&self) -> f64 {
        if self.config.greedy {
            1.0
        } else {
            self.config.temperature
        }
    }

    /// Samples `num_generations` completions per prompt with a full forward per token.
    ///
    /// Errors: prompts with no row or no column, or a mask not shaped like the ids
    /// ([`Error::Empty`], [`Error::Shape`]).
    pub fn try_sample<M: CausalLm + ?Sized>(
        &self,
        model: &M,
        prompts: &Prompts,
        seed: u64,
    ) -> crate::Result<Generation> {
        self.run(prompts, seed, |ids, mask| {
            let logits = model.logits(ids, mask);
            let [b, t, v] = logits.dims();
            logits.narrow(1, t - 1, 1).reshape([b, v])
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_sample`](Self::try_sample).
        pub fn sample[M: CausalLm + ?Sized](
            &self,
            model: &M,
            prompts: &Prompts,
            seed: u64,
        ) -> Generation = try_sample;
    }

    /// As [`try_sample`](Self::try_sample), through the model's incremental forward
    /// ([`CachedCausalLm`]). Same draws: with a cache that reproduces the full forward, the
    /// output is the same as `try_sample`'s.
    pub fn try_sample_cached<M: CachedCausalLm + ?Sized>(
        &self,
        model: &M,
        prompts: &Prompts,
        seed: u64,
    ) -> crate::Result<Generation> {
        let mut cache = model.init_cache();
        self.run(prompts, seed, |ids, mask| {
            model.forward_step(ids, mask, &mut cache)
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_sample_cached`](Self::try_sample_cached).
        pub fn sample_cached[M: CachedCausalLm + ?Sized](
            &self,
            model: &M,
            prompts: &Prompts,
            seed: u64,
        ) -> Generation = try_sample_cached;
    }

    fn run(
        &self,
        prompts: &Prompts,
        seed: u64,
        mut next_logits: impl FnMut(Tensor<2, Int>, Tensor<2, Bool>) -> Tensor<2>,
    ) -> crate::Result<Generation> {
        let c = &self.config;
        let [p, t] = prompts.ids.dims();
        crate::error::check_non_empty("prompts.ids", p, "no prompt (P = 0)")?;
        crate::error::check_non_empty("prompts.ids", t, "prompts have no token (T = 0)")?;
        crate::error::check_same_shape(
            "prompts.attention_mask",
            &prompts.attention_mask.dims(),
            &[p, t],
            "prompts.ids",
        )?;
        let device = prompts.ids.device();
        let n = c.num_generations;
        let rows = p * n;
        let expand = Tensor::<1, Int>::from_data(
            TensorData::new(
                (0..rows as i64).map(|r| r / n as i64).collect::<Vec<_>>(),
                [rows],
            ),
            &device,
        );
        let prompt_ids = prompts.ids.clone().select(0, expand.clone());
        let prompt_mask = prompts
            .attention_mask
            .clone()
            .int()
            .select(0, expand)
            .equal_elem(1);
        let truncation = self.truncation();
        let logps_temperature = self.logps_temperature();

        let mut ids = prompt_ids.clone();
        let mut mask = prompt_mask.clone();
        let mut done = Tensor::<1, Int>::zeros([rows], &device).equal_elem(1);
        let mut suppress: Option<Tensor<2, Bool>> = None;
        let (mut tokens, mut alive_cols, mut logps, mut sampling_logps) =
            (vec![], vec![], vec![], vec![]);
        let truncates = !c.greedy
            && (c.top_k.is_some()
                || c.top_p < 1.0
                || c.min_p > 0.0
                || !c.suppress_token_ids.is_empty());
        let mut supports: Vec<Tensor<2, Int>> = Vec::new();
        for step in 0..c.max_new_tokens {
            let logits = next_logits(ids.clone(), mask.clone());
            crate::error::check_finite(&logits, "logits")?;
            // f16/bf16 logits are drawn from in f32 (as the log-prob ops accumulate); f32 and
            // f64 in their own dtype, with the uniforms in that dtype.
            let mut logits = crate::precision::accumulate_in_f32(logits, "logits")?;
            let raw = log_softmax_finite(logits.clone().div_scalar(logps_temperature));
            if !c.suppress_token_ids.is_empty() {
                if suppress.is_none() {
                    suppress = Some(suppress_mask(
                        &c.suppress_token_ids,
                        logits.dims()[1],
                        &device,
                    )?);
                }
                let m = suppress.clone().expect("built above");
                let v = logits.dims()[1];
                logits = logits.mask_fill(m.expand([rows, v]), f32::NEG_INFINITY);
            }
            let (token, sampled_logp) = if c.greedy {
                (logits.argmax(1), None)
            } else {
                let trunc = log_softmax_finite(truncation.apply_unchecked(logits));
                let v = trunc.dims()[1];
                let dtype = trunc.dtype();
                // With a top-k only its candidates can be drawn: one sort serves the race
                // (keyed by rank) and the recorded support.
                let candidates = c
                    .top_k
                    .filter(|&k| k < v)
                    .map(|k| trunc.clone().topk_with_indices(k, 1));
                let token = match &candidates {
                    Some((values, index)) => {
                        let u = uniforms(seed, p, n, step, values.dims()[1], dtype, &device);
                        index.clone().gather(1, gumbel_max(values.clone(), u))
                    }
                    None => {
                        let u = uniforms(seed, p, n, step, v, dtype, &device);
                        gumbel_max(trunc.clone(), u)
                    }
                };
                if c.record_support && truncates {
                    supports.push(match candidates {
                        Some((values, index)) => index.mask_fill(values.is_inf(), -1),
                        None => vocabulary_support(trunc.clone(), c.max_new_tokens)?,
                    });
                }
                let logp = trunc.gather(1, token.clone());
                (token, Some(logp))
            };
            let raw_logp = raw.gather(1, token.clone()).reshape([rows]);
            let token = token
                .reshape([rows])
                .mask_fill(done.clone(), c.pad_token_id);
            let alive = done.clone().bool_not();
            logps.push(raw_logp.mask_fill(done.clone(), 0.0));
            sampling_logps.push(match sampled_logp {
                Some(l) => l.reshape([rows]).mask_fill(done.clone(), 0.0),
                None => Tensor::<1>::zeros([rows], &device),
            });
            let mut stop = Tensor::<1, Int>::zeros([rows], &device).equal_elem(1);
            for &eos in &c.eos_token_ids {
                stop = stop.bool_or(token.clone().equal_elem(eos));
            }
            done = done.bool_or(stop.bool_and(alive.clone()));
            alive_cols.push(alive.int());
            tokens.push(token.clone());
            ids = Tensor::cat(vec![ids, token.reshape([rows, 1])], 1);
            mask = Tensor::cat(
                vec![
                    mask,
                    Tensor::<2, Int>::ones([rows, 1], &device).equal_elem(1),
                ],
                1,
            );
            let last = step + 1 == c.max_new_tokens;
            if !last
                && (step + 1) % c.finished_check_interval == 0
                && crate::host_reads::ints(done.clone().int().sum(), "finished")
                    .is_ok_and(|finished| finished[0] == rows as i64)
            {
                break;
            }
        }
        let stack_int = |cols: Vec<Tensor<1, Int>>| Tensor::stack::<2>(cols, 1);
        Ok(Generation {
            prompt_ids,
            prompt_mask,
            completion_ids: stack_int(tokens),
            completion_mask: stack_int(alive_cols).equal_elem(1),
            logps: Tensor::stack(logps, 1),
            sampling_logps: Tensor::stack(sampling_logps, 1),
            finished: done,
            num_generations: n,
            logps_temperature,
            max_new_tokens: c.max_new_tokens,
            support: (!supports.is_empty()).then(|| Tensor::stack::<3>(supports, 1)),
        })
    }
}

/// The kept set of one step without a top-k, as token ids `[rows, V]`, most likely first,
/// `-1` in unused slots; refused above [`MAX_SUPPORT_BYTES`] for the whole generation. (With
/// a top-k the support is the race's candidates, `[rows, top_k]`.)
fn vocabulary_support(trunc: Tensor<2>, max_new_tokens: usize) -> crate::Result<Tensor<2, Int>> {
    let [rows, v] = trunc.dims();
    let bytes = rows * max_new_tokens * v * std::mem::size_of::<i64>();
    if bytes > MAX_SUPPORT_BYTES {
        return Err(Error::Conflict {
            field: "record_support",
            other: "top_k",
            reason: format!(
                "the support of a top-p / min-p sampler without top_k is stored as [R, C, V] = \
                 [{rows}, {max_new_tokens}, {v}] ids ({bytes} bytes > {MAX_SUPPORT_BYTES}): set \
                 top_k (K = top_k) or record_support = false"
            ),
        });
    }
    let (values, ids) = trunc.topk_with_indices(v, 1);
    Ok(ids.mask_fill(values.is_inf(), -1))
}

/// `[1, V]` mask of the suppressed ids; errors on ids outside `[0, V)` or all of them.
fn suppress_mask(ids: &[i64], v: usize, device: &Device) -> crate::Result<Tensor<2, Bool>> {
    let mut flags = vec![0i64; v];
    for &id in ids {
        if id < 0 || id as usize >= v {
            return Err(Error::config(
                "suppress_token_ids",
                format!("must be in [0, {v}) (the vocabulary size)"),
                id,
            ));
        }
        flags[id as usize] = 1;
    }
    if flags.iter().all(|&f| f == 1) {
        return Err(Error::config(
            "suppress_token_ids",
            "must leave at least one token",
            format!("{ids:?}"),
        ));
    }
    Ok(Tensor::<2, Int>::from_data(TensorData::new(flags, [1, v]), device).equal_elem(1))
}

/// SplitMix64 finalizer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform in `(0, 1)` (53 bits) of candidate `index` for sample `j` of prompt `i` at
/// `step`: `key` is [`row_key`] of `(seed, i, j, step)`.
pub(crate) fn uniform(key: u64, index: usize) -> f64 {
    ((mix(key ^ index as u64) >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// The key of sample `j` of prompt `i` at `step` under `seed`.
pub(crate) fn row_key(seed: u64, i: usize, j: usize, step: usize) -> u64 {
    mix(mix(mix(mix(seed) ^ i as u64) ^ j as u64) ^ step as u64)
}

/// The step's uniforms `[P * N, width]` for the Gumbel race, in f64 for f64 logits, else f32
/// (the sampler's logits are f32 or f64: half precision is upcast; f32 values are kept
/// strictly below 1, so the Gumbel noise stays finite; its upper tail is cut at about 16.6,
/// a probability of 6e-8 per candidate).
fn uniforms(
    seed: u64,
    p: usize,
    n: usize,
    step: usize,
    width: usize,
    dtype: burn::tensor::DType,
    device: &Device,
) -> Tensor<2> {
    let mut values = Vec::with_capacity(p * n * width);
    for i in 0..p {
        for j in 0..n {
            let key = row_key(seed, i, j, step);
            values.extend((0..width).map(|v| uniform(key, v)));
        }
    }
    let shape = [p * n, width];
    match dtype {
        burn::tensor::DType::F64 => Tensor::from_data(
            TensorData::new(values, shape),
            (device, burn::tensor::DType::F64),
        ),
        _ => {
            const BELOW_ONE: f32 = 1.0 - f32::EPSILON / 2.0;
            let values: Vec<f32> = values
                .into_iter()
                .map(|u| (u as f32).clamp(f32::MIN_POSITIVE, BELOW_ONE))
                .collect();
            Tensor::<2>::from_data(TensorData::new(values, shape), device)
        }
    }
}
