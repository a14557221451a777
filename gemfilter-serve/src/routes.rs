//! The handlers: authentication, parsing, submission to the engine, responses and streams.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use gemfilter_core::{CancelFlag, FinishReason};
use gemfilter_models::{Answer, EngineEvent, SubmitError};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::api::{self, ChatRequest, CompletionRequest, Prepared};
use crate::error::ApiError;
use crate::{AppState, unix_seconds};

type Shared = State<Arc<AppState>>;

/// Which endpoint a response is shaped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

/// Raises the request's cancel flag when dropped before [`disarm`](Self::disarm): a client that
/// disconnects drops the handler (or the stream), which stops the generation. Says so on stderr
/// when `log` names the request.
struct CancelOnDrop {
    flag: Option<CancelFlag>,
    log: Option<String>,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.flag = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.flag.take() {
            flag.cancel();
            if let Some(id) = &self.log {
                eprintln!("{id} cancelled: the client disconnected");
            }
        }
    }
}

pub(crate) async fn chat_completions(
    State(app): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        authorize(&app, &headers)?;
        let body = body_bytes(body)?;
        let request: ChatRequest = api::parse(&body)?;
        check_model(&app, request.params.model.as_deref())?;
        let model = app.engine.model();
        let ids = api::chat_prompt(model, &request.messages)?;
        let prepared = api::prepare(
            model,
            ids,
            "messages",
            &request.params,
            &app.config.defaults,
        )?;
        respond(&app, prepared, Endpoint::Chat).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn completions(
    State(app): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        authorize(&app, &headers)?;
        let body = body_bytes(body)?;
        let request: CompletionRequest = api::parse(&body)?;
        check_model(&app, request.params.model.as_deref())?;
        let model = app.engine.model();
        let ids = api::completion_prompt(model, &request.prompt)?;
        let prepared = api::prepare(model, ids, "prompt", &request.params, &app.config.defaults)?;
        respond(&app, prepared, Endpoint::Completion).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn models(State(app): Shared, headers: HeaderMap) -> Response {
    if let Err(error) = authorize(&app, &headers) {
        return error.into_response();
    }
    Json(json!({ "object": "list", "data": [model_card(&app)] })).into_response()
}

pub(crate) async fn model(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = authorize(&app, &headers).and_then(|_| check_model(&app, Some(&id)));
    match result {
        Ok(()) => Json(model_card(&app)).into_response(),
        Err(error) => error.into_response(),
    }
}

pub(crate) async fn health(State(app): Shared) -> Response {
    let stats = app.engine.stats();
    Json(json!({
        "status": "ok",
        "model": app.config.model_id,
        "engine": stats,
    }))
    .into_response()
}

pub(crate) async fn not_found() -> Response {
    ApiError::not_found(
        "no such route (POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health)",
        "not_found",
    )
    .into_response()
}

pub(crate) async fn method_not_allowed() -> Response {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::invalid("this route does not accept that HTTP method", None)
    }
    .into_response()
}

fn model_card(app: &AppState) -> Value {
    let model = app.engine.model();
    let config = model.decoder().config();
    json!({
        "id": app.config.model_id,
        "object": "model",
        "created": app.created,
        "owned_by": "gemfilter-rs",
        "context_length": config.max_position_embeddings,
        "architecture": model.info().architecture.name(),
        "layers": config.num_layers,
        "filter_layer": app.config.defaults.filter_layer.unwrap_or(model.info().filter_layer.layer),
    })
}

fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.config.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => Err(ApiError::unauthorized(
            "missing API key: send `Authorization: Bearer <key>`",
        )),
        Some(given) if constant_time_eq(given.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("incorrect API key")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                status,
                code: Some("request_too_large"),
                ..ApiError::invalid(
                    "the request body exceeds this server's limit (--max-body-mib)",
                    None,
                )
            }
        } else {
            ApiError::invalid(format!("cannot read the request body: {rejection}"), None)
        }
    })
}

