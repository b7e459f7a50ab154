//! Continuous archiving of SQLite deployments (`sqlite_ship`): one shipper
//! thread per deployment whose backup configuration turns it on and whose
//! database file is on this server, and the planning of recoveries to its
//! moments. A shipper that needs a base (it started, or continuity was
//! lost) queues a backup; that backup's engine asks the shipper for the
//! base, so every backup of such a deployment begins a generation, and the
//! generation's transactions are replayed on top of it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strongbox_catalog::{Backup, Deployment};
use strongbox_engines::sqlite_ship::{
    self, BasePosition, Position, RepoArchive, ShipOptions, ShippedTarget, Shipper, Until,
};
use strongbox_engines::{RecoveryTarget, SqliteEngine};
use time::OffsetDateTime;

use crate::dates::api_date;
use crate::job::{Origin, Trigger};
use crate::pitr::{RecoveryPlan, WalArchives};
use crate::recovery::{RecoveryRequest, Scn};
use crate::{Error, Result, Service};

/// How often the supervisor looks for deployments to ship.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// What a running shipper last reported.
#[derive(Clone, Debug, Default)]
pub struct ShipperStatus {
    pub generation: Option<String>,
    pub shipped: u64,
    /// When the shipper last read the log (ms since the epoch).
    pub polled_ms: i64,
    /// How long the oldest transaction read but not yet pushed has waited.
    pub lag: Duration,
    pub error: Option<String>,
}

/// The shippers running in this server, by (domain, deployment).
#[derive(Default)]
pub struct Shippers {
    running: Mutex<HashMap<(String, String), Running>>,
    /// Set (under `running`'s lock) by `stop_all`: no shipper starts after.
    stopped: AtomicBool,
}

struct Running {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<ShipperStatus>>,
    thread: std::thread::JoinHandle<()>,
}

impl Shippers {
    pub fn status(&self, domain: &str, deployment: &str) -> Option<ShipperStatus> {
        let running = self.running.lock().expect("shippers");
        let r = running.get(&(domain.to_string(), deployment.to_string()))?;
        Some(r.status.lock().expect("status").clone())
    }

    /// Stops every shipper, pushing what each holds; none starts again
    /// (the server is shutting down).
    pub fn stop_all(&self) {
        let all: Vec<Running> = {
            let mut running = self.running.lock().expect("shippers");
            self.stopped.store(true, Ordering::Relaxed);
            running.drain().map(|(_, r)| r).collect()
        };
        for r in &all {
            r.stop.store(true, Ordering::Relaxed);
        }
        for r in all {
            let _ = r.thread.join();
        }
    }
}

impl Service {
    /// Whether the server ships this deployment's log: its engine can, and
    /// its backup configuration says to.
    pub(crate) fn ships(&self, d: &Deployment) -> bool {
        let ships_log =
            strongbox_engines::engine_for(&d.engine, &d.connection).is_ok_and(|e| e.capabilities().ships_log);
        ships_log && self.config_of(d).is_ok_and(|c| c.continuous_archiving)
    }
}

impl Service {
    /// After a recovery of a deployment whose log is shipped (which ended
    /// the shipper's generation): the base of the recovered database's
    /// history, queued at once, so that what the application writes from
    /// now on is protected again (the shipper asks too, within seconds).
    pub async fn base_after_recovery(&self, domain: &str, name: &str, recovery_job: i64) -> Result<()> {
        let d = self.deployment(domain, name).await?;
        if !self.ships(&d) {
            return Ok(());
        }
        let origin = Origin::system(format!(
            "strongbox-shipping:{domain}/{name}:after-recovery-{recovery_job}"
        ));
        let trigger = Trigger::Shipping {
            reason: format!("recovery job {recovery_job} replaced the database"),
        };
        self.start_backup(domain, name, false, trigger, &origin)
            .await
            .map(|_| ())
    }
}

