//! The catalog on SQLite (sqlx), the embedded default.
//!
//! WAL mode with `synchronous=FULL`: a job row is on disk before the API
//! answers 202. Writes run in `BEGIN IMMEDIATE` transactions, so two
//! writers never deadlock upgrading a read lock; SQLite serializes them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use crate::{
    Backup, Catalog, Deployment, Error, Job, JobCount, JobEnd, JobMessage, Lease, NewDeployment, NewJob, NewRecord,
    Recovery, Result, Role, Started, User, hash_password, labels_of, now, rfc3339,
};

pub struct SqliteCatalog {
    pool: SqlitePool,
    path: PathBuf,
}

crate::rows::row_mappers!(SqliteRow);

impl SqliteCatalog {
    /// Opens (creating if needed) the catalog file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // WAL mode is a property of the file, set by the first connection:
        // several opening a new file at once each try to switch it, and
        // that step fails with SQLITE_BUSY instead of waiting.
        sqlx::Connection::close(<sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts).await?).await?;
        // Every connection opened now and kept: each has a thread of its
        // own, which inherits the CPU priority of the thread that opens it,
        // and a job thread (lower priority, see `serve`) must not open one
        // that requests then queue behind.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(SqliteCatalog {
            pool,
            path: path.to_path_buf(),
        })
    }

    /// Reads one job on the calling thread, with a connection of that
    /// thread's own, for the requests clients repeat most (job status,
    /// refusals of a busy deployment). Through the pool, each read is two
    /// hand-offs to sqlx's SQLite thread and back, which profiling showed
    /// cost three times the request's own work; the read itself is a
    /// primary-key or index lookup in the page cache, microseconds, and in
    /// WAL mode never waits for a writer. `None` if this path failed (the
    /// caller then reads through the pool).
    fn read_job_here(&self, sql: &str, params: impl rusqlite::Params) -> Option<Option<Job>> {
        thread_local! {
            static READERS: RefCell<HashMap<PathBuf, rusqlite::Connection>> = RefCell::default();
        }
        READERS.with_borrow_mut(|readers| {
            let read = |c: &rusqlite::Connection| -> rusqlite::Result<Option<Job>> {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(params)?;
                Ok(rows.next()?.map(crate::rows::job))
            };
            let conn = match readers.entry(self.path.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let c = rusqlite::Connection::open_with_flags(
                        &self.path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .ok()?;
                    c.busy_timeout(Duration::from_millis(100)).ok()?;
                    c.pragma_update(None, "query_only", true).ok()?;
                    v.insert(c)
                }
            };
            match read(conn) {
                Ok(found) => Some(found),
                Err(_) => {
                    readers.remove(&self.path);
                    None
                }
            }
        })
    }

    async fn write(&self) -> Result<Transaction<'_, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

async fn add_message(tx: &mut Transaction<'_, Sqlite>, job: i64, at: &str, message: &str) -> Result<()> {
    sqlx::query("INSERT INTO job_messages (job_id, at, message) VALUES (?, ?, ?)")
        .bind(job)
        .bind(at)
        .bind(message)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Queues a job unless the idempotency key names an earlier one or another
/// job of the deployment is active; those come back as `Err`.
async fn insert_job(tx: &mut Transaction<'_, Sqlite>, new: &NewJob) -> Result<Result<Job, Started>> {
    if let Some(key) = &new.idempotency_key {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE domain = ? AND deployment = ? AND idempotency_key = ?"
        )))
        .bind(&new.domain)
        .bind(&new.deployment)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = row {
            return Ok(Err(Started::Existing(job(&row))));
        }
    }
    let active = sqlx::query(ACTIVE_JOB)
        .bind(&new.domain)
        .bind(&new.deployment)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(row) = active {
        return Ok(Err(Started::Busy(job(&row))));
    }
    let at = rfc3339(new.at);
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO jobs (domain, deployment, operation, status, spec, params, created_by, idempotency_key, \
         created_at, updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?) RETURNING {JOB_COLUMNS}"
    )))
    .bind(&new.domain)
    .bind(&new.deployment)
    .bind(&new.operation)
    .bind(new.spec.to_string())
    .bind(new.params.to_string())
    .bind(&new.created_by)
    .bind(&new.idempotency_key)
    .bind(&at)
    .bind(&at)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Ok(job(&row)))
}

