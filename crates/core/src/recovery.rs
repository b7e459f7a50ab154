//! Which backup and which point a recovery request means — DBCS semantics:
//! `latest` is the latest backup and, where WAL is archived, complete
//! recovery; a `dbTag` is that backup; a `timestamp` is a backup's
//! completion time or, with archived WAL, any moment of the current
//! history; an `scn` a position of it. Every check runs before the job is
//! queued: a refused request touches nothing.

use std::sync::Arc;

use strongbox_catalog::{Backup, BackupStatus, Deployment, Job, NewRecord, RecoveryInto};
use strongbox_engines::pitr::{Goal, Lsn};
use strongbox_engines::{Engine, RecoveryTarget, sqlite_ship};
use time::OffsetDateTime;

use crate::dates::{api_date, api_date_of, parse_rfc3339};
use crate::job::{JobSpec, Origin, RecoveryAsked};
use crate::pitr::{PitrState, RecoveryPlan};
use crate::{Error, Result, Service};

/// What a recovery request names, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryRequest {
    /// The latest backup and, with archived WAL, complete recovery.
    Latest,
    Tag(String),
    /// A moment; on `timeline`'s history if named (a Strongbox extension),
    /// else the current one's.
    Time {
        at: OffsetDateTime,
        timeline: Option<u32>,
    },
    Scn {
        scn: Scn,
        timeline: Option<u32>,
    },
}

/// A recovery as a client asks for it.
#[derive(Clone, Debug)]
pub struct NewRecovery {
    /// The point to recover to.
    pub request: RecoveryRequest,
    /// The same in the client's words, for the history.
    pub asked: RecoveryAsked,
    /// The repository to read, if the client named one (`copies`).
    pub repository: Option<String>,
    /// Another place to recover into than the deployment's own.
    pub into: Option<RecoveryInto>,
}

/// An `scn`: a position in a deployment's log, in its engine's form — a
/// PostgreSQL LSN (`0/3000060`, or decimal), or a position in a shipped
/// SQLite log (`GENERATION:N`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scn {
    Lsn(Lsn),
    Shipped(sqlite_ship::Position),
}

impl std::str::FromStr for Scn {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.contains(':') {
            s.parse().map(Scn::Shipped)
        } else {
            s.parse().map(Scn::Lsn)
        }
    }
}

impl std::fmt::Display for Scn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scn::Lsn(l) => l.fmt(f),
            Scn::Shipped(p) => p.fmt(f),
        }
    }
}

/// A backup's own recovery: its consistency point (for PostgreSQL, the
/// position the worker checks replay stopped at).
pub(crate) fn backup_plan(b: &Backup, why: &str) -> RecoveryPlan {
    RecoveryPlan {
        target: RecoveryTarget::Backup {
            position: b.position.as_ref().and_then(|p| p.wal()).cloned(),
        },
        description: format!("restore backup {}{why}", b.db_tag),
    }
}

pub(crate) fn completed_at(b: &Backup) -> Option<OffsetDateTime> {
    parse_rfc3339(b.completed_at.as_deref()?)
}

fn point_in_time_engines() -> String {
    strongbox_engines::engines_that(|c| c.point_in_time).join(", ")
}

/// How one deployment's recovery requests are planned: which backup to
/// restore and what to replay, or why not (a refusal that says what to ask
/// for instead). One planner per kind of log an engine keeps
/// (`Service::planner` picks it by the engine's capabilities): a new kind
/// of log is a new planner, not a new path through the core.
#[async_trait::async_trait]
pub(crate) trait Planner: Send + Sync {
    /// Used once: a planner holds what it read to plan this request.
    async fn plan(
        self: Box<Self>,
        request: &RecoveryRequest,
        d: &Deployment,
        usable: &[Backup],
    ) -> Result<(Backup, RecoveryPlan)>;
}

/// Backups only: `latest` is the latest backup, a tag that backup, a
/// timestamp a backup's completion second.
struct Backups;

#[async_trait::async_trait]
impl Planner for Backups {
    async fn plan(
        self: Box<Self>,
        request: &RecoveryRequest,
        d: &Deployment,
        usable: &[Backup],
    ) -> Result<(Backup, RecoveryPlan)> {
        choose(request, d, usable, None).await
    }
}

/// A WAL archive (PostgreSQL): complete recovery, any moment or position of
/// the current history (or a named timeline's), as its state allows.
struct WalArchive(PitrState);

