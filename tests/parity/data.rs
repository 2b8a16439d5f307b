//! Real-data parity: the crate's reading, tokenization, chat templates, preprocessing and
//! collation against what TRL 1.16 / transformers 5.25 produced on the same rows
//! (`fixtures/data/expected/*.json`, written by `scripts/make_data_fixtures.py`, which runs the
//! real trainers and reads their processed datasets and collator outputs). Token ids are
//! compared exactly.

use std::path::{Path, PathBuf};

use burn_rlhf::Error;
use burn_rlhf::data::{
    ChatOptions, Collator, HfTokenizer, Message, OnMalformed, PaddedBatch, PreferenceRow,
    PromptCompletionRow, PromptRow, SftOptions, SftRow, TruncationMode, UnpairedRow,
    add_kl_completions, prepare_preference, prepare_prompts, prepare_sft, prepare_unpaired,
    read_jsonl, unpair,
};
use serde_json::Value;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/data")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn matrix(value: &Value) -> Vec<Vec<i64>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().or_else(|| v.as_bool().map(i64::from)).unwrap())
                .collect()
        })
        .collect()
}

fn rows_of(flat: &[i64], cols: usize) -> Vec<Vec<i64>> {
    flat.chunks(cols.max(1)).map(<[i64]>::to_vec).collect()
}

fn check_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}:\n  got  {got:?}\n  want {want:?}"))
    }
}

/// Compares a collated batch with TRL's `input_ids`, `attention_mask` and either the
/// `completion_mask` (DPO, KTO) or the `labels` (SFT).
fn check_batch(prefix: &str, batch: &PaddedBatch, collated: &Value) -> Result<(), String> {
    check_eq(
        &format!("{prefix}input_ids"),
        rows_of(&batch.input_ids, batch.cols),
        matrix(&collated[format!("{prefix}input_ids")]),
    )?;
    check_eq(
        &format!("{prefix}attention_mask"),
        rows_of(&batch.attention_mask, batch.cols),
        matrix(&collated[format!("{prefix}attention_mask")]),
    )?;
    if let Some(mask) = collated.get(format!("{prefix}completion_mask")) {
        check_eq(
            &format!("{prefix}completion_mask"),
            rows_of(&batch.completion_mask(), batch.cols),
            matrix(mask),
        )?;
    }
    if let Some(labels) = collated.get("labels").filter(|_| prefix.is_empty()) {
        check_eq("labels", rows_of(&batch.labels, batch.cols), matrix(labels))?;
    }
    Ok(())
}

fn tokenizer_for(case: &Value) -> HfTokenizer {
    let name = case["tokenizer"].as_str().unwrap();
    let tokenizer = HfTokenizer::from_pretrained(data_dir().join("tokenizers").join(name))
        .unwrap_or_else(|e| panic!("tokenizer {name}: {e}"));
    // TRL swaps in a training template: its own (`training_chat_template`, recorded), or the
    // one named by `SFTConfig.chat_template_path`.
    let path_template = case["config"]
        .get("chat_template_path")
        .and_then(Value::as_str)
        .map(|p| std::fs::read_to_string(data_dir().join(p)).unwrap());
    match case
        .get("training_chat_template")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or(path_template)
    {
        Some(template) => tokenizer.with_chat_template(&template).unwrap(),
        None => tokenizer,
    }
}

fn max_length(config: &Value) -> Option<usize> {
    config["max_length"].as_u64().map(|v| v as usize)
}

fn truncation_mode(config: &Value) -> TruncationMode {
    match config.get("truncation_mode").and_then(Value::as_str) {
        Some("keep_end") => TruncationMode::KeepEnd,
        _ => TruncationMode::KeepStart,
    }
}

/// The collator with the case's pad id (TRL's: the pad token, else EOS).
fn collator_for(case: &Value, max_length: Option<usize>, mode: TruncationMode) -> Collator {
    Collator {
        pad_token_id: case["pad_token_id"].as_u64().unwrap() as u32,
        max_length,
        truncation_mode: mode,
        pad_to_multiple_of: None,
    }
}

fn dataset(case: &Value) -> PathBuf {
    data_dir()
        .join("datasets")
        .join(format!("{}.jsonl", case["dataset"].as_str().unwrap()))
}

