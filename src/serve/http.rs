//! The routes: the OpenAI endpoints, `/health` and the page at `/`. Every handler reads
//! and checks its request, hands a [`Job`] to the engine and answers from its events, whole
//! or as server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::engine::{Event, Finish, Job, Stats};
use super::error::ApiError;
use super::request::{json_object, ChatRequest, CompletionRequest, Settings};
use super::response::{Endpoint, Shape, Usage};
use crate::config::PromptTemplate;
use crate::generate::{check_fits, Conversation, Sampling, SamplingError};
use crate::tokenizer::Tokenizer;

const NO_SUCH_ENDPOINT: &str = "no such endpoint: the API is GET /v1/models, POST \
     /v1/completions and POST /v1/chat/completions, with GET /health and the page at /";

/// The largest request body read, in bytes.
pub const MAX_BODY: usize = 1 << 20;

/// What the handlers know of the model the engine runs.
pub struct ModelInfo {
    /// The run's name: the model id clients pass.
    pub id: String,
    pub created: u64,
    pub tokenizer: Arc<dyn Tokenizer>,
    pub template: PromptTemplate,
    /// The token that ends a reply (`<|endoftext|>`), if the tokenizer has one.
    pub end: Option<u32>,
    pub block_size: usize,
}

struct AppState {
    model: ModelInfo,
    jobs: Mutex<Sender<Job>>,
    stats: Arc<Stats>,
}

pub fn router(model: ModelInfo, jobs: Sender<Job>, stats: Arc<Stats>) -> Router {
    let state = Arc::new(AppState { model, jobs: Mutex::new(jobs), stats });
    Router::new()
        .route("/", get(|| async { Html(include_str!("page.html")) }))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(one_model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|| async {
            ApiError::invalid(None, NO_SUCH_ENDPOINT).with_status(StatusCode::NOT_FOUND)
        })
        .method_not_allowed_fallback(|| async {
            ApiError::invalid(None, "this endpoint does not take that method")
                .with_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .with_state(state)
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"status": "ok", "model": state.model.id, "engine": state.stats.json()}))
}

fn model_json(model: &ModelInfo) -> Value {
    json!({"id": model.id, "object": "model", "created": model.created, "owned_by": "kiln"})
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_json(&state.model)]}))
}

async fn one_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.model.check_id(&id) {
        Ok(()) => Json(model_json(&state.model)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let prepared = async {
        let request = CompletionRequest::parse(json_object(&read(body).await?)?)?;
        let model = &state.model;
        model.check_id(&request.settings.model)?;
        let prompt = model.encode(&request.prompt, "prompt")?;
        Ok::<_, ApiError>((request.settings, prompt, Vec::new()))
    };
    match prepared.await {
        Ok((settings, prompt, stops)) => {
            answer(&state, Endpoint::Completions, settings, prompt, stops).await
        }
        Err(e) => e.into_response(),
    }
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let prepared = async {
        let request = ChatRequest::parse(json_object(&read(body).await?)?)?;
        let model = &state.model;
        model.check_id(&request.settings.model)?;
        let prompt = model.chat_prompt(&request)?;
        Ok::<_, ApiError>((request.settings, prompt, model.template.turn_markers()))
    };
    match prepared.await {
        Ok((settings, prompt, stops)) => {
            answer(&state, Endpoint::Chat, settings, prompt, stops).await
        }
        Err(e) => e.into_response(),
    }
}

/// The body, refused with 413 beyond [`MAX_BODY`].
async fn read(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::invalid(None, format!("the request body is over {MAX_BODY} bytes"))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    })
}

impl ModelInfo {
    fn check_id(&self, id: &str) -> Result<(), ApiError> {
        if id == self.id {
            return Ok(());
        }
        Err(ApiError::invalid(
            Some("model"),
            format!("the model `{id}` does not exist: this server serves `{}`", self.id),
        )
        .with_code("model_not_found")
        .with_status(StatusCode::NOT_FOUND))
    }

    fn encode(&self, text: &str, param: &str) -> Result<Vec<u32>, ApiError> {
        self.tokenizer.encode(text).map_err(|e| ApiError::invalid(Some(param), e.to_string()))
    }

    /// The conversation's tokens: the latest exchanges that leave room for the message and
    /// the reply, then the message in the template.
    fn chat_prompt(&self, request: &ChatRequest) -> Result<Vec<u32>, ApiError> {
        let Some(end) = self.end else {
            return Err(ApiError::invalid(
                Some("messages"),
                "this model's tokenizer has no <|endoftext|> token to end a reply with: use \
                 /v1/completions",
            ));
        };
        let tokenizer = self.tokenizer.as_ref();
        let template = self.template.clone();
        let chat = Conversation::with_history(tokenizer, template, end, &request.history)
            .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
        let room = request.settings.max_tokens.unwrap_or(self.block_size / 2);
        chat.prompt(&request.message, "", self.block_size, room.min(self.block_size)).map_err(|e| {
            ApiError::invalid(Some("messages"), e.to_string()).with_code("context_length_exceeded")
        })
    }

