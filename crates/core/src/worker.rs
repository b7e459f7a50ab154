//! Job workers: each leases the next queued job from the catalog and runs
//! it — a backup (engine → repository) or a recovery (repository →
//! engine) — renewing its lease with every progress report. A worker that
//! dies loses its lease and another one resumes the job; a job whose
//! workers die `MAX_ATTEMPTS` times is failed, never left running. Every
//! write for a job names the attempt (`Lease`); a worker that finds its
//! lease lost stops the job, and whatever it still tries to write is
//! refused.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use strongbox_catalog::{BackupResult, Deployment, Drill, Job, JobEnd, Lease, RecoveryInto};
use strongbox_engines::pitr::Reached;
use strongbox_engines::{BackupContext, Engine, RecoveryContext, RecoveryTarget, SnapshotFiles};
use strongbox_repo::{BackupOptions, Counters, LateLabels, Repository};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::job::JobSpec;
use crate::pitr::{WAL_ARCHIVE_LABEL, WalArchives};
use crate::{Service, records};

/// How many times a job is started before it is given up.
pub const MAX_ATTEMPTS: i64 = 3;

/// What workers need besides the service.
#[derive(Clone)]
pub struct WorkerSetup {
    pub repo: Arc<Repository>,
    /// This process's name in leases.
    pub owner: String,
    pub lease: Duration,
    /// A directory for temporary files.
    pub scratch: PathBuf,
    pub wal: Arc<WalArchives>,
    /// This server's labels: it runs jobs of deployments that name one of
    /// them or none (`placement`).
    pub labels: Vec<String>,
    /// Tells workers the server is stopping.
    pub stop: tokio::sync::watch::Receiver<Stop>,
}

/// Where a stopping server is (`serve`: SIGTERM, then a grace period).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    Running,
    /// Lease no new job; finish the running one.
    Draining,
    /// The grace period is over: hand the running job back to the queue.
    Now,
}

/// Resolves once the server reaches `at`.
async fn reached(mut stop: tokio::sync::watch::Receiver<Stop>, at: Stop) {
    // An error means the sender is gone: the server is going, too.
    let _ = stop.wait_for(|s| *s >= at).await;
}

