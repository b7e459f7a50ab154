//! The catalog's one implementation, on SQLite (the embedded default) or
//! PostgreSQL (several replicas sharing one catalog), through sqlx's `Any`
//! driver: each statement is written once; what differs between the two
//! is in `Dialect`. It stores rows and enforces what a database should:
//! unique keys (tags), one active job per deployment (a unique index),
//! leases and fencing (every write for a job names its attempt). What the
//! rows mean is the service core's business.
//!
//! SQLite runs in WAL mode with `synchronous=FULL`: a job row is on disk
//! before the API answers 202.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, SqlSafeStr, Transaction};
use sqlx::{AnyPool, pool::PoolOptions};

use crate::BackupConfig;
use crate::dialect::Dialect;
use crate::rows::{BACKUP_COLUMNS, Columns, DEPLOYMENT_COLUMNS, JOB_COLUMNS, RECOVERY_COLUMNS};
use crate::sqlite_reads::SqliteReads;
use crate::{
    Backup, BackupCopy, BackupStatus, Catalog, Deployment, Error, ImportedBackup, ImportedRecovery, Job, JobCount,
    JobEnd, JobMessage, JobSpec, JobStatus, Lease, NewDeployment, NewJob, NewRecord, Operation, Recovery,
    RecoveryStatus, Result, Role, Started, Trigger, User, Verification, labels_of, now, rfc3339,
};

/// How long a PostgreSQL catalog request waits for a connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(750);

/// The statements whose text depends on the dialect, filled in once.
struct Statements {
    lease: Arc<str>,
    heartbeat: Arc<str>,
    announce: Arc<str>,
    live_labels: Arc<str>,
    held_for_message: Arc<str>,
}

impl Statements {
    fn new(d: Dialect) -> Self {
        Statements {
            lease: d.statement(&format!(
                "UPDATE jobs SET status = $5, lease_owner = $1, lease_expires = {{now}} + $2, \
                 attempts = attempts + 1, started_at = COALESCE(started_at, $3), updated_at = $3 \
                 WHERE id = (SELECT j.id FROM jobs j JOIN deployments d ON d.domain = j.domain AND d.name = j.deployment \
                             WHERE (j.status = $6 OR (j.status = $5 AND j.lease_expires < {{now}})) \
                             AND (d.runs_on IS NULL OR d.runs_on IN {{labels}}) \
                             ORDER BY j.id LIMIT 1{{skip_locked}}) \
                 RETURNING {JOB_COLUMNS}"
            )),
            heartbeat: d.statement(
                "UPDATE jobs SET bytes_done = $1, bytes_total = $2, lease_expires = {now} + $3, updated_at = $4 \
                 WHERE id = $5 AND lease_owner = $6 AND attempts = $7 AND status = $8",
            ),
            announce: d.statement(
                "INSERT INTO servers (owner, labels, seen_at) VALUES ($1, $2, {now}) \
                 ON CONFLICT (owner) DO UPDATE SET labels = excluded.labels, seen_at = excluded.seen_at",
            ),
            live_labels: d.statement("SELECT labels FROM servers WHERE seen_at >= {now} - $1"),
            held_for_message: d.statement(
                "SELECT id FROM jobs WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = $4{for_update}",
            ),
        }
    }
}

/// One job ($1 domain, $2 id).
const JOB_BY_ID: &str = concat!(
    "SELECT ",
    crate::rows::job_columns!(),
    " FROM jobs WHERE domain = $1 AND id = $2"
);

/// A deployment's active job ($1 domain, $2 deployment, $3 and $4 the
/// queued and running status words).
const ACTIVE_JOB: &str = concat!(
    "SELECT ",
    crate::rows::job_columns!(),
    " FROM jobs WHERE domain = $1 AND deployment = $2 AND status IN ($3, $4)"
);

