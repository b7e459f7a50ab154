//! HTTP Basic auth plus `X-ID-TENANT-NAME`, which must name the path's
//! identity domain, which must be the user's.
//!
//! Argon2id takes tens of milliseconds by design; verified credentials are
//! remembered for a minute as a keyed hash (never the password itself).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use strongbox_catalog::{Catalog, verify_password};

use crate::ApiError;

const TTL: Duration = Duration::from_secs(60);

pub struct Cache {
    key: [u8; 32],
    entries: Mutex<HashMap<String, (blake3::Hash, String, Instant)>>,
}

impl Default for Cache {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        Cache {
            key,
            entries: Mutex::default(),
        }
    }
}

/// The authenticated caller.
pub struct Caller {
    pub user: String,
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, msg)
}

pub async fn authorize(
    cache: &Cache,
    catalog: &dyn Catalog,
    headers: &HeaderMap,
    domain: &str,
) -> Result<Caller, ApiError> {
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
    let tenant = headers
        .get("x-id-tenant-name")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("missing X-ID-TENANT-NAME header: set it to your identity domain"))?;

    let proof = blake3::keyed_hash(&cache.key, password.as_bytes());
    let cached = cache
        .entries
        .lock()
        .expect("auth cache")
        .get(user)
        .filter(|(p, _, at)| *p == proof && at.elapsed() < TTL)
        .map(|(_, d, _)| d.clone());
    let user_domain = match cached {
        Some(d) => d,
        None => {
            let u = catalog.user(user).await?;
            let ok = match &u {
                Some(u) => {
                    let (password, hash) = (password.to_string(), u.password_hash.clone());
                    tokio::task::spawn_blocking(move || verify_password(&password, &hash))
                        .await
                        .map_err(ApiError::internal)?
                }
                None => false,
            };
            let Some(u) = u.filter(|_| ok) else {
                return Err(unauthorized("wrong user name or password"));
            };
            cache
                .entries
                .lock()
                .expect("auth cache")
                .insert(user.to_string(), (proof, u.domain.clone(), Instant::now()));
            u.domain
        }
    };
    if tenant != domain {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("X-ID-TENANT-NAME ({tenant}) does not match the identity domain in the path ({domain})"),
        ));
    }
    if user_domain != domain {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("user {user} does not belong to identity domain {domain}"),
        ));
    }
    Ok(Caller { user: user.to_string() })
}
