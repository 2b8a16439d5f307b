//! Online RL configs: `GRPOConfig`, `RLOOConfig`.

use serde_json::{Map, Value};

use super::fields::{GRPO_OWN, RLOO_OWN};
use super::reader::{Reader, parse_choice};
use super::{FromTrl, TrlConfig};
use crate::error::{Error, Result};
use crate::rl::{
    GroupAdvantageConfig, GrpoLossConfig, GrpoLossType, ImportanceSamplingLevel, RewardAggregation,
    RlooAdvantageConfig, RlooLossConfig, ScaleRewards,
};

/// What a `GRPOConfig` configures in this crate: the loss and the group advantages.
#[derive(Debug, Clone)]
pub struct GrpoConfigs {
    /// The GRPO-family loss. `num_processes` is 1: set it to the data-parallel world size
    /// (TRL reads it from the launcher, not from the config).
    pub loss: GrpoLossConfig,
    /// Group-relative advantages (`num_generations`, `scale_rewards`,
    /// `multi_objective_aggregation`, `reward_weights`).
    pub advantages: GroupAdvantageConfig,
}

/// What an `RLOOConfig` configures in this crate: the loss and the leave-one-out advantages.
#[derive(Debug, Clone)]
pub struct RlooConfigs {
    /// The RLOO sequence-level clipped loss (`epsilon`, `epsilon_high`).
    pub loss: RlooLossConfig,
    /// Leave-one-out advantages (`num_generations`, `beta`, `normalize_advantages`,
    /// `reward_clip_range`, `reward_weights`).
    pub advantages: RlooAdvantageConfig,
}

fn num_generations(r: &mut Reader, default: usize) -> Result<usize> {
    r.share("num_generations");
    match r.opt_usize("num_generations", Some(default))? {
        Some(g) if g >= 2 => Ok(g),
        other => Err(Error::config(
            "num_generations",
            "must be >= 2 (the advantages compare completions of one prompt)",
            other.map_or("null".to_string(), |g| g.to_string()),
        )),
    }
}

fn check_weights(weights: &Option<Vec<f64>>) -> Result<()> {
    if let Some(w) = weights
        .as_ref()
        .and_then(|w| w.iter().find(|w| !w.is_finite()))
    {
        return Err(Error::config("reward_weights", "must be finite", w));
    }
    Ok(())
}

fn peek_usize(r: &Reader, name: &'static str, default: usize) -> Result<usize> {
    match r.peek(name) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| Error::config(name, "expected a non-negative integer", v)),
    }
}

/// `GRPOConfig` (TRL 1.16). Loss fields, with TRL's defaults: `loss_type` (`dapo`), `beta`
/// (0.0), `epsilon` (0.2), `epsilon_high` (none), `delta` (none), `importance_sampling_level`
/// (`token`), `use_bias_correction_kl` (true), `top_entropy_quantile` (1.0),
/// `off_policy_mask_threshold` (none), `entropy_coef` (0.0), `sapo_temperature_pos` /
/// `_neg` (1.0 / 1.05), `vespo_k_pos`, `vespo_lambda_pos`, `vespo_k_neg`, `vespo_lambda_neg`
/// (2, 3, 3, 2); advantage fields: `num_generations` (8), `scale_rewards` (`group`; `true` /
/// `false` are TRL's legacy spellings of `group` / `none`), `multi_objective_aggregation`
/// (`sum_then_normalize`), `reward_weights` (none).
///
/// Shared with the training loop (read here and also reported): `num_generations`,
/// `max_completion_length` (512; `null` is accepted except for `dr_grpo`, whose normalizer
/// needs it), `gradient_accumulation_steps` (1), `steps_per_generation` (TRL's rule when
/// `null`: `generation_batch_size / per_device_train_batch_size` if that is given, else
/// `gradient_accumulation_steps`; one process).
impl FromTrl for GrpoConfigs {
    const TRL_CLASS: &'static str = "GRPOConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, GRPO_OWN)?;
        let loss_type = r.choice(
            "loss_type",
            GrpoLossType::Dapo,
            "grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo",
        )?;
        let mut loss = GrpoLossConfig::new()
            .with_loss_type(loss_type)
            .with_beta(r.f64("beta", 0.0)?)
            .with_epsilon(r.f64("epsilon", 0.2)?)
            .with_epsilon_high(r.opt_f64("epsilon_high", None)?)
            .with_delta(r.opt_f64("delta", None)?)
            .with_importance_sampling_level(r.choice(
                "importance_sampling_level",
                ImportanceSamplingLevel::Token,
                "token, sequence",
            )?)
            .with_use_bias_correction_kl(r.bool("use_bias_correction_kl", true)?)
            .with_top_entropy_quantile(r.f64("top_entropy_quantile", 1.0)?)
            .with_off_policy_mask_threshold(r.opt_f64("off_policy_mask_threshold", None)?)
            .with_entropy_coef(r.f64("entropy_coef", 0.0)?)
            .with_sapo_temperature_pos(r.f64("sapo_temperature_pos", 1.0)?)
            .with_sapo_temperature_neg(r.f64("sapo_temperature_neg", 1.05)?)
            .with_vespo_k_pos(r.f64("vespo_k_pos", 2.0)?)
            .with_vespo_lambda_pos(r.f64("vespo_lambda_pos", 3.0)?)
            .with_vespo_k_neg(r.f64("vespo_k_neg", 3.0)?)
            .with_vespo_lambda_neg(r.f64("vespo_lambda_neg", 2.0)?);

