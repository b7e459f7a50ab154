//! Point-in-time recovery: each deployment whose engine
//! recovers to points in time (`postgresql`) archives its WAL into the
//! server's repository under its own archive (`DOMAIN/DEPLOYMENT`), with
//! the commands this module spells out; a recovery to `latest`, a
//! `timestamp` or an `scn` is planned here, before any job is queued, from
//! the catalog's base backup positions and recoveries, the archive's
//! listing and timeline histories, and whether the server answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strongbox_catalog::{Backup, Deployment};
use strongbox_engines::pitr::{Archived, BasePosition, Goal, History, Live, Pitr, Reach, Unreachable};
use strongbox_engines::{Engine, RecoveryTarget, WalArchive};
use strongbox_repo::Repository;
use time::OffsetDateTime;
use tokio::runtime::Handle;

use crate::dates::api_date;
use crate::{Error, Service};

/// The snapshot label naming the WAL archive a base backup replays from
/// (for WAL retention and `repo check`).
pub const WAL_ARCHIVE_LABEL: &str = "wal_archive";

/// How long planning waits for the server to say whether it answers.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// What planning decided: the target, and what it means in words for the
/// job's activity log (both go into the recovery job's spec).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RecoveryPlan {
    pub target: RecoveryTarget,
    pub description: String,
}

/// The server's repository, which holds every deployment's WAL archive, and
/// the command line that reaches it (`strongbox repo -r … --password-file …`).
pub struct WalArchives {
    pub repo: Arc<Repository>,
    pub cli: String,
    /// Where WAL read while planning is put.
    pub scratch: PathBuf,
    /// Timeline histories by archive and timeline (archived files never change).
    histories: Mutex<HashMap<(String, u32), History>>,
}

impl WalArchives {
    pub fn new(repo: Arc<Repository>, cli: String, scratch: PathBuf) -> Self {
        WalArchives {
            repo,
            cli,
            scratch,
            histories: Mutex::default(),
        }
    }

    pub fn archive(domain: &str, deployment: &str) -> String {
        format!("{domain}/{deployment}")
    }

    /// PostgreSQL's `archive_command` for the deployment.
    pub fn archive_command(&self, domain: &str, deployment: &str) -> String {
        format!(
            "{} wal-push --archive {} %p",
            self.cli,
            Self::archive(domain, deployment)
        )
    }

    /// PostgreSQL's `restore_command` for the deployment: each fetch starts
    /// fetching the next segments in the background, as replay will want them.
    pub fn restore_command(&self, domain: &str, deployment: &str) -> String {
        format!(
            "{} wal-fetch --archive {} --prefetch 8 %f %p",
            self.cli,
            Self::archive(domain, deployment)
        )
    }

    /// The deployment's archive as an engine reaches it (from a blocking thread).
    pub fn for_deployment(self: &Arc<Self>, domain: &str, deployment: &str) -> DeploymentWal {
        DeploymentWal {
            archives: self.clone(),
            archive: Self::archive(domain, deployment),
            restore_command: self.restore_command(domain, deployment),
            runtime: Handle::current(),
        }
    }

    /// The history of every timeline whose history file is archived.
    async fn histories(&self, archive: &str, archived: &Archived) -> Result<BTreeMap<u32, History>, Error> {
        let mut out = BTreeMap::new();
        for (timeline, name, _) in archived.histories() {
            let key = (archive.to_string(), timeline);
            if let Some(h) = self.histories.lock().expect("history cache").get(&key) {
                out.insert(timeline, h.clone());
                continue;
            }
            // Archived, or only received so far: the receiver stores a
            // history it streams as a streamed copy until archive_command
            // archives it (on a slow store, seconds after the promotion:
            // the recovery model on a flaky S3 store, seed 547529580).
            let (text, _) = self
                .repo
                .wal_fetch_for_replay(archive, name)
                .await
                .map_err(|e| Error::repository(format_args!("reading {name} from the WAL archive"), e))?
                .ok_or_else(|| Error::internal(format!("{name} vanished from the WAL archive")))?;
            let h = History::parse(timeline, &String::from_utf8_lossy(&text)).map_err(Error::internal)?;
            self.histories.lock().expect("history cache").insert(key, h.clone());
            out.insert(timeline, h);
        }
        Ok(out)
    }
}

