//! `kiln inspect`: what is inside a run or a checkpoint file.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use serde::Serialize;

use crate::backend::{BackendChoice, BackendJob};
use crate::checkpoint::CheckpointState;
use crate::config::{ModelSection, RunSpec};
use crate::run_dir::RunDir;
use crate::train::{load_model, read_metrics, MetricsLine, Summary};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A run directory (artifacts/small) or a checkpoint file in one.
    path: PathBuf,
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
        let (min, max) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        Self { mean, std: var.sqrt(), min, max }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    file_bytes: u64,
    step: Option<usize>,
    epoch: Option<usize>,
    params: Vec<ParamInfo>,
    total_params: usize,
    non_embedding_params: usize,
    size_mb: f64,
    model: ModelSection,
    last_train: Option<MetricsLine>,
    last_val: Option<MetricsLine>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let (run_path, file) = if args.path.is_dir() {
        (args.path.clone(), None)
    } else if args.path.is_file() {
        (super::run_of_checkpoint(&args.path)?, Some(args.path.clone()))
    } else {
        anyhow::bail!("{}: no such run directory or checkpoint file", args.path.display());
    };
    let (run, spec) = super::open_run(&run_path)?;
    // Reading a record needs no GPU: any CPU backend compiled in will do.
    let backend = crate::config::BackendSection { name: crate::backend::CPU.into(), ..Default::default() };
    let report = crate::backend::dispatch(&backend, Job { run, spec, file, weights: args.weights })??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

struct Job {
    run: RunDir,
    spec: RunSpec,
    file: Option<PathBuf>,
    weights: bool,
}

impl BackendJob for Job {
    type Output = Result<Report>;
    fn run<B: AutodiffBackend>(self, device: B::Device, _: BackendChoice) -> Result<Report> {
        let (model, path) = load_model::<B::InnerBackend>(&self.run, &self.spec, self.file.as_deref(), &device)?;
        let values = self.weights.then(|| crate::model::param_values(&model));
        let params: Vec<ParamInfo> = crate::model::named_params(&model)
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
        let counts = model.param_counts();
        let (step, epoch) = position(&self.run, &path);
        let metrics = read_metrics(&self.run.metrics());
        let upto = |split: &str| {
            metrics.iter().rev().find(|l| l.split == split && step.is_none_or(|s| l.step <= s)).cloned()
        };
        let bytes: usize = params.iter().map(|p| p.count * dtype_bytes(&p.dtype)).sum();
        Ok(Report {
            file: path.display().to_string(),
            file_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            step,
            epoch,
            total_params: counts.total,
            non_embedding_params: counts.total - counts.embedding,
            size_mb: bytes as f64 / 1e6,
            model: self.spec.model.clone(),
            last_train: upto("train"),
            last_val: upto("val"),
            params,
        })
    }
}

/// Step and epoch a model file was taken at: from its checkpoint state, or the run summary
/// for the final model.
fn position(run: &RunDir, file: &Path) -> (Option<usize>, Option<usize>) {
    let epoch = file
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("model-"))
        .and_then(|n| n.parse::<usize>().ok());
    if let Some(state) = epoch.and_then(|e| CheckpointState::read(&run.checkpoint_state(e)).ok()) {
        return (Some(state.step), Some(state.epoch));
    }
    let summary: Option<Summary> = super::read_json(&run.summary()).ok();
    (summary.map(|s| s.steps), epoch)
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
    println!("total parameters:    {} ({} without token/position embeddings)", r.total_params, r.non_embedding_params);
    println!("size:                {:.2} MB in memory, {} bytes on disk", r.size_mb, r.file_bytes);
    let m = &r.model;
    println!(
        "model:               gpt, vocab {}, d_model {}, {} heads, {} layers, d_ff {}, block {}, dropout {}, bias {}, tied {}, {:?}",
        m.vocab_size.unwrap_or(0),
        m.d_model,
        m.n_heads,
        m.n_layers,
        m.d_ff(),
        m.block_size,
        m.dropout,
        m.bias,
        m.tie_embeddings,
        m.activation
    );
    match (r.step, r.epoch) {
        (Some(s), Some(e)) => println!("taken at:            step {s} (epoch {e})"),
        (Some(s), None) => println!("taken at:            step {s} (end of training)"),
        _ => println!("taken at:            unknown"),
    }
    if let Some(l) = &r.last_train {
        println!("last train metrics:  step {} loss {:.4} lr {:.2e}", l.step, l.loss, l.lr.unwrap_or(0.0));
    }
    if let Some(l) = &r.last_val {
        println!("last val metrics:    step {} loss {:.4} perplexity {:.3}", l.step, l.loss, l.perplexity.unwrap_or(f64::NAN));
    }
}