pub struct SqlCatalog {
    pool: AnyPool,
    dialect: Dialect,
    statements: Statements,
    /// SQLite: the request path's job reads.
    reads: Option<SqliteReads>,
}

fn q(s: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(s.clone())
}

type Query<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>;

/// Binds the fence every write for a job ends with: the statement's last
/// four placeholders are the job's id, the lease's owner and attempt, and
/// the running status, so that only the attempt holding the job writes.
fn fenced<'q>(query: Query<'q>, lease: &'q Lease) -> Query<'q> {
    query
        .bind(lease.job_id)
        .bind(&lease.owner)
        .bind(lease.attempt)
        .bind(JobStatus::Running.as_str())
}

impl SqlCatalog {
    /// Opens (creating if needed) a SQLite catalog file and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        sqlx::any::install_default_drivers();
        // WAL mode is a property of the file, set once: several connections
        // opening a new file at once would each try to switch it, and that
        // step fails with SQLITE_BUSY instead of waiting.
        {
            let c = rusqlite::Connection::open(path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            c.busy_timeout(Duration::from_secs(10))
                .and_then(|_| c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())))
                .map_err(|e| Error::Invalid(format!("{}: WAL mode: {e}", path.display())))?;
        }
        // Every connection opened now and kept: each has a thread of its
        // own, which inherits the CPU priority of the thread that opens it,
        // and a job thread (lower priority, see `serve`) must not open one
        // that requests then queue behind.
        let pool = PoolOptions::<Any>::new()
            .max_connections(4)
            .min_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await?;
        crate::migrations::migrator(crate::migrations::SQLITE)
            .run(&pool)
            .await?;
        Ok(SqlCatalog {
            pool,
            dialect: Dialect::Sqlite,
            statements: Statements::new(Dialect::Sqlite),
            reads: Some(SqliteReads {
                path: path.to_path_buf(),
            }),
        })
    }

    /// Connects to a PostgreSQL catalog (`postgresql://…`) and migrates it
    /// (sqlx takes a lock: replicas starting together migrate once).
    pub async fn connect_postgres(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        // Connections kept open from the start: PostgreSQL starts a process
        // for each, which a request should not wait for.
        let pool = PoolOptions::<Any>::new()
            .max_connections(8)
            .min_connections(4)
            // While the database is unreachable a request gets its 503 in
            // under a second rather than hanging (issue 30); a connection
            // waited for this long means an overload, which a 503 with
            // Retry-After also serves better.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        crate::migrations::migrator(crate::migrations::POSTGRES)
            .run(&pool)
            .await?;
        Ok(SqlCatalog {
            pool,
            dialect: Dialect::Postgres,
            statements: Statements::new(Dialect::Postgres),
            reads: None,
        })
    }

    async fn write(&self) -> Result<Transaction<'_, Any>> {
        Ok(self.pool.begin_with(self.dialect.begin_write()).await?)
    }

    async fn one(&self, sql: impl SqlSafeStr, binds: &[&str]) -> Result<Option<AnyRow>> {
        let mut query = sqlx::query(sql);
        for b in binds {
            query = query.bind(*b);
        }
        Ok(query.fetch_optional(&self.pool).await?)
    }

    /// The row of `table` (`backups`, `recoveries`) that job `job_id` of
    /// `domain` made.
    async fn made_by(&self, columns: &str, table: &str, domain: &str, job_id: i64) -> Result<Option<AnyRow>> {
        let sql = format!("SELECT {columns} FROM {table} WHERE domain = $1 AND job_id = $2");
        Ok(sqlx::query(AssertSqlSafe(sql))
            .bind(domain)
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn all(&self, sql: impl SqlSafeStr, binds: &[&str]) -> Result<Vec<AnyRow>> {
        let mut query = sqlx::query(sql);
        for b in binds {
            query = query.bind(*b);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }
}

/// A job that ran under an earlier catalog, indexed again (`import_*`).
struct EndedJob<'a> {
    domain: &'a str,
    deployment: &'a str,
    operation: Operation,
    status: JobStatus,
    /// `None`: this version keeps no spec for it (a recovery's plan is spent).
    spec: Option<&'a JobSpec>,
    started_at: &'a str,
    ended_at: &'a str,
    /// Bytes done (and the total), if it moved any.
    bytes: Option<i64>,
    /// Its message, and its activity log's one line.
    message: &'a str,
}

async fn insert_ended_job(tx: &mut Transaction<'_, Any>, j: EndedJob<'_>) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO jobs (domain, deployment, operation, status, spec, created_by, created_at, started_at, \
         finished_at, updated_at, bytes_done, bytes_total, message) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $8, $9, $10, $11) RETURNING id",
    )
    .bind(j.domain)
    .bind(j.deployment)
    .bind(j.operation.as_str())
    .bind(j.status.as_str())
    .bind(j.spec.map(|s| serde_json::to_string(s).expect("a spec serializes")))
    .bind(crate::IMPORTED)
    .bind(j.started_at)
    .bind(j.ended_at)
    .bind(j.bytes.unwrap_or(0))
    .bind(j.bytes)
    .bind(j.message)
    .fetch_one(&mut **tx)
    .await?;
    let id: i64 = sqlx::Row::try_get(&row, 0)?;
    add_message(tx, id, j.ended_at, j.message).await?;
    Ok(id)
}

