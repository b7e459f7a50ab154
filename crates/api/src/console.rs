//! The web console at `/console`: a page and its script, embedded in the
//! binary (no CDN), that drive the same DBCS routes any client uses. Signing
//! in exchanges a password for a session cookie (HttpOnly, SameSite=Strict,
//! Secure over TLS) and a CSRF token the page sends with every change; the
//! one auth layer accepts either the cookie or HTTP Basic.
//!
//! Sessions live in this server's memory: a restart, or a request that a
//! load balancer sends to another replica, asks to sign in again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, client_address, sign_in};
use crate::{ApiError, AppState};

const COOKIE: &str = "strongbox_session";
/// A session ends this long after sign-in.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

#[derive(Clone)]
pub(crate) struct Session {
    pub caller: Caller,
    pub domain: String,
    pub csrf: String,
    since: Instant,
}

impl Session {
    /// A change made with this session must carry its CSRF token.
    pub(crate) fn check_csrf(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) {
            Some(token) if token == self.csrf => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token: a change made with a console session must send the token the \
                 sign-in returned",
            )),
        }
    }
}

/// Signed-in sessions by their cookie's value.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, Session>>);

fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    hex::encode(raw)
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The live session the request's cookie names.
pub(crate) fn session_of(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let id = cookie_value(headers)?;
    let mut sessions = state.sessions.0.lock().expect("sessions");
    match sessions.get(id) {
        Some(s) if s.since.elapsed() < LIFETIME => Some(s.clone()),
        Some(_) => {
            sessions.remove(id);
            None
        }
        None => None,
    }
}

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
