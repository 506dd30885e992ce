//! The format of `metrics.jsonl`: one JSON object per optimizer step (split `train`) and per
//! validation (split `val`), appended as training goes.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: usize,
    pub split: String,
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub perplexity: Option<f64>,
}

/// Reads `metrics.jsonl`, skipping lines it cannot parse (a line cut by a crash).
pub fn read_metrics(path: &Path) -> Vec<MetricsLine> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// Keeps only the lines up to `step` (used when resuming from a checkpoint taken there).
pub fn truncate_metrics(path: &Path, step: usize) -> std::io::Result<()> {
    // Kept lines are copied byte for byte: re-serializing could change float digits.
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<MetricsLine>(l).is_ok_and(|m| m.step <= step))
        .collect();
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::files::write_atomic(path, text.as_bytes())
}
