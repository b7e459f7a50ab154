//! `forget` and `prune`: dropping snapshots and reclaiming their space
//! while other processes keep backing up into the same repository.
//!
//! Prune runs in two phases:
//! 1. *Plan*: packs holding no chunk any snapshot needs, mostly-empty packs
//!    (after their live chunks are copied into new packs), and packs no
//!    index knows (left by killed backups) are written to a plan object
//!    under `plans/`. Nothing is deleted yet.
//! 2. *Finish*, once every live lock has seen the plan (see `lock`): the
//!    snapshots and index are read afresh; a planned pack that a snapshot
//!    now needs (a backup that began before the plan may have deduplicated
//!    against it) is spared. Then, in reverse write order, index entries go
//!    first, the packs next, the plan last. A crash at any point leaves
//!    either the plan to finish again or nothing to do.
//!
//! With no backup running, both phases happen in one `prune` call.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::id::{Id, IdSet};
use crate::index::{self, Index, PackIndex};
use crate::lock::{self, Lock, LockKind};
use crate::pack::{BlobEntry, PackBuilder, by_frame};
use crate::snapshot;
use crate::storage::{Store, layout};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub id: Id,
    pub created: String,
    pub condemned: Vec<Id>,
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub packs_condemned: usize,
    pub packs_repacked: usize,
    pub packs_deleted: usize,
    pub packs_spared: usize,
    pub bytes_deleted: u64,
    pub plans_finished: usize,
    /// Plans waiting for backups that started before them.
    pub plans_waiting: usize,
    pub stale_locks_removed: usize,
}

pub struct PruneOptions {
    /// Packs whose live bytes fall below this fraction are repacked.
    pub repack_below: f64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { repack_below: 0.5 }
    }
}

pub async fn load_plans(store: &Store, cipher: &Cipher) -> Result<Vec<Plan>> {
    let mut out = Vec::new();
    for meta in store.list(layout::PLANS).await? {
        let data = match store.get(&meta.location).await {
            Ok(d) => d,
            Err(Error::Missing { .. }) => continue, // finished meanwhile
            Err(e) => return Err(e),
        };
        let plain = cipher.open_object("plan", &data, &meta.location)?;
        out.push(serde_json::from_slice(&plain).map_err(|e| Error::corrupt(&meta.location, e))?);
    }
    Ok(out)
}

pub fn condemned(plans: &[Plan]) -> IdSet {
    plans.iter().flat_map(|p| p.condemned.iter().copied()).collect()
}

/// Deletes the given snapshots. Their data stays until `prune`.
pub async fn forget(store: &Store, ids: &[Id]) -> Result<()> {
    for id in ids {
        store.delete(&layout::of(layout::SNAPSHOTS, id)).await?;
    }
    Ok(())
}

async fn referenced(store: &Store, cipher: &Cipher) -> Result<IdSet> {
    // An unreadable snapshot could hide references: refuse rather than guess.
    let snaps = snapshot::load_all_ok(store, cipher).await?;
    Ok(snaps
        .iter()
        .flat_map(|s| s.files.iter().flat_map(|f| f.chunks.iter().copied()))
        .collect())
}

pub async fn prune(store: &Store, cipher: &Cipher, pack_size: usize, opts: &PruneOptions) -> Result<PruneReport> {
    let lock = Lock::acquire(store, cipher, LockKind::Prune, || async {
        Ok(load_plans(store, cipher).await?.iter().map(|p| p.id).collect())
    })
    .await?;
    let result = prune_locked(store, cipher, pack_size, opts, &lock).await;
    lock.release().await?;
    result
}

async fn prune_locked(
    store: &Store,
    cipher: &Cipher,
    pack_size: usize,
    opts: &PruneOptions,
    lock: &Lock,
) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    if let Some((_, other)) = lock::live(store, cipher)
        .await?
        .into_iter()
        .find(|(_, l)| l.kind == LockKind::Prune && l.holder != lock.info.holder)
    {
        return Err(Error::Invalid(format!(
            "another prune is running (host {}, pid {}); try again when it is done",
            other.hostname, other.pid
        )));
    }
    report.stale_locks_removed = lock::remove_stale(store, cipher).await?;

    let mut plans = load_plans(store, cipher).await?;
    if let Some(plan) = plan(store, cipher, pack_size, opts, &plans, &mut report).await? {
        plans.push(plan);
    }
    // Listed once, after every plan here was written: a lock created later
    // read the plans after it was written, so it has seen them all.
    let live = lock::live(store, cipher).await?;
    for plan in plans {
        let waiting = live
            .iter()
            .any(|(_, l)| l.holder != lock.info.holder && !l.plans_seen.contains(&plan.id));
        if waiting {
            report.plans_waiting += 1;
        } else {
            finish(store, cipher, &plan, &mut report).await?;
            report.plans_finished += 1;
        }
    }
    consolidate_index(store, cipher).await?;
    Ok(report)
}

