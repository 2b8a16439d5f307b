//! The update loop of [`OnlineDpo`]: pairing each round's generation, reference log-probs,
//! shuffled epochs of minibatches (one clipped optimizer step each), TR-DPO's reference sync.

use std::sync::atomic::Ordering;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Int, Tensor};

use super::{OnlineDpo, OnlineDpoOutput, soft_update};
use crate::error::Error;
use crate::generate::{CausalLm, Generation, Pairs};
use crate::logps::GatheredLogps;
use crate::losses::{Metrics, PairedLayout};

impl OnlineDpo {
    /// One online DPO update on sampled data (see [`OnlineDpoConfig`](super::OnlineDpoConfig)): `generation` from the
    /// crate's [`Sampler`](crate::generate::Sampler) (any path: cached or not), `scores` one per generated row (e.g.
    /// [`RewardFunctions::score_all`](crate::generate::RewardFunctions::score_all)`(..).total`).
    ///
    /// `policy` lives on an autodiff device; `reference` is a frozen copy (`policy.valid()`
    /// at the start), moved by TR-DPO's soft update (`sync_ref_model`) or replaced by the
    /// updated policy (`refresh_ref_model`). Log-probs are untempered (TRL 1.16) unless
    /// `tempered_logps`. This is [`try_step_rounds`](Self::try_step_rounds) with one
    /// round.
    ///
    /// Errors: scores not one per row, and the errors of [`try_loss`](Self::try_loss) other
    /// than "no pair" (an update without a pair returns the scoring metrics and the policy
    /// unchanged).
    pub fn try_step<M: CausalLm + Module>(
        &self,
        policy: M,
        ref_model: &mut M,
        optim: &mut ModuleOptimizer,
        generation: &Generation,
        scores: &[Option<f64>],
    ) -> crate::Result<OnlineDpoOutput<M>> {
        self.try_step_rounds(policy, ref_model, optim, &[(generation, scores)])
    }

