//! Strongbox's backup repository: deduplicating (FastCDC + keyed BLAKE3),
//! compressed (zstd), encrypted (XChaCha20-Poly1305) storage of snapshots
//! on any `object_store` backend. No HTTP, no SQL, no database engines here.
//!
//! Write order is the crash-safety argument: packs, then their index
//! objects, then the snapshot manifest (the commit point); deletion runs in
//! the reverse order (see `prune`).

mod backup;
mod check;
mod chunker;
mod copy;
mod crypto;
mod error;
mod file;
mod id;
mod index;
mod keys;
mod lock;
mod pack;
mod progress;
mod prune;
mod records;
mod restore;
mod snapshot;
mod storage;
mod wal;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use backup::{Source, Sources, sources};
pub use check::CheckReport;
pub use chunker::Chunker;
pub use copy::{Copied, Mirrored, StreamedSeen};
pub use error::{Error, Result, StorageFailure};
pub use file::BackupFile;
pub use id::Id;
pub use keys::{ChunkerParams, Config, InitOptions, KeySlot};
pub use progress::{Counters, NoProgress, Progress};
pub use prune::{PruneOptions, PruneReport};
pub use snapshot::{FileEntry, Snapshot, Totals};
pub use storage::{S3Config, S3Requests, Store};
pub use wal::{Pushed, STREAMED_TAIL, WalFile, piece_name};

use crypto::{Cipher, MasterKey};
use index::Index;
use lock::{Lock, LockKind};

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formattable")
}

/// This host's name, recorded in key slots, locks and snapshots (and used
/// to tell whether a lock's holder is a local process).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Files restored at once by `restore_all` (each fetches several ranges).
const FILES_IN_PARALLEL: usize = 4;

/// How long `open_or_init` waits for the config of a repository another
/// process is creating (its key slot listed, its config not yet written:
/// milliseconds apart, unless that process died between the two).
pub const INIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a backup records besides its data.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Labels known only once every stream has been read (a PostgreSQL
    /// base backup's position, at `pg_backup_stop`).
    pub late_labels: LateLabels,
}

/// Called as the snapshot is written, after its data.
#[derive(Clone, Default)]
pub struct LateLabels(pub Option<Arc<dyn Fn() -> BTreeMap<String, String> + Send + Sync>>);

impl std::fmt::Debug for LateLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "LateLabels(Some(..))"
        } else {
            "LateLabels(None)"
        })
    }
}

/// An open repository.
pub struct Repository {
    store: Store,
    master: MasterKey,
    cipher: Cipher,
    config: Config,
    /// Threads that chunk, hash, compress and encrypt.
    pub workers: usize,
    /// Concurrent pack uploads (more helps on high-latency object stores).
    pub uploaders: usize,
    /// Index objects this process has read (a server makes many backups).
    index_cache: index::IndexCache,
}

