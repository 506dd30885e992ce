//! `kiln plot`: loss and learning-rate curves of runs, attention maps, positional encodings.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::backend::ForwardJob;
use crate::config::RunSpec;
use crate::kernels::KernelBackend;
use crate::plot::{Curves, Heatmap};
use crate::run::RunDir;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PlotArgs {
    #[command(subcommand)]
    command: Option<PlotCommand>,
    /// Without a subcommand: the loss and learning-rate curves (`kiln plot --run DIR`).
    #[command(flatten)]
    curves: CurvesArgs,
}

#[derive(Debug, Subcommand)]
enum PlotCommand {
    /// loss.png and lr.png from the runs' metrics.jsonl (the default).
    Loss(CurvesArgs),
    /// Attention weights of a trained model over the tokens of a text, as heatmaps.
    Attention(AttentionArgs),
    /// The sinusoidal positional encoding as a heatmap.
    Positions(PositionsArgs),
}

#[derive(Debug, Args)]
struct CurvesArgs {
    /// A run directory; repeat to overlay several runs.
    #[arg(long = "run", value_name = "DIR", required = true)]
    runs: Vec<PathBuf>,
    /// Loss on a log scale.
    #[arg(long)]
    log: bool,
    /// Folder for loss.png and lr.png; default: the run's own folder, or plots/<a>-vs-<b>/
    /// for several runs.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct AttentionArgs {
    /// Run directory, e.g. artifacts/small.
    #[arg(long)]
    run: PathBuf,
    /// A checkpoint file of the run instead of its final model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Text whose tokens attend to each other (at most model.block_size tokens).
    #[arg(long)]
    text: String,
    /// Layer to show (0-based); default: the last.
    #[arg(long)]
    layer: Option<usize>,
    /// One head (0-based); default: every head of the layer, side by side.
    #[arg(long)]
    head: Option<usize>,
    /// PNG to write; default: <run>/attention-layer<L>[-head<H>].png.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    backend: super::BackendArg,
}

#[derive(Debug, Args)]
struct PositionsArgs {
    /// Width of the encoding (even).
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Number of positions.
    #[arg(long, default_value_t = 64)]
    len: usize,
    /// PNG to write.
    #[arg(long, default_value = "positions.png")]
    out: PathBuf,
}

pub fn run(args: PlotArgs) -> Result<()> {
    match args.command {
        None => curves(args.curves),
        Some(PlotCommand::Loss(a)) => curves(a),
        Some(PlotCommand::Attention(a)) => attention(a),
        Some(PlotCommand::Positions(a)) => positions(a),
    }
}

fn curves(args: CurvesArgs) -> Result<()> {
    let mut runs = Vec::new();
    for dir in &args.runs {
        let (run, spec) = crate::run::open_run(dir)?;
        let metrics = crate::run::read_metrics(&run.metrics());
        if metrics.is_empty() {
            bail!(
                "{}: no metrics yet (metrics.jsonl is missing or empty)",
                run.metrics().display()
            );
        }
        runs.push(Curves { label: spec.run.name.clone(), metrics });
    }
    // One run's curves are its own loss.png and lr.png; an overlay never replaces them.
    let out = match (args.out, &runs[..]) {
        (Some(out), _) => out,
        (None, [_]) => args.runs[0].clone(),
        (None, several) => {
            let names: Vec<&str> = several.iter().map(|c| c.label.as_str()).collect();
            PathBuf::from("plots").join(names.join("-vs-"))
        }
    };
    let own_run = runs.len() == 1 && out == args.runs[0];
    if !own_run && RunDir::new(&out).manifest().is_file() {
        bail!(
            "--out {}: is the folder of the kiln run {}; its loss.png and lr.png are that run's \
             own curves; choose another folder",
            out.display(),
            out.display()
        );
    }
    for file in ["loss.png", "lr.png"] {
        crate::run::check_output("--out", &out.join(file), std::iter::empty())?;
    }
    std::fs::create_dir_all(&out)
        .map_err(|e| crate::files::io_error("creating", &out, e))
        .map_err(|e| anyhow::anyhow!("--out: {e}"))?;
    for file in crate::plot::training_curves(&runs, args.log, &out)? {
        println!("{}", file.display());
    }
    // A run's own curves were redrawn: its report shows them.
    if let [dir] = &args.runs[..] {
        let run = RunDir::new(dir);
        if out == *dir && run.report().is_file() {
            println!("{}", crate::plot::write_report(&run, &runs[0].label)?.display());
        }
    }
    Ok(())
}

