//! Rows to the model: both backends keep the same columns, read here.

/// The column list of `jobs` a `job` row mapper reads (by position).
macro_rules! job_columns {
    () => {
        "id, domain, deployment, operation, status, spec, params, created_by, created_at, started_at, \
         finished_at, updated_at, attempts, bytes_done, bytes_total, message"
    };
}

/// Expires a running job's lease now ($1 updated_at, $2 id, $3 owner,
/// $4 attempt): the next `lease_job` takes it as a dead worker's.
pub(crate) const RELEASE_JOB: &str = "UPDATE jobs SET lease_expires = 0, updated_at = $1 \
     WHERE id = $2 AND lease_owner = $3 AND attempts = $4 AND status = 'running'";

pub(crate) const JOB_COUNTS: &str = "SELECT operation, status, count(*) FROM jobs GROUP BY operation, status";

pub(crate) fn job_counts(rows: Vec<(String, String, i64)>) -> Vec<crate::JobCount> {
    rows.into_iter()
        .map(|(operation, status, count)| crate::JobCount {
            status: crate::JobStatus::parse(&status),
            operation,
            count: count as u64,
        })
        .collect()
}

/// The job queries both backends share, and the mappers, for one
/// backend's row type.
macro_rules! row_mappers {
    ($row:ty) => {
        const JOB_COLUMNS: &str = crate::rows::job_columns!();

        /// One job ($1 domain, $2 id).
        const JOB_BY_ID: &str = concat!(
            "SELECT ",
            crate::rows::job_columns!(),
            " FROM jobs WHERE domain = $1 AND id = $2"
        );

        /// A deployment's queued or running job ($1 domain, $2 deployment;
        /// SQLite reads `$N` placeholders too).
        const ACTIVE_JOB: &str = concat!(
            "SELECT ",
            crate::rows::job_columns!(),
            " FROM jobs WHERE domain = $1 AND deployment = $2 AND status IN ('queued', 'running')"
        );

        fn job(row: &$row) -> crate::Job {
            crate::rows::job(row)
        }
        fn deployment(row: &$row) -> crate::Deployment {
            crate::Deployment {
                domain: row.get("domain"),
                name: row.get("name"),
                engine: row.get("engine"),
                connection: serde_json::from_str(row.get::<&str, _>("connection")).unwrap_or_default(),
                created_at: row.get("created_at"),
                backup_config: row
                    .get::<Option<&str>, _>("backup_config")
                    .and_then(|c| serde_json::from_str(c).ok()),
                runs_on: row.get("runs_on"),
            }
        }
        fn backup(row: &$row) -> crate::Backup {
            crate::Backup {
                job_id: row.get("job_id"),
                domain: row.get("domain"),
                deployment: row.get("deployment"),
                db_tag: row.get("db_tag"),
                status: crate::BackupStatus::parse(row.get::<&str, _>("status")),
                keep_forever: row.get("keep_forever"),
                started_at: row.get("started_at"),
                completed_at: row.get("completed_at"),
                snapshot_id: row.get("snapshot_id"),
                logical_bytes: row.get("logical_bytes"),
                stored_bytes: row.get("stored_bytes"),
                position: row
                    .get::<Option<&str>, _>("position")
                    .and_then(|p| serde_json::from_str(p).ok()),
            }
        }
        fn recovery(row: &$row) -> crate::Recovery {
            crate::Recovery {
                job_id: row.get("job_id"),
                domain: row.get("domain"),
                deployment: row.get("deployment"),
                target: serde_json::from_str(row.get::<&str, _>("target")).unwrap_or_default(),
                reached: row
                    .get::<Option<&str>, _>("reached")
                    .and_then(|p| serde_json::from_str(p).ok()),
                backup_job_id: row.get("backup_job_id"),
                status: crate::BackupStatus::parse(row.get::<&str, _>("status")),
                started_at: row.get("started_at"),
                completed_at: row.get("completed_at"),
            }
        }
    };
}

pub(crate) use {job_columns, row_mappers};

/// A row's columns by position, whichever driver read it. (By position:
/// a lookup by name compares names, a fifth of a job read's time.)
pub(crate) trait Columns {
    fn text(&self, column: usize) -> Option<String>;
    fn int(&self, column: usize) -> Option<i64>;
}

macro_rules! sqlx_columns {
    ($($row:ty),*) => {$(
        impl Columns for $row {
            fn text(&self, column: usize) -> Option<String> {
                sqlx::Row::get(self, column)
            }
            fn int(&self, column: usize) -> Option<i64> {
                sqlx::Row::get(self, column)
            }
        }
    )*};
}
sqlx_columns!(sqlx::sqlite::SqliteRow, sqlx::postgres::PgRow);

/// The SQLite catalog's reads on the request path (see `read_job_here`).
impl Columns for rusqlite::Row<'_> {
    fn text(&self, column: usize) -> Option<String> {
        self.get(column).ok().flatten()
    }
    fn int(&self, column: usize) -> Option<i64> {
        self.get(column).ok().flatten()
    }
}

/// A `jobs` row: the columns `job_columns!` names, in its order.
pub(crate) fn job(row: &impl Columns) -> crate::Job {
    let text = |c| row.text(c).unwrap_or_default();
    crate::Job {
        id: row.int(0).unwrap_or_default(),
        domain: text(1),
        deployment: text(2),
        operation: text(3),
        status: crate::JobStatus::parse(&text(4)),
        spec: row.text(5).and_then(|s| serde_json::from_str(&s).ok()),
        params: serde_json::from_str(&text(6)).unwrap_or_default(),
        created_by: text(7),
        created_at: text(8),
        started_at: row.text(9),
        finished_at: row.text(10),
        updated_at: text(11),
        attempts: row.int(12).unwrap_or_default(),
        bytes_done: row.int(13).unwrap_or_default(),
        bytes_total: row.int(14),
        message: row.text(15),
    }
}
