//! `/metrics` in Prometheus' text format. Counters and histograms are
//! recorded where things happen (requests here, sign-ins in `auth`, jobs in
//! the workers); what the catalog knows (jobs by state, each deployment's
//! last backup and recoverable range) is read at scrape time, so that every
//! replica on a shared catalog reports the same, current, values.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use strongbox_catalog::{JobStatus, Operation};

use crate::{ApiError, AppState};

/// Request latency buckets (seconds): the API answers in milliseconds.
const REQUEST_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Job duration buckets (seconds): from a small SQLite file to hours of a
/// large database.
const JOB_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 12.0 * 3600.0];

/// Installs the process' recorder; its handle renders the page.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("strongbox_http_request_duration_seconds".into()),
            REQUEST_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full("strongbox_job_duration_seconds".into()), JOB_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Every metric's HELP line (Prometheus' linter wants one each).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "strongbox_http_requests_total",
        "Requests answered, by route template, method and status"
    );
    describe_histogram!(
        "strongbox_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer a request, by route template and method"
    );
    describe_counter!(
        "strongbox_signin_failures_total",
        "Sign-ins refused for a wrong user name or password"
    );
    describe_counter!(
        "strongbox_signin_throttled_total",
        "Sign-ins refused unchecked (429) after too many failures from one address or for one user"
    );
    describe_gauge!("strongbox_jobs", "Jobs in the catalog, by operation and state");
    describe_counter!(
        "strongbox_jobs_finished_total",
        "Jobs this server ended, by operation and outcome"
    );
    describe_histogram!(
        "strongbox_job_duration_seconds",
        Unit::Seconds,
        "How long jobs this server ended ran (their last attempt), by operation and outcome"
    );
    describe_counter!(
        "strongbox_backup_read_bytes_total",
        Unit::Bytes,
        "Bytes backups on this server read from the database"
    );
    describe_counter!(
        "strongbox_backup_stored_bytes_total",
        Unit::Bytes,
        "Bytes backups on this server added to the repository (new, compressed)"
    );
    describe_gauge!(
        "strongbox_backup_dedup_ratio",
        "Bytes read per byte stored by the deployment's last backup on this server"
    );
    describe_gauge!(
        "strongbox_last_backup_timestamp_seconds",
        Unit::Seconds,
        "When the deployment's newest completed backup completed (Unix time)"
    );
    describe_gauge!(
        "strongbox_last_verified_timestamp_seconds",
        Unit::Seconds,
        "When a restore drill last proved one of the deployment's backups restorable (Unix time)"
    );
    describe_counter!(
        "strongbox_verify_failures_total",
        "Backups whose restore drill failed, on this server, by deployment"
    );
    describe_gauge!(
        "strongbox_recoverable_from_timestamp_seconds",
        Unit::Seconds,
        "The earliest moment the deployment can be recovered to (Unix time)"
    );
    describe_gauge!(
        "strongbox_recoverable_until_timestamp_seconds",
        Unit::Seconds,
        "The latest moment the deployment can be recovered to (Unix time)"
    );
    describe_gauge!(
        "strongbox_wal_slot_held_bytes",
        Unit::Bytes,
        "WAL the streaming receiver's replication slot keeps on the database server"
    );
    describe_gauge!(
        "strongbox_wal_archive_lag_seconds",
        Unit::Seconds,
        "How far the last commit in the WAL archive trails now (what losing the database now would lose)"
    );
}

/// The counter and histogram of one route, method and status.
type Handles = (metrics::Counter, metrics::Histogram);
/// By route template, then method and status.
type HandleCache = HashMap<String, HashMap<(Method, u16), Handles>>;

thread_local! {
    /// Handles already registered, per request thread: finding them in
    /// the recorder's registry costs label strings and a hashed lookup
    /// per request (`bench/metrics_bench.sh`: the bare static handler ran
    /// at 0.91× without this cache).
    static HANDLES: std::cell::RefCell<HandleCache> = Default::default();
}

/// Counts one answered request by route template (never the raw path:
/// bounded label values), method and status, with its latency.
pub(crate) fn request(route: Option<&str>, method: &Method, status: StatusCode, seconds: f64) {
    let route = route.unwrap_or("unmatched");
    HANDLES.with_borrow_mut(|cache| {
        if !cache.contains_key(route) {
            cache.insert(route.to_owned(), HashMap::new());
        }
        let by_route = cache.get_mut(route).expect("just inserted");
        let (counter, histogram) = by_route.entry((method.clone(), status.as_u16())).or_insert_with(|| {
            let (route, method) = (route.to_owned(), method.as_str().to_owned());
            (
                metrics::counter!(
                    "strongbox_http_requests_total",
                    "route" => route.clone(),
                    "method" => method.clone(),
                    "status" => status.as_str().to_owned()
                ),
                metrics::histogram!(
                    "strongbox_http_request_duration_seconds",
                    "route" => route,
                    "method" => method
                ),
            )
        });
        counter.increment(1);
        histogram.record(seconds);
    });
}

pub(crate) async fn page(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let Some(handle) = &state.metrics else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics are off on this server (started with STRONGBOX_METRICS=false)",
        ));
    };
    let service = &state.service;
    let counts = service.job_counts().await?;
    for operation in Operation::ALL {
        for status in JobStatus::ALL {
            let n = counts
                .iter()
                .find(|c| c.operation == operation && c.status == status)
                .map_or(0, |c| c.count);
            metrics::gauge!("strongbox_jobs", "operation" => operation.as_str(), "state" => status.as_str())
                .set(n as f64);
        }
    }
    let now = service.clock.now();
    for h in service.health().await? {
        let labels = [
            ("domain", h.deployment.domain.clone()),
            ("deployment", h.deployment.name.clone()),
        ];
        let unix = |t: time::OffsetDateTime| t.unix_timestamp_nanos() as f64 / 1e9;
        if let Some(t) = h.last_backup {
            metrics::gauge!("strongbox_last_backup_timestamp_seconds", &labels).set(unix(t));
        }
        if let Some(t) = h.last_verified {
            metrics::gauge!("strongbox_last_verified_timestamp_seconds", &labels).set(unix(t));
        }
        if let Some((from, until)) = h.recoverable {
            metrics::gauge!("strongbox_recoverable_from_timestamp_seconds", &labels).set(unix(from));
            metrics::gauge!("strongbox_recoverable_until_timestamp_seconds", &labels).set(unix(until));
        }
        if let Some(archived) = h.archived_until {
            metrics::gauge!("strongbox_wal_archive_lag_seconds", &labels).set((unix(now) - unix(archived)).max(0.0));
        }
        let shipper = service.shippers.status(&h.deployment.domain, &h.deployment.name);
        if let Some(held) = shipper.and_then(|s| s.held_bytes) {
            metrics::gauge!("strongbox_wal_slot_held_bytes", &labels).set(held as f64);
        }
    }
    handle.run_upkeep();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response())
}