/// Keeps one shipper running per deployment to ship, until the server's
/// shutdown stops them all (`Shippers::stop_all`).
pub async fn supervise(service: Arc<Service>, labels: Vec<String>) {
    let Some(wal) = service.wal.clone() else {
        return;
    };
    while !service.shippers.stopped.load(Ordering::Relaxed) {
        match service.catalog.all_deployments().await {
            Ok(all) => {
                let wanted: Vec<&Deployment> = all
                    .iter()
                    .filter(|d| service.ships(d))
                    .filter(|d| d.runs_on.as_ref().is_none_or(|l| labels.contains(l)))
                    .collect();
                let mut running = service.shippers.running.lock().expect("shippers");
                if service.shippers.stopped.load(Ordering::Relaxed) {
                    break;
                }
                running.retain(|(domain, name), r| {
                    let keep = wanted.iter().any(|d| &d.domain == domain && &d.name == name) && !r.thread.is_finished();
                    if !keep {
                        r.stop.store(true, Ordering::Relaxed);
                    }
                    keep
                });
                for d in wanted {
                    let key = (d.domain.clone(), d.name.clone());
                    if running.contains_key(&key) {
                        continue;
                    }
                    if let Err(e) = service.engine_of(d) {
                        tracing::warn!("continuous archiving of {}: not started: {e}", d.name);
                        continue;
                    }
                    let Ok(engine) = SqliteEngine::from_connection(&d.connection) else {
                        continue;
                    };
                    running.insert(key, start(service.clone(), wal.clone(), d, engine.path));
                }
            }
            Err(e) => tracing::warn!("continuous archiving: listing deployments: {e}"),
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

fn start(service: Arc<Service>, wal: Arc<WalArchives>, d: &Deployment, path: PathBuf) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Mutex::new(ShipperStatus::default()));
    let runtime = tokio::runtime::Handle::current();
    let archive = Arc::new(RepoArchive {
        repo: wal.repo.clone(),
        archive: WalArchives::archive(&d.domain, &d.name),
        runtime: runtime.clone(),
    });
    let (domain, name) = (d.domain.clone(), d.name.clone());
    let opts = ShipOptions::new(wal.scratch.clone());
    let thread = {
        let (stop, status) = (stop.clone(), status.clone());
        std::thread::Builder::new()
            .name(format!("ship {name}"))
            .spawn(move || {
                let ask_base = |reason: &str| {
                    let origin =
                        Origin::system(format!("strongbox-shipping:{domain}/{name}:{}", sqlite_ship::now_ms()));
                    let trigger = Trigger::Shipping { reason: reason.into() };
                    if let Err(e) = runtime.block_on(service.start_backup(&domain, &name, false, trigger, &origin)) {
                        tracing::debug!("continuous archiving of {name}: a base backup must wait: {e}");
                    }
                };
                ship(&path, archive, opts, &stop, &status, ask_base)
            })
            .expect("a shipper thread")
    };
    Running { stop, status, thread }
}

/// How soon a shipper without a generation asks for a base again: the
/// first retry after a second, doubling to at most this.
const ASK_AGAIN_AT_MOST: Duration = Duration::from_secs(8);

/// A shipper's life: (re)started after errors, a base asked for whenever
/// one is needed (never for a file that is not there), requests of backup
/// and recovery jobs answered, and the status kept true: while no
/// generation receives the application's commits, `error` says why and
/// `lag` counts from when shipping stopped.
fn ship(
    path: &std::path::Path,
    archive: Arc<RepoArchive>,
    opts: ShipOptions,
    stop: &AtomicBool,
    status: &Mutex<ShipperStatus>,
    ask_base: impl Fn(&str),
) {
    let started = sqlite_ship::now_ms();
    // Why nothing is shipped, and since when (ms).
    let mut idle = ("continuous archiving started".to_string(), started);
    while !stop.load(Ordering::Relaxed) {
        let mut shipper = match Shipper::start(path, archive.clone(), opts.clone()) {
            Ok(s) => s,
            Err(e) => {
                let mut st = status.lock().expect("status");
                st.error = Some(format!("not shipping since {}: {e}", api_date(at_ms(idle.1))));
                st.lag = since(idle.1);
                drop(st);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let requests = sqlite_ship::register(path);
        let (mut asked, mut wait) = (None::<std::time::Instant>, Duration::from_secs(1));
        let mut failed = None;
        while !stop.load(Ordering::Relaxed) {
            if let Some(why) = shipper.answer(&requests) {
                idle = (why, sqlite_ship::now_ms());
            }
            match shipper.poll() {
                Ok(polled) => {
                    if let Some(why) = polled.lost {
                        tracing::warn!(
                            "continuous archiving of {}: {why}; a new base is needed",
                            path.display()
                        );
                        idle = (why, sqlite_ship::now_ms());
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
            let present = path.exists();
            // A base is asked for when the file is there, then again with a
            // growing wait if none came (the backup was refused while another
            // job ran, or failed).
            if shipper.generation.is_none() && present && asked.is_none_or(|t| t.elapsed() >= wait) {
                if asked.is_some() {
                    wait = (wait * 2).min(ASK_AGAIN_AT_MOST);
                }
                ask_base(&idle.0);
                asked = Some(std::time::Instant::now());
            }
            if shipper.generation.is_some() {
                (asked, wait) = (None, Duration::from_secs(1));
            }
            {
                let mut s = status.lock().expect("status");
                s.generation = shipper.generation.clone();
                s.shipped = shipper.shipped;
                s.polled_ms = sqlite_ship::now_ms();
                (s.lag, s.error) = match &shipper.generation {
                    Some(_) => (shipper.lag(), None),
                    None => {
                        let waiting = match (present, asked) {
                            (false, _) => {
                                "waiting for the database file to come back (a recovery brings it back)".into()
                            }
                            (true, Some(t)) => format!(
                                "waiting for a base backup (asked {} s ago; asked again while refused or failed)",
                                t.elapsed().as_secs()
                            ),
                            (true, None) => "waiting for a base backup".into(),
                        };
                        let error = format!("not shipping since {}: {}; {waiting}", api_date(at_ms(idle.1)), idle.0);
                        (since(idle.1), Some(error))
                    }
                };
            }
            std::thread::sleep(opts.poll);
        }
        sqlite_ship::unregister(path);
        shipper.answer(&requests);
        if let Err(e) = shipper.stop() {
            failed.get_or_insert(e.to_string());
        }
        idle = (
            failed.unwrap_or_else(|| "the shipper started again".into()),
            sqlite_ship::now_ms(),
        );
        if !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// How long ago `ms` was.
fn since(ms: i64) -> Duration {
    Duration::from_millis((sqlite_ship::now_ms() - ms).max(0) as u64)
}

/// A generation as recovery planning sees it.
struct Generation {
    backup: Backup,
    base: BasePosition,
    /// Transactions shipped, and when the last one was seen.
    shipped: u64,
    end_ms: i64,
    /// The shipper is on it now: it reaches the present.
    live: bool,
}

/// Where a backup sits in its deployment's shipped log, if it is a base.
fn base_of(b: &Backup) -> Option<BasePosition> {
    b.position.as_ref()?.shipped_base().cloned()
}

fn ms_of(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn at_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Service {
    /// The deployment's generations with a base backup, oldest first;
    /// `None` when its log is not shipped.
    async fn generations(&self, d: &Deployment, usable: &[Backup]) -> Result<Option<Vec<Generation>>> {
        let (true, Some(wal)) = (self.ships(d), &self.wal) else {
            return Ok(None);
        };
        let archive = WalArchives::archive(&d.domain, &d.name);
        let files = wal
            .repo
            .wal_list(&archive)
            .await
            .map_err(|e| Error::internal(format!("listing the shipped WAL of {}: {e}", d.name)))?;
        let objects = shipped_objects(&files);
        let status = self.shippers.status(&d.domain, &d.name);
        let mut out = Vec::new();
        for b in usable {
            let Some(base) = base_of(b) else {
                continue;
            };
            let (shipped, end_ms) = match objects.get(&base.generation).and_then(|o| o.last()) {
                Some((_, end, name)) => {
                    let data = wal
                        .repo
                        .wal_fetch(&archive, name)
                        .await
                        .map_err(|e| Error::internal(format!("reading {name}: {e}")))?
                        .ok_or_else(|| Error::internal(format!("{name} vanished from the WAL archive")))?;
                    let (_, txns) = sqlite_ship::decode(&data).map_err(|e| Error::internal(e.to_string()))?;
                    (*end, txns.last().map_or(base.taken_ms, |t| t.seen_ms))
                }
                None => (0, base.taken_ms),
            };
            let live = status
                .as_ref()
                .is_some_and(|s| s.generation.as_deref() == Some(&base.generation) && s.error.is_none());
            out.push(Generation {
                backup: b.clone(),
                base,
                shipped,
                end_ms,
                live,
            });
        }
        out.sort_by_key(|g| g.base.taken_ms);
        Ok(Some(out))
    }

    /// Plans a recovery of a deployment whose log is shipped, to `goal`.
    /// `Ok(None)`: its log is not shipped, or (for `latest`) it has no
    /// generation with a base backup yet, so the usual plans apply.
    async fn plan_shipped(
        &self,
        d: &Deployment,
        usable: &[Backup],
        goal: Goal,
    ) -> Result<Option<(Backup, RecoveryPlan)>> {
        let Some(generations) = self.generations(d, usable).await? else {
            return Ok(None);
        };
        let plan = |g: &Generation, until: Until, at_least: u64, what: String| {
            let target = RecoveryTarget::Shipped(ShippedTarget {
                generation: g.base.generation.clone(),
                until,
                at_least,
            });
            let description = format!(
                "restore backup {} and replay the shipped WAL of generation {} to {what}",
                g.backup.db_tag, g.base.generation
            );
            (g.backup.clone(), RecoveryPlan { target, description })
        };
        let (wanted, shown) = match goal {
            Goal::Latest => {
                // The current history: generations begun after the last
                // recovery (which ended the one it found); the ones before
                // it hold a history that recovery abandoned.
                let last_recovery = self
                    .catalog
                    .recoveries(&d.domain, &d.name)
                    .await?
                    .into_iter()
                    .filter(|r| r.status == strongbox_catalog::RecoveryStatus::Completed)
                    .filter_map(|r| Some((crate::dates::parse_rfc3339(&r.started_at)?, r)))
                    .max_by_key(|(at, _)| *at);
                let current = generations.iter().rev().find(|g| {
                    last_recovery
                        .as_ref()
                        .is_none_or(|(at, _)| g.base.taken_ms > ms_of(*at))
                });
                let g = match (current, last_recovery) {
                    (Some(g), _) => g,
                    (None, None) => return Ok(None),
                    (None, Some((at, r))) => {
                        return Err(Error::Invalid(format!(
                            "latest cannot be recovered yet: recovery job {} ({}) replaced {}, and the history \
                             since has no base backup yet (it is queued at once; see the backup list), so what \
                             was written after it is not recoverable; to get the state that recovery made, send \
                             its target again: {}",
                            r.job_id,
                            api_date(at),
                            d.name,
                            r.target
                        )));
                    }
                };
                let what = format!("its end (every shipped transaction: {} so far)", g.shipped);
                return Ok(Some(plan(g, Until::Latest, g.shipped, what)));
            }
            Goal::Position(p) => {
                if let Some(g) = generations
                    .iter()
                    .find(|g| g.base.generation == p.generation && p.txn <= g.shipped)
                {
                    return Ok(Some(plan(
                        g,
                        Until::Txn(p.txn),
                        p.txn,
                        format!("transaction {}", p.txn),
                    )));
                }
                (None, format!("scn {p}"))
            }
            Goal::Time(at) => (Some(at), format!("timestamp {}", api_date(at).trim_end_matches(" UTC"))),
        };
        if let Some(at) = wanted {
            let ms = ms_of(at);
            let covering = generations
                .iter()
                .rev()
                .find(|g| g.base.taken_ms <= ms && (g.end_ms >= ms || g.live));
            if let Some(g) = covering {
                let what = format!("{} UTC", api_date(at).trim_end_matches(" UTC"));
                return Ok(Some(plan(g, Until::Time(ms), 0, what)));
            }
        }
        let ranges: Vec<String> = generations
            .iter()
            .map(|g| {
                let (from, to) = (g.base.at(0), g.base.at(g.shipped));
                let end = if g.live { " (now)".to_string() } else { String::new() };
                format!(
                    "from {} (scn {from}) to {}{end} (scn {to})",
                    api_date(at_ms(g.base.taken_ms)),
                    api_date(at_ms(g.end_ms))
                )
            })
            .collect();
        Err(Error::Invalid(if ranges.is_empty() {
            format!(
                "{shown} cannot be recovered: {} has no base backup taken while its log was shipped yet",
                d.name
            )
        } else {
            format!(
                "{shown} cannot be recovered: the shipped log of {} covers {}",
                d.name,
                ranges.join(", ")
            )
        }))
    }
}

/// Where a recovery of a shipped log goes.
enum Goal {
    Latest,
    Time(OffsetDateTime),
    Position(Position),
}

impl Service {
    /// The plan for `request` when the deployment's log is shipped and the
    /// request names a moment, a position or `latest`; `None` leaves it to
    /// the usual plans (a tag, a backup's own completion second, no
    /// shipping).
    pub(crate) async fn choose_shipped(
        &self,
        request: &RecoveryRequest,
        d: &Deployment,
        usable: &[Backup],
    ) -> Result<Option<(Backup, RecoveryPlan)>> {
        let no_timeline = || {
            Error::Invalid(format!(
                "{} ships a SQLite log, which has no timelines: leave timeline out",
                d.name
            ))
        };
        match request {
            RecoveryRequest::Latest => self.plan_shipped(d, usable, Goal::Latest).await,
            RecoveryRequest::Time { timeline: Some(_), .. } | RecoveryRequest::Scn { timeline: Some(_), .. } => {
                Err(no_timeline())
            }
            RecoveryRequest::Time { at, timeline: None } if *at <= OffsetDateTime::now_utc() => {
                match self.plan_shipped(d, usable, Goal::Time(*at)).await {
                    Ok(plan) => Ok(plan),
                    // A backup's own completion second still names it.
                    Err(_)
                        if usable.iter().any(|b| {
                            crate::recovery::completed_at(b).is_some_and(|t| t.unix_timestamp() == at.unix_timestamp())
                        }) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            RecoveryRequest::Scn {
                scn: Scn::Shipped(p), ..
            } => self.plan_shipped(d, usable, Goal::Position(p.clone())).await,
            RecoveryRequest::Scn { scn: Scn::Lsn(lsn), .. } => Err(Error::Invalid(format!(
                "scn {lsn} is a PostgreSQL WAL position; {} ships a SQLite log, whose positions are written \
                 GENERATION:N (GET …/{} lists its generations' ranges)",
                d.name, d.name
            ))),
            _ => Ok(None),
        }
    }
}

impl Service {
    /// The generations of the deployment's remaining base backups (what
    /// retention keeps of its shipped log).
    pub async fn shipped_generations(&self, d: &Deployment) -> Result<std::collections::BTreeSet<String>> {
        Ok(self
            .usable_backups(&d.domain, &d.name)
            .await?
            .iter()
            .filter_map(base_of)
            .map(|p| p.generation)
            .collect())
    }
}

/// A deployment's continuous archiving as `GET …/{serviceId}` shows it.
#[derive(Clone, Debug)]
pub struct ShippingReport {
    /// What this server's shipper reports; `None` if none runs here.
    pub shipper: Option<ShipperStatus>,
    /// Stretches recoverable to any second and any position, oldest first.
    pub ranges: Vec<ShippedRange>,
}

/// One generation's recoverable stretch.
#[derive(Clone, Debug)]
pub struct ShippedRange {
    pub from: OffsetDateTime,
    /// `None` while the shipper is on this generation (it reaches the present).
    pub to: Option<OffsetDateTime>,
    pub first: Position,
    /// The last transaction shipped so far.
    pub last: Position,
}

impl Service {
    /// `None` for deployments whose log is not shipped.
    pub async fn shipping_report(&self, d: &Deployment) -> Result<Option<ShippingReport>> {
        let usable = self.usable_backups(&d.domain, &d.name).await?;
        let Some(generations) = self.generations(d, &usable).await? else {
            return Ok(None);
        };
        Ok(Some(ShippingReport {
            shipper: self.shippers.status(&d.domain, &d.name),
            ranges: generations
                .iter()
                .map(|g| ShippedRange {
                    from: at_ms(g.base.taken_ms),
                    to: (!g.live).then(|| at_ms(g.end_ms)),
                    first: g.base.at(0),
                    last: g.base.at(g.shipped),
                })
                .collect(),
        }))
    }
}

/// The generations of a shipped archive, by name: their objects'
/// (first, last, name), in order.
fn shipped_objects(files: &[strongbox_repo::WalFile]) -> BTreeMap<String, Vec<(u64, u64, String)>> {
    sqlite_ship::by_generation(files.iter().map(|f| f.name.as_str()))
}

/// Deletes the shipped objects of `archive` whose generation has no base
/// backup left (`keep`: the generations of the remaining backups).
/// Returns how many were deleted.
pub async fn prune_shipped(
    repo: &strongbox_repo::Repository,
    archive: &str,
    keep: &std::collections::BTreeSet<String>,
) -> anyhow::Result<usize> {
    let doomed: Vec<String> = shipped_objects(&repo.wal_list(archive).await?)
        .into_iter()
        .filter(|(generation, _)| !keep.contains(generation))
        .flat_map(|(_, objects)| objects.into_iter().map(|(_, _, name)| name))
        .collect();
    repo.wal_remove(archive, &doomed).await?;
    Ok(doomed.len())
}

/// Checks every shipped log in the archives of the repository's
/// deployments (objects named `GENERATION-FIRST-LAST`; other archived
/// files, PostgreSQL's segments, are not shipped objects): each
/// generation's objects follow each other from its first transaction
/// without a gap, and with `read_data` each opens and decodes. Returns the
/// generations checked and the problems.
pub async fn check_shipped(repo: &strongbox_repo::Repository, read_data: bool) -> anyhow::Result<(usize, Vec<String>)> {
    let archives: std::collections::BTreeSet<String> = repo
        .snapshots()
        .await?
        .iter()
        .filter_map(|s| {
            Some(WalArchives::archive(
                s.labels.get("domain")?,
                s.labels.get("deployment")?,
            ))
        })
        .collect();
    let (mut generations, mut problems) = (0, Vec::new());
    for archive in archives {
        for (generation, objects) in shipped_objects(&repo.wal_list(&archive).await?) {
            generations += 1;
            let mut next = 1;
            for (first, last, name) in objects {
                if first != next {
                    problems.push(format!(
                        "shipped SQLite WAL {archive}, generation {generation}: transactions {next} to {} are \
                         missing (the next object is {name}); recovery in it ends before them",
                        first - 1
                    ));
                    break;
                }
                if read_data {
                    let decoded = repo
                        .wal_fetch(&archive, &name)
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|d| d.ok_or_else(|| "vanished".to_string()))
                        .and_then(|d| sqlite_ship::decode(&d).map_err(|e| e.to_string()));
                    match decoded {
                        Ok((_, txns)) if txns.len() as u64 == last - first + 1 => {}
                        Ok((_, txns)) => problems.push(format!(
                            "{archive}/{name}: holds {} transactions, its name says {}",
                            txns.len(),
                            last - first + 1
                        )),
                        Err(e) => problems.push(format!("{archive}/{name}: {e}")),
                    }
                }
                next = last + 1;
            }
        }
    }
    Ok((generations, problems))
}
