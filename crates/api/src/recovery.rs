//! Recovery endpoints (spec sections 3 and 4): start a recovery from the
//! latest backup, a backup's `dbTag`, a backup's completion time, or (for
//! deployments whose WAL is archived) any moment or `scn` the archive
//! reaches; and the history of recoveries. Every check runs before the job is queued:
//! a refused request touches nothing.

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
use strongbox_engines::pitr::{Lsn, PointTarget};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::authorize;
use crate::handlers::{accepted, api_date, json_object, known_deployment, new_job};
use crate::pitr::{self, History};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryBody {
    latest: Option<Value>,
    tag: Option<String>,
    timestamp: Option<String>,
    scn: Option<Value>,
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

/// Picks the backup the request names; `Ok((backup, target as recorded))`.
/// With `history` (a deployment whose WAL is archived), a `timestamp` or
/// `scn` is a point in time, replayed from the latest base backup before it.
fn choose(
    body: &RecoveryBody,
    d: &Deployment,
    backups: &[Backup],
    history: Option<&History>,
) -> Result<(Backup, Value), ApiError> {
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
    let completed: Vec<&Backup> = backups.iter().filter(|b| b.status == BackupStatus::Completed).collect();
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
        let b = completed.last().ok_or_else(none_yet)?;
        return Ok(((*b).clone(), json!({"latest": true})));
    }
    if let Some(tag) = &body.tag {
        let b = completed.iter().find(|b| &b.db_tag == tag).ok_or_else(|| {
            ApiError::not_found(format!(
                "{service} has no completed backup with dbTag {tag:?}; GET …/{service}/backups lists them"
            ))
        })?;
        return Ok(((*b).clone(), json!({"dbTag": tag})));
    }
    if let Some(scn) = &body.scn {
        let lsn = parse_scn(scn)?;
        let Some(history) = history else {
            return Err(ApiError::bad_request(format!(
                "recovery to an scn is point-in-time recovery: it replays archived WAL, which only {} deployments \
                 with WAL archiving do; {service} is a {} deployment: recover with latest, a tag, or a backup's \
                 completion timestamp",
                pitr::ENGINE,
                d.engine
            )));
        };
        let b = history
            .choose(PointTarget::Lsn(lsn))
            .map_err(|u| pitr::unreachable(&format!("scn {scn}"), service, &u))?;
        return Ok((b.clone(), json!({"scn": scn, pitr::TARGET_LSN: lsn.to_string()})));
    }
    let raw = body.timestamp.as_deref().unwrap_or_default();
    let at = parse_timestamp(raw)?;
    if at > OffsetDateTime::now_utc() {
        return Err(ApiError::bad_request(format!("timestamp {raw} is in the future")));
    }
    // The latest backup completed by then, and whether it completed in that very second.
    let second = |b: &Backup| completed_at(b).map(|t| t.unix_timestamp());
    let before = completed
        .iter()
        .rev()
        .find(|b| second(b).is_some_and(|s| s <= at.unix_timestamp()));
    let exact_backup = before.is_some_and(|b| second(b) == Some(at.unix_timestamp()));
    if let Some(history) = history {
        match history.choose(PointTarget::Time(at)) {
            Ok(b) => {
                // As recovery_target_time takes it (no `T`, no `Z`).
                let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]+00");
                let time = at.format(&format).unwrap_or_default();
                return Ok((b.clone(), json!({"timestamp": raw, pitr::TARGET_TIME: time})));
            }
            // A backup's own completion time still names that backup.
            Err(_) if exact_backup => {}
            Err(u) => return Err(pitr::unreachable(&format!("timestamp {raw}"), service, &u)),
        }
    }
    let first = completed.first().ok_or_else(none_yet)?;
    let before = before.ok_or_else(|| {
        ApiError::bad_request(format!(
            "timestamp {raw} is before the first backup of {service}, which completed at {}",
            api_date(first.completed_at.as_deref().unwrap_or_default())
        ))
    })?;
    if !exact_backup {
        return Err(ApiError::bad_request(format!(
            "timestamp {raw} falls between backups; recovering to a moment after a backup replays archived WAL, \
             which only {} deployments with WAL archiving do. The latest backup before it is {} (completed {}): \
             recover to it with {{\"tag\": \"{}\"}}",
            pitr::ENGINE,
            before.db_tag,
            api_date(before.completed_at.as_deref().unwrap_or_default()),
            before.db_tag
        )));
    }
    Ok(((*before).clone(), json!({"timestamp": raw})))
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
             {{\"timestamp\": \"dd-MMM-yyyy HH:mm:ss\"}}, {{\"scn\": \"0/3000060\"}}"
        ))
    })?;
    let deployment = known_deployment(&state, &domain, &service).await?;
    let backups = state.catalog.backups(&domain, &service).await?;
    let history = match (&parsed.timestamp, &parsed.scn) {
        (None, None) => None,
        _ => History::of(state.wal.as_deref(), &deployment, &backups).await?,
    };
    let (backup, target) = choose(&parsed, &deployment, &backups, history.as_ref())?;
    let job = new_job(&domain, &service, "recovery", params, caller.user, &headers);
    match state.catalog.start_recovery(&job, &target, backup.job_id).await? {
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
            item
        })
        .collect();
    Ok(Json(json!({ "recoveryList": list })).into_response())
}
