//! Snapshot manifests: the commit point of a backup.
//!
//! A manifest is written only after every pack and index object it needs is
//! stored, so a snapshot that can be listed can be restored.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::storage::{Store, layout};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: Id,
    /// RFC 3339, UTC.
    pub time: String,
    pub hostname: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form labels: deployment, engine, tag, ...
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub files: Vec<FileEntry>,
    pub totals: Totals,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub mode: u32,
    pub chunks: Vec<Id>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    /// Bytes read from the sources.
    pub logical_bytes: u64,
    /// Bytes this backup added to the storage (packs and index objects).
    pub new_bytes_stored: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub packs: u64,
}

impl Snapshot {
    pub fn file(&self, name: &str) -> Result<&FileEntry> {
        self.files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| Error::FileNotFound {
                snapshot: self.id.to_hex(),
                file: name.into(),
            })
    }
}

pub async fn write(store: &Store, cipher: &Cipher, snap: &Snapshot) -> Result<()> {
    let sealed = cipher.seal_object("snapshot", &serde_json::to_vec(snap).expect("serializable"));
    store
        .put_new(&layout::of(layout::SNAPSHOTS, &snap.id), Bytes::from(sealed))
        .await?;
    Ok(())
}

pub async fn load(store: &Store, cipher: &Cipher, id: &Id) -> Result<Snapshot> {
    let path = layout::of(layout::SNAPSHOTS, id);
    let data = store.get(&path).await.map_err(|e| match e {
        Error::Missing { .. } => Error::SnapshotNotFound(id.to_hex()),
        e => e,
    })?;
    let plain = cipher.open_object("snapshot", &data, &path)?;
    let snap: Snapshot = serde_json::from_slice(&plain).map_err(|e| Error::corrupt(&path, e))?;
    if snap.id != *id {
        return Err(Error::corrupt(&path, format!("manifest claims id {}", snap.id)));
    }
    Ok(snap)
}

pub async fn list_ids(store: &Store) -> Result<Vec<Id>> {
    Ok(store
        .list(layout::SNAPSHOTS)
        .await?
        .iter()
        .filter_map(|m| layout::id_of(&m.location))
        .collect())
}

/// Loads every snapshot, oldest first. A snapshot that cannot be read is
/// returned as an error next to its id rather than failing the listing.
pub async fn load_all(store: &Store, cipher: &Cipher) -> Result<Vec<(Id, Result<Snapshot>)>> {
    let ids = list_ids(store).await?;
    let mut out: Vec<(Id, Result<Snapshot>)> = futures::stream::iter(ids)
        .map(|id| async move { (id, load(store, cipher, &id).await) })
        .buffer_unordered(16)
        .collect()
        .await;
    out.sort_by(|a, b| match (&a.1, &b.1) {
        (Ok(x), Ok(y)) => x.time.cmp(&y.time).then(x.id.cmp(&y.id)),
        _ => a.0.cmp(&b.0),
    });
    Ok(out)
}

/// Loads every readable snapshot, oldest first; fails on the first unreadable one.
pub async fn load_all_ok(store: &Store, cipher: &Cipher) -> Result<Vec<Snapshot>> {
    load_all(store, cipher)
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Result<Vec<_>>>()
        .map(|mut v| {
            v.sort_by(|x, y| x.time.cmp(&y.time).then(x.id.cmp(&y.id)));
            v
        })
}
