//! Real checkpoints (`burn_rlhf::hf`) against transformers' own numbers: the tiny random
//! checkpoints in `fixtures/hf/` (written by `scripts/make_hf_fixtures.py` with transformers
//! 5.25; their `reference.json` holds transformers' logits, last hidden states, rotary
//! frequencies and KV-cached greedy continuations). Every expected value below comes from those
//! files or from a closed form written here.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor, TensorData};
use burn_rlhf::Error;
use burn_rlhf::generate::{CausalLm, Prompts, SamplerConfig};
use burn_rlhf::hf::{DecoderLm, SaveOptions};
use burn_rlhf::logps::{FusedLogpsConfig, LabelAlignment, TokenLogpsConfig};
use burn_rlhf::losses::{DpoLossConfig, PreferenceBatch};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/hf")
        .join(name)
}

fn reference(name: &str) -> Value {
    let folder = if name == "llama3_sharded" {
        "llama3"
    } else {
        name
    };
    let text = std::fs::read_to_string(fixture(folder).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ints(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

fn floats(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn int_tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

fn inputs(r: &Value, device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>) {
    let ids = int_tensor(&ints(&r["input_ids"]), device);
    let mask = int_tensor(&ints(&r["attention_mask"]), device).equal_elem(1);
    (ids, mask)
}

fn host3(t: Tensor<3>) -> (Vec<f32>, [usize; 3]) {
    let dims = t.dims();
    (
        t.cast(FloatDType::F32)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        dims,
    )
}

/// Max |ours - transformers| over the reference positions of a `[B, T, D]` output.
fn max_diff_at_positions(ours: Tensor<3>, want: &[Vec<f32>], r: &Value) -> f32 {
    let (v, [_, t, d]) = host3(ours);
    let mut worst = 0f32;
    for (row, pos) in want.iter().zip(ints(&r["positions"])) {
        let (b, s) = (pos[0] as usize, pos[1] as usize);
        for (k, w) in row.iter().enumerate() {
            worst = worst.max((v[(b * t + s) * d + k] - w).abs());
        }
    }
    worst
}

const ARCHS: [&str; 7] = [
    "llama3",
    "llama3_sharded",
    "qwen2",
    "qwen2_bf16",
    "qwen3",
    "smollm2",
    "mistral",
];

#[test]
fn logits_and_hidden_states_match_transformers_for_every_architecture() {
    let device = Device::flex();
    for name in ARCHS {
        let r = reference(name);
        let model = DecoderLm::from_pretrained(fixture(name), &device, FloatDType::F32)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Rotary frequencies: transformers' `rotary_emb.inv_freq` (f32) vs ours (f64).
        let want: Vec<f64> = r["rope"]["inv_freq"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (ours, want) in model.config().inv_freq().iter().zip(&want) {
            assert!(
                (ours - want).abs() <= 1e-6 * want.abs(),
                "{name}: inv_freq {ours} vs {want}"
            );
        }
        let (ids, mask) = inputs(&r, &device);
        let hidden = model.hidden_states(ids.clone(), mask.clone());
        let dh = max_diff_at_positions(hidden, &floats(&r["hidden_states"]), &r);
        let dl = max_diff_at_positions(model.logits(ids, mask), &floats(&r["logits"]), &r);
        println!("{name}: max |logits diff| {dl:.2e}, max |hidden diff| {dh:.2e}");
        // Logits have std ~2.4; transformers' eager f32 forward vs ours: a few 1e-6.
        assert!(dl < 1e-4, "{name}: logits differ from transformers by {dl}");
        assert!(
            dh < 1e-4,
            "{name}: hidden states differ from transformers by {dh}"
        );
    }
}

#[test]
fn kv_cached_greedy_generation_matches_transformers_generate() {
    let device = Device::flex();
    for name in ["llama3", "qwen2", "qwen3", "smollm2", "mistral"] {
        let r = reference(name);
        let model = DecoderLm::from_pretrained(fixture(name), &device, FloatDType::F32).unwrap();
        let (ids, mask) = inputs(&r, &device);
        let generation = &r["generation"];
        let want_tokens = ints(&generation["new_tokens"]);
        let want_logps = floats(&generation["logprobs"]);
        let sampler = SamplerConfig::new()
            .with_greedy(true)
            .with_max_new_tokens(want_tokens[0].len())
            .with_eos_token_ids(vec![generation["eos_token_id"].as_i64().unwrap()])
            .with_pad_token_id(0)
            .init();
        let prompts = Prompts::new(ids, mask);
        let out = sampler.sample_cached(&model, &prompts, 0);
        let tokens: Vec<i64> = out
            .completion_ids
            .clone()
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        let logps: Vec<f32> = out.logps.clone().into_data().try_to_vec::<f32>().unwrap();
        let n = want_tokens[0].len();
        let mut worst = 0f32;
        for (b, (want_row, want_lp)) in want_tokens.iter().zip(&want_logps).enumerate() {
            assert_eq!(
                &tokens[b * n..(b + 1) * n],
                want_row.as_slice(),
                "{name}: row {b}"
            );
            for k in 0..n {
                worst = worst.max((logps[b * n + k] - want_lp[k]).abs());
            }
        }
        println!("{name}: 3 x {n} greedy tokens identical, max |logp diff| {worst:.2e}");
        // The fixture's cached-vs-teacher-forced spread in transformers itself is ~1e-5.
        assert!(worst < 1e-4, "{name}: greedy log-probs differ by {worst}");
        // The uncached sampler gives the same tokens.
        let plain = sampler.sample(&model, &prompts, 0);
        assert_eq!(
            plain
                .completion_ids
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .unwrap(),
            tokens,
            "{name}: cached and uncached decoding agree"
        );
    }
}

#[test]
fn fused_head_log_probs_equal_the_logits_path() {
    // The fused op on (hidden states, lm_head) never builds [N, V]; it must give the log-probs
    // of log_softmax(logits) gathered at the labels (tied: qwen2; untied: llama3).
    let device = Device::flex();
    for name in ["qwen2", "llama3"] {
        let r = reference(name);
        let model = DecoderLm::from_pretrained(fixture(name), &device, FloatDType::F32).unwrap();
        let (ids, mask) = inputs(&r, &device);
        let labels = ids.clone().mask_fill(mask.clone().bool_not(), -100);
        let lean = TokenLogpsConfig::new(LabelAlignment::CausalShift)
            .init()
            .forward(model.logits(ids.clone(), mask.clone()), labels.clone());
        let (fused, _) = FusedLogpsConfig::new().init().forward_causal_head(
            model.hidden_states(ids, mask),
            model.lm_head(),
            labels,
        );
        let a = lean.logps.into_data().try_to_vec::<f32>().unwrap();
        let b = fused.logps.into_data().try_to_vec::<f32>().unwrap();
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: fused vs lean {worst}");
    }
}

/// A fresh directory; under `BURN_RLHF_HF_SAVE_DIR` (kept, for `scripts/check_hf_roundtrip.py`
/// with transformers) or the system's temporary directory.
fn temp_dir(tag: &str) -> PathBuf {
    let root =
        std::env::var_os("BURN_RLHF_HF_SAVE_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = root.join(format!("burn-rlhf-hf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of a fixture folder with `config.json` edited by `edit`.
fn edited_copy(name: &str, tag: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir = temp_dir(tag);
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn a_checkpoint_that_does_not_match_its_config_names_the_tensor() {
    let device = Device::flex();
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: [(&str, Edit, &str); 5] = [
        (
            "more-layers",
            Box::new(|c| c["num_hidden_layers"] = 3.into()),
            "model.layers.2.",
        ),
        (
            "fewer-layers",
            Box::new(|c| c["num_hidden_layers"] = 1.into()),
            "model.layers.1.",
        ),
        (
            "wider",
            Box::new(|c| c["intermediate_size"] = 96.into()),
            "model.layers.0.mlp.down_proj.weight",
        ),
        (
            "untied",
            Box::new(|c| c["tie_word_embeddings"] = false.into()),
            "lm_head.weight",
        ),
        (
            "gelu",
            Box::new(|c| c["hidden_act"] = "gelu".into()),
            "hidden_act",
        ),
    ];
    for (tag, edit, named) in cases {
        let dir = edited_copy("qwen2", tag, edit);
        let err = DecoderLm::from_pretrained(&dir, &device, FloatDType::F32).unwrap_err();
        assert!(matches!(err, Error::Checkpoint { .. }), "{tag}: {err}");
        let text = err.to_string();
        // `wider` fails on the first MLP tensor it reads (gate_proj), `down_proj` would be next.
        let named = if tag == "wider" {
            "model.layers.0.mlp.gate_proj.weight"
        } else {
            named
        };
        assert!(
            text.contains(named),
            "{tag}: `{text}` should name `{named}`"
        );
        cleanup(&dir);
    }
}

#[test]
fn bad_forward_inputs_are_typed_errors() {
    let device = Device::flex();
    let r = reference("qwen2");
    let model = DecoderLm::from_pretrained(fixture("qwen2"), &device, FloatDType::F32).unwrap();
    let (ids, mask) = inputs(&r, &device);
    let err = model
        .try_hidden_states(ids.clone(), mask.clone().narrow(1, 0, 5))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                arg: "attention_mask",
                ..
            }
        ),
        "{err}"
    );
    // Row 1, column 4 gets id 512 = vocab_size (flat position 12 + 4).
    let bad = ids.slice_assign([1..2, 4..5], Tensor::<2, Int>::full([1, 1], 512, &device));
    let err = model.try_hidden_states(bad, mask).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LabelOutOfRange {
                arg: "ids",
                value: 512,
                position: 16,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn saved_checkpoints_reload_to_the_same_model_in_hf_layout() {
    let device = Device::flex();
    let r = reference("qwen2");
    let (ids, mask) = inputs(&r, &device);
    let model = DecoderLm::from_pretrained(fixture("qwen2"), &device, FloatDType::F32).unwrap();
    let want = host3(model.logits(ids.clone(), mask.clone())).0;

    // One file, tied embeddings: no lm_head.weight, metadata format=pt, the same tensor set.
    let dir = temp_dir("save-one");
    model
        .save_pretrained(&dir, &SaveOptions::default())
        .unwrap();
    let header = safetensors_header(&dir.join("model.safetensors"));
    assert_eq!(header["__metadata__"]["format"], "pt");
    assert!(header.get("lm_head.weight").is_none());
    let original = safetensors_header(&fixture("qwen2").join("model.safetensors"));
    let names = |h: &Value| {
        let mut k: Vec<String> = h
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect();
        k.sort();
        k
    };
    assert_eq!(names(&header), names(&original));
    for name in names(&original) {
        assert_eq!(header[&name]["shape"], original[&name]["shape"], "{name}");
    }
    let reloaded = DecoderLm::from_pretrained(&dir, &device, FloatDType::F32).unwrap();
    assert_eq!(
        host3(reloaded.logits(ids.clone(), mask.clone())).0,
        want,
        "f32 round trip is exact"
    );

    // Sharded (about 100 KB per shard), bf16 on disk.
    let dir2 = temp_dir("save-sharded");
    let options = SaveOptions {
        dtype: Some(FloatDType::BF16),
        max_shard_bytes: 100_000,
        copy_files_from: Some(fixture("qwen2")),
    };
    model.save_pretrained(&dir2, &options).unwrap();
    assert!(dir2.join("model.safetensors.index.json").exists());
    assert!(dir2.join("generation_config.json").exists());
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir2.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    let reloaded = DecoderLm::from_pretrained(&dir2, &device, FloatDType::F32).unwrap();
    let got = host3(reloaded.logits(ids.clone(), mask.clone())).0;
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // bf16 keeps 8 bits of mantissa: logits move by a few 1e-2 at most here.
    assert!(
        worst > 0.0 && worst < 0.2,
        "bf16 round trip moved the logits by {worst}"
    );
    // `fixtures/hf/qwen2_bf16` is transformers' own bf16 rounding of the same weights, with
    // transformers' logits: our bf16 save must round the same way.
    let bf16 = reference("qwen2_bf16");
    let d = max_diff_at_positions(reloaded.logits(ids, mask), &floats(&bf16["logits"]), &bf16);
    assert!(
        d < 1e-4,
        "our bf16 save vs transformers' bf16 checkpoint: {d}"
    );
    cleanup(&dir);
    cleanup(&dir2);
}

fn cleanup(dir: &Path) {
    if std::env::var_os("BURN_RLHF_HF_SAVE_DIR").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn safetensors_header(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + len]).unwrap()
}

#[test]
fn lora_trains_the_adapters_against_the_adapter_free_base_as_reference() {
    let device = Device::flex().autodiff();
    let r = reference("qwen2");
    let inner = Device::flex();
    let (ids, mask) = inputs(&r, &device);
    let (ids_i, mask_i) = inputs(&r, &inner);
    let labels_i = ids_i.clone().mask_fill(mask_i.clone().bool_not(), -100);
    let base = DecoderLm::from_pretrained(fixture("qwen2"), &device, FloatDType::F32).unwrap();
    let (policy, ref_model) = base.with_lora(4, 8.0, &["q_proj", "v_proj"]);
    // An explicit frozen copy of the base, loaded again from disk.
    let frozen = DecoderLm::from_pretrained(fixture("qwen2"), &inner, FloatDType::F32).unwrap();

    // Chosen = rows 0..1, rejected = row 2 twice: a DPO batch on the fixture's prompts.
    let labels = ids.clone().mask_fill(mask.clone().bool_not(), -100);
    let op = TokenLogpsConfig::new(LabelAlignment::CausalShift).init();
    let seq =
        |m: &DecoderLm, ids: Tensor<2, Int>, mask: Tensor<2, Bool>, labels: Tensor<2, Int>| {
            op.forward(m.logits(ids, mask), labels).sum()
        };
    let sums = seq(&policy, ids.clone(), mask.clone(), labels.clone());
    let ref_sums = seq(&ref_model, ids_i.clone(), mask_i.clone(), labels_i.clone());
    let frozen_sums = seq(&frozen, ids_i.clone(), mask_i.clone(), labels_i);
    let pick = |t: Tensor<1>, rows: [i64; 2]| {
        let index = Tensor::from_data(TensorData::new(rows.to_vec(), [2]), &t.device());
        t.select(0, index)
    };
    let batch = |refs: Tensor<1>| {
        PreferenceBatch::new(pick(sums.clone(), [0, 1]), pick(sums.clone(), [2, 2]))
            .with_ref_logps(pick(refs.clone(), [0, 1]), pick(refs, [2, 2]))
    };
    let dpo = DpoLossConfig::new().init();
    let with_ref = dpo.forward(&batch(ref_sums.clone())).loss;
    let with_frozen = dpo.forward(&batch(frozen_sums)).loss;
    let scalar = |t: Tensor<1>| {
        t.cast(FloatDType::F64)
            .into_data()
            .try_to_vec::<f64>()
            .unwrap()[0]
    };
    let (a, b) = (scalar(with_ref.clone()), scalar(with_frozen));
    // b = 0 at init: the policy is the base, so the loss is ln 2 (closed form), with either
    // reference.
    assert!((a - std::f64::consts::LN_2).abs() < 1e-6, "loss {a}");
    assert_eq!(a, b, "adapter-free reference == frozen copy");

    // One SGD step moves only the adapters; the reference stays the base.
    let grads = GradientsParams::from_grads(with_ref.backward(), &policy);
    let mut optim = SgdConfig::new().init();
    let policy = optim.step(1.0, policy, grads);
    let moved = host3(policy.valid().logits(ids_i.clone(), mask_i.clone())).0;
    let base_logits = host3(frozen.logits(ids_i.clone(), mask_i.clone())).0;
    let ref_after = host3(ref_model.logits(ids_i.clone(), mask_i.clone())).0;
    assert_eq!(
        ref_after, base_logits,
        "the reference is untouched by the step"
    );
    assert_ne!(moved, base_logits, "the adapters moved the policy");
    // Saving merges the adapters (the effective weights) under the original names.
    let dir = temp_dir("lora-save");
    policy
        .save_pretrained(&dir, &SaveOptions::default())
        .unwrap();
    let header = safetensors_header(&dir.join("model.safetensors"));
    assert!(
        header
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.contains("lora"))
    );
    let merged = DecoderLm::from_pretrained(&dir, &inner, FloatDType::F32).unwrap();
    let got = host3(merged.logits(ids_i, mask_i)).0;
    let worst = got
        .iter()
        .zip(&moved)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "merged checkpoint vs adapted policy: {worst}");
    cleanup(&dir);
}
