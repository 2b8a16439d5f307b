//! Reads typed fields out of a TRL config mapping, with TRL's defaults and typed errors.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{TrainerFields, TrlConfig, UnsupportedField, fields::TRAINING_ARGUMENTS, kind};
use crate::error::{Error, Result};

/// The fields of one config file. Loss fields are taken out with the typed getters; what is left
/// becomes the [`TrainerFields`].
pub(crate) struct Reader {
    map: Map<String, Value>,
    shared: BTreeMap<String, Value>,
    unsupported: Vec<UnsupportedField>,
}

fn invalid(field: &'static str, expected: &str, value: &Value) -> Error {
    Error::config(
        field,
        format!("expected {expected}, got {}", kind(value)),
        value,
    )
}

fn number(field: &'static str, value: &Value) -> Result<f64> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        // TRL's argument parser converts strings; YAML 1.1 reads `1e-6` as a string.
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| invalid(field, "a number", value))
}

impl Reader {
    /// Checks every key against the class's fields and `TrainingArguments`.
    pub(crate) fn new(
        class: &'static str,
        map: Map<String, Value>,
        own: &[&str],
    ) -> Result<Reader> {
        if let Some(unknown) = map
            .keys()
            .find(|k| !own.contains(&k.as_str()) && !TRAINING_ARGUMENTS.contains(&k.as_str()))
        {
            return Err(Error::UnknownField {
                config: class,
                field: unknown.clone(),
            });
        }
        Ok(Reader {
            map,
            shared: BTreeMap::new(),
            unsupported: Vec::new(),
        })
    }

    /// Removes a field; JSON `null` is returned as `Some(Value::Null)`.
    fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name)
    }

    /// Marks a field as read by the loss **and** the training loop: it stays in the trainer
    /// fields too.
    pub(crate) fn share(&mut self, name: &str) {
        if let Some(v) = self.map.get(name) {
            self.shared.insert(name.to_string(), v.clone());
        }
    }

    /// A field's value without taking it (it stays a trainer field).
    pub(crate) fn peek(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }

    /// A float field (not nullable).
    pub(crate) fn f64(&mut self, name: &'static str, default: f64) -> Result<f64> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => number(name, &v),
        }
    }

    /// A nullable float field.
    pub(crate) fn opt_f64(
        &mut self,
        name: &'static str,
        default: Option<f64>,
    ) -> Result<Option<f64>> {
        match self.take(name) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => number(name, &v).map(Some),
        }
    }

    /// A boolean field.
    pub(crate) fn bool(&mut self, name: &'static str, default: bool) -> Result<bool> {
        match self.take(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(b),
            Some(v) => Err(invalid(name, "true or false", &v)),
        }
    }

    /// A nullable non-negative integer field.
    pub(crate) fn opt_usize(
        &mut self,
        name: &'static str,
        default: Option<usize>,
    ) -> Result<Option<usize>> {
        match self.take(name) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => {
                let n = number(name, &v)?;
                if n >= 0.0 && n.fract() == 0.0 && n <= usize::MAX as f64 {
                    Ok(Some(n as usize))
                } else {
                    Err(Error::config(name, "expected a non-negative integer", &v))
                }
            }
        }
    }

    /// A nullable list of floats (a single number is not a list).
    pub(crate) fn opt_f64_list(
        &mut self,
        name: &'static str,
        default: Option<Vec<f64>>,
    ) -> Result<Option<Vec<f64>>> {
        match self.take(name) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| number(name, item))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(invalid(name, "a list of numbers", &v)),
        }
    }

    /// A string-valued choice, deserialized with serde (`choices` names them for the error).
    pub(crate) fn choice<T: DeserializeOwned>(
        &mut self,
        name: &'static str,
        default: T,
        choices: &str,
    ) -> Result<T> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => parse_choice(name, &v, choices),
        }
    }

    /// A raw value (for fields with several accepted forms).
    pub(crate) fn raw(&mut self, name: &str) -> Option<Value> {
        self.take(name)
    }

    /// Reports a field that changes the loss or the sampled data but that this crate does not
    /// implement, when the file sets it to something other than TRL's `default` (the field
    /// stays a trainer field too). Numbers compare by value (`1` equals `1.0`).
    pub(crate) fn unsupported(&mut self, name: &str, default: Value, effect: &'static str) {
        let Some(value) = self.map.get(name) else {
            return;
        };
        let same = match (value, &default) {
            (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (a, b) => a == b,
        };
        if !same {
            let value = value.clone();
            self.push_unsupported(name, value, default, effect);
        }
    }

    /// Reports `name` as unsupported with `value` (see [`unsupported`](Self::unsupported)).
    pub(crate) fn push_unsupported(
        &mut self,
        name: &str,
        value: Value,
        trl_default: Value,
        effect: &'static str,
    ) {
        self.unsupported.push(UnsupportedField {
            field: name.to_string(),
            value,
            trl_default,
            effect,
        });
    }

    /// The loaded config: `config`, the fields left for the training loop (plus the shared
    /// ones) and the unsupported fields reported.
    pub(crate) fn finish<C>(self, config: C) -> TrlConfig<C> {
        let mut out: BTreeMap<String, Value> = self.map.into_iter().collect();
        out.extend(self.shared);
        TrlConfig {
            config,
            trainer_fields: TrainerFields(out),
            unsupported: self.unsupported,
        }
    }
}

/// One string choice parsed with serde, or an error listing the accepted values.
pub(crate) fn parse_choice<T: DeserializeOwned>(
    name: &'static str,
    value: &Value,
    choices: &str,
) -> Result<T> {
    match value {
        Value::String(_) => serde_json::from_value(value.clone())
            .map_err(|_| Error::config(name, format!("must be one of {choices}"), value)),
        _ => Err(invalid(name, &format!("one of {choices}"), value)),
    }
}
