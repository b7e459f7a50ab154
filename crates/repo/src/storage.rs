//! Where the repository's objects live, and how they are named.
//!
//! All access goes through `object_store`, so the local filesystem, any
//! S3-compatible service and memory behave alike. Objects are written
//! create-only and never rewritten. Most names are ids (of their content,
//! or random), so a second write under one carries the same content and
//! harms nothing even where a store ignores create-only writes. Two kinds
//! of name are not: `config` and archived WAL files, where a second write
//! could replace what was there. `create_exclusive` keeps those promises on
//! every store: with a create-only put where the store honours it (probed
//! once: `honours_create`), else by claims (see there). Garage, for one,
//! ignores `If-None-Match: *` today.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};
use crate::id::Id;

/// Settings for an S3-compatible store. Credentials fall back to the usual
/// `AWS_*` environment variables when not given here.
#[derive(Clone, Default)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: String,
    pub prefix: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub requests: S3Requests,
}

/// How S3 requests are timed out and retried: object_store's retry loop
/// (exponential backoff with jitter from 100 ms to 15 s) retries 5xx,
/// 429 and 408 answers, refused and dropped connections, and timeouts of
/// requests it knows are idempotent, up to `max_retries` times within
/// `retry_timeout`. The defaults are object_store's and the AWS SDK's
/// order of magnitude; `STRONGBOX_S3_TIMEOUT_SECONDS`,
/// `STRONGBOX_S3_MAX_RETRIES` and `STRONGBOX_S3_RETRY_SECONDS` change them.
#[derive(Clone, Copy, Debug)]
pub struct S3Requests {
    /// One request, from connecting to the end of its answer.
    pub timeout: std::time::Duration,
    pub connect_timeout: std::time::Duration,
    pub max_retries: usize,
    /// No retry is started after this long since the first attempt.
    pub retry_timeout: std::time::Duration,
}

impl Default for S3Requests {
    fn default() -> Self {
        S3Requests {
            timeout: std::time::Duration::from_secs(30),
            connect_timeout: std::time::Duration::from_secs(5),
            max_retries: 10,
            retry_timeout: std::time::Duration::from_secs(180),
        }
    }
}

impl S3Requests {
    /// The defaults, changed by the `STRONGBOX_S3_*` variables that are set.
    pub fn from_env() -> Result<Self> {
        let mut r = S3Requests::default();
        let var = |name: &str| -> Result<Option<u64>> {
            match std::env::var(name) {
                Err(_) => Ok(None),
                Ok(v) => v.trim().parse().map(Some).map_err(|_| {
                    Error::Invalid(format!(
                        "{name}={v:?} is not a whole number (seconds, or a count of retries)"
                    ))
                }),
            }
        };
        if let Some(s) = var("STRONGBOX_S3_TIMEOUT_SECONDS")? {
            r.timeout = std::time::Duration::from_secs(s.max(1));
        }
        if let Some(n) = var("STRONGBOX_S3_MAX_RETRIES")? {
            r.max_retries = n as usize;
        }
        if let Some(s) = var("STRONGBOX_S3_RETRY_SECONDS")? {
            r.retry_timeout = std::time::Duration::from_secs(s);
        }
        Ok(r)
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<secret>"),
            )
            .finish()
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    location: String,
    /// Whether the store refuses a create-only put of an existing object
    /// (probed on first need).
    honours_create: Arc<tokio::sync::OnceCell<bool>>,
    /// Set for a store on local disk.
    local_root: Option<std::path::PathBuf>,
}

/// How often a request that was cut off is sent again (`again_if_cut_off`),
/// and the pause before the first time (doubled each time after).
const CUT_OFF_AGAIN: u32 = 5;
const CUT_OFF_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// `request` once more, up to `CUT_OFF_AGAIN` times, while it was cut off
/// mid-way (`cut_off`): for the requests object_store does not retry then,
/// which the caller knows are safe to repeat. `request` is told whether an
/// earlier attempt was cut off; `interrupted` says whether any was.
async fn again_if_cut_off<T, F, R>(interrupted: &mut bool, mut request: R) -> object_store::Result<T>
where
    R: FnMut(bool) -> F,
    F: std::future::Future<Output = object_store::Result<T>>,
{
    let mut times = 0;
    loop {
        match request(*interrupted).await {
            Err(e) if times < CUT_OFF_AGAIN && cut_off(&e) => {
                tokio::time::sleep(CUT_OFF_PAUSE * 2u32.pow(times)).await;
                *interrupted = true;
                times += 1;
                tracing::info!("a request was cut off, sending it again: {e}");
            }
            answer => return answer,
        }
    }
}

