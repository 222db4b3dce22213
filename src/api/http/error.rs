//! HTTP error responses: `{"error": {"code": "...", "message": "...", ...}}` with the
//! status that tells the client how to react.
//!
//! | status | code | meaning |
//! |---|---|---|
//! | 400 | `invalid_input` | fix the request; nothing changed (`POST /v1/txn`, `POST /v1/lease`: `field` names the body's field at fault) |
//! | 401 | `unauthenticated` | no credentials where they are required, or wrong ones (`WWW-Authenticate` says how) |
//! | 403 | `permission_denied` | the user's role or key prefix does not allow it; nothing changed |
//! | 404 | `not_found` | no such key, no such lease (expired or revoked), or no such route |
//! | 409 | `compare_failed` | a conditional write's condition did not hold; `current` shows the key |
//! | 410 | `compacted` | a watch from a revision the history no longer holds; `oldest_revision` is the oldest it does |
//! | 413 | `too_large` | key, value or body over the limit; nothing changed |
//! | 429 | `overloaded` | a bound on the node's work was reached: nothing happened, retry later (`Retry-After`) |
//! | 503 | `unavailable` | no leader or quorum, shutting down: nothing happened, retry (`Retry-After`) |
//! | 503 | `outcome_unknown` | a write may or may not have been applied: retry with the same session headers |
//! | 500 | `internal` | a bug or a broken disk |
//! | 501 | `not_implemented` | this node does not serve that API (SQL on a node without a SQL service) |
//!
//! The rqlite-compatible SQL endpoints (`/db/*`, see [`super::sql`]) answer the same
//! statuses with rqlite's body shape instead: `{"error": "message", "code": "..."}`.

use crate::error::Error;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// An error answer, ready to be sent.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields of the `error` object (such as `current` for a failed compare).
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn with(mut self, name: &str, v: impl Into<Value>) -> Self {
        self.extra.insert(name.to_string(), v.into());
        self
    }

    /// The same error about the request body's field `field` (such as
    /// `success[2].put.key`): the message starts with it, and `field` names it.
    pub fn at(mut self, field: &str) -> Self {
        self.message = format!("{field}: {}", self.message);
        self.with("field", field)
    }

    /// Maps a node error. A size limit becomes 413 (the HTTP layer checks sizes first, so
    /// this is a fallback).
    pub fn from_node(e: Error) -> Self {
        match e {
            Error::SessionReused(m) => ApiError::new(StatusCode::BAD_REQUEST, "session_reused", m),
            Error::TooLarge(m) => ApiError::too_large(m),
            Error::InvalidInput(m) => ApiError::bad(m),
            Error::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            Error::Overloaded(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", m),
            Error::Unauthenticated(m) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m)
            }
            Error::PermissionDenied(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", m)
            }
            Error::OutcomeUnknown(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                format!(
                    "{m}; the write may or may not have been applied: retry with the same \
                     X-Paxosdb-Client-Id and X-Paxosdb-Seq headers (echoed in this response) \
                     to learn its outcome"
                ),
            ),
            e @ Error::Compacted { oldest, .. } => {
                ApiError::new(StatusCode::GONE, "compacted", e.to_string())
                    .with("oldest_revision", oldest)
            }
            e @ (Error::Config(_) | Error::Storage(_) | Error::Internal(_)) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

impl ApiError {
    /// The JSON body: `{"error": {"code", "message", ...}}` (what a server-sent event
    /// stream's final `error` event carries too).
    pub fn body(&self) -> Value {
        let mut err = Map::new();
        err.insert("code".into(), self.code.into());
        err.insert("message".into(), self.message.clone().into());
        err.extend(self.extra.clone());
        json!({ "error": err })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Basic realm=\"paxosdb\", Bearer realm=\"paxosdb\""),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::from_node(e)
    }
}
