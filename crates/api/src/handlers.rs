//! Handlers for the DBCS endpoints (spec sections 1, 2, 5, 6, 7; recovery,
//! sections 3 and 4, is in `recovery`): parse the request, ask the core,
//! answer with a typed body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};
use strongbox_catalog::{Backup, BackupStatus, Deployment, Job, JobStatus};
use strongbox_core::dates::api_date_of;
use strongbox_core::job::{Origin, Trigger};
use strongbox_engines::pitr::Reach;

use crate::Caller;
use crate::{ApiError, AppState, MAX_BODY, PREFIX, wire};

type St = State<Arc<AppState>>;

fn service_uri(state: &AppState, domain: &str, service: &str) -> String {
    format!("{}{PREFIX}/{domain}/{service}", state.public_url)
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

/// Who asks; an `Idempotency-Key` header names the job so that a retried
/// request returns the same one.
pub(crate) fn origin(caller: &Caller, headers: &HeaderMap) -> Origin {
    Origin {
        user: caller.user.clone(),
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    }
}

/// Start a backup: 202 with an empty body and the job's `Location`.
#[utoipa::path(
    post,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups",
    params(wire::ServicePath, wire::Tenant, wire::Idempotency),
    request_body = wire::StartBackup,
    responses(
        (status = 202, description = "accepted; `Location` is the job status URI, the body is empty",
         headers(("Location" = String), ("service-uri" = String), ("Retry-After" = String))),
        (status = 400, description = "body not a JSON object, unknown field, wrong type", body = wire::ErrorBody),
        (status = 404, description = "no such deployment", body = wire::ErrorBody),
        (status = 409, description = "a job of this deployment is already in progress", body = wire::ErrorBody),
        (status = 413, description = "body too large", body = wire::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = wire::ErrorBody),
    ),
)]
pub async fn start_backup(
    State(state): St,
    Path(wire::ServicePath {
        identity_domain_id: domain,
        service_id: service,
    }): Path<wire::ServicePath>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let parsed: wire::StartBackup = serde_json::from_value(json_object(&headers, body)?).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid backup request: {e}; the only field is keepForever (boolean)"
        ))
    })?;
    let origin = origin(&caller, &headers);
    let job = state
        .service
        .start_backup(&domain, &service, parsed.keep_forever, Trigger::User, &origin)
        .await?;
    accepted(&state, &domain, &service, &job)
}

/// 202 with an empty body and the headers the seed shows.
pub(crate) fn accepted(state: &AppState, domain: &str, service: &str, job: &Job) -> Result<Response, ApiError> {
    let location = format!(
        "{}{PREFIX}/{domain}/status/{}/job/{}",
        state.public_url, job.operation, job.id
    );
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

fn backup_item(b: &Backup) -> wire::BackupItem {
    let done = b
        .completed_at
        .as_deref()
        .filter(|_| b.status == BackupStatus::Completed);
    // A PostgreSQL base backup's consistency point and timeline; a SQLite
    // base backup sits at its generation's start.
    use strongbox_engines::Position;
    let (scn, timeline) = match &b.position {
        Some(Position::Wal(p)) => (Some(p.stop_lsn.to_string()), Some(p.timeline)),
        Some(Position::ShippedBase(p)) => (Some(p.at(0).to_string()), None),
        None => (None, None),
    };
    wire::BackupItem {
        db_tag: b.db_tag.clone(),
        status: b.status.as_str().into(),
        backup_start_date: api_date_of(&b.started_at),
        keep_forever: b.keep_forever,
        job_id: b.job_id,
        backup_complete_date: done.map(api_date_of),
        backup_completed_date: done.map(api_date_of),
        logical_bytes: done.and(b.logical_bytes),
        stored_bytes: done.and(b.stored_bytes),
        scn,
        timeline,
        expires_at: None,
        copies: Vec::new(),
        last_verified: b.verification.as_ref().map(|v| api_date_of(&v.at)),
        verify_status: b.verification.as_ref().map(|v| v.status().to_string()),
        verify_message: b.verification.as_ref().map(|v| v.message.clone()),
    }
}

/// Start a restore drill (Strongbox extension): the newest backup, one
/// older one at random and, with a log, a random moment after the newest,
/// each recovered into a scratch place beside the deployment's own,
/// checked, removed; the outcome lands on each backup (`lastVerified`,
/// `verifyStatus`, `verifyMessage`). 202 with the job's `Location`.
#[utoipa::path(
    post,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups/verify",
    params(wire::ServicePath, wire::Tenant, wire::Idempotency),
    responses(
        (status = 202, description = "accepted; `Location` is the job status URI, the body is empty",
         headers(("Location" = String), ("service-uri" = String), ("Retry-After" = String))),
        (status = 400, description = "no completed backup, or an engine that names no scratch place",
         body = wire::ErrorBody),
        (status = 404, description = "no such deployment", body = wire::ErrorBody),
        (status = 409, description = "a job of this deployment is already in progress", body = wire::ErrorBody),
    ),
)]
pub async fn start_drill(
    State(state): St,
    Path(wire::ServicePath {
        identity_domain_id: domain,
        service_id: service,
    }): Path<wire::ServicePath>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = state
        .service
        .start_drill(&domain, &service, &origin(&caller, &headers))
        .await?;
    accepted(&state, &domain, &service, &job)
}