/// Phase 1. Returns the plan written, if there was anything to condemn.
async fn plan(
    store: &Store,
    cipher: &Cipher,
    pack_size: usize,
    opts: &PruneOptions,
    plans: &[Plan],
    report: &mut PruneReport,
) -> Result<Option<Plan>> {
    let already = condemned(plans);
    let wanted = referenced(store, cipher).await?;
    let index = Index::load(store, cipher, &already).await?;
    let mut kept = IdSet::default();
    let mut doomed = Vec::new();
    // Packs this run writes are not yet in `index`: not to be taken for orphans.
    let mut written = IdSet::default();
    let mut repack = PackBuilder::default();
    for p in index.packs().iter().filter(|p| !p.condemned) {
        let live: Vec<_> = p
            .blobs
            .iter()
            .filter(|b| wanted.contains(&b.id) && kept.insert(b.id))
            .collect();
        // Frames are the unit of storage: a frame with one live chunk is live.
        let frame_bytes = |blobs: &mut dyn Iterator<Item = &BlobEntry>| {
            let frames: std::collections::BTreeMap<u32, u32> = blobs.map(|b| (b.offset, b.length)).collect();
            frames.values().map(|&l| u64::from(l)).sum::<u64>()
        };
        let live_bytes = frame_bytes(&mut live.iter().copied());
        let all_bytes = frame_bytes(&mut p.blobs.iter());
        if live.is_empty() {
            doomed.push(p.id);
        } else if (live_bytes as f64) < opts.repack_below * all_bytes as f64 {
            // Frames move whole (they are sealed as a unit), carrying only
            // the entries of their live chunks.
            let data = store.get(&layout::pack(&p.id)).await?;
            for chunks in by_frame(&live) {
                let (offset, length) = (chunks[0].offset as usize, chunks[0].length as usize);
                let sealed = data
                    .get(offset..offset + length)
                    .ok_or_else(|| Error::corrupt(format!("pack {}", p.id), "shorter than its index says"))?;
                repack.add_frame(sealed, chunks.iter().map(|b| **b));
                if repack.len() >= pack_size {
                    written.insert(upload(store, cipher, std::mem::take(&mut repack)).await?);
                }
            }
            report.packs_repacked += 1;
            doomed.push(p.id);
        }
    }
    if !repack.is_empty() {
        written.insert(upload(store, cipher, repack).await?);
    }
    for id in layout::packs(store).await?.into_keys() {
        if index.pack(&id).is_none() && !already.contains(&id) && !written.contains(&id) {
            doomed.push(id);
        }
    }
    if doomed.is_empty() {
        return Ok(None);
    }
    report.packs_condemned = doomed.len();
    let plan = Plan {
        id: Id::random(),
        created: crate::now_rfc3339(),
        condemned: doomed,
    };
    let sealed = cipher.seal_object("plan", &serde_json::to_vec(&plan).expect("serializable"));
    store
        .put_new(&layout::of(layout::PLANS, &plan.id), Bytes::from(sealed))
        .await?;
    Ok(Some(plan))
}

async fn upload(store: &Store, cipher: &Cipher, pack: PackBuilder) -> Result<Id> {
    let pack = pack.finish(cipher);
    let size = pack.data.len() as u64;
    store.put_new(&layout::pack(&pack.id), pack.data).await?;
    index::write(
        store,
        cipher,
        &[PackIndex {
            pack: pack.id,
            size,
            blobs: pack.entries.clone(),
        }],
    )
    .await?;
    Ok(pack.id)
}

/// Phase 2.
async fn finish(store: &Store, cipher: &Cipher, plan: &Plan, report: &mut PruneReport) -> Result<()> {
    let wanted = referenced(store, cipher).await?;
    let doomed: IdSet = plan.condemned.iter().copied().collect();
    let index = Index::load(store, cipher, &doomed).await?;
    let sizes = layout::packs(store).await?;
    let mut delete = IdSet::default();
    for id in &plan.condemned {
        // `Index::get` prefers a copy outside the plan; if the copy it finds
        // is condemned, there is no other.
        let needed = index.pack(id).is_some_and(|p| {
            p.blobs
                .iter()
                .any(|b| wanted.contains(&b.id) && index.get(&b.id).is_none_or(|(q, _)| q.condemned))
        });
        if needed {
            report.packs_spared += 1;
        } else {
            delete.insert(*id);
        }
    }
    // Index entries first: rewrite every index object that names a pack
    // about to go, without those packs.
    let mut keep = Vec::new();
    let mut obsolete = Vec::new();
    for (object, packs) in &index.objects {
        if packs.iter().any(|p| delete.contains(p)) {
            obsolete.push(*object);
            keep.extend(
                packs
                    .iter()
                    .filter(|p| !delete.contains(p))
                    .filter_map(|p| index.pack(p))
                    .map(|p| PackIndex {
                        pack: p.id,
                        size: p.size,
                        blobs: p.blobs.clone(),
                    }),
            );
        }
    }
    if !keep.is_empty() {
        index::write(store, cipher, &keep).await?;
    }
    for object in obsolete {
        store.delete(&layout::of(layout::INDEX, &object)).await?;
    }
    for id in &delete {
        store.delete(&layout::pack(id)).await?;
        report.bytes_deleted += sizes.get(id).copied().unwrap_or(0);
        report.packs_deleted += 1;
    }
    store.delete(&layout::of(layout::PLANS, &plan.id)).await
}

/// Backups write one index object per pack; merge them into one.
async fn consolidate_index(store: &Store, cipher: &Cipher) -> Result<()> {
    let index = Index::load(store, cipher, &IdSet::default()).await?;
    if index.objects.len() <= 1 {
        return Ok(());
    }
    let all: Vec<PackIndex> = index
        .packs()
        .iter()
        .map(|p| PackIndex {
            pack: p.id,
            size: p.size,
            blobs: p.blobs.clone(),
        })
        .collect();
    let (new, _) = index::write(store, cipher, &all).await?;
    for object in index.objects.keys().filter(|o| **o != new) {
        store.delete(&layout::of(layout::INDEX, object)).await?;
    }
    Ok(())
}
