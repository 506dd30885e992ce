//! `kiln bench tokenizer`: byte-level BPE training time, peak memory and encode speed, side by
//! side with Hugging Face `tokenizers` (through bench/hf_tokenizers_bench.py) and tiktoken-rs.
//!
//! Every encoder runs on the same text held in memory, so the figures leave out disk reads.
//! Peak memory is the process's peak resident size during training, which includes what
//! the process held before (its baseline, large in builds linked to libtorch). "1 thread"
//! figures encode on the calling thread; "all threads" cut the text at safe
//! points and encode the pieces with rayon (tiktoken-rs is given the same pieces).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use rayon::prelude::*;
use serde::Deserialize;

use super::common::{peak_rss_mb, reset_peak_rss};
use crate::cli::table::Table;
use crate::tokenizer::bpe::pretokenize;
use crate::tokenizer::bpe::train::{train_on_files, BpeTrainOptions};
use crate::tokenizer::{BpeTokenizer, TiktokenTokenizer, Tokenizer};

#[derive(Debug, Args)]
pub struct TokenizerBenchArgs {
    /// UTF-8 text files, read in order as one corpus.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Vocabulary size of the trained BPE.
    #[arg(long, default_value_t = 10_000)]
    vocab_size: usize,
    /// Special tokens (repeatable).
    #[arg(long = "special", value_name = "TOKEN", default_values_t = vec!["<|endoftext|>".to_string()])]
    specials: Vec<String>,
    /// Also train and encode with Hugging Face tokenizers (needs Python with `tokenizers`).
    #[arg(long)]
    compare_hf: bool,
    /// The Python for --compare-hf; default: the repo's .venv, else python3.
    #[arg(long)]
    python: Option<PathBuf>,
}

/// One line of the report.
struct Row {
    what: String,
    seconds: Option<f64>,
    peak_mb: Option<f64>,
    mb_per_s: Option<f64>,
    note: String,
}

pub fn run(args: TokenizerBenchArgs) -> Result<()> {
    // Training streams the files from disk, as `kiln tokenizer train` does; the peak is
    // measured before the text is loaded for the encoders.
    let (trained, train_row) = time_training(&args)?;
    let mut text = String::new();
    for path in &args.input {
        text.push_str(&crate::data::read_text(path)?);
    }
    eprintln!(
        "kiln bench tokenizer: {:.1} MB from {} file(s), vocab {}, {} threads",
        text.len() as f64 / 1e6,
        args.input.len(),
        args.vocab_size,
        rayon::current_num_threads()
    );
    let mut rows = vec![train_row];
    rows.extend(time_encoders(&args, &text, &trained)?);
    if args.compare_hf {
        rows.extend(hugging_face(&args)?);
    }
    print_rows(&rows);
    Ok(())
}

/// kiln's BPE trained on the input files: time, peak memory and throughput.
fn time_training(args: &TokenizerBenchArgs) -> Result<(BpeTokenizer, Row)> {
    let options = BpeTrainOptions {
        vocab_size: args.vocab_size,
        specials: args.specials.clone(),
        progress: true,
    };
    reset_peak_rss();
    let baseline_mb = peak_rss_mb();
    let (trained, seconds) = timed(|| train_on_files(&args.input, &options));
    let trained = trained?;
    let bytes: u64 =
        args.input.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let row = Row {
        what: "kiln train".into(),
        seconds: Some(seconds),
        peak_mb: peak_rss_mb(),
        mb_per_s: Some(bytes as f64 / 1e6 / seconds),
        note: format!(
            "vocab {}; process baseline {} MB",
            trained.vocab_size(),
            baseline_mb.map_or("?".into(), |mb| format!("{mb:.0}"))
        ),
    };
    Ok((trained, row))
}

