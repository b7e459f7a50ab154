//! Database engines. Each turns a deployment's connection settings into a
//! consistent backup, as named streams for the repository, and recovers a
//! deployment in place from such a backup. One module per engine; the
//! choice is made by the deployment's `engine` name.

mod command;
mod files;
mod position;
mod postgres;
mod process;
mod sqlite;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use command::{CommandEngine, DATABASE_VARIABLE};
pub use files::SnapshotFiles;
pub use position::Position;
pub use postgres::{FLUSH_MARKER, PREFETCH_SPOOL, PgLogical, PgPhysical, pitr, whole_segment};
pub use sqlite::{SqliteEngine, ship as sqlite_ship, wal as sqlite_wal};
use strongbox_repo::Sources;

/// The engine names a deployment can register with.
pub const ENGINES: &str = "sqlite, postgresql, postgresql-logical, command";

/// What an engine can do, for the service core to decide what a request
/// may ask of a deployment (not by comparing engine names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Recovers to any moment or log position its archive reaches, not
    /// only to its backups.
    pub point_in_time: bool,
    /// Recovers while the database keeps serving (its clients stay
    /// connected); otherwise the database is stopped and started again.
    pub online_recovery: bool,
    /// The server itself ships the database's log while it runs (SQLite:
    /// `sqlite_ship`), when the deployment's backup configuration turns
    /// continuous archiving on: it then recovers to moments.
    pub ships_log: bool,
    /// The server streams the database's WAL into the repository while it
    /// runs (PostgreSQL: its own replication client), when continuous
    /// archiving is on: a lost server loses at most the last second.
    pub streams_wal: bool,
    /// The settings a recovery into another place may name instead of the
    /// deployment's (SQLite: `path`); none: it recovers in place only.
    pub recovers_into: &'static [&'static str],
}

/// Every engine's name and capabilities.
pub const CAPABILITIES: [(&str, Capabilities); 4] = [
    ("sqlite", SqliteEngine::CAPABILITIES),
    ("postgresql", PgPhysical::CAPABILITIES),
    ("postgresql-logical", PgLogical::CAPABILITIES),
    ("command", CommandEngine::CAPABILITIES),
];

/// The names of the engines that have a capability, for messages.
pub fn engines_that(has: impl Fn(&Capabilities) -> bool) -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .filter(|(_, c)| has(c))
        .map(|(name, _)| *name)
        .collect()
}

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