/// View all backups: completed ones, the one in progress, the last failure; newest first.
#[utoipa::path(
    get,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups",
    params(wire::ServicePath, wire::Tenant),
    responses(
        (status = 200, description = "the backups", body = wire::BackupList),
        (status = 404, description = "no such deployment", body = wire::ErrorBody),
    ),
)]
pub async fn list_backups(
    State(state): St,
    Path(wire::ServicePath {
        identity_domain_id: domain,
        service_id: service,
    }): Path<wire::ServicePath>,
) -> Result<Json<wire::BackupList>, ApiError> {
    let backups = state.service.backup_list(&domain, &service).await?;
    let copies = state.service.backup_copies(&domain, &service).await?;
    let item = |(b, expires): &(Backup, Option<time::OffsetDateTime>)| wire::BackupItem {
        expires_at: expires.map(strongbox_core::dates::api_date),
        copies: copies.get(&b.job_id).cloned().unwrap_or_default(),
        ..backup_item(b)
    };
    Ok(Json(wire::BackupList {
        backup_list: backups.iter().map(item).collect(),
    }))
}

/// A job's status and progress.
#[utoipa::path(
    get,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/status/{requestName}/job/{jobId}",
    params(wire::JobPath, wire::Tenant),
    responses(
        (status = 200, description = "the job", body = wire::JobStatus),
        (status = 404, description = "no such job of that kind in the identity domain", body = wire::ErrorBody),
    ),
)]
pub async fn job_status(
    State(state): St,
    Path(wire::JobPath {
        identity_domain_id: domain,
        request_name: request,
        job_id: job,
    }): Path<wire::JobPath>,
) -> Result<Json<wire::JobStatus>, ApiError> {
    let missing = || ApiError::not_found(format!("no {request} job {job} in identity domain {domain}"));
    let id: i64 = job.parse().map_err(|_| missing())?;
    let j = match state.service.job(&domain, id).await? {
        Some(j) if j.operation.as_str() == request => j,
        _ => return Err(missing()),
    };
    let percent = j
        .bytes_total
        .filter(|&t| t > 0)
        .map(|t| (j.bytes_done as f64 * 100.0 / t as f64).min(100.0));
    let message = match (&j.message, j.status) {
        (Some(m), _) => m.clone(),
        (None, JobStatus::Queued) => state.service.waiting(&j).await?,
        (None, _) => format!("{} in progress", j.operation),
    };
    Ok(Json(wire::JobStatus {
        job_id: j.id,
        job_operation: j.operation.to_string(),
        job_status: j.status.into(),
        job_start_date: j.started_at.clone().unwrap_or_else(|| j.created_at.clone()),
        creation_time: j.created_at.clone(),
        last_modified_time: j.updated_at.clone(),
        created_by: j.created_by.clone(),
        identity_domain: j.domain.clone(),
        description: format!("{} of database deployment {}", j.operation, j.deployment),
        job_request_parameters: wire::request_parameters(j.spec.as_ref()),
        message,
        service_uri: service_uri(&state, &domain, &j.deployment),
        progress: wire::Progress {
            bytes_done: j.bytes_done,
            bytes_total: j.bytes_total,
            percent,
        },
    }))
}

