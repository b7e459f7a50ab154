//! Copying a snapshot into another repository: the second copy of every
//! backup, in another place.
//!
//! The files are read from this repository, each chunk verified as in any
//! restore, and backed up into the other one through its own pipeline: its
//! chunker, keys and index. Only the chunks it lacks are stored (the copy
//! is content-addressed under its own key, whatever this one's is), and a
//! killed copy resumes without storing anything twice: each pack is indexed
//! as soon as it is stored, and the next attempt finds its chunks. The
//! manifest, written last, keeps the snapshot's id, time, host, tags and
//! labels: a backup has the same id in every repository that holds it.
//!
//! Reading the whole snapshot back costs a restore's read of this
//! repository each time; what crosses to the copy is what it lacks.

use std::io::Read;
use std::sync::Arc;

use futures::StreamExt;

use crate::backup::{Source, Sources};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{self, Index, PackIndex};
use crate::progress::Progress;
use crate::snapshot::{self, Snapshot, Totals};
use crate::storage::layout;
use crate::{BackupOptions, Repository, pack, prune, records, restore, wal};

/// What a copy did.
#[derive(Clone, Debug, Default)]
pub struct Copied {
    /// The other repository held the snapshot already: nothing was done.
    pub already: bool,
    /// What the copy added to the other repository (`new_bytes_stored`:
    /// the bytes that crossed).
    pub totals: Totals,
}

/// What `mirror_objects` did.
#[derive(Clone, Debug, Default)]
pub struct Mirrored {
    /// WAL files and records written to the other repository.
    pub objects: usize,
    /// Their sealed size there.
    pub bytes: u64,
    /// When the oldest WAL file the other repository lacked was archived
    /// here (what its lag is measured from); `None`: it lacked none.
    pub oldest_lacking: Option<time::OffsetDateTime>,
}

/// Blocks of one file flowing from the restore side to the backup side.
const BLOCKS_IN_FLIGHT: usize = 4;