    /// One update on the pairs of several rounds of generations: iterative DPO that trains
    /// each round on **all the data so far** (Dong et al. 2024, *RLHF Workflow*,
    /// <https://arxiv.org/abs/2405.07863>), with the reference kept fixed (the SFT policy) or
    /// refreshed (`refresh_ref_model`). Each round's rows are scored, penalized and paired on
    /// their own; the pairs of every round are shuffled together (`epochs`, `batch_pairs`,
    /// `seed`) and each minibatch recomputes the policy's log-probs of its rows, round by
    /// round. The scoring and objective metrics describe the **last** round; `num_pairs`
    /// counts every round's pairs.
    ///
    /// Errors: no round, a round whose scores are not one per row, and the loss's errors.
    pub fn try_step_rounds<M: CausalLm + Module>(
        &self,
        policy: M,
        ref_model: &mut M,
        optim: &mut ModuleOptimizer,
        rounds: &[(&Generation, &[Option<f64>])],
    ) -> crate::Result<OnlineDpoOutput<M>> {
        let c = &self.config;
        crate::error::check_non_empty("rounds", rounds.len(), "no round of generations")?;
        let mut per_round = Vec::with_capacity(rounds.len());
        for &(generation, scores) in rounds {
            if scores.len() != generation.len() {
                return Err(Error::shape(
                    "scores",
                    format!(
                        "[{}] (one per generated row of its round)",
                        generation.len()
                    ),
                    &[scores.len()],
                ));
            }
            let finished = generation.finished_host();
            let penalized = self.penalized(scores, &finished);
            let pairs = self
                .pairing
                .try_pair(&penalized, generation.num_generations)?;
            per_round.push((finished, penalized, pairs));
        }
        let all: Vec<(usize, usize)> = per_round
            .iter()
            .enumerate()
            .flat_map(|(k, (_, _, pairs))| (0..pairs.len()).map(move |i| (k, i)))
            .collect();
        let (last_generation, _) = rounds[rounds.len() - 1];
        let (last_finished, last_scores, last_pairs) = &per_round[per_round.len() - 1];
        let mut scoring = self.scoring_metrics(last_scores, last_finished, last_pairs);
        scoring.insert("num_pairs".into(), all.len() as f64);
        if all.is_empty() {
            return Ok(OnlineDpoOutput {
                policy,
                scores: last_scores.clone(),
                pairs: last_pairs.clone(),
                metrics: scoring,
            });
        }
        let temperature = if c.tempered_logps {
            last_generation.logps_temperature
        } else {
            1.0
        };
        let ref_tokens: Vec<GatheredLogps> = rounds
            .iter()
            .map(|(g, _)| g.try_completion_logps(&*ref_model, temperature))
            .collect::<crate::Result<_>>()?;
        // The objective statistics of the last round, from the policy before the update.
        let mut metrics = self.objective_metrics(
            &last_generation.try_completion_logps(&policy.valid(), temperature)?,
            &ref_tokens[ref_tokens.len() - 1],
            last_scores,
            last_finished,
            last_pairs,
        );
        let per_step = if c.batch_pairs == 0 {
            all.len()
        } else {
            c.batch_pairs.min(all.len())
        };
        let mut policy = policy;
        let mut order: Vec<usize> = (0..all.len()).collect();
        let mut rng = crate::rl::step::XorShift::new(c.seed);
        let mut first: Option<Metrics> = None;
        let (mut loss_sum, mut loss_count): (Option<Tensor<1>>, usize) = (None, 0);
        for epoch in 0..c.epochs {
            if epoch > 0 {
                rng.shuffle(&mut order);
            }
            for chunk in order.chunks(per_step) {
                let chunk: Vec<(usize, usize)> = chunk.iter().map(|&i| all[i]).collect();
                let (tokens, ref_sums, local) = self.chunk_rows(
                    &policy,
                    rounds,
                    &per_round,
                    &ref_tokens,
                    &chunk,
                    temperature,
                )?;
                let out = self.pair_loss(&local, &tokens, &ref_sums)?;
                if first.is_none() {
                    first = Some(out.metrics.clone());
                }
                let loss = out.loss.clone().detach();
                loss_sum = Some(match loss_sum.take() {
                    Some(total) => total + loss,
                    None => loss,
                });
                loss_count += 1;
                let mut grads = GradientsParams::from_grads(out.loss.backward(), &policy);
                if let Some(max_norm) = c.max_grad_norm {
                    crate::rl::clip_grad_norm_on_device(&policy, &mut grads, max_norm)?;
                }
                policy = optim.step(c.learning_rate, policy, grads);
            }
        }
        metrics.extend_prefixed("", first.unwrap_or_default());
        if let Some(total) = loss_sum {
            metrics.insert("loss", total.div_scalar(loss_count as f64));
        }
        let mut host = metrics.to_host();
        host.extend(scoring);
        let updates = self.updates.0.fetch_add(1, Ordering::Relaxed) + 1;
        if c.refresh_ref_model {
            *ref_model = policy.valid();
        } else if c.sync_ref_model && updates.is_multiple_of(c.ref_model_sync_steps) {
            *ref_model = soft_update(ref_model.clone(), &policy, c.ref_model_mixup_alpha);
        }
        Ok(OnlineDpoOutput {
            policy,
            scores: last_scores.clone(),
            pairs: last_pairs.clone(),
            metrics: host,
        })
    }