/// Ends a running job held by `owner`, with its backup or recovery row;
/// false if the lease was lost (another worker owns the job now).
async fn close_job(tx: &mut Transaction<'_, Sqlite>, lease: &Lease, end: &JobEnd) -> Result<bool> {
    let id = lease.job_id;
    let (ok, message) = (end.succeeded, end.message.as_str());
    let at = rfc3339(end.at);
    let r = sqlx::query(
        "UPDATE jobs SET status = ?, message = ?, finished_at = ?, updated_at = ?, lease_owner = NULL, \
         bytes_done = COALESCE(bytes_total, bytes_done) \
         WHERE id = ? AND lease_owner = ? AND attempts = ? AND status = 'running'",
    )
    .bind(if ok { "succeeded" } else { "failed" })
    .bind(message)
    .bind(&at)
    .bind(&at)
    .bind(id)
    .bind(&lease.owner)
    .bind(lease.attempt)
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    let status = if ok { "COMPLETED" } else { "FAILED" };
    for table in ["backups", "recoveries"] {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {table} SET status = ?, completed_at = ? WHERE job_id = ?"
        )))
        .bind(status)
        .bind(&at)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    }
    add_message(tx, id, &at, message).await?;
    Ok(true)
}

#[async_trait::async_trait]
impl Catalog for SqliteCatalog {
    async fn ensure_domain(&self, name: &str) -> Result<()> {
        sqlx::query("INSERT INTO identity_domains (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(rfc3339(now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn put_user(&self, name: &str, domain: &str, password: &str, role: Role) -> Result<()> {
        if let Some(u) = self.user(name).await?
            && u.domain != domain
        {
            return Err(Error::Invalid(format!(
                "user {name} already belongs to identity domain {}",
                u.domain
            )));
        }
        sqlx::query(
            "INSERT INTO users (name, domain, password_hash, role, created_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role",
        )
        .bind(name)
        .bind(domain)
        .bind(hash_password(password))
        .bind(role.as_str())
        .bind(rfc3339(now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn user(&self, name: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT name, domain, password_hash, role FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| User {
            name: r.get("name"),
            domain: r.get("domain"),
            password_hash: r.get("password_hash"),
            // An unknown role (written by a newer version) grants the least.
            role: Role::parse(r.get::<&str, _>("role")).unwrap_or(Role::Reader),
        }))
    }

    async fn put_deployment(&self, d: &NewDeployment) -> Result<Deployment> {
        sqlx::query(
            "INSERT INTO deployments (domain, name, engine, connection, created_at, runs_on) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, name) DO UPDATE SET engine = excluded.engine, \
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
        let row = sqlx::query("SELECT * FROM deployments WHERE domain = ? AND name = ?")
            .bind(domain)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(deployment))
    }

    async fn deployments(&self, domain: &str) -> Result<Vec<Deployment>> {
        let rows = sqlx::query("SELECT * FROM deployments WHERE domain = ? ORDER BY name")
            .bind(domain)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(deployment).collect())
    }

    async fn all_deployments(&self) -> Result<Vec<Deployment>> {
        let rows = sqlx::query("SELECT * FROM deployments ORDER BY domain, name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(deployment).collect())
    }

    async fn put_backup_config(&self, domain: &str, name: &str, config: &serde_json::Value) -> Result<bool> {
        let r = sqlx::query("UPDATE deployments SET backup_config = ? WHERE domain = ? AND name = ?")
            .bind(config.to_string())
            .bind(domain)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn create_job(&self, new: &NewJob, record: &NewRecord, message: &str) -> Result<Started> {
        let mut tx = self.write().await?;
        let created = match insert_job(&mut tx, new).await? {
            Ok(job) => job,
            Err(other) => return Ok(other),
        };
        let at = created.created_at.clone();
        match record {
            NewRecord::None => {}
            NewRecord::Backup { db_tag, keep_forever } => {
                let inserted = sqlx::query(
                    "INSERT INTO backups (job_id, domain, deployment, db_tag, status, keep_forever, started_at) \
                     VALUES (?, ?, ?, ?, 'IN PROGRESS', ?, ?) ON CONFLICT (domain, deployment, db_tag) DO NOTHING",
                )
                .bind(created.id)
                .bind(&new.domain)
                .bind(&new.deployment)
                .bind(db_tag)
                .bind(*keep_forever as i64)
                .bind(&at)
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() != 1 {
                    return Err(Error::Duplicate(format!("backup tag {db_tag} of {}", new.deployment)));
                }
            }
            NewRecord::Recovery { target, backup_job_id } => {
                let completed: Option<i64> = sqlx::query_scalar(
                    "SELECT job_id FROM backups WHERE job_id = ? AND domain = ? AND deployment = ? \
                     AND status = 'COMPLETED'",
                )
                .bind(backup_job_id)
                .bind(&new.domain)
                .bind(&new.deployment)
                .fetch_optional(&mut *tx)
                .await?;
                if completed.is_none() {
                    return Err(Error::NotFound(format!(
                        "completed backup (job {backup_job_id}) of {}",
                        new.deployment
                    )));
                }
                sqlx::query(
                    "INSERT INTO recoveries (job_id, domain, deployment, target, backup_job_id, status, started_at) \
                     VALUES (?, ?, ?, ?, ?, 'IN PROGRESS', ?)",
                )
                .bind(created.id)
                .bind(&new.domain)
                .bind(&new.deployment)
                .bind(target.to_string())
                .bind(backup_job_id)
                .bind(&at)
                .execute(&mut *tx)
                .await?;
            }
        }
        add_message(&mut tx, created.id, &at, message).await?;
        tx.commit().await?;
        Ok(Started::Created(created))
    }

    async fn job(&self, domain: &str, id: i64) -> Result<Option<Job>> {
        if let Some(found) = self.read_job_here(JOB_BY_ID, (domain, id)) {
            return Ok(found);
        }
        let row = sqlx::query(JOB_BY_ID)
            .bind(domain)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job))
    }

    async fn active_job(&self, domain: &str, deployment: &str) -> Result<Option<Job>> {
        if let Some(found) = self.read_job_here(ACTIVE_JOB, (domain, deployment)) {
            return Ok(found);
        }
        let row = sqlx::query(ACTIVE_JOB)
            .bind(domain)
            .bind(deployment)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job))
    }

    async fn job_messages(&self, id: i64) -> Result<Vec<JobMessage>> {
        let rows = sqlx::query("SELECT at, message FROM job_messages WHERE job_id = ? ORDER BY rowid")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| JobMessage {
                at: r.get("at"),
                message: r.get("message"),
            })
            .collect())
    }

    async fn backups(&self, domain: &str, deployment: &str) -> Result<Vec<Backup>> {
        let rows = sqlx::query("SELECT * FROM backups WHERE domain = ? AND deployment = ? ORDER BY job_id")
            .bind(domain)
            .bind(deployment)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(backup).collect())
    }

    async fn lease_job(&self, owner: &str, duration: Duration, labels: &[String]) -> Result<Option<Job>> {
        let labels = serde_json::to_string(labels).expect("serializable");
        let t = now();
        let (at, unix) = (rfc3339(t), t.unix_timestamp());
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires = ?, attempts = attempts + 1, \
             started_at = COALESCE(started_at, ?), updated_at = ? \
             WHERE id = (SELECT j.id FROM jobs j JOIN deployments d ON d.domain = j.domain AND d.name = j.deployment \
                         WHERE (j.status = 'queued' OR (j.status = 'running' AND j.lease_expires < ?)) \
                         AND (d.runs_on IS NULL OR d.runs_on IN (SELECT value FROM json_each(?))) \
                         ORDER BY j.id LIMIT 1) \
             RETURNING {JOB_COLUMNS}"
        )))
        .bind(owner)
        .bind(unix + duration.as_secs() as i64)
        .bind(&at)
        .bind(&at)
        .bind(unix)
        .bind(&labels)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(job))
    }

    async fn heartbeat(&self, lease: &Lease, duration: Duration, done: u64, total: Option<u64>) -> Result<bool> {
        let t = now();
        let r = sqlx::query(
            "UPDATE jobs SET bytes_done = ?, bytes_total = ?, lease_expires = ?, updated_at = ? \
             WHERE id = ? AND lease_owner = ? AND attempts = ? AND status = 'running'",
        )
        .bind(done as i64)
        .bind(total.map(|t| t as i64))
        .bind(t.unix_timestamp() + duration.as_secs() as i64)
        .bind(rfc3339(t))
        .bind(lease.job_id)
        .bind(&lease.owner)
        .bind(lease.attempt)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn release_job(&self, lease: &Lease) -> Result<bool> {
        let r = sqlx::query(crate::rows::RELEASE_JOB)
            .bind(rfc3339(now()))
            .bind(lease.job_id)
            .bind(&lease.owner)
            .bind(lease.attempt)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn job_counts(&self) -> Result<Vec<JobCount>> {
        let rows = sqlx::query_as(crate::rows::JOB_COUNTS).fetch_all(&self.pool).await?;
        Ok(crate::rows::job_counts(rows))
    }

    async fn finish_job(&self, lease: &Lease, end: &JobEnd) -> Result<bool> {
        let id = lease.job_id;
        let mut tx = self.write().await?;
        let closed = close_job(&mut tx, lease, end).await?;
        if closed && let Some(b) = &end.backup {
            sqlx::query("UPDATE jobs SET bytes_done = ?, bytes_total = ? WHERE id = ?")
                .bind(b.logical_bytes as i64)
                .bind(b.logical_bytes as i64)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE backups SET snapshot_id = ?, logical_bytes = ?, stored_bytes = ?, position = ? WHERE job_id = ?",
            )
            .bind(&b.snapshot_id)
            .bind(b.logical_bytes as i64)
            .bind(b.stored_bytes as i64)
            .bind(b.position.as_ref().map(|p| p.to_string()))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        if closed && let Some(reached) = &end.reached {
            sqlx::query("UPDATE recoveries SET reached = ? WHERE job_id = ?")
                .bind(reached.to_string())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(closed)
    }

    async fn announce(&self, owner: &str, labels: &[String]) -> Result<()> {
        sqlx::query(
            "INSERT INTO servers (owner, labels, seen_at) VALUES (?, ?, ?) \
             ON CONFLICT (owner) DO UPDATE SET labels = excluded.labels, seen_at = excluded.seen_at",
        )
        .bind(owner)
        .bind(serde_json::to_string(labels).expect("serializable"))
        .bind(now().unix_timestamp())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn live_labels(&self, within: Duration) -> Result<Vec<String>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT labels FROM servers WHERE seen_at >= ?")
            .bind(now().unix_timestamp() - within.as_secs() as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(labels_of(&rows))
    }

    async fn mark_backups_deleted(&self, domain: &str, deployment: &str, job_ids: &[i64]) -> Result<()> {
        let mut tx = self.write().await?;
        for id in job_ids {
            sqlx::query("UPDATE backups SET status = 'DELETED' WHERE domain = ? AND deployment = ? AND job_id = ?")
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
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE id = ? \
             AND lease_owner = ? AND attempts = ? AND status = 'running'",
        )
        .bind(lease.job_id)
        .bind(&lease.owner)
        .bind(lease.attempt)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_some() {
            add_message(&mut tx, lease.job_id, &rfc3339(now()), message).await?;
            tx.commit().await?;
        }
        Ok(held.is_some())
    }

    async fn backup(&self, domain: &str, job_id: i64) -> Result<Option<Backup>> {
        let row = sqlx::query("SELECT * FROM backups WHERE domain = ? AND job_id = ?")
            .bind(domain)
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(backup))
    }

    async fn recovery(&self, domain: &str, job_id: i64) -> Result<Option<Recovery>> {
        let row = sqlx::query("SELECT * FROM recoveries WHERE domain = ? AND job_id = ?")
            .bind(domain)
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(recovery))
    }

    async fn recoveries(&self, domain: &str, deployment: &str) -> Result<Vec<Recovery>> {
        let rows = sqlx::query("SELECT * FROM recoveries WHERE domain = ? AND deployment = ? ORDER BY job_id")
            .bind(domain)
            .bind(deployment)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(recovery).collect())
    }
}
