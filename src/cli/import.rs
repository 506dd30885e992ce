//! `kiln import`: a GPT-2 checkpoint in Hugging Face form, or a nanoGPT `ckpt.pt`, becomes a
//! kiln run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::record::Recorder;
use clap::Args;

use crate::backend::ForwardJob;
use crate::config::{GptSpec, ModelSpec, RunSpec, TokenizerSpec};
use crate::interop::Gpt2Checkpoint;
use crate::kernels::KernelBackend;
use crate::run::{Manifest, RunDir, RunLock};
use crate::tokenizer::{self, Tokenizer};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A folder holding a GPT-2 checkpoint: config.json and model.safetensors (what
    /// `save_pretrained` writes, or a download of the `gpt2` model files); or a nanoGPT
    /// checkpoint: its ckpt.pt, or the out_dir holding it.
    #[arg(long)]
    from: PathBuf,
    /// Run directory to create, e.g. artifacts/gpt2.
    #[arg(long)]
    out: PathBuf,
    /// The tokenizer, as `data.tokenizer` spells it: `tiktoken:gpt2`, `bpe:<tokenizer.json>`,
    /// or `char` with --data (nanoGPT's shakespeare_char). Default: the folder's
    /// tokenizer.json (or kiln_tokenizer.json), else tiktoken:gpt2 for GPT-2's vocabulary
    /// (50257 tokens, or nanoGPT's 50304).
    #[arg(long)]
    tokenizer: Option<String>,
    /// The text a `char` or `word` tokenizer is fitted on, as in training (nanoGPT's
    /// data/shakespeare_char/input.txt); it becomes the run's data.path.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Replace what is already at --out.
    #[arg(long)]
    force: bool,
}

/// GPT-2's vocabulary size, which `tiktoken:gpt2` encodes into.
const GPT2_VOCAB: usize = 50257;
/// nanoGPT pads GPT-2's vocabulary to a multiple of 64.
const GPT2_VOCAB_PADDED: usize = 50304;

/// What is imported: its network and where its weights are.
struct Checkpoint {
    model: GptSpec,
    weights: Weights,
}

enum Weights {
    Gpt2(Gpt2Checkpoint),
    NanoGpt(PathBuf),
}

impl Checkpoint {
    /// A nanoGPT `ckpt.pt` (or an out_dir holding one), else a Hugging Face GPT-2 folder.
    fn read(from: &Path) -> Result<Self> {
        let in_folder = from.join("ckpt.pt");
        let nanogpt = match from.is_file() {
            true => Some(from.to_path_buf()),
            false => (!from.join(crate::interop::HF_CONFIG_FILE).exists() && in_folder.is_file())
                .then_some(in_folder),
        };
        Ok(match nanogpt {
            Some(path) => Self {
                model: crate::interop::read_nanogpt(&path)?,
                weights: Weights::NanoGpt(path),
            },
            None => {
                let gpt2 = crate::interop::read_gpt2(from)?;
                Self { model: gpt2.model.clone(), weights: Weights::Gpt2(gpt2) }
            }
        })
    }

    fn file(&self) -> &Path {
        match &self.weights {
            Weights::Gpt2(gpt2) => &gpt2.weights,
            Weights::NanoGpt(path) => path,
        }
    }
}

