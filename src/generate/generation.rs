//! What the sampler returns, and the policy log-probs of it.

use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::model::CausalLm;
use crate::error::Error;
use crate::logps::{GatheredLogps, LabelAlignment, TokenLogpsConfig};
use crate::rl::Rollout;

/// Sampled completions. Rows are grouped by prompt: row `i * N + j` is sample `j` of prompt
/// `i` (`N` = [`num_generations`](Self::num_generations)).
///
/// # Shapes
/// - prompt_ids, prompt_mask: `[R, P]` (left-padded, repeated per sample); `R` = prompts x N
/// - completion_ids, completion_mask, logps, sampling_logps: `[R, C]`, `C <= max_new_tokens`
/// - finished: `[R]`
#[derive(Debug, Clone)]
pub struct Generation {
    /// Prompt ids `[R, P]`.
    pub prompt_ids: Tensor<2, Int>,
    /// Prompt attention mask `[R, P]`.
    pub prompt_mask: Tensor<2, Bool>,
    /// Generated ids `[R, C]`; the sampler's `pad_token_id` after a stop token.
    pub completion_ids: Tensor<2, Int>,
    /// `true` on generated tokens up to and including the stop token `[R, C]`.
    pub completion_mask: Tensor<2, Bool>,
    /// Log-probs of the sampled tokens under the untruncated policy at the sampling temperature,
    /// `log_softmax(logits / T)` (T = 1 when greedy) `[R, C]`; 0 where the mask is false. This
    /// is what a loss recomputes (TRL `old_per_token_logps`).
    pub logps: Tensor<2>,
    /// Log-probs of the sampled tokens under the distribution actually sampled from (tempered
    /// and truncated; 0 when greedy: a point mass) `[R, C]`; 0 where the mask is false.
    /// `logps - sampling_logps` is the per-token log importance weight of the truncation.
    pub sampling_logps: Tensor<2>,
    /// `true` for rows that ended with a stop token (the others hit `max_new_tokens`).
    pub finished: Tensor<1, Bool>,
    /// Samples per prompt `N`.
    pub num_generations: usize,
    /// The temperature of [`logps`](Self::logps).
    pub logps_temperature: f64,
    /// The sampler's `max_new_tokens` (the length bound of every completion; `C` is smaller
    /// when every row stopped early). Dr. GRPO normalizes by it.
    pub max_new_tokens: usize,
    /// The support each token was drawn from `[R, C, K]` (token ids of the kept set, most
    /// likely first, `-1` in unused slots), when the sampler truncated and recorded it
    /// ([`SamplerConfig::record_support`](super::SamplerConfig::record_support)); `None`: the
    /// whole vocabulary (or greedy). [`sampling_logps`](Self::sampling_logps) is the token's
    /// log-prob over this support; [`completion_support_logps`](Self::completion_support_logps)
    /// recomputes it for any model (sampling replay).
    pub support: Option<Tensor<3, Int>>,
}

impl Generation {
    /// Rows `R`.
    pub fn len(&self) -> usize {
        self.completion_ids.dims()[0]
    }

    /// True when there is no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of prompts (`R / N`).
    pub fn num_prompts(&self) -> usize {
        self.len() / self.num_generations
    }

    /// Prompt plus completion ids `[R, P + C]`.
    pub fn ids(&self) -> Tensor<2, Int> {
        Tensor::cat(
            vec![self.prompt_ids.clone(), self.completion_ids.clone()],
            1,
        )
    }

    /// Attention mask of [`ids`](Self::ids) `[R, P + C]` (false on left padding and after the
    /// stop token).
    pub fn attention_mask(&self) -> Tensor<2, Bool> {
        Tensor::cat(
            vec![
                self.prompt_mask.clone().int(),
                self.completion_mask.clone().int(),
            ],
            1,
        )
        .equal_elem(1)
    }

    crate::error::panicking! {
        /// Rows `rows`, in that order (`num_generations` becomes 1: the rows need not form
        /// groups).
        pub fn select(&self, rows: &[usize]) -> Generation = try_select;
    }

