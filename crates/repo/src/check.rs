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
use crate::pack::{BlobEntry, by_frame, chunk_in, frames_of, open_frame, read_header};
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
            Ok(frames) => {
                // Chunks are checked against their ids where the header agrees
                // with the index; otherwise each frame is at least opened.
                let agrees = frames == frames_of(&expected);
                if !agrees {
                    errors.push(format!("pack {id}: header does not match the index"));
                }
                let expected_frames: Vec<&[BlobEntry]> = if agrees {
                    by_frame(&expected).collect()
                } else {
                    Vec::new()
                };
                for (i, f) in frames.iter().enumerate() {
                    // In bounds: `read_header` checked every frame against the pack size.
                    let sealed = &data[f.offset as usize..f.offset as usize + f.length as usize];
                    let plain = open_frame(&cipher, sealed, &id, f.offset);
                    let chunks = expected_frames.get(i).copied().unwrap_or_default();
                    match plain {
                        Err(err) => errors.push(err.to_string()),
                        Ok(plain) => errors.extend(
                            chunks
                                .iter()
                                .filter_map(|e| chunk_in(&cipher, &plain, e, &id).err().map(|err| err.to_string())),
                        ),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::index::{self, PackIndex};
    use crate::{InitOptions, NoProgress, Repository, Source, Store};

    /// Replaces every index object with one listing `pack`.
    async fn replace_index(repo: &Repository, pack: PackIndex) {
        let index = Index::load(repo.store(), &repo.cipher, &IdSet::default())
            .await
            .unwrap();
        for id in index.objects.keys() {
            repo.store().delete(&layout::of(layout::INDEX, id)).await.unwrap();
        }
        index::write(repo.store(), &repo.cipher, &[pack]).await.unwrap();
    }

    /// Pack headers carry no chunk ids: `--read-data` must still find an
    /// index that names the wrong chunk, by hashing what the header locates.
    #[tokio::test]
    async fn read_data_hashes_every_chunk_against_the_index() {
        let repo = Repository::init(Store::open("memory:").unwrap(), b"pw", InitOptions::default())
            .await
            .unwrap();
        let data: Vec<u8> = (0..600_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let source = Source::new("f", std::io::Cursor::new(data));
        repo.backup(vec![source], Default::default(), Arc::new(NoProgress))
            .await
            .unwrap();
        let report = check(repo.store(), &repo.cipher, true).await.unwrap();
        assert!(report.is_ok(), "{:?}", report.errors);
        let index = Index::load(repo.store(), &repo.cipher, &IdSet::default())
            .await
            .unwrap();
        let [p] = index.packs() else {
            panic!("one pack expected")
        };
        assert!(p.blobs.len() >= 3, "several chunks: {}", p.blobs.len());
        let original = PackIndex {
            pack: p.id,
            size: p.size,
            blobs: p.blobs.clone(),
        };

        // Two chunks' ids swapped: the layout agrees, the hashes do not.
        let mut swapped = original.clone();
        let (a, b) = (swapped.blobs[0].id, swapped.blobs[1].id);
        swapped.blobs[0].id = b;
        swapped.blobs[1].id = a;
        replace_index(&repo, swapped).await;
        let report = check(repo.store(), &repo.cipher, true).await.unwrap();
        let mismatched: Vec<_> = report
            .errors
            .iter()
            .filter(|e| e.contains("content does not match its id"))
            .collect();
        assert_eq!(mismatched.len(), 2, "{:?}", report.errors);
        assert!(mismatched[0].contains(&p.id.to_hex()) && mismatched[0].contains(&b.to_hex()));

        // A chunk length the header does not record: a header mismatch.
        let mut resized = original.clone();
        resized.blobs[0].raw_len -= 1;
        replace_index(&repo, resized).await;
        let report = check(repo.store(), &repo.cipher, true).await.unwrap();
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.contains("header does not match the index")),
            "{:?}",
            report.errors
        );

        replace_index(&repo, original).await;
        assert!(check(repo.store(), &repo.cipher, true).await.unwrap().is_ok());
    }
}
