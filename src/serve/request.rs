//! OpenAI request bodies, read field by field so that every refusal names its field:
//! `/v1/completions` and `/v1/chat/completions`.
//!
//! What kiln does not implement is refused rather than ignored (OpenAI refuses arguments it
//! does not know, too); a parameter whose default kiln implements may be sent with it.

use serde_json::{Map, Value};

use super::error::ApiError;

/// The largest `n` (choices of one request).
pub const MAX_CHOICES: usize = 16;
/// The most stop strings a request may give, as OpenAI allows.
const MAX_STOPS: usize = 4;

/// What the two endpoints share.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub model: String,
    pub max_tokens: Option<usize>,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    pub n: usize,
    pub stops: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the token counts.
    pub include_usage: bool,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub settings: Settings,
    pub prompt: String,
}

/// `POST /v1/chat/completions`: the earlier exchanges and the message to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub settings: Settings,
    /// (user message, assistant reply), oldest first; system messages lead the first one.
    pub history: Vec<(String, String)>,
    pub message: String,
}

/// The body as JSON, refused with where it stops being JSON.
pub fn json_object(body: &[u8]) -> Result<Fields, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(Fields { map }),
        other => Err(ApiError::invalid(
            None,
            format!("the request body is JSON {}; expected an object", kind(&other)),
        )),
    }
}

impl CompletionRequest {
    pub fn parse(mut fields: Fields) -> Result<Self, ApiError> {
        let prompt = match fields.take("prompt") {
            Some(Value::String(text)) => text,
            Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
                items[0].as_str().unwrap_or_default().to_string()
            }
            Some(Value::Array(_)) => {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    "a list of prompts (or of token ids) is not supported: send one string \
                     per request",
                ))
            }
            Some(other) => return Err(fields.wrong("prompt", &other, "a string")),
            None => return Err(ApiError::missing("prompt")),
        };
        fields.unsupported("echo", |v| v == &Value::Bool(false))?;
        fields.unsupported("best_of", |v| v.as_f64() == Some(1.0))?;
        fields.unsupported("logprobs", |v| v.as_f64() == Some(0.0))?;
        let settings = fields.settings("max_tokens")?;
        Ok(Self {
            settings: Settings { max_tokens: settings.max_tokens.or(Some(16)), ..settings },
            prompt,
        })
    }
}

impl ChatRequest {
    pub fn parse(mut fields: Fields) -> Result<Self, ApiError> {
        let Some(messages) = fields.take("messages") else {
            return Err(ApiError::missing("messages"));
        };
        let Value::Array(messages) = messages else {
            return Err(fields.wrong("messages", &messages, "an array of messages"));
        };
        let (history, message) = conversation(&messages)?;
        fields.unsupported("logprobs", |v| v == &Value::Bool(false))?;
        let mut max = "max_tokens";
        if fields.map.contains_key("max_completion_tokens") {
            if fields.map.get("max_tokens").is_some_and(|v| !v.is_null()) {
                return Err(ApiError::invalid(
                    Some("max_completion_tokens"),
                    "give max_tokens or max_completion_tokens, not both",
                ));
            }
            max = "max_completion_tokens";
        }
        Ok(Self { settings: fields.settings(max)?, history, message })
    }
}

/// The messages as exchanges: user turns answered by the assistant turn after them, and
/// the last user message (which must end the list). System (and developer) messages lead
/// the first user message.
fn conversation(messages: &[Value]) -> Result<(Vec<(String, String)>, String), ApiError> {
    let (mut system, mut history, mut pending) = (Vec::new(), Vec::new(), None::<String>);
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(object) = message.as_object() else {
            return Err(ApiError::invalid(
                Some(&param),
                "expected an object with role and content",
            ));
        };
        let content = content(object.get("content"), &param)?;
        match object.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => system.push(content),
            Some("user") => {
                pending = Some(match pending.take() {
                    Some(earlier) => format!("{earlier}\n\n{content}"),
                    None if history.is_empty() && !system.is_empty() => {
                        format!("{}\n\n{content}", system.join("\n\n"))
                    }
                    None => content,
                })
            }
            Some("assistant") => match pending.take() {
                Some(user) => history.push((user, content)),
                None => {
                    return Err(ApiError::invalid(
                        Some(&param),
                        "an assistant message must answer a user message before it",
                    ))
                }
            },
            other => {
                return Err(ApiError::invalid(
                    Some(&format!("{param}.role")),
                    format!(
                        "role {}: expected system, developer, user or assistant",
                        other.map_or("missing".to_string(), |r| format!("\"{r}\""))
                    ),
                ))
            }
        }
    }
    match pending {
        Some(message) => Ok((history, message)),
        None => Err(ApiError::invalid(
            Some("messages"),
            "the last message must be a user message (the one to answer)",
        )),
    }
}