impl Repository {
    /// Copies `snap` into `to` (see the module's comment). Idempotent.
    pub async fn copy_snapshot(&self, snap: &Snapshot, to: &Repository, progress: Arc<dyn Progress>) -> Result<Copied> {
        match snapshot::load(&to.store, &to.cipher, &snap.id).await {
            Ok(_) => {
                return Ok(Copied {
                    already: true,
                    ..Copied::default()
                });
            }
            Err(Error::SnapshotNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let index = Arc::new(self.restore_index().await?);
        // Each file is fetched in order by a task of its own, started when
        // the pipeline asks for it, into a bounded channel its reader drains.
        let (store, cipher, runtime) = (
            self.store.clone(),
            self.cipher.clone(),
            tokio::runtime::Handle::current(),
        );
        let sources: Sources = Box::new(snap.files.clone().into_iter().map(move |file| {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>>>(BLOCKS_IN_FLIGHT);
            let (store, cipher, index) = (store.clone(), cipher.clone(), index.clone());
            let source = Source {
                name: file.name.clone(),
                mode: file.mode,
                size_hint: Some(file.size),
                reader: Box::new(Blocks {
                    rx,
                    block: Vec::new(),
                    at: 0,
                    left: file.size,
                }),
            };
            runtime.spawn(async move {
                let blocks = match restore::in_order(&store, &cipher, &index, &file) {
                    Ok(blocks) => blocks,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let mut blocks = std::pin::pin!(blocks);
                while let Some(block) = blocks.next().await {
                    let failed = block.is_err();
                    if tx.send(block).await.is_err() || failed {
                        return;
                    }
                }
            });
            Ok(source)
        }));
        let opts = BackupOptions {
            tags: snap.tags.clone(),
            labels: snap.labels.clone(),
            ..BackupOptions::default()
        };
        let lock = to.backup_lock().await?;
        let result = async {
            to.index_stray_packs().await?;
            to.backup_locked(sources, opts, Some(snap), progress, &lock).await
        }
        .await;
        let released = lock.release().await;
        let copy = result?;
        released?;
        Ok(Copied {
            already: false,
            totals: copy.totals,
        })
    }
}

impl Repository {
    /// Indexes the packs a killed copy left without their index object (a
    /// pack is stored before its index object: a kill between the two
    /// leaves it unknown), read back from their own bytes, so that the
    /// resumed copy sends none of their chunks again. Called under the
    /// backup lock; packs a prune plan condemns are left to prune. Returns
    /// how many packs it indexed.
    async fn index_stray_packs(&self) -> Result<usize> {
        let plans = prune::load_plans(&self.store, &self.cipher).await?;
        let condemned = prune::condemned(&plans);
        let index = Index::load_cached(&self.store, &self.cipher, &condemned, Some(&self.index_cache)).await?;
        let stray: Vec<Id> = layout::packs(&self.store)
            .await?
            .into_keys()
            .filter(|id| index.pack(id).is_none() && !condemned.contains(id))
            .collect();
        for id in &stray {
            let data = self.store.get(&layout::pack(id)).await?;
            let (cipher, pack) = (self.cipher.clone(), *id);
            let size = data.len() as u64;
            let blobs = tokio::task::spawn_blocking(move || pack::entries_of(&cipher, &pack, &data))
                .await
                .expect("pack reader panicked")?;
            index::write(&self.store, &self.cipher, &[PackIndex { pack, size, blobs }]).await?;
            tracing::info!(pack = %id, "indexed a pack a killed copy left without its index");
        }
        Ok(stray.len())
    }

    /// Brings `to` every WAL file, shipped log and record it lacks:
    /// `mirror_wal`, then `mirror_records`.
    pub async fn mirror_objects(&self, to: &Repository) -> Result<Mirrored> {
        let wal = self.mirror_wal(to, &mut StreamedSeen::default(), &|_, _| false).await?;
        let records = self.mirror_records(to).await?;
        Ok(Mirrored {
            objects: wal.objects + records.objects,
            bytes: wal.bytes + records.bytes,
            oldest_lacking: wal.oldest_lacking,
        })
    }

    /// Brings `to` every WAL file and shipped log (`wal/…`) this repository
    /// holds and it lacks, each verified here and sealed anew under its
    /// key. WAL files are never rewritten (a name is its content:
    /// `wal::push`). A streamed tail (`NAME.streamed`) grows under one
    /// name: it is copied again whenever this repository's version differs
    /// from the one `seen` says was copied last, and `to`'s is removed
    /// once `to` holds the whole file.
    /// `needless(archive, name)`: files `to` no longer needs (its own
    /// retention let them go), not brought again.
    pub async fn mirror_wal(
        &self,
        to: &Repository,
        seen: &mut StreamedSeen,
        needless: &(dyn Fn(&str, &str) -> bool + Send + Sync),
    ) -> Result<Mirrored> {
        let mut done = Mirrored::default();
        let there: std::collections::HashSet<String> = to
            .store
            .list(wal::WAL)
            .await?
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        let mut whole_there = std::collections::HashSet::new();
        for meta in self.store.list(wal::WAL).await? {
            let path = meta.location.as_ref();
            // A streamed copy's pieces come with it (`wal_fetch` splices
            // them on), copied once they are in a new version of it.
            if wal::archive_and_name(path).is_some_and(|(_, name)| wal::piece_of(name).is_some()) {
                continue;
            }
            let streamed_of = path.strip_suffix(wal::STREAMED_TAIL);
            let version = format!("{} {} {:?}", meta.last_modified, meta.size, meta.e_tag);
            match streamed_of {
                Some(_) if there.contains(path) && seen.get(path) == Some(&version) => continue,
                Some(whole) if there.contains(whole) => continue, // archived there already
                None if there.contains(path) => continue,
                _ => {}
            }
            let Some((archive, name)) = wal::archive_and_name(path) else {
                continue;
            };
            if needless(archive, name) {
                continue;
            }
            let Some(data) = self.wal_fetch(archive, name).await? else {
                continue; // removed since listed (retention, or archived since)
            };
            let at = time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(meta.last_modified.timestamp_micros()) * 1000,
            )
            .ok();
            done.oldest_lacking = match (done.oldest_lacking, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match name.strip_suffix(wal::STREAMED_TAIL) {
                Some(whole) => {
                    done.bytes += to.wal_put_streamed(archive, whole, &data).await?;
                    done.objects += 1;
                    seen.insert(path.to_string(), version);
                }
                None => {
                    if let wal::Pushed::Stored { bytes } = to.wal_push(archive, name, &data).await? {
                        done.objects += 1;
                        done.bytes += bytes;
                    }
                    whole_there.insert(path.to_string());
                }
            }
        }
        // Streamed tails `to` holds of files it now holds whole.
        let stale: Vec<&String> = there
            .iter()
            .filter(|p| {
                p.strip_suffix(wal::STREAMED_TAIL)
                    .is_some_and(|whole| there.contains(whole) || whole_there.contains(whole))
            })
            .collect();
        for path in stale {
            if let Some((archive, name)) = wal::archive_and_name(path) {
                to.wal_remove(archive, &[name.to_string()]).await?;
                seen.remove(path);
            }
        }
        Ok(done)
    }

    /// Brings `to` every record (`records/…`) it lacks or holds otherwise,
    /// sealed anew under its key; records are replaced when they differ.
    pub async fn mirror_records(&self, to: &Repository) -> Result<Mirrored> {
        let mut done = Mirrored::default();
        let theirs: std::collections::HashMap<String, Vec<u8>> =
            records::list_all(&to.store, &to.cipher).await?.into_iter().collect();
        for (path, data) in records::list_all(&self.store, &self.cipher).await? {
            if theirs.get(&path) == Some(&data) {
                continue;
            }
            done.bytes += records::put_path(&to.store, &to.cipher, &path, &data).await?;
            done.objects += 1;
        }
        Ok(done)
    }
}

/// The version (time, size, ETag) of each streamed tail last copied, by
/// path: what `mirror_wal` compares with to copy a grown tail again.
pub type StreamedSeen = std::collections::HashMap<String, String>;

/// A file's blocks as a `Read` for the backup pipeline (whose reader runs on
/// a thread of its own, where waiting for the next block is fine).
struct Blocks {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
    block: Vec<u8>,
    at: usize,
    /// Bytes of the file not yet read: a stream that ends early is an
    /// error, never a shorter copy.
    left: u64,
}

impl Read for Blocks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.block.len() {
            match self.rx.blocking_recv() {
                Some(Ok(block)) => (self.block, self.at) = (block, 0),
                // The repository's error, whole: it names the damaged object.
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                None if self.left == 0 => return Ok(0),
                None => {
                    return Err(std::io::Error::other(format!(
                        "the copy's reader stopped {} bytes before the file's end",
                        self.left
                    )));
                }
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}
