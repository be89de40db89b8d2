//! Reading TOML experiment files: every unknown key and every bad value is refused before any
//! work starts, with the file and the key named.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the key.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: &Path, message: impl Into<String>) -> Self {
        Self { path: path.to_path_buf(), message: message.into() }
    }
}

/// Parses a TOML file into a table.
pub(crate) fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::new(path, format!("not valid TOML: {e}")))
}

/// Deserializes section `name` of `table` into `T`, starting from `default` for missing keys and
/// refusing keys that `T` does not have. `optional` names the `Option` fields that the default
/// leaves out of its serialized form (they are `None` there) but that the file may set.
pub(crate) fn section<T: Serialize + DeserializeOwned>(
    table: &toml::Table,
    name: &str,
    default: &T,
    optional: &[&str],
    path: &Path,
) -> Result<T, ConfigError> {
    let mut merged = match toml::Table::try_from(default) {
        Ok(t) => t,
        Err(e) => return Err(ConfigError::new(path, format!("[{name}]: internal: {e}"))),
    };
    if let Some(given) = table.get(name) {
        let given =
            given.as_table().ok_or_else(|| ConfigError::new(path, format!("`{name}` must be a table ([{name}])")))?;
        for (key, value) in given {
            if !merged.contains_key(key) && !optional.contains(&key.as_str()) {
                let mut known: Vec<&str> = merged.keys().map(String::as_str).chain(optional.iter().copied()).collect();
                known.sort_unstable();
                return Err(ConfigError::new(
                    path,
                    format!("unknown key `{name}.{key}`; known keys: {}", known.join(", ")),
                ));
            }
            merged.insert(key.clone(), value.clone());
        }
    }
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::new(path, format!("[{name}]: {}", e.message())))
}

/// Refuses top-level sections other than `known`.
pub(crate) fn only_sections(table: &toml::Table, known: &[&str], path: &Path) -> Result<(), ConfigError> {
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            return Err(ConfigError::new(path, format!("unknown section `{key}`; expected {}", known.join(", "))));
        }
    }
    Ok(())
}
