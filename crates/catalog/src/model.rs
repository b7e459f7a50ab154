//! What the catalog stores.

use serde::{Deserialize, Serialize};
use strongbox_engines::Position;
use strongbox_engines::pitr::Reached;

use crate::{BackupConfig, JobSpec, RecoveryAsked};

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub domain: String,
    pub password_hash: String,
    pub role: Role,
}

/// What a user may do in its identity domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: backups, recoveries, jobs, configuration.
    Reader,
    /// Also starts backups and recoveries, changes configuration.
    Operator,
    /// Also registers deployments: their settings name files and commands
    /// on the server's machine.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reader" => Some(Role::Reader),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NewDeployment {
    pub domain: String,
    pub name: String,
    pub engine: String,
    /// Engine settings; may hold secrets.
    pub connection: serde_json::Value,
    /// Only servers with this label run its jobs.
    pub runs_on: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Deployment {
    pub domain: String,
    pub name: String,
    pub engine: String,
    pub connection: serde_json::Value,
    pub created_at: String,
    /// The backup configuration stored for it (`None`: the server's
    /// defaults), or why the stored one cannot be read.
    pub backup_config: Result<Option<BackupConfig>, String>,
    /// Only servers with this label run its jobs.
    pub runs_on: Option<String>,
}

/// A job's kind, as the DBCS wire names it (`job_operation`, the status
/// path's `{requestName}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Backup,
    Recovery,
    Expire,
    /// A restore drill: backups recovered into scratch places and checked.
    Verify,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::Backup,
        Operation::Recovery,
        Operation::Expire,
        Operation::Verify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Backup => "backup",
            Operation::Recovery => "recovery",
            Operation::Expire => "expire",
            Operation::Verify => "verify",
        }
    }

    /// `None` for a word no version wrote.
    pub fn parse(s: &str) -> Option<Self> {
        Operation::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// As a sentence names one: "a backup", "an expire".
    pub fn with_article(self) -> &'static str {
        match self {
            Operation::Backup => "a backup",
            Operation::Recovery => "a recovery",
            Operation::Expire => "an expire",
            Operation::Verify => "a verify",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 4] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            _ => JobStatus::Failed,
        }
    }
}

/// A job to queue.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub domain: String,
    pub deployment: String,
    pub spec: JobSpec,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    /// When the job was asked for (the service's clock).
    pub at: time::OffsetDateTime,
}

/// The row a new job keeps beside it, created in the same transaction.
#[derive(Clone, Debug)]
pub enum NewRecord {
    None,
    /// An IN PROGRESS backup row under `db_tag` (unique per deployment:
    /// a taken tag is `Error::Duplicate`).
    Backup {
        db_tag: String,
        keep_forever: bool,
    },
    /// A recovery from the completed backup made by job `backup_job_id`
    /// (`Error::NotFound` if there is none); `target` is what the request
    /// named, for the history.
    Recovery {
        target: RecoveryAsked,
        backup_job_id: i64,
    },
}

#[derive(Clone, Debug)]
pub struct Job {
    pub id: i64,
    pub domain: String,
    pub deployment: String,
    pub operation: Operation,
    pub status: JobStatus,
    /// What the job does, as queued (`None` for jobs queued before specs
    /// were kept; `Job::spec` reads it).
    pub spec: Option<JobSpec>,
    pub created_by: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
    pub attempts: i64,
    pub bytes_done: i64,
    pub bytes_total: Option<i64>,
    pub message: Option<String>,
}

/// A worker's hold on a job: the attempt it leased. Every write a worker
/// makes for the job carries it and is refused once another attempt holds
/// the job (its lease expired and another worker, or this one, leased it
/// again), so a stale attempt can neither log, nor end the job, nor record
/// a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub job_id: i64,
    pub owner: String,
    pub attempt: i64,
}

impl Lease {
    /// The hold `owner` has on a job `lease_job` just gave it.
    pub fn of(job: &Job, owner: &str) -> Lease {
        Lease {
            job_id: job.id,
            owner: owner.to_string(),
            attempt: job.attempts,
        }
    }
}

/// What `start_backup` or `start_recovery` did.
#[derive(Clone, Debug)]
pub enum Started {
    Created(Job),
    /// The idempotency key named an earlier job: that one, not a new one.
    Existing(Job),
    /// Another job of the deployment is queued or running.
    Busy(Job),
}

