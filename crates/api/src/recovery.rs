//! Recovery endpoints (spec sections 3 and 4): start a recovery from the
//! latest backup, a backup's `dbTag`, a backup's completion time, or (for
//! deployments whose WAL is archived) complete recovery (`latest`) and any
//! moment or `scn` of the current history the archive reaches; and the
//! history of recoveries. Every check runs before the job is queued: a
//! refused request touches nothing.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use strongbox_catalog::{Backup, BackupStatus, Deployment, Started};
use strongbox_engines::RecoveryTarget;
use strongbox_engines::pitr::{Goal, Lsn, Reached};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::authorize;
use crate::handlers::{accepted, api_date, json_object, known_deployment, new_job};
use crate::pitr::{PitrState, RecoveryPlan};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryBody {
    latest: Option<Value>,
    tag: Option<String>,
    timestamp: Option<String>,
    scn: Option<Value>,
    /// A Strongbox addition: the timeline whose history a `timestamp` or
    /// `scn` belongs to, when not the current one's.
    timeline: Option<Value>,
    #[serde(rename = "keepForever", default)]
    #[allow(dead_code)] // accepted as the API documents it; recoveries keep nothing
    keep_forever: bool,
}

/// `dd-MMM-yyyy HH:mm:ss`, UTC; the ` UTC` suffix the backup list prints
/// is accepted too, so a date can be copied from there.
fn parse_timestamp(s: &str) -> Result<OffsetDateTime, ApiError> {
    let format = time::macros::format_description!("[day]-[month repr:short]-[year] [hour]:[minute]:[second]");
    let trimmed = s.trim().trim_end_matches(" UTC");
    time::PrimitiveDateTime::parse(trimmed, &format)
        .map(|t| t.assume_utc())
        .map_err(|e| {
            ApiError::bad_request(format!(
                "timestamp {s:?} is not in the format dd-MMM-yyyy HH:mm:ss (UTC), e.g. 23-Jul-2016 23:04:54 ({e})"
            ))
        })
}

fn completed_at(b: &Backup) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(b.completed_at.as_deref()?, &Rfc3339).ok()
}

/// An `scn`: a PostgreSQL LSN (`0/3000060`), or the same as a decimal
/// number, in a JSON string or number.
fn parse_scn(scn: &Value) -> Result<Lsn, ApiError> {
    let text = match scn {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        other => other.to_string(),
    };
    text.parse().map_err(ApiError::bad_request)
}

fn parse_timeline(t: &Value) -> Result<u32, ApiError> {
    let n = match t {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::bad_request(format!("timeline must be a positive whole number, e.g. 2 (got {t})")))
}

/// A backup's own recovery: its consistency point (for PostgreSQL, the
/// position the worker checks replay stopped at).
fn backup_plan(b: &Backup, why: &str) -> RecoveryPlan {
    RecoveryPlan {
        target: RecoveryTarget::Backup {
            position: b.position.clone().and_then(|p| serde_json::from_value(p).ok()),
        },
        description: format!("restore backup {}{why}", b.db_tag),
    }
}

