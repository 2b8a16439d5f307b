//! Scoring completions: weighted reward closures, a reward model, a pairwise judge.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::generation::Generation;
use super::pairing::Pairs;
use crate::error::{Error, unwrap_or_panic};
use crate::heads::RewardHead;

/// One completion as a reward function sees it.
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// Row in the [`Generation`].
    pub row: usize,
    /// Index of its prompt (`row / N`).
    pub prompt_index: usize,
    /// Prompt tokens (no padding).
    pub prompt: &'a [i64],
    /// Generated tokens through the stop token (no padding).
    pub completion: &'a [i64],
    /// Whether it ended with a stop token (false: cut at `max_new_tokens`).
    pub finished: bool,
}

/// Anything that gives one score per row of a [`Generation`]; `None` = could not score (a
/// failed or abstaining judge).
pub trait Scorer {
    /// Scores, one per row.
    fn score(&self, generation: &Generation) -> Vec<Option<f64>>;
}

type RewardClosure = Box<dyn Fn(&Completion) -> Option<f64>>;

/// Several named, weighted reward functions over completions (TRL `reward_funcs` +
/// `reward_weights`).
///
/// Each function returns `Option<f64>`; `None` (or a non-finite value) means "not scored".
/// The total of a row is the weighted sum over the functions that scored it (TRL's NaN-sum);
/// a row no function scored has total `None`.
#[derive(Default)]
pub struct RewardFunctions {
    names: Vec<String>,
    weights: Vec<f64>,
    funcs: Vec<RewardClosure>,
}

impl std::fmt::Debug for RewardFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardFunctions")
            .field("names", &self.names)
            .field("weights", &self.weights)
            .finish()
    }
}

/// Per-function and total scores of a [`Generation`].
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Function names, `K`.
    pub names: Vec<String>,
    /// Function weights, `K`.
    pub weights: Vec<f64>,
    /// `per_function[row][k]`.
    pub per_function: Vec<Vec<Option<f64>>>,
    /// Weighted totals, one per row.
    pub total: Vec<Option<f64>>,
}

impl Scores {
    /// `[R, K]` rewards with NaN for `None`, the input of
    /// [`GroupAdvantageConfig`](crate::rl::GroupAdvantageConfig) (pass the same weights there).
    pub fn rewards_per_func(&self, device: &Device) -> Tensor<2> {
        let k = self.names.len();
        let values: Vec<f32> = self
            .per_function
            .iter()
            .flat_map(|row| row.iter().map(|s| s.map_or(f32::NAN, |x| x as f32)))
            .collect();
        Tensor::from_data(
            TensorData::new(values, [self.per_function.len(), k]),
            device,
        )
    }

    /// Mean of the totals that exist (`None` when none does).
    pub fn mean_total(&self) -> Option<f64> {
        mean_some(&self.total)
    }
}

/// Mean of the `Some` values.
pub(crate) fn mean_some(values: &[Option<f64>]) -> Option<f64> {
    let some: Vec<f64> = values.iter().flatten().copied().collect();
    (!some.is_empty()).then(|| some.iter().sum::<f64>() / some.len() as f64)
}

impl RewardFunctions {
    /// No function yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a function with a weight.
    ///
    /// Errors: a non-finite weight ([`Error::Config`]).
    pub fn try_with(
        mut self,
        name: impl Into<String>,
        weight: f64,
        f: impl Fn(&Completion) -> Option<f64> + 'static,
    ) -> crate::Result<Self> {
        if !weight.is_finite() {
            return Err(Error::config("weight", "must be finite", weight));
        }
        self.names.push(name.into());
        self.weights.push(weight);
        self.funcs.push(Box::new(f));
        Ok(self)
    }

    /// Panicking form of [`try_with`](Self::try_with).
    ///
    /// # Panics
    /// On a non-finite weight.
    pub fn with(
        self,
        name: impl Into<String>,
        weight: f64,
        f: impl Fn(&Completion) -> Option<f64> + 'static,
    ) -> Self {
        unwrap_or_panic(self.try_with(name, weight, f))
    }

    /// Function names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Function weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Scores every row with every function (one host read of the generation).
    pub fn score_all(&self, generation: &Generation) -> Scores {
        let prompts = generation.prompts();
        let completions = generation.completions();
        let finished = generation.finished_host();
        let n = generation.num_generations.max(1);
        self.score_checked(&prompts, &completions, &finished, n)
    }

    crate::error::panicking! {
        /// Scores host rows (prompt, completion, finished); `num_generations` sets
        /// `prompt_index` (row `r` belongs to prompt `r / num_generations`).
        pub fn score_rows(
            &self,
            prompts: &[Vec<i64>],
            completions: &[Vec<i64>],
            finished: &[bool],
            num_generations: usize,
        ) -> Scores = try_score_rows;
    }

