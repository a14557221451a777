//! The OpenAI wire format: request bodies as clients send them, checked and turned into an
//! engine [`Request`]; response bodies and stream chunks.
//!
//! Fields this server does not implement are ignored when they cannot change the answer
//! (`user`, `metadata`, zero penalties) and refused with a 400 naming them when they would
//! (`n` > 1, `logprobs`, non-zero penalties, `tools`).

use std::sync::Arc;

use gemfilter_core::{HeadSharing, Sampling};
use gemfilter_models::{ChatMessage, KvMethod, Mode, Model, Request, SelectorSpec};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// Stop sequences: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Up to four sequences.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` before `[DONE]`.
    pub include_usage: Option<bool>,
}

/// Message content: a string or a list of parts (only text parts are accepted).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// `text` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageIn {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: Option<Content>,
}

/// A completion prompt: text, one text in a list, or token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    /// Text.
    Text(String),
    /// Token ids.
    Ids(Vec<u32>),
    /// A batch of texts (one supported).
    Texts(Vec<String>),
}

/// Parameters shared by both completion endpoints, with this server's method fields.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Params {
    /// The model id (optional: the served model when absent).
    pub model: Option<String>,
    /// Upper bound on generated tokens.
    pub max_tokens: Option<u64>,
    /// Newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature in [0, 2]; 0 is greedy. Default 1, as OpenAI.
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1]. Default 1.
    pub top_p: Option<f32>,
    /// Sampler seed.
    pub seed: Option<i64>,
    /// Stop sequences.
    pub stop: Option<Stop>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Number of choices (only 1).
    pub n: Option<u32>,
    /// Refused when set (not implemented).
    pub logprobs: Option<Value>,
    /// Refused when set (not implemented).
    pub top_logprobs: Option<Value>,
    /// Refused when non-zero.
    pub frequency_penalty: Option<f32>,
    /// Refused when non-zero.
    pub presence_penalty: Option<f32>,
    /// Refused when non-empty.
    pub tools: Option<Vec<Value>>,
    /// Completions only: refused when true.
    pub echo: Option<bool>,
    /// Completions only: refused when set.
    pub suffix: Option<String>,
    /// `gemfilter` (default), `full`, `snapkv` or `h2o`.
    pub method: Option<String>,
    /// GemFilter's token budget k.
    pub top_k: Option<usize>,
    /// GemFilter's filter layer r (0-based).
    pub filter_layer: Option<usize>,
    /// GemFilter's selector spec (`gemfilter`, or e.g. `window=32,norm=max,spans=sentence`).
    pub selector: Option<String>,
    /// SnapKV/H2O cache entries per layer and head.
    pub budget: Option<usize>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<MessageIn>,
    /// Everything else.
    #[serde(flatten)]
    pub params: Params,
}

/// `POST /v1/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: PromptIn,
    /// Everything else.
    #[serde(flatten)]
    pub params: Params,
}

/// The server's defaults for what a request leaves out.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// GemFilter's k.
    pub top_k: usize,
    /// GemFilter's filter layer (`None`: the model's default).
    pub filter_layer: Option<usize>,
    /// Selector spec.
    pub selector: String,
    /// `max_tokens` when absent.
    pub max_tokens: usize,
}

/// A checked request, ready for the engine.
#[derive(Debug)]
pub struct Prepared {
    /// Prompt token ids.
    pub prompt_ids: Vec<u32>,
    /// Engine request.
    pub request: Request,
    /// Stream as server-sent events.
    pub stream: bool,
    /// Add a usage chunk at the end of a stream.
    pub include_usage: bool,
    /// Method name for the response.
    pub method: &'static str,
}

/// Parses a JSON body, any failure (syntax, a field of the wrong type, a missing field) a 400.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty: send a JSON object",
            None,
        ));
    }
    serde_json::from_slice(body).map_err(|error| {
        let what = match error.classify() {
            serde_json::error::Category::Data => "invalid request",
            _ => "malformed JSON",
        };
        ApiError::invalid(format!("{what}: {error}"), None)
    })
}

