//! Turning scores into preference pairs, best-of-N picks and KTO labels.

use burn::config::Config;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::logps::GatheredLogps;
use crate::losses::{PairedLayout, PreferenceBatch, UnpairedBatch};

/// Which completions of a prompt's group become a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// The best-scored against the worst-scored completion (one pair per prompt; the first
    /// one wins a tie for best or worst).
    BestVsWorst,
    /// The first two completions, the better one chosen (TRL `OnlineDPOTrainer`, N = 2).
    FirstTwo,
    /// Every pair of scored completions with different scores (`N (N - 1) / 2` per prompt).
    AllPairs,
}

/// Configuration of [`PairingConfig::pair`].
#[derive(Config, Debug)]
pub struct PairingConfig {
    /// Strategy. Default [`Pairing::BestVsWorst`].
    #[config(default = "Pairing::BestVsWorst")]
    pub strategy: Pairing,
    /// A pair needs `chosen - rejected >= min_margin` (and `> 0` unless `keep_ties`).
    /// Finite and >= 0. Default 0.
    #[config(default = 0.0)]
    pub min_margin: f64,
    /// Keep pairs whose scores tie, the earlier row chosen (TRL `OnlineDPOTrainer`:
    /// `chosen = first if first >= second`). With [`Pairing::BestVsWorst`] a group whose
    /// scores all tie pairs its first and last scored rows. Needs `min_margin = 0`. Default
    /// false (ties carry no preference and are dropped).
    #[config(default = false)]
    pub keep_ties: bool,
}

/// Preference pairs as row indices into a [`Generation`](super::Generation), with the score
/// margin of each pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pairs {
    /// Chosen rows.
    pub chosen: Vec<usize>,
    /// Rejected rows.
    pub rejected: Vec<usize>,
    /// `score(chosen) - score(rejected)` (> 0).
    pub margins: Vec<f64>,
}

impl Pairs {
    pub(crate) fn push(&mut self, chosen: usize, rejected: usize, margin: f64) {
        self.chosen.push(chosen);
        self.rejected.push(rejected);
        self.margins.push(margin);
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.chosen.len()
    }

    /// True when no pair was formed.
    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty()
    }

    /// The chosen rows followed by the rejected rows: select these rows of the generation,
    /// compute their log-probs once, and pass them to [`preference_batch`](Self::preference_batch).
    ///
    /// # Panics
    /// When `chosen` and `rejected` (public fields) differ in length.
    pub fn rows(&self) -> Vec<usize> {
        PairedLayout::source_rows(&self.chosen, &self.rejected)
    }

    /// The [`PairedLayout`] of [`rows`](Self::rows).
    pub fn layout(&self) -> PairedLayout {
        PairedLayout::new(self.len())
    }

    /// A [`PreferenceBatch`] (per-token form, so every DPO-family loss can use it) from the
    /// log-probs of [`rows`](Self::rows) (`2 * len` rows: chosen first) and optional reference
    /// sequence log-probs in the same order.
    ///
    /// # Shapes
    /// - tokens: `[2B, C]`; ref_logps: `[2B]`
    ///
    /// Errors: no pair ([`Error::Empty`]), row counts not `2B` ([`Error::Shape`]).
    pub fn try_preference_batch(
        &self,
        tokens: GatheredLogps,
        ref_logps: Option<Tensor<1>>,
    ) -> crate::Result<PreferenceBatch> {
        crate::error::check_non_empty("pairs", self.len(), "no pair was formed")?;
        PairedLayout::try_source_rows(&self.chosen, &self.rejected)?;
        let layout = self.layout();
        layout.check_rows("tokens", &tokens.logps.dims())?;
        if let Some(r) = &ref_logps {
            layout.check_rows("ref_logps", &r.dims())?;
        }
        let (chosen, rejected) = layout.split_tokens(&tokens);
        let batch = PreferenceBatch::try_from_tokens(chosen, rejected)?;
        Ok(match ref_logps {
            Some(r) => {
                let (chosen, rejected) = layout.split(r);
                batch.with_ref_logps(chosen, rejected)
            }
            None => batch,
        })
    }

    crate::error::panicking! {
        /// Panicking form of [`try_preference_batch`](Self::try_preference_batch).
        pub fn preference_batch(
            &self,
            tokens: GatheredLogps,
            ref_logps: Option<Tensor<1>>,
        ) -> PreferenceBatch = try_preference_batch;
    }
}