/// A job's activity log.
#[utoipa::path(
    get,
    path = "/paas/api/v1.1/activitylog/{identityDomainId}/job/{jobId}",
    params(wire::ActivityPath, wire::Tenant),
    responses(
        (status = 200, description = "the activity log", body = wire::ActivityLog),
        (status = 404, description = "no such job in the identity domain", body = wire::ErrorBody),
    ),
)]
pub async fn activity_log(
    State(state): St,
    Path(wire::ActivityPath {
        identity_domain_id: domain,
        job_id: job,
    }): Path<wire::ActivityPath>,
) -> Result<Json<wire::ActivityLog>, ApiError> {
    let missing = || ApiError::not_found(format!("no job {job} in identity domain {domain}"));
    let id: i64 = job.parse().map_err(|_| missing())?;
    let j = state.service.job(&domain, id).await?.ok_or_else(missing)?;
    let messages = state
        .service
        .job_messages(j.id)
        .await?
        .into_iter()
        .map(|m| wire::ActivityMessage {
            activity_date: m.at,
            message: m.message,
        })
        .collect();
    let initiated_by = j.spec().map_or("USER", |s| s.initiated_by(&j.created_by));
    Ok(Json(wire::ActivityLog {
        activity_log_id: j.id,
        service_name: j.deployment.clone(),
        service_type: "dbaas".into(),
        identity_domain: j.domain.clone(),
        job_id: j.id,
        start_date: j.started_at.clone().unwrap_or_else(|| j.created_at.clone()),
        end_date: j.finished_at.clone(),
        status: j.status.into(),
        operation_type: j.operation.as_str().to_uppercase(),
        summary_message: j.operation.as_str().to_uppercase(),
        auth_domain: j.domain.clone(),
        auth_user: j.created_by.clone(),
        initiated_by: initiated_by.into(),
        messages,
    }))
}

/// Registers (or re-registers) an existing database as a deployment
/// (Strongbox's own surface). The connection settings may hold secrets:
/// they are stored, never returned.
#[utoipa::path(
    put,
    path = "/strongbox/api/v1/instances/{identityDomainId}/{serviceId}",
    params(wire::ServicePath, wire::Tenant),
    request_body = wire::Registration,
    responses(
        (status = 200, description = "the deployment", body = wire::Instance),
        (status = 400, description = "bad name, unknown engine or bad settings", body = wire::ErrorBody),
        (status = 413, description = "body too large", body = wire::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = wire::ErrorBody),
    ),
)]
pub async fn register_deployment(
    State(state): St,
    Path(wire::ServicePath {
        identity_domain_id: domain,
        service_id: service,
    }): Path<wire::ServicePath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<wire::Instance>, ApiError> {
    let reg: wire::Registration = serde_json::from_value(json_object(&headers, body)?).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid registration: {e}; send {{\"engine\": \"sqlite\", \"connection\": {{\"path\": ...}}}}"
        ))
    })?;
    let d = state
        .service
        .register_deployment(&domain, &service, reg.engine, reg.connection, reg.runs_on)
        .await?;
    Ok(Json(instance(&state, &d, None)))
}