impl Repository {
    fn new(store: Store, master: MasterKey, config: Config) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Repository {
            uploaders: store.default_uploads(),
            store,
            cipher: master.cipher(),
            master,
            config,
            workers: cores,
            index_cache: Default::default(),
        }
    }

    pub async fn init(store: Store, password: &[u8], opts: InitOptions) -> Result<Self> {
        let (master, config) = keys::init(&store, password, opts).await?;
        Ok(Self::new(store, master, config))
    }

    pub async fn open(store: Store, password: &[u8]) -> Result<Self> {
        let (master, config) = keys::unlock(&store, password).await?;
        Ok(Self::new(store, master, config))
    }

    /// Opens the repository, creating it if the store holds none (`true`:
    /// created here). Servers started together on a new store race to
    /// create it: one wins, the others open what it made (its key slot is
    /// written before its config, so a config missing beside a key slot is
    /// waited for, up to `INIT_WAIT`).
    pub async fn open_or_init(store: Store, password: &[u8], opts: InitOptions) -> Result<(Self, bool)> {
        let started = std::time::Instant::now();
        loop {
            match Self::open(store.clone(), password).await {
                Err(Error::NotARepository { .. }) => match Self::init(store.clone(), password, opts).await {
                    Ok(repo) => return Ok((repo, true)),
                    Err(Error::AlreadyInitialized { .. }) => {}
                    Err(e) => return Err(e),
                },
                Err(Error::Missing { object }) if object == storage::layout::config().as_ref() => {
                    if started.elapsed() > INIT_WAIT {
                        return Err(Error::Missing { object });
                    }
                }
                other => return other.map(|repo| (repo, false)),
            }
            // Apart: racers that all backed off try again at different times.
            let jitter = rand::random::<u64>() % 100;
            tokio::time::sleep(std::time::Duration::from_millis(20 + jitter)).await;
        }
    }

    /// Whether its store still holds it (its config object): false once
    /// the directory or bucket is gone.
    pub async fn is_present(&self) -> Result<bool> {
        Ok(self.store.get_if_exists(&storage::layout::config()).await?.is_some())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub async fn add_key(&self, password: &[u8]) -> Result<Id> {
        keys::add_key(&self.store, &self.master, password).await
    }

    pub async fn list_keys(&self) -> Result<Vec<KeySlot>> {
        keys::list_keys(&self.store).await
    }

    pub async fn remove_key(&self, id: &Id) -> Result<()> {
        keys::remove_key(&self.store, id).await
    }

    /// Backs up `sources` as one snapshot.
    pub async fn backup(
        &self,
        sources: Vec<Source>,
        opts: BackupOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<Snapshot> {
        self.backup_sources(backup::sources(sources), opts, progress).await
    }

    /// Backs up streams pulled one after another from `sources` as one
    /// snapshot; an error from the iterator fails the backup.
    pub async fn backup_sources(
        &self,
        sources: Sources,
        opts: BackupOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<Snapshot> {
        let lock = self.backup_lock().await?;
        let result = self.backup_locked(sources, opts, None, progress, &lock).await;
        let released = lock.release().await;
        let snap = result?;
        released?;
        Ok(snap)
    }

    /// The lock a backup (or a copy into this repository) holds: prunes
    /// wait, and the ones already planned are noted (see `prune`).
    async fn backup_lock(&self) -> Result<Lock> {
        let (store, cipher) = (&self.store, &self.cipher);
        Lock::acquire(store, cipher, LockKind::Backup, || async {
            Ok(prune::load_plans(store, cipher).await?.iter().map(|p| p.id).collect())
        })
        .await
    }

    /// `copy_of`: the snapshot this one copies from another repository,
    /// whose id, time and host it keeps (`copy`).
    async fn backup_locked(
        &self,
        sources: Sources,
        opts: BackupOptions,
        copy_of: Option<&Snapshot>,
        progress: Arc<dyn Progress>,
        lock: &Lock,
    ) -> Result<Snapshot> {
        // Chunks in packs a prune has condemned are not reused: they may be
        // deleted once this backup is done (see `prune`).
        let plans = prune::load_plans(&self.store, &self.cipher).await?;
        let seen: Vec<_> = plans
            .into_iter()
            .filter(|p| lock.info.plans_seen.contains(&p.id))
            .collect();
        let index = Index::load_cached(
            &self.store,
            &self.cipher,
            &prune::condemned(&seen),
            Some(&self.index_cache),
        )
        .await?;
        let runtime = tokio::runtime::Handle::current();
        let (store, cipher, config) = (self.store.clone(), self.cipher.clone(), self.config.clone());
        let seed = self.master.chunker_seed();
        let (workers, uploaders) = (self.workers.max(1), self.uploaders.max(1));
        let (files, totals) = tokio::task::spawn_blocking(move || {
            backup::Pipeline {
                store: &store,
                cipher: &cipher,
                chunker: Chunker {
                    params: config.chunker,
                    seed,
                },
                index: &index,
                pack_size: config.pack_size as usize,
                compression_level: config.compression_level,
                workers,
                uploaders,
                progress: progress.as_ref(),
                runtime,
            }
            .run(sources)
        })
        .await
        .expect("backup pipeline panicked")?;
        lock.ensure_fresh()?;
        let mut labels = opts.labels;
        if let Some(late) = &opts.late_labels.0 {
            labels.extend(late());
        }
        let snap = Snapshot {
            id: copy_of.map_or_else(Id::random, |s| s.id),
            time: copy_of.map_or_else(now_rfc3339, |s| s.time.clone()),
            hostname: copy_of.map_or_else(|| lock.info.hostname.clone(), |s| s.hostname.clone()),
            tags: opts.tags,
            labels,
            files,
            totals,
        };
        snapshot::write(&self.store, &self.cipher, &snap).await?;
        Ok(snap)
    }

    /// All snapshots, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        snapshot::load_all_ok(&self.store, &self.cipher).await
    }

    /// The ids of all snapshots (a listing: nothing is read or decrypted).
    pub async fn snapshot_ids(&self) -> Result<Vec<Id>> {
        snapshot::list_ids(&self.store).await
    }

    /// A snapshot by id, unique id prefix, or `latest`.
    pub async fn find_snapshot(&self, spec: &str) -> Result<Snapshot> {
        if spec == "latest" {
            return self
                .snapshots()
                .await?
                .pop()
                .ok_or_else(|| Error::SnapshotNotFound("latest (the repository has no snapshots)".into()));
        }
        // A whole id is read at once: listing every snapshot to match a
        // prefix costs as much as the history is long.
        if let Some(id) = Id::from_hex(spec) {
            return snapshot::load(&self.store, &self.cipher, &id).await;
        }
        let ids = snapshot::list_ids(&self.store).await?;
        let matches: Vec<_> = ids
            .iter()
            .filter(|id| id.to_hex().starts_with(&spec.to_ascii_lowercase()))
            .collect();
        match matches.as_slice() {
            [id] => snapshot::load(&self.store, &self.cipher, id).await,
            [] => Err(Error::SnapshotNotFound(spec.into())),
            _ => Err(Error::Invalid(format!(
                "snapshot prefix {spec:?} is ambiguous ({} matches)",
                matches.len()
            ))),
        }
    }

    async fn restore_index(&self) -> Result<Index> {
        let plans = prune::load_plans(&self.store, &self.cipher).await?;
        Index::load_cached(
            &self.store,
            &self.cipher,
            &prune::condemned(&plans),
            Some(&self.index_cache),
        )
        .await
    }

    /// Restores one file of a snapshot to `dest`.
    pub async fn restore_file(
        &self,
        snap: &Snapshot,
        name: &str,
        dest: &std::path::Path,
        progress: &dyn Progress,
    ) -> Result<()> {
        let index = self.restore_index().await?;
        restore::to_path(&self.store, &self.cipher, &index, snap.file(name)?, dest, progress).await
    }

    /// Restores every file of a snapshot into `dir`, a few files at a time
    /// (a database directory holds many small files).
    pub async fn restore_all(&self, snap: &Snapshot, dir: &std::path::Path, progress: &dyn Progress) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        let index = self.restore_index().await?;
        let index = &index;
        futures::stream::iter(&snap.files)
            .map(|file| async move {
                let dest = dir.join(restore::safe_relative(&file.name)?);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
                }
                restore::to_path(&self.store, &self.cipher, index, file, &dest, progress).await
            })
            .buffer_unordered(FILES_IN_PARALLEL)
            .try_collect::<()>()
            .await
    }

    /// Archives a WAL file (PostgreSQL's `archive_command`): the same
    /// content again is a no-op, other content under the name an error.
    /// `archive` names the cluster's archive (see `wal`).
    pub async fn wal_push(&self, archive: &str, name: &str, data: &[u8]) -> Result<Pushed> {
        wal::push(&self.store, &self.cipher, archive, name, data).await
    }

    /// Removes the streamed copies (`NAME.streamed`) of files archived
    /// whole since; how many.
    pub async fn wal_tidy_streamed(&self, archive: &str) -> Result<usize> {
        let names: std::collections::BTreeSet<String> =
            self.wal_list(archive).await?.into_iter().map(|f| f.name).collect();
        let done: Vec<String> = names
            .iter()
            .filter(|n| n.strip_suffix(STREAMED_TAIL).is_some_and(|whole| names.contains(whole)))
            .cloned()
            .collect();
        self.wal_remove(archive, &done).await?;
        Ok(done.len())
    }

    /// Stores (or replaces) the streamed copy of WAL file `name`.
    pub async fn wal_put_streamed(&self, archive: &str, name: &str, data: &[u8]) -> Result<u64> {
        wal::put_streamed(&self.store, &self.cipher, archive, name, data).await
    }

    /// Stores a piece of the streamed copy of WAL file `name`: its bytes
    /// from `offset` on (the copy's reader splices it on, `wal_fetch`).
    pub async fn wal_put_streamed_piece(&self, archive: &str, name: &str, offset: u64, data: &[u8]) -> Result<u64> {
        wal::put_streamed_piece(&self.store, &self.cipher, archive, name, offset, data).await
    }

    /// A WAL file as replay reads it: archived, else its streamed copy
    /// (`true`: the tail of a segment the server was writing when it was
    /// lost, which takes replay to its end); `None` if neither is stored.
    pub async fn wal_fetch_for_replay(&self, archive: &str, name: &str) -> Result<Option<(Vec<u8>, bool)>> {
        if let Some(data) = self.wal_fetch(archive, name).await? {
            return Ok(Some((data, false)));
        }
        let streamed = self.wal_fetch(archive, &format!("{name}{STREAMED_TAIL}")).await?;
        Ok(streamed.map(|data| (data, true)))
    }

    /// An archived WAL file, verified; `None` if it is not archived.
    pub async fn wal_fetch(&self, archive: &str, name: &str) -> Result<Option<Vec<u8>>> {
        wal::fetch(&self.store, &self.cipher, archive, name).await
    }

    /// The archived WAL files, in name order.
    pub async fn wal_list(&self, archive: &str) -> Result<Vec<WalFile>> {
        wal::list(&self.store, archive).await
    }

    /// Deletes archived WAL files (retention: those no kept backup needs).
    /// Stores or replaces a record (`records`): a document of the service's,
    /// sealed like every object.
    pub async fn put_record(&self, kind: &str, name: &str, data: &[u8]) -> Result<()> {
        records::put(&self.store, &self.cipher, kind, name, data).await
    }

    /// The records of a kind under `prefix` (`""`: all), by name.
    pub async fn records(&self, kind: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        records::list(&self.store, &self.cipher, kind, prefix).await
    }

    pub async fn delete_record(&self, kind: &str, name: &str) -> Result<()> {
        records::delete(&self.store, kind, name).await
    }

    pub async fn wal_remove(&self, archive: &str, names: &[String]) -> Result<()> {
        wal::remove(&self.store, archive, names).await
    }

    /// Streams one file of a snapshot, in order, into `w`.
    pub async fn restore_to_writer(
        &self,
        snap: &Snapshot,
        name: &str,
        w: impl std::io::Write,
        progress: &dyn Progress,
    ) -> Result<()> {
        let index = self.restore_index().await?;
        restore::to_writer(&self.store, &self.cipher, &index, snap.file(name)?, w, progress).await
    }

    pub async fn check(&self, read_data: bool) -> Result<CheckReport> {
        check::check(&self.store, &self.cipher, read_data).await
    }

    pub async fn forget(&self, ids: &[Id]) -> Result<()> {
        prune::forget(&self.store, ids).await
    }

    pub async fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        prune::prune(&self.store, &self.cipher, self.config.pack_size as usize, opts).await
    }

    pub async fn stats(&self) -> Result<Stats> {
        let snaps = self.snapshots().await?;
        let index = self.restore_index().await?;
        Ok(Stats {
            snapshots: snaps.len(),
            logical_bytes: snaps.iter().map(|s| s.totals.logical_bytes).sum(),
            stored_bytes: index.packs().iter().map(|p| p.size).sum(),
            packs: index.packs().len(),
            chunks: index.chunk_count(),
            duplicate_chunks: index.packs().iter().map(|p| p.blobs.len()).sum::<usize>() - index.chunk_count(),
            create_only_writes: if self.store.honours_create().await? {
                "honoured by the store"
            } else {
                "ignored by the store: config and WAL files are created under claims (storage::create_exclusive); \
                 other objects are named by ids, and locks never rely on it"
            },
        })
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Stats {
    pub snapshots: usize,
    /// Sum over snapshots of the bytes they hold.
    pub logical_bytes: u64,
    /// Bytes of all indexed packs.
    pub stored_bytes: u64,
    pub packs: usize,
    pub chunks: usize,
    /// Chunks stored in more than one pack (sent twice by backups that
    /// overlapped or were interrupted; prune keeps one).
    pub duplicate_chunks: usize,
    /// How names that must be created once stay so on this store.
    pub create_only_writes: &'static str,
}
