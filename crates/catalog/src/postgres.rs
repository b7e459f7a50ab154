//! The catalog on PostgreSQL (sqlx), for several server replicas sharing
//! one catalog: `catalog = "postgresql://…"` / `STRONGBOX_CATALOG`.
//!
//! The same rows as the SQLite catalog; what differs is how concurrent
//! writers from many processes are kept apart: job creation for one
//! deployment is serialized by a transaction-level advisory lock (and the
//! unique indexes stand behind it), workers lease with `FOR UPDATE SKIP
//! LOCKED`, and leases run on the database's clock, not the replicas'.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::{
    Backup, Catalog, Deployment, Error, Job, JobCount, JobEnd, JobMessage, Lease, NewDeployment, NewJob, NewRecord,
    Recovery, Result, Role, Started, User, hash_password, labels_of, now, rfc3339,
};

pub struct PgCatalog {
    pool: PgPool,
}

crate::rows::row_mappers!(PgRow);

impl PgCatalog {
    /// Connects to the catalog database (`postgresql://…`) and applies
    /// migrations (sqlx takes a lock: replicas starting together migrate once).
    pub async fn connect(url: &str) -> Result<Self> {
        // Connections kept open from the start: PostgreSQL starts a process
        // for each, which a request should not wait for.
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PgCatalog { pool })
    }

    async fn write(&self) -> Result<Transaction<'_, Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

/// Unix seconds on the database's clock, which every replica shares.
const DB_NOW: &str = "extract(epoch FROM clock_timestamp())::bigint";