    /// Non-panicking form of [`select`](Self::select): [`Error::Config`] naming `rows` when
    /// an index is not below [`len`](Self::len), [`Error::Empty`] when `rows` is empty.
    pub fn try_select(&self, rows: &[usize]) -> crate::Result<Generation> {
        crate::error::check_non_empty("rows", rows.len(), "no row selected")?;
        let len = self.len();
        if let Some(&bad) = rows.iter().find(|&&r| r >= len) {
            return Err(Error::config(
                "rows",
                format!("every row index must be < {len} (the generation's rows)"),
                bad,
            ));
        }
        let device = self.completion_ids.device();
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &device,
        );
        let bool2 = |x: &Tensor<2, Bool>| x.clone().int().select(0, idx.clone()).equal_elem(1);
        Ok(Generation {
            prompt_ids: self.prompt_ids.clone().select(0, idx.clone()),
            prompt_mask: bool2(&self.prompt_mask),
            completion_ids: self.completion_ids.clone().select(0, idx.clone()),
            completion_mask: bool2(&self.completion_mask),
            logps: self.logps.clone().select(0, idx.clone()),
            sampling_logps: self.sampling_logps.clone().select(0, idx.clone()),
            finished: self
                .finished
                .clone()
                .int()
                .select(0, idx.clone())
                .equal_elem(1),
            num_generations: 1,
            logps_temperature: self.logps_temperature,
            max_new_tokens: self.max_new_tokens,
            support: self
                .support
                .as_ref()
                .map(|s| s.clone().select(0, idx.clone())),
        })
    }

    /// The completions on the host, each cut after its stop token (one read).
    pub fn completions(&self) -> Vec<Vec<i64>> {
        let [r, c] = self.completion_ids.dims();
        let ids = host_i64(self.completion_ids.clone());
        let mask = host_i64(self.completion_mask.clone().int());
        (0..r)
            .map(|i| {
                (0..c)
                    .filter(|&j| mask[i * c + j] == 1)
                    .map(|j| ids[i * c + j])
                    .collect()
            })
            .collect()
    }

    /// The prompts on the host, one per row, without padding (one read).
    pub fn prompts(&self) -> Vec<Vec<i64>> {
        let [r, p] = self.prompt_ids.dims();
        let ids = host_i64(self.prompt_ids.clone());
        let mask = host_i64(self.prompt_mask.clone().int());
        (0..r)
            .map(|i| {
                (0..p)
                    .filter(|&j| mask[i * p + j] == 1)
                    .map(|j| ids[i * p + j])
                    .collect()
            })
            .collect()
    }

    /// Per-row `finished` flags on the host.
    pub fn finished_host(&self) -> Vec<bool> {
        host_i64(self.finished.clone().int().reshape([self.len(), 1]))
            .into_iter()
            .map(|x| x == 1)
            .collect()
    }

    crate::error::panicking! {
        /// Per-token log-probs of the completions under `model` at `temperature`, recomputed
        /// with one full forward (differentiable when `model` is on an autodiff device). The
        /// mask is the completion mask.
        ///
        /// # Shapes
        /// - output: `[R, C]`
        pub fn completion_logps[M: CausalLm + ?Sized](
            &self,
            model: &M,
            temperature: f64,
        ) -> GatheredLogps = try_completion_logps;
    }

    /// Non-panicking form of [`completion_logps`](Self::completion_logps): the model's
    /// logits must be `[R, P + C, V]` ([`Error::Shape`] naming `logits`), `temperature`
    /// finite and > 0.
    pub fn try_completion_logps<M: CausalLm + ?Sized>(
        &self,
        model: &M,
        temperature: f64,
    ) -> crate::Result<GatheredLogps> {
        let logits = self.try_completion_logits(model)?;
        let device = logits.device();
        TokenLogpsConfig::new(LabelAlignment::Aligned)
            .with_temperature(temperature)
            .try_init()?
            .try_forward(
                logits,
                self.completion_ids.clone().to_device(&device),
                Some(self.completion_mask.clone().to_device(&device)),
            )
    }

    /// The completion logits of every row, with the model's output shape checked.
    pub(crate) fn try_completion_logits<M: CausalLm + ?Sized>(
        &self,
        model: &M,
    ) -> crate::Result<Tensor<3>> {
        let ids = self.ids();
        let [r, s] = ids.dims();
        let logits = model.logits(ids, self.attention_mask());
        let [lr, ls, v] = logits.dims();
        if [lr, ls] != [r, s] || v == 0 {
            return Err(Error::shape(
                "logits",
                format!(
                    "[R, P + C, V] = [{r}, {s}, V >= 1] (the model's logits of the generation's ids)"
                ),
                &[lr, ls, v],
            ));
        }
        let [_, c] = self.completion_ids.dims();
        Ok(logits.narrow(1, s - c - 1, c))
    }

    /// Per-token log-probs of the completions under `model` at `temperature`, renormalized
    /// over the recorded [`support`](Self::support) of each token (sampling replay; the
    /// whole vocabulary when there is none, as [`completion_logps`](Self::completion_logps)).
    /// For the policy that sampled, they equal [`sampling_logps`](Self::sampling_logps) (up
    /// to the rounding of a second forward): an importance ratio against those measures only
    /// real drift. One full forward; differentiable.
    ///
    /// # Shapes
    /// - output: `[R, C]` (0 where the completion mask is false)
    pub fn completion_support_logps<M: CausalLm + ?Sized>(
        &self,
        model: &M,
        temperature: f64,
    ) -> crate::Result<Tensor<2>> {
        let logits = self.try_completion_logits(model)?;
        let device = logits.device();
        let (labels, mask) = (
            self.completion_ids.clone().to_device(&device),
            self.completion_mask.clone().to_device(&device),
        );
        match &self.support {
            Some(support) => crate::logps::try_support_logps(
                logits,
                labels,
                support.clone().to_device(&device),
                mask,
                temperature,
            ),
            None => Ok(TokenLogpsConfig::new(LabelAlignment::Aligned)
                .with_temperature(temperature)
                .try_init()?
                .try_forward(logits, labels, Some(mask))?
                .logps),
        }
    }

    /// The logits that score the completion tokens of `ids` (prompt + completion rows laid
    /// out as [`ids`](Self::ids), any subset of rows): `[rows, C, V]`, position `j` predicting
    /// completion token `j`. One full forward.
    pub(crate) fn completion_logits<M: CausalLm + ?Sized>(
        &self,
        model: &M,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Bool>,
    ) -> Tensor<3> {
        let [_, p] = self.prompt_ids.dims();
        let [_, c] = self.completion_ids.dims();
        model.logits(ids, attention_mask).narrow(1, p - 1, c)
    }

    /// A [`Rollout`] for [`ppo_update`](crate::rl::ppo_update) with one advantage per row:
    /// tokens = prompt + completion `[R, P + C]` with their attention mask, mask = completion
    /// mask, old log-probs = [`logps`](Self::logps) (the same full-vocabulary distribution a
    /// forward of the policy recomputes, so the first ratio is 1). Add `with_ref_logps` for
    /// the KL term. No sampling log-probs and no importance weight are set: with the crate's
    /// in-process sampler there is no sampler / trainer mismatch to correct, and
    /// [`sampling_logps`](Self::sampling_logps) (the truncated distribution) differ from
    /// `logps` by the truncated mass, not by off-policyness.
    ///
    /// # Shapes
    /// - advantages: `[R]`
    ///
    /// Errors: `advantages` not of length `R` ([`Error::Shape`]), or of another dtype than
    /// the log-probs ([`Error::DType`]).
    pub fn try_rollout(&self, advantages: Tensor<1>) -> crate::Result<Rollout> {
        let r = self.len();
        crate::error::check_same_shape(
            "advantages",
            &advantages.dims(),
            &[r],
            "one advantage per generated row",
        )?;
        crate::error::check_dtype_like("advantages", &advantages, "logps", &self.logps)?;
        Ok(Rollout::new(
            self.ids(),
            self.completion_mask.clone(),
            self.logps.clone(),
            advantages.reshape([r, 1]),
        )
        .with_attention_mask(self.attention_mask()))
    }

    crate::error::panicking! {
        /// Panicking form of [`try_rollout`](Self::try_rollout).
        pub fn rollout(&self, advantages: Tensor<1>) -> Rollout = try_rollout;
    }
}

pub(crate) fn host_i64(x: Tensor<2, Int>) -> Vec<i64> {
    crate::host_reads::ints(x, "generation").unwrap_or_else(|e| panic!("burn-rlhf: {e}"))
}
