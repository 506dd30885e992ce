//! `kiln tokenizer …`: look at how a tokenizer cuts text.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use super::table::{escape, Table};
use crate::tokenizer::{self, Tokenizer, TokenizerSpec};

#[derive(Debug, Subcommand)]
pub enum TokenizerCommand {
    /// The pieces, ids and byte lengths a tokenizer makes of a text.
    Show(ShowArgs),
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
        TokenizerCommand::Show(args) => show(args),
    }
}

fn show(args: ShowArgs) -> Result<()> {
    let tokenizer = args.source.open(&args.overrides)?;
    let ids = tokenizer.encode(&args.text)?;
    let mut table = Table::new(&["#", "id", "piece", "bytes"]);
    for (i, &id) in ids.iter().enumerate() {
        let bytes = tokenizer.decode_bytes(&[id]);
        table.row(vec![i.to_string(), id.to_string(), escape(&String::from_utf8_lossy(&bytes)), bytes.len().to_string()]);
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
            let text = crate::data::read_text(&spec.data.path)?;
            return Ok(TokenizerSpec::parse(&spec.data.tokenizer)?.build(&text, spec.data.fit_options())?);
        }
        let name = self.tokenizer.as_deref().unwrap_or_default();
        let path = Path::new(name);
        if path.is_dir() {
            return Ok(tokenizer::load(&crate::run_dir::RunDir::new(path).tokenizer())?);
        }
        if path.is_file() {
            return Ok(tokenizer::load(path)?);
        }
        match TokenizerSpec::parse(name) {
            Ok(spec @ TokenizerSpec::Tiktoken(_)) => Ok(spec.build("", Default::default())?),
            Ok(_) => bail!("--tokenizer {name}: a {name} tokenizer is fitted on a corpus; pass --config instead"),
            Err(e) => bail!("--tokenizer {name:?}: not a file or run directory, and not a tokenizer name ({e})"),
        }
    }
}