/// One deployment's WAL archive, for engines (which run on blocking threads).
pub struct DeploymentWal {
    archives: Arc<WalArchives>,
    archive: String,
    restore_command: String,
    runtime: Handle,
}

impl WalArchive for DeploymentWal {
    fn restore_command(&self) -> String {
        self.restore_command.clone()
    }

    /// A segment not archived whole is its streamed tail, if there is one
    /// (what `restore_command` gives replay too).
    fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, strongbox_engines::Error> {
        self.runtime
            .block_on(self.archives.repo.wal_fetch_for_replay(&self.archive, name))
            .map(|found| {
                found.map(|(data, tail)| {
                    if tail {
                        strongbox_engines::whole_segment(data)
                    } else {
                        data
                    }
                })
            })
            .map_err(|e| strongbox_engines::Error::Failed(format!("fetching {name} from the WAL archive: {e}")))
    }

    fn list(&self) -> Result<Archived, strongbox_engines::Error> {
        self.runtime
            .block_on(self.archives.repo.wal_list(&self.archive))
            .map(|files| Archived::new(&files))
            .map_err(|e| strongbox_engines::Error::Failed(format!("listing the WAL archive: {e}")))
    }

    fn names(&self) -> Result<Vec<String>, strongbox_engines::Error> {
        self.runtime
            .block_on(self.archives.repo.wal_list(&self.archive))
            .map(|files| files.into_iter().map(|f| f.name).collect())
            .map_err(|e| strongbox_engines::Error::Failed(format!("listing the WAL archive: {e}")))
    }
}

/// Everything planning a deployment's point-in-time recovery starts from.
pub(crate) struct PitrState {
    /// Usable base backups (completed, snapshot present, position known).
    pub bases: Vec<(Backup, BasePosition)>,
    positions: Vec<BasePosition>,
    archived: Archived,
    histories: BTreeMap<u32, History>,
    created: BTreeMap<u32, OffsetDateTime>,
    pub live: Option<Live>,
    engine: Arc<dyn Engine>,
    wal: DeploymentWal,
    segment_size: u64,
}

impl Service {
    /// What planning a deployment's point-in-time recovery starts from;
    /// `None` when the deployment cannot recover to a point in time at all.
    /// `backups` are the usable ones; `probe` asks the server whether it
    /// answers (a request may target up to the present only if it does).
    pub(crate) async fn pitr_state(
        &self,
        d: &Deployment,
        backups: &[Backup],
        probe: bool,
    ) -> Result<Option<PitrState>, Error> {
        let Some(archives) = self.planning_archives().await else {
            return Ok(None);
        };
        let recoveries = self.catalog.recoveries(&d.domain, &d.name).await?;
        let engine: Arc<dyn Engine> = self.engine_of(d)?.into();
        if !engine.capabilities().point_in_time {
            return Ok(None);
        }
        let bases: Vec<(Backup, BasePosition)> = backups
            .iter()
            .filter_map(|b| Some((b.clone(), b.position.as_ref()?.wal()?.clone())))
            .collect();
        let archive = WalArchives::archive(&d.domain, &d.name);
        let files = archives
            .repo
            .wal_list(&archive)
            .await
            .map_err(|e| Error::repository(format_args!("listing the WAL archive of {}", d.name), e))?;
        let archived = Archived::new(&files);
        let mut histories = archives.histories(&archive, &archived).await?;
        // A timeline one of our recoveries promoted whose history file is
        // not in the repository yet (archive_command on a slow store takes
        // seconds; the recovery model on a flaky S3 store, seed 731890079):
        // its history is its parent's and the recorded switch point, as
        // PostgreSQL writes it. Recoveries come in job order, each parent
        // before its children; a number used again (its first history never
        // archived) is the later promotion's.
        let stored: BTreeSet<u32> = histories.keys().copied().collect();
        for reached in recoveries.iter().filter_map(|r| r.reached.as_ref()) {
            if stored.contains(&reached.timeline) {
                continue;
            }
            let parent = match reached.from_timeline {
                1 => Some(History::first()),
                t => histories.get(&t).cloned(),
            };
            if let Some(h) = parent.and_then(|p| p.branch(reached.timeline, reached.lsn).ok()) {
                histories.insert(reached.timeline, h);
            }
        }
        // When each timeline began: as our recoveries recorded it, else when
        // its history file was archived (a promotion outside Strongbox).
        let mut created: BTreeMap<u32, OffsetDateTime> = archived.histories().map(|(t, _, at)| (t, at)).collect();
        for reached in recoveries.iter().filter_map(|r| r.reached.as_ref()) {
            created.insert(reached.timeline, reached.promoted_at);
        }
        let positions: Vec<BasePosition> = bases.iter().map(|(_, p)| p.clone()).collect();
        strongbox_engines::pitr::bound_created(&mut created, &positions, &histories);
        let live = match probe {
            true => probe_server(engine.clone()).await,
            false => None,
        };
        Ok(Some(PitrState {
            positions,
            segment_size: bases.first().map_or(16 << 20, |(_, p)| p.segment_size),
            bases,
            archived,
            histories,
            created,
            live,
            engine,
            wal: archives.for_deployment(&d.domain, &d.name),
        }))
    }
}

