//! WAL archives: PostgreSQL's write-ahead log files (segments, timeline
//! histories, backup history files), one sealed object each under
//! `wal/ARCHIVE/NAME`, one archive per cluster (two clusters' segments
//! share names). Deduplication does not help WAL; compression does, and the
//! object is sealed like any other, with its name as associated data so
//! that one file cannot be passed off as another.
//!
//! Archiving is idempotent and never overwrites: an object is created only
//! if absent (`Store::create_exclusive`, on stores that ignore create-only
//! puts too), so a push retried after a crash finds either nothing (and
//! stores) or its own complete earlier copy (and succeeds); different
//! content under an archived name is an error PostgreSQL sees.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::storage::Store;

pub const WAL: &str = "wal";

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Stored; `bytes` is the size of the sealed object.
    Stored { bytes: u64 },
    /// The same content was archived already (a retried push).
    AlreadyArchived,
}

/// An archived WAL file.
#[derive(Debug, Clone)]
pub struct WalFile {
    pub name: String,
    /// Size of the sealed object.
    pub stored_bytes: u64,
    /// When it was archived (as precisely as the store keeps it).
    pub archived_at: time::OffsetDateTime,
}

pub(crate) fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 64
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !part.starts_with('.')
}

/// Where an archive's files live: `wal/ARCHIVE`, where ARCHIVE is one or
/// more `/`-separated names (the server uses `DOMAIN/DEPLOYMENT`).
fn folder(archive: &str) -> Result<String> {
    if !archive.split('/').all(valid_part) {
        return Err(Error::Invalid(format!(
            "{archive:?} is not a WAL archive name ('/'-separated letters, digits, '.', '_', '-')"
        )));
    }
    Ok(format!("{WAL}/{archive}"))
}

/// The object's path, which is also the associated data it is sealed with.
fn path(archive: &str, name: &str) -> Result<String> {
    if !valid_part(name) {
        return Err(Error::Invalid(format!(
            "{name:?} is not a WAL file name (letters, digits, '.', '_', '-')"
        )));
    }
    Ok(format!("{}/{name}", folder(archive)?))
}

/// The object: the content's keyed hash, then the content, sealed.
/// zstd's level for streamed tails.
const STREAMED_LEVEL: i32 = -3;

fn seal(cipher: &Cipher, path: &str, content: &Id, data: &[u8], level: i32) -> Vec<u8> {
    let mut plain = Vec::with_capacity(32 + data.len());
    plain.extend_from_slice(&content.0);
    plain.extend_from_slice(data);
    cipher.seal_object_at(path, &plain, level)
}

/// Opens an archived object: its content hash and content, verified.
fn open(cipher: &Cipher, path: &str, object: &[u8]) -> Result<(Id, Vec<u8>)> {
    let what = format!("WAL file {path}");
    let mut plain = cipher.open_object(path, object, &what)?;
    if plain.len() < 32 {
        return Err(Error::corrupt(&what, "shorter than its header"));
    }
    let id = Id::from_slice(&plain[..32]).ok_or_else(|| Error::corrupt(&what, "bad content hash"))?;
    // In place: a segment is 16 MiB, and a second buffer of it costs more
    // in page faults than the copy itself.
    plain.drain(..32);
    let data = plain;
    if cipher.chunk_id(&data) != id {
        return Err(Error::corrupt(&what, "content does not match its hash"));
    }
    Ok((id, data))
}

