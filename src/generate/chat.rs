//! Talking to an instruction-tuned GPT: each message is rendered with the run's prompt
//! template after the turns so far, and the reply is sampled until the end-of-response token
//! (or the template's next turn marker).

use std::ops::ControlFlow;

use super::{generate_until, Sampling, SamplingError, StopStrings};
use crate::config::PromptTemplate;
use crate::kernels::KernelBackend;
use crate::model::Gpt;
use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(
        "the message is {tokens} tokens with the template; the model sees {block_size} at most"
    )]
    TooLong { tokens: usize, block_size: usize },
}

/// A conversation: the template, the end-of-response token and the turns so far.
pub struct Conversation<'a> {
    tokenizer: &'a dyn Tokenizer,
    template: PromptTemplate,
    end: u32,
    /// Earlier turns, oldest first: each the prompt, the reply and the end token.
    turns: Vec<Vec<u32>>,
}

/// A reply: its text and whether it ended by itself (not cut by `max_new_tokens`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub text: String,
    pub finished: bool,
}

impl<'a> Conversation<'a> {
    pub fn new(tokenizer: &'a dyn Tokenizer, template: PromptTemplate, end: u32) -> Self {
        Self { tokenizer, template, end, turns: Vec::new() }
    }

    /// A conversation that already had `history`: (message, reply) exchanges, oldest first.
    pub fn with_history(
        tokenizer: &'a dyn Tokenizer,
        template: PromptTemplate,
        end: u32,
        history: &[(String, String)],
    ) -> Result<Self, TokenizerError> {
        let mut chat = Self::new(tokenizer, template, end);
        for (message, reply) in history {
            let mut turn = tokenizer.encode(&chat.template.render(message, ""))?;
            turn.extend(tokenizer.encode(reply)?);
            turn.push(end);
            chat.turns.push(turn);
        }
        Ok(chat)
    }

    /// The tokens a reply to `instruction` (with `input`) is sampled after: the most recent
    /// turns that leave room for its prompt and `reply_room` tokens of reply, then its prompt.
    pub fn prompt(
        &self,
        instruction: &str,
        input: &str,
        block_size: usize,
        reply_room: usize,
    ) -> Result<Vec<u32>, ChatError> {
        let prompt = self.tokenizer.encode(&self.template.render(instruction, input))?;
        self.context(&prompt, block_size, reply_room)
    }

    /// Forgets the turns so far.
    pub fn reset(&mut self) {
        self.turns.clear();
    }

    /// Answers `instruction` (with `input`, empty for none) after the turns so far, passing
    /// the reply's bytes to `on_bytes` as they are sampled; the turn joins the conversation.
    pub fn reply<B: KernelBackend>(
        &mut self,
        model: &Gpt<B>,
        instruction: &str,
        input: &str,
        sampling: &Sampling,
        mut on_bytes: impl FnMut(&[u8]),
    ) -> Result<Reply, ChatError> {
        let prompt = self.tokenizer.encode(&self.template.render(instruction, input))?;
        let block_size = model.block_size();
        let reply_room = sampling.max_new_tokens.min(block_size / 2);
        let context = self.context(&prompt, block_size, reply_room)?;
        let mut stops = StopStrings::new(&self.template.turn_markers());
        let mut decode = self.tokenizer.stream_decoder(&context);
        let (mut shown, mut ended, mut at_marker) = (Vec::new(), false, false);
        let end = self.end;
        let sampled = generate_until(model, &context, sampling, |id| {
            if id == end {
                ended = true;
                return ControlFlow::Break(());
            }
            let (ready, flow) = stops.push(&decode(id));
            on_bytes(ready);
            shown.extend_from_slice(ready);
            at_marker = flow.is_break();
            flow
        })?;
        // What the turn markers held back is the reply's unless a marker ended it.
        if !at_marker {
            let rest = stops.rest();
            on_bytes(rest);
            shown.extend_from_slice(rest);
        }
        let mut turn = prompt;
        turn.extend(sampled.iter().copied().filter(|&id| id != end));
        turn.push(end);
        self.turns.push(turn);
        let finished = ended || at_marker;
        Ok(Reply { text: String::from_utf8_lossy(&shown).into_owned(), finished })
    }

    /// The most recent turns that leave room for `prompt` and `reply_room` tokens of reply
    /// in the model's block, then `prompt`.
    fn context(
        &self,
        prompt: &[u32],
        block_size: usize,
        reply_room: usize,
    ) -> Result<Vec<u32>, ChatError> {
        if prompt.len() >= block_size {
            return Err(ChatError::TooLong { tokens: prompt.len(), block_size });
        }
        let mut budget = block_size.saturating_sub(prompt.len() + reply_room);
        let mut kept = 0;
        for turn in self.turns.iter().rev() {
            if turn.len() > budget {
                break;
            }
            budget -= turn.len();
            kept += 1;
        }
        let earlier = self.turns[self.turns.len() - kept..].iter().flatten();
        Ok(earlier.chain(prompt).copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GptConfig;
    use crate::tokenizer::CharTokenizer;

    type B = burn::backend::NdArray<f32>;

    /// Every sampled token's text reaches the reply, also the last few that were held back
    /// while they could have been the start of a turn marker, whether the reply ends at the
    /// end token or at `max_new_tokens`.
    #[test]
    fn a_reply_is_every_token_sampled() {
        let template = PromptTemplate::Alpaca;
        let tokenizer = CharTokenizer::fit(&template.render("Say hi.", ""), false);
        let vocab = tokenizer.vocab_size();
        let model = GptConfig::new(vocab, 16, 2, 1, 32, 192).init::<B>(&Default::default());
        let prompt = tokenizer.encode(&template.render("Say hi.", "")).unwrap().len();
        let reply = |end: u32, seed: u64| {
            let mut chat = Conversation::new(&tokenizer, template.clone(), end);
            let sampling =
                Sampling { max_new_tokens: 12, temperature: 1.0, top_k: None, top_p: None, seed };
            let mut streamed = Vec::new();
            let reply = chat
                .reply(&model, "Say hi.", "", &sampling, |b| streamed.extend_from_slice(b))
                .unwrap();
            let turn = chat.turns[0][prompt..].to_vec();
            (reply, String::from_utf8(streamed).unwrap(), turn)
        };
        for seed in 0..4 {
            let (whole, streamed, turn) = reply(u32::MAX, seed);
            let sampled = tokenizer.decode(&turn[..turn.len() - 1]);
            assert_eq!((whole.text.as_str(), whole.finished), (sampled.as_str(), false));
            assert_eq!(streamed, sampled);
            // The same sampling with its sixth token as the end token stops before it.
            let end = turn[5];
            let first = turn.iter().position(|&t| t == end).unwrap();
            let (cut, streamed, _) = reply(end, seed);
            let before = tokenizer.decode(&turn[..first]);
            assert_eq!((cut.text.as_str(), cut.finished), (before.as_str(), true));
            assert_eq!(streamed, before);
        }
    }
}
