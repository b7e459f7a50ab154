//! `check`: is every snapshot restorable?
//!
//! Structure: every index object opens, every indexed pack exists with the
//! recorded size, every chunk a snapshot names is indexed. With `read_data`
//! every pack is also downloaded, its name checked against its content, its
//! header against the index, and every blob opened and hashed.

use std::collections::BTreeSet;

use futures::StreamExt;
use serde::Serialize;

use crate::crypto::Cipher;
use crate::error::Result;
use crate::id::{Id, IdSet};
use crate::index::Index;
use crate::pack::{chunk_in, open_frame, read_header};
use crate::snapshot;
use crate::storage::{Store, layout};

#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub damaged_snapshots: Vec<Id>,
    pub snapshots: usize,
    pub packs: usize,
    pub packs_read: usize,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

pub async fn check(store: &Store, cipher: &Cipher, read_data: bool) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let (index, index_errors) = Index::load_tolerant(store, cipher, &IdSet::default()).await?;
    report.errors.extend(index_errors.iter().map(|e| e.to_string()));

    let stored = layout::packs(store).await?;
    report.packs = stored.len();
    let mut bad_packs = IdSet::default();
    for p in index.packs() {
        match stored.get(&p.id) {
            None => {
                report.errors.push(format!(
                    "pack {} is listed in the index but missing from the storage",
                    p.id
                ));
                bad_packs.insert(p.id);
            }
            Some(&size) if size != p.size => {
                report
                    .errors
                    .push(format!("pack {} has {size} bytes, the index records {}", p.id, p.size));
                bad_packs.insert(p.id);
            }
            _ => {}
        }
    }
    let unindexed = stored.keys().filter(|id| index.pack(id).is_none()).count();
    if unindexed > 0 {
        report.warnings.push(format!(
            "{unindexed} pack(s) are not in any index (left by an interrupted or running backup); prune removes them"
        ));
    }

    if read_data {
        let indexed: Vec<Id> = index
            .packs()
            .iter()
            .map(|p| p.id)
            .filter(|id| stored.contains_key(id))
            .collect();
        let results: Vec<(Id, Vec<String>)> = futures::stream::iter(indexed)
            .map(|id| read_pack(store, cipher, &index, id))
            .buffer_unordered(2)
            .collect()
            .await;
        for (id, errors) in results {
            report.packs_read += 1;
            if !errors.is_empty() {
                bad_packs.insert(id);
                report.errors.extend(errors);
            }
        }
    }

    let mut damaged = BTreeSet::new();
    for (id, snap) in snapshot::load_all(store, cipher).await? {
        report.snapshots += 1;
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(format!("snapshot {id}: {e}"));
                damaged.insert(id);
                continue;
            }
        };
        let mut missing = 0usize;
        let mut in_bad = BTreeSet::new();
        for c in snap.files.iter().flat_map(|f| &f.chunks) {
            match index.get(c) {
                None => missing += 1,
                Some((p, _)) if bad_packs.contains(&p.id) => {
                    in_bad.insert(p.id);
                }
                Some(_) => {}
            }
        }
        if missing > 0 {
            report
                .errors
                .push(format!("snapshot {id}: {missing} chunk(s) are in no index"));
        }
        for p in &in_bad {
            report.errors.push(format!("snapshot {id}: needs damaged pack {p}"));
        }
        if missing > 0 || !in_bad.is_empty() {
            damaged.insert(id);
        }
    }
    report.damaged_snapshots = damaged.into_iter().collect();
    Ok(report)
}

async fn read_pack(store: &Store, cipher: &Cipher, index: &Index, id: Id) -> (Id, Vec<String>) {
    let data = match store.get(&layout::pack(&id)).await {
        Ok(d) => d,
        Err(e) => return (id, vec![e.to_string()]),
    };
    let expected: Vec<_> = index.pack(&id).map(|p| p.blobs.clone()).unwrap_or_default();
    let cipher = cipher.clone();
    let errors = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        if crate::id::Id::of_content(&data) != id {
            errors.push(format!("pack {id}: content does not match its name (damaged)"));
        }
        match read_header(&cipher, &id, &data) {
            Err(e) => errors.push(e.to_string()),
            Ok(header) => {
                if header != expected {
                    errors.push(format!("pack {id}: header does not match the index"));
                }
                let mut frame: Option<(u32, Result<Vec<u8>, String>)> = None;
                for e in &header {
                    if frame.as_ref().is_none_or(|(offset, _)| *offset != e.offset) {
                        // In bounds: `read_header` checked every entry against the pack size.
                        let sealed = &data[e.offset as usize..e.offset as usize + e.length as usize];
                        let opened = open_frame(&cipher, sealed, &id, e.offset).map_err(|err| err.to_string());
                        if let Err(err) = &opened {
                            errors.push(err.clone());
                        }
                        frame = Some((e.offset, opened));
                    }
                    if let Some((_, Ok(plain))) = &frame
                        && let Err(err) = chunk_in(&cipher, plain, e, &id)
                    {
                        errors.push(err.to_string());
                    }
                }
            }
        }
        errors
    })
    .await
    .expect("check worker panicked");
    (id, errors)
}
