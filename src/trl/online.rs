//! Online configs: `GRPOConfig`, `RLOOConfig`, `OnlineDPOConfig`.

use serde_json::{Map, Value, json};

use super::fields::{GRPO_OWN, ONLINE_DPO_OWN, RLOO_OWN};
use super::reader::{Reader, parse_choice};
use super::{FromTrl, TrlConfig};
use crate::error::{Error, Result};
use crate::generate::{OnlineDpoConfig, SamplerConfig};
use crate::losses::DpoLossType;
use crate::rl::{
    GroupAdvantageConfig, GrpoLossConfig, GrpoLossType, ImportanceSamplingLevel, RewardAggregation,
    RlooAdvantageConfig, RlooLossConfig, ScaleRewards,
};

/// What a `GRPOConfig` configures in this crate: the loss, the group advantages and the
/// sampler.
#[derive(Debug, Clone)]
pub struct GrpoConfigs {
    /// The GRPO-family loss. `num_processes` is 1: set it to the data-parallel world size
    /// (TRL reads it from the launcher, not from the config).
    pub loss: GrpoLossConfig,
    /// Group-relative advantages (`num_generations`, `scale_rewards`,
    /// `multi_objective_aggregation`, `reward_weights`).
    pub advantages: GroupAdvantageConfig,
    /// The sampler: `num_generations`, `max_completion_length` (as `max_new_tokens`),
    /// `temperature`, `top_k` (TRL's 0 = off), `top_p`, `min_p`. Set the stop and pad ids
    /// from your tokenizer (`with_eos_token_ids`, `with_pad_token_id`), as TRL takes them
    /// from its processing class.
    pub sampler: SamplerConfig,
}

/// What an `RLOOConfig` configures in this crate: the loss, the leave-one-out advantages and
/// the sampler.
#[derive(Debug, Clone)]
pub struct RlooConfigs {
    /// The RLOO sequence-level clipped loss (`epsilon`, `epsilon_high`).
    pub loss: RlooLossConfig,
    /// Leave-one-out advantages (`num_generations`, `beta`, `normalize_advantages`,
    /// `reward_clip_range`, `reward_weights`).
    pub advantages: RlooAdvantageConfig,
    /// The sampler, as for [`GrpoConfigs::sampler`].
    pub sampler: SamplerConfig,
}

/// What an `OnlineDPOConfig` (TRL 1.16, `trl.experimental.online_dpo`) configures in this
/// crate: the online DPO step and its sampler.
#[derive(Debug, Clone)]
pub struct OnlineDpoConfigs {
    /// The step: `beta`, `loss_type` (`sigmoid`, `ipo`), `missing_eos_penalty`,
    /// `learning_rate` (TRL's 5e-7; also reported as a trainer field).
    pub online: OnlineDpoConfig,
    /// The sampler: 2 completions per prompt (TRL's online DPO always draws two),
    /// `max_new_tokens` (64), `temperature` (0.9), `top_k` (0 = off), `top_p` (1.0), `min_p`.
    pub sampler: SamplerConfig,
}

/// The sampler of a TRL online config: `temperature`, `top_k` (0 or `null` = off), `top_p`,
/// `min_p` (`null` = off), with `max_new_tokens` from the config's length field (read by the
/// caller; `None`: a `null` length, reported as unsupported under `length_field`).
pub(super) fn sampler(
    r: &mut Reader,
    num_generations: usize,
    max_new_tokens: Option<usize>,
    length_field: &'static str,
    temperature_default: f64,
) -> Result<SamplerConfig> {
    let mut config = SamplerConfig::new()
        .with_num_generations(num_generations)
        .with_temperature(r.f64("temperature", temperature_default)?)
        .with_top_k(r.opt_usize("top_k", Some(0))?.filter(|&k| k > 0))
        .with_top_p(r.f64("top_p", 1.0)?)
        .with_min_p(r.opt_f64("min_p", None)?.unwrap_or(0.0));
    match max_new_tokens {
        Some(n) => config = config.with_max_new_tokens(n),
        None => r.push_unsupported(
            length_field,
            Value::Null,
            json!(512),
            "null generates up to the model's maximum length; set the sampler's max_new_tokens",
        ),
    }
    config.validate()?;
    generation_fields(r);
    Ok(config)
}

/// Generation fields the sampler does not implement.
fn generation_fields(r: &mut Reader) {
    r.unsupported(
        "repetition_penalty",
        json!(1.0),
        "penalizes repeated tokens while sampling; the crate's sampler has no repetition penalty",
    );
    r.unsupported(
        "generation_kwargs",
        Value::Null,
        "extra keyword arguments of generate / vLLM's SamplingParams are not read",
    );
}

/// TR-DPO's reference synchronization (`sync_ref_model` with `ref_model_mixup_alpha` every
/// `ref_model_sync_steps`), which the crate's steps do not implement.
pub(super) fn reference_sync_fields(r: &mut Reader) {
    r.unsupported(
        "sync_ref_model",
        json!(false),
        "TR-DPO: the reference becomes alpha * policy + (1 - alpha) * reference every \
         ref_model_sync_steps; the crate keeps the reference fixed",
    );
    if r.peek("sync_ref_model") == Some(&Value::Bool(true)) {
        r.unsupported(
            "ref_model_mixup_alpha",
            json!(0.6),
            "the TR-DPO mixing weight (with sync_ref_model)",
        );
        r.unsupported(
            "ref_model_sync_steps",
            json!(512),
            "the TR-DPO sync interval (with sync_ref_model)",
        );
    }
}