fn instance(state: &AppState, d: &Deployment, pitr: Option<wire::PointInTimeRecovery>) -> wire::Instance {
    wire::Instance {
        service_name: d.name.clone(),
        service_uri: service_uri(state, &d.domain, &d.name),
        status: "Running".into(),
        creation_time: d.created_at.clone(),
        identity_domain: d.domain.clone(),
        backup_destination: "OSS".into(),
        engine: d.engine.clone(),
        point_in_time_recovery: pitr,
        backup_config: None,
        last_backup: None,
        runs_on: d.runs_on.clone(),
        continuous_archiving: None,
        copies: Vec::new(),
        incomplete: Vec::new(),
        recovers_into: strongbox_engines::CAPABILITIES
            .iter()
            .find(|(engine, _)| *engine == d.engine)
            .map(|(_, can)| can.recovers_into.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default(),
    }
}

/// The identity domain's database deployments.
#[utoipa::path(
    get,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}",
    params(wire::DomainPath, wire::Tenant),
    responses((status = 200, description = "the deployments", body = wire::InstanceList)),
)]
pub async fn instances(
    State(state): St,
    Path(wire::DomainPath {
        identity_domain_id: domain,
    }): Path<wire::DomainPath>,
) -> Result<Json<wire::InstanceList>, ApiError> {
    let services = state
        .service
        .deployments(&domain)
        .await?
        .iter()
        .map(|d| instance(&state, d, None))
        .collect();
    Ok(Json(wire::InstanceList {
        service_type: "dbaas".into(),
        implementation_version: "1.0".into(),
        services,
        uri: format!("{}{PREFIX}/{domain}", state.public_url),
    }))
}

fn edge(scn: String, timestamp: Option<String>) -> wire::RangeEdge {
    wire::RangeEdge { scn, timestamp }
}

fn range_part(r: &Reach) -> wire::RangePart {
    let seconds = strongbox_core::pitr::whole_seconds(r);
    wire::RangePart {
        earliest: edge(r.earliest_lsn.to_string(), seconds.as_ref().map(|s| s.0.clone())),
        latest: edge(r.latest_lsn.to_string(), seconds.map(|s| s.1)),
    }
}

