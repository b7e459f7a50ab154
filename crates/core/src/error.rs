//! What the core answers when it refuses or fails; each kind maps to one
//! HTTP status in the API, and every message says what to do instead.

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
    /// Our fault, not the caller's (500; logged, not shown).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<strongbox_catalog::Error> for Error {
    fn from(e: strongbox_catalog::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