fn positions(args: PositionsArgs) -> Result<()> {
    if args.d_model == 0 || !args.d_model.is_multiple_of(2) {
        bail!("--d-model {}: expected a positive even number", args.d_model);
    }
    // One heatmap cell per value: beyond a few thousand a side it is no longer a picture.
    const MAX_SIDE: usize = 4096;
    if args.d_model > MAX_SIDE {
        bail!("--d-model {}: expected at most {MAX_SIDE}", args.d_model);
    }
    if args.len == 0 || args.len > MAX_SIDE {
        bail!("--len {}: expected a number of positions from 1 to {MAX_SIDE}", args.len);
    }
    crate::run::check_output("--out", &args.out, [])?;
    let values = crate::model::sinusoidal_positions(args.len, args.d_model);
    let label_every = |n: usize, every: usize| {
        (0..n).map(|i| if i % every == 0 { i.to_string() } else { String::new() }).collect()
    };
    let map = Heatmap {
        title: format!(
            "PE[pos, 2i] = sin(pos / 10000^(2i/{0})), PE[pos, 2i+1] = cos(…)",
            args.d_model
        ),
        values,
        x_labels: label_every(args.d_model, (args.d_model / 16).max(1)),
        y_labels: label_every(args.len, (args.len / 16).max(1)),
        x_desc: "dimension".into(),
        y_desc: "position".into(),
    };
    let title = format!(
        "Sinusoidal positional encoding: {} positions × {} dimensions",
        args.len, args.d_model
    );
    crate::plot::heatmaps(&args.out, &title, &[map], 1)?;
    println!("{}", args.out.display());
    Ok(())
}

fn attention(args: AttentionArgs) -> Result<()> {
    let (run, spec) = crate::run::open_run(&args.run)?;
    crate::run::load::gpt_spec(&spec, "plot attention")?;
    let tokenizer = crate::run::run_tokenizer(&run, &spec)?;
    let tokens = tokenizer.encode(&args.text).map_err(|e| anyhow::anyhow!("--text: {e}"))?;
    let block = spec.model.block_size();
    if tokens.is_empty() || tokens.len() > block {
        bail!("--text: {} tokens; expected between 1 and model.block_size = {block}", tokens.len());
    }
    let layers = spec.model.n_layers();
    let layer = args.layer.unwrap_or(layers - 1);
    if layer >= layers {
        bail!("--layer {layer}: the model has layers 0 to {}", layers - 1);
    }
    if let Some(head) = args.head.filter(|&h| h >= spec.model.n_heads()) {
        bail!("--head {head}: the model has heads 0 to {}", spec.model.n_heads() - 1);
    }
    let out = args.out.clone().unwrap_or_else(|| run.attention_plot(layer, args.head));
    crate::run::check_output("--out", &out, [])?;
    let backend = args.backend.section(&spec)?;
    let job = AttentionJob {
        weights: super::RunWeights { run, spec, checkpoint: args.checkpoint },
        tokens: tokens.clone(),
        layer,
    };
    let weights = crate::backend::dispatch(&backend, job)??; // [heads][query][key]
    let labels: Vec<String> = tokens.iter().map(|&t| token_label(tokenizer.as_ref(), t)).collect();
    let heads: Vec<usize> = match args.head {
        Some(h) => vec![h],
        None => (0..weights.len()).collect(),
    };
    let maps: Vec<Heatmap> = heads
        .iter()
        .map(|&h| Heatmap {
            title: format!("head {h}"),
            values: weights[h].clone(),
            x_labels: labels.clone(),
            y_labels: labels.clone(),
            x_desc: "key (attended to)".into(),
            y_desc: "query".into(),
        })
        .collect();
    let columns = (maps.len() as f64).sqrt().ceil() as usize;
    let title = format!("Attention weights, layer {layer} of {}", args.run.display());
    crate::plot::heatmaps(&out, &title, &maps, columns)?;
    println!("{}", out.display());
    Ok(())
}

/// A token as an axis label: whitespace made visible, long tokens shortened.
fn token_label(tokenizer: &dyn Tokenizer, id: u32) -> String {
    let text = tokenizer.decode(&[id]).replace('\n', "\\n").replace(' ', "·");
    if text.chars().count() > 12 {
        format!("{}…", text.chars().take(11).collect::<String>())
    } else {
        text
    }
}

struct AttentionJob {
    weights: super::RunWeights,
    tokens: Vec<u32>,
    layer: usize,
}

impl ForwardJob for AttentionJob {
    type Output = Result<Vec<Vec<Vec<f32>>>>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Self::Output {
        let (model, _) = self.weights.gpt::<B>(&device)?;
        Ok(model.attention_weights(&self.tokens, self.layer, &device))
    }
}

/// Writes `loss.png` and `lr.png` for a finished run; a failure is reported, not fatal.
pub fn after_training(run: &RunDir, spec: &RunSpec) {
    let curves =
        Curves { label: spec.run.name.clone(), metrics: crate::run::read_metrics(&run.metrics()) };
    match crate::plot::training_curves(&[curves], false, run.root()) {
        Ok(files) => {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            eprintln!("kiln: plots: {}", names.join(", "));
        }
        Err(e) => eprintln!("kiln: warning: {e}"),
    }
    match crate::plot::write_report(run, &spec.run.name) {
        Ok(path) => eprintln!("kiln: report: {}", path.display()),
        Err(e) => eprintln!("kiln: warning: {e}"),
    }
}