#[async_trait::async_trait]
impl Planner for WalArchive {
    async fn plan(
        self: Box<Self>,
        request: &RecoveryRequest,
        d: &Deployment,
        usable: &[Backup],
    ) -> Result<(Backup, RecoveryPlan)> {
        choose(request, d, usable, Some(self.0)).await
    }
}

/// A shipped log (SQLite with continuous archiving): `latest`, moments and
/// `GENERATION:N` within its generations; tags and a backup's own second
/// as for backups.
struct ShippedLog<'a>(&'a Service);

#[async_trait::async_trait]
impl Planner for ShippedLog<'_> {
    async fn plan(
        self: Box<Self>,
        request: &RecoveryRequest,
        d: &Deployment,
        usable: &[Backup],
    ) -> Result<(Backup, RecoveryPlan)> {
        match self.0.choose_shipped(request, d, usable).await? {
            Some(chosen) => Ok(chosen),
            None => choose(request, d, usable, None).await,
        }
    }
}

/// The backup and plan for `request`. `pitr` is set for deployments that
/// recover to points in time.
async fn choose(
    request: &RecoveryRequest,
    d: &Deployment,
    usable: &[Backup],
    pitr: Option<PitrState>,
) -> Result<(Backup, RecoveryPlan)> {
    let service = d.name.as_str();
    let point_in_time_only = |what: &str| {
        Error::Invalid(format!(
            "{what} is point-in-time recovery: it replays archived WAL, which only {} deployments with WAL \
             archiving do; {service} is a {} deployment: recover with latest, a tag, or a backup's completion \
             timestamp",
            point_in_time_engines(),
            d.engine
        ))
    };
    let none_yet = || {
        Error::Invalid(format!(
            "{service} has no completed backup to recover from; start one with POST …/{service}/backups"
        ))
    };
    let (at, timeline) = match request {
        RecoveryRequest::Latest => {
            let last = usable.last().ok_or_else(none_yet)?;
            let why = match pitr {
                Some(p) => match p.plan(Goal::Latest, None).await? {
                    Ok(chosen) => return Ok(chosen),
                    Err(u) => format!(" (no complete recovery: {})", u.why),
                },
                None => String::new(),
            };
            return Ok((last.clone(), backup_plan(last, &why)));
        }
        RecoveryRequest::Tag(tag) => {
            let b = usable.iter().find(|b| &b.db_tag == tag).ok_or_else(|| {
                Error::NotFound(format!(
                    "{service} has no completed backup with dbTag {tag:?} that is still in the repository; GET \
                     …/{service}/backups lists them"
                ))
            })?;
            return Ok((b.clone(), backup_plan(b, "")));
        }
        RecoveryRequest::Scn {
            scn: Scn::Shipped(p), ..
        } => {
            return Err(Error::Invalid(format!(
                "scn {p} is a position in a shipped SQLite log, and {service} does not ship one: turn on \
                 continuousArchiving in its backup configuration, or recover with latest, a tag or a timestamp"
            )));
        }
        RecoveryRequest::Scn {
            scn: Scn::Lsn(lsn),
            timeline,
        } => {
            let Some(pitr) = pitr else {
                return Err(point_in_time_only("recovery to an scn"));
            };
            return pitr
                .plan(Goal::Lsn(*lsn), *timeline)
                .await?
                .map_err(|u| crate::pitr::unreachable(&format!("scn {lsn}"), service, &u));
        }
        RecoveryRequest::Time { at, timeline } => (*at, *timeline),
    };
    if timeline.is_some() && pitr.is_none() {
        return Err(point_in_time_only("recovery on a named timeline"));
    }
    let shown = api_date(at);
    let shown = shown.trim_end_matches(" UTC");
    if at > OffsetDateTime::now_utc() {
        return Err(Error::Invalid(format!("timestamp {shown} is in the future")));
    }
    // The latest backup completed by then, and whether it completed in that very second.
    let second = |b: &Backup| completed_at(b).map(|t| t.unix_timestamp());
    let before = usable
        .iter()
        .rev()
        .find(|b| second(b).is_some_and(|s| s <= at.unix_timestamp()));
    let exact_backup = before.filter(|b| second(b) == Some(at.unix_timestamp()) && timeline.is_none());
    if let Some(pitr) = pitr {
        // Without archived WAL, a backup's own completion time still names
        // that backup; with it, a moment is a moment.
        let archiving = pitr.archives_wal();
        match pitr.plan(Goal::Time(at), timeline).await? {
            Ok(chosen) => return Ok(chosen),
            Err(_) if exact_backup.is_some() && !archiving => {}
            Err(u) => return Err(crate::pitr::unreachable(&format!("timestamp {shown}"), service, &u)),
        }
    }
    let first = usable.first().ok_or_else(none_yet)?;
    let before = before.ok_or_else(|| {
        Error::Invalid(format!(
            "timestamp {shown} is before the first backup of {service}, which completed at {}",
            api_date_of(first.completed_at.as_deref().unwrap_or_default())
        ))
    })?;
    let Some(exact) = exact_backup else {
        return Err(Error::Invalid(format!(
            "timestamp {shown} falls between backups; recovering to a moment after a backup replays archived WAL, \
             which only {} deployments with WAL archiving do. The latest backup before it is {} (completed {}): \
             recover to it with {{\"tag\": \"{}\"}}",
            point_in_time_engines(),
            before.db_tag,
            api_date_of(before.completed_at.as_deref().unwrap_or_default()),
            before.db_tag
        )));
    };
    Ok((exact.clone(), backup_plan(exact, ", completed in that second")))
}

