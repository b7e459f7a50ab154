//! Recovery endpoints (spec sections 3 and 4): start a recovery, and the
//! history of recoveries. What a target means is the core's business;
//! here the request is parsed and the answer written.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::{Extension, Json};
use serde_json::Value;
use strongbox_catalog::{RecoveryAsked, RecoveryInto, RecoveryStatus};
use strongbox_core::dates::{api_date, api_date_of, parse_api_date};
use strongbox_core::recovery::{NewRecovery, RecoveryRequest, Scn};

use crate::Caller;
use crate::handlers::{accepted, json_object, origin};
use crate::{ApiError, AppState, wire};

/// An `scn`: a PostgreSQL LSN (`0/3000060`, or the same as a decimal
/// number) or a shipped SQLite log's `GENERATION:N`, in a JSON string or
/// number.
fn parse_scn(scn: &Value) -> Result<Scn, ApiError> {
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

/// The one target a request names: parsed, and in the client's words.
fn parse(body: &wire::StartRecovery) -> Result<(RecoveryRequest, RecoveryAsked), ApiError> {
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
    if let Some(latest) = &body.latest {
        let yes = matches!(latest, Value::Bool(true))
            || matches!(latest, Value::String(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("yes"));
        if !yes {
            return Err(ApiError::bad_request(format!(
                "latest must be true, \"true\" or \"yes\" (got {latest})"
            )));
        }
        return Ok((RecoveryRequest::Latest, RecoveryAsked::Latest));
    }
    if let Some(tag) = &body.tag {
        return Ok((RecoveryRequest::Tag(tag.clone()), RecoveryAsked::Tag(tag.clone())));
    }
    if let Some(scn) = &body.scn {
        let parsed = RecoveryRequest::Scn {
            scn: parse_scn(scn)?,
            timeline,
        };
        let words = match scn {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Ok((parsed, RecoveryAsked::Scn { scn: words, timeline }));
    }
    let timestamp = body.timestamp.clone().unwrap_or_default();
    let at = parse_api_date(&timestamp).map_err(ApiError::bad_request)?;
    Ok((
        RecoveryRequest::Time { at, timeline },
        RecoveryAsked::Timestamp { timestamp, timeline },
    ))
}

/// Start a recovery, in place or (`target`) into another place: 202 with
/// an empty body and the job's `Location`.
#[utoipa::path(
    post,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups/recovery",
    params(wire::ServicePath, wire::Tenant, wire::Idempotency),
    request_body = wire::StartRecovery,
    responses(
        (status = 202, description = "accepted; `Location` is the job status URI, the body is empty",
         headers(("Location" = String), ("service-uri" = String), ("Retry-After" = String))),
        (status = 400, description = "not exactly one target, a bad date or scn, a target the archive does not \
         reach (the message names the recoverable range), a moment of an abandoned timeline (the message names it), \
         a target the server's configuration does not allow (the message names the setting), that is the \
         deployment's own, or that exists without \"replace\": true",
         body = wire::ErrorBody),
        (status = 404, description = "no such deployment, or no completed backup with that dbTag", body = wire::ErrorBody),
        (status = 409, description = "a job of this deployment is already in progress", body = wire::ErrorBody),
        (status = 413, description = "body too large", body = wire::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = wire::ErrorBody),
    ),
)]
pub async fn start_recovery(
    State(state): State<Arc<AppState>>,
    Path(wire::ServicePath {
        identity_domain_id: domain,
        service_id: service,
    }): Path<wire::ServicePath>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let parsed: wire::StartRecovery = serde_json::from_value(json_object(&headers, body)?).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid recovery request: {e}; send one of {{\"latest\": true}}, {{\"tag\": \"TAG…\"}}, \
             {{\"timestamp\": \"dd-MMM-yyyy HH:mm:ss\"}}, {{\"scn\": \"0/3000060\"}} or for shipped SQLite logs \
             {{\"scn\": \"GENERATION:N\"}} (a PostgreSQL timestamp or scn may add \"timeline\": N)"
        ))
    })?;
    let (request, asked) = parse(&parsed)?;
    let into = match (&parsed.target, parsed.replace) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "replace goes with a target: it says whether what is there may be overwritten",
            ));
        }
        (Some(Value::Object(settings)), replace) => Some(RecoveryInto {
            settings: settings.clone(),
            replace: replace.unwrap_or(false),
        }),
        (Some(other), _) => {
            return Err(ApiError::bad_request(format!(
                "target is an object of the deployment's settings to recover into instead, e.g. {{\"path\": \
                 \"/srv/copies/app.db\"}} for SQLite (got {other})"
            )));
        }
    };
    let origin = origin(&caller, &headers);
    let job = state
        .service
        .start_recovery(
            &domain,
            &service,
            NewRecovery {
                request,
                asked,
                repository: parsed.repository.clone(),
                into,
            },
            &origin,
        )
        .await?;
    accepted(&state, &domain, &service, &job)
}

/// The deployment's recoveries, newest first; each completed
/// point-in-time recovery adds `reached`.
#[utoipa::path(
    get,
    path = "/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups/recovery/history",
    params(wire::ServicePath, wire::Tenant),
    responses(
        (status = 200, description = "the recoveries", body = wire::RecoveryList),
        (status = 404, description = "no such deployment", body = wire::ErrorBody),
    ),
)]
pub async fn history(
    State(state): State<Arc<AppState>>,
    Path(wire::ServicePath {
        identity_domain_id: domain,
        service_id: service,
    }): Path<wire::ServicePath>,
) -> Result<Json<wire::RecoveryList>, ApiError> {
    let list = state
        .service
        .recovery_history(&domain, &service)
        .await?
        .into_iter()
        .map(|(r, from_backup)| {
            let done = r
                .completed_at
                .as_deref()
                .filter(|_| r.status == RecoveryStatus::Completed);
            wire::RecoveryItem {
                recovery_start_date: api_date_of(&r.started_at),
                status: r.status.as_str().into(),
                job_id: r.job_id,
                from_backup,
                recovery_complete_date: done.map(api_date_of),
                target: wire::words(r.target.as_ref()),
                reached: r.reached.as_ref().map(|reached| wire::ReachedPoint {
                    scn: reached.lsn.to_string(),
                    from_timeline: reached.from_timeline,
                    timeline: reached.timeline,
                    last_commit: reached.last_commit.map(api_date),
                }),
            }
        })
        .collect();
    Ok(Json(wire::RecoveryList { recovery_list: list }))
}
