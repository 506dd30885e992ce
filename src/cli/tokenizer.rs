//! `kiln tokenizer …`: train a byte-level BPE, encode and decode, look at how text is cut.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::table::{escape, Table};
use crate::config::TokenizerSpec;
use crate::tokenizer::bpe::train::{train_on_files, BpeTrainOptions};
use crate::tokenizer::{self, FitOptions, Tokenizer};

#[derive(Debug, Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE on text files and save it as a Hugging Face tokenizer.json.
    Train(TrainArgs),
    /// Token ids of a text (printed) or of a file (streamed to a binary file of u32 ids).
    Encode(EncodeArgs),
    /// The text of token ids.
    Decode(DecodeArgs),
    /// The pieces, ids and byte lengths a tokenizer makes of a text.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// UTF-8 text files, read in order as one corpus.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Vocabulary size: 256 byte tokens + special tokens + merges.
    #[arg(long)]
    vocab_size: usize,
    /// A special token (repeatable), e.g. "<|endoftext|>"; never split or merged.
    #[arg(long = "special", value_name = "TOKEN")]
    specials: Vec<String>,
    /// Where to write the tokenizer.json.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    source: TokenizerSource,
    #[command(flatten)]
    text: TextOrFile,
    /// With --input: the file of little-endian u32 ids to write.
    #[arg(long, requires = "input")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TextOrFile {
    /// The text to encode; ids are printed separated by spaces.
    #[arg(long)]
    text: Option<String>,
    /// A UTF-8 file to encode, read in blocks (needs --out).
    #[arg(long, requires = "out")]
    input: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    source: TokenizerSource,
    /// Token ids.
    #[arg(long, required = true, num_args = 1..)]
    ids: Vec<u32>,
}

/// Which tokenizer to use: the one a config builds, or a saved / named one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TokenizerSource {
    /// A run config; `char` and `word` tokenizers are fitted on its corpus as training would.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A tokenizer.json, a run directory, or a name such as tiktoken:gpt2.
    #[arg(long)]
    tokenizer: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    source: TokenizerSource,
    /// Override a config value (with --config).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", requires = "config")]
    overrides: Vec<String>,
    /// The text to tokenize.
    #[arg(long)]
    text: String,
}

pub fn run(command: TokenizerCommand) -> Result<()> {
    match command {
        TokenizerCommand::Train(args) => train(args),
        TokenizerCommand::Encode(args) => encode(args),
        TokenizerCommand::Decode(args) => decode(args),
        TokenizerCommand::Show(args) => show(args),
    }
}

fn train(args: TrainArgs) -> Result<()> {
    let options =
        BpeTrainOptions { vocab_size: args.vocab_size, specials: args.specials, progress: true };
    crate::run::check_output("--out", &args.out, args.input.iter().map(PathBuf::as_path))?;
    let start = Instant::now();
    let tok = train_on_files(&args.input, &options)?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    tokenizer::save(&tok, &args.out)?;
    let bytes: u64 =
        args.input.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    eprintln!(
        "kiln: trained on {bytes} bytes in {seconds:.2}s: vocabulary {} (256 bytes + {} special + {} merges) -> {}",
        tok.vocab_size(),
        tok.specials().len(),
        tok.merges().len(),
        args.out.display()
    );
    if tok.vocab_size() < args.vocab_size {
        eprintln!("kiln: stopped below --vocab-size {}: no pair of tokens is left to merge in this corpus", args.vocab_size);
    }
    Ok(())
}

