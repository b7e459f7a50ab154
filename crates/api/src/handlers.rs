//! Handlers for the DBCS endpoints (spec sections 1, 2, 5, 6, 7; recovery,
//! sections 3 and 4, is in `recovery`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use strongbox_catalog::{Backup, BackupStatus, Job, JobStatus, NewJob, Started};

use crate::auth::authorize;
use crate::pitr::{self, PitrState};
use crate::{ApiError, AppState, MAX_BODY, PREFIX};

type St = State<Arc<AppState>>;

/// `23-Jul-2016 23:04:54 UTC`, the API's date format, from RFC 3339.
pub(crate) fn api_date(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(rfc3339, &Rfc3339)
        .map(|t| {
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            format!(
                "{:02}-{}-{} {:02}:{:02}:{:02} UTC",
                t.day(),
                MONTHS[t.month() as usize - 1],
                t.year(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|_| rfc3339.to_string())
}

fn service_uri(state: &AppState, domain: &str, service: &str) -> String {
    format!("{}{PREFIX}/{domain}/{service}", state.public_url)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBackupBody {
    #[serde(rename = "keepForever", default)]
    keep_forever: bool,
}

/// The body checks every POST shares: JSON media type, size, a JSON object.
pub(crate) fn json_object(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {MAX_BODY} bytes"),
            )
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    })?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ctype.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json (got {:?})", ctype),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({})); // clients that send no body mean `{}`
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object, e.g. {}"));
    }
    Ok(v)
}

pub(crate) async fn known_deployment(
    state: &AppState,
    domain: &str,
    service: &str,
) -> Result<strongbox_catalog::Deployment, ApiError> {
    state
        .catalog
        .deployment(domain, service)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no database deployment {service} in identity domain {domain}")))
}

pub async fn start_backup(
    State(state): St,
    Path((domain, service)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state.auth, state.catalog.as_ref(), &headers, &domain).await?;
    let params = json_object(&headers, body)?;
    let parsed: StartBackupBody = serde_json::from_value(params.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid backup request: {e}; the only field is keepForever (boolean)"
        ))
    })?;
    known_deployment(&state, &domain, &service).await?;
    let job = new_job(&domain, &service, "backup", params, caller.user, &headers);
    let job = match state.catalog.start_backup(&job, parsed.keep_forever).await? {
        Started::Created(j) | Started::Existing(j) => j,
        Started::Busy(running) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "a {} of {service} is already in progress (job {}); retry when it has finished",
                    running.operation, running.id
                ),
            ));
        }
    };
    accepted(&state, &domain, &service, "backup", job.id)
}

/// A job as a request asks for it; an `Idempotency-Key` header names it so
/// that a retried request returns the same job.
pub(crate) fn new_job(
    domain: &str,
    service: &str,
    operation: &str,
    params: Value,
    created_by: String,
    headers: &HeaderMap,
) -> NewJob {
    NewJob {
        domain: domain.into(),
        deployment: service.into(),
        operation: operation.into(),
        params,
        created_by,
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    }
}

/// 202 with an empty body and the headers the seed shows.
pub(crate) fn accepted(
    state: &AppState,
    domain: &str,
    service: &str,
    request: &str,
    job: i64,
) -> Result<Response, ApiError> {
    state.queued.notify_waiters();
    let location = format!("{}{PREFIX}/{domain}/status/{request}/job/{job}", state.public_url);
    let mut resp = StatusCode::ACCEPTED.into_response();
    let h = resp.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).map_err(ApiError::internal);
    h.insert(header::LOCATION, value(location)?);
    h.insert("service-uri", value(service_uri(state, domain, service))?);
    h.insert(header::RETRY_AFTER, value(state.retry_after.to_string())?);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(resp)
}

fn backup_item(b: &Backup) -> Value {
    let mut item = json!({
        "dbTag": b.db_tag,
        "status": b.status.as_str(),
        "backupStartDate": api_date(&b.started_at),
        "keepForever": b.keep_forever,
        "jobId": b.job_id,
    });
    if b.status == BackupStatus::Completed
        && let Some(done) = &b.completed_at
    {
        item["backupCompleteDate"] = json!(api_date(done));
        item["backupCompletedDate"] = json!(api_date(done));
        item["logicalBytes"] = json!(b.logical_bytes);
        item["storedBytes"] = json!(b.stored_bytes);
    }
    // A Strongbox addition: where a base backup's replay ends (its
    // consistency point), for point-in-time recovery.
    if let Some(p) = b
        .position
        .clone()
        .and_then(|p| serde_json::from_value::<strongbox_engines::pitr::BasePosition>(p).ok())
    {
        item["scn"] = json!(p.stop_lsn.to_string());
        item["timeline"] = json!(p.timeline);
    }
    item
}

