//! Console sessions: a cookie's value names a signed-in caller for a
//! while; changes made with one must carry its CSRF token. Kept in this
//! server's memory. The auth layer reads them, the console creates and ends
//! them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};

use crate::{ApiError, AppState, Caller};

pub(crate) const COOKIE: &str = "strongbox_session";
/// A session ends this long after sign-in.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);

#[derive(Clone)]
pub(crate) struct Session {
    pub caller: Caller,
    pub domain: String,
    pub csrf: String,
    pub since: Instant,
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
pub(crate) struct Sessions(pub(crate) Mutex<HashMap<String, Session>>);

pub(crate) fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    hex::encode(raw)
}

pub(crate) fn cookie_value(headers: &HeaderMap) -> Option<&str> {
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