async fn add_message(tx: &mut Transaction<'_, Postgres>, job: i64, at: &str, message: &str) -> Result<()> {
    sqlx::query("INSERT INTO job_messages (job_id, at, message) VALUES ($1, $2, $3)")
        .bind(job)
        .bind(at)
        .bind(message)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Queues a job unless the idempotency key names an earlier one or another
/// job of the deployment is active; those come back as `Err`.
async fn insert_job(tx: &mut Transaction<'_, Postgres>, new: &NewJob) -> Result<Result<Job, Started>> {
    // Replicas queueing for one deployment take turns until commit, so the
    // checks below see each other's jobs.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
        .bind(&new.domain)
        .bind(&new.deployment)
        .execute(&mut **tx)
        .await?;
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
         created_at, updated_at) VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9) RETURNING {JOB_COLUMNS}"
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
async fn close_job(tx: &mut Transaction<'_, Postgres>, lease: &Lease, end: &JobEnd) -> Result<bool> {
    let id = lease.job_id;
    let (ok, message) = (end.succeeded, end.message.as_str());
    let at = rfc3339(end.at);
    let r = sqlx::query(
        "UPDATE jobs SET status = $1, message = $2, finished_at = $3, updated_at = $4, lease_owner = NULL, \
         bytes_done = COALESCE(bytes_total, bytes_done) \
         WHERE id = $5 AND lease_owner = $6 AND attempts = $7 AND status = 'running'",
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
            "UPDATE {table} SET status = $1, completed_at = $2 WHERE job_id = $3"
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
impl Catalog for PgCatalog {
    async fn ensure_domain(&self, name: &str) -> Result<()> {
        sqlx::query("INSERT INTO identity_domains (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
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
            "INSERT INTO users (name, domain, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5) \
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
        let row = sqlx::query("SELECT name, domain, password_hash, role FROM users WHERE name = $1")
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
        let row = sqlx::query("SELECT * FROM deployments WHERE domain = $1 AND name = $2")
            .bind(domain)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(deployment))
    }

    async fn deployments(&self, domain: &str) -> Result<Vec<Deployment>> {
        let rows = sqlx::query("SELECT * FROM deployments WHERE domain = $1 ORDER BY name")
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
        let r = sqlx::query("UPDATE deployments SET backup_config = $1 WHERE domain = $2 AND name = $3")
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
                     VALUES ($1, $2, $3, $4, 'IN PROGRESS', $5, $6) ON CONFLICT (domain, deployment, db_tag) DO NOTHING",
                )
                .bind(created.id)
                .bind(&new.domain)
                .bind(&new.deployment)
                .bind(db_tag)
                .bind(*keep_forever)
                .bind(&at)
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() != 1 {
                    return Err(Error::Duplicate(format!("backup tag {db_tag} of {}", new.deployment)));
                }
            }
            NewRecord::Recovery { target, backup_job_id } => {
                let completed: Option<i64> = sqlx::query_scalar(
                    "SELECT job_id FROM backups WHERE job_id = $1 AND domain = $2 AND deployment = $3 \
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
                     VALUES ($1, $2, $3, $4, $5, 'IN PROGRESS', $6)",
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
        let row = sqlx::query(JOB_BY_ID)
            .bind(domain)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job))
    }

    async fn active_job(&self, domain: &str, deployment: &str) -> Result<Option<Job>> {
        let row = sqlx::query(ACTIVE_JOB)
            .bind(domain)
            .bind(deployment)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job))
    }

    async fn job_messages(&self, id: i64) -> Result<Vec<JobMessage>> {
        let rows = sqlx::query("SELECT at, message FROM job_messages WHERE job_id = $1 ORDER BY id")
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
        let rows = sqlx::query("SELECT * FROM backups WHERE domain = $1 AND deployment = $2 ORDER BY job_id")
            .bind(domain)
            .bind(deployment)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(backup).collect())
    }

    async fn lease_job(&self, owner: &str, duration: Duration, labels: &[String]) -> Result<Option<Job>> {
        let labels = serde_json::to_string(labels).expect("serializable");
        let at = rfc3339(now());
        // SKIP LOCKED: replicas leasing at once take different jobs
        // instead of queueing behind one another's row lock.
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires = {DB_NOW} + $2, \
             attempts = attempts + 1, started_at = COALESCE(started_at, $3), updated_at = $3 \
             WHERE id = (SELECT j.id FROM jobs j JOIN deployments d ON d.domain = j.domain AND d.name = j.deployment \
                         WHERE (j.status = 'queued' OR (j.status = 'running' AND j.lease_expires < {DB_NOW})) \
                         AND (d.runs_on IS NULL OR d.runs_on IN (SELECT jsonb_array_elements_text($4::jsonb))) \
                         ORDER BY j.id LIMIT 1 FOR UPDATE OF j SKIP LOCKED) \
             RETURNING {JOB_COLUMNS}"
        )))
        .bind(owner)
        .bind(duration.as_secs() as i64)
        .bind(&at)
        .bind(&labels)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(job))
    }

    async fn heartbeat(&self, lease: &Lease, duration: Duration, done: u64, total: Option<u64>) -> Result<bool> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "UPDATE jobs SET bytes_done = $1, bytes_total = $2, lease_expires = {DB_NOW} + $3, updated_at = $4 \
             WHERE id = $5 AND lease_owner = $6 AND attempts = $7 AND status = 'running'"
        )))
        .bind(done as i64)
        .bind(total.map(|t| t as i64))
        .bind(duration.as_secs() as i64)
        .bind(rfc3339(now()))
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
            sqlx::query("UPDATE jobs SET bytes_done = $1, bytes_total = $2 WHERE id = $3")
                .bind(b.logical_bytes as i64)
                .bind(b.logical_bytes as i64)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE backups SET snapshot_id = $1, logical_bytes = $2, stored_bytes = $3, position = $4 WHERE job_id = $5",
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
            sqlx::query("UPDATE recoveries SET reached = $1 WHERE job_id = $2")
                .bind(reached.to_string())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(closed)
    }

    async fn announce(&self, owner: &str, labels: &[String]) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO servers (owner, labels, seen_at) VALUES ($1, $2, {DB_NOW}) \
             ON CONFLICT (owner) DO UPDATE SET labels = excluded.labels, seen_at = excluded.seen_at"
        )))
        .bind(owner)
        .bind(serde_json::to_string(labels).expect("serializable"))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn live_labels(&self, within: Duration) -> Result<Vec<String>> {
        let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT labels FROM servers WHERE seen_at >= {DB_NOW} - $1"
        )))
        .bind(within.as_secs() as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(labels_of(&rows))
    }

    async fn mark_backups_deleted(&self, domain: &str, deployment: &str, job_ids: &[i64]) -> Result<()> {
        let mut tx = self.write().await?;
        for id in job_ids {
            sqlx::query("UPDATE backups SET status = 'DELETED' WHERE domain = $1 AND deployment = $2 AND job_id = $3")
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
            "SELECT id FROM jobs WHERE id = $1 \
             AND lease_owner = $2 AND attempts = $3 AND status = 'running' FOR UPDATE",
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
        let row = sqlx::query("SELECT * FROM backups WHERE domain = $1 AND job_id = $2")
            .bind(domain)
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(backup))
    }

    async fn recovery(&self, domain: &str, job_id: i64) -> Result<Option<Recovery>> {
        let row = sqlx::query("SELECT * FROM recoveries WHERE domain = $1 AND job_id = $2")
            .bind(domain)
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(recovery))
    }

    async fn recoveries(&self, domain: &str, deployment: &str) -> Result<Vec<Recovery>> {
        let rows = sqlx::query("SELECT * FROM recoveries WHERE domain = $1 AND deployment = $2 ORDER BY job_id")
            .bind(domain)
            .bind(deployment)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(recovery).collect())
    }
}