pub fn run(args: ImportArgs) -> Result<()> {
    let occupied = check_out(&args)?;
    let checkpoint = Checkpoint::read(&args.from)?;
    let vocab = checkpoint.model.vocab_size.unwrap_or(0);
    let folder = if args.from.is_file() { args.from.parent() } else { Some(args.from.as_path()) };
    let (tokenizer, tokenizer_spec) = choose_tokenizer(
        args.tokenizer.as_deref(),
        args.data.as_deref(),
        folder.unwrap_or(Path::new(".")),
        vocab,
    )?;
    if tokenizer.vocab_size() > vocab {
        bail!(
            "tokenizer {tokenizer_spec}: {} tokens, but the model in {} has a vocabulary of {vocab}; pass the tokenizer it was trained with (--tokenizer)",
            tokenizer.vocab_size(),
            args.from.display()
        );
    }
    let data = args.data.clone().unwrap_or_else(|| checkpoint.file().to_path_buf());
    let spec = run_spec(&args.out, &data, &tokenizer_spec, &checkpoint.model)?;
    let estimate = crate::memory::generation(&spec.model, vocab, 0);
    crate::memory::check_generation(estimate, "importing the model")?;
    // Built in a sibling folder and moved into place at the end, so a failed import neither
    // leaves a half-made run nor loses what --force would replace.
    let staging = crate::files::temp_sibling(&args.out);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let params = match write_run(&RunDir::new(&staging), &spec, tokenizer.as_ref(), checkpoint) {
        Ok(params) => params,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if occupied {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("removing {}", args.out.display()))?;
    }
    std::fs::rename(&staging, &args.out)
        .with_context(|| format!("moving {} to {}", staging.display(), args.out.display()))?;
    let run = RunDir::new(&args.out);

    let m = &spec.model;
    println!(
        "imported {} ({:.1}M parameters: {} layers, d_model {}, {} heads, vocab {}, block {}) into {} with tokenizer {tokenizer_spec}",
        args.from.display(),
        params as f64 / 1e6,
        m.n_layers(),
        m.d_model(),
        m.n_heads(),
        vocab,
        m.block_size(),
        run.root().display()
    );
    let prompt = match tokenizer_spec.as_str() {
        "tiktoken:gpt2" => " --prompt \"Hello, I'm a language model,\"",
        _ => "",
    };
    println!("try: kiln generate --run {}{prompt}", run.root().display());
    Ok(())
}

/// Whether `--out` already holds a run, which `--force` may replace; refuses a folder that
/// is not a kiln run, a run without `--force` and a run a trainer holds.
fn check_out(args: &ImportArgs) -> Result<bool> {
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {}: is a file; expected a folder for the run", args.out.display());
    }
    let occupied = args.out.read_dir().is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        let out = RunDir::new(&args.out);
        if Manifest::read(&out)?.is_none() {
            bail!(
                "--out {}: holds files kiln did not make (no kiln-run.json); choose another folder",
                args.out.display()
            );
        }
        if !args.force {
            bail!(
                "--out {}: already holds a run; pass --force to replace it, or choose another \
         folder",
                args.out.display()
            );
        }
        RunLock::check_free(&out)?;
    }
    Ok(occupied)
}

/// Writes the run into `run`: tokenizer, model, config.toml. Returns the number of parameters.
fn write_run(
    run: &RunDir,
    spec: &RunSpec,
    tokenizer: &dyn Tokenizer,
    checkpoint: Checkpoint,
) -> Result<usize> {
    run.write_manifest(&Manifest::new())?;
    crate::tokenizer::save(tokenizer, &run.tokenizer())?;
    let backend = crate::config::BackendSection {
        name: crate::config::BackendName::cpu_for_build(),
        ..Default::default()
    };
    let params = crate::backend::dispatch(
        &backend,
        Job { run: run.clone(), spec: spec.clone(), checkpoint },
    )??;
    crate::files::write_atomic(&run.config(), spec.to_toml().as_bytes())?;
    for file in ["tokenizer.json", "model.mpk", "config.toml"] {
        run.record_file(file)?;
    }
    Ok(params)
}

