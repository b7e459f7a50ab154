//! One error type for the repository. Every variant names the object it is
//! about, so that a damaged repository can be diagnosed from the message alone.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Strongbox repository at {location} (no key files found); run `strongbox repo init` first")]
    NotARepository { location: String },

    #[error("a repository already exists at {location}")]
    AlreadyInitialized { location: String },

    #[error("wrong password: it opens none of the repository's {slots} key slot(s)")]
    WrongPassword { slots: usize },

    #[error(
        "{object}: unsupported format version {found} (this build reads version {supported}); open it with a strongbox release that reads version {found}"
    )]
    UnsupportedVersion { object: String, found: u32, supported: u32 },

    #[error("{object} is corrupt: {reason}")]
    Corrupt { object: String, reason: String },

    #[error("{object} is missing from the repository")]
    Missing { object: String },

    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),

    #[error("snapshot {snapshot} has no file named {file:?}")]
    FileNotFound { snapshot: String, file: String },

    #[error("invalid argument: {0}")]
    Invalid(String),

    #[error("storage error on {object}: {source}")]
    Storage {
        object: String,
        #[source]
        source: object_store::Error,
    },

    #[error("I/O error reading {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("backup aborted: {0}")]
    Aborted(String),
}

impl Error {
    pub fn corrupt(object: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            object: object.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn storage(object: impl std::fmt::Display, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => Error::Missing {
                object: object.to_string(),
            },
            source => Error::Storage {
                object: object.to_string(),
                source,
            },
        }
    }

    pub fn io(what: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            what: what.to_string(),
            source,
        }
    }
}
