//! Shared test fixtures: a real S3 server (s3s-fs) on loopback, stores of
//! every kind, and deterministic, compressible test data.
#![allow(dead_code)]

use std::sync::Arc;

use strongbox_repo::{ChunkerParams, InitOptions, NoProgress, Repository, S3Config, Source, Store};

pub const PASSWORD: &[u8] = b"correct horse battery staple";

/// The testkit's S3 server (real, on loopback) and a repository location in it.
pub struct S3Server {
    pub config: S3Config,
    pub server: Box<strongbox_testkit::s3::S3Server>,
}

pub async fn start_s3() -> S3Server {
    start_s3_with(strongbox_testkit::s3::Faults::new(0), Default::default())
}

/// The S3 server injecting `faults` (once set), the client timing out and
/// retrying by `requests`.
pub fn start_s3_with(faults: strongbox_testkit::s3::Faults, requests: strongbox_repo::S3Requests) -> S3Server {
    use strongbox_testkit::s3;
    let server = s3::S3Server::with_faults(faults);
    S3Server {
        config: S3Config {
            endpoint: Some(server.endpoint.clone()),
            region: Some(s3::REGION.into()),
            bucket: s3::BUCKET.into(),
            prefix: "repo1".into(),
            access_key_id: Some(s3::ACCESS_KEY.into()),
            secret_access_key: Some(s3::SECRET_KEY.into()),
            requests,
        },
        server: Box::new(server),
    }
}

/// Each backend a repository can live on, with whatever keeps it alive.
pub enum Backend {
    Memory,
    Local(tempfile::TempDir),
    S3(S3Server),
    /// Local disk that ignores create-only puts, as Garage does today.
    IgnoresCreate(tempfile::TempDir),
}

impl Backend {
    pub async fn all() -> Vec<Backend> {
        vec![
            Backend::Memory,
            Backend::Local(tempfile::tempdir().unwrap()),
            Backend::S3(start_s3().await),
            Backend::IgnoresCreate(tempfile::tempdir().unwrap()),
        ]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Local(_) => "local",
            Backend::S3(_) => "s3",
            Backend::IgnoresCreate(_) => "ignores-create",
        }
    }

    /// A store on this backend; for memory, each call is a new empty store.
    pub fn store(&self) -> Store {
        match self {
            Backend::Memory => Store::open("memory:").unwrap(),
            Backend::Local(dir) => Store::local(dir.path()).unwrap(),
            Backend::S3(s) => Store::s3(&s.config).unwrap(),
            Backend::IgnoresCreate(dir) => ignores_create(dir.path()),
        }
    }
}

/// A local store that ignores create-only puts (writes over what is
/// there), as Garage does: fault injection for the promises create-only
/// writes keep elsewhere.
pub fn ignores_create(dir: &std::path::Path) -> Store {
    faulty(dir, Faults::default())
}

/// `ignores_create` that also takes 300 ms to start reading each index
/// object: fault injection that holds open the window between listing the
/// index and reading it.
pub fn slow_index_reads(dir: &std::path::Path) -> Store {
    faulty(
        dir,
        Faults {
            slow_index_reads: true,
            ..Default::default()
        },
    )
}

/// What `Faulty` does besides ignoring create-only puts.
#[derive(Default)]
pub struct Faults {
    /// Index reads wait 300 ms before starting.
    pub slow_index_reads: bool,
    /// After the n-th listing of `locks/` (1-based) has been read, and
    /// before it is returned, run this: another process acting in the
    /// window between a listing and what its reader does with it.
    pub after_lock_listing: Option<(usize, Arc<dyn Fn() + Send + Sync>)>,
    /// Once this many packs are stored, every further pack write fails (a
    /// store that goes away mid-backup).
    pub packs_stored_before_failing: Option<usize>,
}

pub fn faulty(dir: &std::path::Path, faults: Faults) -> Store {
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap();
    Store::new(
        Arc::new(Faulty {
            inner: Arc::new(fs),
            faults,
            lock_listings: Default::default(),
            packs_stored: Default::default(),
        }),
        format!("faulty:{}", dir.display()),
    )
}

/// A local store with injected faults (see `Faults`); it always writes
/// over what is there, as Garage does.
pub struct Faulty {
    inner: Arc<dyn object_store::ObjectStore>,
    faults: Faults,
    lock_listings: std::sync::atomic::AtomicUsize,
    packs_stored: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl std::fmt::Display for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

mod faulty {
    use super::Faulty;
    use bytes::Bytes;
    use futures::StreamExt;
    use futures::stream::BoxStream;
    use object_store::path::Path;
    use object_store::*;
    use std::ops::Range;
    use std::sync::atomic::Ordering;

    #[async_trait::async_trait]
    impl ObjectStore for Faulty {
        async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
            if let Some(limit) = self.faults.packs_stored_before_failing
                && location.as_ref().starts_with("data/")
                && self.packs_stored.fetch_add(1, Ordering::SeqCst) >= limit
            {
                return Err(Error::Generic {
                    store: "faulty",
                    source: format!("injected: {location} not stored (the store is gone)").into(),
                });
            }
            let opts = PutOptions {
                mode: PutMode::Overwrite,
                ..opts
            };
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            if self.faults.slow_index_reads && location.as_ref().starts_with("index/") {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            self.inner.get_opts(location, options).await
        }

        async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
            self.inner.get_ranges(location, ranges).await
        }

        fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            let listing = self.inner.list(prefix);
            if prefix.is_some_and(|p| p.as_ref() == "locks") {
                let n = self.lock_listings.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some((_, action)) = self.faults.after_lock_listing.as_ref().filter(|(at, _)| *at == n) {
                    let action = action.clone();
                    return futures::stream::once(async move {
                        let items: Vec<_> = listing.collect().await;
                        action();
                        futures::stream::iter(items)
                    })
                    .flatten()
                    .boxed();
                }
            }
            listing
        }

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }
}

/// Text-like bytes: compressible, with little accidental repetition.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "order",
        "shipped",
        "42.50",
        "Lisbon",
        "pending",
        "customer",
        "id=",
        "2026-11-29",
        "null",
        "|",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        out.extend_from_slice(format!("{:x} ", x >> 40).as_bytes());
    }
    out.truncate(len);
    out
}

/// Small chunks, so tests get many chunks and packs from little data.
pub fn small_chunks() -> ChunkerParams {
    ChunkerParams {
        min: 1024,
        avg: 4096,
        max: 16384,
    }
}

pub async fn new_repo(store: Store) -> Repository {
    Repository::init(
        store,
        PASSWORD,
        InitOptions {
            chunker: small_chunks(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

pub async fn backup(repo: &Repository, files: &[(&str, &[u8])]) -> strongbox_repo::Snapshot {
    let sources = files
        .iter()
        .map(|(n, d)| Source::new(*n, std::io::Cursor::new(d.to_vec())))
        .collect();
    repo.backup(sources, Default::default(), Arc::new(NoProgress))
        .await
        .unwrap()
}

pub async fn restore(repo: &Repository, snap: &strongbox_repo::Snapshot, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    repo.restore_to_writer(snap, name, &mut out, &NoProgress).await.unwrap();
    out
}
