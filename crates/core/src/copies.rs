//! Copies (issue 28): further repositories, each holding every backup, WAL
//! file, shipped log and record of the server's repository (the primary),
//! so that losing the primary's store loses nothing.
//!
//! A copier per copy brings it what it lacks: each completed backup's
//! snapshot (`Repository::copy_snapshot`: only chunks the copy lacks
//! cross, under its own key), then every WAL file and record
//! (`mirror_wal`, `mirror_records`). It runs every `copy_seconds` and at
//! once after a backup, and brings WAL alone every second in between
//! (`WAL_EVERY`). Copies are not jobs in the queue on purpose: a copy never
//! takes a deployment's job slot or a worker, so a copy target that is
//! down or slow delays copies (its lag grows, shown and alerted on) and
//! never a backup or a recovery. Every step is idempotent, so a server killed
//! mid-copy, or two servers copying at once, store nothing twice (the
//! pack a kill left without its index object is indexed when the copy
//! resumes: `copy_snapshot`).
//!
//! Recoveries read the primary and fall back to a copy that holds the
//! backup when the primary is gone or an object it needs is missing or
//! damaged (`Service::readable_repositories`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use strongbox_repo::{NoProgress, Repository, Store};
use time::OffsetDateTime;

use crate::copy_expiry::LogFloor;
use crate::pitr::WalArchives;
use crate::{Error, Result, Service};

/// The primary repository's name where copies are named (`"repository"`
/// in a recovery request, job messages).
pub const PRIMARY: &str = "primary";

/// A copy: where it is, how to open it, what its copier last found.
pub struct RepoCopy {
    pub name: String,
    pub location: String,
    password: String,
    /// `strongbox repo …` reaching it (PostgreSQL's restore_command, when
    /// a recovery reads this copy).
    cli: String,
    scratch: std::path::PathBuf,
    /// Opened (created, the first time) on first use: a copy that is down
    /// when the server starts is opened by a later round.
    opened: tokio::sync::OnceCell<Arc<WalArchives>>,
    status: Mutex<CopyStatus>,
    /// The streamed WAL tails copied, and which version of each.
    streamed: tokio::sync::Mutex<strongbox_repo::StreamedSeen>,
    /// Its own recovery window in days (`copy_expiry`); the deployment's if
    /// `None`.
    pub window_days: Option<u32>,
    /// What its remaining backups need of each log, as of its last whole
    /// round: what WAL rounds do not bring it.
    floor: Mutex<LogFloor>,
}

/// What a copy's copier last found (`GET …/{serviceId}`, `/metrics`).
#[derive(Clone, Debug, Default)]
pub struct CopyStatus {
    /// Why the last round failed, if it did.
    pub error: Option<String>,
    /// How long the oldest backup or WAL file the copy lacks has waited:
    /// 0 once a round brought it everything.
    pub lag_seconds: f64,
    /// Backups waiting to be copied, as of the last round.
    pub pending_backups: usize,
    pub last_round: Option<OffsetDateTime>,
    /// When a round last completed: while rounds fail, the lag is at least
    /// the time since.
    last_complete: Option<OffsetDateTime>,
    /// The oldest backup the last whole round left uncopied (WAL rounds
    /// count no backups).
    oldest_pending: Option<OffsetDateTime>,
}

impl RepoCopy {
    pub fn new(
        name: String,
        location: String,
        password: String,
        cli: String,
        scratch: std::path::PathBuf,
        window_days: Option<u32>,
    ) -> Self {
        RepoCopy {
            name,
            location,
            password,
            cli,
            scratch,
            opened: Default::default(),
            status: Default::default(),
            streamed: Default::default(),
            window_days,
            floor: Default::default(),
        }
    }

    pub(crate) fn floor(&self) -> LogFloor {
        self.floor.lock().expect("copy floor").clone()
    }