fn check_groups(len: usize, n: usize, min: usize) -> crate::Result<()> {
    if n < min {
        return Err(Error::config(
            "num_generations",
            format!("must be >= {min} here"),
            n,
        ));
    }
    if !len.is_multiple_of(n) {
        return Err(Error::config(
            "num_generations",
            format!("must divide the number of scores ({len})"),
            n,
        ));
    }
    Ok(())
}

impl PairingConfig {
    /// Checks `min_margin` (and that `keep_ties` has no margin to meet).
    pub fn validate(&self) -> crate::Result<()> {
        if !(self.min_margin.is_finite() && self.min_margin >= 0.0) {
            return Err(Error::config(
                "min_margin",
                "must be finite and >= 0",
                self.min_margin,
            ));
        }
        if self.keep_ties && self.min_margin > 0.0 {
            return Err(Error::Conflict {
                field: "keep_ties",
                other: "min_margin",
                reason: "a tie has margin 0: keep_ties needs min_margin = 0".into(),
            });
        }
        Ok(())
    }

    /// Pairs within each prompt's group of `num_generations` consecutive scores. `None`
    /// scores never enter a pair; ties (margin 0, unless `keep_ties`) and margins below
    /// `min_margin` are dropped, so a group may give no pair.
    ///
    /// Errors: invalid `min_margin`, `num_generations < 2` or not dividing `scores.len()`
    /// ([`Error::Config`]).
    pub fn try_pair(&self, scores: &[Option<f64>], num_generations: usize) -> crate::Result<Pairs> {
        self.validate()?;
        let n = num_generations;
        check_groups(scores.len(), n, 2)?;
        let mut pairs = Pairs::default();
        let consider = |pairs: &mut Pairs, a: usize, b: usize| {
            if let (Some(x), Some(y)) = (scores[a], scores[b]) {
                let (c, r, m) = if x >= y { (a, b, x - y) } else { (b, a, y - x) };
                if (m > 0.0 || self.keep_ties) && m >= self.min_margin {
                    pairs.push(c, r, m);
                }
            }
        };
        for g in 0..scores.len() / n {
            let rows = g * n..(g + 1) * n;
            match self.strategy {
                Pairing::FirstTwo => consider(&mut pairs, g * n, g * n + 1),
                Pairing::AllPairs => {
                    for a in rows.clone() {
                        for b in a + 1..rows.end {
                            consider(&mut pairs, a, b);
                        }
                    }
                }
                Pairing::BestVsWorst => {
                    let scored: Vec<(usize, f64)> =
                        rows.filter_map(|r| scores[r].map(|s| (r, s))).collect();
                    let best = scored
                        .iter()
                        .fold(None, |acc: Option<(usize, f64)>, &(r, s)| match acc {
                            Some((_, bs)) if bs >= s => acc,
                            _ => Some((r, s)),
                        });
                    let worst = scored
                        .iter()
                        .fold(None, |acc: Option<(usize, f64)>, &(r, s)| match acc {
                            Some((_, ws)) if ws <= s => acc,
                            _ => Some((r, s)),
                        });
                    match (best, worst) {
                        // Every score ties: with keep_ties, the first and the last scored rows.
                        (Some((b, _)), Some((w, _))) if b == w => {
                            if let Some(&(last, _)) = scored.last().filter(|&&(r, _)| r != b) {
                                consider(&mut pairs, b, last);
                            }
                        }
                        (Some((b, _)), Some((w, _))) => consider(&mut pairs, b, w),
                        _ => {}
                    }
                }
            }
        }
        Ok(pairs)
    }

    crate::error::panicking! {
        /// Panicking form of [`try_pair`](Self::try_pair).
        pub fn pair(&self, scores: &[Option<f64>], num_generations: usize) -> Pairs = try_pair;
    }
}

