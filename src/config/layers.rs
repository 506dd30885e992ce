//! The three layers of a config — file, environment, overrides — merged into one TOML table
//! and read into typed sections, each error naming its key and where the value came from.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::{validate, ConfigError, ConfigSource, ModelKind, ModelSpec, RunSpec};

const SECTIONS: [&str; 6] = ["run", "data", "model", "training", "backend", "distributed"];

/// Reads `file`, layers the environment and the overrides on top, and validates.
pub fn load(file: &Path, overrides: &[String]) -> Result<RunSpec, ConfigError> {
    load_with_env(file, overrides, std::env::vars())
}

/// As [`load`], for a config file or a preset.
pub fn load_source(source: &ConfigSource, overrides: &[String]) -> Result<RunSpec, ConfigError> {
    load_layers(source, overrides, std::env::vars())
}

/// As [`load`], with the environment given explicitly (tests use this).
pub fn load_with_env(
    file: &Path,
    overrides: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<RunSpec, ConfigError> {
    load_layers(&ConfigSource::File(file.to_path_buf()), overrides, env)
}

fn load_layers(
    source: &ConfigSource,
    overrides: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<RunSpec, ConfigError> {
    let table = match source {
        ConfigSource::File(file) => read_table(file)?,
        ConfigSource::Preset(preset) => preset.table(),
    };
    let mut layers = Layers { table, origins: BTreeMap::new(), file: source.to_string() };
    // Only `KILN_<SECTION>__<KEY>` names a setting: other `KILN_` variables (the set-up
    // script's `KILN_VENV`, a test harness's seed) belong to other tools.
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.strip_prefix("KILN_").is_some_and(|k| k.contains("__")))
        .collect();
    env.sort();
    for (name, raw) in env {
        let key = name["KILN_".len()..].to_lowercase().replacen("__", ".", 1);
        layers.set(&key, &raw, format!("environment variable {name}"));
    }
    for given in overrides {
        let (key, raw) = split_override(given)?;
        layers.set(key, raw, format!("override {given:?}"));
    }
    let mut spec = layers.resolve()?;
    if spec.run.name.is_empty() {
        spec.run.name = source.stem();
    }
    validate(&spec)?;
    Ok(spec)
}

/// A resolved `config.toml` read back as it was written.
pub(super) fn read_resolved(path: &Path) -> Result<RunSpec, ConfigError> {
    let mut table = read_table(path)?;
    forget_legacy_keys(&mut table);
    let origin = path.display().to_string();
    spec_from_table(table.clone()).map_err(|(key, reason)| {
        let value = value_at(&table, &key);
        ConfigError::Field { origin, key, value, reason }
    })
}

pub(super) fn from_text(text: &str, origin: &str) -> Result<RunSpec, ConfigError> {
    let table = text
        .parse::<Table>()
        .map_err(|e| ConfigError::Load { file: origin.into(), reason: e.to_string() })?;
    spec_from_table(table.clone()).map_err(|(key, reason)| {
        let value = value_at(&table, &key);
        ConfigError::Field { origin: origin.to_string(), key, value, reason }
    })
}

/// Runs made before the model kinds had sections of their own wrote `rope_theta` into a
/// seq2seq `[model]`, which has no such key; runs made before MPI wrote the keys of kiln's
/// own link between machines (see [`RETIRED`]).
fn forget_legacy_keys(table: &mut Table) {
    if let Some(Value::Table(model)) = table.get_mut("model") {
        if model.get("kind").and_then(Value::as_str) == Some("seq2seq") {
            model.remove("rope_theta");
        }
    }
    if let Some(Value::Table(distributed)) = table.get_mut("distributed") {
        for (key, _) in RETIRED {
            distributed.remove(key.trim_start_matches("distributed."));
        }
    }
}

/// Keys kiln no longer reads, and what replaced them.
const RETIRED: [(&str, &str); 3] = [
    ("distributed.nodes", "the launcher's process count: mpirun -np N kiln train …"),
    ("distributed.node_rank", "each process's MPI rank, which the launcher sets"),
    ("distributed.coordinator", "MPI's own connections, which the launcher sets up"),
];

/// A retired key in a config the user wrote, named with what replaced it.
fn refuse_retired(table: &Table) -> Result<(), FieldError> {
    let Some(Value::Table(distributed)) = table.get("distributed") else { return Ok(()) };
    match RETIRED.iter().find(|(key, _)| distributed.contains_key(&key[12..])) {
        Some((key, instead)) => Err((
            key.to_string(),
            format!(
                "a key of kiln's former link between machines; the processes of a run now come \
                 from the MPI launcher ({instead}; see docs/scaling.md)"
            ),
        )),
        None => Ok(()),
    }
}

fn read_table(file: &Path) -> Result<Table, ConfigError> {
    let load_err = |reason: String| ConfigError::Load { file: file.to_path_buf(), reason };
    let text = std::fs::read_to_string(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => load_err("file not found".into()),
        _ => load_err(e.to_string()),
    })?;
    text.parse::<Table>().map_err(|e| load_err(e.to_string()))
}