/// One deployment; for `postgresql` ones, `pointInTimeRecovery`: the
/// archive and restore commands, the current timeline, whether the server
/// answers, and the recoverable range of the current history. While the
/// repository does not answer, the core leaves out what it would read from
/// it (the ranges) and says why, listed in `incomplete`: the rest (the
/// commands, the shipper's own status) is what an operator needs during an
/// outage.
#[utoipa::path(
    get,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}",
    params(wire::ServicePath, wire::Tenant),
    responses(
        (status = 200, description = "the deployment", body = wire::Instance),
        (status = 404, description = "no such deployment", body = wire::ErrorBody),
    ),
)]
pub async fn instance_detail(
    State(state): St,
    Path(wire::ServicePath {
        identity_domain_id: domain,
        service_id: service,
    }): Path<wire::ServicePath>,
) -> Result<Json<wire::Instance>, ApiError> {
    let d = state.service.deployment(&domain, &service).await?;
    let mut incomplete = Vec::new();
    let pitr = state.service.pitr_status(&d).await?.map(|p| {
        let range = p.reach.map(|reach| match (reach.ranges.first(), reach.ranges.last()) {
            (Some(first), Some(last)) => Some(wire::RecoverableRange {
                timeline: reach.timeline,
                earliest: range_part(first).earliest,
                latest: range_part(last).latest,
                ranges: reach.ranges.iter().map(range_part).collect(),
            }),
            _ => None,
        });
        if let Err(why) = &range {
            incomplete.push(format!("pointInTimeRecovery's recoverableRange is left out: {why}"));
        }
        wire::PointInTimeRecovery {
            archive_command: p.archive_command,
            restore_command: p.restore_command,
            current_timeline: p.current_timeline,
            server_answers: p.server_answers,
            recoverable_range: range.ok(),
        }
    });
    let mut body = instance(&state, &d, pitr);
    let shipping = state.service.shipping_report(&d).await?;
    if let Some(Err(why)) = shipping.as_ref().map(|r| &r.ranges) {
        incomplete.push(format!("continuousArchiving's ranges are left out: {why}"));
    }
    body.continuous_archiving = shipping.map(|r| {
        let shipper = r.shipper.unwrap_or_default();
        let shipping = shipper.polled_ms > 0;
        wire::ContinuousArchiving {
            shipping,
            generation: shipper.generation,
            shipped_transactions: shipper.shipped,
            lag_seconds: shipping.then_some(shipper.lag.as_secs_f64()),
            error: shipper.stopped.as_ref().map(strongbox_core::shipping::stopped_message),
            slot_held_bytes: shipper.held_bytes,
            standby_name: shipper.standby,
            ranges: r.ranges.ok().map(|ranges| {
                ranges
                    .iter()
                    .map(|g| wire::TimeRange {
                        earliest: strongbox_core::dates::api_date(g.from),
                        latest: g.to.map_or_else(|| "now".into(), strongbox_core::dates::api_date),
                        earliest_scn: g.first.to_string(),
                        latest_scn: g.last.to_string(),
                    })
                    .collect()
            }),
        }
    });
    body.incomplete = incomplete;
    let config = state.service.config_of(&d)?;
    body.backup_config = Some(config_body(&config, state.service.clock.now()));
    body.copies = state
        .service
        .copies
        .iter()
        .map(|c| {
            let s = c.status();
            wire::CopyStatus {
                name: c.name.clone(),
                lag_seconds: s.lag_seconds,
                pending_backups: s.pending_backups,
                error: s.error,
                last_round: s.last_round.map(strongbox_core::dates::api_date),
            }
        })
        .collect();
    body.last_backup = state
        .service
        .last_backup(&domain, &service)
        .await?
        .as_ref()
        .map(backup_item);
    Ok(Json(body))
}

fn config_body(c: &strongbox_core::schedule::BackupConfig, now: time::OffsetDateTime) -> wire::BackupConfig {
    use strongbox_core::dates::api_date;
    use strongbox_core::schedule::{BackupPolicy, Schedule, ScheduleTimes};
    wire::BackupConfig {
        auto_backup_enabled: c.auto_backup_enabled,
        auto_backup_window: c.schedule.window(),
        cron: match &c.schedule {
            Schedule::Cron(expr) => Some(expr.clone()),
            Schedule::Window { .. } => None,
        },
        recovery_window_in_days: c.recovery_window_in_days,
        minimum_backups_kept: c.minimum_backups_kept,
        enabled_since: c.enabled_since.map(api_date),
        next_scheduled_backup: c.next(now).map(api_date),
        continuous_archiving: c.continuous_archiving,
        synchronous_archiving: c.synchronous_archiving,
        verify: c.verify.as_ref().map(|d| d.cron.clone()),
        next_drill: c.next_drill(now).map(api_date),
    }
}

/// A deployment's backup configuration (Strongbox extension).
#[utoipa::path(
    get,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups/config",
    params(wire::ServicePath, wire::Tenant),
    responses(
        (status = 200, description = "the configuration", body = wire::BackupConfig),
        (status = 404, description = "no such deployment", body = wire::ErrorBody),
    ),
)]
pub async fn backup_config(
    State(state): St,
    Path(wire::ServicePath {
        identity_domain_id: domain,
        service_id: service,
    }): Path<wire::ServicePath>,
) -> Result<Json<wire::BackupConfig>, ApiError> {
    let c = state.service.backup_config(&domain, &service).await?;
    Ok(Json(config_body(&c, state.service.clock.now())))
}