pub async fn list_backups(
    State(state): St,
    Path((domain, service)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state.auth, state.catalog.as_ref(), &headers, &domain).await?;
    known_deployment(&state, &domain, &service).await?;
    let backups = state.catalog.backups(&domain, &service).await?;
    // Upstream lists completed backups, the one in progress, and only the
    // most recent failure.
    let last_failed = backups
        .iter()
        .filter(|b| b.status == BackupStatus::Failed)
        .map(|b| b.job_id)
        .max();
    let list: Vec<Value> = backups
        .iter()
        .rev()
        .filter(|b| b.status != BackupStatus::Failed || Some(b.job_id) == last_failed)
        .map(backup_item)
        .collect();
    Ok(Json(json!({ "backupList": list })).into_response())
}

fn wire_status(j: &Job) -> &'static str {
    match j.status {
        JobStatus::Queued | JobStatus::Running => "In Progress",
        JobStatus::Succeeded => "Succeeded",
        JobStatus::Failed => "Failed",
    }
}

/// Finished jobs never change again (in any replica), so clients polling a
/// `Location` after the job ended are answered from memory. Each catalog
/// read costs two thread hand-offs (sqlx runs SQLite on its own threads),
/// which profiling showed to dominate a status request.
#[derive(Default)]
pub struct FinishedJobs(std::sync::Mutex<std::collections::HashMap<(String, i64), Arc<Job>>>);

const FINISHED_CACHE_MAX: usize = 10_000;

async fn job_by_id(state: &AppState, domain: &str, id: i64) -> Result<Option<Arc<Job>>, ApiError> {
    let key = (domain.to_string(), id);
    if let Some(j) = state.finished.0.lock().expect("job cache").get(&key) {
        return Ok(Some(j.clone()));
    }
    let Some(j) = state.catalog.job(domain, id).await? else {
        return Ok(None);
    };
    let j = Arc::new(j);
    if matches!(j.status, JobStatus::Succeeded | JobStatus::Failed) {
        let mut cache = state.finished.0.lock().expect("job cache");
        if cache.len() >= FINISHED_CACHE_MAX {
            cache.clear(); // crude, bounded; refilled from the catalog on demand
        }
        cache.insert(key, j.clone());
    }
    Ok(Some(j))
}

async fn find_job(state: &AppState, domain: &str, request: &str, id: &str) -> Result<Arc<Job>, ApiError> {
    let missing = || ApiError::not_found(format!("no {request} job {id} in identity domain {domain}"));
    let id: i64 = id.parse().map_err(|_| missing())?;
    match job_by_id(state, domain, id).await? {
        Some(j) if j.operation == request => Ok(j),
        _ => Err(missing()),
    }
}

pub async fn job_status(
    State(state): St,
    Path((domain, request, job)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state.auth, state.catalog.as_ref(), &headers, &domain).await?;
    let j = find_job(&state, &domain, &request, &job).await?;
    let percent = j
        .bytes_total
        .filter(|&t| t > 0)
        .map(|t| (j.bytes_done as f64 * 100.0 / t as f64).min(100.0));
    let message = j.message.clone().unwrap_or_else(|| match j.status {
        JobStatus::Queued => "waiting for a worker".into(),
        _ => format!("{} in progress", j.operation),
    });
    Ok(Json(json!({
        "job_id": j.id,
        "job_operation": j.operation,
        "job_status": wire_status(&j),
        "job_start_date": j.started_at.as_deref().unwrap_or(&j.created_at),
        "creation_time": j.created_at,
        "last_modified_time": j.updated_at,
        "created_by": j.created_by,
        "identity_domain": j.domain,
        "description": format!("{} of database deployment {}", j.operation, j.deployment),
        "job_request_parameters": j.params,
        "message": message,
        "service-uri": service_uri(&state, &domain, &j.deployment),
        "progress": { "bytes_done": j.bytes_done, "bytes_total": j.bytes_total, "percent": percent },
    }))
    .into_response())
}

