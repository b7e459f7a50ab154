//! The service core: what Strongbox does and decides, in one place that
//! the API, the job workers and the scheduler all call. It owns the policy
//! (which backup a request means, how jobs are named and logged, when a
//! dying job is given up); the catalog below it only stores, the engines
//! only run databases, the API above it only speaks HTTP.

pub mod copies;
mod copy_expiry;
pub mod dates;
mod drill;
mod error;
pub mod health;
pub mod host_policy;
pub mod job;
pub mod password;
pub mod pitr;
pub mod placement;
pub mod records;
pub mod recovery;
pub mod retention;
pub mod schedule;
pub mod shipping;
pub mod wal_retention;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use error::{Error, Result};
use strongbox_catalog::{Backup, BackupStatus, Catalog, Deployment, Job, JobMessage, JobStatus, Recovery};
use time::OffsetDateTime;

/// Names of identity domains and deployments: 1 to 64 letters, digits,
/// '-' or '_' (they appear in paths, URLs and repository object names,
/// so nothing that could climb a directory or end a line).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let valid =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        let shown: String = name.chars().take(64).collect();
        let more = if shown.len() < name.len() { "…" } else { "" };
        Err(Error::Invalid(format!(
            "{shown:?}{more} cannot name {what}: a name is 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

/// The time, as the core sees it; tests drive their own.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

pub struct Service {
    pub catalog: Arc<dyn Catalog>,
    /// WAL archives for point-in-time recovery; none, none offered.
    pub wal: Option<Arc<pitr::WalArchives>>,
    /// The catalog and the repository as last probed (`health::probe`).
    pub dependencies: health::Dependencies,
    /// Further repositories holding a copy of everything (`copies`).
    pub copies: Vec<Arc<copies::RepoCopy>>,
    /// Wakes the copiers (a backup completed).
    pub copies_wanted: Arc<tokio::sync::Notify>,
    /// Wakes idle workers when a job is queued (they also poll the catalog).
    pub queued: Arc<tokio::sync::Notify>,
    pub clock: Arc<dyn Clock>,
    /// The backup configuration of deployments that have none of their own.
    pub backup_defaults: schedule::BackupConfig,
    /// The SQLite log shippers this server runs (continuous archiving).
    pub shippers: shipping::Shippers,
    /// What deployments may run and touch on this host (`[allow]`).
    pub host_policy: host_policy::HostPolicy,
    /// Snapshots `sync` found to be no deployment's backup (the repository
    /// CLI's), not read again.
    not_backups: Mutex<std::collections::HashSet<String>>,
    /// Jobs that ended: they never change again (in any replica), so
    /// clients polling a job after it ended are answered from memory.
    finished: Mutex<HashMap<(String, i64), Arc<Job>>>,
}

/// How many ended jobs `Service::job` remembers.
const FINISHED_REMEMBERED: usize = 10_000;

impl Service {
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Service {
            catalog,
            wal: None,
            dependencies: Default::default(),
            copies: Vec::new(),
            copies_wanted: Arc::default(),
            queued: Arc::default(),
            clock: Arc::new(SystemClock),
            backup_defaults: schedule::BackupConfig::default(),
            shippers: Default::default(),
            host_policy: Default::default(),
            not_backups: Mutex::default(),
            finished: Mutex::default(),
        }
    }

    /// The engine for `engine` with these settings, once they are valid
    /// and the server's configuration allows everything they make it run
    /// and touch.
    pub fn engine(
        &self,
        domain: &str,
        engine: &str,
        connection: &serde_json::Value,
    ) -> Result<Box<dyn strongbox_engines::Engine>> {
        self.allowed(domain, engine, strongbox_engines::engine_for(engine, connection))
    }

    /// An engine its settings made, if the server's configuration allows
    /// everything it would run or touch.
    pub(crate) fn allowed(
        &self,
        domain: &str,
        engine: &str,
        made: std::result::Result<Box<dyn strongbox_engines::Engine>, strongbox_engines::Error>,
    ) -> Result<Box<dyn strongbox_engines::Engine>> {
        let e = made.map_err(|e| Error::Invalid(e.to_string()))?;
        self.host_policy.check(domain, engine, &e.accesses())?;
        Ok(e)
    }

    /// A registered deployment's engine, checked against the server's
    /// configuration as it is now (it may have changed since the
    /// deployment was registered).
    pub fn engine_of(&self, d: &Deployment) -> Result<Box<dyn strongbox_engines::Engine>> {
        self.engine(&d.domain, &d.engine, &d.connection).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("deployment {} cannot run here: {m}", d.name)),
            other => other,
        })
    }

    pub async fn deployment(&self, domain: &str, name: &str) -> Result<Deployment> {
        self.catalog
            .deployment(domain, name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no database deployment {name} in identity domain {domain}")))
    }

    /// Registers (or re-registers) an existing database as a deployment,
    /// after checking its name and that its engine accepts the settings.
    pub async fn register_deployment(
        &self,
        domain: &str,
        name: &str,
        engine: String,
        connection: serde_json::Value,
        runs_on: Option<String>,
    ) -> Result<Deployment> {
        check_name("a deployment", name)?;
        check_name("an identity domain", domain)?;
        self.engine(domain, &engine, &connection)?;
        if let Some(label) = &runs_on {
            placement::check_label(label)?;
        }
        self.catalog.ensure_domain(domain).await?;
        let d = self
            .catalog
            .put_deployment(&strongbox_catalog::NewDeployment {
                domain: domain.into(),
                name: name.into(),
                engine,
                connection,
                runs_on,
            })
            .await?;
        self.record_deployment(&d).await;
        Ok(d)
    }

    /// Creates a user in `domain`, or sets the password and role of one
    /// already there; a user belongs to one identity domain.
    pub async fn put_user(
        &self,
        name: &str,
        domain: &str,
        password: &str,
        role: strongbox_catalog::Role,
    ) -> Result<()> {
        check_name("an identity domain", domain)?;
        if let Some(u) = self.catalog.user(name).await?
            && u.domain != domain
        {
            return Err(Error::Invalid(format!(
                "user {name} already belongs to identity domain {}",
                u.domain
            )));
        }
        self.catalog.ensure_domain(domain).await?;
        let hash = password::hash_password(password);
        Ok(self.catalog.put_user(name, domain, &hash, role).await?)
    }

    pub async fn deployments(&self, domain: &str) -> Result<Vec<Deployment>> {
        Ok(self.catalog.deployments(domain).await?)
    }

    /// The backups a list shows, newest first: completed ones, the one in
    /// progress, and only the most recent failure (as DBCS lists them);
    /// each with when its recovery window lets it go (`retention::expiry`).
    pub async fn backup_list(&self, domain: &str, deployment: &str) -> Result<Vec<(Backup, Option<OffsetDateTime>)>> {
        let config = self.backup_config(domain, deployment).await?;
        let backups = self.catalog.backups(domain, deployment).await?;
        let expiry = retention::expiry(
            &retention::completed(&backups),
            config.recovery_window_in_days,
            config.minimum_backups_kept,
        );
        let last_failed = backups
            .iter()
            .filter(|b| b.status == BackupStatus::Failed)
            .map(|b| b.job_id)
            .max();
        Ok(backups
            .into_iter()
            .rev()
            .filter(|b| b.status != BackupStatus::Deleted)
            .filter(|b| b.status != BackupStatus::Failed || Some(b.job_id) == last_failed)
            .map(|b| {
                let expires = expiry.get(&b.job_id).copied();
                (b, expires)
            })
            .collect())
    }

    /// Every backup of a deployment, oldest first.
    pub async fn backups(&self, domain: &str, deployment: &str) -> Result<Vec<Backup>> {
        Ok(self.catalog.backups(domain, deployment).await?)
    }

    /// The recoveries of a deployment, oldest first.
    pub async fn recoveries(&self, domain: &str, deployment: &str) -> Result<Vec<Recovery>> {
        self.deployment(domain, deployment).await?;
        Ok(self.catalog.recoveries(domain, deployment).await?)
    }

    /// A job of the identity domain; ended ones from memory (each catalog
    /// read costs two thread hand-offs, which profiling showed to dominate
    /// a status request).
    pub async fn job(&self, domain: &str, id: i64) -> Result<Option<Arc<Job>>> {
        let key = (domain.to_string(), id);
        if let Some(j) = self.finished.lock().expect("finished jobs").get(&key) {
            return Ok(Some(j.clone()));
        }
        let Some(j) = self.catalog.job(domain, id).await? else {
            return Ok(None);
        };
        let j = Arc::new(j);
        if matches!(j.status, JobStatus::Succeeded | JobStatus::Failed) {
            let mut finished = self.finished.lock().expect("finished jobs");
            if finished.len() >= FINISHED_REMEMBERED {
                finished.clear(); // crude, bounded; refilled from the catalog on demand
            }
            finished.insert(key, j.clone());
        }
        Ok(Some(j))
    }

    /// The deployment's newest completed backup.
    pub async fn last_backup(&self, domain: &str, deployment: &str) -> Result<Option<Backup>> {
        Ok(self
            .catalog
            .backups(domain, deployment)
            .await?
            .into_iter()
            .rev()
            .find(|b| b.status == BackupStatus::Completed))
    }

    /// The deployment's recoveries, newest first, each with the tag of the
    /// backup it started from.
    pub async fn recovery_history(&self, domain: &str, deployment: &str) -> Result<Vec<(Recovery, Option<String>)>> {
        let recoveries = self.recoveries(domain, deployment).await?;
        let backups = self.catalog.backups(domain, deployment).await?;
        Ok(recoveries
            .into_iter()
            .rev()
            .map(|r| {
                let tag = backups
                    .iter()
                    .find(|b| Some(b.job_id) == r.backup_job_id)
                    .map(|b| b.db_tag.clone());
                (r, tag)
            })
            .collect())
    }

    /// A user, by name (the auth layer verifies its password).
    pub async fn user(&self, name: &str) -> Result<Option<strongbox_catalog::User>> {
        Ok(self.catalog.user(name).await?)
    }

    /// How many jobs there are of each operation and status (`/metrics`).
    pub async fn job_counts(&self) -> Result<Vec<strongbox_catalog::JobCount>> {
        Ok(self.catalog.job_counts().await?)
    }

    pub async fn job_messages(&self, id: i64) -> Result<Vec<JobMessage>> {
        Ok(self.catalog.job_messages(id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strongbox_catalog::Operation;

    /// Users: one identity domain each, passwords stored as hashes that
    /// verify (the policy the catalog used to hold).
    #[tokio::test]
    async fn a_user_belongs_to_one_domain_and_its_password_is_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = strongbox_catalog::open(dir.path().join("c.db").to_str().unwrap())
            .await
            .unwrap();
        let service = Service::new(catalog.clone());
        use strongbox_catalog::Role;
        service
            .put_user("alice", "usexample", "pw1", Role::Operator)
            .await
            .unwrap();
        let u = catalog.user("alice").await.unwrap().unwrap();
        assert!(!u.password_hash.contains("pw1"));
        assert!(password::verify_password("pw1", &u.password_hash));
        assert!(!password::verify_password("pw2", &u.password_hash));
        let e = service
            .put_user("alice", "idcs-0123abc", "x", Role::Reader)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("already belongs to identity domain usexample"),
            "{e}"
        );
        service
            .put_user("alice", "usexample", "pw2", Role::Reader)
            .await
            .unwrap();
        let u = catalog.user("alice").await.unwrap().unwrap();
        assert_eq!(u.role, Role::Reader);
        assert!(password::verify_password("pw2", &u.password_hash));
        assert!(service.put_user("bob", "../x", "pw", Role::Reader).await.is_err());
    }

    /// Backups within one second get `_2`, `_3`, … after the second's tag.
    #[tokio::test]
    async fn tags_within_one_second_take_a_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = strongbox_catalog::open(dir.path().join("c.db").to_str().unwrap())
            .await
            .unwrap();
        let service = Service::new(catalog.clone());
        catalog.ensure_domain("d").await.unwrap();
        let d = strongbox_catalog::NewDeployment {
            domain: "d".into(),
            name: "app".into(),
            engine: "sqlite".into(),
            connection: serde_json::json!({"path": "/x.db"}),
            runs_on: None,
        };
        catalog.put_deployment(&d).await.unwrap();
        let at = time::macros::datetime!(2026-12-05 07:21:59 UTC);
        let mut tags = Vec::new();
        for _ in 0..3 {
            tags.push(service.next_tag("d", "app", at, Operation::Backup).await.unwrap());
            let job = strongbox_catalog::NewJob {
                domain: "d".into(),
                deployment: "app".into(),
                spec: strongbox_catalog::JobSpec::Backup {
                    keep_forever: false,
                    trigger: strongbox_catalog::Trigger::User,
                },
                created_by: "t".into(),
                idempotency_key: None,
                at,
            };
            let record = strongbox_catalog::NewRecord::Backup {
                db_tag: tags.last().unwrap().clone(),
                keep_forever: false,
            };
            let strongbox_catalog::Started::Created(j) = catalog.create_job(&job, &record, "x").await.unwrap() else {
                panic!()
            };
            // Ended, so that the next may be queued.
            let lease = catalog
                .lease_job("w", std::time::Duration::from_secs(9), &[])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(lease.id, j.id);
            let end = strongbox_catalog::JobEnd {
                at,
                succeeded: true,
                message: "done".into(),
                backup: None,
                reached: None,
            };
            assert!(
                catalog
                    .finish_job(&strongbox_catalog::Lease::of(&lease, "w"), &end)
                    .await
                    .unwrap()
            );
        }
        assert_eq!(
            tags,
            ["TAG20261205T072159", "TAG20261205T072159_2", "TAG20261205T072159_3"]
        );
    }
}
