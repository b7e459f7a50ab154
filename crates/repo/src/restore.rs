//! Restore: chunks are fetched as ranges of their packs (adjacent frames
//! coalesced into one request); each frame is opened once (AEAD tag,
//! decompression) and each chunk verified against its keyed hash, on
//! blocking threads, several ranges in flight at once.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{Index, Location};
use crate::pack::{BlobEntry, chunk_in, open_frame};
use crate::progress::Progress;
use crate::snapshot::FileEntry;
use crate::storage::{Store, layout};

/// Requests are merged while the range stays below this size.
const MAX_RANGE: u64 = 8 << 20;
/// Unneeded bytes tolerated between two needed blobs of one range.
const MAX_GAP: u64 = 64 << 10;

/// Consecutive chunks of a file that lie close together in one pack.
struct Segment {
    pack: Id,
    start: u64,
    end: u64,
    /// (chunk, where in the pack, where in the file)
    chunks: Vec<(Id, Location, u64)>,
}

fn segments(index: &Index, file: &FileEntry) -> Result<Vec<Segment>> {
    let mut out: Vec<Segment> = Vec::new();
    let mut file_offset = 0u64;
    for id in &file.chunks {
        let (pack, loc) = index.get(id).ok_or_else(|| Error::Missing {
            object: format!("chunk {id} of file {:?}", file.name),
        })?;
        let (start, end) = (u64::from(loc.offset), u64::from(loc.offset) + u64::from(loc.length));
        match out.last_mut() {
            // Another chunk of a frame this segment already fetches.
            Some(s) if s.pack == pack.id && start >= s.start && end <= s.end => s.chunks.push((*id, loc, file_offset)),
            Some(s) if s.pack == pack.id && start >= s.end && start - s.end <= MAX_GAP && end - s.start <= MAX_RANGE => {
                s.end = end;
                s.chunks.push((*id, loc, file_offset));
            }
            _ => out.push(Segment {
                pack: pack.id,
                start,
                end,
                chunks: vec![(*id, loc, file_offset)],
            }),
        }
        file_offset += u64::from(loc.raw_len);
    }
    if file_offset != file.size {
        return Err(Error::corrupt(
            format!("file {:?}", file.name),
            format!("chunks add up to {file_offset} bytes but the snapshot records {}", file.size),
        ));
    }
    Ok(out)
}

/// Fetches a segment and returns its chunks' plaintexts with file offsets.
async fn fetch(store: &Store, cipher: &Cipher, seg: Segment) -> Result<Vec<(u64, Vec<u8>)>> {
    let data = store.get_range(&layout::pack(&seg.pack), seg.start..seg.end).await?;
    let cipher = cipher.clone();
    tokio::task::spawn_blocking(move || {
        let mut frame: Option<(u32, Vec<u8>)> = None;
        seg.chunks
            .iter()
            .map(|(id, loc, at)| {
                if frame.as_ref().is_none_or(|(offset, _)| *offset != loc.offset) {
                    let from = (u64::from(loc.offset) - seg.start) as usize;
                    let sealed = data.get(from..from + loc.length as usize).ok_or_else(|| {
                        Error::corrupt(format!("pack {}", seg.pack), "shorter than its index says")
                    })?;
                    frame = Some((loc.offset, open_frame(&cipher, sealed, &seg.pack, loc.offset)?));
                }
                let (_, plain) = frame.as_ref().expect("just opened");
                let entry = BlobEntry {
                    id: *id,
                    offset: loc.offset,
                    length: loc.length,
                    start: loc.start,
                    raw_len: loc.raw_len,
                };
                Ok((*at, chunk_in(&cipher, plain, &entry, &seg.pack)?.to_vec()))
            })
            .collect()
    })
    .await
    .expect("restore worker panicked")
}

fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// Restores one file to `dest`, writing chunks at their offsets as they arrive.
pub async fn to_path(store: &Store, cipher: &Cipher, index: &Index, file: &FileEntry, dest: &std::path::Path, progress: &dyn Progress) -> Result<()> {
    let segs = segments(index, file)?;
    progress.start(&file.name, Some(file.size));
    let out = std::fs::File::create(dest).map_err(|e| Error::io(dest.display(), e))?;
    out.set_len(file.size).map_err(|e| Error::io(dest.display(), e))?;
    let out = Arc::new(out);
    futures::stream::iter(segs)
        .map(|seg| fetch(store, cipher, seg))
        .buffer_unordered(parallelism())
        .try_for_each(|chunks| {
            let out = out.clone();
            async move {
                let bytes: u64 = chunks.iter().map(|(_, d)| d.len() as u64).sum();
                tokio::task::spawn_blocking(move || {
                    for (at, data) in chunks {
                        out.write_all_at(&data, at).map_err(|e| Error::io("restore target", e))?;
                    }
                    Ok::<_, Error>(())
                })
                .await
                .expect("writer panicked")?;
                progress.advance(bytes, 0);
                Ok(())
            }
        })
        .await?;
    out.sync_all().map_err(|e| Error::io(dest.display(), e))
}

/// Restores one file as an ordered stream (for stdout or a pipe).
pub async fn to_writer(store: &Store, cipher: &Cipher, index: &Index, file: &FileEntry, mut w: impl Write, progress: &dyn Progress) -> Result<()> {
    let segs = segments(index, file)?;
    progress.start(&file.name, Some(file.size));
    let mut stream = futures::stream::iter(segs)
        .map(|seg| fetch(store, cipher, seg))
        .buffered(parallelism());
    while let Some(chunks) = stream.try_next().await? {
        for (_, data) in chunks {
            w.write_all(&data).map_err(|e| Error::io("restore output", e))?;
            progress.advance(data.len() as u64, 0);
        }
    }
    w.flush().map_err(|e| Error::io("restore output", e))
}

/// Rejects names that would escape the restore directory.
pub fn safe_relative(name: &str) -> Result<&std::path::Path> {
    let p = std::path::Path::new(name);
    let ok = !name.is_empty() && p.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(p)
    } else {
        Err(Error::Invalid(format!("snapshot file name {name:?} is not a safe relative path")))
    }
}
