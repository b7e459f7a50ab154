//! Rows to the model. Every table is read with one column list, by
//! position (a lookup by name compares names, a fifth of a job read's
//! time), whichever driver read the row.

use crate::{Backup, BackupStatus, Deployment, Job, JobStatus, Operation, Recovery, RecoveryStatus, Verification};

/// The columns of `jobs` that `job` reads, in its order (a macro, so that
/// static statements can be built with `concat!`).
macro_rules! job_columns {
    () => {
        "id, domain, deployment, operation, status, spec, created_by, created_at, started_at, finished_at, \
         updated_at, attempts, bytes_done, bytes_total, message"
    };
}
pub(crate) use job_columns;
pub(crate) const JOB_COLUMNS: &str = job_columns!();
pub(crate) const DEPLOYMENT_COLUMNS: &str = "domain, name, engine, connection, created_at, backup_config, runs_on";
pub(crate) const BACKUP_COLUMNS: &str = "job_id, domain, deployment, db_tag, status, keep_forever, started_at, \
     completed_at, snapshot_id, logical_bytes, stored_bytes, position, verified_at, verify_status, verify_message";
pub(crate) const RECOVERY_COLUMNS: &str =
    "job_id, domain, deployment, target, reached, backup_job_id, status, started_at, completed_at";

/// A row's columns by position.
pub(crate) trait Columns {
    fn text(&self, column: usize) -> Option<String>;
    fn int(&self, column: usize) -> Option<i64>;
}

impl Columns for sqlx::any::AnyRow {
    fn text(&self, column: usize) -> Option<String> {
        sqlx::Row::try_get(self, column).ok().flatten()
    }
    fn int(&self, column: usize) -> Option<i64> {
        sqlx::Row::try_get(self, column).ok().flatten()
    }
}

/// The SQLite catalog's reads on the request path (`sqlite_reads`).
impl Columns for rusqlite::Row<'_> {
    fn text(&self, column: usize) -> Option<String> {
        self.get(column).ok().flatten()
    }
    fn int(&self, column: usize) -> Option<i64> {
        self.get(column).ok().flatten()
    }
}

/// A `jobs` row, `JOB_COLUMNS`.
pub(crate) fn job(row: &impl Columns) -> Job {
    let text = |c| row.text(c).unwrap_or_default();
    Job {
        id: row.int(0).unwrap_or_default(),
        domain: text(1),
        deployment: text(2),
        // A kind no version wrote reads as a backup's (the least harm).
        operation: Operation::parse(&text(3)).unwrap_or(Operation::Backup),
        status: JobStatus::parse(&text(4)),
        // A spec this version cannot read is none (`Job::spec` says so).
        spec: row.text(5).and_then(|s| serde_json::from_str(&s).ok()),
        created_by: text(6),
        created_at: text(7),
        started_at: row.text(8),
        finished_at: row.text(9),
        updated_at: text(10),
        attempts: row.int(11).unwrap_or_default(),
        bytes_done: row.int(12).unwrap_or_default(),
        bytes_total: row.int(13),
        message: row.text(14),
    }
}

/// A `deployments` row, `DEPLOYMENT_COLUMNS`.
pub(crate) fn deployment(row: &impl Columns) -> Deployment {
    let text = |c| row.text(c).unwrap_or_default();
    Deployment {
        domain: text(0),
        name: text(1),
        engine: text(2),
        connection: row
            .text(3)
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default(),
        created_at: text(4),
        backup_config: row
            .text(5)
            .map(|c| serde_json::from_str(&c))
            .transpose()
            .map_err(|e| e.to_string()),
        runs_on: row.text(6),
    }
}

/// A `backups` row, `BACKUP_COLUMNS`.
pub(crate) fn backup(row: &impl Columns) -> Backup {
    let text = |c| row.text(c).unwrap_or_default();
    Backup {
        job_id: row.int(0).unwrap_or_default(),
        domain: text(1),
        deployment: text(2),
        db_tag: text(3),
        status: BackupStatus::parse(&text(4)),
        keep_forever: row.int(5).unwrap_or_default() != 0,
        started_at: text(6),
        completed_at: row.text(7),
        snapshot_id: row.text(8),
        logical_bytes: row.int(9),
        stored_bytes: row.int(10),
        position: row
            .text(11)
            .and_then(|p| strongbox_engines::Position::from_stored(&p).ok()),
        verification: row.text(12).map(|at| Verification {
            at,
            ok: row.text(13).as_deref() == Some(Verification::OK),
            message: row.text(14).unwrap_or_default(),
        }),
    }
}

/// A `recoveries` row, `RECOVERY_COLUMNS`.
pub(crate) fn recovery(row: &impl Columns) -> Recovery {
    let text = |c| row.text(c).unwrap_or_default();
    Recovery {
        job_id: row.int(0).unwrap_or_default(),
        domain: text(1),
        deployment: text(2),
        target: row.text(3).and_then(|t| serde_json::from_str(&t).ok()),
        reached: row.text(4).and_then(|r| serde_json::from_str(&r).ok()),
        backup_job_id: row.int(5),
        status: RecoveryStatus::parse(&text(6)),
        started_at: text(7),
        completed_at: row.text(8),
    }
}