/// Token ids of a chat request's conversation.
pub fn chat_prompt(model: &Model, messages: &[MessageIn]) -> Result<Vec<u32>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must hold at least one message",
            Some("messages"),
        ));
    }
    let mut turns = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let role = match message.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    format!(
                        "messages[{i}].role `{other}` is not supported (system, developer, user, assistant)"
                    ),
                    Some("messages"),
                ));
            }
        };
        let content = match &message.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(piece)) => text.push_str(piece),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!(
                                    "messages[{i}]: content part `{kind}` is not supported (text only)"
                                ),
                                Some("messages"),
                            ));
                        }
                    }
                }
                text
            }
        };
        turns.push(ChatMessage::new(role, content));
    }
    model.chat_ids(&turns).map_err(ApiError::from)
}

/// Token ids of a completion prompt.
pub fn completion_prompt(model: &Model, prompt: &PromptIn) -> Result<Vec<u32>, ApiError> {
    let text = match prompt {
        PromptIn::Text(text) => text.as_str(),
        PromptIn::Ids(ids) => return Ok(ids.clone()),
        PromptIn::Texts(texts) if texts.len() == 1 => texts[0].as_str(),
        PromptIn::Texts(texts) => {
            return Err(ApiError::invalid(
                format!(
                    "`prompt` holds {} prompts; this server answers one per request",
                    texts.len()
                ),
                Some("prompt"),
            ));
        }
    };
    model.prompt_ids(text, false).map_err(ApiError::from)
}

/// Checks the parameters against the model and builds the engine request for `prompt_ids`.
/// `prompt_field` names the request field holding the prompt (`messages` or `prompt`) in errors.
pub fn prepare(
    model: &Model,
    prompt_ids: Vec<u32>,
    prompt_field: &str,
    params: &Params,
    defaults: &Defaults,
) -> Result<Prepared, ApiError> {
    refuse_unsupported(params)?;
    let config = model.decoder().config();
    let context = config.max_position_embeddings;
    if prompt_ids.is_empty() {
        return Err(ApiError::invalid(
            "the prompt is empty: nothing to generate from",
            Some(prompt_field),
        ));
    }
    if let Some(&id) = prompt_ids
        .iter()
        .find(|&&id| id as usize >= config.vocab_size)
    {
        return Err(ApiError::invalid(
            format!(
                "token id {id} is outside the vocabulary of {} tokens",
                config.vocab_size
            ),
            Some(prompt_field),
        ));
    }
    if prompt_ids.len() >= context {
        return Err(ApiError::invalid_code(
            format!(
                "the prompt has {} tokens; this model's context is {context} tokens and at least one \
                 must remain for the answer",
                prompt_ids.len()
            ),
            prompt_field,
            "context_length_exceeded",
        ));
    }
    let max_tokens = match params.max_completion_tokens.or(params.max_tokens) {
        None => defaults.max_tokens.min(context - prompt_ids.len()),
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ));
        }
        Some(n) if n as usize > context - prompt_ids.len() => {
            return Err(ApiError::invalid_code(
                format!(
                    "the prompt ({} tokens) plus max_tokens ({n}) exceed this model's context of \
                     {context} tokens",
                    prompt_ids.len()
                ),
                "max_tokens",
                "context_length_exceeded",
            ));
        }
        Some(n) => n as usize,
    };
    let temperature = params.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("temperature must be between 0 and 2, got {temperature}"),
            Some("temperature"),
        ));
    }
    let top_p = params.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            format!("top_p must be in (0, 1], got {top_p}"),
            Some("top_p"),
        ));
    }
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        let seed = params.seed.map(|s| s as u64).unwrap_or_else(random_seed);
        Sampling::TopP {
            temperature,
            top_p,
            seed,
        }
    };
    let stop = match &params.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(list)) => list.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop takes up to 4 non-empty sequences",
            Some("stop"),
        ));
    }
    let (mode, selector, method) = method(model, &prompt_ids, params, defaults)?;
    let request = Request {
        mode,
        max_new_tokens: max_tokens,
        chat: false,
        sampling,
        selector,
        run: Default::default(),
        ignore_eos: false,
        stop,
    };
    Ok(Prepared {
        prompt_ids,
        request,
        stream: params.stream.unwrap_or(false),
        include_usage: params
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        method,
    })
}

type MethodChoice = (
    Mode,
    Option<Arc<dyn gemfilter_core::TokenSelector>>,
    &'static str,
);

