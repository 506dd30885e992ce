//! `kiln inspect`: what is inside a run or a checkpoint file.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::backend::ForwardJob;
use crate::config::{BackendName, BackendSection, ModelKind, ModelSpec, RunSpec};
use crate::kernels::KernelBackend;
use crate::model::{ParamCounts, Seq2SeqConfig};
use crate::run::load::seq2seq_spec;
use crate::run::{read_metrics, CheckpointState, MetricsLine, RunDir, Summary};

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(163_009_536), "163,009,536");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(0), "0");
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A run directory (artifacts/small), a checkpoint file in one, or a config file
    /// (configs/gpt2-124m.toml) to see the model it describes before training it.
    path: PathBuf,
    /// With a config file: `section.key=value` overrides, as for `kiln train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Statistics of every parameter's values (mean, std, min, max), to spot dead or
    /// exploding layers.
    #[arg(long)]
    weights: bool,
}

#[derive(Debug, Serialize)]
struct ParamInfo {
    name: String,
    shape: Vec<usize>,
    count: usize,
    dtype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<WeightStats>,
}

/// Summary of one parameter's values.
#[derive(Debug, Serialize)]
struct WeightStats {
    mean: f64,
    std: f64,
    min: f32,
    max: f32,
}

impl WeightStats {
    fn of(values: &[f32]) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let (min, max) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        Self { mean, std: var.sqrt(), min, max }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    /// Size of the model file; `None` for a config.
    file_bytes: Option<u64>,
    step: Option<usize>,
    epoch: Option<usize>,
    params: Vec<ParamInfo>,
    total_params: usize,
    /// The total with the output head sharing the token embedding, and with its own matrix.
    total_tied: usize,
    total_untied: usize,
    non_embedding_params: usize,
    size_mb: f64,
    model: ModelSpec,
    last_train: Option<MetricsLine>,
    last_val: Option<MetricsLine>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    if args.path.extension().is_some_and(|e| e == "toml") {
        return inspect_config(&args);
    }
    if !args.overrides.is_empty() {
        anyhow::bail!(
            "--set applies to a config file; {} is a run or checkpoint",
            args.path.display()
        );
    }
    let (run_path, file) = if args.path.is_dir() {
        (args.path.clone(), None)
    } else if args.path.is_file() {
        (crate::run::run_of_checkpoint(&args.path)?, Some(args.path.clone()))
    } else {
        anyhow::bail!("{}: no such run directory or checkpoint file", args.path.display());
    };
    let (run, spec) = crate::run::open_run(&run_path)?;
    let source = super::RunWeights { run, spec, checkpoint: file };
    let report = crate::backend::dispatch(&cpu(), Job { source, weights: args.weights })??;
    show(&report, args.json)
}

/// Reading a record or building a model to count needs no GPU: any CPU backend will do.
fn cpu() -> BackendSection {
    BackendSection { name: BackendName::cpu_for_build(), ..Default::default() }
}

fn show(report: &Report, json: bool) -> Result<()> {
    match json {
        true => println!("{}", serde_json::to_string_pretty(report)?),
        false => print_table(report),
    }
    Ok(())
}

/// The model a config describes, freshly initialised: its parameters and their counts.
fn inspect_config(args: &InspectArgs) -> Result<()> {
    // The model is built on the CPU whatever the config trains on, so a config for a backend
    // this binary lacks can still be looked at.
    let overrides =
        [vec![format!("backend.name={}", BackendName::cpu_for_build())], args.overrides.clone()]
            .concat();
    let mut spec = crate::config::load(&args.path, &overrides)?;
    let pad = match spec.model.kind() {
        ModelKind::Gpt => crate::train::fit_tokenizer(&mut spec).map(|_| None)?,
        ModelKind::Seq2Seq => Some(crate::train::fit_seq2seq_tokenizer(&mut spec)?.pad),
    };
    let estimate = crate::memory::generation(&spec.model, spec.vocab_size(), 0);
    crate::memory::check_generation(estimate, "building the model")?;
    let job = ConfigJob { spec, pad, file: args.path.clone(), weights: args.weights };
    let report = crate::backend::dispatch(&cpu(), job)??;
    show(&report, args.json)
}

struct ConfigJob {
    spec: RunSpec,
    /// A seq2seq vocabulary's `<pad>`.
    pad: Option<u32>,
    file: PathBuf,
    weights: bool,
}

impl ForwardJob for ConfigJob {
    type Output = Result<Report>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<Report> {
        let (spec, weights) = (&self.spec, self.weights);
        let table = match self.pad {
            None => {
                let model = crate::train::gpt_config(spec)?.init::<B>(&device);
                report(&model, model.param_counts(), spec, weights)
            }
            Some(pad) => {
                let config = Seq2SeqConfig::from_spec(seq2seq_spec(spec)?, spec.vocab_size(), pad);
                let model = config.init::<B>(&device);
                report(&model, model.param_counts(), spec, weights)
            }
        };
        Ok(Report { file: self.file.display().to_string(), file_bytes: None, ..table })
    }
}

