//! Typed, error-naming access to the JSON files of a Hugging Face folder.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelError, Result};

/// A parsed JSON object and the file it came from, so every error can name both.
#[derive(Debug, Clone)]
pub struct JsonFile {
    path: PathBuf,
    value: Value,
}

impl JsonFile {
    /// Reads and parses `path`; `what` names the file in a not-found error.
    pub fn read(path: &Path, what: &str) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::NotFound {
                what: what.to_string(),
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the content of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::InvalidJson {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(ModelError::InvalidJson {
                path: path.to_path_buf(),
                message: "the top level is not an object".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            value,
        })
    }

    /// Wraps a value built in memory (e.g. translated from GGUF metadata); `path` names its
    /// origin in errors.
    pub fn from_value(path: &Path, value: Value) -> Result<Self> {
        Self::parse(path, &value.to_string())
    }

    /// A view of a nested object (e.g. `rope_scaling`), errors still naming the full field.
    pub fn object(&self, field: &str) -> Result<Option<JsonFile>> {
        match self.get(field) {
            None => Ok(None),
            Some(value @ Value::Object(_)) => Ok(Some(JsonFile {
                path: self.path.clone(),
                value: value.clone(),
            })),
            Some(_) => Err(self.invalid(field, "must be an object")),
        }
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `field` is present at all (even as `null`).
    pub fn has(&self, field: &str) -> bool {
        self.value.get(field).is_some()
    }

    /// The raw value of `field`, `None` when absent or null.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.value.get(field).filter(|v| !v.is_null())
    }

    /// An error about `field` of this file.
    pub fn invalid(&self, field: &str, problem: impl Into<String>) -> ModelError {
        ModelError::InvalidField {
            path: self.path.clone(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    /// A required non-negative integer.
    pub fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| self.invalid(field, "is required but missing"))
    }

    /// An optional non-negative integer.
    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.invalid(field, format!("must be a non-negative integer, found {v}"))
            }),
        }
    }

    /// An optional number.
    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("must be a number, found {v}"))),
        }
    }

    /// A required number.
    pub fn f64(&self, field: &str) -> Result<f64> {
        self.opt_f64(field)?
            .ok_or_else(|| self.invalid(field, "is required but missing"))
    }

    /// An optional boolean.
    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("must be true or false, found {v}"))),
        }
    }

    /// An optional string.
    pub fn opt_str(&self, field: &str) -> Result<Option<&str>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("must be a string, found {v}"))),
        }
    }

    /// An optional list of numbers.
    pub fn opt_f64_list(&self, field: &str) -> Result<Option<Vec<f64>>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| self.invalid(field, format!("must hold numbers, found {v}")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.invalid(field, format!("must be a list of numbers, found {v}"))),
        }
    }

    /// Token ids given as one integer or a list of integers (`eos_token_id`).
    pub fn token_ids(&self, field: &str) -> Result<Vec<u32>> {
        let as_id = |v: &Value| {
            v.as_u64()
                .filter(|&n| n <= u32::MAX as u64)
                .map(|n| n as u32)
                .ok_or_else(|| self.invalid(field, format!("must hold token ids, found {v}")))
        };
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(as_id).collect(),
            Some(v) => Ok(vec![as_id(v)?]),
        }
    }
}
