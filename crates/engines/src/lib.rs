//! Database engines. Each turns a deployment's connection settings into a
//! consistent backup, as named streams for the repository, and recovers a
//! deployment in place from such a backup. One module per engine; the
//! choice is made by the deployment's `engine` name.

mod command;
mod files;
mod postgres;
mod process;
mod sqlite;

use std::io::Read;
use std::path::Path;

pub use command::CommandEngine;
pub use files::SnapshotFiles;
pub use postgres::{PgLogical, PgPhysical, PgTarget, pitr};
pub use sqlite::SqliteEngine;
use strongbox_repo::Sources;

/// The engine names a deployment can register with.
pub const ENGINES: &str = "sqlite, postgresql, postgresql-logical, command";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown engine {0:?}; known engines: {ENGINES}")]
    UnknownEngine(String),
    #[error("bad connection settings for engine {engine}: {reason}")]
    BadConnection { engine: &'static str, reason: String },
    #[error("{0}")]
    Failed(String),
}

impl Error {
    fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        Error::Failed(format!("{what}: {e}"))
    }
}

/// The files of the backup a recovery reads.
pub trait BackupFiles: Send + Sync {
    /// Streams one file, in order; damage found on the way is a read error.
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, Error>;
    /// Restores one file to `dest` (the faster way when a file is wanted).
    fn restore_to(&self, name: &str, dest: &Path) -> Result<(), Error>;
    /// Restores every file under `dir`, several at a time.
    fn restore_tree(&self, dir: &Path) -> Result<(), Error>;
}

/// Steps of a recovery worth a line in the job's activity log.
pub type Log<'a> = &'a (dyn Fn(String) + Sync);

pub trait Engine: Send + Sync {
    /// Takes a consistent backup, as streams the repository pulls one after
    /// another. Runs on a blocking thread; `scratch` is a directory the
    /// engine may use for temporary files.
    fn backup(&self, scratch: &Path) -> Result<Sources, Error>;

    /// Replaces the deployment's data with the backup's, in place. On
    /// failure the deployment is left as it was. Returns a summary.
    fn recover(&self, backup: &dyn BackupFiles, scratch: &Path, log: Log) -> Result<String, Error>;

    /// Like `recover`, to a later moment or WAL position replayed from an
    /// archive; only engines whose backups sit in a replayable log can.
    fn recover_to(
        &self,
        backup: &dyn BackupFiles,
        target: &PgTarget,
        scratch: &Path,
        log: Log,
    ) -> Result<String, Error> {
        match target {
            PgTarget::Backup => self.recover(backup, scratch, log),
            _ => Err(Error::Failed(
                "this engine recovers to its backups only, not to a point in time".into(),
            )),
        }
    }

    /// Where the last `backup` sits in the database's history, for
    /// point-in-time recovery (JSON, kept with the backup in the catalog).
    fn backup_position(&self) -> Option<serde_json::Value> {
        None
    }
}

/// The engine for a deployment, from its `engine` name and settings.
pub fn engine_for(engine: &str, connection: &serde_json::Value) -> Result<Box<dyn Engine>, Error> {
    match engine {
        "sqlite" => Ok(Box::new(SqliteEngine::from_connection(connection)?)),
        "postgresql" => Ok(Box::new(PgPhysical::from_connection(connection)?)),
        "postgresql-logical" => Ok(Box::new(PgLogical::from_connection(connection)?)),
        "command" => Ok(Box::new(CommandEngine::from_connection(connection)?)),
        other => Err(Error::UnknownEngine(other.to_string())),
    }
}

/// A string setting of a connection, required.
fn setting<'a>(c: &'a serde_json::Value, engine: &'static str, key: &str, example: &str) -> Result<&'a str, Error> {
    c.get(key).and_then(|v| v.as_str()).ok_or_else(|| Error::BadConnection {
        engine,
        reason: format!("needs \"{key}\" (a string), e.g. {example}"),
    })
}
