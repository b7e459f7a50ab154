//! The index: which pack holds each chunk.
//!
//! Backups write one small index object per pack right after the pack, so a
//! backup killed at any moment leaves every uploaded pack findable and the
//! next backup reuses its chunks, but for a pack whose index object the
//! kill forestalled: a resumed copy indexes those from their own bytes
//! (`copy`), prune removes them otherwise. `prune` consolidates the index.

use bytes::Bytes;
use futures::StreamExt;

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::id::{Id, IdMap, IdSet};
use crate::pack::{BlobEntry, take_u32};
use crate::storage::{Store, layout};

/// One pack's entries as recorded in an index object.
#[derive(Clone, Debug, PartialEq)]
pub struct PackIndex {
    pub pack: Id,
    pub size: u64,
    pub blobs: Vec<BlobEntry>,
}

#[derive(Clone, Copy, Debug)]
pub struct Location {
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub start: u32,
    pub raw_len: u32,
}

/// All index objects, merged in memory.
#[derive(Default)]
pub struct Index {
    packs: Vec<PackInfo>,
    pack_pos: IdMap<u32>,
    blobs: IdMap<Location>,
    /// Index object id -> packs it lists.
    pub objects: IdMap<Vec<Id>>,
}

#[derive(Clone, Debug)]
pub struct PackInfo {
    pub id: Id,
    pub size: u64,
    /// Scheduled for deletion by a prune plan; not used for deduplication.
    pub condemned: bool,
    pub blobs: Vec<BlobEntry>,
}

pub fn encode(packs: &[PackIndex]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        out.extend_from_slice(&p.pack.0);
        out.extend_from_slice(&p.size.to_le_bytes());
        out.extend_from_slice(&encode_entries(&p.blobs));
    }
    out
}

pub fn decode(mut input: &[u8], object: &dyn std::fmt::Display) -> Result<Vec<PackIndex>> {
    let input = &mut input;
    let count = take_u32(input, object)?;
    let mut out = Vec::new();
    for _ in 0..count {
        if input.len() < 40 {
            return Err(Error::corrupt(object, "truncated"));
        }
        let pack = Id::from_slice(&input[..32]).expect("32 bytes");
        let size = u64::from_le_bytes(input[32..40].try_into().expect("8 bytes"));
        *input = &input[40..];
        let blobs = decode_entries(input, object)?;
        out.push(PackIndex { pack, size, blobs });
    }
    Ok(out)
}

const ENTRY_LEN: usize = 32 + 4 * 4;