/// The tokenizer to pair with the imported weights, and how `data.tokenizer` names it.
fn choose_tokenizer(
    arg: Option<&str>,
    data: Option<&Path>,
    from: &Path,
    vocab: usize,
) -> Result<(Box<dyn Tokenizer>, String)> {
    if let Some(spec) = arg {
        let parsed =
            TokenizerSpec::parse(spec).map_err(|e| anyhow::anyhow!("--tokenizer {spec:?}: {e}"))?;
        let fitted = matches!(parsed, TokenizerSpec::Char | TokenizerSpec::Word);
        let text = match (fitted, data) {
            (true, Some(data)) => crate::data::read_text(data)?,
            (true, None) => bail!(
                "--tokenizer {spec:?}: that tokenizer is fitted on a corpus; pass --data with \
                 the text the model was trained on"
            ),
            (false, _) if matches!(parsed, TokenizerSpec::BpeTrain { .. }) => bail!(
                "--tokenizer {spec:?}: an imported model keeps the tokenizer it was trained \
                 with; pass tiktoken:<encoding>, bpe:<tokenizer.json>, or char/word with --data"
            ),
            (false, _) => String::new(),
        };
        let tokenizer = tokenizer::build(&parsed, &text, Default::default())?;
        return Ok((tokenizer, spec.to_string()));
    }
    let hf = from.join("tokenizer.json");
    let kiln = from.join("kiln_tokenizer.json");
    let gpt2 = || -> Result<(Box<dyn Tokenizer>, String)> {
        Ok((
            tokenizer::build(&TokenizerSpec::Tiktoken("gpt2".into()), "", Default::default())?,
            "tiktoken:gpt2".into(),
        ))
    };
    if hf.is_file() {
        match crate::tokenizer::load(&hf) {
            Ok(tokenizer) => return Ok((tokenizer, format!("bpe:{}", hf.display()))),
            Err(e) if is_gpt2_vocab(vocab) => {
                eprintln!("kiln: {e}; using tiktoken:gpt2, GPT-2's tokenizer, for the 50257-token vocabulary");
                return gpt2();
            }
            Err(e) => bail!("{e}; pass --tokenizer"),
        }
    }
    if kiln.is_file() {
        let tokenizer = crate::tokenizer::load(&kiln)?;
        let file: crate::tokenizer::TokenizerFile = crate::cli::read_json(&kiln)?;
        let spec = match file {
            crate::tokenizer::TokenizerFile::Char { .. } => "char".to_string(),
            crate::tokenizer::TokenizerFile::Word { .. } => "word".to_string(),
            crate::tokenizer::TokenizerFile::Tiktoken { encoding } => {
                format!("tiktoken:{encoding}")
            }
        };
        return Ok((tokenizer, spec));
    }
    if is_gpt2_vocab(vocab) {
        return gpt2();
    }
    bail!(
        "{}: no tokenizer.json or kiln_tokenizer.json, and a vocabulary of {vocab} is not \
         GPT-2's ({GPT2_VOCAB}, or {GPT2_VOCAB_PADDED} padded); pass --tokenizer (char with \
         --data for a character-level model)",
        from.display()
    )
}

fn is_gpt2_vocab(vocab: usize) -> bool {
    (GPT2_VOCAB..=GPT2_VOCAB_PADDED).contains(&vocab)
}

/// The resolved config of the imported run: the checkpoint's model, the chosen tokenizer,
/// and training settings a fine-tuning run would start from.
fn run_spec(out: &Path, data: &Path, tokenizer: &str, model: &GptSpec) -> Result<RunSpec> {
    let name = out.file_name().and_then(|n| n.to_str()).filter(|n| !n.is_empty());
    let Some(name) = name else {
        bail!("--out {}: expected a directory path such as artifacts/gpt2", out.display())
    };
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let model = ModelSpec::Gpt(model.clone());
    let text = format!(
        "[run]\nname = {name:?}\nartifacts_dir = {:?}\n\
         [data]\npath = {:?}\ntokenizer = {tokenizer:?}\n\
         [training]\nbatch_size = 8\nmax_iters = 1000\nlearning_rate = 3e-4\n\
         eval_interval = 100\neval_iters = 20\n\
         [model]\n{}",
        parent.display().to_string(),
        data.display().to_string(),
        toml::to_string(&model).context("writing the imported run's [model]")?,
    );
    let spec = RunSpec::from_toml(&text, "the imported run's config")?;
    crate::config::validate_shape(&spec)?;
    Ok(spec)
}

struct Job {
    run: RunDir,
    spec: RunSpec,
    checkpoint: Checkpoint,
}

impl ForwardJob for Job {
    type Output = Result<usize>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<usize> {
        let model = crate::train::gpt_config(&self.spec)?.init::<B>(&device);
        let model = match self.checkpoint.weights {
            Weights::Gpt2(gpt2) => crate::interop::load_gpt2(model, &gpt2.weights)?,
            Weights::NanoGpt(path) => crate::interop::load_nanogpt(model, &path)?,
        };
        let path = self.run.final_model();
        Recorder::<B>::record(
            &crate::run::checkpoint::CheckpointRecorder::default(),
            model.clone().into_record(),
            path.clone(),
        )
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        Ok(model.num_params())
    }
}
