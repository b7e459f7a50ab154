//! Continuous archiving of SQLite deployments (`sqlite_ship`): one shipper
//! thread per deployment whose backup configuration turns it on and whose
//! database file is on this server, and the planning of recoveries to its
//! moments. A shipper that needs a base (it started, or continuity was
//! lost) queues a backup; that backup's engine asks the shipper for the
//! base, so every backup of such a deployment begins a generation, and the
//! generation's transactions are replayed on top of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strongbox_catalog::{Backup, Deployment};
use strongbox_engines::sqlite_ship::{
    self, BasePosition, Position, RepoArchive, ShipContext, ShipOptions, ShippedTarget, ShipperLink, Until,
};
pub use strongbox_engines::sqlite_ship::{ShipperStatus, Stopped};
use strongbox_engines::{Engine, RecoveryTarget};
use time::OffsetDateTime;

use crate::dates::api_date;
use crate::job::{Origin, Trigger};
use crate::pitr::{RecoveryPlan, WalArchives};
use crate::recovery::{RecoveryRequest, Scn};
use crate::{Error, Result, Service};

/// How often the supervisor looks for deployments to ship.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The shippers running in this server, by (domain, deployment).
#[derive(Default)]
pub struct Shippers {
    running: Mutex<HashMap<(String, String), Running>>,
    /// Set (under `running`'s lock) by `stop_all`: no shipper starts after.
    stopped: AtomicBool,
}

struct Running {
    stop: Arc<AtomicBool>,
    /// `ShipContext::forget`.
    forget: Arc<AtomicBool>,
    status: Arc<Mutex<ShipperStatus>>,
    /// How the deployment's jobs reach the shipper.
    link: ShipperLink,
    thread: std::thread::JoinHandle<()>,
    /// `BackupConfig::synchronous_archiving` when it started: a change
    /// restarts it.
    synchronous: bool,
}

impl Shippers {
    pub fn status(&self, domain: &str, deployment: &str) -> Option<ShipperStatus> {
        let running = self.running.lock().expect("shippers");
        let r = running.get(&(domain.to_string(), deployment.to_string()))?;
        Some(r.status.lock().expect("status").clone())
    }

    /// The way to the deployment's shipper, if this server runs one.
    pub(crate) fn link(&self, domain: &str, deployment: &str) -> Option<ShipperLink> {
        let running = self.running.lock().expect("shippers");
        Some(running.get(&(domain.to_string(), deployment.to_string()))?.link.clone())
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

    /// Whether this server keeps a shipper running for `d`: its engine
    /// ships its log (SQLite) or streams its WAL (PostgreSQL), and its
    /// backup configuration turns continuous archiving on.
    pub(crate) fn archives_continuously(&self, d: &Deployment) -> bool {
        let can = strongbox_engines::engine_for(&d.engine, &d.connection).map(|e| e.capabilities());
        can.is_ok_and(|c| c.ships_log || c.streams_wal) && self.config_of(d).is_ok_and(|c| c.continuous_archiving)
    }

    /// Whether `d`'s shipper runs in synchronous mode (its backup
    /// configuration's `synchronous_archiving`).
    fn archives_synchronously(&self, d: &Deployment) -> bool {
        self.config_of(d).is_ok_and(|c| c.synchronous_archiving)
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
                    .filter(|d| service.archives_continuously(d))
                    .filter(|d| d.runs_on.as_ref().is_none_or(|l| labels.contains(l)))
                    .collect();
                let mut running = service.shippers.running.lock().expect("shippers");
                if service.shippers.stopped.load(Ordering::Relaxed) {
                    break;
                }
                // Shippers stopped to change mode start again next round,
                // once the old one has let go of what it holds.
                let mut restarting = Vec::new();
                running.retain(|(domain, name), r| {
                    let wants = wanted.iter().find(|d| &d.domain == domain && &d.name == name);
                    let still = wants.is_some();
                    if !still {
                        r.forget.store(true, Ordering::Relaxed);
                    }
                    let same_mode = wants.is_some_and(|d| service.archives_synchronously(d) == r.synchronous);
                    let keep = still && same_mode && !r.thread.is_finished();
                    if !keep {
                        r.stop.store(true, Ordering::Relaxed);
                    }
                    if still && !same_mode {
                        restarting.push((domain.clone(), name.clone()));
                    }
                    keep
                });
                for d in wanted {
                    let key = (d.domain.clone(), d.name.clone());
                    if running.contains_key(&key) || restarting.contains(&key) {
                        continue;
                    }
                    match service.engine_of(d) {
                        Ok(engine) => {
                            running.insert(key, start(service.clone(), wal.clone(), d, engine));
                        }
                        Err(e) => tracing::warn!("continuous archiving of {}: not started: {e}", d.name),
                    }
                }
            }
            Err(e) => tracing::warn!("continuous archiving: listing deployments: {e}"),
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

fn start(service: Arc<Service>, wal: Arc<WalArchives>, d: &Deployment, engine: Box<dyn Engine>) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let forget = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Mutex::new(ShipperStatus::default()));
    let link = ShipperLink::default();
    let runtime = tokio::runtime::Handle::current();
    let archive = Arc::new(RepoArchive {
        repo: wal.repo.clone(),
        archive: WalArchives::archive(&d.domain, &d.name),
        runtime: runtime.clone(),
    });
    let (domain, name) = (d.domain.clone(), d.name.clone());
    let synchronous = service.archives_synchronously(d);
    let options = ShipOptions {
        synchronous,
        ..ShipOptions::new(wal.scratch.clone())
    };
    let thread = {
        let (stop, forget, status, link) = (stop.clone(), forget.clone(), status.clone(), link.clone());
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
                // `archives_continuously()` chose it by its engine's capabilities.
                let Some(shipping) = engine.log_shipping() else {
                    tracing::warn!("continuous archiving of {name}: its engine ships no log");
                    return;
                };
                shipping.ship(ShipContext {
                    archive,
                    options,
                    link: &link,
                    stop: &stop,
                    forget: &forget,
                    status: &status,
                    ask_base: &ask_base,
                })
            })
            .expect("a shipper thread")
    };
    Running {
        stop,
        forget,
        status,
        link,
        thread,
        synchronous,
    }
}