/// What the request asks for: the backup to start from, the plan, and the
/// target as recorded for the history. `pitr` is set for deployments that
/// recover to points in time.
async fn choose(
    body: &RecoveryBody,
    d: &Deployment,
    usable: &[Backup],
    pitr: Option<PitrState>,
) -> Result<(Backup, RecoveryPlan, Value), ApiError> {
    let service = d.name.as_str();
    let named: Vec<&str> = [
        ("latest", body.latest.is_some()),
        ("tag", body.tag.is_some()),
        ("timestamp", body.timestamp.is_some()),
        ("scn", body.scn.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if named.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "name exactly one recovery target: latest, tag, timestamp or scn (the request named {})",
            if named.is_empty() {
                "none".to_string()
            } else {
                named.join(" and ")
            }
        )));
    }
    let timeline = body.timeline.as_ref().map(parse_timeline).transpose()?;
    if timeline.is_some() && body.timestamp.is_none() && body.scn.is_none() {
        return Err(ApiError::bad_request(
            "timeline goes with a timestamp or an scn: it names the history they belong to",
        ));
    }
    let point_in_time_only = |what: &str| {
        ApiError::bad_request(format!(
            "{what} is point-in-time recovery: it replays archived WAL, which only {POINT_IN_TIME} deployments with \
             WAL archiving do; {service} is a {} deployment: recover with latest, a tag, or a backup's completion \
             timestamp",
            d.engine
        ))
    };
    if timeline.is_some() && pitr.is_none() {
        return Err(point_in_time_only("recovery on a named timeline"));
    }
    let none_yet = || {
        ApiError::bad_request(format!(
            "{service} has no completed backup to recover from; start one with POST …/{service}/backups"
        ))
    };
    if let Some(latest) = &body.latest {
        let yes = matches!(latest, Value::Bool(true))
            || matches!(latest, Value::String(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("yes"));
        if !yes {
            return Err(ApiError::bad_request(format!(
                "latest must be true, \"true\" or \"yes\" (got {latest})"
            )));
        }
        let recorded = json!({"latest": true});
        let last = usable.last().ok_or_else(none_yet)?;
        let why = match pitr {
            Some(p) => match p.plan(Goal::Latest, None).await? {
                Ok((b, plan)) => return Ok((b, plan, recorded)),
                Err(u) => format!(" (no complete recovery: {})", u.why),
            },
            None => String::new(),
        };
        return Ok((last.clone(), backup_plan(last, &why), recorded));
    }
    if let Some(tag) = &body.tag {
        let b = usable.iter().find(|b| &b.db_tag == tag).ok_or_else(|| {
            ApiError::not_found(format!(
                "{service} has no completed backup with dbTag {tag:?} that is still in the repository; GET \
                 …/{service}/backups lists them"
            ))
        })?;
        return Ok((b.clone(), backup_plan(b, ""), json!({"dbTag": tag})));
    }
    let mut recorded = json!({});
    if let Some(t) = timeline {
        recorded["timeline"] = json!(t);
    }
    if let Some(scn) = &body.scn {
        let lsn = parse_scn(scn)?;
        let Some(pitr) = pitr else {
            return Err(point_in_time_only("recovery to an scn"));
        };
        recorded["scn"] = scn.clone();
        let (b, plan) = pitr
            .plan(Goal::Lsn(lsn), timeline)
            .await?
            .map_err(|u| crate::pitr::unreachable(&format!("scn {scn}"), service, &u))?;
        return Ok((b, plan, recorded));
    }
    let raw = body.timestamp.as_deref().unwrap_or_default();
    let at = parse_timestamp(raw)?;
    if at > OffsetDateTime::now_utc() {
        return Err(ApiError::bad_request(format!("timestamp {raw} is in the future")));
    }
    recorded["timestamp"] = json!(raw);
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
            Ok((b, plan)) => return Ok((b, plan, recorded)),
            Err(_) if exact_backup.is_some() && !archiving => {}
            Err(u) => return Err(crate::pitr::unreachable(&format!("timestamp {raw}"), service, &u)),
        }
    }
    let first = usable.first().ok_or_else(none_yet)?;
    let before = before.ok_or_else(|| {
        ApiError::bad_request(format!(
            "timestamp {raw} is before the first backup of {service}, which completed at {}",
            api_date(first.completed_at.as_deref().unwrap_or_default())
        ))
    })?;
    let Some(exact) = exact_backup else {
        return Err(ApiError::bad_request(format!(
            "timestamp {raw} falls between backups; recovering to a moment after a backup replays archived WAL, \
             which only {POINT_IN_TIME} deployments with WAL archiving do. The latest backup before it is {} \
             (completed {}): recover to it with {{\"tag\": \"{}\"}}",
            before.db_tag,
            api_date(before.completed_at.as_deref().unwrap_or_default()),
            before.db_tag
        )));
    };
    Ok((
        exact.clone(),
        backup_plan(exact, ", completed in that second"),
        recorded,
    ))
}

/// The engine that recovers to points in time, as messages name it.
const POINT_IN_TIME: &str = "postgresql";