/// Best-of-N (rejection sampling for SFT): the best-scored row of each group of
/// `num_generations` (the first on a tie), if it has a score and, when `min_score` is set,
/// that score is `>= min_score`. `num_generations = 1` keeps every qualifying row.
///
/// Errors: `num_generations` 0 or not dividing `scores.len()` ([`Error::Config`]).
pub fn best_of_n(
    scores: &[Option<f64>],
    num_generations: usize,
    min_score: Option<f64>,
) -> crate::Result<Vec<usize>> {
    check_groups(scores.len(), num_generations, 1)?;
    let n = num_generations;
    Ok((0..scores.len() / n)
        .filter_map(|g| {
            let mut best: Option<(usize, f64)> = None;
            for (r, score) in scores.iter().enumerate().skip(g * n).take(n) {
                if let Some(s) = *score
                    && best.is_none_or(|(_, b)| s > b)
                {
                    best = Some((r, s));
                }
            }
            best.filter(|&(_, s)| min_score.is_none_or(|m| s >= m))
                .map(|(r, _)| r)
        })
        .collect())
}

/// KTO labels: rows with a score, desirable when `score >= threshold`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KtoLabels {
    /// Rows that have a score.
    pub rows: Vec<usize>,
    /// Whether each row is desirable.
    pub desirable: Vec<bool>,
}

/// Labels every scored row desirable (`score >= threshold`) or undesirable; `None` rows are
/// dropped.
///
/// Errors: a non-finite threshold ([`Error::Config`]).
pub fn kto_labels(scores: &[Option<f64>], threshold: f64) -> crate::Result<KtoLabels> {
    if !threshold.is_finite() {
        return Err(Error::config("threshold", "must be finite", threshold));
    }
    let mut labels = KtoLabels::default();
    for (r, s) in scores.iter().enumerate() {
        if let Some(s) = s {
            labels.rows.push(r);
            labels.desirable.push(*s >= threshold);
        }
    }
    Ok(labels)
}

impl KtoLabels {
    /// An [`UnpairedBatch`] from the sequence log-probs of [`rows`](Self::rows) (in that order).
    ///
    /// # Shapes
    /// - logps, ref_logps: `[len]`
    ///
    /// Errors: no row ([`Error::Empty`]), lengths not matching ([`Error::Shape`]).
    pub fn try_unpaired_batch(
        &self,
        logps: Tensor<1>,
        ref_logps: Tensor<1>,
    ) -> crate::Result<UnpairedBatch> {
        let n = self.rows.len();
        crate::error::check_non_empty("labels", n, "no row has a score")?;
        for (arg, t) in [("logps", &logps), ("ref_logps", &ref_logps)] {
            if t.dims() != [n] {
                return Err(Error::shape(
                    arg,
                    format!("[{n}] (one per labelled row)"),
                    &t.dims(),
                ));
            }
        }
        let device = logps.device();
        let desirable = Tensor::<1, Int>::from_data(
            TensorData::new(
                self.desirable.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                [n],
            ),
            &device,
        )
        .equal_elem(1);
        Ok(UnpairedBatch::new(logps, ref_logps, desirable))
    }

