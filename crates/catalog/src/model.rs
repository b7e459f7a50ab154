//! What the catalog stores.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub domain: String,
    pub password_hash: String,
}

#[derive(Clone, Debug)]
pub struct NewDeployment {
    pub domain: String,
    pub name: String,
    pub engine: String,
    /// Engine settings; may hold secrets.
    pub connection: serde_json::Value,
}

#[derive(Clone, Debug)]
pub struct Deployment {
    pub domain: String,
    pub name: String,
    pub engine: String,
    pub connection: serde_json::Value,
    pub created_at: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
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

#[derive(Clone, Debug)]
pub struct NewJob {
    pub domain: String,
    pub deployment: String,
    pub operation: String,
    pub params: serde_json::Value,
    pub created_by: String,
    pub idempotency_key: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Job {
    pub id: i64,
    pub domain: String,
    pub deployment: String,
    pub operation: String,
    pub status: JobStatus,
    pub params: serde_json::Value,
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
}

impl BackupStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::InProgress => "IN PROGRESS",
            BackupStatus::Completed => "COMPLETED",
            BackupStatus::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "COMPLETED" => BackupStatus::Completed,
            "IN PROGRESS" => BackupStatus::InProgress,
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
    /// Where the backup sits in the database's history (engine-defined
    /// JSON), for point-in-time recovery; `None` for most engines.
    pub position: Option<serde_json::Value>,
}

/// A recovery: the target the request named, and the backup chosen for it.
#[derive(Clone, Debug)]
pub struct Recovery {
    pub job_id: i64,
    pub domain: String,
    pub deployment: String,
    /// What the request named (`latest`, `dbTag`, `timestamp`), as JSON.
    pub target: serde_json::Value,
    /// What the worker is to do, as planned when the request was accepted.
    pub plan: Option<serde_json::Value>,
    /// Where the recovery ended, once it succeeded (engine-defined JSON).
    pub reached: Option<serde_json::Value>,
    pub backup_job_id: i64,
    pub status: BackupStatus,
    pub started_at: String,
    pub completed_at: Option<String>,
}

#[derive(Clone, Debug)]
pub enum BackupOutcome {
    Completed {
        snapshot_id: String,
        logical_bytes: u64,
        stored_bytes: u64,
        position: Option<serde_json::Value>,
    },
    Failed {
        message: String,
    },
}
