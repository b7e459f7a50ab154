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

    /// A store's error, read once: what kind, on which object, and the
    /// innermost cause (object_store's errors repeat their sources in
    /// their own text, so a chain printed whole says it four times).
    #[error("{}", storage_message(.kind, .object, .cause))]
    Storage {
        object: String,
        kind: StorageFailure,
        cause: String,
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
        let cause = innermost(&source);
        let cause = s3_answer(&cause).unwrap_or(cause);
        let kind = match &source {
            object_store::Error::NotFound { .. } if cause.contains("NoSuchBucket") => StorageFailure::BucketMissing,
            object_store::Error::NotFound { .. } => {
                return Error::Missing {
                    object: object.to_string(),
                };
            }
            _ if let Some(what) = unavailable(&source) => {
                return Error::Storage {
                    object: object.to_string(),
                    kind: StorageFailure::Unavailable,
                    cause: what,
                };
            }
            object_store::Error::Unauthenticated { .. } => StorageFailure::Credentials,
            // S3 answers a wrong key with 403, which object_store calls
            // PermissionDenied on a GET (not on a LIST): the code says which.
            _ if cause.contains("InvalidAccessKeyId") || cause.contains("SignatureDoesNotMatch") => {
                StorageFailure::Credentials
            }
            object_store::Error::PermissionDenied { .. } => StorageFailure::PermissionDenied,
            _ => match io_kind(&source) {
                Some(std::io::ErrorKind::StorageFull) => StorageFailure::DiskFull,
                Some(std::io::ErrorKind::PermissionDenied) => StorageFailure::PermissionDenied,
                _ if cause.contains("NoSuchBucket") => StorageFailure::BucketMissing,
                _ => StorageFailure::Other,
            },
        };
        Error::Storage {
            object: object.to_string(),
            kind,
            cause,
        }
    }

    pub fn io(what: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            what: what.to_string(),
            source,
        }
    }
}

/// What kind of store failure an `Error::Storage` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageFailure {
    DiskFull,
    PermissionDenied,
    Credentials,
    BucketMissing,
    /// The store answered 5xx, throttled, timed out or dropped the
    /// connection, still after object_store's retries: transient, the work
    /// can be run again.
    Unavailable,
    Other,
}

fn storage_message(kind: &StorageFailure, object: &str, cause: &str) -> String {
    match kind {
        StorageFailure::DiskFull => format!("the repository's disk is full ({object}): no space left on device"),
        StorageFailure::PermissionDenied => format!(
            "the repository may not be written or read here ({object}): permission denied; give the user Strongbox \
             runs as access to it"
        ),
        StorageFailure::Credentials => format!(
            "the store refused the credentials ({object}): {cause}; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ),
        StorageFailure::BucketMissing => format!("the repository's bucket does not exist ({object}): {cause}"),
        StorageFailure::Unavailable => format!(
            "the store is unavailable ({object}): {cause}; nothing was left half-written, run it again once the \
             store answers (retries: STRONGBOX_S3_MAX_RETRIES, STRONGBOX_S3_RETRY_SECONDS)"
        ),
        StorageFailure::Other => format!("storage error on {object}: {cause}"),
    }
}

/// The last error of `e`'s chain of sources, in its own words.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    sources(e).last().map(|last| last.to_string()).unwrap_or_default()
}

/// `e` and the chain of its sources, outermost first.
pub(crate) fn sources<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// What a request object_store gave up on met, if it was transient (a 5xx,
/// 429 or 408 answer, a timeout, a connection refused or dropped): the
/// answer's status and S3 error code or the transport failure, and how long
/// and how often object_store tried. object_store exports its transport
/// error's kind but not its retry error, so the status and the tries are
/// read from the retry error's words ("Error performing PUT … in 3.2s,
/// after 3 retries, … - Server returned non-2xx status code: 503 …").
fn unavailable(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use object_store::client::{HttpError, HttpErrorKind};
    let retry = sources(e)
        .map(|e| e.to_string())
        .find(|words| words.starts_with("Error performing "))?;
    let transport = sources(e)
        .find_map(|e| e.downcast_ref::<HttpError>())
        .map(HttpError::kind);
    let failure = if let Some(answer) = s3_answer(&retry) {
        let status: u16 = answer.get(..3)?.parse().ok()?;
        if !(status >= 500 || status == 429 || status == 408) {
            return None;
        }
        answer
    } else {
        match transport? {
            HttpErrorKind::Timeout => "timed out".to_string(),
            HttpErrorKind::Connect => "connection refused".to_string(),
            HttpErrorKind::Interrupted | HttpErrorKind::Request => "connection dropped".to_string(),
            _ => return None,
        }
    };
    let tried = retry
        .split_once(" in ")
        .map(|(_, rest)| rest.split(" - ").next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    Some(format!("{failure} ({tried})"))
}

/// An S3 server's answer in object_store's words ("… status code: 403
/// Forbidden: <?xml …><Code>SignatureDoesNotMatch</Code>…"), said short:
/// "403 Forbidden SignatureDoesNotMatch".
fn s3_answer(words: &str) -> Option<String> {
    let (_, rest) = words.split_once("status code: ")?;
    let status = rest.split(':').next()?.trim();
    Some(
        match rest.split_once("<Code>").and_then(|(_, c)| c.split_once("</Code>")) {
            Some((code, _)) => format!("{status} {code}"),
            None => status.to_string(),
        },
    )
}

/// The kind of the first I/O error in `e`'s chain of sources, if any.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    sources(e)
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_said_once() {
        let full = std::io::Error::from_raw_os_error(28);
        let e = Error::storage(
            "data/97/97ab",
            object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(full),
            },
        );
        let text = e.to_string();
        assert_eq!(
            text,
            "the repository's disk is full (data/97/97ab): no space left on device"
        );
        assert!(std::error::Error::source(&e).is_none(), "no chain to print again");
    }
}
