//! OpenAI response bodies: whole completions, the chunks of a stream, usage.

use serde_json::{json, Value};

use super::engine::Finish;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// What every body of one response shares.
#[derive(Debug, Clone)]
pub struct Shape {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt: usize,
    pub completion: usize,
}

impl Usage {
    fn json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        })
    }
}

impl Shape {
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = format!("{prefix}-{:016x}{:08x}", rand::random::<u64>(), rand::random::<u32>());
        Self { endpoint, id, created, model: model.to_string() }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn body(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    /// The whole response: each choice's text and why it ended.
    pub fn whole(&self, choices: &[(String, Finish)], usage: Usage) -> Value {
        let choices = choices
            .iter()
            .enumerate()
            .map(|(index, (text, finish))| match self.endpoint {
                Endpoint::Completions => json!({
                    "index": index, "text": text, "logprobs": null,
                    "finish_reason": finish.reason(),
                }),
                Endpoint::Chat => json!({
                    "index": index,
                    "message": {"role": "assistant", "content": text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": finish.reason(),
                }),
            })
            .collect();
        let mut body = self.body(false, choices);
        body["usage"] = usage.json();
        body
    }

    /// A chunk of a stream: text of a choice, or its end.
    pub fn chunk(&self, index: usize, text: &str, finish: Option<Finish>) -> Value {
        let finish = finish.map(Finish::reason);
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": index, "text": text, "logprobs": null, "finish_reason": finish,
            }),
            Endpoint::Chat => {
                let delta = match finish {
                    Some(_) => json!({}),
                    None => json!({"content": text}),
                };
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        };
        self.body(true, vec![choice])
    }

    /// The first chunk of each choice of a chat stream: who is speaking.
    pub fn role_chunk(&self, index: usize) -> Value {
        let delta = json!({"role": "assistant", "content": ""});
        self.body(
            true,
            vec![json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": null})],
        )
    }

    /// The last chunk of a stream that asked for usage: no choices, the counts.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let mut body = self.body(true, Vec::new());
        body["usage"] = usage.json();
        body
    }
}
