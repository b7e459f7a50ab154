//! Every error answers `{"message": "..."}` with its status code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// When a client should ask again while a dependency is unreachable (s).
pub(crate) const UNAVAILABLE_RETRY_AFTER: u64 = 5;

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds a client should wait before asking again (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log")
    }
}

impl From<strongbox_core::Error> for ApiError {
    fn from(e: strongbox_core::Error) -> Self {
        use strongbox_core::Error as E;
        match e {
            E::Invalid(m) => ApiError::bad_request(m),
            E::NotFound(m) => ApiError::not_found(m),
            E::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            E::Unavailable { message, .. } => {
                tracing::warn!("unavailable: {message}");
                ApiError {
                    retry_after: Some(UNAVAILABLE_RETRY_AFTER),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{message}; ask again in a few seconds"),
                    )
                }
            }
            e @ E::Internal { .. } => {
                // The cause, when it says more than the message.
                let cause = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .filter(|s| *s != e.to_string());
                ApiError::internal(match cause {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                })
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(serde_json::json!({ "message": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"strongbox\""),
            );
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
