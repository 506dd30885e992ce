//! The configs of `configs/`, built into the binary, so that an installed kiln has them in
//! any folder: `kiln train --preset small`, `kiln presets`, `kiln init --preset small`.

use std::fmt;
use std::path::PathBuf;

use toml::Table;

use super::ConfigError;

/// A config shipped with kiln.
#[derive(Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    /// The file as `configs/<name>.toml` holds it, comments included.
    pub text: &'static str,
}

macro_rules! presets {
    ($($name:literal),* $(,)?) => {
        &[$(Preset { name: $name, text: include_str!(concat!("../../configs/", $name, ".toml")) }),*]
    };
}

/// Every preset, the quick ones first. A test keeps this list equal to `configs/`.
pub const PRESETS: &[Preset] = presets![
    "tiny", "small", "hw4-char", "verdict-word", "verdict-gpt2", "sales-textbook",
    "tinystories-bpe", "tinystories-cpu", "tinystories", "gpt2-small-cpu", "gpt2-124m",
    "multi30k-cpu", "multi30k", "sft-cpu", "sft-gpt2", "dpo-cpu",
];

/// The preset `kiln train --data FILE` uses when none is named.
pub const DEFAULT_FOR_DATA: &str = "small";

impl Preset {
    /// The preset called `name`, or an error listing them all.
    pub fn find(name: &str) -> Result<&'static Preset, ConfigError> {
        PRESETS.iter().find(|p| p.name == name).ok_or_else(|| ConfigError::Invalid {
            key: "preset",
            value: name.to_string(),
            expected: format!(
                "one of: {} (`kiln presets` describes them)",
                PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// The file's first comment line: what the preset is for.
    pub fn summary(&self) -> &'static str {
        self.text.lines().next().and_then(|l| l.strip_prefix('#')).map_or("", str::trim)
    }

    pub(super) fn table(&self) -> Table {
        self.text.parse().expect("every preset is valid TOML (tests/product.rs)")
    }
}

/// Where a config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Preset(&'static Preset),
}

impl ConfigSource {
    /// The run name a config without `run.name` gets.
    pub(super) fn stem(&self) -> String {
        match self {
            Self::File(file) => {
                file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            }
            Self::Preset(preset) => preset.name.to_string(),
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(file) => write!(f, "{}", file.display()),
            Self::Preset(preset) => write!(f, "preset {}", preset.name),
        }
    }
}