impl Service {
    /// Completed backups whose snapshots are still in the repository (a
    /// snapshot forgotten with `repo forget` can no longer be recovered
    /// from) or, by the catalog's records, in one of its copies, oldest
    /// first.
    pub async fn usable_backups(&self, domain: &str, deployment: &str) -> Result<Vec<Backup>> {
        self.backups_held(domain, deployment, false).await
    }

    /// `usable_backups`, with what the copies hold listed rather than taken
    /// from the catalog's records (a snapshot forgotten in a copy with the
    /// repository CLI): what a recovery may choose from. Status pages do
    /// without, to spare a listing of every copy per request.
    pub(crate) async fn backups_held(&self, domain: &str, deployment: &str, list_copies: bool) -> Result<Vec<Backup>> {
        let backups = self.catalog.backups(domain, deployment).await?;
        let present: Option<std::collections::HashSet<String>> = match &self.wal {
            Some(w) => {
                // Known down (`health::probe`): not asked, so that the
                // answer comes at once, not after the store's retries (180 s
                // by default).
                let listed = match self.dependencies.failing_repository() {
                    Some(why) => Err(Error::unavailable(format!("the repository cannot be read now: {why}"))),
                    None => w
                        .repo
                        .snapshot_ids()
                        .await
                        .map_err(|e| Error::repository("listing the repository's snapshots", e)),
                };
                let mut ids: std::collections::HashSet<String> = match listed {
                    Ok(ids) => ids.iter().map(|id| id.to_hex()).collect(),
                    // The primary's store is gone (a deleted bucket): its copies answer.
                    Err(e) if !self.copies.is_empty() => {
                        tracing::warn!("{e}; reading the copies");
                        Default::default()
                    }
                    Err(e) => return Err(e),
                };
                // A backup a copy holds can be recovered (from the copy) when
                // the primary lost it.
                if list_copies {
                    ids.extend(self.snapshots_in_copies().await);
                } else {
                    let copied = self.backup_copies(domain, deployment).await?;
                    ids.extend(
                        backups
                            .iter()
                            .filter(|b| copied.contains_key(&b.job_id))
                            .filter_map(|b| b.snapshot_id.clone()),
                    );
                }
                Some(ids)
            }
            None => None,
        };
        Ok(backups
            .into_iter()
            .filter(|b| b.status == BackupStatus::Completed)
            .filter(|b| match (&present, &b.snapshot_id) {
                (Some(ids), Some(id)) => ids.contains(id),
                (None, _) => true,
                (Some(_), None) => false,
            })
            .collect())
    }

