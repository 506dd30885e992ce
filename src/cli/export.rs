//! `kiln export`: a run's model as safetensors, loadable by Hugging Face `transformers`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use crate::backend::ForwardJob;
use crate::config::RunSpec;
use crate::interop::Names;
use crate::kernels::KernelBackend;
use crate::run::RunDir;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Run directory, e.g. artifacts/small.
    #[arg(long)]
    run: PathBuf,
    /// A checkpoint file of the run instead of its final model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// File format of the weights.
    #[arg(long, value_enum, default_value_t = Format::Safetensors)]
    format: Format,
    /// Parameter names: `hf` (GPT-2's, with a config.json that transformers reads) or `kiln`.
    #[arg(long, value_enum, default_value_t = Names::Hf)]
    names: Names,
    /// Folder to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Safetensors,
}

/// Refuses an `--out` holding anything but an earlier export (which has `kiln_config.toml`):
/// the files an export writes have common names, such as `config.json`.
fn check_out(out: &std::path::Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {}: is a file; expected a folder to export into", out.display());
    }
    let occupied = out.read_dir().is_ok_and(|mut entries| entries.next().is_some());
    if occupied && !out.join(KILN_CONFIG).is_file() {
        bail!(
            "--out {}: holds files kiln did not export (no {KILN_CONFIG}); export into a new or \
             empty folder",
            out.display()
        );
    }
    Ok(())
}

/// kiln's own tokenizer file, for tokenizers Hugging Face has no `tokenizer.json` form of.
const KILN_TOKENIZER: &str = "kiln_tokenizer.json";
/// The run's resolved config, so that `kiln import` and people can see what was trained.
const KILN_CONFIG: &str = "kiln_config.toml";

pub fn run(args: ExportArgs) -> Result<()> {
    let (run, spec) = crate::run::open_run(&args.run)?;
    crate::run::load::gpt_spec(&spec, "export")?;
    check_out(&args.out)?;
    let Format::Safetensors = args.format;
    let tokenizer = crate::run::run_tokenizer(&run, &spec)?;
    let eot = tokenizer.special_id(crate::tokenizer::END_OF_TEXT);
    let backend = crate::config::BackendSection {
        name: crate::config::BackendName::cpu_for_build(),
        ..Default::default()
    };
    let job = Job {
        weights: super::RunWeights { run, spec: spec.clone(), checkpoint: args.checkpoint },
        names: args.names,
        eot,
        out: args.out.clone(),
    };
    let (exported, source) = crate::backend::dispatch(&backend, job)??;

    // Hugging Face reads its own tokenizer.json (kiln's BPE files are in that form); other
    // kinds are kept in kiln's form under a name transformers does not look for.
    let tokenizer_json = tokenizer.to_json();
    let name =
        if tokenizer_json.get("model").is_some() { "tokenizer.json" } else { KILN_TOKENIZER };
    crate::tokenizer::save(tokenizer.as_ref(), &args.out.join(name))?;
    crate::files::write_atomic(&args.out.join(KILN_CONFIG), spec.to_toml().as_bytes())?;

    println!(
        "exported {} ({} tensors) to {}:",
        source.display(),
        exported.tensors,
        args.out.display()
    );
    for file in exported.files.iter().chain([&args.out.join(name), &args.out.join(KILN_CONFIG)]) {
        println!("  {}", file.display());
    }
    match args.names {
        Names::Hf => println!(
            "load it with: transformers.GPT2LMHeadModel.from_pretrained({:?})",
            args.out.display().to_string()
        ),
        Names::Kiln => println!("parameter names are kiln's (see kiln inspect); there is no config.json for transformers"),
    }
    if name == KILN_TOKENIZER {
        println!(
            "the {} tokenizer has no Hugging Face form; {name} is kiln's",
            spec.data.tokenizer
        );
    }
    Ok(())
}

/// Writes a finished GPT run's final weights into the run as `model.safetensors`, with GPT-2's
/// names and a `config.json` that `transformers` loads when the model has GPT-2's shape, with
/// kiln's names otherwise; the files join the run's manifest.
pub(super) fn into_run(run: &RunDir, spec: &RunSpec) -> Result<Vec<PathBuf>> {
    let tokenizer = crate::run::run_tokenizer(run, spec)?;
    let names = match crate::interop::gpt2_mismatch(&spec.model) {
        None => Names::Hf,
        Some(_) => Names::Kiln,
    };
    let backend = crate::config::BackendSection {
        name: crate::config::BackendName::cpu_for_build(),
        ..Default::default()
    };
    let job = Job {
        weights: super::RunWeights { run: run.clone(), spec: spec.clone(), checkpoint: None },
        names,
        eot: tokenizer.special_id(crate::tokenizer::END_OF_TEXT),
        out: run.root().to_path_buf(),
    };
    let (exported, _) = crate::backend::dispatch(&backend, job)??;
    for file in &exported.files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        run.record_file(&name)?;
    }
    Ok(exported.files)
}

struct Job {
    weights: super::RunWeights,
    names: Names,
    eot: Option<u32>,
    out: PathBuf,
}

impl ForwardJob for Job {
    type Output = Result<(crate::interop::Exported, PathBuf)>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Self::Output {
        let (model, source) = self.weights.gpt::<B>(&device)?;
        let metadata = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            ("kiln_source".to_string(), source.display().to_string()),
        ]);
        let exported = crate::interop::export(
            &model, &self.weights.spec, self.names, self.eot, metadata, &self.out,
        )
        .map_err(|e| match e {
            crate::interop::InteropError::NotGpt2(_) => anyhow::anyhow!("{e} (--names kiln)"),
            other => other.into(),
        })?;
        Ok((exported, source))
    }
}