fn check_model(app: &AppState, requested: Option<&str>) -> Result<(), ApiError> {
    match requested {
        None => Ok(()),
        Some(id) if id == app.config.model_id => Ok(()),
        Some(id) => Err(ApiError::not_found(
            format!(
                "the model `{id}` does not exist; this server serves `{}`",
                app.config.model_id
            ),
            "model_not_found",
        )),
    }
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Submits a prepared request and answers it, whole or streamed.
async fn respond(
    app: &Arc<AppState>,
    prepared: Prepared,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let Prepared {
        prompt_ids,
        request,
        stream,
        include_usage,
        method,
    } = prepared;
    let prompt_tokens = prompt_ids.len();
    let (sender, events) = unbounded_channel();
    let cancel = app
        .engine
        .submit(prompt_ids, request, move |event| sender.send(event).is_ok())
        .map_err(|error| match error {
            SubmitError::QueueFull { .. } => {
                ApiError::overloaded(error.to_string(), app.config.retry_after_seconds)
            }
            SubmitError::ShuttingDown => {
                ApiError::overloaded(error.to_string(), app.config.retry_after_seconds)
            }
        })?;
    let number = REQUESTS.fetch_add(1, Ordering::Relaxed);
    let meta = ResponseMeta {
        id: format!(
            "{}-{number}-{}",
            if endpoint == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            unix_seconds()
        ),
        created: unix_seconds(),
        model: app.config.model_id.clone(),
        endpoint,
        method,
        prompt_tokens,
        log: app.config.log_requests,
        received: Instant::now(),
    };
    let guard = CancelOnDrop {
        flag: Some(cancel),
        log: meta.log.then(|| meta.id.clone()),
    };
    if stream {
        Ok(stream_response(events, guard, meta, include_usage))
    } else {
        whole_response(events, guard, meta).await
    }
}

/// Facts every response of one request carries.
struct ResponseMeta {
    id: String,
    created: u64,
    model: String,
    endpoint: Endpoint,
    method: &'static str,
    prompt_tokens: usize,
    log: bool,
    received: Instant,
}

impl ResponseMeta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn usage(&self, answer: &Answer) -> Value {
        let generation = &answer.generation;
        let completion = generation.tokens.len();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "kept_tokens": generation.kept_tokens,
            "prompt_tokens_details": { "cached_tokens": generation.reused_tokens },
        })
    }

    /// This server's extension: how the answer was computed.
    fn details(&self, answer: &Answer) -> Value {
        let g = &answer.generation;
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        json!({
            "method": self.method,
            "filter_layer": answer.filter_layer,
            "top_k": answer.top_k,
            "kept_tokens": g.kept_tokens,
            "reused_tokens": g.reused_tokens,
            "selection_skipped": g.selection_skipped,
            "timings_ms": {
                "select": ms(g.timings.select),
                "prefill": ms(g.timings.prefill),
                "time_to_first_token": ms(g.timings.time_to_first_token()),
                "decode": ms(g.timings.decode),
            },
        })
    }

    fn log(&self, outcome: &Result<Answer, ApiError>) {
        if !self.log {
            return;
        }
        let elapsed = self.received.elapsed().as_secs_f64();
        match outcome {
            Ok(answer) => {
                let g = &answer.generation;
                eprintln!(
                    "{} {} prompt {} kept {} reused {} ttft {:.3}s tokens {} total {elapsed:.3}s",
                    self.id,
                    self.method,
                    self.prompt_tokens,
                    g.kept_tokens,
                    g.reused_tokens,
                    g.timings.time_to_first_token().as_secs_f64(),
                    g.tokens.len()
                );
            }
            Err(error) => eprintln!(
                "{} {} error {}: {} ({elapsed:.3}s)",
                self.id,
                self.method,
                error.status.as_u16(),
                error.message
            ),
        }
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::Stopped => "stop",
        FinishReason::MaxNewTokens | FinishReason::ContextFull => "length",
    }
}

/// Waits for the answer and returns it as one JSON body.
async fn whole_response(
    mut events: UnboundedReceiver<EngineEvent>,
    mut guard: CancelOnDrop,
    meta: ResponseMeta,
) -> Result<Response, ApiError> {
    let outcome = loop {
        match events.recv().await {
            Some(EngineEvent::Done(result)) => break result.map_err(ApiError::from),
            Some(_) => continue,
            None => break Err(ApiError::internal("the engine stopped before answering")),
        }
    };
    guard.disarm();
    meta.log(&outcome);
    let answer = outcome?;
    let reason = finish_reason(answer.generation.finish_reason);
    let choice = match meta.endpoint {
        Endpoint::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": answer.text },
            "finish_reason": reason,
            "logprobs": null,
        }),
        Endpoint::Completion => json!({
            "index": 0,
            "text": answer.text,
            "finish_reason": reason,
            "logprobs": null,
        }),
    };
    Ok(Json(json!({
        "id": meta.id,
        "object": meta.object(false),
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": meta.usage(&answer),
        "gemfilter": meta.details(&answer),
    }))
    .into_response())
}