fn check_dropped(case: &Value, dropped: &[usize]) -> Result<(), String> {
    let want: Vec<usize> = case
        .get("dropped_rows")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap() as usize).collect())
        .unwrap_or_default();
    check_eq("dropped rows", dropped.to_vec(), want)
}

fn run_dpo(case: &Value) -> Result<(), String> {
    let tokenizer = tokenizer_for(case);
    let config = &case["config"];
    let rows = read_jsonl::<PreferenceRow>(dataset(case), OnMalformed::Fail)
        .map_err(|e| e.to_string())?
        .rows;
    let mode = truncation_mode(config);
    let prepared = prepare_preference(
        &tokenizer,
        &rows,
        &ChatOptions::default(),
        max_length(config),
        mode,
    )
    .map_err(|e| e.to_string())?;
    check_dropped(case, &prepared.dropped)?;
    let want = case["rows"].as_array().unwrap();
    check_eq("rows kept", prepared.rows.len(), want.len())?;
    for (i, (got, want)) in prepared.rows.iter().zip(want).enumerate() {
        check_eq(
            &format!("row {i} prompt_ids"),
            &got.prompt_ids,
            &ids(&want["prompt_ids"]),
        )?;
        check_eq(
            &format!("row {i} chosen_ids"),
            &got.chosen_ids,
            &ids(&want["chosen_ids"]),
        )?;
        check_eq(
            &format!("row {i} rejected_ids"),
            &got.rejected_ids,
            &ids(&want["rejected_ids"]),
        )?;
    }
    let collator = collator_for(case, max_length(config), mode);
    check_batch("", &collator.preference(&prepared.rows), &case["collated"])
}

