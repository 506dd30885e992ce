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
    /// Tokens trained on up to this step, over all replicas.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens: Option<u64>,
    /// The global L2 norm of the step's gradient, before clipping.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    /// When the line was written, in seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub time: Option<f64>,
    #[serde(flatten)]
    pub rewards: RewardFigures,
}

/// A DPO run's figures of a step or a validation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardFigures {
    /// The mean of β·((π_c − ref_c) − (π_r − ref_r)) over the pairs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reward_margin: Option<f64>,
    /// The fraction of pairs whose chosen response earns the higher reward.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reward_accuracy: Option<f64>,
}

/// Now, in seconds since the Unix epoch.
pub fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `seconds` since the Unix epoch as an RFC 3339 UTC time: `2026-12-07T03:04:05Z`.
pub fn rfc3339(seconds: f64) -> String {
    let seconds = seconds.max(0.0) as i64;
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm, for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// The lowest validation loss in `lines` and its step.
pub fn best_validation(lines: &[MetricsLine]) -> Option<(f64, usize)> {
    lines
        .iter()
        .filter(|l| l.split == "val" && l.loss.is_finite())
        .min_by(|a, b| a.loss.total_cmp(&b.loss))
        .map(|l| (l.loss, l.step))
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

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn unix_times_print_as_utc_dates() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_612_645.9), "2026-12-07T03:04:05Z");
    }
}
