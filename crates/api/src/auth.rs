//! One authentication layer for every DBCS route: HTTP Basic plus
//! `X-ID-TENANT-NAME`, which must name the path's identity domain, which
//! must be the user's; the user's role must be at least the one the
//! endpoint needs (the endpoint list says which). Handlers receive the
//! `Caller` it found.
//!
//! Argon2id takes tens of milliseconds by design; verified credentials are
//! remembered for a minute as a keyed hash (never the password itself), and
//! requests arriving with the same credentials while they are being
//! verified wait for that one verification: a client that opens with a
//! burst (500 requests in the first second) would otherwise start one hash
//! per request and queue the whole burst behind seconds of hashing.
//!
//! Failed sign-ins are throttled per client address and per user name
//! (`Throttle`): past the limit a request whose credentials are not
//! already verified is refused with 429 before any hashing, so a flood of
//! wrong passwords costs a map lookup each, not an Argon2 hash. Credentials
//! verified within the minute are served from the cache, and credentials
//! verified before are re-verified, never throttled: a flood aimed at a
//! user does not lock that user's running clients out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use strongbox_catalog::Role;
use strongbox_core::password::verify_password;

use crate::{ApiError, AppState, Caller};

const TTL: Duration = Duration::from_secs(60);

/// A verification's outcome: the user's identity domain and role, `None`
/// for a wrong user name or password.
type Verified = Result<Option<(String, Role)>, ApiError>;

/// One verification under way, which requests with the same credentials
/// wait for.
type Flight = Arc<tokio::sync::OnceCell<Verified>>;

/// Failed sign-ins allowed per client address and per user name in one
/// window before further attempts are refused, unless the server is told
/// otherwise (`signin_failures`).
pub const FAILURES_ALLOWED: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Bounds the throttle's memory under a flood from many addresses.
const THROTTLE_KEYS_MAX: usize = 100_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Who {
    Address(std::net::IpAddr),
    User(String),
}

/// Failed sign-ins per client address and per user name, in fixed windows.
struct Throttle {
    allowed: u32,
    failures: Mutex<HashMap<Who, (u32, Instant)>>,
}

impl Throttle {
    /// Seconds until `who` may try again, if it has used up its window.
    fn wait(&self, who: &[Who]) -> Option<u64> {
        let map = self.failures.lock().expect("throttle");
        who.iter()
            .filter_map(|w| map.get(w))
            .filter(|(n, since)| *n >= self.allowed && since.elapsed() < FAILURE_WINDOW)
            .map(|(_, since)| (FAILURE_WINDOW - since.elapsed()).as_secs() + 1)
            .max()
    }

    fn failed(&self, who: &[Who]) {
        let mut map = self.failures.lock().expect("throttle");
        if map.len() >= THROTTLE_KEYS_MAX {
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if map.len() >= THROTTLE_KEYS_MAX {
                map.clear(); // a flood from this many addresses: start over
            }
        }
        for w in who {
            let entry = map.entry(w.clone()).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= FAILURE_WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
        }
    }
}

pub struct Cache {
    key: [u8; 32],
    entries: Mutex<HashMap<String, (blake3::Hash, String, Role, Instant)>>,
    /// Verifications under way, by user and keyed password hash.
    verifying: Mutex<HashMap<(String, blake3::Hash), Flight>>,
    throttle: Throttle,
}

impl Cache {
    /// `failures_allowed` per client address and per user in a minute.
    pub fn new(failures_allowed: u32) -> Self {
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        Cache {
            key,
            entries: Mutex::default(),
            verifying: Mutex::default(),
            throttle: Throttle {
                allowed: failures_allowed,
                failures: Mutex::default(),
            },
        }
    }
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, msg)
}

/// Who the request's credentials name, or why not: a console session
/// cookie (changes need its CSRF token too), else HTTP Basic.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    client: Option<std::net::IpAddr>,
) -> Result<(Caller, String), ApiError> {
    if headers.get(header::AUTHORIZATION).is_none()
        && let Some(session) = crate::session::session_of(state, headers)
    {
        if !matches!(*method, Method::GET | Method::HEAD) {
            session.check_csrf(headers)?;
        }
        return Ok((session.caller, session.domain));
    }
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| unauthorized("missing or malformed credentials: send HTTP Basic auth (user:password)"))?;
    let (user, password) = creds
        .split_once(':')
        .ok_or_else(|| unauthorized("malformed Basic credentials: expected user:password"))?;
    sign_in(state, user, password, client).await
}