/// `section.key=value` → (`section.key`, `value`).
fn split_override(given: &str) -> Result<(&str, &str), ConfigError> {
    let bad = || ConfigError::BadOverride { given: given.to_string() };
    let (key, raw) = given.split_once('=').ok_or_else(bad)?;
    let key = key.trim();
    match key.split_once('.') {
        Some((section, name)) if !section.is_empty() && !name.is_empty() && !name.contains('.') => {
            Ok((key, raw.trim()))
        }
        _ => Err(bad()),
    }
}

struct Layers {
    table: Table,
    /// Keys set by the environment or an override: where each came from, and whether its
    /// value was written bare (`run.name=123`), so that it may be read as a string instead.
    origins: BTreeMap<String, (String, bool)>,
    file: String,
}

impl Layers {
    /// Sets `section.key` to `raw` read as a TOML value (`3e-4`, `true`, `[0, 1]`,
    /// `"quoted"`), or as a string when it is not one (`data/my.txt`).
    fn set(&mut self, key: &str, raw: &str, origin: String) {
        let (section, name) = key.split_once('.').unwrap_or((key, ""));
        let value = toml_value(raw);
        let bare = !matches!(value, Value::String(_)) && !raw.starts_with(['[', '{']);
        let entry = self.table.entry(section).or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(section) = entry {
            section.insert(name.to_string(), value);
        }
        self.origins.insert(key.to_string(), (origin, bare));
    }

    /// The typed spec. A bare value refused by its key's type is tried once more as a
    /// string, so that `run.name=123` names a run "123" while `training.batch_size=1.5` is
    /// still refused.
    fn resolve(mut self) -> Result<RunSpec, ConfigError> {
        // A bare value retried as a string and refused again is reported as it was given.
        let mut as_given: Option<(String, String, String)> = None;
        loop {
            let (key, reason) = match spec_from_table(self.table.clone()) {
                Ok(spec) => return Ok(spec),
                Err(error) => error,
            };
            let retry = self.origins.get_mut(&key).is_some_and(|(_, bare)| std::mem::take(bare));
            if retry {
                as_given = Some((key.clone(), reason, value_at(&self.table, &key)));
                self.as_string(&key);
                continue;
            }
            let origin = self.origin_of(&key);
            let (reason, value) = match as_given {
                Some((given, reason, value)) if given == key => (reason, value),
                _ => (reason, value_at(&self.table, &key)),
            };
            return Err(ConfigError::Field { origin, key, value, reason });
        }
    }
}

impl Layers {
    /// The value at `section.key` as a string: `123` → `"123"`.
    fn as_string(&mut self, key: &str) {
        let (section, name) = key.split_once('.').unwrap_or((key, ""));
        if let Some(Value::Table(section)) = self.table.get_mut(section) {
            if let Some(value) = section.get_mut(name) {
                *value = Value::String(value.to_string());
            }
        }
    }