/// Completed backups whose snapshots are still in the repository (a
/// snapshot forgotten with `repo forget` can no longer be recovered from),
/// oldest first.
pub(crate) async fn usable_backups(state: &AppState, domain: &str, service: &str) -> Result<Vec<Backup>, ApiError> {
    let backups = state.catalog.backups(domain, service).await?;
    let present: Option<std::collections::HashSet<String>> = match &state.wal {
        Some(w) => Some(
            w.repo
                .snapshot_ids()
                .await
                .map_err(|e| ApiError::internal(format!("listing the repository's snapshots: {e}")))?
                .iter()
                .map(|id| id.to_hex())
                .collect(),
        ),
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

pub async fn start_recovery(
    State(state): State<Arc<AppState>>,
    Path((domain, service)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state.auth, state.catalog.as_ref(), &headers, &domain).await?;
    let params = json_object(&headers, body)?;
    let parsed: RecoveryBody = serde_json::from_value(params.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid recovery request: {e}; send one of {{\"latest\": true}}, {{\"tag\": \"TAG…\"}}, \
             {{\"timestamp\": \"dd-MMM-yyyy HH:mm:ss\"}}, {{\"scn\": \"0/3000060\"}} (a timestamp or scn may add \
             \"timeline\": N)"
        ))
    })?;
    let deployment = known_deployment(&state, &domain, &service).await?;
    let usable = usable_backups(&state, &domain, &service).await?;
    let recoveries = state.catalog.recoveries(&domain, &service).await?;
    let pitr = match parsed.tag {
        Some(_) => None,
        None => PitrState::of(state.wal.as_ref(), &deployment, &usable, &recoveries, true).await?,
    };
    let (backup, plan, target) = choose(&parsed, &deployment, &usable, pitr).await?;
    let plan = serde_json::to_value(&plan).map_err(ApiError::internal)?;
    let job = new_job(&domain, &service, "recovery", params, caller.user, &headers);
    match state
        .catalog
        .start_recovery(&job, &target, backup.job_id, &plan)
        .await?
    {
        Started::Created(j) | Started::Existing(j) => accepted(&state, &domain, &service, "recovery", j.id),
        Started::Busy(running) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "a {} of {service} is already in progress (job {}); a recovery waits until it has finished",
                running.operation, running.id
            ),
        )),
    }
}

pub async fn history(
    State(state): State<Arc<AppState>>,
    Path((domain, service)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state.auth, state.catalog.as_ref(), &headers, &domain).await?;
    known_deployment(&state, &domain, &service).await?;
    let backups = state.catalog.backups(&domain, &service).await?;
    let list: Vec<Value> = state
        .catalog
        .recoveries(&domain, &service)
        .await?
        .iter()
        .rev()
        .map(|r| {
            let mut item = json!({
                "recoveryStartDate": api_date(&r.started_at),
                "status": r.status.as_str(),
                "jobId": r.job_id,
                "fromBackup": backups.iter().find(|b| b.job_id == r.backup_job_id).map(|b| b.db_tag.clone()),
            });
            if r.status == BackupStatus::Completed
                && let Some(done) = &r.completed_at
            {
                item["recoveryCompleteDate"] = json!(api_date(done));
            }
            if let Some(target) = r.target.as_object() {
                for (k, v) in target {
                    item[k] = v.clone();
                }
            }
            // A Strongbox addition: where replay stopped, and the timeline begun there.
            if let Some(reached) = r
                .reached
                .clone()
                .and_then(|v| serde_json::from_value::<Reached>(v).ok())
            {
                let mut point = json!({
                    "scn": reached.lsn.to_string(),
                    "fromTimeline": reached.from_timeline,
                    "timeline": reached.timeline,
                });
                if let Some(c) = reached.last_commit {
                    point["lastCommit"] = json!(api_date(&c.format(&Rfc3339).unwrap_or_default()));
                }
                item["reached"] = point;
            }
            item
        })
        .collect();
    Ok(Json(json!({ "recoveryList": list })).into_response())
}