fn encode(args: EncodeArgs) -> Result<()> {
    if let (Some(input), Some(out)) = (&args.text.input, &args.out) {
        let tokenizer_file = args.source.tokenizer.as_deref().map(Path::new);
        let run_tokenizer = tokenizer_file.map(|t| crate::run::RunDir::new(t).tokenizer());
        let config = args.source.config.as_deref();
        let reads = [Some(input.as_path()), tokenizer_file, config, run_tokenizer.as_deref()];
        crate::run::check_output("--out", out, reads.into_iter().flatten())?;
    }
    let tokenizer = args.source.open(&[])?;
    let (Some(input), Some(out)) = (&args.text.input, &args.out) else {
        let ids = tokenizer.encode(args.text.text.as_deref().unwrap_or_default())?;
        println!("{}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
        return Ok(());
    };
    let file =
        std::fs::File::open(input).with_context(|| format!("--input {}", input.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(size).with_style(
        indicatif::ProgressStyle::with_template(
            "encoding {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("valid template"),
    );
    let start = Instant::now();
    let mut writer = crate::files::AtomicFile::create(out)?;
    let mut tokens = 0usize;
    let read = tokenizer::encode_reader(
        tokenizer.as_ref(),
        std::io::BufReader::new(file),
        |ids, text_bytes| {
            tokens += ids.len();
            bar.inc(text_bytes as u64);
            let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
            writer.write_all(&bytes)
        },
    )
    .map_err(|e| match e {
        tokenizer::EncodeStreamError::Sink(write) => anyhow::Error::from(write),
        read => anyhow::anyhow!("--input {}: {read}", input.display()),
    })?;
    writer.commit()?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "kiln: {read} bytes -> {tokens} tokens ({:.2} bytes/token) in {seconds:.2}s ({:.1} MB/s) -> {}",
        read as f64 / tokens.max(1) as f64,
        read as f64 / 1e6 / seconds.max(1e-9),
        out.display()
    );
    Ok(())
}

fn decode(args: DecodeArgs) -> Result<()> {
    let tokenizer = args.source.open(&[])?;
    if let Some(id) = args.ids.iter().find(|&&id| id as usize >= tokenizer.vocab_size()) {
        bail!("--ids: {id} is outside the vocabulary (ids 0..{})", tokenizer.vocab_size());
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&tokenizer.decode_bytes(&args.ids))?;
    stdout.flush()?;
    Ok(())
}

fn show(args: ShowArgs) -> Result<()> {
    let tokenizer = args.source.open(&args.overrides)?;
    let ids = tokenizer.encode(&args.text)?;
    let mut table = Table::new(&["#", "id", "piece", "bytes"]);
    // The bytes each token adds to the decoded text, in context: a byte-fallback token adds
    // nothing until its character is whole, a `##` piece adds no space.
    let mut decode = tokenizer.stream_decoder(&[]);
    for (i, &id) in ids.iter().enumerate() {
        let piece = tokenizer.token_text(id);
        let piece = piece.unwrap_or_else(|| escape(&tokenizer.decode(&[id])));
        table.row(vec![i.to_string(), id.to_string(), piece, decode(id).len().to_string()]);
    }
    table.print();
    let n_bytes = args.text.len();
    eprintln!(
        "{} tokens for {} bytes ({:.2} bytes/token), vocabulary {}",
        ids.len(),
        n_bytes,
        n_bytes as f64 / ids.len().max(1) as f64,
        tokenizer.vocab_size()
    );
    Ok(())
}

impl TokenizerSource {
    pub fn open(&self, overrides: &[String]) -> Result<Box<dyn Tokenizer>> {
        if let Some(config) = &self.config {
            let spec = crate::config::load(config, overrides)?;
            crate::run::load::gpt_spec(&spec, "tokenizer show --config")?;
            let text = crate::data::read_text(&spec.data.path)?;
            let fit = FitOptions::of(&spec.data);
            return Ok(tokenizer::build(&spec.data.tokenizer, &text, fit)?);
        }
        let name = self.tokenizer.as_deref().unwrap_or_default();
        let path = Path::new(name);
        if path.is_dir() {
            return Ok(tokenizer::load(&crate::run::RunDir::new(path).tokenizer())?);
        }
        if path.is_file() {
            return Ok(tokenizer::load(path)?);
        }
        match TokenizerSpec::parse(name) {
            Ok(spec @ (TokenizerSpec::Tiktoken(_) | TokenizerSpec::Bpe(_))) => {
                Ok(tokenizer::build(&spec, "", Default::default())?)
            }
            Ok(_) => bail!(
                "--tokenizer {name}: this tokenizer is fitted on a corpus; pass --config, or a \
                 trained tokenizer.json"
            ),
            Err(e) => bail!(
                "--tokenizer {name:?}: not a file or run directory, and not a tokenizer name ({e})"
            ),
        }
    }
}