    crate::error::panicking! {
        /// Panicking form of [`try_unpaired_batch`](Self::try_unpaired_batch).
        pub fn unpaired_batch(
            &self,
            logps: Tensor<1>,
            ref_logps: Tensor<1>,
        ) -> UnpairedBatch = try_unpaired_batch;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(strategy: Pairing, min_margin: f64, scores: &[Option<f64>], n: usize) -> Pairs {
        PairingConfig::new()
            .with_strategy(strategy)
            .with_min_margin(min_margin)
            .pair(scores, n)
    }

    #[test]
    fn best_vs_worst_per_group() {
        let s = [Some(0.2), Some(0.9), Some(0.5), Some(0.1), None, Some(0.3)];
        let p = pair(Pairing::BestVsWorst, 0.0, &s, 3);
        assert_eq!(p.chosen, vec![1, 5]);
        assert_eq!(p.rejected, vec![0, 3]);
        assert!((p.margins[0] - 0.7).abs() < 1e-12 && (p.margins[1] - 0.2).abs() < 1e-12);
        assert_eq!(p.rows(), vec![1, 5, 0, 3]);
    }

    #[test]
    fn ties_are_dropped() {
        let s = [Some(0.5), Some(0.5), Some(1.0), Some(0.0)];
        for strategy in [Pairing::BestVsWorst, Pairing::FirstTwo, Pairing::AllPairs] {
            let p = pair(strategy, 0.0, &s, 2);
            assert_eq!(
                (p.chosen.clone(), p.rejected.clone()),
                (vec![2], vec![3]),
                "{strategy:?}"
            );
        }
        // A group whose scores are all equal gives nothing, even with best-vs-worst of 3.
        assert!(pair(Pairing::BestVsWorst, 0.0, &[Some(1.0); 3], 3).is_empty());
    }

    #[test]
    fn minimum_margin() {
        let s = [Some(0.5), Some(0.4), Some(1.0), Some(0.0)];
        let p = pair(Pairing::FirstTwo, 0.2, &s, 2);
        assert_eq!((p.chosen, p.rejected), (vec![2], vec![3]));
        let p = pair(Pairing::FirstTwo, 0.1, &s, 2);
        assert_eq!(p.len(), 1, "0.5 - 0.4 is below 0.1 by rounding: dropped");
        let p = pair(Pairing::FirstTwo, 0.05, &s, 2);
        assert_eq!((p.chosen, p.rejected), (vec![0, 2], vec![1, 3]));
    }

    #[test]
    fn first_two_ignores_the_rest_and_all_pairs_takes_every_ordered_pair() {
        let s = [Some(0.0), Some(1.0), Some(5.0)];
        let p = pair(Pairing::FirstTwo, 0.0, &s, 3);
        assert_eq!((p.chosen, p.rejected), (vec![1], vec![0]));
        let p = pair(Pairing::AllPairs, 0.0, &s, 3);
        assert_eq!(p.chosen, vec![1, 2, 2]);
        assert_eq!(p.rejected, vec![0, 0, 1]);
    }

    #[test]
    fn none_scores_never_pair() {
        let s = [None, None, None, None];
        for strategy in [Pairing::BestVsWorst, Pairing::FirstTwo, Pairing::AllPairs] {
            assert!(pair(strategy, 0.0, &s, 2).is_empty());
        }
        let s = [Some(1.0), None, Some(0.0), Some(2.0)];
        assert!(pair(Pairing::FirstTwo, 0.0, &s, 2).chosen == vec![3]);
        assert_eq!(
            best_of_n(&[None, None], 2, None).unwrap(),
            Vec::<usize>::new()
        );
        assert_eq!(
            kto_labels(&[None, None], 0.5).unwrap(),
            KtoLabels::default()
        );
    }

    #[test]
    fn one_generation_per_prompt() {
        let s = [Some(1.0), Some(0.0)];
        let err = PairingConfig::new()
            .try_pair(&s, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_generations"), "{err}");
        assert_eq!(best_of_n(&s, 1, None).unwrap(), vec![0, 1]);
        assert_eq!(best_of_n(&s, 1, Some(0.5)).unwrap(), vec![0]);
    }

    #[test]
    fn best_of_n_and_kto_labels() {
        let s = [Some(0.1), Some(0.7), Some(0.7), None, Some(0.2), Some(0.3)];
        assert_eq!(best_of_n(&s, 3, None).unwrap(), vec![1, 5]);
        assert_eq!(best_of_n(&s, 3, Some(0.5)).unwrap(), vec![1]);
        let l = kto_labels(&s, 0.5).unwrap();
        assert_eq!(l.rows, vec![0, 1, 2, 4, 5]);
        assert_eq!(l.desirable, vec![false, true, true, false, false]);
        assert!(kto_labels(&s, f64::NAN).is_err());
    }

    #[test]
    fn bad_arguments() {
        assert!(PairingConfig::new().try_pair(&[Some(1.0); 3], 2).is_err());
        assert!(
            PairingConfig::new()
                .with_min_margin(-1.0)
                .try_pair(&[Some(1.0); 2], 2)
                .is_err()
        );
        assert!(best_of_n(&[Some(1.0); 3], 0, None).is_err());
    }
}