/// Something a deployment's settings make the server run or touch on its
/// host. Each engine declares all of them (`Engine::accesses`), and the
/// server's configuration allows them or not: a network request names a
/// deployment's settings, never what the host lets them do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// A command line the engine runs through `sh -c`.
    Command { setting: &'static str, line: String },
    /// A database file the engine reads and replaces (with its `-wal`,
    /// `-shm` and `-journal` siblings).
    DatabaseFile { setting: &'static str, path: PathBuf },
    /// A data directory the engine reads and replaces whole.
    DataDirectory { setting: &'static str, path: PathBuf },
    /// A directory whose programs the engine runs.
    ProgramDirectory { setting: &'static str, path: PathBuf },
    /// A database server the engine connects to: a host name, an address,
    /// or a Unix socket's directory.
    Host { setting: &'static str, host: String },
    /// A file of CA certificates the engine reads to check a database
    /// server's (PostgreSQL's `sslrootcert`).
    CertificateFile { setting: &'static str, path: PathBuf },
    /// A variable the engine puts into its commands' environment.
    Environment { setting: &'static str, name: String },
}

/// A backup an engine is taking: the streams the repository pulls in
/// order, and where the backup sits in the database's history.
pub struct BackupStreams {
    pub sources: Sources,
    pub position: PositionWhenRead,
}

/// A backup's position, known at the latest once every stream has been
/// read (PostgreSQL's at `pg_backup_stop`, after the data files; a SQLite
/// base's at once).
pub struct PositionWhenRead(std::sync::mpsc::Receiver<Position>);

impl PositionWhenRead {
    /// A position to come: the engine sends it when it knows it.
    pub fn pending() -> (std::sync::mpsc::Sender<Position>, Self) {
        let (tx, rx) = std::sync::mpsc::channel();
        (tx, PositionWhenRead(rx))
    }

    /// A position known already (or none, for engines without a log).
    pub fn known(position: Option<Position>) -> Self {
        let (tx, me) = Self::pending();
        if let Some(p) = position {
            let _ = tx.send(p);
        }
        me
    }

    /// The position, once the streams have been read; `None` if the
    /// engine has none (or its streams were not all read).
    pub fn get(&self) -> Option<Position> {
        self.0.try_recv().ok()
    }
}

impl BackupStreams {
    /// Streams of a backup with no place in a log.
    pub fn without_position(sources: Sources) -> Self {
        BackupStreams {
            sources,
            position: PositionWhenRead::known(None),
        }
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

/// What a recovery replays to, as planned before the job was queued.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RecoveryTarget {
    /// The backup's own state. `position` is where a PostgreSQL base
    /// backup's replay ends (to check it got there).
    Backup { position: Option<pitr::BasePosition> },
    /// A point in time replayed from the WAL archive.
    PointInTime(PitrTarget),
    /// A moment of a SQLite deployment's shipped WAL (`sqlite_ship`).
    Shipped(sqlite::ship::ShippedTarget),
}

/// A point-in-time recovery: from base backup `base`, along `history`,
/// to `goal`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PitrTarget {
    pub base: pitr::BasePosition,
    pub history: pitr::History,
    pub goal: pitr::Goal,
    /// For a moment: where `history` enters timelines begun after it,
    /// which hold no commit by then, so replay need not go past it.
    #[serde(default)]
    pub quiet_from: Option<pitr::Lsn>,
}

/// A deployment's WAL archive, as a recovery job reaches it.
pub trait WalArchive: Send + Sync {
    /// PostgreSQL's `restore_command` fetching from it.
    fn restore_command(&self) -> String;
    /// An archived file, verified; `None` if it is not archived.
    fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, Error>;
    /// What is archived now.
    fn list(&self) -> Result<pitr::Archived, Error>;
    /// The names of the archived files, in order.
    fn names(&self) -> Result<Vec<String>, Error>;
}

/// What a backup job hands its engine.
pub struct BackupContext<'a> {
    /// A directory the engine may use for temporary files.
    pub scratch: &'a Path,
    /// The deployment's log shipper, if this server runs one: the backup
    /// then becomes the base of a new generation of the shipped log.
    pub shipper: Option<&'a sqlite_ship::ShipperLink>,
}

/// What a recovery job hands its engine besides the backup.
pub struct RecoveryContext<'a> {
    /// A directory for temporary files.
    pub scratch: &'a Path,
    pub log: Log<'a>,
    /// The deployment's WAL archive, for engines that replay one.
    pub wal: Option<&'a dyn WalArchive>,
    /// The deployment's log shipper, if this server runs one: it ends its
    /// generation before the database is replaced.
    pub shipper: Option<&'a sqlite_ship::ShipperLink>,
    /// The place is a restore drill's scratch: `Engine::check` runs on it
    /// next and `discard` removes it, so the recovery may leave to the
    /// check what the check repeats, and need make nothing durable.
    pub drill: bool,
}

/// Engines whose log the server itself ships while the database runs
/// (`Capabilities::ships_log`: SQLite's shipper) or whose WAL it streams
/// (`streams_wal`: PostgreSQL's receiver).
pub trait ShipsLog: Send + Sync {
    /// Ships the log until `cx.stop` is set, restarting after errors.
    fn ship(&self, cx: sqlite_ship::ShipContext);
}

/// What a recovery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub summary: String,
    /// Where a replayed history ended and the recovered one began.
    pub reached: Option<pitr::Reached>,
}

impl From<String> for Recovered {
    fn from(summary: String) -> Self {
        Recovered { summary, reached: None }
    }
}

/// Engines whose backups replay a log to any point in time (PostgreSQL's
/// physical engine): what planning such a recovery asks of the database.
pub trait PointInTime: Send + Sync {
    /// The server's timeline and position, if it answers (within seconds).
    fn probe(&self) -> Option<pitr::Live>;
    /// The time of the first commit after position `from` of `history`,
    /// read from the archived WAL; `None` if the archive holds none.
    fn first_commit_after(
        &self,
        wal: &dyn WalArchive,
        history: &pitr::History,
        from: pitr::Lsn,
        segment_size: u64,
        scratch: &Path,
    ) -> Result<Option<time::OffsetDateTime>, Error>;
}

pub trait Engine: Send + Sync {
    fn capabilities(&self) -> Capabilities;

    /// Everything its settings make the server run or touch.
    fn accesses(&self) -> Vec<Access>;

    /// Takes a consistent backup, as streams the repository pulls one after
    /// another, and its position. Runs on a blocking thread.
    fn backup(&self, cx: &BackupContext) -> Result<BackupStreams, Error>;

    /// Replaces the deployment's data with the backup's (or, for a point in
    /// time, the backup's replayed further), whatever state the deployment
    /// is in: running, stopped, crashed, damaged or gone. On failure the
    /// deployment is left as it was.
    fn recover(
        &self,
        backup: &dyn BackupFiles,
        target: &RecoveryTarget,
        cx: &RecoveryContext,
    ) -> Result<Recovered, Error>;

    /// Where its data lives (a file, a data directory, a database), one
    /// spelling per place: a recovery into another place must name
    /// another. `None`: it cannot tell (a command's).
    fn place(&self) -> Option<String> {
        None
    }

    /// What is already where its settings point, in words: a recovery into
    /// another place overwrites it only when asked to. May ask the
    /// database (blocking).
    fn occupied(&self) -> Option<String> {
        None
    }

    /// Settings of a scratch place beside the deployment's own where a
    /// restore drill recovers its backups (for `engine_into`); `None`: it
    /// cannot be drilled. Asked again for each drill (a port may change).
    fn drill_place(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        None
    }

    /// Checks the database a recovery made here with the database's own
    /// checks: what it found, or why it is not sound. Blocking.
    fn check(&self) -> Result<String, Error> {
        Err(Error::Failed("this engine has no check of its own".into()))
    }

    /// Removes what a recovery made here (a drill's scratch place), best
    /// effort: also before a drill, what a killed one left.
    fn discard(&self) {}

    /// Present for engines that recover to points in time.
    fn point_in_time(&self) -> Option<&dyn PointInTime> {
        None
    }

    /// Present for engines whose log the server ships.
    fn log_shipping(&self) -> Option<&dyn ShipsLog> {
        None
    }
}

/// The refusal engines without a log archive give point-in-time targets.
fn backups_only(target: &RecoveryTarget) -> Result<(), Error> {
    match target {
        RecoveryTarget::Backup { .. } => Ok(()),
        RecoveryTarget::PointInTime(_) | RecoveryTarget::Shipped(_) => Err(Error::Failed(
            "this engine recovers to its backups only, not to a point in time".into(),
        )),
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

/// The engine a recovery into another place runs: the deployment's with
/// `target`'s settings in their place (a physical PostgreSQL copy is also
/// run by Strongbox on its own port: `PgPhysical::copy`).
pub fn engine_into(
    engine: &str,
    connection: &serde_json::Value,
    target: &serde_json::Map<String, serde_json::Value>,
) -> Result<Box<dyn Engine>, Error> {
    if engine == "postgresql" {
        return Ok(Box::new(PgPhysical::copy(connection, target)?));
    }
    let mut merged = connection.as_object().cloned().unwrap_or_default();
    merged.extend(target.clone());
    engine_for(engine, &serde_json::Value::Object(merged))
}

/// `settings` as a map of settings (`Engine::drill_place`).
fn settings(settings: serde_json::Value) -> Option<serde_json::Map<String, serde_json::Value>> {
    settings.as_object().cloned()
}

/// A check's findings in a message: the first 20, then how many more.
fn listed(items: &[String]) -> String {
    match items.len() {
        0 => "no tables".into(),
        n if n <= 20 => items.join(", "),
        n => format!("{}, and {} more", items[..20].join(", "), n - 20),
    }
}

/// An SQL identifier, quoted (PostgreSQL and SQLite alike).
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The scratch database a drill of database `name` recovers into: a name
/// of at most 63 bytes (PostgreSQL's limit; MariaDB's is 64).
fn drill_database(name: &str) -> String {
    let mut base = name.to_string();
    while base.len() > 63 - DRILL_SUFFIX.len() {
        base.pop();
    }
    format!("{base}{DRILL_SUFFIX}")
}

/// How a drill's scratch database's name ends (`drill_database`).
const DRILL_SUFFIX: &str = "_strongbox_drill";

/// A port nothing listens on now, for a drill's server.
fn free_port() -> Option<u16> {
    Some(
        std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port(),
    )
}

/// A place on this host spelt one way (links and `..` resolved; a path
/// not made yet through its parent), so that two spellings compare equal.
fn place_of(path: &Path) -> String {
    let resolved = path.canonicalize().unwrap_or_else(|_| {
        match (path.parent().and_then(|p| p.canonicalize().ok()), path.file_name()) {
            (Some(parent), Some(name)) => parent.join(name),
            _ => path.to_path_buf(),
        }
    });
    resolved.display().to_string()
}

/// Refuses settings the engine does not know (a misspelt optional one
/// would otherwise be ignored without a word).
fn only_settings(c: &serde_json::Value, engine: &'static str, known: &[&str]) -> Result<(), Error> {
    let Some(map) = c.as_object() else {
        return Err(Error::BadConnection {
            engine,
            reason: "the connection settings must be a JSON object".into(),
        });
    };
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(Error::BadConnection {
            engine,
            reason: format!("unknown setting {unknown:?}; the settings are {}", known.join(", ")),
        }),
        None => Ok(()),
    }
}

/// A string setting of a connection, required and not empty.
fn setting<'a>(c: &'a serde_json::Value, engine: &'static str, key: &str, example: &str) -> Result<&'a str, Error> {
    optional_setting(c, engine, key, example)?.ok_or_else(|| Error::BadConnection {
        engine,
        reason: format!("needs \"{key}\" (a string), e.g. {example}"),
    })
}

/// A string setting of a connection that may be left out, but not empty.
fn optional_setting<'a>(
    c: &'a serde_json::Value,
    engine: &'static str,
    key: &str,
    example: &str,
) -> Result<Option<&'a str>, Error> {
    match c.get(key) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s)),
        Some(_) => Err(Error::BadConnection {
            engine,
            reason: format!("\"{key}\" must be a string that is not empty, e.g. {example}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn connection_settings_are_checked_by_name_and_value() {
        let refused = |engine: &str, c: serde_json::Value| match engine_for(engine, &c) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{engine} accepted {c}"),
        };
        assert!(engine_for("sqlite", &json!({"path": "/srv/app.db"})).is_ok());
        assert!(refused("sqlite", json!({"path": "/srv/app.db", "pathh": "x"})).contains("unknown setting \"pathh\""));
        assert!(refused("sqlite", json!({"path": " "})).contains("not empty"));
        assert!(refused("sqlite", json!(["/srv/app.db"])).contains("JSON object"));
        let command = json!({"backup_command": "dump", "recovery_command": "load"});
        assert!(engine_for("command", &command).is_ok());
        assert!(refused("command", json!({"backup_command": "dump", "recovery_command": ""})).contains("not empty"));
        assert!(
            refused(
                "command",
                json!({"backup_command": "dump", "recovery_command": "load", "prepare_command": 1})
            )
            .contains("prepare_command")
        );
        let url = "postgresql://postgres@127.0.0.1:5432/postgres";
        assert!(engine_for("postgresql-logical", &json!({"url": url})).is_ok());
        assert!(refused("postgresql-logical", json!({"url": url, "bin_dir": ""})).contains("bin_dir"));
        assert!(refused("postgresql-logical", json!({"url": url, "dbname": "x"})).contains("unknown setting"));
        // `database` names another database of the URL's server.
        let copy = engine_for("postgresql-logical", &json!({"url": url, "database": "shop copy"})).unwrap();
        assert_eq!(copy.place().as_deref(), Some("127.0.0.1:5432/shop copy"));
        assert!(refused("postgresql-logical", json!({"url": url, "database": "a/b"})).contains("database"));
        // A command deployment's `database` must reach its recovery command.
        let named =
            json!({"backup_command": "dump $STRONGBOX_DATABASE", "recovery_command": "load", "database": "shop"});
        assert!(refused("command", named).contains("recovery_command does not use"));
        let copy = engine_into(
            "command",
            &json!({"backup_command": "dump", "recovery_command": "load $STRONGBOX_DATABASE", "database": "shop"}),
            json!({"database": "shop_copy"}).as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(copy.place().as_deref(), Some("database shop_copy"));
        assert!(copy.occupied().is_some_and(|o| o.contains("cannot tell")));
        // Drill commands: both, acting on $STRONGBOX_DATABASE.
        let drilled = |extra: serde_json::Value| {
            let mut c = json!({"backup_command": "d", "recovery_command": "l $STRONGBOX_DATABASE", "database": "shop"});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            c
        };
        assert!(refused("command", drilled(json!({"check_command": "q $STRONGBOX_DATABASE"}))).contains("both"));
        assert!(refused("command", drilled(json!({"check_command": "q", "drop_command": "x"}))).contains("use the"));
        let ok = drilled(json!({"check_command": "q $STRONGBOX_DATABASE", "drop_command": "x $STRONGBOX_DATABASE"}));
        let place = engine_for("command", &ok).unwrap().drill_place().unwrap();
        assert_eq!(place["database"], "shop_strongbox_drill");
        let bad = json!({"backup_command": "d", "recovery_command": "l $STRONGBOX_DATABASE", "database": "a; rm"});
        assert!(refused("command", bad).contains("letters, digits"));
        assert!(refused("oracle", json!({})).contains("unknown engine"));
        assert_eq!(engines_that(|c| c.point_in_time), ["postgresql"]);
    }
}
