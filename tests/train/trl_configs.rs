//! TRL config JSON written by TRL itself (`fixtures/trl_configs/`, see its README) loads into the
//! crate's configs: every mapped value equals what the file says, every other field is handed
//! back as a trainer field, the TRL defaults the loader fills in equal TRL's own dump of the
//! defaults, and bad input is a typed error naming the field.

use std::path::PathBuf;

use burn_rlhf::Error;
use burn_rlhf::losses::{
    BcoLossConfig, BradleyTerryLossConfig, CpoLossConfig, DpoLossConfig, DpoLossType,
    KtoLossConfig, OrpoLossConfig,
};
use burn_rlhf::trl::{
    DistillationConfigs, FromTrl, GkdConfigs, GrpoConfigs, OnlineDpoConfigs, RlooConfigs,
    TrainerFields,
};
use serde_json::{Map, Value, json};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/trl_configs")
}

fn read(file: &str) -> Map<String, Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    match serde_json::from_str(&text).unwrap() {
        Value::Object(m) => m,
        _ => panic!("{file} is not an object"),
    }
}

/// Files of the manifest, as (file, class).
fn manifest() -> Vec<(String, String)> {
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    assert!(
        m["trl"].as_str().unwrap().starts_with("1.16."),
        "{}",
        m["trl"]
    );
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_string(),
                f["class"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn f(j: &Map<String, Value>, k: &str) -> f64 {
    j[k].as_f64()
        .unwrap_or_else(|| panic!("{k} = {} is not a number", j[k]))
}

fn opt_f(j: &Map<String, Value>, k: &str) -> Option<f64> {
    j[k].as_f64()
}

fn opt_list(j: &Map<String, Value>, k: &str) -> Option<Vec<f64>> {
    j[k].as_array()
        .map(|a| a.iter().map(|v| v.as_f64().unwrap()).collect())
}

fn ser<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

/// Every field not consumed by the loss (and every shared one) is reported, as written;
/// consumed ones are not.
fn check_trainer_fields(
    file: &str,
    j: &Map<String, Value>,
    t: &TrainerFields,
    consumed: &[&str],
    shared: &[&str],
) {
    for (k, v) in j {
        if consumed.contains(&k.as_str()) && !shared.contains(&k.as_str()) {
            assert!(
                !t.contains(k),
                "{file}: loss field {k} reported as a trainer field"
            );
        } else {
            assert_eq!(t.get(k), Some(v), "{file}: trainer field {k}");
        }
    }
    assert_eq!(
        t.len(),
        j.keys()
            .filter(|k| !consumed.contains(&k.as_str()) || shared.contains(&k.as_str()))
            .count()
    );
}

/// The sampler loaded from a TRL online config equals the dump's fields (TRL's `top_k = 0`
/// and `min_p = null` mean off).
fn check_sampler(
    file: &str,
    j: &Map<String, Value>,
    s: &burn_rlhf::generate::SamplerConfig,
    num_generations: usize,
    length_field: &str,
) {
    assert_eq!(s.num_generations, num_generations, "{file}");
    assert_eq!(
        s.max_new_tokens as u64,
        j[length_field].as_u64().unwrap(),
        "{file}"
    );
    assert_eq!(s.temperature, f(j, "temperature"), "{file}");
    assert_eq!(s.top_p, f(j, "top_p"), "{file}");
    let top_k = j["top_k"].as_u64().filter(|&k| k > 0).map(|k| k as usize);
    assert_eq!(s.top_k, top_k, "{file}");
    assert_eq!(s.min_p, opt_f(j, "min_p").unwrap_or(0.0), "{file}");
}

/// Fields a sampler consumes (not trainer fields any more).
const SAMPLER_FIELDS: [&str; 4] = ["temperature", "top_k", "top_p", "min_p"];

fn check_file(file: &str, class: &str, j: &Map<String, Value>, source: Map<String, Value>) {
    match class {
        "DPOConfig" => {
            let l = DpoLossConfig::from_trl_map(source).unwrap();
            let c = &l.config;
            assert_eq!(ser(&c.loss_type), j["loss_type"], "{file}");
            assert_eq!(c.loss_weights, opt_list(j, "loss_weights"), "{file}");
            assert_eq!(c.beta, f(j, "beta"), "{file}");
            assert_eq!(c.label_smoothing, f(j, "label_smoothing"), "{file}");
            assert_eq!(ser(&c.f_divergence_type), j["f_divergence_type"], "{file}");
            assert_eq!(
                c.f_alpha_divergence_coef,
                f(j, "f_alpha_divergence_coef"),
                "{file}"
            );
            assert_eq!(
                c.use_weighting,
                j["use_weighting"].as_bool().unwrap(),
                "{file}"
            );
            assert_eq!(c.ld_alpha, opt_f(j, "ld_alpha"), "{file}");
            assert_eq!(c.discopop_tau, f(j, "discopop_tau"), "{file}");
            assert_eq!(c.cdpo_label_smoothing, 0.0);
            c.try_init().unwrap();
            let consumed = [
                "loss_type",
                "loss_weights",
                "beta",
                "label_smoothing",
                "f_divergence_type",
                "f_alpha_divergence_coef",
                "use_weighting",
                "ld_alpha",
                "discopop_tau",
            ];
            check_trainer_fields(file, j, &l.trainer_fields, &consumed, &[]);
        }
        "CPOConfig" => {
            let l = CpoLossConfig::from_trl_map(source).unwrap();
            let c = &l.config;
            assert_eq!(ser(&c.loss_type), j["loss_type"], "{file}");
            assert_eq!(c.beta, f(j, "beta"), "{file}");
            assert_eq!(c.label_smoothing, f(j, "label_smoothing"), "{file}");
            assert_eq!(c.cpo_alpha, f(j, "cpo_alpha"), "{file}");
            assert_eq!(c.simpo_gamma, f(j, "simpo_gamma"), "{file}");
            assert_eq!(c.alpha, f(j, "alpha"), "{file}");
            // TRL averages for ipo and simpo (its `average_log_prob` rule).
            let lt = j["loss_type"].as_str().unwrap();
            assert_eq!(c.averages_log_probs(), lt == "ipo" || lt == "simpo");
            c.try_init().unwrap();
            let consumed = [
                "loss_type",
                "beta",
                "label_smoothing",
                "cpo_alpha",
                "simpo_gamma",
                "alpha",
            ];
            check_trainer_fields(file, j, &l.trainer_fields, &consumed, &[]);
        }
        "ORPOConfig" => {
            let l = OrpoLossConfig::from_trl_map(source).unwrap();
            assert_eq!(l.config.beta, f(j, "beta"), "{file}");
            check_trainer_fields(file, j, &l.trainer_fields, &["beta"], &[]);
        }
        "KTOConfig" => {
            let l = KtoLossConfig::from_trl_map(source).unwrap();
            let c = &l.config;
            assert_eq!(ser(&c.loss_type), j["loss_type"], "{file}");
            assert_eq!(c.beta, f(j, "beta"), "{file}");
            assert_eq!(c.desirable_weight, f(j, "desirable_weight"), "{file}");
            assert_eq!(c.undesirable_weight, f(j, "undesirable_weight"), "{file}");
            let consumed = [
                "loss_type",
                "beta",
                "desirable_weight",
                "undesirable_weight",
            ];
            check_trainer_fields(file, j, &l.trainer_fields, &consumed, &[]);
        }
        "BCOConfig" => {
            let l = BcoLossConfig::from_trl_map(source).unwrap();
            assert_eq!(l.config.beta, f(j, "beta"), "{file}");
            check_trainer_fields(file, j, &l.trainer_fields, &["beta"], &[]);
            assert!(l.trainer_fields.contains("prompt_sample_size"));
        }
        "RewardConfig" => {
            let l = BradleyTerryLossConfig::from_trl_map(source).unwrap();
            assert_eq!(
                l.config.center_rewards_coefficient,
                opt_f(j, "center_rewards_coefficient"),
                "{file}"
            );
            check_trainer_fields(
                file,
                j,
                &l.trainer_fields,
                &["center_rewards_coefficient"],
                &[],
            );
        }
        "GRPOConfig" => {
            let l = GrpoConfigs::from_trl_map(source).unwrap();
            let (c, a) = (&l.config.loss, &l.config.advantages);
            assert_eq!(ser(&c.loss_type), j["loss_type"], "{file}");
            for (got, k) in [
                (c.beta, "beta"),
                (c.epsilon, "epsilon"),
                (c.top_entropy_quantile, "top_entropy_quantile"),
                (c.entropy_coef, "entropy_coef"),
                (c.sapo_temperature_pos, "sapo_temperature_pos"),
                (c.sapo_temperature_neg, "sapo_temperature_neg"),
                (c.vespo_k_pos, "vespo_k_pos"),
                (c.vespo_lambda_pos, "vespo_lambda_pos"),
                (c.vespo_k_neg, "vespo_k_neg"),
                (c.vespo_lambda_neg, "vespo_lambda_neg"),
            ] {
                assert_eq!(got, f(j, k), "{file}: {k}");
            }
            assert_eq!(c.epsilon_high, opt_f(j, "epsilon_high"), "{file}");
            assert_eq!(c.delta, opt_f(j, "delta"), "{file}");
            assert_eq!(
                c.off_policy_mask_threshold,
                opt_f(j, "off_policy_mask_threshold")
            );
            assert_eq!(
                ser(&c.importance_sampling_level),
                j["importance_sampling_level"]
            );
            assert_eq!(
                c.use_bias_correction_kl,
                j["use_bias_correction_kl"].as_bool().unwrap()
            );
            assert_eq!(
                c.max_completion_length as u64,
                j["max_completion_length"].as_u64().unwrap()
            );
            assert_eq!(
                c.gradient_accumulation_steps as u64,
                j["gradient_accumulation_steps"].as_u64().unwrap()
            );
            // TRL's __post_init__ resolved it; the dump holds the number.
            assert_eq!(
                c.steps_per_generation as u64,
                j["steps_per_generation"].as_u64().unwrap()
            );
            assert_eq!(c.num_processes, 1);
            assert_eq!(
                a.num_generations as u64,
                j["num_generations"].as_u64().unwrap()
            );
            assert_eq!(ser(&a.scale_rewards), j["scale_rewards"], "{file}");
            assert_eq!(
                ser(&a.multi_objective_aggregation),
                j["multi_objective_aggregation"]
            );
            assert_eq!(a.reward_weights, opt_list(j, "reward_weights"), "{file}");
            check_sampler(
                file,
                j,
                &l.config.sampler,
                a.num_generations,
                "max_completion_length",
            );
            let consumed = [
                "temperature",
                "top_k",
                "top_p",
                "min_p",
                "loss_type",
                "beta",
                "epsilon",
                "epsilon_high",
                "delta",
                "importance_sampling_level",
                "use_bias_correction_kl",
                "top_entropy_quantile",
                "off_policy_mask_threshold",
                "entropy_coef",
                "sapo_temperature_pos",
                "sapo_temperature_neg",
                "vespo_k_pos",
                "vespo_lambda_pos",
                "vespo_k_neg",
                "vespo_lambda_neg",
                "max_completion_length",
                "gradient_accumulation_steps",
                "steps_per_generation",
                "num_generations",
                "scale_rewards",
                "multi_objective_aggregation",
                "reward_weights",
            ];
            let shared = [
                "max_completion_length",
                "gradient_accumulation_steps",
                "steps_per_generation",
                "num_generations",
            ];
            check_trainer_fields(file, j, &l.trainer_fields, &consumed, &shared);
        }
        "RLOOConfig" => {
            let l = RlooConfigs::from_trl_map(source).unwrap();
            let (c, a) = (&l.config.loss, &l.config.advantages);
            assert_eq!(c.epsilon, f(j, "epsilon"), "{file}");
            assert_eq!(c.epsilon_high, opt_f(j, "epsilon_high"), "{file}");
            assert_eq!(
                a.num_generations as u64,
                j["num_generations"].as_u64().unwrap()
            );
            assert_eq!(a.beta, f(j, "beta"), "{file}");
            assert_eq!(
                a.normalize_advantages,
                j["normalize_advantages"].as_bool().unwrap()
            );
            assert_eq!(
                a.reward_clip_range.map(|r| r.to_vec()),
                opt_list(j, "reward_clip_range"),
                "{file}"
            );
            assert_eq!(a.reward_weights, opt_list(j, "reward_weights"), "{file}");
            check_sampler(
                file,
                j,
                &l.config.sampler,
                a.num_generations,
                "max_completion_length",
            );
            let mut consumed = vec![
                "epsilon",
                "epsilon_high",
                "num_generations",
                "beta",
                "normalize_advantages",
                "reward_clip_range",
                "reward_weights",
                "max_completion_length",
            ];
            consumed.extend(SAMPLER_FIELDS);
            check_trainer_fields(
                file,
                j,
                &l.trainer_fields,
                &consumed,
                &["num_generations", "max_completion_length"],
            );
        }
        "DistillationConfig" => {
            let l = DistillationConfigs::from_trl_map(source).unwrap();
            let c = &l.config.step;
            // TRL's DistillationTrainer samples every batch from the student.
            assert_eq!(c.lmbda, 1.0, "{file}");
            assert_eq!(c.loss.beta, f(j, "beta"), "{file}");
            // Its temperature scales the loss too (distillation_trainer.py:1918).
            assert_eq!(c.loss.temperature, f(j, "temperature"), "{file}");
            assert_eq!(c.learning_rate, f(j, "learning_rate"), "{file}");
            check_sampler(file, j, &l.config.sampler, 1, "max_completion_length");
            let mut consumed = vec!["beta", "learning_rate", "max_completion_length"];
            consumed.extend(SAMPLER_FIELDS);
            check_trainer_fields(
                file,
                j,
                &l.trainer_fields,
                &consumed,
                &["learning_rate", "max_completion_length"],
            );
        }
        "GKDConfig" => {
            let l = GkdConfigs::from_trl_map(source).unwrap();
            let c = &l.config.step;
            assert_eq!(c.lmbda, f(j, "lmbda"), "{file}");
            assert_eq!(c.loss.beta, f(j, "beta"), "{file}");
            // GKD's trainer never passes its temperature to the loss (gkd_trainer.py:349-355).
            assert_eq!(c.loss.temperature, 1.0, "{file}");
            assert_eq!(c.learning_rate, f(j, "learning_rate"), "{file}");
            let s = &l.config.sampler;
            assert_eq!(s.num_generations, 1, "{file}");
            assert_eq!(
                s.max_new_tokens as u64,
                j["max_new_tokens"].as_u64().unwrap(),
                "{file}"
            );
            assert_eq!(s.temperature, f(j, "temperature"), "{file}");
            assert_eq!((s.top_k, s.top_p), (None, 1.0), "{file}");
            check_trainer_fields(
                file,
                j,
                &l.trainer_fields,
                &[
                    "lmbda",
                    "beta",
                    "learning_rate",
                    "max_new_tokens",
                    "temperature",
                ],
                &["learning_rate"],
            );
        }
        "OnlineDPOConfig" => {
            let l = OnlineDpoConfigs::from_trl_map(source).unwrap();
            let c = &l.config.online;
            assert_eq!(c.beta, f(j, "beta"), "{file}");
            let loss = match j["loss_type"].as_str().unwrap() {
                "sigmoid" => DpoLossType::Sigmoid,
                "ipo" => DpoLossType::Ipo,
                other => panic!("{file}: loss_type {other}"),
            };
            assert_eq!(c.loss_type, loss, "{file}");
            assert_eq!(
                c.missing_eos_penalty,
                opt_f(j, "missing_eos_penalty"),
                "{file}"
            );
            assert_eq!(c.learning_rate, f(j, "learning_rate"), "{file}");
            check_sampler(file, j, &l.config.sampler, 2, "max_new_tokens");
            let mut consumed = vec![
                "beta",
                "loss_type",
                "missing_eos_penalty",
                "learning_rate",
                "max_new_tokens",
            ];
            consumed.extend(SAMPLER_FIELDS);
            check_trainer_fields(
                file,
                j,
                &l.trainer_fields,
                &consumed,
                &["learning_rate", "max_new_tokens"],
            );
        }
        other => panic!("unknown class {other}"),
    }
}

#[test]
fn every_trl_dump_loads_with_the_values_it_holds() {
    let files = manifest();
    assert!(
        files.len() >= 8 + 3,
        "defaults of 8 classes plus at least 3 non-default files"
    );
    let mut json_files = 0;
    for (file, class) in &files {
        if !file.ends_with(".json") {
            continue;
        }
        json_files += 1;
        let j = read(file);
        check_file(file, class, &j, j.clone());
    }
    assert_eq!(
        json_files,
        files.iter().filter(|(f, _)| f.ends_with(".json")).count()
    );
}

#[test]
fn yaml_dump_loads_like_its_json() {
    let j = read("dpo_mpo.json");
    let yaml = DpoLossConfig::from_trl_file(dir().join("dpo_mpo.yaml")).unwrap();
    let json = DpoLossConfig::from_trl_file(dir().join("dpo_mpo.json")).unwrap();
    assert_eq!(format!("{:?}", yaml.config), format!("{:?}", json.config));
    assert_eq!(
        yaml.trainer_fields.f64("learning_rate"),
        Some(f(&j, "learning_rate"))
    );
    check_file("dpo_mpo.yaml", "DPOConfig", &j, yaml_map("dpo_mpo.yaml"));
}

fn yaml_map(file: &str) -> Map<String, Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    let v: Value = serde_norway::from_str(&text).unwrap();
    v.as_object().unwrap().clone()
}

/// A file that gives no field gets TRL's defaults: the same config as TRL's own dump of its
/// defaults (which checks the loader's default table against TRL).
#[test]
fn missing_fields_take_trl_defaults() {
    fn same<C: FromTrl + std::fmt::Debug>(file: &str) {
        let from_dump =
            C::from_trl_json(&std::fs::read_to_string(dir().join(file)).unwrap()).unwrap();
        let from_empty = C::from_trl_json("{}").unwrap();
        assert_eq!(
            format!("{:?}", from_empty.config),
            format!("{:?}", from_dump.config),
            "{file}"
        );
        assert!(from_empty.trainer_fields.is_empty());
    }
    same::<DpoLossConfig>("dpo_defaults.json");
    same::<CpoLossConfig>("cpo_defaults.json");
    same::<OrpoLossConfig>("orpo_defaults.json");
    same::<KtoLossConfig>("kto_defaults.json");
    same::<BcoLossConfig>("bco_defaults.json");
    same::<BradleyTerryLossConfig>("reward_defaults.json");
    same::<GrpoConfigs>("grpo_defaults.json");
    same::<RlooConfigs>("rloo_defaults.json");
}

fn err<C: FromTrl + std::fmt::Debug>(v: Value) -> Error {
    C::from_trl_json(&v.to_string()).unwrap_err()
}

fn config_field(e: &Error) -> &'static str {
    match e {
        Error::Config { field, .. } => field,
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[test]
fn unknown_fields_are_errors_naming_the_field() {
    let e = err::<DpoLossConfig>(json!({"beta": 0.1, "betta": 0.2}));
    assert_eq!(
        e,
        Error::UnknownField {
            config: "DPOConfig",
            field: "betta".into()
        }
    );
    assert!(e.to_string().contains("betta"), "{e}");
    // A field of another TRL class is unknown here too.
    let e = err::<OrpoLossConfig>(json!({"loss_type": "sigmoid"}));
    assert!(
        matches!(e, Error::UnknownField { config: "ORPOConfig", ref field } if field == "loss_type")
    );
    let e = err::<KtoLossConfig>(json!({"num_generations": 4}));
    assert!(matches!(e, Error::UnknownField { .. }), "{e:?}");
}

#[test]
fn trainer_only_fields_are_reported_not_errors() {
    let l = DpoLossConfig::from_trl_json(
        r#"{"learning_rate": "5e-7", "per_device_train_batch_size": 4, "max_length": 512,
            "precompute_ref_log_probs": true, "beta": 0.2}"#,
    )
    .unwrap();
    assert_eq!(l.config.beta, 0.2);
    let t = &l.trainer_fields;
    assert_eq!(t.len(), 4);
    assert_eq!(t.f64("learning_rate"), Some(5e-7));
    assert_eq!(t.usize("per_device_train_batch_size"), Some(4));
    assert_eq!(t.usize("max_length"), Some(512));
    assert_eq!(t.bool("precompute_ref_log_probs"), Some(true));
}

#[test]
fn invalid_values_are_typed_errors_naming_the_field() {
    assert_eq!(
        config_field(&err::<DpoLossConfig>(json!({"beta": "high"}))),
        "beta"
    );
    assert_eq!(
        config_field(&err::<DpoLossConfig>(json!({"beta": -1.0}))),
        "beta"
    );
    assert_eq!(
        config_field(&err::<DpoLossConfig>(json!({"beta": null}))),
        "beta"
    );
    assert_eq!(
        config_field(&err::<DpoLossConfig>(
            json!({"loss_type": ["sigmoid", "nope"]})
        )),
        "loss_type"
    );
    assert_eq!(
        config_field(&err::<DpoLossConfig>(
            json!({"loss_type": ["sigmoid"], "loss_weights": [1, 2]})
        )),
        "loss_weights"
    );
    assert_eq!(
        config_field(&err::<DpoLossConfig>(json!({"use_weighting": "yes"}))),
        "use_weighting"
    );
    assert_eq!(
        config_field(&err::<DpoLossConfig>(json!({"f_divergence_type": "kl"}))),
        "f_divergence_type"
    );
    assert_eq!(
        config_field(&err::<DpoLossConfig>(
            json!({"loss_type": "robust", "label_smoothing": 0.5})
        )),
        "label_smoothing"
    );
    assert_eq!(
        config_field(&err::<CpoLossConfig>(json!({"loss_type": "dpo"}))),
        "loss_type"
    );
    assert_eq!(
        config_field(&err::<KtoLossConfig>(json!({"desirable_weight": -1}))),
        "desirable_weight"
    );
    assert_eq!(
        config_field(&err::<BradleyTerryLossConfig>(
            json!({"center_rewards_coefficient": -0.1})
        )),
        "center_rewards_coefficient"
    );
    assert_eq!(
        config_field(&err::<GrpoConfigs>(json!({"epsilon": 1.5}))),
        "epsilon"
    );
    assert_eq!(
        config_field(&err::<GrpoConfigs>(json!({"num_generations": 1}))),
        "num_generations"
    );
    assert_eq!(
        config_field(&err::<GrpoConfigs>(json!({"scale_rewards": "prompt"}))),
        "scale_rewards"
    );
    assert_eq!(
        config_field(&err::<GrpoConfigs>(
            json!({"gradient_accumulation_steps": 2.5})
        )),
        "gradient_accumulation_steps"
    );
    assert_eq!(
        config_field(&err::<GrpoConfigs>(
            json!({"loss_type": "dr_grpo", "max_completion_length": null})
        )),
        "max_completion_length"
    );
    assert_eq!(
        config_field(&err::<RlooConfigs>(
            json!({"reward_clip_range": [1.0, -1.0]})
        )),
        "reward_clip_range"
    );
    assert_eq!(
        config_field(&err::<RlooConfigs>(json!({"reward_weights": [1, "x"]}))),
        "reward_weights"
    );
    // Not a mapping, not JSON.
    assert!(matches!(
        DpoLossConfig::from_trl_json("[1, 2]"),
        Err(Error::ConfigFile { .. })
    ));
    assert!(matches!(
        DpoLossConfig::from_trl_json("{beta: 1"),
        Err(Error::ConfigFile { .. })
    ));
    assert!(matches!(
        DpoLossConfig::from_trl_file(dir().join("no_such_file.json")),
        Err(Error::ConfigFile { .. })
    ));
}

/// TRL's own input spellings: `"alphapo"` (CPO), a single DPO loss name, `scale_rewards`
/// booleans, `steps_per_generation` from `generation_batch_size`.
#[test]
fn trl_input_shorthands() {
    let l = CpoLossConfig::from_trl_json(
        r#"{"loss_type": "alphapo", "cpo_alpha": 0.7, "alpha": 0.25}"#,
    )
    .unwrap();
    // As TRL's CPOConfig.__post_init__: simpo with cpo_alpha forced to 0.
    assert_eq!(ser(&l.config.loss_type), json!("simpo"));
    assert_eq!(l.config.cpo_alpha, 0.0);
    assert_eq!(l.config.alpha, 0.25);
    let l = DpoLossConfig::from_trl_json(r#"{"loss_type": "ipo"}"#).unwrap();
    assert_eq!(ser(&l.config.loss_type), json!(["ipo"]));
    let g = GrpoConfigs::from_trl_json(r#"{"scale_rewards": false}"#).unwrap();
    assert_eq!(ser(&g.config.advantages.scale_rewards), json!("none"));
    let g = GrpoConfigs::from_trl_json(r#"{"scale_rewards": true}"#).unwrap();
    assert_eq!(ser(&g.config.advantages.scale_rewards), json!("group"));
    let g = GrpoConfigs::from_trl_json(
        r#"{"generation_batch_size": 64, "per_device_train_batch_size": 16, "gradient_accumulation_steps": 2}"#,
    )
    .unwrap();
    // TRL: steps_per_generation = generation_batch_size / (per_device_train_batch_size * 1 process).
    assert_eq!(g.config.loss.steps_per_generation, 4);
    assert_eq!(g.config.loss.gradient_accumulation_steps, 2);
    assert_eq!(g.trainer_fields.usize("generation_batch_size"), Some(64));
    let g = GrpoConfigs::from_trl_json(r#"{"gradient_accumulation_steps": 3}"#).unwrap();
    assert_eq!(g.config.loss.steps_per_generation, 3);
}

/// Issue 22: the crate's own configs, loaded from a file with `LoadStrict`, refuse unknown keys
/// (burn's `Config::load` drops them silently), at any depth, and round-trip what `save` wrote.
#[test]
fn own_configs_refuse_unknown_keys() {
    use burn::config::Config;
    use burn_rlhf::config::LoadStrict;
    use burn_rlhf::generate::{OnlineDpoConfig, SamplerConfig};
    use burn_rlhf::rl::PpoStepConfig;

    // A saved config with `top_k` misspelt: burn's own loader drops it without a word (the
    // field becomes None); this is what LoadStrict exists for.
    let saved = burn::config::config_to_json(&SamplerConfig::new().with_top_k(Some(20)));
    let typo = saved.replacen("\"top_k\"", "\"topk\"", 1);
    let lenient: SamplerConfig = serde_json::from_str(&typo).unwrap();
    assert_eq!(lenient.top_k, None);
    let err = SamplerConfig::from_json_strict(&typo).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownField { config: "SamplerConfig", field } if field == "topk"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("burn-rlhf-strict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sampler.json");
    let sampler = SamplerConfig::new().with_top_k(Some(20)).with_min_p(0.05);
    sampler.save(&path).unwrap();
    let loaded = SamplerConfig::load_strict(&path).unwrap();
    assert_eq!(loaded.top_k, Some(20));
    assert_eq!(loaded.min_p, 0.05);

    let with_extra = |json: String, key: &str| -> String {
        let mut value: Value = serde_json::from_str(&json).unwrap();
        value[key] = json!(1);
        value.to_string()
    };
    for (name, json) in [
        (
            "OnlineDpoConfig",
            with_extra(
                burn::config::config_to_json(&OnlineDpoConfig::new()),
                "betta",
            ),
        ),
        (
            "PpoStepConfig",
            with_extra(
                burn::config::config_to_json(&PpoStepConfig::new()),
                "mini_batches",
            ),
        ),
    ] {
        let err = match name {
            "OnlineDpoConfig" => OnlineDpoConfig::from_json_strict(&json).map(|_| ()),
            _ => PpoStepConfig::from_json_strict(&json).map(|_| ()),
        }
        .unwrap_err();
        assert!(
            matches!(&err, Error::UnknownField { config, .. } if *config == name),
            "{name}: {err}"
        );
    }
    // A file that is not JSON is a typed error naming the config.
    let err = SamplerConfig::from_json_strict("{").unwrap_err();
    assert!(matches!(err, Error::ConfigFile { .. }), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The unsupported fields a dump reports, by name (sorted).
fn unsupported_of(file: &str, class: &str) -> Vec<String> {
    let source = read(file);
    let mut names: Vec<String> = match class {
        "DPOConfig" => DpoLossConfig::from_trl_map(source).unwrap().unsupported,
        "KTOConfig" => KtoLossConfig::from_trl_map(source).unwrap().unsupported,
        "GRPOConfig" => GrpoConfigs::from_trl_map(source).unwrap().unsupported,
        "RLOOConfig" => RlooConfigs::from_trl_map(source).unwrap().unsupported,
        "OnlineDPOConfig" => OnlineDpoConfigs::from_trl_map(source).unwrap().unsupported,
        "DistillationConfig" => {
            DistillationConfigs::from_trl_map(source)
                .unwrap()
                .unsupported
        }
        "GKDConfig" => GkdConfigs::from_trl_map(source).unwrap().unsupported,
        "CPOConfig" => CpoLossConfig::from_trl_map(source).unwrap().unsupported,
        "ORPOConfig" => OrpoLossConfig::from_trl_map(source).unwrap().unsupported,
        "BCOConfig" => BcoLossConfig::from_trl_map(source).unwrap().unsupported,
        "RewardConfig" => {
            BradleyTerryLossConfig::from_trl_map(source)
                .unwrap()
                .unsupported
        }
        other => panic!("unknown class {other}"),
    }
    .into_iter()
    .map(|u| u.field)
    .collect();
    names.sort();
    names
}

/// Issue 22: loss-changing TRL fields the crate does not implement are reported when they
/// differ from TRL's default, never dropped silently. Every defaults dump (TRL's own, under
/// transformers 5.25 and 4.57) reports nothing, which checks each default the loader compares
/// against; TRL's defaults of these fields are also pinned by the generated
/// `defaults_of_loss_changing_fields.json`.
#[test]
fn unsupported_loss_changing_fields_are_reported() {
    for (file, class) in manifest() {
        if file.ends_with(".json") && file.contains("defaults") {
            assert_eq!(
                unsupported_of(&file, &class),
                Vec::<String>::new(),
                "{file}"
            );
        }
    }
    assert_eq!(
        unsupported_of("grpo_mask_truncated.json", "GRPOConfig"),
        ["mask_truncated_completions"]
    );
    assert_eq!(
        unsupported_of("grpo_sampler_fields.json", "GRPOConfig"),
        ["repetition_penalty"]
    );
    assert_eq!(
        unsupported_of("grpo_unsupported_fields.json", "GRPOConfig"),
        [
            "ref_model_mixup_alpha",
            "ref_model_sync_steps",
            "sync_ref_model",
            "use_vllm"
        ]
    );
    // DistillationConfig's repetition_penalty is not implemented by the sampler; GKD's
    // seq_kd (teacher-generated off-policy batches) is reported.
    assert_eq!(
        unsupported_of("distillation_gkd.json", "DistillationConfig"),
        ["repetition_penalty"]
    );
    assert_eq!(unsupported_of("gkd_lmbda.json", "GKDConfig"), ["seq_kd"]);
    // Online IPO on summed log-ratios is TRL's: nothing to report.
    assert_eq!(
        unsupported_of("online_dpo_ipo_sampling.json", "OnlineDPOConfig"),
        Vec::<String>::new()
    );
    // The fields' TRL defaults, as TRL declares them (generated by the dump script).
    let defaults: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("defaults_of_loss_changing_fields.json")).unwrap(),
    )
    .unwrap();
    let grpo = &defaults["classes"]["GRPOConfig"]["defaults"];
    for (field, expected) in [
        ("mask_truncated_completions", json!(false)),
        ("num_iterations", json!(1)),
        ("use_adaptive_entropy", json!(false)),
        ("repetition_penalty", json!(1.0)),
        ("generation_kwargs", Value::Null),
        ("sync_ref_model", json!(false)),
        ("ref_model_mixup_alpha", json!(0.6)),
        ("ref_model_sync_steps", json!(512)),
        ("use_vllm", json!(false)),
    ] {
        if grpo.get(field).is_some() {
            assert_eq!(
                grpo[field]
                    .as_f64()
                    .or(grpo[field].as_bool().map(f64::from)),
                expected.as_f64().or(expected.as_bool().map(f64::from)),
                "GRPOConfig.{field}"
            );
        }
    }
    // deny_unsupported makes the list an error naming the fields.
    let loaded = GrpoConfigs::from_trl_map(read("grpo_mask_truncated.json")).unwrap();
    let err = loaded.deny_unsupported().unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { fields, .. } if fields == &["mask_truncated_completions"]),
        "{err}"
    );
    assert!(err.to_string().contains("TRL default false"), "{err}");
    // A transformers 4.57 `training_args` dump loads (its 4.x-only fields are trainer fields).
    let tf457 = DpoLossConfig::from_trl_map(read("tf457_dpo_defaults.json")).unwrap();
    assert!(tf457.trainer_fields.contains("warmup_ratio"));
    assert!(tf457.trainer_fields.contains("overwrite_output_dir"));
}