async fn add_message(tx: &mut Transaction<'_, Any>, job: i64, at: &str, message: &str) -> Result<()> {
    sqlx::query("INSERT INTO job_messages (job_id, at, message) VALUES ($1, $2, $3)")
        .bind(job)
        .bind(at)
        .bind(message)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl SqlCatalog {
    /// Queues a job unless the idempotency key names an earlier one or
    /// another job of the deployment is active; those come back as `Err`.
    async fn insert_job(&self, tx: &mut Transaction<'_, Any>, new: &NewJob) -> Result<Result<Job, Started>> {
        if let Some(lock) = self.dialect.serialize_job_creation() {
            sqlx::query(lock)
                .bind(&new.domain)
                .bind(&new.deployment)
                .execute(&mut **tx)
                .await?;
        }
        if let Some(key) = &new.idempotency_key {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE domain = $1 AND deployment = $2 AND idempotency_key = $3"
            )))
            .bind(&new.domain)
            .bind(&new.deployment)
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(row) = row {
                return Ok(Err(Started::Existing(crate::rows::job(&row))));
            }
        }
        let active = sqlx::query(ACTIVE_JOB)
            .bind(&new.domain)
            .bind(&new.deployment)
            .bind(JobStatus::Queued.as_str())
            .bind(JobStatus::Running.as_str())
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(row) = active {
            return Ok(Err(Started::Busy(crate::rows::job(&row))));
        }
        let at = rfc3339(new.at);
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO jobs (domain, deployment, operation, status, spec, created_by, idempotency_key, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {JOB_COLUMNS}"
        )))
        .bind(&new.domain)
        .bind(&new.deployment)
        .bind(new.spec.operation().as_str())
        .bind(JobStatus::Queued.as_str())
        .bind(serde_json::to_string(&new.spec).expect("a spec serializes"))
        .bind(&new.created_by)
        .bind(&new.idempotency_key)
        .bind(&at)
        .fetch_one(&mut **tx)
        .await?;
        Ok(Ok(crate::rows::job(&row)))
    }

    /// Ends a running job held by `lease`, with its backup or recovery row;
    /// false if the lease was lost (another attempt holds the job now).
    async fn close_job(&self, tx: &mut Transaction<'_, Any>, lease: &Lease, end: &JobEnd) -> Result<bool> {
        let id = lease.job_id;
        let at = rfc3339(end.at);
        let status = if end.succeeded {
            JobStatus::Succeeded
        } else {
            JobStatus::Failed
        };
        let query = sqlx::query(
            "UPDATE jobs SET status = $1, message = $2, finished_at = $3, updated_at = $3, lease_owner = NULL, \
             bytes_done = COALESCE(bytes_total, bytes_done) \
             WHERE id = $4 AND lease_owner = $5 AND attempts = $6 AND status = $7",
        )
        .bind(status.as_str())
        .bind(&end.message)
        .bind(&at);
        let r = fenced(query, lease).execute(&mut **tx).await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        let (backup, recovery) = match end.succeeded {
            true => (BackupStatus::Completed.as_str(), RecoveryStatus::Completed.as_str()),
            false => (BackupStatus::Failed.as_str(), RecoveryStatus::Failed.as_str()),
        };
        for (table, status) in [("backups", backup), ("recoveries", recovery)] {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE {table} SET status = $1, completed_at = $2 WHERE job_id = $3"
            )))
            .bind(status)
            .bind(&at)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        add_message(tx, id, &at, &end.message).await?;
        Ok(true)
    }
}

