//! Loading the crate's own configs from a file, with unknown keys refused.
//!
//! burn's [`Config`] derive gives every config `load` / `save` through serde, which **ignores
//! keys it does not know**: a typo such as `"topk"` for `top_k` in a `SamplerConfig` file is
//! dropped without a word, and the field keeps its default. [`LoadStrict`] (implemented for
//! every burn `Config`) reads the same JSON and then checks every key of the file, nested
//! configs included, against the fields of the struct: an unknown key is
//! [`Error::UnknownField`] naming the key and the config type.
//!
//! ```
//! use burn::config::config_to_json;
//! use burn_rlhf::config::LoadStrict;
//! use burn_rlhf::generate::SamplerConfig;
//!
//! let json = config_to_json(&SamplerConfig::new().with_top_k(Some(20))); // what `save` writes
//! assert_eq!(SamplerConfig::from_json_strict(&json)?.top_k, Some(20));
//! // A hand edit with a typo: burn's loader would keep `top_k = None` without a word.
//! let typo = json.replacen("\"top_k\"", "\"topk\"", 1);
//! assert!(SamplerConfig::from_json_strict(&typo).unwrap_err().to_string().contains("topk"));
//! # Ok::<(), burn_rlhf::Error>(())
//! ```
//!
//! As with burn's loader, a field without a `#[config(default)]` must be in the file (an
//! `Option` field may be left out: `None`); a missing one is [`Error::ConfigFile`] naming it.
//! Loading does not validate the values: call the config's `try_init` (or `validate`), as
//! after any other construction.

use std::path::Path;

use burn::config::Config;
use serde_json::Value;

use crate::error::{Error, Result};

/// Strict loading of a burn [`Config`]: every key of the file must be a field of the struct
/// (see the [module docs](self)).
pub trait LoadStrict: Config {
    /// Parses JSON, refusing keys that are not fields of `Self` (at any depth).
    fn from_json_strict(json: &str) -> Result<Self> {
        let what = || format!("{} JSON", short_type_name::<Self>());
        let file: Value = serde_json::from_str(json).map_err(|e| Error::ConfigFile {
            what: what(),
            message: e.to_string(),
        })?;
        let config: Self = serde_json::from_value(file.clone()).map_err(|e| Error::ConfigFile {
            what: what(),
            message: e.to_string(),
        })?;
        let known = serde_json::to_value(&config).map_err(|e| Error::ConfigFile {
            what: what(),
            message: e.to_string(),
        })?;
        if let Some(key) = unknown_key(&file, &known, "") {
            return Err(Error::UnknownField {
                config: short_type_name::<Self>(),
                field: key,
            });
        }
        Ok(config)
    }

    /// Reads a JSON file (as written by burn's `Config::save`) with [`from_json_strict`](Self::from_json_strict).
    fn load_strict(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            what: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_json_strict(&text)
    }
}

impl<C: Config> LoadStrict for C {}

/// The first key of `file` (as a dotted path) that the round trip `known` does not have.
fn unknown_key(file: &Value, known: &Value, prefix: &str) -> Option<String> {
    match (file, known) {
        (Value::Object(file), Value::Object(known)) => file.iter().find_map(|(key, value)| {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match known.get(key) {
                None => Some(path),
                Some(inner) => unknown_key(value, inner, &path),
            }
        }),
        (Value::Array(file), Value::Array(known)) => file
            .iter()
            .zip(known)
            .enumerate()
            .find_map(|(i, (f, k))| unknown_key(f, k, &format!("{prefix}[{i}]"))),
        _ => None,
    }
}

/// `burn_rlhf::generate::SamplerConfig` -> `SamplerConfig`.
fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}
