//! The catalog: identity domains, users, deployments, jobs, backups and
//! recoveries.
//!
//! One trait, `Catalog`, and one implementation of it (`SqlCatalog`) on
//! SQLite (the embedded default) or PostgreSQL (for several server
//! replicas), each statement written once. Nothing here assumes a single
//! process: one active job per deployment is a unique index, workers hold
//! jobs through leases that expire, and every state change is a single
//! conditional statement.

mod backup_config;
mod dialect;
mod job_spec;
mod migrations;
mod model;
mod rows;
mod sql;
mod sqlite_reads;

pub use backup_config::{BackupConfig, DrillSchedule, Schedule};
pub use job_spec::{Deletion, Drill, IMPORTED, JobSpec, RecoveryAsked, RecoveryInto, SYSTEM, Trigger};
pub use model::*;
pub use sql::SqlCatalog;

use std::sync::Arc;
use std::time::Duration;

/// Opens the catalog at `location`: a `postgres://` or `postgresql://` URL,
/// else the path of a SQLite file (created if missing).
pub async fn open(location: &str) -> Result<Arc<dyn Catalog>> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        Ok(Arc::new(SqlCatalog::connect_postgres(location).await?))
    } else {
        Ok(Arc::new(SqlCatalog::open_sqlite(std::path::Path::new(location)).await?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("catalog database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("catalog migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    /// A unique key is taken (a backup's tag).
    #[error("{0} is taken")]
    Duplicate(String),
}

impl Error {
    /// The catalog's database could not be reached (no connection in
    /// time, the connection lost, the server shutting down or starting):
    /// asking again later may succeed.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Db(
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_),
            ) => true,
            // PostgreSQL's SQLSTATE classes 57P ("terminating connection
            // due to administrator command", "the database system is
            // shutting down") and 08 (connection exceptions): a query met
            // the server stopping, as a stop a few ms into a request does.
            Error::Db(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Storage for the service core. Implementations keep rows and the rules
/// a database enforces (one active job per deployment, unique tags, leases
/// held by one worker at a time); they decide nothing else.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Answers if the catalog's database does (`SELECT 1`).
    async fn ping(&self) -> Result<()>;
    /// Creates the domain if it does not exist.
    async fn ensure_domain(&self, name: &str) -> Result<()>;
    /// Creates a user in `domain`; replaces the password hash and role of
    /// an existing one.
    async fn put_user(&self, name: &str, domain: &str, password_hash: &str, role: Role) -> Result<()>;
    async fn user(&self, name: &str) -> Result<Option<User>>;

    async fn put_deployment(&self, d: &NewDeployment) -> Result<Deployment>;
    async fn deployment(&self, domain: &str, name: &str) -> Result<Option<Deployment>>;
    async fn deployments(&self, domain: &str) -> Result<Vec<Deployment>>;
    /// Every deployment of every domain (for the scheduler).
    async fn all_deployments(&self) -> Result<Vec<Deployment>>;
    /// Stores a deployment's backup configuration; false if there is no such deployment.
    async fn put_backup_config(&self, domain: &str, name: &str, config: &BackupConfig) -> Result<bool>;

    /// Queues a job with its record and first activity-log line, in one
    /// transaction — unless the idempotency key names an earlier job of the
    /// deployment (`Existing`) or another of its jobs is queued or running
    /// (`Busy`).
    async fn create_job(&self, job: &NewJob, record: &NewRecord, message: &str) -> Result<Started>;
    async fn job(&self, domain: &str, id: i64) -> Result<Option<Job>>;
    /// A deployment's queued or running job, read without a lock: what
    /// `create_job` would answer `Busy` with, unless it ends meanwhile.
    async fn active_job(&self, domain: &str, deployment: &str) -> Result<Option<Job>>;
    async fn job_messages(&self, id: i64) -> Result<Vec<JobMessage>>;
    /// A deployment's backups in the order they were taken (by start time,
    /// then job id: a backup imported from the repository has a job id newer
    /// than its time).
    async fn backups(&self, domain: &str, deployment: &str) -> Result<Vec<Backup>>;
    /// The backup a backup job made.
    async fn backup(&self, domain: &str, job_id: i64) -> Result<Option<Backup>>;
    /// How many of the deployment's backups have the tag `tag` or `tag_N`
    /// (one statement, whatever the history's length).
    async fn count_tags(&self, domain: &str, deployment: &str, tag: &str) -> Result<u64>;
    async fn recoveries(&self, domain: &str, deployment: &str) -> Result<Vec<Recovery>>;
    /// The recovery a recovery job runs.
    async fn recovery(&self, domain: &str, job_id: i64) -> Result<Option<Recovery>>;

    /// Leases the oldest queued job, or a running one whose lease expired
    /// (its worker died), counting the attempt (`Lease::of` the job is
    /// the hold every later write names) — of a deployment that names no
    /// label, or one of `labels`.
    async fn lease_job(&self, owner: &str, duration: Duration, labels: &[String]) -> Result<Option<Job>>;
    /// Records that server `owner` lives, with its labels.
    async fn announce(&self, owner: &str, labels: &[String]) -> Result<()>;
    /// The labels of servers that announced themselves within `within`.
    async fn live_labels(&self, within: Duration) -> Result<Vec<String>>;
    /// Records progress and extends the lease; false if it was lost.
    async fn heartbeat(&self, lease: &Lease, duration: Duration, done: u64, total: Option<u64>) -> Result<bool>;
    /// Hands a running job back to the queue at once (its server is
    /// stopping), for any worker to lease as an expired one; false if the
    /// lease was lost.
    async fn release_job(&self, lease: &Lease) -> Result<bool>;
    /// How many jobs there are of each operation and status.
    async fn job_counts(&self) -> Result<Vec<JobCount>>;
    /// Ends a job, with its backup or recovery row; false (and nothing
    /// written) if the lease was lost.
    async fn finish_job(&self, lease: &Lease, end: &JobEnd) -> Result<bool>;
    /// Indexes a backup found in the repository, with a succeeded job of its
    /// own; false (nothing written) if the deployment already has a backup
    /// with its tag or snapshot.
    async fn import_backup(&self, b: &ImportedBackup) -> Result<bool>;
    /// Indexes a recovery found in the repository, with an ended job of its
    /// own; false (nothing written) if the deployment has a recovery that
    /// started then already, or no backup `from_tag` (deleted since).
    async fn import_recovery(&self, r: &ImportedRecovery) -> Result<bool>;
    /// Notes that the copy named `copy` holds a backup's snapshot (again: no-op).
    async fn record_copy(&self, domain: &str, deployment: &str, backup_job_id: i64, copy: &str) -> Result<()>;
    /// Notes that the copy named `copy` no longer holds these backups (its
    /// recovery window let them go).
    async fn forget_copies(&self, domain: &str, deployment: &str, copy: &str, backup_job_ids: &[i64]) -> Result<()>;
    /// The copies holding a deployment's backups, by backup job id.
    async fn copies(&self, domain: &str, deployment: &str) -> Result<Vec<BackupCopy>>;
    /// Marks backups of a deployment deleted (their snapshots are forgotten).
    /// Records a restore drill's outcome on backup `job_id` (replacing the
    /// last one).
    async fn record_verification(&self, domain: &str, job_id: i64, v: &Verification) -> Result<()>;
    async fn mark_backups_deleted(&self, domain: &str, deployment: &str, job_ids: &[i64]) -> Result<()>;
    /// Adds a line to a job's activity log; false (and nothing written) if
    /// the lease was lost.
    async fn add_job_message(&self, lease: &Lease, message: &str) -> Result<bool>;
}

/// Every label in servers' stored label lists, once each.
pub(crate) fn labels_of(rows: &[String]) -> Vec<String> {
    let mut labels: Vec<String> = rows
        .iter()
        .flat_map(|r| serde_json::from_str::<Vec<String>>(r).unwrap_or_default())
        .collect();
    labels.sort();
    labels.dedup();
    labels
}

pub(crate) fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formattable")
}