/// Leases jobs and runs them until the server stops.
pub async fn worker(service: Arc<Service>, setup: WorkerSetup) {
    loop {
        if *setup.stop.borrow() >= Stop::Draining {
            return;
        }
        match service
            .catalog
            .lease_job(&setup.owner, setup.lease, &setup.labels)
            .await
        {
            Ok(Some(job)) => {
                let w = Worker {
                    service: service.clone(),
                    setup: setup.clone(),
                    lease: Lease::of(&job, &setup.owner),
                    counters: Arc::default(),
                };
                // Every line logged for the job carries its id and attempt.
                let span = tracing::info_span!(
                    "job",
                    id = job.id,
                    attempt = job.attempts,
                    operation = %job.operation,
                    deployment = %job.deployment
                );
                let started = std::time::Instant::now();
                let (beat, lost) = w.heartbeat();
                let (end, released) = tokio::select! {
                    end = w.run(&job).instrument(span.clone()) => (Some(end), false),
                    _ = lost => (None, false),
                    _ = reached(setup.stop.clone(), Stop::Now) => (None, true),
                };
                beat.abort();
                let finish = async {
                    if released {
                        w.log("stopped: this server is shutting down; another server resumes the job".into())
                            .await;
                        match service.catalog.release_job(&w.lease).await {
                            Ok(true) => tracing::warn!("released to another server"),
                            Ok(false) => tracing::warn!("lease lost before it was released"),
                            // Its lease runs out instead.
                            Err(e) => tracing::error!("releasing the job failed: {e}"),
                        }
                        return;
                    }
                    let Some(end) = end else {
                        tracing::warn!("lease lost; stopped, its outcome not recorded");
                        return;
                    };
                    let recorded = service.catalog.finish_job(&w.lease, &end).await;
                    if let Ok(true) = recorded {
                        record(&job, &end, started.elapsed());
                        if end.backup.is_some() {
                            // A new backup to copy.
                            service.copies_wanted.notify_waiters();
                        }
                        // A recovery into another place leaves the
                        // deployment's history as it was.
                        if let Ok(JobSpec::Recovery { into: None, .. }) = job.spec() {
                            service.record_recovery(&job.domain, job.id).await;
                            if let Err(e) = service.base_after_recovery(&job.domain, &job.deployment, job.id).await {
                                tracing::warn!("queueing the base backup after the recovery: {e}");
                            }
                        }
                    }
                    match recorded {
                        Ok(true) if end.succeeded => tracing::info!("succeeded: {}", end.message),
                        Ok(true) => tracing::warn!("failed: {}", end.message),
                        Ok(false) => tracing::warn!("lease lost before its outcome was recorded"),
                        Err(e) => tracing::error!("recording the outcome failed: {e}"),
                    }
                };
                finish.instrument(span).await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = service.queued.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = reached(setup.stop.clone(), Stop::Draining) => {}
                }
            }
            Err(e) => {
                tracing::error!("leasing a job failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Counts a job's recorded end for `/metrics`: by operation and outcome,
/// its duration (this attempt's), and what a backup read and stored.
fn record(job: &Job, end: &JobEnd, took: Duration) {
    let outcome = if end.succeeded { "succeeded" } else { "failed" };
    let (operation, domain, deployment) = (job.operation.as_str(), job.domain.clone(), job.deployment.clone());
    metrics::counter!("strongbox_jobs_finished_total", "operation" => operation, "outcome" => outcome).increment(1);
    metrics::histogram!("strongbox_job_duration_seconds", "operation" => operation, "outcome" => outcome)
        .record(took.as_secs_f64());
    if let Some(b) = &end.backup {
        let labels = [("domain", domain), ("deployment", deployment)];
        metrics::counter!("strongbox_backup_read_bytes_total", &labels).increment(b.logical_bytes);
        metrics::counter!("strongbox_backup_stored_bytes_total", &labels).increment(b.stored_bytes);
        // What the last backup read for each byte it had to store.
        let ratio = b.logical_bytes as f64 / b.stored_bytes.max(1) as f64;
        metrics::gauge!("strongbox_backup_dedup_ratio", &labels).set(ratio);
    }
}

/// Adds a line to a job's activity log (refused, and dropped, once the
/// lease is lost); a failure to log is never a reason to fail the job.
async fn log(catalog: &dyn strongbox_catalog::Catalog, lease: &Lease, message: &str) {
    tracing::info!("{message}");
    if let Err(e) = catalog.add_job_message(lease, message).await {
        tracing::warn!("job {}: could not log {message:?}: {e}", lease.job_id);
    }
}

/// One job in the hands of one worker.
struct Worker {
    service: Arc<Service>,
    setup: WorkerSetup,
    lease: Lease,
    /// Progress, reported with every heartbeat.
    counters: Arc<Counters>,
}

impl Worker {
    /// Runs a leased job to its end, as it is to be recorded.
    async fn run(&self, job: &Job) -> JobEnd {
        let service = &self.service;
        // An outcome, at the moment it is reached (the service's clock).
        let ended = |succeeded: bool, message: String| JobEnd {
            at: service.clock.now(),
            succeeded,
            message,
            backup: None,
            reached: None,
        };
        let failed = |message: String| ended(false, message);
        if job.attempts > MAX_ATTEMPTS {
            return failed(format!(
                "failed: the worker stopped responding {MAX_ATTEMPTS} times; giving up"
            ));
        }
        let spec = match job.spec() {
            Ok(spec) => spec,
            Err(e) => return failed(format!("{} failed: {e}", job.operation)),
        };
        let what = if job.attempts > 1 {
            "resumed after its worker stopped"
        } else {
            "started"
        };
        self.log(format!("{} {what} (attempt {})", job.operation, job.attempts))
            .await;
        match spec {
            JobSpec::Backup { keep_forever, .. } => match self.backup(job, keep_forever).await {
                Ok(b) => JobEnd {
                    backup: Some(b.clone()),
                    ..ended(true, format!("backup completed: {} bytes", b.logical_bytes))
                },
                Err(e) => failed(format!("backup failed: {e:#}")),
            },
            JobSpec::Recovery {
                from,
                target,
                description,
                repository,
                into,
                ..
            } => match self
                .recovery(
                    job,
                    from,
                    &target,
                    &description,
                    repository.as_deref(),
                    into.as_ref().map_or(Place::Own, Place::Copy),
                )
                .await
            {
                Ok((summary, reached)) => JobEnd {
                    reached,
                    ..ended(true, format!("recovery completed: {summary}"))
                },
                Err(e) => failed(format!("recovery failed: {e:#}")),
            },
            JobSpec::Verify { drills } => match self.drill(job, &drills).await {
                Ok(summary) => ended(true, format!("verify completed: {summary}")),
                Err(e) => failed(format!("verify failed: {e:#}")),
            },
            JobSpec::Expire { backups, deletion } => match self.expire(job, &backups, deletion.is_some()).await {
                Ok(summary) => ended(true, format!("expire completed: {summary}")),
                Err(e) => failed(format!("expire failed: {e:#}")),
            },
        }
    }

    async fn log(&self, message: String) {
        log(self.service.catalog.as_ref(), &self.lease, &message).await
    }

    async fn engine(&self, job: &Job) -> Result<(Deployment, Arc<dyn Engine>)> {
        let deployment = self
            .service
            .catalog
            .deployment(&job.domain, &job.deployment)
            .await?
            .with_context(|| format!("deployment {} no longer exists", job.deployment))?;
        let engine = self.service.engine_of(&deployment)?;
        Ok((deployment, engine.into()))
    }

    /// Reports progress, which also renews the lease, until aborted; the
    /// receiver fires when the catalog says the lease is lost.
    fn heartbeat(&self) -> (JoinHandle<()>, tokio::sync::oneshot::Receiver<()>) {
        let (catalog, lease, duration, counters) = (
            self.service.catalog.clone(),
            self.lease.clone(),
            self.setup.lease,
            self.counters.clone(),
        );
        let (lost, lost_rx) = tokio::sync::oneshot::channel();
        let beat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(duration / 3).await;
                let total = counters.total.load(Ordering::Relaxed);
                let done = counters.read.load(Ordering::Relaxed);
                // An error (the catalog unreachable) is tried again: if it
                // lasts, the next answer is that the lease is lost.
                if let Ok(false) = catalog
                    .heartbeat(&lease, duration, done, (total > 0).then_some(total))
                    .await
                {
                    let _ = lost.send(());
                    return;
                }
            }
        });
        (beat, lost_rx)
    }

    async fn backup(&self, job: &Job, keep_forever: bool) -> Result<BackupResult> {
        let (deployment, engine) = self.engine(job).await?;
        // Its tag, and its start as the catalog lists it (the label must
        // say the same: a rebuilt catalog lists the label).
        let (tag, started_at) = self
            .service
            .catalog
            .backup(&job.domain, job.id)
            .await?
            .map(|b| (b.db_tag, b.started_at))
            .unwrap_or_else(|| (String::new(), job.created_at.clone()));
        let counters = self.counters.clone();
        let (scratch, e) = (self.setup.scratch.clone(), engine.clone());
        let shipper = self.service.shippers.link(&job.domain, &job.deployment);
        let streams = tokio::task::spawn_blocking(move || {
            e.backup(&BackupContext {
                scratch: &scratch,
                shipper: shipper.as_ref(),
            })
        })
        .await??;
        // What the repository needs to list, recover and expire it without
        // this catalog (`records`).
        let mut labels = records::backup_labels(&deployment, &tag, job.id, keep_forever, &started_at);
        if engine.capabilities().point_in_time {
            // Which archive this base backup replays from (WAL retention and check).
            labels.insert(
                WAL_ARCHIVE_LABEL.to_string(),
                WalArchives::archive(&job.domain, &job.deployment),
            );
        }
        // Known once the streams are read (a PostgreSQL base backup's at
        // `pg_backup_stop`); the catalog takes it from the snapshot's label.
        let when_read = std::sync::Mutex::new(streams.position);
        let late = move || records::position_label(when_read.lock().expect("position").get());
        let options = BackupOptions {
            tags: vec![tag],
            labels,
            late_labels: LateLabels(Some(Arc::new(late))),
        };
        let snap = self
            .setup
            .repo
            .backup_sources(streams.sources, options, counters)
            .await?;
        let position = records::position_of(&snap);
        Ok(BackupResult {
            snapshot_id: snap.id.to_hex(),
            logical_bytes: snap.totals.logical_bytes,
            stored_bytes: snap.totals.new_bytes_stored,
            position,
        })
    }

    /// Forgets the backups' snapshots (those still there: a resumed job
    /// finds some gone), marks them deleted, then prunes the repository and
    /// the WAL the remaining base backups no longer need. A user's deletion
    /// (`by_user`) is recorded in the repository first (`record_deletion`).
    async fn expire(&self, job: &Job, backups: &[i64], by_user: bool) -> Result<String> {
        let present = self.setup.repo.snapshot_ids().await?;
        let mut forget = Vec::new();
        let mut tags = Vec::new();
        for id in backups {
            let Some(b) = self.service.catalog.backup(&job.domain, *id).await? else {
                continue;
            };
            if by_user && let Some(snap) = &b.snapshot_id {
                self.service.record_deletion(job, &b.db_tag, snap).await?;
            }
            tags.push(b.db_tag);
            if let Some(snap) = b.snapshot_id
                && let Some(found) = present.iter().find(|p| p.to_hex() == snap)
            {
                forget.push(*found);
            }
        }
        self.setup.repo.forget(&forget).await?;
        self.service
            .catalog
            .mark_backups_deleted(&job.domain, &job.deployment, backups)
            .await?;
        self.log(format!("forgot {}; pruning the repository", tags.join(", ")))
            .await;
        let pruned = self.setup.repo.prune(&Default::default()).await?;
        let wal = match self.service.catalog.deployment(&job.domain, &job.deployment).await? {
            Some(d) => {
                let keep = self.service.wal_planning_reads(&d).await?;
                let archive = WalArchives::archive(&d.domain, &d.name);
                let shipped = self.service.shipped_generations(&d).await?;
                crate::wal_retention::prune(&self.setup.repo, &archive, &keep).await?
                    + crate::shipping::prune_shipped(&self.setup.repo, &archive, &shipped).await?
            }
            None => 0,
        };
        Ok(format!(
            "{} backup(s) deleted ({}); {} bytes in {} packs deleted, {} packs repacked; {wal} WAL file(s) no base \
             backup needs deleted",
            tags.len(),
            tags.join(", "),
            pruned.bytes_deleted,
            pruned.packs_deleted,
            pruned.packs_repacked
        ))
    }

    /// A restore drill (`drill`): each backup recovered into the scratch
    /// place, checked, the place removed, the outcome recorded on the
    /// backup. Fails naming each backup that did not pass, and why.
    async fn drill(&self, job: &Job, drills: &[Drill]) -> Result<String> {
        let (deployment, _) = self.engine(job).await?;
        let (scratch, into) = self.service.drill_engine(&deployment)?;
        let discard = |scratch: Arc<dyn Engine>| tokio::task::spawn_blocking(move || scratch.discard());
        let (mut passed, mut failed) = (Vec::new(), Vec::new());
        for d in drills {
            // What a killed attempt left, first.
            discard(scratch.clone()).await?;
            self.log(format!("drill: {}", d.description)).await;
            let started = std::time::Instant::now();
            let outcome = match self
                .recovery(job, d.from, &d.target, &d.description, None, Place::Drill(&into))
                .await
            {
                Ok((summary, _)) => {
                    let (recovered, s) = (started.elapsed(), scratch.clone());
                    match tokio::task::spawn_blocking(move || s.check()).await? {
                        Ok(found) => Ok(format!(
                            "{summary}; {found} (recovered in {:.1} s, checked in {:.1} s)",
                            recovered.as_secs_f64(),
                            (started.elapsed() - recovered).as_secs_f64()
                        )),
                        Err(e) => Err(format!("recovered, but its check failed: {e}")),
                    }
                }
                Err(e) => Err(format!("{e:#}")),
            };
            discard(scratch.clone()).await?;
            let v = crate::drill::verification(self.service.clock.now(), &outcome);
            self.service
                .catalog
                .record_verification(&job.domain, d.from, &v)
                .await?;
            match outcome {
                Ok(found) => {
                    self.log(format!("backup {} verified: {found}", d.tag)).await;
                    passed.push(d.tag.clone());
                }
                Err(why) => {
                    metrics::counter!("strongbox_verify_failures_total", "domain" => job.domain.clone(),
                        "deployment" => job.deployment.clone())
                    .increment(1);
                    self.log(format!("backup {} failed its drill: {why}", d.tag)).await;
                    failed.push(format!("backup {} ({}): {why}", d.tag, d.description));
                }
            }
        }
        anyhow::ensure!(
            failed.is_empty(),
            "{} of {} drill(s) failed: {}",
            failed.len(),
            drills.len(),
            failed.join("; ")
        );
        Ok(format!("{} drill(s) passed ({})", drills.len(), passed.join(", ")))
    }

    /// Recovers from the first repository that holds the backup whole: the
    /// one the client named, else the primary, then each copy, saying in
    /// the job's messages why one was passed over.
    async fn recovery(
        &self,
        job: &Job,
        from: i64,
        target: &RecoveryTarget,
        description: &str,
        repository: Option<&str>,
        place: Place<'_>,
    ) -> Result<(String, Option<Reached>)> {
        let (deployment, mut engine) = self.engine(job).await?;
        if let Place::Copy(into) | Place::Drill(into) = place {
            engine = self.service.engine_into(&deployment, into)?;
        }
        let backup = self
            .service
            .catalog
            .backup(&job.domain, from)
            .await?
            .and_then(|b| b.snapshot_id.map(|s| (b.db_tag, s)));
        let (tag, snapshot_id) = backup.with_context(|| format!("backup job {from} has no snapshot"))?;
        self.log(format!("plan: {description}")).await;
        let repositories = self.service.readable_repositories(repository).await?;
        let mut passed_over = Vec::new();
        for (i, (name, archives)) in repositories.iter().enumerate() {
            let attempt = async {
                let snapshot = archives.repo.find_snapshot(&snapshot_id).await.map_err(|e| {
                    RecoverError::Reading(anyhow::anyhow!("snapshot {snapshot_id} of backup {tag}: {e}"))
                })?;
                if name != crate::copies::PRIMARY {
                    self.log(format!("reading backup {tag} from copy {name}")).await;
                }
                let files = SnapshotFiles::new(
                    archives.repo.clone(),
                    snapshot,
                    tokio::runtime::Handle::current(),
                    self.counters.clone(),
                );
                self.recover_from(job, engine.clone(), files, archives, target, place)
                    .await
            };
            match attempt.await {
                Ok(recovered) => {
                    return Ok((format!("from backup {tag}: {}", recovered.summary), recovered.reached));
                }
                // The repository failed it (an object missing or damaged):
                // the next one may hold it whole.
                Err(RecoverError::Reading(e)) => {
                    let why = format!("{name}: {e:#}");
                    match repositories.get(i + 1) {
                        Some((next, _)) => self.log(format!("{why}; trying {next}")).await,
                        None => {
                            passed_over.push(why);
                            anyhow::bail!("no repository holds backup {tag} whole: {}", passed_over.join("; "));
                        }
                    }
                    passed_over.push(why);
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("no repository to recover backup {tag} from")
    }

    async fn recover_from(
        &self,
        job: &Job,
        engine: Arc<dyn Engine>,
        files: SnapshotFiles,
        archives: &Arc<WalArchives>,
        target: &RecoveryTarget,
        place: Place<'_>,
    ) -> Result<strongbox_engines::Recovered, RecoverError> {
        let runtime = tokio::runtime::Handle::current();
        // PostgreSQL replays its archive, SQLite its shipped WAL.
        let wal = Some(archives.for_deployment(&job.domain, &job.deployment));
        let (catalog, lease, scratch, target) = (
            self.service.catalog.clone(),
            self.lease.clone(),
            self.setup.scratch.clone(),
            target.clone(),
        );
        // Elsewhere, the deployment's shipper goes on as it was.
        let shipper = matches!(place, Place::Own)
            .then(|| self.service.shippers.link(&job.domain, &job.deployment))
            .flatten();
        let drill = matches!(place, Place::Drill(_));
        let read_failure = files.read_failure();
        let result = tokio::task::spawn_blocking(move || {
            let log = |message: String| runtime.block_on(log(catalog.as_ref(), &lease, &message));
            let cx = RecoveryContext {
                scratch: &scratch,
                log: &log,
                wal: wal.as_ref().map(|w| w as &dyn strongbox_engines::WalArchive),
                shipper: shipper.as_ref(),
                drill,
            };
            engine.recover(&files, &target, &cx)
        })
        .await
        .map_err(|e| RecoverError::Other(e.into()))?;
        result.map_err(|e| match read_failure.get() {
            Some(_) => RecoverError::Reading(e.into()),
            None => RecoverError::Other(e.into()),
        })
    }
}

/// Where a recovery puts the database.
#[derive(Clone, Copy)]
enum Place<'a> {
    /// The deployment's own.
    Own,
    /// Another place the request named.
    Copy(&'a RecoveryInto),
    /// A restore drill's scratch place (`RecoveryContext::drill`).
    Drill(&'a RecoveryInto),
}

/// Why a recovery from one repository failed: reading it (another may
/// hold the backup whole), or anything else.
#[derive(Debug, thiserror::Error)]
enum RecoverError {
    #[error("{0:#}")]
    Reading(anyhow::Error),
    #[error("{0:#}")]
    Other(anyhow::Error),
}
