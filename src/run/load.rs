//! A finished (or checkpointed) run read back for the commands that only run its model:
//! its config, its tokenizer checked against the model and its checkpoints, its weights
//! checked against the config's shapes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use burn::prelude::*;

use super::checkpoint::{catch_quietly, load_record, CheckpointError, CheckpointState, Latest};
use super::Manifest;
use super::RunDir;
use crate::config::{GptSpec, ModelKind, ModelSpec, RunSpec, Seq2SeqSpec};
use crate::data::Specials;
use crate::model::{named_params, Gpt, GptConfig, Seq2Seq, Seq2SeqConfig};
use crate::tokenizer::{self, Tokenizer};

/// A run directory and its resolved config.
pub fn open_run(dir: &Path) -> Result<(RunDir, RunSpec)> {
    let run = RunDir::new(dir);
    if !run.config().is_file() {
        bail!(
            "{}: not a kiln run directory (no config.toml); name a directory under artifacts/",
            dir.display()
        );
    }
    match Manifest::read(&run)? {
        Some(manifest) => manifest.verify_file(&run, "config.toml")?,
        None => eprintln!(
            "kiln: warning: {} has no kiln-run.json (made by an older kiln, or not by kiln): its \
             files are not verified",
            dir.display()
        ),
    }
    let spec = RunSpec::read_resolved(&run.config())?;
    Ok((run, spec))
}

/// For a checkpoint file inside a run (`<run>/model.mpk`, `<run>/checkpoints/model-N.mpk`),
/// the run directory it belongs to.
pub fn run_of_checkpoint(file: &Path) -> Result<PathBuf> {
    let parent = file.parent().unwrap_or(Path::new("."));
    let dir = match parent.file_name().is_some_and(|n| n == "checkpoints") {
        true => parent.parent().unwrap_or(parent),
        false => parent,
    };
    if !dir.join("config.toml").is_file() {
        bail!(
            "{}: cannot find the run it belongs to (expected config.toml in {})",
            file.display(),
            dir.display()
        );
    }
    Ok(dir.to_path_buf())
}

/// The tokenizer of a trained run, checked against the model it belongs to: its vocabulary
/// must fit the model's, and it must be the file the run's checkpoints were taken with.
pub fn run_tokenizer(run: &RunDir, spec: &RunSpec) -> Result<Box<dyn Tokenizer>> {
    let path = run.tokenizer();
    if let Some(manifest) = Manifest::read(run)? {
        manifest.verify_file(run, "tokenizer.json")?;
    }
    let tokenizer = tokenizer::load(&path)?;
    let (have, model) = (tokenizer.vocab_size(), spec.vocab_size());
    if have > model {
        bail!(
            "{}: a vocabulary of {have} tokens, but the run's model has {model} \
             (model.vocab_size in {}); the file is not the one this run was trained with: \
             restore it",
            path.display(),
            run.config().display()
        );
    }
    let latest = Latest::read(run);
    let state = latest.and_then(|l| CheckpointState::read(&run.checkpoint_state(l.step)).ok());
    if let Some(state) = state {
        state.check_tokenizer(run)?;
    }
    Ok(tokenizer)
}

/// The GPT section of a run's config, or an error naming the commands for a seq2seq run.
pub fn gpt_spec<'a>(spec: &'a RunSpec, command: &str) -> Result<&'a GptSpec> {
    match &spec.model {
        ModelSpec::Gpt(gpt) => Ok(gpt),
        ModelSpec::Seq2Seq(_) => bail!(
            "kiln {command} works on GPT models, and this one is model.kind = \"seq2seq\"; \
             for an encoder-decoder use kiln train, translate, eval or inspect"
        ),
    }
}

/// The seq2seq section of a run's config.
pub fn seq2seq_spec(spec: &RunSpec) -> Result<&Seq2SeqSpec> {
    match &spec.model {
        ModelSpec::Seq2Seq(seq2seq) => Ok(seq2seq),
        ModelSpec::Gpt(_) => bail!("this run is model.kind = \"gpt\", not an encoder-decoder"),
    }
}

/// The weights of a GPT run: a given checkpoint file, else the final model, else the newest
/// checkpoint. Returns the model and the file it came from.
pub fn load_gpt<B: Backend>(
    run: &RunDir,
    spec: &RunSpec,
    file: Option<&Path>,
    device: &B::Device,
) -> Result<(Gpt<B>, PathBuf)> {
    let config = GptConfig::from_spec(gpt_spec(spec, "load")?, spec.vocab_size());
    load_weights(run, config.init(device), file, device)
}

