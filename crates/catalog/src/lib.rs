//! The catalog: identity domains, users, deployments, jobs, backups and
//! recoveries.
//!
//! One trait, `Catalog`, so that a PostgreSQL implementation can stand
//! beside the SQLite one for several server replicas. Nothing here assumes
//! a single process: one active job per deployment is a unique index,
//! workers hold jobs through leases that expire, and every state change is
//! a single conditional statement.

mod model;
mod password;
mod sqlite;

pub use model::*;
pub use password::{hash_password, verify_password};
pub use sqlite::SqliteCatalog;

use std::time::Duration;

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[async_trait::async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Creates the domain if it does not exist.
    async fn ensure_domain(&self, name: &str) -> Result<()>;
    /// Creates a user in `domain`; replaces the password of an existing one.
    async fn put_user(&self, name: &str, domain: &str, password: &str) -> Result<()>;
    async fn user(&self, name: &str) -> Result<Option<User>>;

    async fn put_deployment(&self, d: &NewDeployment) -> Result<Deployment>;
    async fn deployment(&self, domain: &str, name: &str) -> Result<Option<Deployment>>;
    async fn deployments(&self, domain: &str) -> Result<Vec<Deployment>>;

    /// Queues a backup job and its IN PROGRESS backup row, atomically.
    async fn start_backup(&self, job: &NewJob, keep_forever: bool) -> Result<Started>;
    /// Queues a recovery job from the completed backup made by job
    /// `backup_job_id`; `target` is what the request named, `plan` what the
    /// worker is to do (both JSON, stored as given).
    async fn start_recovery(
        &self,
        job: &NewJob,
        target: &serde_json::Value,
        backup_job_id: i64,
        plan: &serde_json::Value,
    ) -> Result<Started>;
    async fn job(&self, domain: &str, id: i64) -> Result<Option<Job>>;
    async fn job_messages(&self, id: i64) -> Result<Vec<JobMessage>>;
    async fn backups(&self, domain: &str, deployment: &str) -> Result<Vec<Backup>>;
    /// The backup a backup job made.
    async fn backup(&self, domain: &str, job_id: i64) -> Result<Option<Backup>>;
    async fn recoveries(&self, domain: &str, deployment: &str) -> Result<Vec<Recovery>>;
    /// The recovery a recovery job runs.
    async fn recovery(&self, domain: &str, job_id: i64) -> Result<Option<Recovery>>;

    /// Leases the oldest queued job, or a running one whose lease expired
    /// (its worker died). A job that has been leased `max_attempts` times
    /// is failed instead, so none stays in progress forever.
    async fn lease_job(&self, owner: &str, lease: Duration, max_attempts: u32) -> Result<Option<Job>>;
    /// Records progress and extends the lease; false if the lease was lost.
    async fn heartbeat(&self, id: i64, owner: &str, lease: Duration, done: u64, total: Option<u64>) -> Result<bool>;
    /// Records the outcome of a backup job held by `owner`.
    async fn finish_backup(&self, id: i64, owner: &str, outcome: &BackupOutcome) -> Result<bool>;
    /// Records the outcome of a recovery job held by `owner`: what was done
    /// (and where it ended, JSON), or what failed.
    async fn finish_recovery(
        &self,
        id: i64,
        owner: &str,
        outcome: Result<&str, &str>,
        reached: Option<&serde_json::Value>,
    ) -> Result<bool>;
    /// Adds a line to a job's activity log.
    async fn add_job_message(&self, id: i64, message: &str) -> Result<()>;
}

pub(crate) fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formattable")
}