pub async fn push(store: &Store, cipher: &Cipher, archive: &str, name: &str, data: &[u8]) -> Result<Pushed> {
    let path = path(archive, name)?;
    // Hashed once: the id goes into the sealed object and names it to
    // `create_exclusive` (a segment is 16 MiB).
    let content = cipher.chunk_id(data);
    let sealed = seal(cipher, &path, &content, data, crate::crypto::OBJECT_LEVEL);
    let bytes = sealed.len() as u64;
    let location = object_store::path::Path::from(path.as_str());
    if store
        .create_exclusive(&location, Bytes::from(sealed), &content.to_hex())
        .await?
    {
        return Ok(Pushed::Stored { bytes });
    }
    let Some(existing) = store.get_if_exists(&location).await? else {
        return Err(Error::Invalid(format!(
            "another writer is archiving a different {name} right now; refusing to race it (two clusters \
             archiving into one repository?)"
        )));
    };
    let (id, _) = open(cipher, &path, &existing)?;
    if id == content {
        Ok(Pushed::AlreadyArchived)
    } else {
        Err(Error::Invalid(format!(
            "a different {name} is already archived; refusing to overwrite it (two clusters archiving into one \
             repository, or a cluster restored without a new timeline?)"
        )))
    }
}

/// The streamed copy of a WAL file (`NAME.streamed`: a segment's growing
/// tail, replaced at each call), sealed like an archived file; planning
/// and replay read it where NAME is not archived.
pub async fn put_streamed(store: &Store, cipher: &Cipher, archive: &str, name: &str, data: &[u8]) -> Result<u64> {
    let path = path(archive, &format!("{name}{STREAMED_TAIL}"))?;
    if let Some(root) = store.local_root() {
        share_archive_dir(root, archive);
    }
    put_fast(store, cipher, &path, data).await
}

/// Stores what streaming writes: rewritten while its segment fills, and
/// deleted once the segment is archived, so sealed fast rather than small.
async fn put_fast(store: &Store, cipher: &Cipher, path: &str, data: &[u8]) -> Result<u64> {
    let sealed = seal(cipher, path, &cipher.chunk_id(data), data, STREAMED_LEVEL);
    let bytes = sealed.len() as u64;
    store
        .put(&object_store::path::Path::from(path), Bytes::from(sealed))
        .await?;
    Ok(bytes)
}

/// A piece of a streamed copy (`NAME.streamed.OFFSET`, OFFSET eight hex
/// digits): the tail's bytes from OFFSET on, stored as they arrive so
/// that a synchronous standby's commit waits for a few kilobytes sealed,
/// not for the whole tail again. The copy (`NAME.streamed`) is read with
/// its pieces spliced on (`fetch`); listings show the copy alone, and
/// removing the copy removes its pieces.
pub async fn put_streamed_piece(
    store: &Store,
    cipher: &Cipher,
    archive: &str,
    name: &str,
    offset: u64,
    data: &[u8],
) -> Result<u64> {
    put_fast(store, cipher, &path(archive, &piece_name(name, offset))?, data).await
}

/// The name of the piece of `name`'s streamed copy from `offset` on.
pub fn piece_name(name: &str, offset: u64) -> String {
    format!("{name}{STREAMED_TAIL}.{offset:08X}")
}

/// The streamed copy a piece belongs to, and its offset.
pub fn piece_of(name: &str) -> Option<(&str, u64)> {
    let (copy, offset) = name.rsplit_once('.')?;
    if !copy.ends_with(STREAMED_TAIL) || offset.len() != 8 {
        return None;
    }
    Some((copy, u64::from_str_radix(offset, 16).ok()?))
}

/// The pieces of streamed copies in the archive (names as listed), by
/// copy, in offset order.
async fn pieces(store: &Store, archive: &str) -> Result<BTreeMap<String, Vec<(u64, String)>>> {
    let folder = folder(archive)?;
    let mut out: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for m in store.list(&folder).await? {
        let Some(name) = m
            .location
            .as_ref()
            .strip_prefix(&folder)
            .and_then(|n| n.strip_prefix('/'))
        else {
            continue;
        };
        if let Some((copy, offset)) = piece_of(name) {
            out.entry(copy.to_string())
                .or_default()
                .push((offset, name.to_string()));
        }
    }
    for list in out.values_mut() {
        list.sort();
    }
    Ok(out)
}

/// The archive and the file name of a WAL object's path (`wal/ARCHIVE/NAME`).
pub fn archive_and_name(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix(WAL)?.strip_prefix('/')?.rsplit_once('/')
}

