//! Database engines. Each turns a deployment's connection settings into a
//! consistent backup, as named streams for the repository. One module per
//! engine; the choice is made by the deployment's `engine` name.

mod sqlite;

use std::path::Path;

pub use sqlite::SqliteEngine;
use strongbox_repo::Source;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown engine {0:?}; known engines: sqlite")]
    UnknownEngine(String),
    #[error("bad connection settings for engine {engine}: {reason}")]
    BadConnection { engine: &'static str, reason: String },
    #[error("{0}")]
    Failed(String),
}

pub trait Engine: Send + Sync {
    /// Takes a consistent backup. Runs on a blocking thread; `scratch` is a
    /// directory the engine may use for temporary files.
    fn backup(&self, scratch: &Path) -> Result<Vec<Source>, Error>;
}

/// The engine for a deployment, from its `engine` name and settings.
pub fn engine_for(engine: &str, connection: &serde_json::Value) -> Result<Box<dyn Engine>, Error> {
    match engine {
        "sqlite" => Ok(Box::new(SqliteEngine::from_connection(connection)?)),
        other => Err(Error::UnknownEngine(other.to_string())),
    }
}
