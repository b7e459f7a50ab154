//! The web console at `/console`: a page and its script, embedded in the
//! binary (no CDN), that drive the same DBCS routes any client uses. Signing
//! in exchanges a password for a session cookie (HttpOnly, SameSite=Strict,
//! Secure over TLS) and a CSRF token the page sends with every change; the
//! one auth layer accepts either the cookie or HTTP Basic.
//!
//! Sessions live in this server's memory: a restart, or a request that a
//! load balancer sends to another replica, asks to sign in again.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::{client_address, sign_in};
use crate::session::{COOKIE, LIFETIME, Session, cookie_value, random_token, session_of};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    user: String,
    password: String,
}

/// What the page learns on sign-in (never the cookie: it is HttpOnly).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Whoami {
    user: String,
    identity_domain: String,
    role: &'static str,
    csrf_token: String,
}

fn whoami(s: &Session) -> Whoami {
    Whoami {
        user: s.caller.user.clone(),
        identity_domain: s.domain.clone(),
        role: s.caller.role.as_str(),
        csrf_token: s.csrf.clone(),
    }
}

fn set_cookie(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    let secure = if state.public_url.starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("a valid cookie")
}

/// `POST /console/session`: user name and password for a session.
pub(crate) async fn create_session(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let client = client_address(&req);
    let body = axum::body::to_bytes(req.into_body(), crate::MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    let form: SignIn = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"user\": …, \"password\": …}}: {e}")))?;
    let (caller, domain) = sign_in(&state, &form.user, &form.password, client).await?;
    let session = Session {
        caller,
        domain,
        csrf: random_token(),
        since: Instant::now(),
    };
    let id = random_token();
    {
        let mut sessions = state.sessions.0.lock().expect("sessions");
        sessions.retain(|_, s| s.since.elapsed() < LIFETIME);
        sessions.insert(id.clone(), session.clone());
    }
    tracing::info!(target: "strongbox::auth", user = %session.caller.user, "console sign-in");
    let mut resp = Json(whoami(&session)).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&state, &id, LIFETIME.as_secs()));
    Ok(resp)
}

fn not_signed_in() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "not signed in: POST /console/session")
}

/// `GET /console/session`: who is signed in (a reloaded page resumes).
pub(crate) async fn current_session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = session_of(&state, &headers).ok_or_else(not_signed_in)?;
    Ok(Json(whoami(&s)).into_response())
}

/// `DELETE /console/session`: signs out (the CSRF token is required: a
/// forged request cannot sign anyone out).
pub(crate) async fn delete_session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = session_of(&state, &headers).ok_or_else(not_signed_in)?;
    s.check_csrf(&headers)?;
    if let Some(id) = cookie_value(&headers) {
        state.sessions.0.lock().expect("sessions").remove(id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(&state, "", 0));
    Ok(resp)
}

/// The page and its assets, compiled in.
pub(crate) async fn asset(uri: axum::http::Uri) -> Response {
    let (body, kind) = match uri.path() {
        "/console" | "/console/" => (include_str!("../console/index.html"), "text/html; charset=utf-8"),
        "/console/app.js" => (include_str!("../console/app.js"), "text/javascript; charset=utf-8"),
        "/console/app.css" => (include_str!("../console/app.css"), "text/css; charset=utf-8"),
        _ => return ApiError::not_found("no such console asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
