//! The DBCS backup & recovery REST API (v1.1) on axum: routes, auth,
//! the headers Oracle's service sends, and errors as `{"message": ...}`.
//! Handlers parse, call the service core, and answer; workers do the jobs.

mod auth;
mod console;
mod error;
mod handlers;
pub mod metrics;
mod openapi;
mod recovery;
mod session;
pub mod wire;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use strongbox_core::Service;

pub use auth::FAILURES_ALLOWED as SIGNIN_FAILURES_ALLOWED;
pub use error::ApiError;

/// The authenticated caller, in the request's extensions (the auth layer
/// puts it there).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: String,
    pub role: strongbox_catalog::Role,
}

/// The prefix of every DBCS path.
pub const PREFIX: &str = "/paas/service/dbcs/api/v1.1/instances";
/// The prefix of Strongbox's own routes (registration).
pub const STRONGBOX_PREFIX: &str = "/strongbox/api/v1/instances";
/// Request bodies are tiny JSON objects; anything larger is a mistake.
pub const MAX_BODY: usize = 64 * 1024;

pub struct AppState {
    pub service: Arc<Service>,
    /// Scheme, host and port clients use, for `Location` and `service-uri`.
    pub public_url: String,
    pub retry_after: u64,
    auth: auth::Cache,
    sessions: session::Sessions,
    /// Renders `/metrics`; `None` when metrics are off.
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Where `/metrics` is served instead of beside the API, if elsewhere.
    metrics_elsewhere: Option<String>,
}

impl AppState {
    pub fn new(service: Arc<Service>, public_url: impl Into<String>, retry_after: u64) -> Self {
        AppState {
            service,
            public_url: public_url.into().trim_end_matches('/').to_string(),
            retry_after,
            auth: auth::Cache::new(auth::FAILURES_ALLOWED),
            metrics: None,
            metrics_elsewhere: None,
            sessions: Default::default(),
        }
    }

    /// Failed sign-ins allowed per client address and per user name in a
    /// minute before further attempts get 429.
    pub fn with_signin_failures(mut self, allowed: u32) -> Self {
        self.auth = auth::Cache::new(allowed);
        self
    }

    /// Serves `/metrics` from the process' recorder (`metrics::install`).
    pub fn with_metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// `/metrics` is served on `address` (`metrics_router`), not beside the API.
    pub fn with_metrics_elsewhere(mut self, address: impl Into<String>) -> Self {
        self.metrics_elsewhere = Some(address.into());
        self
    }
}

/// `/metrics` alone, for a listener of its own (`metrics_listen`).
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new().route("/metrics", get(metrics::page)).with_state(state)
}

pub fn router(state: Arc<AppState>) -> Router {
    let endpoints = openapi::endpoints();
    let spec = Arc::new(openapi::spec(&endpoints));
    // Every documented route goes through the one auth layer, told the
    // role its endpoint needs.
    let mut authenticated = Router::new();
    for e in endpoints {
        let auth = axum::middleware::from_fn_with_state((state.clone(), e.role), auth::require);
        authenticated = authenticated.route(&e.path, e.handler.route_layer(auth));
    }
    Router::new()
        .merge(authenticated)
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(spec.as_ref().clone()) }),
        )
        // Unauthenticated, as Prometheus scrapes: it names deployments and
        // counts, never a secret.
        .route(
            "/metrics",
            get(|state: axum::extract::State<Arc<AppState>>| async move {
                match &state.metrics_elsewhere {
                    Some(at) => Err(ApiError::not_found(format!("metrics are served on {at}/metrics"))),
                    None => metrics::page(state).await,
                }
            }),
        )
        .route("/console", get(console::asset))
        // A trailing slash, as browsers and people type it.
        .route(
            "/console/",
            get(|| async { axum::response::Redirect::permanent("/console") }),
        )
        .route("/console/app.js", get(console::asset))
        .route("/console/app.css", get(console::asset))
        .route(
            "/console/session",
            get(console::current_session)
                .post(console::create_session)
                .delete(console::delete_session),
        )
        // For load balancers: the dependencies as last probed, no query
        // (and the API benchmark's baseline).
        .route("/strongbox/health", get(health))
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

/// The request with its body read whole (at most `MAX_BODY`) before any
/// answer: an HTTP/2 answer sent while the client still sends its body
/// ends the stream (RST_STREAM), which curl reports as "Stream error in the
/// HTTP/2 framing layer" instead of the answer (seen when the auth layer
/// refused a DELETE that carried a body).
async fn read_body(req: Request) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        Err(e) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {MAX_BODY} bytes"),
            ))
        }
        Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    }
}

/// Headers Oracle's service sends on every response, a per-request
/// correlation id, CORS preflight answered before any auth, and one log
/// line per request (method, path, status, time, correlation id; never a
/// header, a query string or a body).
async fn common_headers(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let route = req.extensions().get::<axum::extract::MatchedPath>().cloned();
    // The console's own requests: a Basic challenge would make the browser
    // open its password dialog over the page's sign-in form.
    let console = req.headers().contains_key("x-strongbox-console");
    let mut resp = if method == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        match read_body(req).await {
            Ok(req) => next.run(req).await,
            Err(refused) => refused.into_response(),
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    metrics::request(route.as_ref().map(|r| r.as_str()), &method, resp.status(), elapsed);
    let mut ecid = [0u8; 12];
    rand::fill(&mut ecid);
    let ecid = hex::encode(ecid);
    tracing::info!(
        target: "strongbox::request",
        ecid,
        status = resp.status().as_u16(),
        ms = elapsed * 1e3,
        "{method} {path}"
    );
    let h = resp.headers_mut();
    if console {
        h.remove(axum::http::header::WWW_AUTHENTICATE);
    }
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
        HeaderValue::from_str(&ecid).expect("hex is a valid header"),
    );
    resp
}

/// 200 `{"status": "ok"}`, or 503 with `Retry-After` naming each failing
/// dependency and why (`health::probe`, every second).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let failing = state.service.dependencies.failing();
    if failing.is_empty() {
        return axum::Json(serde_json::json!({"status": "ok"})).into_response();
    }
    let mut body = serde_json::json!({"status": "unavailable"});
    for (name, why) in &failing {
        body[*name] = serde_json::Value::String(why.clone());
    }
    body["message"] = serde_json::Value::String(
        failing
            .iter()
            .map(|(name, why)| format!("the {name} is failing: {why}"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(
            axum::http::header::RETRY_AFTER,
            error::UNAVAILABLE_RETRY_AFTER.to_string(),
        )],
        axum::Json(body),
    )
        .into_response()
}