#[derive(Clone, Debug)]
pub struct JobMessage {
    pub at: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupStatus {
    InProgress,
    Completed,
    Failed,
    /// Expired or deleted: its snapshot is forgotten.
    Deleted,
}

impl BackupStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::InProgress => "IN PROGRESS",
            BackupStatus::Completed => "COMPLETED",
            BackupStatus::Failed => "FAILED",
            BackupStatus::Deleted => "DELETED",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "COMPLETED" => BackupStatus::Completed,
            "IN PROGRESS" => BackupStatus::InProgress,
            "DELETED" => BackupStatus::Deleted,
            _ => BackupStatus::Failed,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Backup {
    pub job_id: i64,
    pub domain: String,
    pub deployment: String,
    pub db_tag: String,
    pub status: BackupStatus,
    pub keep_forever: bool,
    pub started_at: String,
    pub completed_at: Option<String>,
    pub snapshot_id: Option<String>,
    pub logical_bytes: Option<i64>,
    pub stored_bytes: Option<i64>,
    /// Where the backup sits in the database's history; `None` for
    /// engines without a log.
    pub position: Option<Position>,
    /// Its last restore drill; `None`: never drilled.
    pub verification: Option<Verification>,
}

/// A restore drill's outcome for one backup: restored into a scratch
/// place and checked by its engine (`ok`), or not, and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// When the drill ended (RFC 3339).
    pub at: String,
    pub ok: bool,
    pub message: String,
}

impl Verification {
    pub const OK: &str = "OK";
    pub const FAILED: &str = "FAILED";

    /// The wire spelling of its status (`verifyStatus`).
    pub fn status(&self) -> &'static str {
        if self.ok { Self::OK } else { Self::FAILED }
    }
}

/// Where a recovery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryStatus {
    InProgress,
    Completed,
    Failed,
}

impl RecoveryStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryStatus::InProgress => "IN PROGRESS",
            RecoveryStatus::Completed => "COMPLETED",
            RecoveryStatus::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "COMPLETED" => RecoveryStatus::Completed,
            "IN PROGRESS" => RecoveryStatus::InProgress,
            _ => RecoveryStatus::Failed,
        }
    }
}

/// A recovery: the target the request named, and the backup chosen for it.
#[derive(Clone, Debug)]
pub struct Recovery {
    pub job_id: i64,
    pub domain: String,
    pub deployment: String,
    /// What the request named (`None`: a form this version cannot read).
    pub target: Option<RecoveryAsked>,
    /// Where a replayed history ended, once the recovery succeeded.
    pub reached: Option<Reached>,
    /// The backup it started from; `None` when it was indexed again from
    /// the repository's records after that backup had been deleted.
    pub backup_job_id: Option<i64>,
    pub status: RecoveryStatus,
    pub started_at: String,
    pub completed_at: Option<String>,
}

/// A completed backup found in the repository and not in the catalog (the
/// catalog rebuilt from the repository): indexed as a backup job that
/// succeeded.
#[derive(Clone, Debug)]
pub struct ImportedBackup {
    pub domain: String,
    pub deployment: String,
    pub db_tag: String,
    pub keep_forever: bool,
    /// RFC 3339.
    pub started_at: String,
    pub completed_at: String,
    pub snapshot_id: String,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub position: Option<Position>,
    /// The job's message (and its activity log's one line).
    pub message: String,
}

/// A copy (a further repository) holding a backup's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupCopy {
    pub backup_job_id: i64,
    pub copy: String,
    /// RFC 3339.
    pub copied_at: String,
}

/// A recovery found in the repository's records and not in the catalog:
/// indexed with a job of its own, from the backup tagged `from_tag` (or
/// naming no backup when that one is gone: its record still says when its
/// timeline began).
#[derive(Clone, Debug)]
pub struct ImportedRecovery {
    pub domain: String,
    pub deployment: String,
    pub from_tag: String,
    pub target: Option<RecoveryAsked>,
    /// `Completed` or `Failed` (records are written when a recovery ends).
    pub status: RecoveryStatus,
    /// RFC 3339.
    pub started_at: String,
    pub completed_at: Option<String>,
    pub reached: Option<Reached>,
    pub message: String,
}

/// How a job ended, as its worker records it.
#[derive(Clone, Debug)]
pub struct JobEnd {
    /// When it ended (the service's clock): the backup's completion time.
    pub at: time::OffsetDateTime,
    pub succeeded: bool,
    /// The job's final message (also the last line of its activity log).
    pub message: String,
    /// What a successful backup job stored.
    pub backup: Option<BackupResult>,
    /// Where a successful recovery's replay ended.
    pub reached: Option<Reached>,
}

/// Jobs of one operation in one status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobCount {
    pub operation: Operation,
    pub status: JobStatus,
    pub count: u64,
}

#[derive(Clone, Debug)]
pub struct BackupResult {
    pub snapshot_id: String,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub position: Option<Position>,
}
