//! Job workers: each leases the next queued job from the catalog and runs
//! it — a backup (engine → repository) or a recovery (repository →
//! engine) — renewing its lease with every progress report. A worker that
//! dies loses its lease and another one resumes the job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use strongbox_api::pitr::{RecoveryPlan, WalArchives};
use strongbox_catalog::{BackupOutcome, Catalog, Job};
use strongbox_engines::pitr::Reached;
use strongbox_engines::{Engine, RecoveryContext, RecoveryTarget, SnapshotFiles};
use strongbox_repo::{BackupOptions, Counters, Repository};
use tokio::task::JoinHandle;

use crate::wal_retention::WAL_ARCHIVE;

/// Leases jobs and runs them, forever.
pub async fn worker(
    catalog: Arc<dyn Catalog>,
    repo: Arc<Repository>,
    owner: String,
    lease: Duration,
    scratch: PathBuf,
    wal: Arc<WalArchives>,
    queued: Arc<tokio::sync::Notify>,
) {
    loop {
        match catalog.lease_job(&owner, lease, 3).await {
            Ok(Some(job)) => {
                let w = Worker {
                    catalog: catalog.clone(),
                    repo: repo.clone(),
                    owner: owner.clone(),
                    lease,
                    scratch: scratch.clone(),
                    wal: wal.clone(),
                };
                let recorded = match job.operation.as_str() {
                    "recovery" => match w.recovery(&job).await {
                        Ok((summary, reached)) => {
                            let reached = reached.and_then(|r| serde_json::to_value(r).ok());
                            catalog
                                .finish_recovery(job.id, &owner, Ok(&summary), reached.as_ref())
                                .await
                        }
                        Err(e) => {
                            catalog
                                .finish_recovery(job.id, &owner, Err(&format!("{e:#}")), None)
                                .await
                        }
                    },
                    _ => {
                        let outcome = w.backup(&job).await.unwrap_or_else(|e| BackupOutcome::Failed {
                            message: format!("{e:#}"),
                        });
                        catalog.finish_backup(job.id, &owner, &outcome).await
                    }
                };
                if let Err(e) = recorded {
                    tracing::error!("job {}: recording the outcome failed: {e}", job.id);
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = queued.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            Err(e) => {
                tracing::error!("leasing a job failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

struct Worker {
    catalog: Arc<dyn Catalog>,
    repo: Arc<Repository>,
    owner: String,
    lease: Duration,
    scratch: PathBuf,
    wal: Arc<WalArchives>,
}

impl Worker {
    async fn engine(&self, job: &Job) -> Result<(String, Arc<dyn Engine>)> {
        let deployment = self
            .catalog
            .deployment(&job.domain, &job.deployment)
            .await?
            .with_context(|| format!("deployment {} no longer exists", job.deployment))?;
        let engine = strongbox_engines::engine_for(&deployment.engine, &deployment.connection)?;
        Ok((deployment.engine, engine.into()))
    }

    /// Reports progress, which also renews the lease, until aborted.
    fn heartbeat(&self, job: &Job, counters: Arc<Counters>) -> JoinHandle<()> {
        let (catalog, owner, id, lease) = (self.catalog.clone(), self.owner.clone(), job.id, self.lease);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let total = counters.total.load(Ordering::Relaxed);
                let done = counters.read.load(Ordering::Relaxed);
                let _ = catalog
                    .heartbeat(id, &owner, lease, done, (total > 0).then_some(total))
                    .await;
            }
        })
    }

    async fn backup(&self, job: &Job) -> Result<BackupOutcome> {
        let (engine_name, engine) = self.engine(job).await?;
        let tag = self
            .catalog
            .backup(&job.domain, job.id)
            .await?
            .map(|b| b.db_tag)
            .unwrap_or_default();
        let counters = Arc::new(Counters::default());
        let beat = self.heartbeat(job, counters.clone());
        let (scratch, e) = (self.scratch.clone(), engine.clone());
        let sources = tokio::task::spawn_blocking(move || e.backup(&scratch)).await??;
        let mut labels = BTreeMap::from([
            ("domain".to_string(), job.domain.clone()),
            ("deployment".to_string(), job.deployment.clone()),
            ("engine".to_string(), engine_name.clone()),
            ("tag".to_string(), tag.clone()),
            ("job".to_string(), job.id.to_string()),
        ]);
        if engine.point_in_time().is_some() {
            // Which archive this base backup replays from (WAL retention and check).
            labels.insert(
                WAL_ARCHIVE.to_string(),
                WalArchives::archive(&job.domain, &job.deployment),
            );
        }
        let options = BackupOptions {
            tags: vec![tag],
            labels,
        };
        let result = self.repo.backup_sources(sources, options, counters).await;
        beat.abort();
        let snap = result?;
        Ok(BackupOutcome::Completed {
            snapshot_id: snap.id.to_hex(),
            logical_bytes: snap.totals.logical_bytes,
            stored_bytes: snap.totals.new_bytes_stored,
            position: engine.backup_position(),
        })
    }

    async fn recovery(&self, job: &Job) -> Result<(String, Option<Reached>)> {
        let (_, engine) = self.engine(job).await?;
        let recovery = self
            .catalog
            .recovery(&job.domain, job.id)
            .await?
            .with_context(|| format!("job {} has no recovery record", job.id))?;
        let backup = self
            .catalog
            .backup(&job.domain, recovery.backup_job_id)
            .await?
            .and_then(|b| b.snapshot_id.map(|s| (b.db_tag, s)));
        let (tag, snapshot_id) =
            backup.with_context(|| format!("backup job {} has no snapshot", recovery.backup_job_id))?;
        let snapshot = self
            .repo
            .find_snapshot(&snapshot_id)
            .await
            .with_context(|| format!("snapshot {snapshot_id} of backup {tag}"))?;
        let plan: RecoveryPlan = match recovery.plan {
            Some(p) => serde_json::from_value(p).context("reading the recovery's plan")?,
            // Queued by a version that kept no plan: the backup itself.
            None => RecoveryPlan {
                target: RecoveryTarget::Backup { position: None },
                description: format!("restore backup {tag}"),
            },
        };
        self.catalog
            .add_job_message(job.id, &format!("plan: {}", plan.description))
            .await?;
        let counters = Arc::new(Counters::default());
        let beat = self.heartbeat(job, counters.clone());
        let runtime = tokio::runtime::Handle::current();
        let files = SnapshotFiles::new(self.repo.clone(), snapshot, runtime.clone(), counters);
        let wal = engine
            .point_in_time()
            .map(|_| self.wal.for_deployment(&job.domain, &job.deployment));
        let (catalog, id, scratch) = (self.catalog.clone(), job.id, self.scratch.clone());
        let result = tokio::task::spawn_blocking(move || {
            let log = |message: String| {
                if let Err(e) = runtime.block_on(catalog.add_job_message(id, &message)) {
                    tracing::warn!("job {id}: could not log {message:?}: {e}");
                }
            };
            let cx = RecoveryContext {
                scratch: &scratch,
                log: &log,
                wal: wal.as_ref().map(|w| w as &dyn strongbox_engines::WalArchive),
            };
            engine.recover(&files, &plan.target, &cx)
        })
        .await;
        beat.abort();
        let recovered = result??;
        Ok((format!("from backup {tag}: {}", recovered.summary), recovered.reached))
    }
}