/// Changes a deployment's backup configuration (Strongbox extension):
/// automatic backups, their schedule, the recovery window, backups kept.
#[utoipa::path(
    put,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups/config",
    params(wire::ServicePath, wire::Tenant),
    request_body = wire::ChangeBackupConfig,
    responses(
        (status = 200, description = "the configuration now", body = wire::BackupConfig),
        (status = 400, description = "a value out of range or malformed (the message names the field)",
         body = wire::ErrorBody),
        (status = 404, description = "no such deployment", body = wire::ErrorBody),
        (status = 413, description = "body too large", body = wire::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = wire::ErrorBody),
    ),
)]
pub async fn change_backup_config(
    State(state): St,
    Path(wire::ServicePath {
        identity_domain_id: domain,
        service_id: service,
    }): Path<wire::ServicePath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<wire::BackupConfig>, ApiError> {
    let asked = json_object(&headers, body)?;
    if let Some((field, _)) = asked.as_object().into_iter().flatten().find(|(_, v)| v.is_null()) {
        return Err(ApiError::bad_request(format!(
            "{field} is null; leave a field out to keep it as it is"
        )));
    }
    let asked: wire::ChangeBackupConfig = serde_json::from_value(asked).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid backup configuration: {e}; the fields are autoBackupEnabled (boolean), autoBackupWindow \
             (\"HH:MM-HH:MM\", UTC), cron (a cron expression), recoveryWindowInDays (1 to 365), \
             minimumBackupsKept (0 to 1000), continuousArchiving (boolean), synchronousArchiving (boolean), verify \
             (a cron expression for restore drills, \"\" for none)"
        ))
    })?;
    // A whole number, however spelt; anything else is out of every range.
    let whole = |n: Option<serde_json::Number>| {
        n.map(|n| {
            n.as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                        .map(|f| f as i64)
                })
                .unwrap_or(i64::MIN)
        })
    };
    let change = strongbox_core::schedule::ConfigChange {
        auto_backup_enabled: asked.auto_backup_enabled,
        window: asked.auto_backup_window,
        cron: asked.cron,
        recovery_window_in_days: whole(asked.recovery_window_in_days),
        minimum_backups_kept: whole(asked.minimum_backups_kept),
        continuous_archiving: asked.continuous_archiving,
        synchronous_archiving: asked.synchronous_archiving,
        verify: asked.verify,
    };
    let c = state.service.change_backup_config(&domain, &service, &change).await?;
    Ok(Json(config_body(&c, state.service.clock.now())))
}

/// Deletes one backup (Strongbox extension) as an `expire` job: 202 and
/// the job's `Location`.
#[utoipa::path(
    delete,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups/{dbTag}",
    params(wire::BackupPath, wire::Force, wire::Tenant, wire::Idempotency),
    responses(
        (status = 202, description = "accepted; `Location` is the job status URI, the body is empty",
         headers(("Location" = String), ("service-uri" = String), ("Retry-After" = String))),
        (status = 400, description = "a malformed `force`", body = wire::ErrorBody),
        (status = 404, description = "no such deployment or backup", body = wire::ErrorBody),
        (status = 409, description = "kept forever (add ?force=true), still in progress, or another job of the \
         deployment (a recovery from it) is queued or running", body = wire::ErrorBody),
    ),
)]
pub async fn delete_backup(
    State(state): St,
    Path(wire::BackupPath {
        identity_domain_id: domain,
        service_id: service,
        db_tag,
    }): Path<wire::BackupPath>,
    query: Result<axum::extract::Query<wire::Force>, axum::extract::rejection::QueryRejection>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let axum::extract::Query(wire::Force { force }) =
        query.map_err(|e| ApiError::bad_request(format!("{e}; the only query parameter is force=true")))?;
    let origin = origin(&caller, &headers);
    let job = state
        .service
        .delete_backup(&domain, &service, &db_tag, force, &origin)
        .await?;
    accepted(&state, &domain, &service, &job)
}