/// State of one stream: events still to send, and the guard that cancels on drop.
struct Streaming {
    events: UnboundedReceiver<EngineEvent>,
    pending: VecDeque<Event>,
    guard: CancelOnDrop,
    meta: ResponseMeta,
    include_usage: bool,
    done: bool,
}

impl Streaming {
    fn chunk(&self, delta: Option<&str>, role: bool, finish: Option<&str>) -> Event {
        let choice = match self.meta.endpoint {
            Endpoint::Chat => {
                let mut d = serde_json::Map::new();
                if role {
                    d.insert("role".into(), json!("assistant"));
                }
                if let Some(text) = delta {
                    d.insert("content".into(), json!(text));
                }
                json!({ "index": 0, "delta": d, "finish_reason": finish, "logprobs": null })
            }
            Endpoint::Completion => json!({
                "index": 0,
                "text": delta.unwrap_or(""),
                "finish_reason": finish,
                "logprobs": null,
            }),
        };
        self.event(json!([choice]), None)
    }

    fn event(&self, choices: Value, usage: Option<Value>) -> Event {
        let mut body = json!({
            "id": self.meta.id,
            "object": self.meta.object(true),
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        Event::default().data(body.to_string())
    }

    /// Turns one engine event into the SSE events it produces.
    fn handle(&mut self, event: Option<EngineEvent>) {
        match event {
            Some(EngineEvent::Started { .. }) => {
                if self.meta.endpoint == Endpoint::Chat {
                    let first = self.chunk(Some(""), true, None);
                    self.pending.push_back(first);
                }
            }
            Some(EngineEvent::Delta(delta)) => {
                if !delta.text.is_empty() {
                    let chunk = self.chunk(Some(&delta.text), false, None);
                    self.pending.push_back(chunk);
                }
            }
            Some(EngineEvent::Done(result)) => {
                let outcome = result.map_err(ApiError::from);
                self.guard.disarm();
                self.meta.log(&outcome);
                match outcome {
                    Ok(answer) => {
                        let reason = finish_reason(answer.generation.finish_reason);
                        let last = self.final_chunk(reason, &answer);
                        self.pending.push_back(last);
                        if self.include_usage {
                            let usage = self.event(json!([]), Some(self.meta.usage(&answer)));
                            self.pending.push_back(usage);
                        }
                    }
                    Err(error) => {
                        self.pending
                            .push_back(Event::default().data(error.body().to_string()));
                    }
                }
                self.pending.push_back(Event::default().data("[DONE]"));
                self.done = true;
            }
            None => {
                let error = ApiError::internal("the engine stopped before answering");
                self.meta.log(&Err(error.clone()));
                self.pending
                    .push_back(Event::default().data(error.body().to_string()));
                self.pending.push_back(Event::default().data("[DONE]"));
                self.done = true;
            }
        }
    }

    /// The chunk with the finish reason; it carries this server's `gemfilter` extension.
    fn final_chunk(&self, reason: &str, answer: &Answer) -> Event {
        let choice = match self.meta.endpoint {
            Endpoint::Chat => {
                json!({ "index": 0, "delta": {}, "finish_reason": reason, "logprobs": null })
            }
            Endpoint::Completion => {
                json!({ "index": 0, "text": "", "finish_reason": reason, "logprobs": null })
            }
        };
        let body = json!({
            "id": self.meta.id,
            "object": self.meta.object(true),
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [choice],
            "gemfilter": self.meta.details(answer),
        });
        Event::default().data(body.to_string())
    }
}

fn stream_response(
    events: UnboundedReceiver<EngineEvent>,
    guard: CancelOnDrop,
    meta: ResponseMeta,
    include_usage: bool,
) -> Response {
    let state = Streaming {
        events,
        pending: VecDeque::new(),
        guard,
        meta,
        include_usage,
        done: false,
    };
    let events = stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), state));
            }
            if state.done {
                return None;
            }
            let next = state.events.recv().await;
            state.handle(next);
        }
    });
    sse(events)
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    // Comments every few seconds while a long prompt is read: proxies keep the connection, and
    // a client that left is noticed (the write fails, the stream is dropped, the work stops).
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(3)))
        .into_response()
}