/// The parameter table of `model`, with nothing yet about where it came from.
fn report<B: burn::prelude::Backend, M: burn::module::Module<B>>(
    model: &M,
    counts: ParamCounts,
    spec: &RunSpec,
    weights: bool,
) -> Report {
    let values = weights.then(|| crate::model::param_values(model));
    let params: Vec<ParamInfo> = crate::model::named_params(model)
        .into_iter()
        .enumerate()
        .map(|(i, p)| ParamInfo {
            count: p.shape.iter().product(),
            stats: values.as_ref().map(|v| WeightStats::of(&v[i].values)),
            name: p.name,
            shape: p.shape,
            dtype: p.dtype,
        })
        .collect();
    let bytes: usize = params.iter().map(|p| p.count * dtype_bytes(&p.dtype)).sum();
    // The output head is d_model × vocab whether it is its own matrix or the embedding's.
    let head = spec.model.d_model() * spec.vocab_size();
    let (total_tied, total_untied) = match spec.model.tie_embeddings() {
        true => (counts.total, counts.total + head),
        false => (counts.total - head, counts.total),
    };
    Report {
        file: String::new(),
        file_bytes: None,
        step: None,
        epoch: None,
        total_params: counts.total,
        total_tied,
        total_untied,
        non_embedding_params: counts.total - counts.embedding,
        size_mb: bytes as f64 / 1e6,
        model: spec.model.clone(),
        last_train: None,
        last_val: None,
        params,
    }
}

struct Job {
    source: super::RunWeights,
    /// Show each parameter's statistics.
    weights: bool,
}

impl ForwardJob for Job {
    type Output = Result<Report>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<Report> {
        let (source, spec) = (&self.source, &self.source.spec);
        let (table, path) = match spec.model.kind() {
            ModelKind::Gpt => {
                let (model, path) = source.gpt::<B>(&device)?;
                (report(&model, model.param_counts(), spec, self.weights), path)
            }
            ModelKind::Seq2Seq => {
                let (model, path, _) = source.seq2seq::<B>(&device)?;
                (report(&model, model.param_counts(), spec, self.weights), path)
            }
        };
        let (step, epoch) = position(&source.run, &path);
        let metrics = read_metrics(&source.run.metrics());
        let upto = |split: &str| {
            metrics
                .iter()
                .rev()
                .find(|l| l.split == split && step.is_none_or(|s| l.step <= s))
                .cloned()
        };
        Ok(Report {
            file: path.display().to_string(),
            file_bytes: Some(std::fs::metadata(&path).map_or(0, |m| m.len())),
            step,
            epoch,
            last_train: upto("train"),
            last_val: upto("val"),
            ..table
        })
    }
}

/// Step and epoch a model file was taken at: from its checkpoint state, or the run summary
/// for the final model.
fn position(run: &RunDir, file: &Path) -> (Option<usize>, Option<usize>) {
    let step = crate::run::checkpoint_step(file);
    if let Some(state) = step.and_then(|s| CheckpointState::read(&run.checkpoint_state(s)).ok()) {
        return (Some(state.step), Some(state.epoch));
    }
    let summary: Option<Summary> = super::read_json(&run.summary()).ok();
    (summary.map(|s| s.steps).or(step), None)
}

/// `163009536` → `163,009,536`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dtype_bytes(dtype: &str) -> usize {
    match dtype {
        "F64" | "I64" | "U64" => 8,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "Bool" => 1,
        _ => 4,
    }
}

fn print_table(r: &Report) {
    let width = r.params.iter().map(|p| p.name.len()).max().unwrap_or(4).max(9);
    println!("{}", r.file);
    let stats_header = match r.params.iter().any(|p| p.stats.is_some()) {
        true => format!("  {:>10}  {:>10}  {:>10}  {:>10}", "mean", "std", "min", "max"),
        false => String::new(),
    };
    println!("{:<width$}  {:<16}  {:>12}  dtype{stats_header}", "parameter", "shape", "count");
    for p in &r.params {
        let shape = format!("{:?}", p.shape);
        let stats = p.stats.as_ref().map_or(String::new(), |s| {
            format!("  {:>10.4}  {:>10.4}  {:>10.4}  {:>10.4}", s.mean, s.std, s.min, s.max)
        });
        println!("{:<width$}  {:<16}  {:>12}  {:<5}{stats}", p.name, shape, p.count, p.dtype);
    }
    println!();
    let other = match r.model.tie_embeddings() {
        true => format!("{} with an untied output head", thousands(r.total_untied)),
        false => {
            format!("{} with the output head tied to the token embedding", thousands(r.total_tied))
        }
    };
    println!("total parameters:    {} ({other})", thousands(r.total_params));
    println!(
        "without embeddings:  {} (token and position tables left out)",
        thousands(r.non_embedding_params)
    );
    match r.file_bytes {
        Some(bytes) => {
            println!("size:                {:.2} MB in memory, {bytes} bytes on disk", r.size_mb)
        }
        None => println!("size:                {:.2} MB in memory (f32)", r.size_mb),
    }
    println!("model:               {}", r.model.describe());
    match (r.file_bytes, r.step, r.epoch) {
        (None, _, _) => println!("taken at:            not trained (built from the config)"),
        (_, Some(s), Some(e)) => println!("taken at:            step {s} (epoch {e})"),
        (_, Some(s), None) => println!("taken at:            step {s} (end of training)"),
        _ => println!("taken at:            unknown"),
    }
    if let Some(l) = &r.last_train {
        println!(
            "last train metrics:  step {} loss {:.4} lr {:.2e}",
            l.step,
            l.loss,
            l.lr.unwrap_or(0.0)
        );
    }
    if let Some(l) = &r.last_val {
        println!(
            "last val metrics:    step {} loss {:.4} perplexity {:.3}",
            l.step,
            l.loss,
            l.perplexity.unwrap_or(f64::NAN)
        );
    }
}
