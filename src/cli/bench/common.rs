//! What the benchmarks share: the config they build a model from, and the process's memory
//! and allocator.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::RunSpec;

/// The config a benchmark builds its model from, with its overrides.
#[derive(Debug, Args)]
pub(crate) struct BenchConfig {
    /// A run config, e.g. configs/small.toml.
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    backend: crate::cli::BackendArg,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
}

impl BenchConfig {
    /// The config with `--set` and `--backend` applied; only GPT configs are benchmarked.
    pub(crate) fn load(&self, command: &str) -> Result<RunSpec> {
        let spec = crate::config::load(&self.config, &self.backend.add_to(&self.overrides))?;
        crate::run::load::gpt_spec(&spec, command)?;
        Ok(spec)
    }
}

/// The malloc that serves the process, which decides how fast big tensors are reused.
pub(crate) fn allocator() -> String {
    #[cfg(feature = "tcmalloc")]
    {
        use std::ffi::{c_char, c_int, CStr};
        extern "C" {
            fn tc_version(
                major: *mut c_int,
                minor: *mut c_int,
                patch: *mut *const c_char,
            ) -> *const c_char;
        }
        // SAFETY: gperftools' tc_version accepts null out-pointers and returns a static C string.
        let version = unsafe {
            CStr::from_ptr(tc_version(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ))
        };
        format!("{} (the `tcmalloc` feature)", version.to_string_lossy())
    }
    #[cfg(not(feature = "tcmalloc"))]
    "mimalloc, for Rust's allocations (--features tcmalloc puts tcmalloc under the whole \
     process, libtorch's included)"
        .to_string()
}

/// `123 MB`, or why there is no figure.
pub(crate) fn describe_rss(peak_rss_mb: Option<f64>) -> String {
    peak_rss_mb.map_or_else(|| "unknown on this OS".to_string(), |mb| format!("{mb:.0} MB"))
}

/// The process's peak resident memory (Linux; `None` elsewhere).
pub(crate) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Restarts the peak-memory count from the current resident size (Linux), so that
/// [`peak_rss_mb`] measures one phase.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