/// A message's text: a string, or an array of `{"type": "text", "text": …}` parts.
fn content(value: Option<&Value>, param: &str) -> Result<String, ApiError> {
    let param = format!("{param}.content");
    match value {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match (part.get("type").and_then(Value::as_str), part.get("text")) {
                (Some("text"), Some(Value::String(text))) => Ok(text.as_str()),
                _ => Err(ApiError::invalid(
                    Some(&param),
                    "only text parts ({\"type\": \"text\", \"text\": \"…\"}) are supported",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("\n")),
        Some(other) => {
            Err(ApiError::invalid(Some(&param), format!("is {}; expected a string", kind(other))))
        }
        None => Err(ApiError::missing(&param)),
    }
}

/// A request body's fields not read yet.
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    /// The field, absent when null (as OpenAI reads them).
    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, value: &Value, expected: &str) -> ApiError {
        ApiError::invalid(Some(key), format!("{key} is {}; expected {expected}", describe(value)))
    }

    /// Refuses `key` unless it is absent or its default (a feature kiln does not implement).
    fn unsupported(&mut self, key: &str, default: impl Fn(&Value) -> bool) -> Result<(), ApiError> {
        match self.take(key) {
            Some(value) if !default(&value) => Err(ApiError::invalid(
                Some(key),
                format!(
                    "{key} = {} is not supported by kiln serve (leave it out)",
                    describe(&value)
                ),
            )),
            _ => Ok(()),
        }
    }

    fn number(
        &mut self,
        key: &str,
        valid: impl Fn(f64) -> bool,
        range: &str,
    ) -> Result<Option<f64>, ApiError> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => match value.as_f64() {
                Some(x) if valid(x) => Ok(Some(x)),
                _ => Err(self.wrong(key, &value, range)),
            },
        }
    }

    /// A positive integer, at most `max` when given.
    fn count(&mut self, key: &str, max: Option<u64>) -> Result<Option<usize>, ApiError> {
        let expected = match max {
            Some(max) => format!("an integer from 1 to {max}"),
            None => "a positive integer".to_string(),
        };
        match self.take(key) {
            None => Ok(None),
            Some(value) => match value.as_u64() {
                Some(x) if x >= 1 && max.is_none_or(|max| x <= max) => {
                    Ok(Some(usize::try_from(x).unwrap_or(usize::MAX)))
                }
                _ => Err(self.wrong(key, &value, &expected)),
            },
        }
    }

    fn flag(&mut self, key: &str) -> Result<bool, ApiError> {
        match self.take(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(other) => Err(self.wrong(key, &other, "true or false")),
        }
    }

    /// The settings both endpoints share, then a refusal of any field left.
    fn settings(mut self, max_tokens: &str) -> Result<Settings, ApiError> {
        let model = match self.take("model") {
            Some(Value::String(model)) => model,
            Some(other) => return Err(self.wrong("model", &other, "a string")),
            None => return Err(ApiError::missing("model")),
        };
        let settings = Settings {
            max_tokens: self.count(max_tokens, None)?,
            temperature: self
                .number("temperature", |t| (0.0..=2.0).contains(&t), "a number from 0 to 2")?
                .unwrap_or(1.0),
            top_p: self
                .number("top_p", |p| p > 0.0 && p <= 1.0, "a number in (0, 1]")?
                .filter(|&p| p < 1.0),
            top_k: self.count("top_k", None)?,
            seed: self.seed()?,
            n: self.count("n", Some(MAX_CHOICES as u64))?.unwrap_or(1),
            stops: self.stops()?,
            stream: self.flag("stream")?,
            include_usage: self.stream_options()?,
            model,
        };
        if !settings.stream && settings.include_usage {
            return Err(ApiError::invalid(
                Some("stream_options"),
                "stream_options is only allowed with stream = true",
            ));
        }
        self.unsupported("presence_penalty", |v| v.as_f64() == Some(0.0))?;
        self.unsupported("frequency_penalty", |v| v.as_f64() == Some(0.0))?;
        self.unsupported("logit_bias", |v| v.as_object().is_some_and(Map::is_empty))?;
        for ignored in ["user", "metadata", "store"] {
            self.map.remove(ignored);
        }
        match self.map.keys().next() {
            Some(key) => Err(ApiError::invalid(
                Some(key),
                format!("unrecognized request argument supplied: {key}"),
            )),
            None => Ok(settings),
        }
    }

    fn seed(&mut self) -> Result<Option<u64>, ApiError> {
        match self.take("seed") {
            None => Ok(None),
            Some(value) => match (value.as_u64(), value.as_i64()) {
                (Some(seed), _) => Ok(Some(seed)),
                (None, Some(seed)) => Ok(Some(seed as u64)),
                _ => Err(self.wrong("seed", &value, "an integer")),
            },
        }
    }

    fn stops(&mut self) -> Result<Vec<String>, ApiError> {
        let stops = match self.take("stop") {
            None => return Ok(Vec::new()),
            Some(Value::String(stop)) => vec![Value::String(stop)],
            Some(Value::Array(stops)) if stops.len() <= MAX_STOPS => stops,
            Some(other) => {
                return Err(self.wrong("stop", &other, "a string or an array of up to 4 strings"))
            }
        };
        stops
            .into_iter()
            .map(|s| match s {
                Value::String(s) => Ok(s),
                other => Err(self.wrong("stop", &other, "strings")),
            })
            .collect()
    }

    fn stream_options(&mut self) -> Result<bool, ApiError> {
        match self.take("stream_options") {
            None => Ok(false),
            Some(Value::Object(mut options)) => {
                let usage = options.remove("include_usage").unwrap_or(Value::Bool(false));
                match (usage, options.keys().next()) {
                    (Value::Bool(usage), None) => Ok(usage),
                    (_, Some(key)) => Err(ApiError::invalid(
                        Some("stream_options"),
                        format!("unrecognized stream option: {key}"),
                    )),
                    (other, None) => {
                        Err(self.wrong("stream_options.include_usage", &other, "true or false"))
                    }
                }
            }
            Some(other) => Err(self.wrong("stream_options", &other, "an object")),
        }
    }
}

/// A value as an error message shows it: short values whole, long ones by their kind.
fn describe(value: &Value) -> String {
    let text = value.to_string();
    match text.chars().count() <= 40 {
        true => text,
        false => format!("{} of {} characters", kind(value), text.len()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