fn encode_entries(entries: &[BlobEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.extend_from_slice(&e.start.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
    }
    out
}

/// Reads entries written by `encode_entries`, advancing `input`.
fn decode_entries(input: &mut &[u8], object: &dyn std::fmt::Display) -> Result<Vec<BlobEntry>> {
    let count = take_u32(input, object)? as usize;
    if input.len() < count.saturating_mul(ENTRY_LEN) {
        return Err(Error::corrupt(object, format!("truncated: {count} entries announced")));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let id = Id::from_slice(&input[..32]).expect("32 bytes");
        *input = &input[32..];
        out.push(BlobEntry {
            id,
            offset: take_u32(input, object)?,
            length: take_u32(input, object)?,
            start: take_u32(input, object)?,
            raw_len: take_u32(input, object)?,
        });
    }
    Ok(out)
}

/// Seals and stores one index object; returns its id and size.
pub async fn write(store: &Store, cipher: &Cipher, packs: &[PackIndex]) -> Result<(Id, u64)> {
    let sealed = cipher.seal_object("index", &encode(packs));
    let id = Id::of_content(&sealed);
    let len = sealed.len() as u64;
    store
        .put_new(&layout::of(layout::INDEX, &id), Bytes::from(sealed))
        .await?;
    Ok((id, len))
}

/// Index objects already read, by id. An index object's name is the hash
/// of its sealed content, so a cached one can never be stale: a load lists
/// the store and reads only the names it has not seen (a server that has
/// made thousands of backups otherwise re-reads and decodes every index
/// object for each new one); names gone from the listing are dropped.
#[derive(Default)]
pub struct IndexCache(std::sync::Mutex<IdMap<std::sync::Arc<Vec<PackIndex>>>>);

impl Index {
    /// Loads every index object. Chunks in `condemned` packs stay findable
    /// (for restore) but are not offered for deduplication.
    pub async fn load(store: &Store, cipher: &Cipher, condemned: &IdSet) -> Result<Index> {
        Self::load_cached(store, cipher, condemned, None).await
    }

    /// `load`, reading only the index objects `cache` lacks.
    pub async fn load_cached(
        store: &Store,
        cipher: &Cipher,
        condemned: &IdSet,
        cache: Option<&IndexCache>,
    ) -> Result<Index> {
        let (index, mut errors) = Self::read(store, cipher, condemned, cache).await?;
        match errors.pop() {
            Some(e) => Err(e),
            None => Ok(index),
        }
    }

    /// Loads what can be read, and returns one error per unreadable object
    /// (for `check`, which must name them all rather than stop at the first).
    pub async fn load_tolerant(store: &Store, cipher: &Cipher, condemned: &IdSet) -> Result<(Index, Vec<Error>)> {
        Self::read(store, cipher, condemned, None).await
    }

    /// Prune merges index objects (`consolidate_index`): it writes the
    /// merged object, then deletes the parts, while a backup may be loading
    /// them. A part gone between listing and reading is no loss, then: its
    /// entries are in an object written before it was deleted, which a
    /// fresh listing finds. So such a load lists again (a few times, in
    /// case prunes follow each other).
    async fn read(
        store: &Store,
        cipher: &Cipher,
        condemned: &IdSet,
        cache: Option<&IndexCache>,
    ) -> Result<(Index, Vec<Error>)> {
        let mut tries = 0;
        loop {
            let (index, errors) = Self::read_once(store, cipher, condemned, cache).await?;
            tries += 1;
            if tries < 4 && errors.iter().any(|e| matches!(e, Error::Missing { .. })) {
                continue;
            }
            return Ok((index, errors));
        }
    }

    async fn read_once(
        store: &Store,
        cipher: &Cipher,
        condemned: &IdSet,
        cache: Option<&IndexCache>,
    ) -> Result<(Index, Vec<Error>)> {
        let listed: Vec<_> = store
            .list(layout::INDEX)
            .await?
            .into_iter()
            .filter_map(|meta| layout::id_of(&meta.location).map(|id| (id, meta)))
            .collect();
        let mut known = IdMap::default();
        if let Some(cache) = cache {
            let names: IdSet = listed.iter().map(|(id, _)| *id).collect();
            let mut cached = cache.0.lock().expect("index cache");
            cached.retain(|id, _| names.contains(id));
            known = cached.clone();
        }
        let loaded: Vec<Result<(Id, std::sync::Arc<Vec<PackIndex>>)>> = futures::stream::iter(listed)
            .filter(|(id, _)| std::future::ready(!known.contains_key(id)))
            .map(|(id, meta)| async move {
                let data = store.get(&meta.location).await?;
                let plain = cipher.open_object("index", &data, &meta.location)?;
                Ok((id, std::sync::Arc::new(decode(&plain, &meta.location)?)))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut errors = Vec::new();
        let mut fresh = Vec::new();
        for item in loaded {
            match item {
                Ok(found) => fresh.push(found),
                Err(e) => errors.push(e),
            }
        }
        if let Some(cache) = cache {
            cache.0.lock().expect("index cache").extend(fresh.iter().cloned());
        }
        let mut index = Index::default();
        for (id, packs) in known.into_iter().chain(fresh) {
            index.objects.insert(id, packs.iter().map(|p| p.pack).collect());
            for p in packs.iter() {
                index.add_pack(p.clone(), condemned.contains(&p.pack));
            }
        }
        Ok((index, errors))
    }

    fn add_pack(&mut self, p: PackIndex, condemned: bool) {
        if self.pack_pos.contains_key(&p.pack) {
            return;
        }
        let pos = self.packs.len() as u32;
        for b in &p.blobs {
            let loc = Location {
                pack: pos,
                offset: b.offset,
                length: b.length,
                start: b.start,
                raw_len: b.raw_len,
            };
            // A live copy wins over a condemned one; the first copy wins
            // otherwise (also when a damaged pack lists a chunk twice).
            let keep_old = self
                .blobs
                .get(&b.id)
                .is_some_and(|old| self.packs.get(old.pack as usize).is_none_or(|p| !p.condemned) || condemned);
            if !keep_old {
                self.blobs.insert(b.id, loc);
            }
        }
        self.pack_pos.insert(p.pack, pos);
        self.packs.push(PackInfo {
            id: p.pack,
            size: p.size,
            condemned,
            blobs: p.blobs,
        });
    }

    pub fn get(&self, id: &Id) -> Option<(&PackInfo, Location)> {
        self.blobs.get(id).map(|l| (&self.packs[l.pack as usize], *l))
    }

    /// True when `id` is stored in a pack that is not scheduled for deletion.
    pub fn has_live(&self, id: &Id) -> bool {
        self.get(id).is_some_and(|(p, _)| !p.condemned)
    }

    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    pub fn pack(&self, id: &Id) -> Option<&PackInfo> {
        self.pack_pos.get(id).map(|&p| &self.packs[p as usize])
    }

    pub fn chunk_count(&self) -> usize {
        self.blobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trip_and_truncation() {
        let packs = vec![PackIndex {
            pack: Id::random(),
            size: 1234,
            blobs: vec![BlobEntry {
                id: Id::random(),
                offset: 0,
                length: 100,
                start: 20,
                raw_len: 300,
            }],
        }];
        let enc = encode(&packs);
        assert_eq!(decode(&enc, &"t").unwrap(), packs);
        assert!(decode(&enc[..enc.len() - 3], &"t").is_err());
    }
}