    /// The planner for a deployment's recovery requests, chosen by what its
    /// engine can do: a shipped log (SQLite with continuous archiving), a
    /// WAL archive (PostgreSQL's), or backups only.
    pub(crate) async fn planner(
        &self,
        d: &Deployment,
        usable: &[Backup],
        request: &RecoveryRequest,
    ) -> Result<Box<dyn Planner + '_>> {
        let can = self.engine_of(d)?.capabilities();
        if self.ships(d) {
            return Ok(Box::new(ShippedLog(self)));
        }
        // A tag names a backup: no need to ask the database where it is.
        if can.point_in_time
            && !matches!(request, RecoveryRequest::Tag(_))
            && let Some(state) = self.pitr_state(d, usable, true).await?
        {
            return Ok(Box::new(WalArchive(state)));
        }
        Ok(Box::new(Backups))
    }

    /// The engine that recovers `d` into the place `into` names, if the
    /// request may: the engine recovers into other places, `into` names
    /// only settings it may, the server's configuration allows the place
    /// (as for a deployment's own), and the place is not the deployment's.
    /// Checked again as the job runs: the configuration may have changed.
    pub(crate) fn engine_into(&self, d: &Deployment, into: &RecoveryInto) -> Result<Arc<dyn Engine>> {
        let live = self.engine_of(d)?;
        let may = live.capabilities().recovers_into;
        if may.is_empty() {
            return Err(Error::Invalid(format!(
                "{} is a {} deployment, which recovers in place only: leave target out (recovery into another \
                 place: {} deployments)",
                d.name,
                d.engine,
                strongbox_engines::engines_that(|c| !c.recovers_into.is_empty()).join(", ")
            )));
        }
        let named: Vec<&str> = into.settings.keys().map(String::as_str).collect();
        if named.is_empty() || named.iter().any(|k| !may.contains(k)) {
            return Err(Error::Invalid(format!(
                "target names where to recover {} instead, by the settings {}: {{{}}} (got {{{}}})",
                d.name,
                may.join(", "),
                may.iter().map(|k| format!("\"{k}\": …")).collect::<Vec<_>>().join(", "),
                named.join(", ")
            )));
        }
        let made = strongbox_engines::engine_into(&d.engine, &d.connection, &into.settings);
        let engine = self.allowed(&d.domain, &d.engine, made).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("target: {m}")),
            other => other,
        })?;
        if let Some(place) = engine.place().filter(|p| Some(p) == live.place().as_ref()) {
            return Err(Error::Invalid(format!(
                "target {place} is {}'s own; leave target out to recover it in place",
                d.name
            )));
        }
        Ok(engine.into())
    }

    /// Plans a recovery and queues it.
    pub async fn start_recovery(
        &self,
        domain: &str,
        deployment: &str,
        new: NewRecovery,
        origin: &Origin,
    ) -> Result<Job> {
        let NewRecovery {
            request,
            asked,
            repository,
            into,
        } = new;
        let (request, repository) = (&request, repository.as_deref());
        if repository.is_some() {
            // Known, and it opens.
            self.readable_repositories(repository).await?;
        }
        let d = self.deployment(domain, deployment).await?;
        if let Some(into) = &into {
            let engine = self.engine_into(&d, into)?;
            // Only here, not as the job runs: a job taken over after a
            // crash finds its own first attempt's work there.
            if !into.replace {
                let there = tokio::task::spawn_blocking(move || engine.occupied())
                    .await
                    .map_err(Error::internal)?;
                if let Some(there) = there {
                    return Err(Error::Invalid(format!(
                        "target: {there}; send \"replace\": true to overwrite it, or name another place"
                    )));
                }
            }
        }
        let usable = self.backups_held(domain, deployment, true).await?;
        let planner = self.planner(&d, &usable, request).await?;
        let (backup, plan) = planner.plan(request, &d, &usable).await?;
        let spec = JobSpec::Recovery {
            from: backup.job_id,
            target: plan.target,
            description: plan.description,
            asked: Some(asked.clone()),
            repository: repository.map(str::to_string),
            into: into.clone(),
        };
        let from = repository.map(|r| format!(", read from {r}")).unwrap_or_default();
        let place = into
            .as_ref()
            .map(|i| format!(", into {}", serde_json::Value::Object(i.settings.clone())))
            .unwrap_or_default();
        let message = format!(
            "recovery from backup {} requested by {} (target {asked}{from}{place})",
            backup.db_tag, origin.user
        );
        // A recovery elsewhere is not one of the deployment's: its history
        // (and what `latest` means after it) stays as it was.
        let record = match into {
            Some(_) => NewRecord::None,
            None => NewRecord::Recovery {
                target: asked.clone(),
                backup_job_id: backup.job_id,
            },
        };
        self.create_job(domain, deployment, &spec, origin, |_| (record.clone(), message.clone()))
            .await
    }
}
