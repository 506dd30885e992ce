//! `kiln chat`

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::generate::{as_flag, gpt_run_dir, SamplingArgs};
use crate::backend::ForwardJob;
use crate::config::{DataKind, PromptTemplate, RunSpec};
use crate::generate::{ChatError, Conversation, Sampling, Utf8Stream};
use crate::kernels::KernelBackend;
use crate::model::Gpt;
use crate::run::{describe_weights, open_run, run_tokenizer, RunDir};
use crate::tokenizer::{Tokenizer, END_OF_TEXT};

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Run directory (an instruction-finetuned GPT); the most recently finished GPT run under
    /// artifacts/ when left out.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// A checkpoint file of the run instead of its final model.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Prompt template: alpaca, phi3 or a text with {instruction}; defaults to the one the run
    /// was finetuned with.
    #[arg(long, value_name = "TEMPLATE")]
    template: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    backend: super::BackendArg,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let (run, spec) = open_run(&gpt_run_dir(args.run.as_ref())?)?;
    crate::run::load::gpt_spec(&spec, "chat")?;
    let sampling = args.sampling.sampling()?;
    let template = run_template(&run, &spec, args.template.as_deref())?;
    let estimate = crate::memory::generation(&spec.model, spec.vocab_size(), 1);
    crate::memory::check_generation(estimate, "chatting")?;
    let tokenizer = run_tokenizer(&run, &spec)?;
    let Some(end) = tokenizer.special_id(END_OF_TEXT) else {
        bail!(
            "{}: its tokenizer has no {END_OF_TEXT} token to end a reply with; chat with a run \
             finetuned on instructions",
            run.root().display()
        );
    };
    let backend = args.backend.section(&spec)?;
    let weights = super::RunWeights { run, spec, checkpoint: args.checkpoint };
    crate::backend::dispatch(&backend, Chat { weights, template, end, sampling, tokenizer })?
}

/// The prompt template `--template` names, else the one the run was finetuned with, else
/// Alpaca's (said on stderr).
pub(super) fn run_template(
    run: &RunDir,
    spec: &RunSpec,
    flag: Option<&str>,
) -> Result<PromptTemplate> {
    Ok(match flag {
        Some(text) => {
            PromptTemplate::parse(text).map_err(|e| anyhow::anyhow!("--template: {e}"))?
        }
        None if matches!(spec.data.kind, DataKind::Instructions | DataKind::Preferences) => {
            spec.data.template.clone()
        }
        None => {
            eprintln!(
                "kiln: {} was not finetuned on instructions (data.kind = \"{}\"); chatting with \
                 the alpaca template",
                run.root().display(),
                spec.data.kind
            );
            PromptTemplate::Alpaca
        }
    })
}

struct Chat {
    weights: super::RunWeights,
    template: PromptTemplate,
    end: u32,
    sampling: Sampling,
    tokenizer: Box<dyn Tokenizer>,
}

impl ForwardJob for Chat {
    type Output = Result<()>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<()> {
        let (model, path) = self.weights.gpt::<B>(&device)?;
        let terminal = std::io::stdin().is_terminal();
        if terminal {
            eprintln!(
                "kiln: chatting with {} (/reset forgets the conversation, Ctrl-D quits)",
                describe_weights(&self.weights.run, &path)
            );
        }
        let mut chat = Conversation::new(self.tokenizer.as_ref(), self.template.clone(), self.end);
        let mut lines = std::io::stdin().lock().lines();
        for turn in 0u64.. {
            if terminal {
                eprint!("you> ");
                let _ = std::io::stderr().flush();
            }
            let Some(line) = lines.next().transpose().context("reading a message")? else {
                break;
            };
            match line.trim() {
                "" => continue,
                "/quit" | "/exit" => break,
                "/reset" => {
                    chat.reset();
                    continue;
                }
                message => self.answer(&model, &mut chat, message, turn)?,
            }
        }
        Ok(())
    }
}

impl Chat {
    /// Streams the reply to one message to stdout.
    fn answer<B: KernelBackend>(
        &self,
        model: &Gpt<B>,
        chat: &mut Conversation,
        message: &str,
        turn: u64,
    ) -> Result<()> {
        let sampling =
            Sampling { seed: self.sampling.seed.wrapping_add(turn), ..self.sampling.clone() };
        let mut out = Utf8Stream::stdout();
        match chat.reply(model, message, "", &sampling, |bytes| out.push(bytes)) {
            Ok(_) => {}
            Err(ChatError::Sampling(e)) => return Err(as_flag(e)),
            // A message the tokenizer or the block cannot take ends this turn, not the chat.
            Err(e) => eprintln!("kiln: {e}"),
        }
        out.push(b"\n");
        out.finish();
        Ok(())
    }
}