/// On local disk, the archive's directory made with the repository root's
/// owner and group. The server stores streamed tails where PostgreSQL's
/// `archive_command` (run as the database's OS user, which owns the
/// repository as the set-up says) stores archived segments: whichever
/// writes there first, both must be able to. Best effort: a server that
/// may not give files away leaves them as the store makes them.
fn share_archive_dir(root: &std::path::Path, archive: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(owner) = std::fs::metadata(root) else { return };
    let mut dir = root.to_path_buf();
    for part in std::iter::once(WAL).chain(archive.split('/')) {
        dir.push(part);
        if !dir.exists() && std::fs::create_dir(&dir).is_ok() {
            let _ = std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid()));
        }
    }
}

/// What a streamed segment's tail is stored as, beside its name (not
/// `.partial`, which PostgreSQL archives itself at a promotion).
pub const STREAMED_TAIL: &str = ".streamed";

/// The content of an archived file, verified; `None` if it is not archived.
pub async fn fetch(store: &Store, cipher: &Cipher, archive: &str, name: &str) -> Result<Option<Vec<u8>>> {
    let path = path(archive, name)?;
    let get = |path: String| async move {
        match store
            .get_if_exists(&object_store::path::Path::from(path.as_str()))
            .await?
        {
            None => Ok::<_, Error>(None),
            Some(object) => Ok(Some(open(cipher, &path, &object)?.1)),
        }
    };
    let Some(mut data) = get(path).await? else {
        return Ok(None);
    };
    if name.ends_with(STREAMED_TAIL) {
        // Its pieces, as far as they follow on without a gap (one removed
        // since listed ends it there: the copy replacing them is newer).
        // Fetched 16 at a time (up to a thousand small objects on S3).
        let pieces = pieces(store, archive).await?.remove(name).unwrap_or_default();
        let mut fetched = futures::stream::iter(pieces.into_iter().map(|(offset, piece)| {
            let get = &get;
            async move { Ok::<_, Error>((offset as usize, get(self::path(archive, &piece)?).await?)) }
        }))
        .buffered(16);
        while let Some((offset, piece)) = fetched.next().await.transpose()? {
            let end = data.len();
            let Some(piece) = piece.filter(|_| offset <= end) else {
                break;
            };
            if offset + piece.len() > end {
                data.extend_from_slice(&piece[end - offset..]);
            }
        }
    }
    Ok(Some(data))
}

/// Every archived file, in name order (which for segments of one timeline
/// is WAL order).
pub async fn list(store: &Store, archive: &str) -> Result<Vec<WalFile>> {
    let folder = folder(archive)?;
    let mut files: Vec<WalFile> = store
        .list(&folder)
        .await?
        .into_iter()
        .filter_map(|m| {
            // Only this archive's own files, not those of archives nested below it.
            let name = m.location.as_ref().strip_prefix(&folder)?.strip_prefix('/')?;
            // A streamed copy's pieces are part of it.
            if piece_of(name).is_some() {
                return None;
            }
            Some(WalFile {
                name: valid_part(name).then(|| name.to_string())?,
                stored_bytes: m.size,
                archived_at: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(m.last_modified.timestamp_micros()) * 1000,
                )
                .ok()?,
            })
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Removes archived files; a streamed copy with its pieces (first: a
/// piece is found only through its copy).
pub async fn remove(store: &Store, archive: &str, names: &[String]) -> Result<()> {
    let mut pieces = if names.iter().any(|n| n.ends_with(STREAMED_TAIL)) {
        pieces(store, archive).await?
    } else {
        BTreeMap::new()
    };
    for name in names {
        // Pieces are plain puts, never made by `create_exclusive`.
        for (_, piece) in pieces.remove(name).unwrap_or_default() {
            store
                .delete(&object_store::path::Path::from(path(archive, &piece)?.as_str()))
                .await?;
        }
        let path = path(archive, name)?;
        store
            .delete_exclusive(&object_store::path::Path::from(path.as_str()))
            .await?;
    }
    Ok(())
}
