//! OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the HTTP status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gemfilter_core::CoreError;
use gemfilter_models::ModelError;
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message naming the problem.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `authentication_error`, `server_error`).
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `context_length_exceeded`, …).
    pub code: Option<&'static str>,
    /// Seconds to wait before retrying (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400: the request is malformed or a parameter is out of range.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }

    /// 400 with a code.
    pub fn invalid_code(message: impl Into<String>, param: &str, code: &'static str) -> Self {
        Self {
            code: Some(code),
            ..Self::invalid(message, Some(param))
        }
    }

    /// 404: an unknown model or route.
    pub fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: Some(code),
            ..Self::invalid(message, None)
        }
    }

    /// 401: the API key is missing or wrong.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            code: Some("invalid_api_key"),
            ..Self::invalid(message, None)
        }
    }

    /// 503: the queue is full or the server is stopping; retry after `seconds`.
    pub fn overloaded(message: impl Into<String>, seconds: u64) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            code: Some("overloaded"),
            retry_after: Some(seconds),
            ..Self::invalid(message, None)
        }
    }

    /// 500: something failed inside the server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            ..Self::invalid(message, None)
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<ModelError> for ApiError {
    /// Generation failures: the caller's parameters (400) or the server (500).
    fn from(error: ModelError) -> Self {
        match &error {
            ModelError::Core(CoreError::PromptTooLong { .. }) => {
                Self::invalid_code(error.to_string(), "messages", "context_length_exceeded")
            }
            ModelError::Core(CoreError::ZeroTopK) => {
                Self::invalid(error.to_string(), Some("top_k"))
            }
            ModelError::Core(CoreError::FilterLayerOutOfRange { .. }) => {
                Self::invalid(error.to_string(), Some("filter_layer"))
            }
            ModelError::Core(CoreError::InvalidSelector { .. }) => {
                Self::invalid(error.to_string(), Some("selector"))
            }
            ModelError::Core(
                CoreError::InvalidParameter(_)
                | CoreError::EmptyPrompt
                | CoreError::TokenOutOfVocabulary { .. },
            )
            | ModelError::ChatTemplate(_) => Self::invalid(error.to_string(), None),
            ModelError::Core(CoreError::Cancelled) => Self {
                // Nobody reads it: the client went away.
                status: StatusCode::from_u16(499).expect("valid status"),
                ..Self::invalid("the request was cancelled", None)
            },
            _ => Self::internal(error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&seconds.to_string()).expect("digits"),
            );
        }
        response
    }
}