#[async_trait::async_trait]
impl Catalog for SqlCatalog {
    async fn ensure_domain(&self, name: &str) -> Result<()> {
        sqlx::query("INSERT INTO identity_domains (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(rfc3339(now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn put_user(&self, name: &str, domain: &str, password_hash: &str, role: Role) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (name, domain, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role",
        )
        .bind(name)
        .bind(domain)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(rfc3339(now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn user(&self, name: &str) -> Result<Option<User>> {
        let row = self
            .one(
                "SELECT name, domain, password_hash, role FROM users WHERE name = $1",
                &[name],
            )
            .await?;
        Ok(row.map(|r| {
            User {
                name: r.text(0).unwrap_or_default(),
                domain: r.text(1).unwrap_or_default(),
                password_hash: r.text(2).unwrap_or_default(),
                // An unknown role (written by a newer version) grants the least.
                role: Role::parse(&r.text(3).unwrap_or_default()).unwrap_or(Role::Reader),
            }
        }))
    }

    async fn put_deployment(&self, d: &NewDeployment) -> Result<Deployment> {
        sqlx::query(
            "INSERT INTO deployments (domain, name, engine, connection, created_at, runs_on) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (domain, name) DO UPDATE SET engine = excluded.engine, \
             connection = excluded.connection, runs_on = excluded.runs_on",
        )
        .bind(&d.domain)
        .bind(&d.name)
        .bind(&d.engine)
        .bind(d.connection.to_string())
        .bind(rfc3339(now()))
        .bind(&d.runs_on)
        .execute(&self.pool)
        .await?;
        self.deployment(&d.domain, &d.name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("deployment {}", d.name)))
    }

    async fn deployment(&self, domain: &str, name: &str) -> Result<Option<Deployment>> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE domain = $1 AND name = $2");
        let row = self.one(AssertSqlSafe(sql), &[domain, name]).await?;
        Ok(row.as_ref().map(crate::rows::deployment))
    }

    async fn deployments(&self, domain: &str) -> Result<Vec<Deployment>> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE domain = $1 ORDER BY name");
        let rows = self.all(AssertSqlSafe(sql), &[domain]).await?;
        Ok(rows.iter().map(crate::rows::deployment).collect())
    }