/// Checks a user name and password (cached, throttled, see above): the
/// caller and their identity domain.
pub(crate) async fn sign_in(
    state: &AppState,
    user: &str,
    password: &str,
    client: Option<std::net::IpAddr>,
) -> Result<(Caller, String), ApiError> {
    let cache = &state.auth;
    let proof = blake3::keyed_hash(&cache.key, password.as_bytes());
    // Entries outlive their TTL: an expired one with the same proof names
    // credentials that were right, which are re-verified but not throttled.
    let (cached, known_good) = {
        let entries = cache.entries.lock().expect("auth cache");
        let same = entries.get(user).filter(|(p, _, _, _)| *p == proof);
        (
            same.filter(|(_, _, _, at)| at.elapsed() < TTL)
                .map(|(_, d, r, _)| (d.clone(), *r)),
            same.is_some(),
        )
    };
    let (domain, role) = match cached {
        Some(found) => found,
        None => {
            let who: Vec<Who> = client
                .map(Who::Address)
                .into_iter()
                .chain([Who::User(user.to_string())])
                .collect();
            if let Some(secs) = cache.throttle.wait(&who).filter(|_| !known_good) {
                tracing::warn!(target: "strongbox::auth", user, ?client, "sign-in throttled");
                metrics::counter!("strongbox_signin_throttled_total").increment(1);
                return Err(ApiError {
                    retry_after: Some(secs),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "too many failed sign-ins from this address or for user {user}; \
                             try again in {secs} s"
                        ),
                    )
                });
            }
            let flight = (user.to_string(), proof);
            let cell = cache
                .verifying
                .lock()
                .expect("auth cache")
                .entry(flight.clone())
                .or_default()
                .clone();
            let verified = cell.get_or_init(|| verify(state, user, password)).await.clone();
            cache.verifying.lock().expect("auth cache").remove(&flight);
            let Some((domain, role)) = verified? else {
                cache.throttle.failed(&who);
                // Wrong now (a changed password): no longer known good.
                let mut entries = cache.entries.lock().expect("auth cache");
                if entries.get(user).is_some_and(|(p, _, _, _)| *p == proof) {
                    entries.remove(user);
                }
                drop(entries);
                tracing::warn!(target: "strongbox::auth", user, ?client, "failed sign-in");
                metrics::counter!("strongbox_signin_failures_total").increment(1);
                return Err(unauthorized("wrong user name or password"));
            };
            cache
                .entries
                .lock()
                .expect("auth cache")
                .insert(user.to_string(), (proof, domain.clone(), role, Instant::now()));
            (domain, role)
        }
    };
    let caller = Caller {
        user: user.to_string(),
        role,
    };
    Ok((caller, domain))
}

/// Checks a password against the catalog's Argon2id hash, off the
/// request threads.
async fn verify(state: &AppState, user: &str, password: &str) -> Verified {
    let u = state.service.user(user).await?;
    // A user who does not exist costs the same hash as a wrong password:
    // answering at once would tell a guesser which user names exist.
    static NOBODY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = u.as_ref().map(|u| u.password_hash.clone());
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| {
            NOBODY
                .get_or_init(|| strongbox_core::password::hash_password("no user has this password"))
                .clone()
        });
        verify_password(&password, &hash)
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(u.filter(|_| ok).map(|u| (u.domain, u.role)))
}

/// The client's address, when the server was started to record it.
pub(crate) fn client_address(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The layer: authenticates, checks the domain and the role, and hands the
/// request on with its `Caller`.
pub async fn require(
    State((state, needs)): State<(Arc<AppState>, Role)>,
    Path(params): Path<HashMap<String, String>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let client = client_address(&req);
    match check(&state, needs, &params, req.headers(), &method, &path, client).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            Ok(next.run(req).await)
        }
        Err(e) => {
            // Read what the client is still sending before refusing: an
            // HTTP/2 stream answered and reset mid-upload is an error to
            // curl, not an answer.
            let _ = axum::body::to_bytes(req.into_body(), crate::MAX_BODY).await;
            Err(e)
        }
    }
}

async fn check(
    state: &AppState,
    needs: Role,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    client: Option<std::net::IpAddr>,
) -> Result<Caller, ApiError> {
    let domain = params
        .get("identityDomainId")
        .ok_or_else(|| ApiError::internal("an authenticated route without {identityDomainId}"))?;
    let (caller, user_domain) = authenticate(state, headers, method, client).await?;
    let tenant = headers
        .get("x-id-tenant-name")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .ok_or_else(|| unauthorized("missing X-ID-TENANT-NAME header: set it to your identity domain"))?;
    if &tenant != domain {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("X-ID-TENANT-NAME ({tenant}) does not match the identity domain in the path ({domain})"),
        ));
    }
    if &user_domain != domain {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("user {} does not belong to identity domain {domain}", caller.user),
        ));
    }
    if caller.role < needs {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "user {} has the {} role; {} {} needs the {} role (strongbox admin user {} --domain {domain} \
                 --role {})",
                caller.user,
                caller.role.as_str(),
                method,
                path,
                needs.as_str(),
                caller.user,
                needs.as_str()
            ),
        ));
    }
    Ok(caller)
}