/// The model of a seq2seq run, as [`load_gpt`], with the run's tokenizer (which gives the
/// model its padding token).
pub fn load_seq2seq<B: Backend>(
    run: &RunDir,
    spec: &RunSpec,
    file: Option<&Path>,
    device: &B::Device,
) -> Result<(Seq2Seq<B>, PathBuf, Box<dyn Tokenizer>)> {
    let tokenizer = run_tokenizer(run, spec)?;
    let pad = Specials::of(tokenizer.as_ref())?.pad;
    let config = Seq2SeqConfig::from_spec(seq2seq_spec(spec)?, spec.vocab_size(), pad);
    let (model, path) = load_weights(run, config.init(device), file, device)?;
    Ok((model, path, tokenizer))
}

/// Loads the weights of a run into `model`, built from the run's config: a given checkpoint
/// file, else the final model, else the newest checkpoint.
fn load_weights<B: Backend, M: Module<B>>(
    run: &RunDir,
    model: M,
    file: Option<&Path>,
    device: &B::Device,
) -> Result<(M, PathBuf)> {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None if run.final_model().is_file() => run.final_model(),
        None => match run.checkpoint_steps().last() {
            Some(&step) => run.checkpoint_file("model", step),
            None => {
                bail!("{} holds no model yet (no model.mpk, no checkpoints)", run.root().display())
            }
        },
    };
    verify_weights(run, &path)?;
    let expected = named_params(&model);
    let record = load_record::<B, _>(&path, device)?;
    // Burn panics on a record of another shape (a layer more or less); the shape check
    // below names the parameter where it does not.
    let model =
        catch_quietly(|| model.load_record(record)).map_err(|panic| CheckpointError::Load {
            path: path.clone(),
            reason: format!("another model's record ({panic})"),
        })?;
    let loaded = named_params(&model);
    let mismatch = expected.iter().zip(&loaded).find(|(want, got)| want.shape != got.shape);
    if let Some((want, got)) = mismatch {
        bail!(CheckpointError::Shape {
            path,
            name: got.name.clone(),
            file: got.shape.clone(),
            config: want.shape.clone(),
        });
    }
    Ok((model, path))
}

/// Fails unless `path` is a model file of `run` that the run wrote and that is unchanged:
/// its final model or one of its checkpoints, checked against the manifest (runs without
/// one are read unverified).
fn verify_weights(run: &RunDir, path: &Path) -> Result<()> {
    let Some(manifest) = Manifest::read(run)? else {
        return Ok(());
    };
    let canonical = |p: &Path| p.canonicalize().ok();
    let in_checkpoints = path.parent().and_then(canonical) == canonical(&run.checkpoints());
    match super::checkpoint_step(path).filter(|_| in_checkpoints) {
        Some(step) => drop(CheckpointState::verify(run, step)?),
        None if canonical(path).is_some() && canonical(path) == canonical(&run.final_model()) => {
            manifest.verify_file(run, "model.mpk")?
        }
        None => bail!(
            "{}: not a model file of the run {} (its model.mpk or a file in its checkpoints/); \
             a checkpoint of another run does not fit this run's config",
            path.display(),
            run.root().display()
        ),
    }
    Ok(())
}

/// What a model file of `run` is, for a command to say which weights it loaded:
/// `artifacts/small/model.mpk (the final model)`, or a checkpoint with its step.
pub fn describe_weights(run: &RunDir, path: &Path) -> String {
    let in_checkpoints = path.parent() == Some(run.checkpoints().as_path());
    match super::checkpoint_step(path).filter(|_| in_checkpoints) {
        Some(step) => {
            let unfinished = match run.final_model().is_file() {
                true => "",
                false => "; the run has not finished",
            };
            format!("{} (the checkpoint at step {step}{unfinished})", path.display())
        }
        None if path == run.final_model() => format!("{} (the final model)", path.display()),
        None => path.display().to_string(),
    }
}

/// The most recently finished run of model `kind` under `artifacts` (the one whose
/// `summary.json` is newest), for commands that are not told which run to use.
pub fn newest_finished_run(artifacts: &Path, kind: ModelKind) -> Result<PathBuf> {
    let none = || anyhow::anyhow!("{} holds no finished {kind} run", artifacts.display());
    let entries = std::fs::read_dir(artifacts).map_err(|_| none())?;
    let finished = entries.filter_map(|entry| {
        let run = RunDir::new(entry.ok()?.path());
        let written = std::fs::metadata(run.summary()).ok()?.modified().ok()?;
        let spec = RunSpec::read_resolved(&run.config()).ok()?;
        (run.final_model().is_file() && spec.model.kind() == kind).then_some((written, run))
    });
    let (_, run) = finished.max_by_key(|(written, _)| *written).ok_or_else(none)?;
    Ok(run.root().to_path_buf())
}