    async fn all_deployments(&self) -> Result<Vec<Deployment>> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY domain, name");
        let rows = self.all(AssertSqlSafe(sql), &[]).await?;
        Ok(rows.iter().map(crate::rows::deployment).collect())
    }

    async fn put_backup_config(&self, domain: &str, name: &str, config: &BackupConfig) -> Result<bool> {
        let r = sqlx::query("UPDATE deployments SET backup_config = $1 WHERE domain = $2 AND name = $3")
            .bind(serde_json::to_string(config).expect("a configuration serializes"))
            .bind(domain)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn create_job(&self, new: &NewJob, record: &NewRecord, message: &str) -> Result<Started> {
        let mut tx = self.write().await?;
        let created = match self.insert_job(&mut tx, new).await? {
            Ok(job) => job,
            Err(other) => return Ok(other),
        };
        let at = created.created_at.clone();
        match record {
            NewRecord::None => {}
            NewRecord::Backup { db_tag, keep_forever } => {
                let inserted = sqlx::query(
                    "INSERT INTO backups (job_id, domain, deployment, db_tag, status, keep_forever, started_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (domain, deployment, db_tag) DO NOTHING",
                )
                .bind(created.id)
                .bind(&new.domain)
                .bind(&new.deployment)
                .bind(db_tag)
                .bind(BackupStatus::InProgress.as_str())
                .bind(*keep_forever as i64)
                .bind(&at)
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() != 1 {
                    return Err(Error::Duplicate(format!("backup tag {db_tag} of {}", new.deployment)));
                }
            }
            NewRecord::Recovery { target, backup_job_id } => {
                // The backup it names must be there, completed (not failed,
                // not deleted): checked in the same statement.
                let inserted = sqlx::query(
                    "INSERT INTO recoveries (job_id, domain, deployment, target, backup_job_id, status, started_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM backups WHERE job_id = $5 \
                     AND domain = $2 AND deployment = $3 AND status = $8)",
                )
                .bind(created.id)
                .bind(&new.domain)
                .bind(&new.deployment)
                .bind(target.to_string())
                .bind(backup_job_id)
                .bind(RecoveryStatus::InProgress.as_str())
                .bind(&at)
                .bind(BackupStatus::Completed.as_str())
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() != 1 {
                    return Err(Error::NotFound(format!(
                        "completed backup (job {backup_job_id}) of {}",
                        new.deployment
                    )));
                }
            }
        }
        add_message(&mut tx, created.id, &at, message).await?;
        tx.commit().await?;
        Ok(Started::Created(created))
    }

    async fn job(&self, domain: &str, id: i64) -> Result<Option<Job>> {
        if let Some(found) = self.reads.as_ref().and_then(|r| r.job(JOB_BY_ID, (domain, id))) {
            return Ok(found);
        }
        let row = sqlx::query(JOB_BY_ID)
            .bind(domain)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(crate::rows::job))
    }

    async fn active_job(&self, domain: &str, deployment: &str) -> Result<Option<Job>> {
        let (queued, running) = (JobStatus::Queued.as_str(), JobStatus::Running.as_str());
        let here = self.reads.as_ref();
        if let Some(found) = here.and_then(|r| r.job(ACTIVE_JOB, (domain, deployment, queued, running))) {
            return Ok(found);
        }
        let row = self.one(ACTIVE_JOB, &[domain, deployment, queued, running]).await?;
        Ok(row.as_ref().map(crate::rows::job))
    }

    async fn job_messages(&self, id: i64) -> Result<Vec<JobMessage>> {
        let rows = sqlx::query("SELECT at, message FROM job_messages WHERE job_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| JobMessage {
                at: r.text(0).unwrap_or_default(),
                message: r.text(1).unwrap_or_default(),
            })
            .collect())
    }

    async fn backups(&self, domain: &str, deployment: &str) -> Result<Vec<Backup>> {
        let sql = format!("SELECT {BACKUP_COLUMNS} FROM backups WHERE domain = $1 AND deployment = $2 ORDER BY job_id");
        let rows = self.all(AssertSqlSafe(sql), &[domain, deployment]).await?;
        let mut backups: Vec<Backup> = rows.iter().map(crate::rows::backup).collect();
        // Times are RFC 3339 text of varying precision: compared parsed.
        let taken = |b: &Backup| {
            time::OffsetDateTime::parse(&b.started_at, &time::format_description::well_known::Rfc3339).ok()
        };
        backups.sort_by_cached_key(|b| (taken(b), b.job_id));
        Ok(backups)
    }

    async fn backup(&self, domain: &str, job_id: i64) -> Result<Option<Backup>> {
        let row = self.made_by(BACKUP_COLUMNS, "backups", domain, job_id).await?;
        Ok(row.as_ref().map(crate::rows::backup))
    }

    async fn count_tags(&self, domain: &str, deployment: &str, tag: &str) -> Result<u64> {
        // `tag` itself, and `tag_N` (`_` and digits sort below `~`): two
        // probes of the index on (domain, deployment, db_tag), whatever
        // the history's length. (One `tag = … OR range` made SQLite scan
        // every backup of the deployment: POST grew 1.4 → 1.7 ms over
        // 5,000 backups.)
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM backups WHERE domain = $1 AND deployment = $2 AND db_tag = $3) \
             + (SELECT count(*) FROM backups WHERE domain = $1 AND deployment = $2 AND db_tag > $4 AND db_tag < $5)",
        )
        .bind(domain)
        .bind(deployment)
        .bind(tag)
        .bind(format!("{tag}_"))
        .bind(format!("{tag}_~"))
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    async fn recoveries(&self, domain: &str, deployment: &str) -> Result<Vec<Recovery>> {
        let sql =
            format!("SELECT {RECOVERY_COLUMNS} FROM recoveries WHERE domain = $1 AND deployment = $2 ORDER BY job_id");
        let rows = self.all(AssertSqlSafe(sql), &[domain, deployment]).await?;
        Ok(rows.iter().map(crate::rows::recovery).collect())
    }

    async fn recovery(&self, domain: &str, job_id: i64) -> Result<Option<Recovery>> {
        let row = self.made_by(RECOVERY_COLUMNS, "recoveries", domain, job_id).await?;
        Ok(row.as_ref().map(crate::rows::recovery))
    }

    async fn lease_job(&self, owner: &str, duration: Duration, labels: &[String]) -> Result<Option<Job>> {
        let labels = serde_json::to_string(labels).expect("serializable");
        let row = sqlx::query(q(&self.statements.lease))
            .bind(owner)
            .bind(duration.as_secs() as i64)
            .bind(rfc3339(now()))
            .bind(&labels)
            .bind(JobStatus::Running.as_str())
            .bind(JobStatus::Queued.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(crate::rows::job))
    }

    async fn heartbeat(&self, lease: &Lease, duration: Duration, done: u64, total: Option<u64>) -> Result<bool> {
        let query = sqlx::query(q(&self.statements.heartbeat))
            .bind(done as i64)
            .bind(total.map(|t| t as i64))
            .bind(duration.as_secs() as i64)
            .bind(rfc3339(now()));
        let r = fenced(query, lease).execute(&self.pool).await?;
        Ok(r.rows_affected() == 1)
    }

    async fn release_job(&self, lease: &Lease) -> Result<bool> {
        // Its lease expires now: the next `lease_job` takes it as a dead
        // worker's.
        let query = sqlx::query(
            "UPDATE jobs SET lease_expires = 0, updated_at = $1 \
             WHERE id = $2 AND lease_owner = $3 AND attempts = $4 AND status = $5",
        )
        .bind(rfc3339(now()));
        let r = fenced(query, lease).execute(&self.pool).await?;
        Ok(r.rows_affected() == 1)
    }

    async fn job_counts(&self) -> Result<Vec<JobCount>> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT operation, status, count(*) FROM jobs GROUP BY operation, status")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(operation, status, count)| {
                Some(JobCount {
                    operation: Operation::parse(&operation)?,
                    status: JobStatus::parse(&status),
                    count: count as u64,
                })
            })
            .collect())
    }

    async fn import_backup(&self, b: &ImportedBackup) -> Result<bool> {
        let mut tx = self.write().await?;
        let known = sqlx::query(
            "SELECT 1 FROM backups WHERE domain = $1 AND deployment = $2 AND (db_tag = $3 OR snapshot_id = $4)",
        )
        .bind(&b.domain)
        .bind(&b.deployment)
        .bind(&b.db_tag)
        .bind(&b.snapshot_id)
        .fetch_optional(&mut *tx)
        .await?;
        if known.is_some() {
            return Ok(false);
        }
        let spec = JobSpec::Backup {
            keep_forever: b.keep_forever,
            trigger: Trigger::User,
        };
        let job = insert_ended_job(
            &mut tx,
            EndedJob {
                domain: &b.domain,
                deployment: &b.deployment,
                operation: Operation::Backup,
                status: JobStatus::Succeeded,
                spec: Some(&spec),
                started_at: &b.started_at,
                ended_at: &b.completed_at,
                bytes: Some(b.logical_bytes as i64),
                message: &b.message,
            },
        )
        .await?;
        // A replica importing the same backup at once: one row wins.
        let inserted = sqlx::query(
            "INSERT INTO backups (job_id, domain, deployment, db_tag, status, keep_forever, started_at, completed_at, \
             snapshot_id, logical_bytes, stored_bytes, position) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12) ON CONFLICT (domain, deployment, db_tag) DO NOTHING",
        )
        .bind(job)
        .bind(&b.domain)
        .bind(&b.deployment)
        .bind(&b.db_tag)
        .bind(BackupStatus::Completed.as_str())
        .bind(b.keep_forever as i64)
        .bind(&b.started_at)
        .bind(&b.completed_at)
        .bind(&b.snapshot_id)
        .bind(b.logical_bytes as i64)
        .bind(b.stored_bytes as i64)
        .bind(b.position.as_ref().map(|p| p.to_stored()))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() != 1 {
            return Ok(false); // dropped: rolled back
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn import_recovery(&self, r: &ImportedRecovery) -> Result<bool> {
        let mut tx = self.write().await?;
        let known = sqlx::query("SELECT 1 FROM recoveries WHERE domain = $1 AND deployment = $2 AND started_at = $3")
            .bind(&r.domain)
            .bind(&r.deployment)
            .bind(&r.started_at)
            .fetch_optional(&mut *tx)
            .await?;
        let from = sqlx::query("SELECT job_id FROM backups WHERE domain = $1 AND deployment = $2 AND db_tag = $3")
            .bind(&r.domain)
            .bind(&r.deployment)
            .bind(&r.from_tag)
            .fetch_optional(&mut *tx)
            .await?;
        if known.is_some() {
            return Ok(false);
        }
        let from: Option<i64> = from.map(|row| sqlx::Row::try_get(&row, 0)).transpose()?;
        let (job_status, status) = match r.status {
            RecoveryStatus::Completed => (JobStatus::Succeeded, RecoveryStatus::Completed),
            _ => (JobStatus::Failed, RecoveryStatus::Failed),
        };
        let job = insert_ended_job(
            &mut tx,
            EndedJob {
                domain: &r.domain,
                deployment: &r.deployment,
                operation: Operation::Recovery,
                status: job_status,
                spec: None,
                started_at: &r.started_at,
                ended_at: r.completed_at.as_ref().unwrap_or(&r.started_at),
                bytes: None,
                message: &r.message,
            },
        )
        .await?;
        sqlx::query(
            "INSERT INTO recoveries (job_id, domain, deployment, target, backup_job_id, status, started_at, \
             completed_at, reached) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(job)
        .bind(&r.domain)
        .bind(&r.deployment)
        .bind(r.target.as_ref().map_or("{}".to_string(), |t| t.to_string()))
        .bind(from)
        .bind(status.as_str())
        .bind(&r.started_at)
        .bind(&r.completed_at)
        .bind(
            r.reached
                .as_ref()
                .map(|x| serde_json::to_string(x).expect("serializable")),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn finish_job(&self, lease: &Lease, end: &JobEnd) -> Result<bool> {
        let id = lease.job_id;
        let mut tx = self.write().await?;
        let closed = self.close_job(&mut tx, lease, end).await?;
        if closed && let Some(b) = &end.backup {
            sqlx::query("UPDATE jobs SET bytes_done = $1, bytes_total = $1 WHERE id = $2")
                .bind(b.logical_bytes as i64)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE backups SET snapshot_id = $1, logical_bytes = $2, stored_bytes = $3, position = $4 \
                 WHERE job_id = $5",
            )
            .bind(&b.snapshot_id)
            .bind(b.logical_bytes as i64)
            .bind(b.stored_bytes as i64)
            .bind(b.position.as_ref().map(|p| p.to_stored()))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        if closed && let Some(reached) = &end.reached {
            sqlx::query("UPDATE recoveries SET reached = $1 WHERE job_id = $2")
                .bind(serde_json::to_string(reached).expect("serializable"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(closed)
    }

    async fn announce(&self, owner: &str, labels: &[String]) -> Result<()> {
        sqlx::query(q(&self.statements.announce))
            .bind(owner)
            .bind(serde_json::to_string(labels).expect("serializable"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn live_labels(&self, within: Duration) -> Result<Vec<String>> {
        let rows: Vec<String> = sqlx::query_scalar(q(&self.statements.live_labels))
            .bind(within.as_secs() as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(labels_of(&rows))
    }

    async fn record_copy(&self, domain: &str, deployment: &str, backup_job_id: i64, copy: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO backup_copies (backup_job_id, domain, deployment, copy, copied_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (backup_job_id, copy) DO NOTHING",
        )
        .bind(backup_job_id)
        .bind(domain)
        .bind(deployment)
        .bind(copy)
        .bind(rfc3339(now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn forget_copies(&self, domain: &str, deployment: &str, copy: &str, backup_job_ids: &[i64]) -> Result<()> {
        let mut tx = self.write().await?;
        for id in backup_job_ids {
            sqlx::query(
                "DELETE FROM backup_copies WHERE domain = $1 AND deployment = $2 AND copy = $3 AND backup_job_id = $4",
            )
            .bind(domain)
            .bind(deployment)
            .bind(copy)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn copies(&self, domain: &str, deployment: &str) -> Result<Vec<BackupCopy>> {
        let sql = "SELECT backup_job_id, copy, copied_at FROM backup_copies WHERE domain = $1 AND deployment = $2 \
                   ORDER BY backup_job_id, copy";
        let rows = self.all(sql, &[domain, deployment]).await?;
        Ok(rows
            .iter()
            .map(|r| BackupCopy {
                backup_job_id: r.int(0).unwrap_or_default(),
                copy: r.text(1).unwrap_or_default(),
                copied_at: r.text(2).unwrap_or_default(),
            })
            .collect())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn record_verification(&self, domain: &str, job_id: i64, v: &Verification) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE backups SET verified_at = $1, verify_status = $2, verify_message = $3 WHERE domain = $4 AND \
             job_id = $5",
        )
        .bind(&v.at)
        .bind(v.status())
        .bind(&v.message)
        .bind(domain)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_backups_deleted(&self, domain: &str, deployment: &str, job_ids: &[i64]) -> Result<()> {
        let mut tx = self.write().await?;
        for id in job_ids {
            sqlx::query("UPDATE backups SET status = $1 WHERE domain = $2 AND deployment = $3 AND job_id = $4")
                .bind(BackupStatus::Deleted.as_str())
                .bind(domain)
                .bind(deployment)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn add_job_message(&self, lease: &Lease, message: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let held = fenced(sqlx::query(q(&self.statements.held_for_message)), lease)
            .fetch_optional(&mut *tx)
            .await?;
        if held.is_some() {
            add_message(&mut tx, lease.job_id, &rfc3339(now()), message).await?;
            tx.commit().await?;
        }
        Ok(held.is_some())
    }
}