/// kiln's encoder with the trained and GPT-2's vocabularies, against tiktoken-rs on one
/// thread and on all; kiln's GPT-2 ids must equal tiktoken-rs's.
fn time_encoders(
    args: &TokenizerBenchArgs,
    text: &str,
    trained: &BpeTokenizer,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mb = text.len() as f64 / 1e6;
    let gpt2 = TiktokenTokenizer::gpt2_as_bpe()?;
    let tiktoken = tiktoken_rs::r50k_base_singleton();
    let pieces = pretokenize::chunks(text, 1 << 18);
    encode_rows(&mut rows, "kiln encode, own vocab", text, trained);
    let gpt2_ids = encode_rows(&mut rows, "kiln encode, gpt2 vocab", text, &gpt2);
    let (tiktoken_ids, seconds) = timed(|| tiktoken.encode_ordinary(text));
    let row = speed_row("tiktoken-rs gpt2, 1 thread", mb, seconds, tiktoken_ids.len());
    rows.push(row);
    let (parallel, seconds) = timed(|| {
        pieces.par_iter().map(|p| tiktoken.encode_ordinary(p)).collect::<Vec<_>>().concat()
    });
    rows.push(speed_row("tiktoken-rs gpt2, all threads", mb, seconds, parallel.len()));
    // encode_ordinary reads special tokens as text: ids are comparable only without them.
    let has_specials = args.specials.iter().any(|s| text.contains(s.as_str()));
    if !has_specials && gpt2_ids != tiktoken_ids {
        bail!("kiln's ids with the gpt2 vocabulary differ from tiktoken-rs's on this text");
    }
    eprintln!(
        "kiln: gpt2-vocabulary ids {}",
        if has_specials {
            "not compared (the text holds special tokens)"
        } else {
            "identical to tiktoken-rs"
        }
    );
    Ok(rows)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed().as_secs_f64())
}

fn speed_row(what: &str, mb: f64, seconds: f64, tokens: usize) -> Row {
    Row {
        what: what.into(),
        seconds: Some(seconds),
        peak_mb: None,
        mb_per_s: Some(mb / seconds),
        note: format!("{tokens} tokens"),
    }
}

/// Single-threaded and parallel encode of `text`; returns the ids.
fn encode_rows(rows: &mut Vec<Row>, what: &str, text: &str, tok: &BpeTokenizer) -> Vec<u32> {
    let mb = text.len() as f64 / 1e6;
    let (ids, seconds) = timed(|| tok.encode_single_thread(text));
    rows.push(speed_row(&format!("{what}, 1 thread"), mb, seconds, ids.len()));
    let (parallel, seconds) = timed(|| tok.encode_text(text));
    if parallel != ids {
        eprintln!("kiln: warning: {what}: the parallel encode differs from the serial one (a bug; please report it)");
    }
    rows.push(speed_row(&format!("{what}, all threads"), mb, seconds, parallel.len()));
    ids
}

#[derive(Deserialize)]
struct HfFigures {
    train_seconds: f64,
    peak_rss_mb: f64,
    baseline_rss_mb: f64,
    vocab_size: usize,
    encode_seconds: f64,
    encode_batch_seconds: f64,
    tokens: usize,
    version: String,
}

fn hugging_face(args: &TokenizerBenchArgs) -> Result<Vec<Row>> {
    let python = args.python.clone().unwrap_or_else(default_python);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/hf_tokenizers_bench.py");
    let mut command = Command::new(&python);
    command.arg(&script).arg("--vocab-size").arg(args.vocab_size.to_string());
    for special in &args.specials {
        command.arg("--special").arg(special);
    }
    command.args(&args.input);
    eprintln!("kiln: running Hugging Face tokenizers ({} {})", python.display(), script.display());
    let out =
        command.output().with_context(|| format!("--compare-hf: running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "--compare-hf: {} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let hf: HfFigures =
        serde_json::from_slice(&out.stdout).context("--compare-hf: reading the script's JSON")?;
    let mb =
        args.input.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum::<u64>()
            as f64
            / 1e6;
    Ok(vec![
        Row {
            what: format!("HF tokenizers {} train", hf.version),
            seconds: Some(hf.train_seconds),
            peak_mb: Some(hf.peak_rss_mb),
            mb_per_s: Some(mb / hf.train_seconds),
            note: format!("vocab {}; Python baseline {:.0} MB", hf.vocab_size, hf.baseline_rss_mb),
        },
        speed_row("HF encode, own vocab, 1 thread", mb, hf.encode_seconds, hf.tokens),
        speed_row(
            "HF encode_batch, own vocab, all threads",
            mb,
            hf.encode_batch_seconds,
            hf.tokens,
        ),
    ])
}

fn default_python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        "python3".into()
    }
}

fn print_rows(rows: &[Row]) {
    let mut table = Table::new(&["", "seconds", "peak MB", "MB/s", "note"]);
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for row in rows {
        table.row(vec![
            row.what.clone(),
            fmt(row.seconds, 2),
            fmt(row.peak_mb, 0),
            fmt(row.mb_per_s, 1),
            row.note.clone(),
        ]);
    }
    table.print();
}