    /// Non-panicking form of [`score_rows`](Self::score_rows): `prompts` and `finished` must
    /// have one entry per completion ([`Error::Shape`] naming the argument), and
    /// `num_generations` must be >= 1 and divide the number of rows ([`Error::Config`]).
    pub fn try_score_rows(
        &self,
        prompts: &[Vec<i64>],
        completions: &[Vec<i64>],
        finished: &[bool],
        num_generations: usize,
    ) -> crate::Result<Scores> {
        let rows = completions.len();
        for (arg, len) in [("prompts", prompts.len()), ("finished", finished.len())] {
            if len != rows {
                return Err(Error::shape(
                    arg,
                    format!("[{rows}] (one entry per completion)"),
                    &[len],
                ));
            }
        }
        if num_generations == 0 || !rows.is_multiple_of(num_generations) {
            return Err(Error::config(
                "num_generations",
                format!("must be >= 1 and divide the number of rows ({rows})"),
                num_generations,
            ));
        }
        Ok(self.score_checked(prompts, completions, finished, num_generations))
    }

    fn score_checked(
        &self,
        prompts: &[Vec<i64>],
        completions: &[Vec<i64>],
        finished: &[bool],
        num_generations: usize,
    ) -> Scores {
        let per_function: Vec<Vec<Option<f64>>> = (0..completions.len())
            .map(|row| {
                let c = Completion {
                    row,
                    prompt_index: row / num_generations.max(1),
                    prompt: &prompts[row],
                    completion: &completions[row],
                    finished: finished[row],
                };
                self.funcs
                    .iter()
                    .map(|f| f(&c).filter(|x| x.is_finite()))
                    .collect()
            })
            .collect();
        let total = per_function
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&self.weights)
                    .filter_map(|(s, w)| s.map(|x| x * w))
                    .fold(None, |acc: Option<f64>, x| Some(acc.unwrap_or(0.0) + x))
            })
            .collect();
        Scores {
            names: self.names.clone(),
            weights: self.weights.clone(),
            per_function,
            total,
        }
    }
}

impl Scorer for RewardFunctions {
    fn score(&self, generation: &Generation) -> Vec<Option<f64>> {
        self.score_all(generation).total
    }
}

impl<F: Fn(&Generation) -> Vec<Option<f64>>> Scorer for F {
    fn score(&self, generation: &Generation) -> Vec<Option<f64>> {
        self(generation)
    }
}

/// The crate's [`RewardHead`] as a scorer: `hidden` maps (ids, attention mask) of prompt +
/// completion to the reward model's last hidden states `[R, T, d]`; the head pools the last
/// attended position. A non-finite reward is `None`.
pub struct RewardModelScorer<F> {
    /// The reward head (first score column is used).
    pub head: RewardHead,
    /// The reward model's trunk.
    pub hidden: F,
}

impl<F: Fn(Tensor<2, Int>, Tensor<2, Bool>) -> Tensor<3>> Scorer for RewardModelScorer<F> {
    fn score(&self, generation: &Generation) -> Vec<Option<f64>> {
        let mask = generation.attention_mask();
        let hidden = (self.hidden)(generation.ids(), mask.clone());
        let rewards = self.head.forward_reward(hidden, mask);
        crate::host_reads::floats(rewards, "rewards")
            .unwrap_or_else(|e| panic!("burn-rlhf: {e}"))
            .into_iter()
            .map(|x| x.is_finite().then_some(x))
            .collect()
    }
}

/// A pairwise judge (TRL `BasePairwiseJudge`): which of two completions of a prompt is better.
pub trait PairwiseJudge {
    /// `Some(true)` when `first` is better, `Some(false)` when `second` is, `None` when the
    /// judge cannot tell or fails.
    fn judge(&self, prompt: &[i64], first: &[i64], second: &[i64]) -> Option<bool>;
}

/// Pairs the first two completions of each prompt by a [`PairwiseJudge`] (TRL
/// `OnlineDPOTrainer` with a judge); prompts the judge abstains on are dropped. Margins are 1.
///
/// Errors: `num_generations < 2` ([`Error::Config`]).
pub fn judge_pairs(generation: &Generation, judge: &impl PairwiseJudge) -> crate::Result<Pairs> {
    let n = generation.num_generations;
    if n < 2 {
        return Err(Error::config(
            "num_generations",
            "must be >= 2 to form pairs",
            n,
        ));
    }
    let prompts = generation.prompts();
    let completions = generation.completions();
    let mut pairs = Pairs::default();
    for g in 0..generation.num_prompts() {
        let (a, b) = (g * n, g * n + 1);
        if let Some(first) = judge.judge(&prompts[a], &completions[a], &completions[b]) {
            let (c, r) = if first { (a, b) } else { (b, a) };
            pairs.push(c, r, 1.0);
        }
    }
    Ok(pairs)
}