/// The attention method a request asks for, checked.
fn method(
    model: &Model,
    prompt_ids: &[u32],
    params: &Params,
    defaults: &Defaults,
) -> Result<MethodChoice, ApiError> {
    let layers = model.decoder().config().num_layers;
    let name = params.method.as_deref().unwrap_or("gemfilter");
    let gemfilter_only = |field: &str, set: bool| {
        if set {
            Err(ApiError::invalid(
                format!("`{field}` applies to method `gemfilter`, not `{name}`"),
                Some(field),
            ))
        } else {
            Ok(())
        }
    };
    match name {
        "gemfilter" => {
            if params.budget.is_some() {
                return Err(ApiError::invalid(
                    "`budget` applies to methods `snapkv` and `h2o`; GemFilter's budget is `top_k`",
                    Some("budget"),
                ));
            }
            let top_k = params.top_k.unwrap_or(defaults.top_k);
            if top_k == 0 {
                return Err(ApiError::invalid("top_k must be at least 1", Some("top_k")));
            }
            let filter_layer = params.filter_layer.or(defaults.filter_layer);
            if let Some(layer) = filter_layer
                && layer >= layers
            {
                return Err(ApiError::invalid(
                    format!(
                        "filter_layer {layer} is out of range: the model has {layers} layers (valid: 0..={})",
                        layers - 1
                    ),
                    Some("filter_layer"),
                ));
            }
            let spec_text = params.selector.as_deref().unwrap_or(&defaults.selector);
            let spec: SelectorSpec =
                spec_text
                    .parse()
                    .map_err(|e: gemfilter_models::ModelError| {
                        ApiError::invalid(e.to_string(), Some("selector"))
                    })?;
            let selector = spec
                .build(model.tokenizer(), prompt_ids)
                .map_err(|e| ApiError::invalid(e.to_string(), Some("selector")))?;
            Ok((
                Mode::GemFilter {
                    filter_layer,
                    top_k,
                },
                Some(Arc::from(selector)),
                "gemfilter",
            ))
        }
        "full" | "snapkv" | "h2o" => {
            gemfilter_only("top_k", params.top_k.is_some())?;
            gemfilter_only("filter_layer", params.filter_layer.is_some())?;
            gemfilter_only("selector", params.selector.is_some())?;
            if name == "full" {
                if params.budget.is_some() {
                    return Err(ApiError::invalid(
                        "`budget` applies to methods `snapkv` and `h2o`, not `full`",
                        Some("budget"),
                    ));
                }
                return Ok((Mode::Full, None, "full"));
            }
            let budget = params.budget.unwrap_or(defaults.top_k);
            if budget == 0 {
                return Err(ApiError::invalid(
                    "budget must be at least 1",
                    Some("budget"),
                ));
            }
            let (kv, label) = if name == "snapkv" {
                (KvMethod::SnapKv, "snapkv")
            } else {
                (KvMethod::H2o, "h2o")
            };
            kv.compressor(budget, HeadSharing::PerQueryHead)
                .validate()
                .map_err(|e| ApiError::invalid(e.to_string(), Some("budget")))?;
            Ok((
                Mode::KvCompressed {
                    method: kv,
                    budget,
                    heads: HeadSharing::PerQueryHead,
                },
                None,
                label,
            ))
        }
        other => Err(ApiError::invalid(
            format!("unknown method `{other}` (gemfilter, full, snapkv, h2o)"),
            Some("method"),
        )),
    }
}

/// 400 for parameters that would change the answer in ways this server does not implement.
fn refuse_unsupported(params: &Params) -> Result<(), ApiError> {
    let refuse = |param: &str, what: &str| {
        Err(ApiError::invalid(
            format!("`{param}` is not supported by this server ({what})"),
            Some(param),
        ))
    };
    if params.n.is_some_and(|n| n != 1) {
        return refuse("n", "one choice per request");
    }
    let truthy = |v: &Option<Value>| {
        v.as_ref()
            .is_some_and(|v| !(v.is_null() || v == &Value::Bool(false)))
    };
    if truthy(&params.logprobs) || truthy(&params.top_logprobs) {
        return refuse("logprobs", "no log-probabilities are returned");
    }
    if params.frequency_penalty.is_some_and(|p| p != 0.0) {
        return refuse("frequency_penalty", "no penalties");
    }
    if params.presence_penalty.is_some_and(|p| p != 0.0) {
        return refuse("presence_penalty", "no penalties");
    }
    if params.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return refuse("tools", "no tool calls");
    }
    if params.echo == Some(true) {
        return refuse("echo", "the prompt is not echoed");
    }
    if params.suffix.is_some() {
        return refuse("suffix", "no insertion");
    }
    Ok(())
}

/// A seed for requests that sample without giving one.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}