impl Service {
    /// The WAL files of the deployment's archive that retention keeps
    /// though they are older than every base backup (`PitrState::checked_wal`).
    pub async fn wal_planning_reads(&self, d: &Deployment) -> Result<BTreeSet<String>, Error> {
        let usable = self.usable_backups(&d.domain, &d.name).await?;
        match self.pitr_state(d, &usable, false).await? {
            Some(state) => state.checked_wal().await,
            None => Ok(BTreeSet::new()),
        }
    }
}

/// A deployment's point-in-time recovery as `GET …/{serviceId}` shows it.
#[derive(Clone, Debug)]
pub struct PitrStatus {
    pub archive_command: String,
    pub restore_command: String,
    /// The server's timeline as it answers, else the newest the archive
    /// holds; `None` when neither is known now.
    pub current_timeline: Option<u32>,
    pub server_answers: bool,
    /// What the archive reaches; why that is not known now if the
    /// repository does not answer.
    pub reach: Result<ArchiveReach, String>,
}

/// What a deployment's WAL archive reaches.
#[derive(Clone, Debug)]
pub struct ArchiveReach {
    /// The current timeline, whose history the stretches are of.
    pub timeline: u32,
    /// The recoverable stretches of the current timeline's history.
    pub ranges: Vec<Reach>,
    /// The last commit in the archive itself: where the range would end if
    /// the server were lost now (the range reaches the present while it
    /// answers).
    pub archived_until: Option<OffsetDateTime>,
}

impl Service {
    /// `None` for deployments that do not recover to points in time. While
    /// the repository does not answer, what would be read from it is left
    /// out and says why: the commands and whether the server answers are
    /// what an operator needs during an outage.
    pub async fn pitr_status(&self, d: &Deployment) -> Result<Option<PitrStatus>, Error> {
        // Asked first, so that the others' pages read nothing of the
        // repository for it.
        let point_in_time =
            strongbox_engines::engine_for(&d.engine, &d.connection).is_ok_and(|e| e.capabilities().point_in_time);
        let (Some(archives), true) = (&self.wal, point_in_time) else {
            return Ok(None);
        };
        let state = match self.usable_backups(&d.domain, &d.name).await {
            Ok(usable) => self.pitr_state(d, &usable, true).await,
            Err(e) => Err(e),
        };
        let (current_timeline, server_answers, reach) = match state {
            Ok(None) => return Ok(None),
            Ok(Some(state)) => {
                let timeline = state.current();
                let reach = ArchiveReach {
                    timeline,
                    ranges: state.ranges(),
                    archived_until: state.archive_end(),
                };
                (Some(timeline), state.live.is_some(), Ok(reach))
            }
            Err(Error::Unavailable { message, .. }) => {
                let live = probe_server(self.engine_of(d)?.into()).await;
                (live.map(|l| l.timeline), live.is_some(), Err(message))
            }
            Err(e) => return Err(e),
        };
        Ok(Some(PitrStatus {
            archive_command: archives.archive_command(&d.domain, &d.name),
            restore_command: archives.restore_command(&d.domain, &d.name),
            current_timeline,
            server_answers,
            reach,
        }))
    }
}