/// The sampler of a GRPO / RLOO config (temperature 1.0 by default, the completions' length
/// from `max_completion_length`), and the loop fields those configs report.
fn rl_sampler(
    r: &mut Reader,
    num_generations: usize,
    max_completion_length: Option<usize>,
) -> Result<SamplerConfig> {
    let config = sampler(
        r,
        num_generations,
        max_completion_length,
        "max_completion_length",
        1.0,
    )?;
    rl_loop_fields(r);
    Ok(config)
}

/// GRPO / RLOO fields of the training loop that change the loss and are not implemented.
fn rl_loop_fields(r: &mut Reader) {
    r.unsupported(
        "mask_truncated_completions",
        json!(false),
        "completions cut at max_completion_length without EOS are left out of the loss",
    );
    r.unsupported(
        "num_iterations",
        json!(1),
        "each generation batch is optimized num_iterations times (old log-probs from the \
         generation-time policy); set GrpoStepConfig::num_iterations (or PpoStepConfig::epochs) yourself",
    );
    reference_sync_fields(r);
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
        let max_completion_length = r.opt_usize("max_completion_length", Some(512))?;
        match max_completion_length {
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
        let sampler = rl_sampler(&mut r, num_generations, max_completion_length)?;
        r.unsupported(
            "use_adaptive_entropy",
            json!(false),
            "entropy_coef adapts toward entropy_target each step; the crate's entropy_coef is fixed",
        );
        if r.peek("use_vllm") == Some(&Value::Bool(true))
            && r.peek("vllm_importance_sampling_correction") != Some(&Value::Bool(false))
        {
            r.unsupported(
                "use_vllm",
                json!(false),
                "with vLLM generation TRL multiplies each token's loss by the trainer / vLLM \
                 probability ratio (vllm_importance_sampling_correction, _mode, _clip_min, \
                 _clip_max); the crate samples in-process: for rollouts made elsewhere build \
                 the ratio with rl::ImportanceSamplingConfig (TRL's modes and bounds)",
            );
        }
        Ok(r.finish(GrpoConfigs {
            loss,
            advantages,
            sampler,
        }))
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
        r.share("max_completion_length");
        let max_completion_length = r.opt_usize("max_completion_length", Some(512))?;
        let sampler = rl_sampler(&mut r, num_generations, max_completion_length)?;
        Ok(r.finish(RlooConfigs {
            loss,
            advantages,
            sampler,
        }))
    }
}

/// `OnlineDPOConfig` (TRL 1.16, experimental). Step fields, with TRL's defaults: `beta` (0.1;
/// a one-element list is that value, as TRL's `__post_init__` does; a longer list is TRL's
/// per-epoch schedule, not implemented: reported, and the first value is used), `loss_type`
/// (`sigmoid`, or `ipo`), `missing_eos_penalty` (none), `learning_rate` (5e-7, shared with
/// the training loop). Sampler fields: `max_new_tokens` (64), `temperature` (0.9), `top_k`
/// (0 = off), `top_p` (1.0), `min_p` (none); TRL draws two completions per prompt. Reported
/// when set away from TRL's default: `repetition_penalty`, `generation_kwargs`, and a
/// per-epoch `beta` list. `max_length` (prompt truncation), `disable_dropout`, the `vllm_*`
/// and reward-model fields are trainer fields.
impl FromTrl for OnlineDpoConfigs {
    const TRL_CLASS: &'static str = "OnlineDPOConfig";

    fn from_trl_map(fields: Map<String, Value>) -> Result<TrlConfig<Self>> {
        let mut r = Reader::new(Self::TRL_CLASS, fields, ONLINE_DPO_OWN)?;
        let beta = match r.peek("beta").cloned() {
            Some(Value::Array(items)) if !items.is_empty() => {
                if items.len() > 1 {
                    r.unsupported(
                        "beta",
                        json!(0.1),
                        "a list is TRL's per-epoch beta schedule; the crate uses its first value",
                    );
                }
                r.raw("beta");
                items[0]
                    .as_f64()
                    .ok_or_else(|| Error::config("beta", "expected numbers", &items[0]))?
            }
            _ => r.f64("beta", 0.1)?,
        };
        let loss_type = match r.choice("loss_type", OnlineLossType::Sigmoid, "sigmoid, ipo")? {
            OnlineLossType::Sigmoid => DpoLossType::Sigmoid,
            OnlineLossType::Ipo => DpoLossType::Ipo,
        };
        r.share("learning_rate");
        let online = OnlineDpoConfig::new()
            .with_beta(beta)
            .with_loss_type(loss_type)
            .with_missing_eos_penalty(r.opt_f64("missing_eos_penalty", None)?)
            .with_learning_rate(r.f64("learning_rate", 5e-7)?);
        online.try_init()?;
        r.share("max_new_tokens");
        let max_new_tokens = r.opt_usize("max_new_tokens", Some(64))?;
        let sampler = sampler(&mut r, 2, max_new_tokens, "max_new_tokens", 0.9)?;
        Ok(r.finish(OnlineDpoConfigs { online, sampler }))
    }
}

/// TRL's `OnlineDPOConfig.loss_type` choices.
#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnlineLossType {
    Sigmoid,
    Ipo,
}