fn run_kto(case: &Value) -> Result<(), String> {
    let tokenizer = tokenizer_for(case);
    let config = &case["config"];
    let path = dataset(case);
    let rows: Vec<UnpairedRow> = if case["dataset"].as_str().unwrap().starts_with("preference") {
        let paired = read_jsonl::<PreferenceRow>(&path, OnMalformed::Fail)
            .map_err(|e| e.to_string())?
            .rows;
        unpair(&paired).map_err(|e| e.to_string())?
    } else {
        read_jsonl::<UnpairedRow>(&path, OnMalformed::Fail)
            .map_err(|e| e.to_string())?
            .rows
    };
    let mut prepared = prepare_unpaired(
        &tokenizer,
        &rows,
        &ChatOptions::default(),
        max_length(config),
    )
    .map_err(|e| e.to_string())?;
    check_dropped(case, &prepared.dropped)?;
    if case["calculate_KL"].as_bool() == Some(true) {
        let batch_size = config["per_device_train_batch_size"].as_u64().unwrap() as usize;
        add_kl_completions(&mut prepared.rows, batch_size);
    }
    let want = case["rows"].as_array().unwrap();
    check_eq("rows kept", prepared.rows.len(), want.len())?;
    for (i, (got, want)) in prepared.rows.iter().zip(want).enumerate() {
        check_eq(
            &format!("row {i} prompt_ids"),
            &got.prompt_ids,
            &ids(&want["prompt_ids"]),
        )?;
        check_eq(
            &format!("row {i} completion_ids"),
            &got.completion_ids,
            &ids(&want["completion_ids"]),
        )?;
        check_eq(
            &format!("row {i} label"),
            got.label,
            want["label"].as_bool().unwrap(),
        )?;
        if let Some(kl) = want.get("KL_completion_ids") {
            check_eq(
                &format!("row {i} KL_completion_ids"),
                got.kl_completion_ids.clone(),
                Some(ids(kl)),
            )?;
        }
    }
    let collator = collator_for(case, max_length(config), TruncationMode::KeepStart);
    let (batch, labels) = collator.unpaired(&prepared.rows);
    check_batch("", &batch, &case["collated"])?;
    let want_labels: Vec<bool> = case["collated"]["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    check_eq("label", labels, want_labels)?;
    if case["collated"].get("KL_input_ids").is_some() {
        let kl = collator.unpaired_kl(&prepared.rows).ok_or("no KL batch")?;
        check_batch("KL_", &kl, &case["collated"])?;
    }
    Ok(())
}

fn run_sft(case: &Value) -> Result<(), String> {
    let tokenizer = tokenizer_for(case);
    let config = &case["config"];
    let rows = read_jsonl::<SftRow>(dataset(case), OnMalformed::Fail)
        .map_err(|e| e.to_string())?
        .rows;
    let options = SftOptions {
        max_length: max_length(config),
        truncation_mode: truncation_mode(config),
        completion_only_loss: config.get("completion_only_loss").and_then(Value::as_bool),
        assistant_only_loss: config
            .get("assistant_only_loss")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let prepared = prepare_sft(&tokenizer, &rows, &ChatOptions::default(), &options)
        .map_err(|e| e.to_string())?;
    check_dropped(case, &prepared.dropped)?;
    let want = case["rows"].as_array().unwrap();
    check_eq("rows kept", prepared.rows.len(), want.len())?;
    for (i, (got, want)) in prepared.rows.iter().zip(want).enumerate() {
        check_eq(
            &format!("row {i} input_ids"),
            &got.input_ids,
            &ids(&want["input_ids"]),
        )?;
        let labels: Vec<i64> = want["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        check_eq(&format!("row {i} labels"), &got.labels, &labels)?;
    }
    // SFT cuts in the dataset step (`prepare_sft`); its collator only pads.
    let collator = collator_for(case, None, TruncationMode::KeepStart);
    check_batch("", &collator.sft(&prepared.rows), &case["collated"])
}

fn run_grpo(case: &Value) -> Result<(), String> {
    let tokenizer = tokenizer_for(case);
    let rows = read_jsonl::<PromptRow>(dataset(case), OnMalformed::Fail)
        .map_err(|e| e.to_string())?
        .rows;
    let prepared =
        prepare_prompts(&tokenizer, &rows, &ChatOptions::default()).map_err(|e| e.to_string())?;
    let want = case["rows"].as_array().unwrap();
    check_eq("rows", prepared.rows.len(), want.len())?;
    for (i, (got, want)) in prepared.rows.iter().zip(want).enumerate() {
        check_eq(
            &format!("row {i} prompt_ids"),
            got,
            &ids(&want["prompt_ids"]),
        )?;
    }
    // The trainer's left-padded prompt batch, through the sampler's own padding.
    let pad = case["pad_token_id"].as_i64().unwrap();
    let rows: Vec<Vec<i64>> = prepared
        .rows
        .iter()
        .map(|r| r.iter().map(|&id| i64::from(id)).collect())
        .collect();
    let device = burn::tensor::Device::flex();
    let prompts = burn_rlhf::generate::Prompts::try_left_padded(&rows, pad, &device)
        .map_err(|e| e.to_string())?;
    let [p, t] = prompts.ids.dims();
    let got_ids = prompts
        .ids
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    let got_mask: Vec<i64> = prompts
        .attention_mask
        .int()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    check_eq("prompt batch shape", vec![p, t], {
        let m = matrix(&case["collated"]["prompt_ids"]);
        vec![m.len(), m[0].len()]
    })?;
    check_eq(
        "prompt_ids",
        rows_of(&got_ids, t),
        matrix(&case["collated"]["prompt_ids"]),
    )?;
    check_eq(
        "prompt_mask",
        rows_of(&got_mask, t),
        matrix(&case["collated"]["prompt_mask"]),
    )
}

/// Cases the crate does not reproduce, with the reason (counted, never silently skipped).
fn unsupported(case: &Value) -> Option<&'static str> {
    (case["config"]["padding_free"].as_bool() == Some(true)).then_some(
        "padding_free batches (flattened rows with position_ids): the decoder attends within padded rows",
    )
}

#[test]
fn trl_preprocessing_matches_trl_on_every_fixture_case() {
    let dir = data_dir().join("expected");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            // Trainer cases; `tokenizer_*` and `template_*` files have tests of their own.
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            p.extension().is_some_and(|e| e == "json")
                && !name.starts_with("tokenizer_")
                && !name.starts_with("template_")
        })
        .collect();
    paths.sort();
    let (mut passed, mut failed, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for path in &paths {
        let case = json(path);
        let name = case["name"].as_str().unwrap().to_string();
        if let Some(reason) = unsupported(&case) {
            skipped.push(format!("{name}: {reason}"));
            continue;
        }
        let result = match case["trainer"].as_str().unwrap() {
            "dpo" => run_dpo(&case),
            "kto" => run_kto(&case),
            "sft" => run_sft(&case),
            "grpo" => run_grpo(&case),
            other => Err(format!("no runner for trainer {other}")),
        };
        match result {
            Ok(()) => passed.push(name),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    println!(
        "data: {} passed, {} failed, {} not supported",
        passed.len(),
        failed.len(),
        skipped.len()
    );
    for s in &skipped {
        println!("  not supported: {s}");
    }
    assert!(passed.len() >= 30, "only {} cases ran", passed.len());
    assert!(
        failed.is_empty(),
        "{} case(s) differ from TRL:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

fn messages(value: &Value) -> Vec<Message> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mut extra = m.as_object().unwrap().clone();
            let role = extra.remove("role").unwrap().as_str().unwrap().to_string();
            let content = extra
                .remove("content")
                .map(|c| c.as_str().unwrap_or_default().to_string())
                .unwrap_or_default();
            Message {
                role,
                content,
                extra,
            }
        })
        .collect()
}

#[test]
fn tokenizers_and_chat_templates_match_transformers() {
    for name in ["llama3", "chatml", "mistral"] {
        let want = json(&data_dir().join(format!("expected/tokenizer_{name}.json")));
        let tokenizer =
            HfTokenizer::from_pretrained(data_dir().join("tokenizers").join(name)).unwrap();
        assert_eq!(
            tokenizer.vocab_size(),
            want["len"].as_u64().unwrap() as usize,
            "{name}"
        );
        for (key, token) in want["special_tokens"].as_object().unwrap() {
            assert_eq!(
                tokenizer.special_token(key),
                token["token"].as_str(),
                "{name} {key}"
            );
        }
        for case in want["encode"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tokenizer.encode(text, true).unwrap(),
                ids(&case["input_ids"]),
                "{name} {text:?}"
            );
            assert_eq!(
                tokenizer.encode(text, false).unwrap(),
                ids(&case["input_ids_no_special"]),
                "{name} {text:?} without special tokens"
            );
        }
        for case in want["decode"].as_array().unwrap() {
            let got = tokenizer.decode(&ids(&case["ids"]), false).unwrap();
            assert_eq!(got, case["text"].as_str().unwrap(), "{name} decode");
            if let Some(skip) = case.get("text_skip_special") {
                assert_eq!(
                    tokenizer.decode(&ids(&case["ids"]), true).unwrap(),
                    skip.as_str().unwrap(),
                    "{name} decode skipping special tokens"
                );
            }
        }
        for case in want["chat_template"].as_array().unwrap() {
            let label = format!("{name} {}", case["name"]);
            let options = ChatOptions {
                add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap_or(false),
                continue_final_message: case["continue_final_message"].as_bool().unwrap_or(false),
                tools: case.get("tools").cloned(),
                ..ChatOptions::default()
            };
            let msgs = messages(&case["messages"]);
            match case.get("error") {
                Some(error) => {
                    let err = tokenizer.render_chat(&msgs, &options).unwrap_err();
                    assert!(matches!(err, Error::Tokenizer { .. }), "{label}: {err}");
                    assert!(
                        err.to_string()
                            .ends_with(error["message"].as_str().unwrap()),
                        "{label}: {err}"
                    );
                }
                None => {
                    let rendered = tokenizer.render_chat(&msgs, &options).unwrap();
                    assert_eq!(rendered.text, case["rendered"].as_str().unwrap(), "{label}");
                    if let Some(want_ids) = case.get("input_ids") {
                        let got = tokenizer.apply_chat_template(&msgs, &options).unwrap();
                        assert_eq!(got.input_ids, ids(want_ids), "{label} ids");
                    }
                }
            }
        }
    }
}

#[test]
fn malformed_rows_are_errors_naming_row_and_field_or_are_skipped_and_counted() {
    let dir = data_dir().join("datasets/malformed");
    let expected = json(&dir.join("expected.json"));
    assert_eq!(expected.as_object().unwrap().len(), 6);
    for (file, want) in expected.as_object().unwrap() {
        let path = dir.join(file);
        let line = want["line"].as_u64().unwrap() as usize;
        // Each file holds one TRL type (the fixture's `problem` says which).
        let read =
            |on: OnMalformed| -> Result<(usize, usize), Error> {
                match file.as_str() {
                    "label_string.jsonl" => read_jsonl::<UnpairedRow>(&path, on)
                        .map(|d| (d.rows.len(), d.skipped.len())),
                    "content_not_string.jsonl" | "wrong_format.jsonl" => {
                        read_jsonl::<PromptCompletionRow>(&path, on)
                            .map(|d| (d.rows.len(), d.skipped.len()))
                    }
                    _ => read_jsonl::<PreferenceRow>(&path, on)
                        .map(|d| (d.rows.len(), d.skipped.len())),
                }
            };
        let err = read(OnMalformed::Fail).unwrap_err();
        match &err {
            Error::Data { row, field, .. } => {
                assert_eq!(*row, Some(line), "{file}: {err}");
                assert_eq!(field.as_deref(), want["path"].as_str(), "{file}: {err}");
            }
            other => panic!("{file}: {other}"),
        }
        let lines = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        let (kept, skipped) = read(OnMalformed::Skip).unwrap();
        assert_eq!(
            (kept, skipped),
            (lines - 1, 1),
            "{file}: one row skipped and counted"
        );
    }
}

#[test]
fn sft_files_of_one_type_only() {
    // A language-modeling row after prompt-completion rows is refused (TRL decides the type
    // from the first row).
    let text = "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"text\": \"c\"}\n";
    let err = burn_rlhf::data::parse_jsonl::<SftRow>(text, "mixed", OnMalformed::Fail).unwrap_err();
    assert!(matches!(err, Error::Data { row: Some(2), .. }), "{err}");
}

fn same_rows<R: burn_rlhf::data::TrlRow + PartialEq + std::fmt::Debug>(stem: &str) {
    let dir = data_dir().join("datasets");
    let jsonl = read_jsonl::<R>(dir.join(format!("{stem}.jsonl")), OnMalformed::Fail).unwrap();
    let parquet =
        burn_rlhf::data::read_parquet::<R>(dir.join(format!("{stem}.parquet")), OnMalformed::Fail)
            .unwrap();
    assert!(!jsonl.rows.is_empty(), "{stem}");
    assert_eq!(
        jsonl.rows, parquet.rows,
        "{stem}: JSONL and Parquet rows differ"
    );
}

#[test]
fn jsonl_and_parquet_give_the_same_rows() {
    let mut stems = 0;
    for entry in std::fs::read_dir(data_dir().join("datasets")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        match stem.as_str() {
            s if s.starts_with("preference") => same_rows::<PreferenceRow>(s),
            s if s.starts_with("unpaired") => same_rows::<UnpairedRow>(s),
            s if s.starts_with("prompt_only") => same_rows::<PromptRow>(s),
            s if s.starts_with("prompt_completion") => {
                same_rows::<PromptCompletionRow>(s);
                same_rows::<SftRow>(s);
            }
            s if s.starts_with("language_modeling") => same_rows::<SftRow>(s),
            other => panic!("no row type for {other}"),
        }
        stems += 1;
    }
    assert_eq!(stems, 12, "one Parquet file per TRL type x format");
}

#[test]
fn jinja_features_of_hub_templates_render_as_transformers_renders_them() {
    // fixtures/data/expected/template_features.json: transformers 5.25's
    // `render_jinja_template` on one template using namespace, loop variables, slicing,
    // negative indexing, string / dict methods, tests, selectattr / map / join / format /
    // tojson(indent) filters, `~` and `*` (scripts/make_template_fixture.py).
    let case = json(&data_dir().join("expected/template_features.json"));
    let template = burn_rlhf::data::ChatTemplate::new(case["template"].as_str().unwrap()).unwrap();
    let mut context = serde_json::Map::new();
    for (key, token) in case["special_tokens"].as_object().unwrap() {
        context.insert(key.clone(), token.clone());
    }
    context.insert("messages".into(), case["messages"].clone());
    context.insert("tools".into(), case["tools"].clone());
    context.insert("documents".into(), Value::Null);
    context.insert(
        "add_generation_prompt".into(),
        case["add_generation_prompt"].clone(),
    );
    let rendered = template.render(&Value::Object(context)).unwrap();
    assert_eq!(rendered.text, case["rendered"].as_str().unwrap());
}