/// Where the server is now, if it answers within `PROBE_WAIT`.
async fn probe_server(engine: Arc<dyn Engine>) -> Option<Live> {
    let asked = tokio::task::spawn_blocking(move || engine.point_in_time().and_then(|p| p.probe()));
    tokio::time::timeout(PROBE_WAIT, asked)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
}

impl PitrState {
    fn pitr(&self) -> Pitr<'_> {
        Pitr {
            bases: &self.positions,
            archived: &self.archived,
            histories: &self.histories,
            created: &self.created,
            live: self.live,
        }
    }

    /// Whether any WAL is archived (point-in-time recovery is set up).
    pub(crate) fn archives_wal(&self) -> bool {
        !self.archived.is_empty()
    }

    pub(crate) fn current(&self) -> u32 {
        self.pitr().current()
    }

    /// The recoverable stretches of the current timeline's history.
    pub(crate) fn ranges(&self) -> Vec<Reach> {
        let pitr = self.pitr();
        pitr.history(pitr.current())
            .map(|h| pitr.ranges(&h))
            .unwrap_or_default()
    }

    /// Where the archive alone reaches on the newest archived history.
    pub(crate) fn archive_end(&self) -> Option<OffsetDateTime> {
        let pitr = Pitr {
            live: None,
            ..self.pitr()
        };
        let history = pitr.history(pitr.current()).ok()?;
        pitr.ranges(&history).last().map(|r| r.latest_time)
    }

    /// Plans a recovery to `goal` (on `timeline`'s history, the current
    /// one's if `None`): the base backup and the engine's target. Reading
    /// WAL (to tell whether a moment before a recovery is still on the
    /// current history) runs on a blocking thread.
    pub(crate) async fn plan(
        self,
        goal: Goal,
        timeline: Option<u32>,
    ) -> Result<Result<(Backup, RecoveryPlan), Unreachable>, Error> {
        // Planning on without the server's timeline would restore the
        // latest backup and lose what was committed since.
        if let Some(t) = self.pitr().awaited_history() {
            return Err(Error::unavailable(format!(
                "the server is on timeline {t}, whose history file {t:08X}.history is not in the repository yet: \
                 archive_command (or the WAL receiver) stores it shortly after a promotion, and a recovery is \
                 planned along it (if this lasts, archive_command is failing: see pg_stat_archiver on the server)"
            )));
        }
        tokio::task::spawn_blocking(move || {
            let point_in_time = self.engine.point_in_time().expect("checked in `pitr_state`");
            let scratch = self.wal.archives.scratch.clone();
            let mut first_commit = |h: &History, from| {
                point_in_time
                    .first_commit_after(&self.wal, h, from, self.segment_size, &scratch)
                    .map_err(|e| e.to_string())
            };
            let plan = self.pitr().plan(goal, timeline, &mut first_commit)?;
            let (backup, base) = self.bases[plan.base].clone();
            let description = describe(&plan, &backup, self.live.is_some());
            let target = RecoveryTarget::PointInTime(strongbox_engines::PitrTarget {
                base,
                history: plan.history,
                goal,
                quiet_from: plan.quiet_from,
            });
            Ok((backup, RecoveryPlan { target, description }))
        })
        .await
        .map_err(|e| Error::internal(format!("planning the recovery: {e}")))
    }

    /// The archived WAL files older than every base backup that planning
    /// still reads: where timelines live in the recoverable range part, it
    /// checks which of them committed first (`Pitr::checked_stretches`).
    /// WAL retention keeps these.
    pub(crate) async fn checked_wal(self) -> Result<BTreeSet<String>, Error> {
        let (Some(since), Some(before)) = (
            self.positions.iter().map(|p| p.stop_time).min(),
            self.positions.iter().map(|p| p.start_lsn).min(),
        ) else {
            return Ok(BTreeSet::new());
        };
        tokio::task::spawn_blocking(move || {
            let point_in_time = self.engine.point_in_time().expect("checked in `pitr_state`");
            let scratch = self.wal.archives.scratch.clone();
            let reading = Reading {
                wal: &self.wal,
                read: Mutex::default(),
            };
            for (history, from) in self.pitr().checked_stretches(since, before) {
                // Only what the scan reads matters here, not what it finds:
                // a scan that fails found its WAL gone already.
                let _ = point_in_time.first_commit_after(&reading, &history, from, self.segment_size, &scratch);
            }
            reading.read.into_inner().expect("read files")
        })
        .await
        .map_err(|e| Error::internal(format!("finding the WAL planning reads: {e}")))
    }
}

