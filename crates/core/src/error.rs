//! What the core answers when it refuses or fails: one error type with a
//! kind (each maps to one HTTP status in the API), a message that says
//! what to do instead, and, where another error caused it, that error.

pub type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be done as asked (400).
    #[error("{0}")]
    Invalid(String),
    /// What it names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// Another job of the deployment is in the way (409).
    #[error("{0}")]
    Conflict(String),
    /// A dependency (the catalog's database) cannot be reached now; asking
    /// again later may succeed (503 with `Retry-After`).
    #[error("{message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Source>,
    },
    /// Our fault, not the caller's (500; logged, not shown).
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    /// An internal error: its message, without a source.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal {
            message: e.to_string(),
            source: None,
        }
    }

    /// A dependency that cannot be reached now: its message, without a source.
    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        Error::Unavailable {
            message: e.to_string(),
            source: None,
        }
    }
}

impl Error {
    /// A repository error met while `doing` something: unavailable (503)
    /// when its store does not answer, so a client asks again instead of
    /// reading "internal error"; internal otherwise.
    pub fn repository(doing: impl std::fmt::Display, e: strongbox_repo::Error) -> Self {
        let unavailable = matches!(
            e,
            strongbox_repo::Error::Storage {
                kind: strongbox_repo::StorageFailure::Unavailable,
                ..
            }
        );
        let message = format!("{doing}: {e}");
        let source = Some(Box::new(e) as Source);
        if unavailable {
            Error::Unavailable { message, source }
        } else {
            Error::Internal { message, source }
        }
    }
}

impl From<strongbox_catalog::Error> for Error {
    fn from(e: strongbox_catalog::Error) -> Self {
        let unreachable = e.is_unreachable();
        let message = e.to_string();
        let source = Some(Box::new(e) as Source);
        if unreachable {
            Error::Unavailable {
                message: format!("the catalog cannot be reached: {message}"),
                source,
            }
        } else {
            Error::Internal { message, source }
        }
    }
}

impl From<strongbox_engines::Error> for Error {
    fn from(e: strongbox_engines::Error) -> Self {
        Error::Internal {
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