    /// One sampling per choice, checked against the model's context.
    fn samplings(&self, settings: &Settings, prompt: usize) -> Result<Vec<Sampling>, ApiError> {
        let max_new_tokens =
            settings.max_tokens.unwrap_or(self.block_size.saturating_sub(prompt).max(1));
        let seed = settings.seed.unwrap_or_else(rand::random);
        let sampling = Sampling {
            max_new_tokens,
            temperature: settings.temperature,
            top_k: settings.top_k,
            top_p: settings.top_p,
            seed,
        };
        check_fits(prompt, &sampling, self.block_size).map_err(|e| match e {
            SamplingError::EmptyPrompt => ApiError::invalid(Some("prompt"), e.to_string()),
            SamplingError::ContextLength { .. } | SamplingError::MaxNewTokens(_) => {
                ApiError::invalid(Some("max_tokens"), e.to_string())
                    .with_code("context_length_exceeded")
            }
            e => ApiError::invalid(Some(e.setting()), e.to_string()),
        })?;
        Ok((0..settings.n as u64)
            .map(|i| Sampling { seed: seed.wrapping_add(i), ..sampling.clone() })
            .collect())
    }
}

/// Hands the request to the engine and answers, whole or streamed.
async fn answer(
    state: &AppState,
    endpoint: Endpoint,
    settings: Settings,
    prompt: Vec<u32>,
    mut stops: Vec<String>,
) -> Response {
    let choices = match state.model.samplings(&settings, prompt.len()) {
        Ok(choices) => choices,
        Err(e) => return e.into_response(),
    };
    stops.extend(settings.stops.iter().cloned());
    let (events, receiver) = unbounded_channel();
    let usage = Usage { prompt: prompt.len(), completion: 0 };
    let job = Job { prompt, choices, stops, end: state.model.end, events };
    let sent = state.jobs.lock().map_err(|_| ()).and_then(|jobs| jobs.send(job).map_err(|_| ()));
    if sent.is_err() {
        return ApiError::invalid(None, "the server is shutting down")
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .into_response();
    }
    let shape = Shape::new(endpoint, &state.model.id);
    let replies = Replies { receiver, texts: vec![(String::new(), None); settings.n], usage };
    match settings.stream {
        true => stream(Streamed::new(shape, replies, settings.include_usage)).into_response(),
        false => whole(shape, replies).await,
    }
}

/// What the engine has sent for a request so far.
struct Replies {
    receiver: UnboundedReceiver<Event>,
    texts: Vec<(String, Option<Finish>)>,
    usage: Usage,
}

impl Replies {
    /// The next event, recorded; `None` once every choice has ended.
    async fn next(&mut self) -> Option<Result<Event, String>> {
        if self.texts.iter().all(|(_, finish)| finish.is_some()) {
            return None;
        }
        let Some(event) = self.receiver.recv().await else {
            return Some(Err("the model stopped before the reply ended".into()));
        };
        match &event {
            Event::Text { choice, text } => self.texts[*choice].0.push_str(text),
            Event::Done { choice, finish, tokens } => {
                self.texts[*choice].1 = Some(*finish);
                self.usage.completion += tokens;
            }
            Event::Failed(message) => return Some(Err(message.clone())),
        }
        Some(Ok(event))
    }
}

/// The whole reply once every choice has ended.
async fn whole(shape: Shape, mut replies: Replies) -> Response {
    while let Some(event) = replies.next().await {
        if let Err(message) = event {
            return ApiError::invalid(None, message)
                .with_status(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response();
        }
    }
    let choices: Vec<(String, Finish)> = replies
        .texts
        .into_iter()
        .map(|(text, finish)| (text, finish.unwrap_or(Finish::Length)))
        .collect();
    Json(shape.whole(&choices, replies.usage)).into_response()
}

/// A reply as server-sent events: (for chat) who speaks, a chunk per piece of text, one per
/// ended choice, the usage when asked for, then `[DONE]`.
struct Streamed {
    shape: Shape,
    replies: Replies,
    include_usage: bool,
    queue: VecDeque<String>,
    ended: bool,
}

impl Streamed {
    fn new(shape: Shape, replies: Replies, include_usage: bool) -> Self {
        let mut queue = VecDeque::new();
        if shape.endpoint == Endpoint::Chat {
            queue.extend((0..replies.texts.len()).map(|i| shape.role_chunk(i).to_string()));
        }
        Self { shape, replies, include_usage, queue, ended: false }
    }

    async fn next_data(&mut self) -> Option<String> {
        while self.queue.is_empty() && !self.ended {
            match self.replies.next().await {
                Some(Ok(Event::Text { choice, text })) => {
                    self.queue.push_back(self.shape.chunk(choice, &text, None).to_string())
                }
                Some(Ok(Event::Done { choice, finish, .. })) => {
                    self.queue.push_back(self.shape.chunk(choice, "", Some(finish)).to_string())
                }
                Some(Ok(Event::Failed(message)) | Err(message)) => {
                    let error = ApiError::invalid(None, message)
                        .with_status(StatusCode::INTERNAL_SERVER_ERROR);
                    self.end(Some(error.body().to_string()));
                }
                None => {
                    let usage = self.include_usage.then_some(self.replies.usage);
                    self.end(usage.map(|u| self.shape.usage_chunk(u).to_string()));
                }
            }
        }
        self.queue.pop_front()
    }

    fn end(&mut self, last: Option<String>) {
        self.queue.extend(last);
        self.queue.push_back("[DONE]".into());
        self.ended = true;
    }
}

fn stream(streamed: Streamed) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let events = futures_util::stream::unfold(streamed, |mut streamed| async move {
        let data = streamed.next_data().await?;
        Some((Ok(SseEvent::default().data(data)), streamed))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
