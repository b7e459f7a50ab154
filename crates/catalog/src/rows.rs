//! Rows to the model: both backends keep the same columns, read here.

/// The column list of `jobs` a `job` row mapper reads, and the mappers,
/// for one backend's row type.
macro_rules! row_mappers {
    ($row:ty) => {
        const JOB_COLUMNS: &str = "id, domain, deployment, operation, status, spec, params, created_by, created_at, \
             started_at, finished_at, updated_at, attempts, bytes_done, bytes_total, message";

        fn job(row: &$row) -> crate::Job {
            crate::Job {
                id: row.get("id"),
                domain: row.get("domain"),
                deployment: row.get("deployment"),
                operation: row.get("operation"),
                status: crate::JobStatus::parse(row.get::<&str, _>("status")),
                spec: row
                    .get::<Option<&str>, _>("spec")
                    .and_then(|s| serde_json::from_str(s).ok()),
                params: serde_json::from_str(row.get::<&str, _>("params")).unwrap_or_default(),
                created_by: row.get("created_by"),
                created_at: row.get("created_at"),
                started_at: row.get("started_at"),
                finished_at: row.get("finished_at"),
                updated_at: row.get("updated_at"),
                attempts: row.get("attempts"),
                bytes_done: row.get("bytes_done"),
                bytes_total: row.get("bytes_total"),
                message: row.get("message"),
            }
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

pub(crate) use row_mappers;