        r.share("max_completion_length");
        match r.opt_usize("max_completion_length", Some(512))? {
            Some(n) => loss = loss.with_max_completion_length(n),
            None if loss_type == GrpoLossType::DrGrpo => {
                return Err(Error::config(
                    "max_completion_length",
                    "must be set for loss_type dr_grpo (its normalizer is B * max_completion_length)",
                    "null",
                ));
            }
            None => {} // not read by the other loss types
        }
        r.share("gradient_accumulation_steps");
        let accumulation = r
            .opt_usize("gradient_accumulation_steps", Some(1))?
            .ok_or_else(|| Error::config("gradient_accumulation_steps", "must be set", "null"))?;
        r.share("steps_per_generation");
        let steps_per_generation = match r.opt_usize("steps_per_generation", None)? {
            Some(s) => s,
            None => match r.peek("generation_batch_size") {
                None | Some(Value::Null) => accumulation,
                Some(_) => {
                    let generation = peek_usize(&r, "generation_batch_size", 0)?;
                    let per_device = peek_usize(&r, "per_device_train_batch_size", 8)?;
                    if per_device == 0 || generation % per_device != 0 {
                        return Err(Error::config(
                            "generation_batch_size",
                            format!(
                                "must be a multiple of per_device_train_batch_size ({per_device})"
                            ),
                            generation,
                        ));
                    }
                    generation / per_device
                }
            },
        };
        loss = loss
            .with_gradient_accumulation_steps(accumulation)
            .with_steps_per_generation(steps_per_generation);
        loss.try_init()?;

        let num_generations = num_generations(&mut r, 8)?;
        let scale_rewards = match r.raw("scale_rewards") {
            None | Some(Value::Bool(true)) => ScaleRewards::Group,
            Some(Value::Bool(false)) => ScaleRewards::None,
            Some(v) => parse_choice("scale_rewards", &v, "group, batch, none")?,
        };
        let reward_weights = r.opt_f64_list("reward_weights", None)?;
        check_weights(&reward_weights)?;
        let advantages = GroupAdvantageConfig::new()
            .with_num_generations(num_generations)
            .with_scale_rewards(scale_rewards)
            .with_multi_objective_aggregation(r.choice(
                "multi_objective_aggregation",
                RewardAggregation::SumThenNormalize,
                "sum_then_normalize, normalize_then_sum",
            )?)
            .with_reward_weights(reward_weights);
        Ok(TrlConfig {
            config: GrpoConfigs { loss, advantages },
            trainer_fields: r.finish(),
        })
    }
}

/// `RLOOConfig` (TRL 1.16). Loss fields: `epsilon` (0.2), `epsilon_high` (none); advantage
/// fields: `num_generations` (2, shared with the training loop), `beta` (0.05),
/// `normalize_advantages` (false), `reward_clip_range` (none, or `[lo, hi]`), `reward_weights`
/// (none).
impl FromTrl for RlooConfigs {
    const TRL_CLASS: &'static str = "RLOOConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, RLOO_OWN)?;
        let loss = RlooLossConfig::new()
            .with_epsilon(r.f64("epsilon", 0.2)?)
            .with_epsilon_high(r.opt_f64("epsilon_high", None)?);
        loss.try_init()?;

        let num_generations = num_generations(&mut r, 2)?;
        let beta = r.f64("beta", 0.05)?;
        if !beta.is_finite() {
            return Err(Error::config("beta", "must be finite", beta));
        }
        let reward_clip_range = match r.opt_f64_list("reward_clip_range", None)? {
            None => None,
            Some(v) if v.len() == 2 && v[0] <= v[1] && v.iter().all(|x| x.is_finite()) => {
                Some([v[0], v[1]])
            }
            Some(v) => {
                return Err(Error::config(
                    "reward_clip_range",
                    "must be [lo, hi], finite, with lo <= hi",
                    format!("{v:?}"),
                ));
            }
        };
        let reward_weights = r.opt_f64_list("reward_weights", None)?;
        check_weights(&reward_weights)?;
        let advantages = RlooAdvantageConfig::new()
            .with_num_generations(num_generations)
            .with_beta(beta)
            .with_normalize_advantages(r.bool("normalize_advantages", false)?)
            .with_reward_clip_range(reward_clip_range)
            .with_reward_weights(reward_weights);
        Ok(TrlConfig {
            config: RlooConfigs { loss, advantages },
            trainer_fields: r.finish(),
        })
    }
}
