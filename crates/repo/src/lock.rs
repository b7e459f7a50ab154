//! Locks: how prune learns which backups are in flight.
//!
//! A lock is an object under `locks/` naming its holder and the prune plans
//! the holder had seen when it started. It is refreshed (a new object, then
//! the old one deleted: objects are never rewritten) every `REFRESH`; one
//! not refreshed for `STALE` is treated as dead.
//!
//! The ordering that makes prune safe: a backup writes its lock *before*
//! reading the plans, and prune writes a plan *before* reading the locks.
//! With a store that reads its own writes (local disk, S3 today), either the
//! backup sees the plan (and does not deduplicate against its packs) or
//! prune sees the backup's lock without that plan in `plans_seen` (and waits
//! for the backup to finish before deleting anything).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::storage::{Store, layout};

pub const REFRESH: Duration = Duration::from_secs(5 * 60);
pub const STALE: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Backup,
    Prune,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub holder: Id,
    pub kind: LockKind,
    pub hostname: String,
    pub pid: u32,
    pub created: String,
    pub plans_seen: Vec<Id>,
}

pub struct Lock {
    store: Store,
    pub info: LockInfo,
    state: Arc<Mutex<LockState>>,
    refresher: tokio::task::JoinHandle<()>,
}

struct LockState {
    object: Id,
    refreshed: Instant,
}

async fn write(store: &Store, cipher: &Cipher, info: &LockInfo) -> Result<Id> {
    let id = Id::random();
    let sealed = cipher.seal_object("lock", &serde_json::to_vec(info).expect("serializable"));
    store
        .put_new(&layout::of(layout::LOCKS, &id), Bytes::from(sealed))
        .await?;
    Ok(id)
}

impl Lock {
    /// Takes a lock; `plans` is called between writing the lock and
    /// recording which plans were seen, and returns their ids.
    pub async fn acquire<F, Fut>(store: &Store, cipher: &Cipher, kind: LockKind, plans: F) -> Result<Lock>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Id>>>,
    {
        let mut info = LockInfo {
            holder: Id::random(),
            kind,
            hostname: crate::hostname(),
            pid: std::process::id(),
            created: crate::now_rfc3339(),
            plans_seen: vec![],
        };
        let first = write(store, cipher, &info).await?;
        info.plans_seen = match plans().await {
            Ok(p) => p,
            Err(e) => {
                store.delete(&layout::of(layout::LOCKS, &first)).await.ok();
                return Err(e);
            }
        };
        let object = write(store, cipher, &info).await?;
        store.delete(&layout::of(layout::LOCKS, &first)).await?;
        let state = Arc::new(Mutex::new(LockState {
            object,
            refreshed: Instant::now(),
        }));
        let refresher = tokio::spawn(refresh_loop(store.clone(), cipher.clone(), info.clone(), state.clone()));
        Ok(Lock {
            store: store.clone(),
            info,
            state,
            refresher,
        })
    }

    /// Fails if the lock may have gone stale in others' eyes (the process
    /// was suspended, or the store unreachable): committing a snapshot then
    /// could race a prune that believed this holder dead.
    pub fn ensure_fresh(&self) -> Result<()> {
        let age = self.state.lock().expect("lock state").refreshed.elapsed();
        if age + REFRESH > STALE {
            return Err(Error::Aborted(format!(
                "the repository lock was last refreshed {}s ago; a concurrent prune may treat this backup as dead",
                age.as_secs()
            )));
        }
        Ok(())
    }

    pub async fn release(self) -> Result<()> {
        self.refresher.abort();
        let object = self.state.lock().expect("lock state").object;
        self.store.delete(&layout::of(layout::LOCKS, &object)).await
    }
}

async fn refresh_loop(store: Store, cipher: Cipher, info: LockInfo, state: Arc<Mutex<LockState>>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Ok(new) = write(&store, &cipher, &info).await else {
            continue; // try again next round; ensure_fresh reports if it never works
        };
        let old = {
            let mut s = state.lock().expect("lock state");
            s.refreshed = Instant::now();
            std::mem::replace(&mut s.object, new)
        };
        store.delete(&layout::of(layout::LOCKS, &old)).await.ok();
    }
}

/// A holder on this host whose process is gone died without releasing its
/// lock (e.g. SIGKILL). A reused pid only makes the lock look alive longer,
/// which delays a prune but never makes it unsafe.
fn holder_is_dead(info: &LockInfo) -> bool {
    info.pid != 0
        && info.hostname == crate::hostname()
        && !std::path::Path::new(&format!("/proc/{}", info.pid)).exists()
}

/// Every lock object, read from one listing, with what it says (`None`
/// when unreadable) and whether its holder is gone: not refreshed for
/// `STALE`, or a process on this host that no longer exists.
async fn scan(store: &Store, cipher: &Cipher) -> Result<Vec<(object_store::ObjectMeta, Option<LockInfo>, bool)>> {
    let mut out = Vec::new();
    let now = time::OffsetDateTime::now_utc();
    for meta in store.list(layout::LOCKS).await? {
        let age = now - time::OffsetDateTime::from_unix_timestamp(meta.last_modified.timestamp()).unwrap_or(now);
        if age > STALE {
            out.push((meta, None, true));
            continue;
        }
        let info: Option<LockInfo> = match store.get(&meta.location).await {
            Ok(data) => cipher
                .open_object("lock", &data, &meta.location)
                .ok()
                .and_then(|p| serde_json::from_slice(&p).ok()),
            Err(Error::Missing { .. }) => continue, // released meanwhile
            Err(e) => return Err(e),
        };
        let dead = info.as_ref().is_some_and(holder_is_dead);
        out.push((meta, info, dead));
    }
    Ok(out)
}

/// Locks not yet stale and not held by a dead local process, with their
/// object ids. Unreadable lock objects are reported as holders that have
/// seen nothing, which only makes prune wait.
pub async fn live(store: &Store, cipher: &Cipher) -> Result<Vec<(Id, LockInfo)>> {
    Ok(scan(store, cipher)
        .await?
        .into_iter()
        .filter(|(_, _, dead)| !dead)
        .filter_map(|(meta, info, _)| {
            let id = layout::id_of(&meta.location)?;
            Some((
                id,
                info.unwrap_or(LockInfo {
                    holder: id,
                    kind: LockKind::Backup,
                    hostname: "?".into(),
                    pid: 0,
                    created: String::new(),
                    plans_seen: vec![],
                }),
            ))
        })
        .collect())
}

/// Deletes locks whose holders are gone: stale ones, and those of dead
/// processes on this host. Only what one listing judged gone is deleted: a
/// lock written meanwhile belongs to a backup that has just begun (deleting
/// it would let a prune delete packs that backup is about to reference).
pub async fn remove_stale(store: &Store, cipher: &Cipher) -> Result<usize> {
    let mut n = 0;
    for (meta, _, _) in scan(store, cipher).await?.into_iter().filter(|(_, _, dead)| *dead) {
        store.delete(&meta.location).await?;
        n += 1;
    }
    Ok(n)
}