/// What a stopped shipper's status says (`GET …/{serviceId}`'s `error`).
pub fn stopped_message(s: &Stopped) -> String {
    format!(
        "not shipping since {}: {}; {}",
        api_date(at_ms(s.since_ms)),
        s.why,
        s.waiting
    )
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
        if !self.ships(d) {
            return Ok(None);
        }
        let Some(wal) = self.planning_archives().await else {
            return Ok(None);
        };
        let archive = WalArchives::archive(&d.domain, &d.name);
        let files = wal
            .repo
            .wal_list(&archive)
            .await
            .map_err(|e| Error::repository(format_args!("listing the shipped WAL of {}", d.name), e))?;
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
                        .map_err(|e| Error::repository(format_args!("reading {name}"), e))?
                        .ok_or_else(|| Error::internal(format!("{name} vanished from the WAL archive")))?;
                    let (_, txns) = sqlite_ship::decode(&data).map_err(|e| Error::internal(e.to_string()))?;
                    (*end, txns.last().map_or(base.taken_ms, |t| t.seen_ms))
                }
                None => (0, base.taken_ms),
            };
            let live = status
                .as_ref()
                .is_some_and(|s| s.generation.as_deref() == Some(&base.generation) && s.stopped.is_none());
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
                            r.target.as_ref().map_or("(unreadable)".into(), |t| t.to_string())
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
    /// Stretches recoverable to any second and any position, oldest first;
    /// why they are not known now if the repository does not answer (the
    /// shipper's own status is all the more worth showing then).
    pub ranges: std::result::Result<Vec<ShippedRange>, String>,
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
        if !self.archives_continuously(d) {
            return Ok(None);
        }
        let shipper = self.shippers.status(&d.domain, &d.name);
        let generations = match self.usable_backups(&d.domain, &d.name).await {
            Ok(usable) => self.generations(d, &usable).await,
            Err(e) => Err(e),
        };
        let ranges = match generations {
            Ok(Some(generations)) => Ok(generations
                .iter()
                .map(|g| ShippedRange {
                    from: at_ms(g.base.taken_ms),
                    to: (!g.live).then(|| at_ms(g.end_ms)),
                    first: g.base.at(0),
                    last: g.base.at(g.shipped),
                })
                .collect()),
            // A PostgreSQL deployment whose WAL is streamed: its receiver's
            // state (its stretches are the WAL archive's, under
            // `pointInTimeRecovery`).
            Ok(None) => Ok(Vec::new()),
            Err(Error::Unavailable { message, .. }) => Err(message),
            Err(e) => return Err(e),
        };
        Ok(Some(ShippingReport { shipper, ranges }))
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