/// Whether a put failed mid-way, so that it may or may not have landed: a
/// timeout or a connection cut off (object_store's transport error kinds).
fn cut_off(e: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    crate::error::sources(e)
        .find_map(|e| e.downcast_ref::<HttpError>())
        .is_some_and(|http| matches!(http.kind(), HttpErrorKind::Timeout | HttpErrorKind::Interrupted))
}

/// Where writers of a name that must be created once claim it:
/// `claims/NAME/CLAIM`.
const CLAIMS: &str = "claims";

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.location)
    }
}

impl Store {
    pub fn new(inner: Arc<dyn ObjectStore>, location: impl Into<String>) -> Self {
        Store {
            inner,
            location: location.into(),
            honours_create: Arc::default(),
            local_root: None,
        }
    }

    /// `memory:` for a fresh in-memory store, `s3://bucket/prefix` for S3
    /// (endpoint and credentials from `AWS_*` variables), else a local path.
    pub fn open(location: &str) -> Result<Self> {
        if location == "memory:" {
            return Ok(Store::new(Arc::new(InMemory::new()), location));
        }
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return Store::s3(&S3Config {
                endpoint: std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok(),
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
                requests: S3Requests::from_env()?,
                ..Default::default()
            });
        }
        Store::local(std::path::Path::new(location))
    }

    pub fn local(dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        // An object is stored once its file and directory entry are on the
        // disk, as S3's answer means stored (a synchronous commit's WAL
        // waits for this; restic's local backend syncs likewise): without
        // it, a power loss could keep an index and lose the pack it names.
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| Error::storage(dir.display(), e))?
            .with_fsync(true);
        let mut store = Store::new(Arc::new(fs), dir.display().to_string());
        store.local_root = Some(dir.to_path_buf());
        Ok(store)
    }

    /// The directory of a store on local disk.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    pub fn s3(cfg: &S3Config) -> Result<Self> {
        if cfg.bucket.is_empty() {
            return Err(Error::Invalid("S3 location needs a bucket: s3://BUCKET/PREFIX".into()));
        }
        let r = cfg.requests;
        // Set key by key: the client options `from_env` read (a proxy, say)
        // stay as they are.
        let client = |key, d: std::time::Duration| {
            (
                object_store::aws::AmazonS3ConfigKey::Client(key),
                format!("{}ms", d.as_millis()),
            )
        };
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        for (key, value) in [
            client(object_store::ClientConfigKey::Timeout, r.timeout),
            client(object_store::ClientConfigKey::ConnectTimeout, r.connect_timeout),
        ] {
            b = b.with_config(key, value);
        }
        let mut b = b.with_retry(object_store::RetryConfig {
            backoff: Default::default(),
            max_retries: r.max_retries,
            retry_timeout: r.retry_timeout,
        });
        if let Some(ep) = &cfg.endpoint {
            b = b.with_endpoint(ep).with_allow_http(ep.starts_with("http://"));
        }
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &cfg.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let location = format!("s3://{}/{}", cfg.bucket, cfg.prefix);
        let s3: Arc<dyn ObjectStore> = Arc::new(b.build().map_err(|e| Error::storage(&location, e))?);
        let inner: Arc<dyn ObjectStore> = if cfg.prefix.trim_matches('/').is_empty() {
            s3
        } else {
            Arc::new(PrefixStore::new(s3, cfg.prefix.trim_matches('/')))
        };
        Ok(Store::new(inner, location))
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn remote(&self) -> bool {
        self.location.starts_with("s3://")
    }

    /// Pack uploads worth running at once: one keeps a local disk busy;
    /// a network store hides its latency behind a second (four measured no
    /// faster on a three-node Garage sharing two cores).
    pub fn default_uploads(&self) -> usize {
        if self.remote() { 2 } else { 1 }
    }

    /// Range reads worth running at once while restoring: one per core and
    /// one more on a local disk; on a network store, where each request
    /// waits on replicas (Garage: three), enough to hide that wait.
    pub fn default_fetches(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        if self.remote() { (cores + 1).max(8) } else { cores + 1 }
    }

    /// Creates an id-named object `path` with `data`. Returns false when
    /// it already existed (the same content is there) — on a store that
    /// ignores create-only puts, true: the write replaced it with the same.
    ///
    /// object_store retries a create-only put that was refused, throttled
    /// or never sent, but not one that timed out or was cut off mid-way:
    /// it cannot know whether that one landed. Here the name is the
    /// content's (or the caller compares, `put_new_once`), so it is put
    /// again (`again_if_cut_off`) unless it is there by then; "already
    /// exists" then most likely means the interrupted attempt landed, and
    /// counts as created (the probe in `honours_create` can then only err
    /// towards claims, which are safe on every store).
    pub async fn put_new(&self, path: &Path, data: Bytes) -> Result<bool> {
        let payload = PutPayload::from_bytes(data);
        let opts = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let mut interrupted = false;
        let put = again_if_cut_off(&mut interrupted, |again| {
            let payload = payload.clone();
            async move {
                // The attempt cut off may have landed, and a server refuses
                // the create of an existing object before it reads the body
                // (the test server's s3s does): this client then sees a
                // broken pipe, not the refusal, every time it sends again.
                // So it looks first.
                if again && self.inner.head(path).await.is_ok() {
                    return Ok(());
                }
                self.inner.put_opts(path, payload, opts()).await.map(|_| ())
            }
        });
        match put.await {
            Ok(()) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(interrupted),
            Err(e) => Err(Error::storage(path, e)),
        }
    }

    /// `put_new` for what must be made once by one writer: refused, it is
    /// still ours if the object holds exactly our bytes. A create-only put
    /// that a client or proxy retried is refused by the object its own first
    /// attempt wrote; taken for another writer's, the winner of a
    /// repository's init would delete its key slot and leave a config no
    /// slot opens. (A guard. The "config is corrupt" that `tests/keys.rs`
    /// met under load had another cause, found since: `keys::unlock` read
    /// the config after listing the slots.)
    async fn put_new_once(&self, path: &Path, data: Bytes) -> Result<bool> {
        if self.put_new(path, data.clone()).await? {
            return Ok(true);
        }
        Ok(self.get_if_exists(path).await?.is_some_and(|there| there == data))
    }

    /// Writes `path` whole, replacing what is there (atomic per object on
    /// every store: a reader sees the old or the new, never a mix).
    pub async fn put(&self, path: &Path, data: Bytes) -> Result<()> {
        self.inner
            .put(path, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| Error::storage(path, e))
    }

    /// Whether a create-only put of an existing object is refused here:
    /// the first time asked, an object is created twice under a random
    /// name and the second must fail.
    pub async fn honours_create(&self) -> Result<bool> {
        let probe = || async {
            let path = Path::from(format!("{CLAIMS}/probe-{}", Id::random().to_hex()));
            self.put_new(&path, Bytes::from_static(b"1")).await?;
            let refused = !self.put_new(&path, Bytes::from_static(b"2")).await?;
            self.delete(&path).await?;
            Ok::<bool, Error>(refused)
        };
        self.honours_create.get_or_try_init(probe).await.copied()
    }

    /// Creates `path` with `data` unless it exists: false then (or, on a
    /// store that ignores create-only puts, when another writer is
    /// creating it right now). Where create-only puts are honoured, that is
    /// one. Elsewhere a plain put could replace what another writer has
    /// just created, so each writer claims the name first: it writes
    /// `claims/PATH/CLAIM` (`claim` names its content), then lists the
    /// name's claims, and writes the object only if it finds no other's.
    /// Of two writers racing, the second to list sees the first's claim, so
    /// at most one writes (both may back off, and retry); a claim stays with
    /// its object (`delete_exclusive` removes both).
    pub async fn create_exclusive(&self, path: &Path, data: Bytes, claim: &str) -> Result<bool> {
        if self.honours_create().await? {
            return self.put_new_once(path, data).await;
        }
        self.create_claimed(path, data, claim).await
    }

    /// `create_exclusive` by claims on every store: also where create-only
    /// puts are refused one after another but not when they race (seen on
    /// an S3 server: two racing creates both succeeded). For what is made
    /// once and must be one (a repository's config).
    pub async fn create_claimed(&self, path: &Path, data: Bytes, claim: &str) -> Result<bool> {
        if self.get_if_exists(path).await?.is_some() {
            return Ok(false);
        }
        let claims = format!("{CLAIMS}/{path}");
        let mine = Path::from(format!("{claims}/{claim}"));
        self.put_new(&mine, Bytes::from_static(b"")).await?;
        let others = self
            .list(&claims)
            .await?
            .iter()
            .any(|m| m.location.filename() != Some(claim));
        if others {
            self.delete(&mine).await?;
            return Ok(false);
        }
        self.put_new_once(path, data).await
    }

    pub async fn get(&self, path: &Path) -> Result<Bytes> {
        let r = self.inner.get(path).await.map_err(|e| Error::storage(path, e))?;
        r.bytes().await.map_err(|e| Error::storage(path, e))
    }

    /// The object at `path`, or `None` if there is none.
    pub async fn get_if_exists(&self, path: &Path) -> Result<Option<Bytes>> {
        match self.inner.get(path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| Error::storage(path, e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::storage(path, e)),
        }
    }

    pub async fn get_range(&self, path: &Path, range: Range<u64>) -> Result<Bytes> {
        self.inner
            .get_range(path, range)
            .await
            .map_err(|e| Error::storage(path, e))
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let p = Path::from(prefix);
        self.inner
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| Error::storage(prefix, e))
    }

    /// Deletes `path`; an object already gone is not an error. object_store
    /// does not retry a DELETE that timed out or was cut off (it does not
    /// know it idempotent); here it is, so it is sent again.
    pub async fn delete(&self, path: &Path) -> Result<()> {
        match again_if_cut_off(&mut false, |_| self.inner.delete(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::storage(path, e)),
        }
    }

    /// Deletes an object `create_exclusive` made, and its claims.
    pub async fn delete_exclusive(&self, path: &Path) -> Result<()> {
        self.delete(path).await?;
        if self.honours_create().await? {
            return Ok(());
        }
        for claim in self.list(&format!("{CLAIMS}/{path}")).await? {
            self.delete(&claim.location).await?;
        }
        Ok(())
    }
}