    /// The policy's per-token log-probs of a minibatch of pairs `(round, pair)`: chosen rows
    /// first, then rejected rows, right-padded to one width; the reference sums in the same
    /// order; and the local pairs (`i` against `m + i`).
    #[allow(clippy::type_complexity)]
    fn chunk_rows<M: CausalLm + Module>(
        &self,
        policy: &M,
        rounds: &[(&Generation, &[Option<f64>])],
        per_round: &[(Vec<bool>, Vec<Option<f64>>, Pairs)],
        ref_tokens: &[GatheredLogps],
        chunk: &[(usize, usize)],
        temperature: f64,
    ) -> crate::Result<(GatheredLogps, Tensor<1>, Pairs)> {
        let m = chunk.len();
        let mut parts: Vec<(GatheredLogps, Tensor<1>, Vec<usize>)> = Vec::new();
        for (k, (generation, _)) in rounds.iter().enumerate() {
            let picked: Vec<usize> = chunk
                .iter()
                .enumerate()
                .filter(|(_, (r, _))| *r == k)
                .map(|(slot, _)| slot)
                .collect();
            if picked.is_empty() {
                continue;
            }
            let pairs = &per_round[k].2;
            let side = |rows: &[usize]| -> Vec<usize> {
                picked.iter().map(|&slot| rows[chunk[slot].1]).collect()
            };
            let rows = PairedLayout::try_source_rows(&side(&pairs.chosen), &side(&pairs.rejected))?;
            let tokens = generation
                .try_select(&rows)?
                .try_completion_logps(policy, temperature)?;
            let ref_sums = ref_tokens[k]
                .sum()
                .select(0, index(&rows, &ref_tokens[k].logps.device()));
            parts.push((tokens, ref_sums, picked));
        }
        let width = parts
            .iter()
            .map(|(t, _, _)| t.logps.dims()[1])
            .max()
            .unwrap_or(1);
        // Row order: every chosen row of the chunk (by slot), then every rejected row.
        let (mut chosen, mut rejected, mut ref_chosen, mut ref_rejected, mut slots) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (tokens, ref_sums, picked) in parts {
            let layout = PairedLayout::new(picked.len());
            let tokens = pad_width(tokens, width);
            let (c, r) = layout.split_tokens(&tokens);
            chosen.push(c);
            rejected.push(r);
            let (c, r) = layout.split(ref_sums.to_device(&tokens.logps.device()));
            ref_chosen.push(c);
            ref_rejected.push(r);
            slots.extend(picked);
        }
        let cat = |parts: Vec<GatheredLogps>| GatheredLogps {
            logps: Tensor::cat(parts.iter().map(|p| p.logps.clone()).collect(), 0),
            mask: Tensor::cat(parts.iter().map(|p| p.mask.clone().int()).collect(), 0)
                .equal_elem(1),
        };
        let tokens = cat(vec![cat(chosen), cat(rejected)]);
        let ref_sums =
            PairedLayout::stack(Tensor::cat(ref_chosen, 0), Tensor::cat(ref_rejected, 0));
        debug_assert_eq!(slots.len(), m);
        let layout = PairedLayout::new(m);
        let local = Pairs {
            chosen: (0..m).map(|i| layout.chosen_row(i)).collect(),
            rejected: (0..m).map(|i| layout.rejected_row(i)).collect(),
            margins: slots
                .iter()
                .map(|&slot| {
                    let (k, i) = chunk[slot];
                    per_round[k].2.margins[i]
                })
                .collect(),
        };
        Ok((tokens, ref_sums, local))
    }

    crate::error::panicking! {
        /// Panicking form of [`try_step`](Self::try_step).
        pub fn step[M: CausalLm + Module](
            &self,
            policy: M,
            ref_model: &mut M,
            optim: &mut ModuleOptimizer,
            generation: &Generation,
            scores: &[Option<f64>],
        ) -> OnlineDpoOutput<M> = try_step;
    }
}

/// Right-pads per-token log-probs to `width` columns (log-prob 0, mask false).
fn pad_width(g: GatheredLogps, width: usize) -> GatheredLogps {
    let [rows, c] = g.logps.dims();
    if c >= width {
        return g;
    }
    let device = g.logps.device();
    let dtype = g.logps.dtype();
    GatheredLogps {
        logps: Tensor::cat(
            vec![
                g.logps,
                Tensor::<2>::zeros([rows, width - c], (&device, dtype)),
            ],
            1,
        ),
        mask: Tensor::cat(
            vec![
                g.mask.int(),
                Tensor::<2, Int>::zeros([rows, width - c], &device),
            ],
            1,
        )
        .equal_elem(1),
    }
}

/// Rows `rows` of per-token log-probs (mask kept canonical).
pub(super) fn select_rows(g: &GatheredLogps, rows: &[usize]) -> GatheredLogps {
    let idx = index(rows, &g.logps.device());
    GatheredLogps {
        logps: g.logps.clone().select(0, idx.clone()),
        mask: g.mask.clone().int().select(0, idx).equal_elem(1),
    }
}

pub(crate) fn index(rows: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    Tensor::from_data(
        burn::tensor::TensorData::new(
            rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [rows.len()],
        ),
        device,
    )
}
