//! # gemfilter-serve
//!
//! An OpenAI-compatible HTTP server over one [`Engine`]: `POST /v1/chat/completions`,
//! `POST /v1/completions` (both with `stream: true` as server-sent events in OpenAI's chunk
//! format), `GET /v1/models`, `GET /health`. Each request may pick its method with extra fields
//! (`method`: `gemfilter` (default) with `top_k`, `filter_layer`, `selector`; `full`; `snapkv` /
//! `h2o` with `budget`). Follow-up questions over the same document reuse the selection pass's
//! early layers through the engine's prefix cache.
//!
//! ```no_run
//! use std::sync::Arc;
//! use gemfilter_models::{Engine, EngineConfig, Model};
//! use gemfilter_models::burn::tensor::Device;
//! use gemfilter_serve::{ServeConfig, router};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Model::load("SmolLM2-135M-Instruct.Q4_1.gguf", &Device::default())?;
//! let engine = Arc::new(Engine::start(model, EngineConfig::default()));
//! let app = router(engine, ServeConfig::new("smollm2"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod error;
mod routes;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use gemfilter_models::Engine;

pub use api::Defaults;
pub use error::ApiError;

/// What the server answers with and how it guards itself.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The id clients name the model by (`GET /v1/models`, the requests' `model`).
    pub model_id: String,
    /// When set, `/v1/*` requests need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest request body accepted (bytes); larger ones get a 413.
    pub max_body_bytes: usize,
    /// Method settings a request leaves out.
    pub defaults: Defaults,
    /// `Retry-After` seconds of a 503 when the queue is full.
    pub retry_after_seconds: u64,
    /// Print one line per request on stderr.
    pub log_requests: bool,
}

impl ServeConfig {
    /// Defaults: no key, 16 MiB bodies, GemFilter with k = 1024 at the model's filter layer
    /// with the paper's selector, 256 new tokens.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            api_key: None,
            max_body_bytes: 16 << 20,
            defaults: Defaults {
                top_k: 1024,
                filter_layer: None,
                selector: "gemfilter".into(),
                max_tokens: 256,
            },
            retry_after_seconds: 2,
            log_requests: false,
        }
    }
}

/// Shared by every handler.
pub(crate) struct AppState {
    pub engine: Arc<Engine>,
    pub config: ServeConfig,
    pub created: u64,
}

/// The server's routes over `engine`.
pub fn router(engine: Arc<Engine>, config: ServeConfig) -> Router {
    let limit = config.max_body_bytes;
    let state = Arc::new(AppState {
        engine,
        config,
        created: unix_seconds(),
    });
    Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{id}", get(routes::model))
        .route("/health", get(routes::health))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