/// The repository's layout: one folder per kind of object.
pub mod layout {
    use super::*;

    pub const CONFIG: &str = "config";
    pub const KEYS: &str = "keys";
    pub const DATA: &str = "data";
    pub const INDEX: &str = "index";
    pub const SNAPSHOTS: &str = "snapshots";
    pub const LOCKS: &str = "locks";
    pub const PLANS: &str = "plans";

    pub fn config() -> Path {
        Path::from(CONFIG)
    }

    /// Packs fan out over 256 folders, as in restic, to keep listings short.
    pub fn pack(id: &Id) -> Path {
        let h = id.to_hex();
        Path::from(format!("{DATA}/{}/{h}", &h[..2]))
    }

    pub fn of(kind: &str, id: &Id) -> Path {
        Path::from(format!("{kind}/{}", id.to_hex()))
    }

    /// The id in an object's name, if it is one of ours.
    pub fn id_of(path: &Path) -> Option<Id> {
        path.filename().and_then(Id::from_hex)
    }

    /// Every pack in the storage, with its size.
    pub async fn packs(store: &Store) -> Result<std::collections::HashMap<Id, u64>> {
        Ok(store
            .list(DATA)
            .await?
            .iter()
            .filter_map(|m| id_of(&m.location).map(|id| (id, m.size)))
            .collect())
    }
}
