//! The DBCS backup & recovery REST API (v1.1) on axum: routes, auth,
//! the headers Oracle's service sends, and errors as `{"message": ...}`.
//! Handlers only read and write the catalog; workers do the backups.

mod auth;
mod error;
mod handlers;
mod openapi;
pub mod pitr;
mod recovery;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use strongbox_catalog::Catalog;

pub use error::ApiError;

/// The prefix of every DBCS path.
pub const PREFIX: &str = "/paas/service/dbcs/api/v1.1/instances";
/// Request bodies are tiny JSON objects; anything larger is a mistake.
pub const MAX_BODY: usize = 64 * 1024;

pub struct AppState {
    pub catalog: Arc<dyn Catalog>,
    /// Scheme, host and port clients use, for `Location` and `service-uri`.
    pub public_url: String,
    pub retry_after: u64,
    /// WAL archives for point-in-time recovery; none, none offered.
    pub wal: Option<Arc<pitr::WalArchives>>,
    /// Wakes idle workers when a job is queued (they also poll the catalog).
    pub queued: Arc<tokio::sync::Notify>,
    auth: auth::Cache,
    finished: handlers::FinishedJobs,
}

impl AppState {
    pub fn new(catalog: Arc<dyn Catalog>, public_url: impl Into<String>, retry_after: u64) -> Self {
        AppState {
            catalog,
            public_url: public_url.into().trim_end_matches('/').to_string(),
            retry_after,
            wal: None,
            queued: Arc::default(),
            auth: auth::Cache::default(),
            finished: Default::default(),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(&format!("{PREFIX}/{{domain}}"), get(handlers::instances))
        .route(&format!("{PREFIX}/{{domain}}/{{service}}"), get(handlers::instance))
        .route(
            &format!("{PREFIX}/{{domain}}/{{service}}/backups"),
            get(handlers::list_backups).post(handlers::start_backup),
        )
        .route(
            &format!("{PREFIX}/{{domain}}/{{service}}/backups/recovery"),
            axum::routing::post(recovery::start_recovery),
        )
        .route(
            &format!("{PREFIX}/{{domain}}/{{service}}/backups/recovery/history"),
            get(recovery::history),
        )
        .route(
            &format!("{PREFIX}/{{domain}}/status/{{request}}/job/{{job}}"),
            get(handlers::job_status),
        )
        .route(
            "/paas/api/v1.1/activitylog/{domain}/job/{job}",
            get(handlers::activity_log),
        )
        .route("/openapi.json", get(|| async { axum::Json(openapi::spec()) }))
        // A static answer for load balancers (and the API benchmark's baseline).
        .route(
            "/strongbox/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        // Strongbox's own surface: registering an existing database as a deployment.
        .route(
            "/strongbox/api/v1/instances/{domain}/{service}",
            axum::routing::put(handlers::register_deployment),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such resource; see /paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this resource")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(common_headers))
        .with_state(state)
}

/// Headers Oracle's service sends on every response, a per-request
/// correlation id, and CORS preflight answered before any auth.
async fn common_headers(req: Request, next: Next) -> Response {
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    let mut ecid = [0u8; 12];
    rand::fill(&mut ecid);
    for (name, value) in [
        ("strict-transport-security", "max-age=31536000;includeSubDomains"),
        ("content-language", "en"),
        ("access-control-allow-origin", "*"),
        (
            "access-control-allow-headers",
            "Content-Type, api_key, Authorization, X-ID-TENANT-NAME, X-USER-IDENTITY-DOMAIN-NAME",
        ),
        ("access-control-allow-methods", "GET, POST, DELETE, PUT, OPTIONS, HEAD"),
        ("x-frame-options", "DENY"),
        ("vary", "user-agent"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        "x-oracle-dms-ecid",
        HeaderValue::from_str(&hex::encode(ecid)).expect("hex is a valid header"),
    );
    resp
}