    /// Where the value at `key` (or inside it: `distributed.devices[1]`) came from.
    fn origin_of(&self, key: &str) -> String {
        self.origins
            .iter()
            .find(|(set, _)| {
                key.strip_prefix(set.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
            .map_or_else(|| self.file.clone(), |(_, (origin, _))| origin.clone())
    }
}

/// ` = <value>` of the setting at `key` (`section.name`), as TOML writes it; empty for a
/// section or a key that is not there.
fn value_at(table: &Table, key: &str) -> String {
    let Some((section, name)) = key.split_once('.') else {
        return String::new();
    };
    let name = name.split(['.', '[']).next().unwrap_or(name);
    match table.get(section).and_then(|s| s.get(name)) {
        Some(value) => format!(" = {value}"),
        None => String::new(),
    }
}

fn toml_value(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut table) => table.remove("v").unwrap_or(Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

/// A key and what is wrong with its value.
type FieldError = (String, String);

fn spec_from_table(mut table: Table) -> Result<RunSpec, FieldError> {
    refuse_retired(&table)?;
    if let Some(unknown) = table.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
        return Err((
            unknown.clone(),
            format!("unknown section; expected one of {}", SECTIONS.join(", ")),
        ));
    }
    Ok(RunSpec {
        run: section(&mut table, "run", false)?,
        data: section(&mut table, "data", true)?,
        model: model_section(&mut table)?,
        training: section(&mut table, "training", true)?,
        backend: section(&mut table, "backend", false)?,
        distributed: section(&mut table, "distributed", false)?,
    })
}

/// The `[model]` section as the struct of its `kind`.
fn model_section(table: &mut Table) -> Result<ModelSpec, FieldError> {
    let mut model = match table.remove("model") {
        Some(Value::Table(model)) => model,
        Some(other) => return Err(("model".into(), not_a_section(&other))),
        None => return Err(("model".into(), "missing section [model]".into())),
    };
    let kind = match model.remove("kind") {
        Some(kind) => typed::<ModelKind>(kind, "model.kind")?,
        None => ModelKind::Gpt,
    };
    let rest = Value::Table(model);
    Ok(match kind {
        ModelKind::Gpt => ModelSpec::Gpt(typed(rest, "model")?),
        ModelKind::Seq2Seq => ModelSpec::Seq2Seq(typed(rest, "model")?),
    })
}

/// Section `name` as a `T`; an absent optional section takes every default.
fn section<T: DeserializeOwned>(
    table: &mut Table,
    name: &str,
    required: bool,
) -> Result<T, FieldError> {
    match table.remove(name) {
        Some(value @ Value::Table(_)) => typed(value, name),
        Some(other) => Err((name.into(), not_a_section(&other))),
        None if required => Err((name.into(), format!("missing section [{name}]"))),
        None => typed(Value::Table(Table::new()), name),
    }
}

fn not_a_section(value: &Value) -> String {
    format!("expected a section ([…]), found {}", value.type_str())
}

/// `value` as a `T`, an error naming the key inside `at` where it failed.
fn typed<T: DeserializeOwned>(value: Value, at: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let key = match path.as_str() {
            "." | "?" | "" => at.to_string(),
            inner => format!("{at}.{inner}"),
        };
        let reason = error.into_inner().to_string();
        // toml adds a line naming the key, which the key already says.
        let reason = reason.lines().next().unwrap_or_default().to_string();
        (key, reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_values_are_read_as_toml() {
        assert_eq!(toml_value("3e-4").as_float(), Some(3e-4));
        assert_eq!(toml_value("false").as_bool(), Some(false));
        assert_eq!(toml_value("data/my.txt").as_str(), Some("data/my.txt"));
        assert_eq!(toml_value("\"12\"").as_str(), Some("12"));
        let items: Vec<i64> =
            toml_value("[0, 1]").as_array().unwrap().iter().filter_map(Value::as_integer).collect();
        assert_eq!(items, [0, 1]);
        assert!(split_override("learning_rate=1").is_err());
        assert!(split_override("training.learning_rate").is_err());
        assert!(split_override("a.b.c=1").is_err());
    }
}