    /// The copy's repository (with its WAL archives), opened or created.
    pub async fn archives(&self) -> Result<Arc<WalArchives>> {
        self.opened
            .get_or_try_init(|| async {
                let failed = |e: strongbox_repo::Error| {
                    Error::unavailable(format!("copy {} ({}): {e}", self.name, self.location))
                };
                let store = Store::open(&self.location).map_err(failed)?;
                let (repo, created) = Repository::open_or_init(store, self.password.as_bytes(), Default::default())
                    .await
                    .map_err(failed)?;
                if created {
                    tracing::info!("created copy {} at {}", self.name, self.location);
                }
                Ok(Arc::new(WalArchives::new(
                    Arc::new(repo),
                    self.cli.clone(),
                    self.scratch.clone(),
                )))
            })
            .await
            .cloned()
    }

    pub fn status(&self) -> CopyStatus {
        self.status.lock().expect("copy status").clone()
    }
}

/// How often a copy is brought the WAL files and shipped logs it lacks
/// (at most: never more often than `copy_seconds`). WAL is what a copy
/// alone recovers the last minutes from, so it goes first and often; a
/// WAL round is two listings of `wal/` and what they differ by.
pub const WAL_EVERY: Duration = Duration::from_secs(1);

/// Brings one copy what it lacks every `every`, and when a backup asks
/// (`Service::copies_wanted`), until the server stops; WAL in between,
/// every `WAL_EVERY`.
pub async fn copier(service: Arc<Service>, copy: Arc<RepoCopy>, every: Duration) {
    let mut whole_due = tokio::time::Instant::now();
    loop {
        let started = OffsetDateTime::now_utc();
        let whole = tokio::time::Instant::now() >= whole_due;
        let round = if whole {
            whole_due = tokio::time::Instant::now() + every;
            service.copy_round(&copy).await
        } else {
            service.copy_wal(&copy).await
        };
        copy.note(round, whole, started, OffsetDateTime::now_utc());
        tokio::select! {
            _ = service.copies_wanted.notified() => whole_due = tokio::time::Instant::now(),
            _ = tokio::time::sleep(WAL_EVERY.min(every)) => {}
        }
    }
}

impl RepoCopy {
    /// Notes a round's outcome in the status and the metrics.
    /// A WAL round (not `whole`) says nothing of backups: it clears the lag
    /// only when no backup is pending, and leaves their count as it was.
    fn note(
        &self,
        round: std::result::Result<Round, (Error, Pending)>,
        whole: bool,
        started: OffsetDateTime,
        now: OffsetDateTime,
    ) {
        let mut status = self.status.lock().expect("copy status");
        status.last_round = Some(now);
        match round {
            Ok(r) if !whole => {
                if status.error.is_none() && status.pending_backups == 0 {
                    status.last_complete = Some(started);
                    status.lag_seconds = 0.0;
                }
                if r.objects > 0 {
                    tracing::debug!(
                        "copy {}: {} WAL file(s) copied, {} bytes",
                        self.name,
                        r.objects,
                        r.bytes
                    );
                }
            }
            Ok(r) => {
                status.error = None;
                status.pending_backups = 0;
                status.oldest_pending = None;
                // What it lacked at the start of this round is there now.
                status.last_complete = Some(started);
                status.lag_seconds = 0.0;
                if r.backups + r.objects > 0 {
                    tracing::info!(
                        "copy {}: {} backup(s) and {} WAL file(s) or record(s) copied, {} bytes",
                        self.name,
                        r.backups,
                        r.objects,
                        r.bytes
                    );
                }
                if r.expired + r.expired_files > 0 {
                    tracing::info!(
                        "copy {}: {} backup(s) and {} log file(s) outside its recovery window deleted",
                        self.name,
                        r.expired,
                        r.expired_files
                    );
                }
            }
            Err((e, pending)) => {
                if status.error.as_deref() != Some(&e.to_string()) {
                    tracing::warn!("copy {}: {e}", self.name);
                }
                status.error = Some(e.to_string());
                // A WAL round does not count backups: the last whole round's count stands.
                if whole {
                    status.pending_backups = pending.count;
                    status.oldest_pending = pending.oldest;
                }
                let waiting = [status.oldest_pending, status.last_complete]
                    .into_iter()
                    .flatten()
                    .min()
                    .map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0));
                status.lag_seconds = waiting;
            }
        }
        metrics::gauge!("strongbox_copy_lag_seconds", "copy" => self.name.clone()).set(status.lag_seconds);
        metrics::gauge!("strongbox_copy_pending_backups", "copy" => self.name.clone())
            .set(status.pending_backups as f64);
    }
}

