//! Loading fixture cases (`{"source", "case", "config", "inputs", "expected"}`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// One fixture case.
#[derive(Debug, Clone)]
pub struct Case {
    pub folder: String,
    pub name: String,
    pub source: String,
    pub config: Value,
    pub inputs: Value,
    pub expected: Value,
    /// The `expected` keys a runner has read (compared). The harness fails a case whose
    /// fixture carries a key no runner compared, so a new metric cannot pass unnoticed.
    pub used: RefCell<BTreeSet<String>>,
    /// Expected values a runner deliberately does not compare, with the reason (printed by
    /// the harness: a skip is never silent).
    pub skipped: RefCell<BTreeSet<String>>,
}

/// A nested JSON array flattened row-major, with its shape.
#[derive(Debug, Clone)]
pub struct Array {
    pub values: Vec<f64>,
    pub shape: Vec<usize>,
}

impl Array {
    pub fn shape<const D: usize>(&self) -> [usize; D] {
        self.shape
            .clone()
            .try_into()
            .unwrap_or_else(|s| panic!("expected rank {D}, got shape {s:?}"))
    }
    pub fn ints(&self) -> Vec<i64> {
        self.values.iter().map(|&x| x as i64).collect()
    }
    pub fn bools(&self) -> Vec<bool> {
        self.values.iter().map(|&x| x != 0.0).collect()
    }
}

fn flatten(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f64>) {
    match v {
        Value::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len());
            }
            for item in items {
                flatten(item, depth + 1, shape, out);
            }
        }
        Value::Number(n) => out.push(n.as_f64().unwrap()),
        Value::Bool(b) => out.push(if *b { 1.0 } else { 0.0 }),
        // `null` inside an array: a reward function that returned None (online_dpo/).
        Value::Null => out.push(f64::NAN),
        other => panic!("unexpected JSON value in array: {other}"),
    }
}

pub fn array(v: &Value) -> Array {
    let mut shape = Vec::new();
    let mut values = Vec::new();
    flatten(v, 0, &mut shape, &mut values);
    Array { values, shape }
}

impl Case {
    /// The function a case exercises: the last dotted name of `source`, qualified by its class
    /// when it is a method (`DPOTrainer._compute_loss`, `PPOLoss.forward`), since several
    /// trainers share method names; plain functions stay bare (`get_batch_log_probs`).
    pub fn function(&self) -> String {
        let last = self.source.split_whitespace().last().unwrap_or_default();
        let parts: Vec<&str> = last.split('.').collect();
        match parts.as_slice() {
            [.., class, method] if class.starts_with(|c: char| c.is_ascii_uppercase()) => {
                format!("{class}.{method}")
            }
            [.., f] => f.to_string(),
            [] => String::new(),
        }
    }
    pub fn input(&self, key: &str) -> Array {
        array(
            self.inputs
                .get(key)
                .unwrap_or_else(|| panic!("{}: no input `{key}`", self.name)),
        )
    }
    pub fn input_opt(&self, key: &str) -> Option<Array> {
        self.inputs.get(key).filter(|v| !v.is_null()).map(array)
    }
    /// Marks `key` as compared (for keys a runner checks without `expect`, e.g. a nested
    /// object or a value compared through another path).
    pub fn mark_compared(&self, key: &str) {
        self.used.borrow_mut().insert(key.to_string());
    }
    /// The non-null `expected` keys no runner compared.
    pub fn uncompared(&self) -> Vec<String> {
        let used = self.used.borrow();
        match &self.expected {
            Value::Object(map) => map
                .iter()
                .filter(|(k, v)| !v.is_null() && !used.contains(k.as_str()))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => Vec::new(),
        }
    }
    /// Records that `what` is deliberately not compared, and why.
    pub fn skip(&self, what: &str, reason: &str) {
        self.skipped
            .borrow_mut()
            .insert(format!("{what} ({reason})"));
    }
    /// The raw `expected[key]` JSON value (marked as compared).
    pub fn expected_value(&self, key: &str) -> &Value {
        self.mark_compared(key);
        &self.expected[key]
    }
    /// A nested expected array `expected[outer][key]` (e.g. `reference_fp64`).
    pub fn expect_nested(&self, outer: &str, key: &str) -> Option<Array> {
        self.mark_compared(outer);
        self.expected
            .get(outer)
            .and_then(|o| o.get(key))
            .filter(|v| !v.is_null())
            .map(array)
    }
    pub fn expect(&self, key: &str) -> Array {
        self.mark_compared(key);
        array(
            self.expected
                .get(key)
                .unwrap_or_else(|| panic!("{}: no expected `{key}`", self.name)),
        )
    }
    pub fn expect_opt(&self, key: &str) -> Option<Array> {
        self.mark_compared(key);
        self.expected.get(key).filter(|v| !v.is_null()).map(array)
    }
    pub fn config_f64(&self, key: &str) -> f64 {
        self.config
            .get(key)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("{}: no config `{key}`", self.name))
    }
    pub fn config_bool(&self, key: &str) -> bool {
        self.config
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or_else(|| panic!("{}: no config `{key}`", self.name))
    }
}

/// The case names per folder that `dir/manifest.json` lists (`groups`), if there is one.
pub fn manifest_groups(dir: &Path) -> Option<std::collections::BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    let v: Value = serde_json::from_str(&text).expect("manifest.json parses");
    let groups = v["groups"].as_object().expect("manifest.json has `groups`");
    Some(
        groups
            .iter()
            .map(|(folder, names)| {
                let names = names
                    .as_array()
                    .expect("a manifest group is a list")
                    .iter()
                    .map(|n| n.as_str().expect("case names are strings").to_string())
                    .collect();
                (folder.clone(), names)
            })
            .collect(),
    )
}

/// Fixture folders that hold no loss parity cases: TRL config dumps (`tests/trl_configs.rs`)
/// and Hugging Face checkpoints with transformers' reference outputs (`fixtures/hf/`).
const NOT_PARITY_FOLDERS: [&str; 2] = ["trl_configs", "hf"];

/// Every `*.json` case under `dir/<folder>/` (sorted), skipping `manifest.json` and the
/// [`NOT_PARITY_FOLDERS`].
pub fn load_all(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut folders: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read fixtures dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && !NOT_PARITY_FOLDERS.iter().any(|f| e.file_name() == *f))
        .collect();
    folders.sort_by_key(|e| e.file_name());
    for folder in folders {
        let mut files: Vec<_> = std::fs::read_dir(folder.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        files.sort_by_key(|e| e.file_name());
        for file in files {
            let path = file.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            cases.push(Case {
                folder: folder.file_name().to_string_lossy().into_owned(),
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                source: v["source"].as_str().unwrap_or_default().to_string(),
                config: v["config"].clone(),
                inputs: v["inputs"].clone(),
                expected: v["expected"].clone(),
                used: RefCell::default(),
                skipped: RefCell::default(),
            });
        }
    }
    cases
}