/// A WAL archive that notes which files were fetched from it.
struct Reading<'a> {
    wal: &'a DeploymentWal,
    read: Mutex<BTreeSet<String>>,
}

impl WalArchive for Reading<'_> {
    fn restore_command(&self) -> String {
        self.wal.restore_command()
    }

    fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, strongbox_engines::Error> {
        let data = self.wal.fetch(name)?;
        if data.is_some() {
            self.read.lock().expect("read files").insert(name.to_string());
        }
        Ok(data)
    }

    fn list(&self) -> Result<Archived, strongbox_engines::Error> {
        self.wal.list()
    }

    fn names(&self) -> Result<Vec<String>, strongbox_engines::Error> {
        self.wal.names()
    }
}

fn describe(plan: &strongbox_engines::pitr::Plan, backup: &Backup, live: bool) -> String {
    let timeline = plan.history.timeline();
    let what = match plan.goal {
        Goal::Latest if live => "everything committed up to the recovery (complete recovery)".to_string(),
        Goal::Latest => "the end of the archived WAL (complete recovery; the server does not answer)".to_string(),
        Goal::Time(t) => format!("{} UTC", api_date(t).trim_end_matches(" UTC")),
        Goal::Lsn(l) => format!("scn {l}"),
    };
    format!(
        "restore base backup {} and replay the WAL of timeline {timeline}'s history to {what}",
        backup.db_tag
    )
}

/// Timestamps as requests spell them, whole seconds: the earliest is the
/// first whole second after the base backup's consistency point, the
/// latest the last whole second the archive reaches. `None` when no whole
/// second lies between.
pub fn whole_seconds(r: &Reach) -> Option<(String, String)> {
    let floor = |t: OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t);
    let earliest = floor(r.earliest_time) + time::Duration::SECOND;
    let latest = floor(r.latest_time);
    let date = api_date;
    (earliest <= latest).then(|| (date(earliest), date(latest)))
}

/// The 400 for a target the archive cannot reach, naming what can be.
pub(crate) fn unreachable(what: &str, service: &str, u: &Unreachable) -> Error {
    let ranges: Vec<String> = u
        .ranges
        .iter()
        .map(|r| match whole_seconds(r) {
            Some((from, to)) => format!("from {from} (scn {}) to {to} (scn {})", r.earliest_lsn, r.latest_lsn),
            None => format!("from scn {} to scn {}", r.earliest_lsn, r.latest_lsn),
        })
        .collect();
    let range = if ranges.is_empty() {
        format!(
            "nothing of timeline {}'s history of {service} is recoverable to a point in time: that needs a base \
             backup taken on it while its WAL is archived (GET …/{service} shows the archive_command to set)",
            u.timeline
        )
    } else {
        format!(
            "timeline {}'s history of {service} is recoverable {}",
            u.timeline,
            ranges.join(", and ")
        )
    };
    Error::Invalid(format!("{what} cannot be recovered: {}; {range}", u.why))
}