/// What a round copied.
#[derive(Default)]
struct Round {
    backups: usize,
    /// Backups and log files its window let go.
    expired: usize,
    expired_files: usize,
    objects: usize,
    bytes: u64,
}

/// Backups a failed round left uncopied.
#[derive(Default)]
struct Pending {
    count: usize,
    /// The oldest one's completion.
    oldest: Option<OffsetDateTime>,
}

impl Service {
    async fn copy_round(&self, copy: &RepoCopy) -> std::result::Result<Round, (Error, Pending)> {
        let mut pending = Pending::default();
        let plan = match self.copy_plan(copy, self.clock.now()).await {
            Ok(p) => p,
            Err(e) => return Err((e, pending)),
        };
        let missing = &plan.to_copy;
        pending.count = missing.len();
        pending.oldest = missing.iter().filter_map(|(_, at, _)| *at).min();
        let mut gone = 0;
        let outcome = async {
            let primary = self.copy_source()?;
            let to = copy.archives().await?;
            let mut round = Round::default();
            let mut first_error = None;
            for (b, _, snapshot_id) in missing {
                let copied = async {
                    let snap = primary.find_snapshot(snapshot_id).await?;
                    primary.copy_snapshot(&snap, &to.repo, Arc::new(NoProgress)).await
                }
                .await;
                match copied {
                    Ok(done) => {
                        self.catalog
                            .record_copy(&b.domain, &b.deployment, b.job_id, &copy.name)
                            .await?;
                        round.backups += 1;
                        round.bytes += done.totals.new_bytes_stored;
                    }
                    // Forgotten since (`repo forget`): nothing left to copy.
                    Err(strongbox_repo::Error::SnapshotNotFound(_)) if primary.is_present().await.unwrap_or(false) => {
                        tracing::debug!("backup {} of {} is no longer in the repository", b.db_tag, b.deployment);
                        gone += 1;
                    }
                    // The others are still worth copying.
                    Err(e) => {
                        first_error.get_or_insert(Error::unavailable(format!(
                            "copying backup {} of {} to {}: {e}",
                            b.db_tag, b.deployment, copy.name
                        )));
                    }
                }
            }
            (round.expired, round.expired_files) = self.expire_in_copy(copy, &to, &plan).await?;
            *copy.floor.lock().expect("copy floor") = plan.floor.clone();
            let wal = self.mirror_wal(copy, primary, &to.repo).await?;
            let records = primary
                .mirror_records(&to.repo)
                .await
                .map_err(|e| Error::unavailable(format!("copying records to {}: {e}", copy.name)))?;
            round.objects = wal.objects + records.objects;
            round.bytes += wal.bytes + records.bytes;
            match first_error {
                Some(e) => Err(e),
                None => Ok(round),
            }
        }
        .await;
        pending.count -= gone;
        outcome.map_err(|e| (e, pending))
    }

    /// A WAL round: the WAL files and shipped logs `copy` lacks.
    async fn copy_wal(&self, copy: &RepoCopy) -> std::result::Result<Round, (Error, Pending)> {
        let outcome = async {
            let primary = self.copy_source()?;
            let to = copy.archives().await?;
            let wal = self.mirror_wal(copy, primary, &to.repo).await?;
            Ok(Round {
                objects: wal.objects,
                bytes: wal.bytes,
                ..Round::default()
            })
        }
        .await;
        outcome.map_err(|e| (e, Pending::default()))
    }