pub async fn activity_log(
    State(state): St,
    Path((domain, job)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state.auth, state.catalog.as_ref(), &headers, &domain).await?;
    let missing = || ApiError::not_found(format!("no job {job} in identity domain {domain}"));
    let id: i64 = job.parse().map_err(|_| missing())?;
    let j = job_by_id(&state, &domain, id).await?.ok_or_else(missing)?;
    let messages: Vec<Value> = state
        .catalog
        .job_messages(j.id)
        .await?
        .into_iter()
        .map(|m| json!({"activityDate": m.at, "message": m.message}))
        .collect();
    let status = match j.status {
        JobStatus::Queued => "NEW",
        JobStatus::Running => "RUNNING",
        JobStatus::Succeeded => "SUCCEED",
        JobStatus::Failed => "FAILED",
    };
    Ok(Json(json!({
        "activityLogId": j.id,
        "serviceName": j.deployment,
        "serviceType": "dbaas",
        "identityDomain": j.domain,
        "jobId": j.id,
        "startDate": j.started_at.as_deref().unwrap_or(&j.created_at),
        "endDate": j.finished_at,
        "status": status,
        "operationType": j.operation.to_uppercase(),
        "summaryMessage": j.operation.to_uppercase(),
        "authDomain": j.domain,
        "authUser": j.created_by,
        "initiatedBy": "USER",
        "messages": messages,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    engine: String,
    connection: Value,
}

/// Registers (or re-registers) an existing database as a deployment. The
/// connection settings may hold secrets: they are stored, never returned.
pub async fn register_deployment(
    State(state): St,
    Path((domain, service)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(&state.auth, state.catalog.as_ref(), &headers, &domain).await?;
    let reg: Registration = serde_json::from_value(json_object(&headers, body)?).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid registration: {e}; send {{\"engine\": \"sqlite\", \"connection\": {{\"path\": ...}}}}"
        ))
    })?;
    let valid_name = !service.is_empty()
        && service.len() <= 64
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        return Err(ApiError::bad_request(
            "a deployment name is 1 to 64 letters, digits, '-' or '_'",
        ));
    }
    strongbox_engines::engine_for(&reg.engine, &reg.connection).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let d = state
        .catalog
        .put_deployment(&strongbox_catalog::NewDeployment {
            domain,
            name: service,
            engine: reg.engine,
            connection: reg.connection,
        })
        .await?;
    Ok((StatusCode::OK, Json(instance_json(&state, &d))).into_response())
}

fn instance_json(state: &AppState, d: &strongbox_catalog::Deployment) -> Value {
    json!({
        "service_name": d.name,
        "service_uri": service_uri(state, &d.domain, &d.name),
        "status": "Running",
        "creation_time": d.created_at,
        "identity_domain": d.domain,
        "backup_destination": "OSS",
        "engine": d.engine,
    })
}

pub async fn instances(State(state): St, Path(domain): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state.auth, state.catalog.as_ref(), &headers, &domain).await?;
    let services: Vec<Value> = state
        .catalog
        .deployments(&domain)
        .await?
        .iter()
        .map(|d| instance_json(&state, d))
        .collect();
    Ok(Json(json!({
        "service_type": "dbaas",
        "implementation_version": "1.0",
        "services": services,
        "uri": format!("{}{PREFIX}/{domain}", state.public_url),
    }))
    .into_response())
}

pub async fn instance(
    State(state): St,
    Path((domain, service)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state.auth, state.catalog.as_ref(), &headers, &domain).await?;
    let d = known_deployment(&state, &domain, &service).await?;
    let mut body = instance_json(&state, &d);
    let usable = crate::recovery::usable_backups(&state, &domain, &service).await?;
    let recoveries = state.catalog.recoveries(&domain, &service).await?;
    if let (Some(archives), Some(history)) = (
        state.wal.as_deref(),
        PitrState::of(state.wal.as_ref(), &d, &usable, &recoveries, true).await?,
    ) {
        // A Strongbox addition: how to archive, and what the archive reaches
        // on the current timeline's history (up to now while the server answers).
        body["pointInTimeRecovery"] = json!({
            "archiveCommand": archives.archive_command(&domain, &service),
            "restoreCommand": archives.restore_command(&domain, &service),
            "currentTimeline": history.current(),
            "serverAnswers": history.live.is_some(),
            "recoverableRange": pitr::range_json(&history.ranges(), history.current()),
        });
    }
    Ok(Json(body).into_response())
}