    /// The primary: what copies are brought what they lack from.
    fn copy_source(&self) -> Result<&Repository> {
        self.repository()
            .map(Arc::as_ref)
            .ok_or_else(|| Error::internal("no repository to copy from"))
    }

    async fn mirror_wal(
        &self,
        copy: &RepoCopy,
        primary: &Repository,
        to: &Repository,
    ) -> Result<strongbox_repo::Mirrored> {
        let mut seen = copy.streamed.lock().await;
        let floor = copy.floor();
        primary
            .mirror_wal(to, &mut seen, &|archive, name| floor.needless(archive, name))
            .await
            .map_err(|e| Error::unavailable(format!("copying WAL to {}: {e}", copy.name)))
    }

    /// The copies holding each of a deployment's backups, by backup job id.
    pub async fn backup_copies(
        &self,
        domain: &str,
        deployment: &str,
    ) -> Result<std::collections::HashMap<i64, Vec<String>>> {
        let mut out: std::collections::HashMap<i64, Vec<String>> = Default::default();
        for c in self.catalog.copies(domain, deployment).await? {
            out.entry(c.backup_job_id).or_default().push(c.copy);
        }
        Ok(out)
    }

    /// The snapshots (hex ids) the copies hold, as listed now; a copy that
    /// does not answer holds none a recovery could read.
    pub(crate) async fn snapshots_in_copies(&self) -> std::collections::HashSet<String> {
        let mut ids = std::collections::HashSet::new();
        for c in &self.copies {
            let listed = async {
                c.archives()
                    .await?
                    .repo
                    .snapshot_ids()
                    .await
                    .map_err(Error::unavailable)
            };
            match listed.await {
                Ok(found) => ids.extend(found.iter().map(|id| id.to_hex())),
                Err(e) => tracing::warn!("listing the snapshots of copy {}: {e}", c.name),
            }
        }
        ids
    }

    /// The WAL archives planning reads: the primary's, or while its store is
    /// gone, the first copy's.
    pub(crate) async fn planning_archives(&self) -> Option<Arc<WalArchives>> {
        if self.copies.is_empty() {
            return self.wal.clone();
        }
        match self.readable_repositories(None).await {
            Ok(found) => found.into_iter().next().map(|(_, a)| a),
            Err(_) => self.wal.clone(),
        }
    }

    /// The repositories a recovery may read, in the order to try them,
    /// each with its name: the one `named` (`"primary"` or a copy's name),
    /// else the primary while its store holds it, then every copy that
    /// opens. Planning reads the first.
    pub async fn readable_repositories(&self, named: Option<&str>) -> Result<Vec<(String, Arc<WalArchives>)>> {
        let Some(primary) = self.wal.clone() else {
            return Ok(Vec::new());
        };
        let copy = |name: &str| self.copies.iter().find(|c| c.name == name).cloned();
        match named {
            Some(PRIMARY) => return Ok(vec![(PRIMARY.to_string(), primary)]),
            Some(name) => {
                let c = copy(name).ok_or_else(|| {
                    let names: Vec<&str> = self.copies.iter().map(|c| c.name.as_str()).collect();
                    Error::Invalid(format!(
                        "no repository is named {name:?}: the server's are {PRIMARY:?} and its copies {names:?} \
                         (`copies` in its configuration)"
                    ))
                })?;
                return Ok(vec![(c.name.clone(), c.archives().await?)]);
            }
            None => {}
        }
        let mut out = Vec::new();
        if primary.repo.is_present().await.unwrap_or(false) {
            out.push((PRIMARY.to_string(), primary.clone()));
        }
        for c in &self.copies {
            match c.archives().await {
                Ok(a) => out.push((c.name.clone(), a)),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if out.is_empty() {
            // Nothing else answers: the primary's own error is the one to see.
            out.push((PRIMARY.to_string(), primary));
        }
        Ok(out)
    }
}
