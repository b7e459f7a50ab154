//! `strongbox serve`: the API, the job workers, and (with `--demo`) a
//! ready-made identity domain, user and SQLite deployment to try.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use strongbox_catalog::Role;
use strongbox_core::Service;
use strongbox_core::host_policy::HostPolicy;
use strongbox_core::pitr::WalArchives;
use strongbox_core::schedule::BackupConfig;
use strongbox_core::worker::{Stop, WorkerSetup, worker};
use strongbox_repo::{Repository, Store};

use crate::config::{Config, env};
use crate::server_repo;

#[derive(Args)]
pub struct ServeArgs {
    /// TOML config file; every setting can also come from STRONGBOX_* variables.
    #[arg(long, env = "STRONGBOX_CONFIG")]
    config: Option<PathBuf>,
    /// Also create identity domain `usexample`, a user, and a SQLite deployment `db12c`.
    #[arg(long)]
    demo: bool,
}

struct Settings {
    listen: SocketAddr,
    data_dir: PathBuf,
    /// A directory or `s3://BUCKET/PREFIX` (endpoint and credentials from `AWS_*`).
    repository: Option<String>,
    tls: Option<(PathBuf, PathBuf)>,
    public_url: String,
    workers: usize,
    retry_after: u64,
    signin_failures: u32,
    metrics: bool,
    shutdown_grace: Duration,
    lease: Duration,
    /// How often the scheduler looks for due backups.
    schedule_check: Duration,
    sync: Duration,
    backup_defaults: BackupConfig,
    catalog: String,
    labels: Vec<String>,
    /// What deployments may run and touch (`[allow]`, the server's own
    /// files refused).
    host_policy: HostPolicy,
    /// Where `/metrics` is served, if not on the API's address.
    metrics_listen: Option<SocketAddr>,
    copies: Vec<crate::config::CopyConfig>,
    copy_every: Duration,
}

fn settings(args: &ServeArgs) -> Result<Settings> {
    let file = Config::read(args.config.as_deref())?;
    let backup_defaults = file.backup_defaults()?;
    let copies = file.copies()?;
    let data_dir: PathBuf = env("STRONGBOX_DATA_DIR")?
        .or(file.data_dir.clone())
        .unwrap_or_else(|| "strongbox-data".into());
    let catalog = file.catalog(&data_dir)?;
    let mut host_policy = file.host_policy(file.own_files(&data_dir, args.config.as_deref())?)?;
    if args.demo {
        // The demo's database, in a folder of its own (per identity
        // domain, as the demo's is one).
        host_policy.database_files.push(demo_dir(&data_dir)?.join("{domain}"));
    }
    let labels: Vec<String> = match std::env::var("STRONGBOX_LABELS") {
        Ok(v) => v
            .split(',')
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        Err(_) => file.labels.clone().unwrap_or_default(),
    };
    for l in &labels {
        strongbox_core::placement::check_label(l).context("labels")?;
    }
    let listen = env("STRONGBOX_LISTEN")?
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".parse().unwrap());
    let cert = env("STRONGBOX_TLS_CERT")?.or(file.tls_cert);
    let key = env("STRONGBOX_TLS_KEY")?.or(file.tls_key);
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    Ok(Settings {
        listen,
        data_dir,
        catalog,
        labels,
        repository: env("STRONGBOX_REPOSITORY")?.or(file.repository),
        public_url: env("STRONGBOX_PUBLIC_URL")?
            .or(file.public_url)
            .unwrap_or_else(|| format!("{scheme}://{listen}")),
        tls,
        workers: env("STRONGBOX_WORKERS")?.or(file.workers).unwrap_or(2).max(1),
        retry_after: env("STRONGBOX_RETRY_AFTER")?.or(file.retry_after).unwrap_or(60),
        signin_failures: env("STRONGBOX_SIGNIN_FAILURES")?
            .or(file.signin_failures)
            .unwrap_or(strongbox_api::SIGNIN_FAILURES_ALLOWED),
        metrics: env("STRONGBOX_METRICS")?.or(file.metrics).unwrap_or(true),
        shutdown_grace: Duration::from_secs(
            env("STRONGBOX_SHUTDOWN_GRACE_SECONDS")?
                .or(file.shutdown_grace_seconds)
                .unwrap_or(60),
        ),
        lease: Duration::from_secs(
            env("STRONGBOX_LEASE_SECONDS")?
                .or(file.lease_seconds)
                .unwrap_or(30)
                .max(1),
        ),
        sync: Duration::from_secs(
            env("STRONGBOX_SYNC_SECONDS")?
                .or(file.sync_seconds)
                .unwrap_or(60)
                .max(1),
        ),
        schedule_check: Duration::from_millis(
            env("STRONGBOX_SCHEDULE_CHECK_MS")?
                .or(file.schedule_check_ms)
                .unwrap_or(30_000)
                .max(10),
        ),
        backup_defaults,
        host_policy,
        metrics_listen: env("STRONGBOX_METRICS_LISTEN")?.or(file.metrics_listen),
        copies,
        copy_every: Duration::from_secs(
            env("STRONGBOX_COPY_SECONDS")?
                .or(file.copy_seconds)
                .unwrap_or(10)
                .max(1),
        ),
    })
}

/// The demo deployment's folder: beside the data directory, never in it
/// (no deployment may touch the server's own files).
fn demo_dir(data_dir: &Path) -> Result<PathBuf> {
    let mut name = data_dir
        .file_name()
        .context("the data directory has no name")?
        .to_os_string();
    name.push("-demo");
    Ok(std::env::current_dir()?.join(data_dir).with_file_name(name))
}

/// How a database host's tools (PostgreSQL's archive_command and
/// restore_command) reach a repository: this binary's `repo` verbs, with
/// the password file where the password is kept in one (else
/// STRONGBOX_PASSWORD must be set for them; so must `AWS_*` for a
/// repository on S3). The password file's path is absolute.
fn repo_command_line(location: &str, password_file: Option<&Path>) -> Result<String> {
    let quote = |p: &Path| {
        let s = p.display().to_string();
        if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
            s
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let exe = std::env::current_exe().context("locating the strongbox binary")?;
    let mut line = format!("{} repo -r {}", quote(&exe), quote(Path::new(location)));
    if let Some(password) = password_file {
        line += &format!(" --password-file {}", quote(password));
    }
    Ok(line)
}

/// The copies of `copies`, each with its password: from
/// STRONGBOX_COPY_<NAME>_PASSWORD, else kept in `DATA_DIR/copy-NAME.password`
/// (drawn at random the first time: keep a copy offline, as of the
/// repository's). `data_dir` is absolute.
fn copies(s: &Settings, data_dir: &Path) -> Result<Vec<Arc<strongbox_core::copies::RepoCopy>>> {
    let mut out = Vec::new();
    for c in &s.copies {
        let var = format!(
            "STRONGBOX_COPY_{}_PASSWORD",
            c.name.to_ascii_uppercase().replace('-', "_")
        );
        let (password, file) =
            server_repo::password_from(&var, data_dir.join(format!("copy-{}.password", c.name)), true)?;
        out.push(Arc::new(strongbox_core::copies::RepoCopy::new(
            c.name.clone(),
            c.repository.clone(),
            password,
            repo_command_line(&c.repository, file.as_deref())?,
            s.data_dir.join("tmp"),
            c.recovery_window_days,
        )));
    }
    Ok(out)
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let s = settings(&args)?;
    if !s.data_dir.exists() {
        // Its owner's alone: the catalog holds deployments' connection
        // settings (database passwords among them) and the repository
        // password may be kept here.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&s.data_dir)
            .with_context(|| format!("creating the data directory {}", s.data_dir.display()))?;
    }
    std::fs::create_dir_all(s.data_dir.join("tmp"))?;
    let catalog = strongbox_catalog::open(&s.catalog)
        .await
        .context("opening the catalog")?;
    // Absolute: the paths go into command lines PostgreSQL runs elsewhere.
    let data_dir = s.data_dir.canonicalize()?;
    let location = server_repo::location(s.repository.as_deref(), &data_dir);
    let store = Store::open(&location)?;
    let (password, password_file) =
        server_repo::password_from("STRONGBOX_REPO_PASSWORD", data_dir.join("repository.password"), true)?;
    // Replicas started together on a new repository: one creates it, the
    // others open it.
    let (repo, created) = Repository::open_or_init(store, password.as_bytes(), Default::default()).await?;
    if created {
        tracing::info!("created the repository at {location}");
    }
    server_repo::key_warning(&repo, &location, &s.data_dir).await;
    let repo = Arc::new(repo);
    let wal = Arc::new(WalArchives::new(
        repo.clone(),
        repo_command_line(&location, password_file.as_deref())?,
        s.data_dir.join("tmp"),
    ));
    let mut service = Service::new(catalog.clone());
    service.host_policy = s.host_policy.clone();
    service.wal = Some(wal.clone());
    service.backup_defaults = s.backup_defaults.clone();
    service.copies = copies(&s, &data_dir)?;
    if let Some(path) = std::env::var_os("STRONGBOX_TEST_CLOCK_FILE") {
        service.clock = Arc::new(FileClock(path.into()));
    }
    let service = Arc::new(service);
    // The catalog is an index of the repository: a new or older catalog
    // gets what the repository holds before any job runs.
    match service.sync().await {
        Ok(r) => tracing::info!("catalog synced with the repository: {r}"),
        Err(e) => tracing::warn!("syncing the catalog with the repository: {e}"),
    }
    tokio::spawn(strongbox_core::records::sync_periodically(service.clone(), s.sync));
    tokio::spawn(strongbox_core::health::probe(service.clone(), Duration::from_secs(1)));
    for copy in &service.copies {
        tokio::spawn(strongbox_core::copies::copier(
            service.clone(),
            copy.clone(),
            s.copy_every,
        ));
    }
    if args.demo {
        demo(&service, &s).await?;
    }
    let (stop, stop_rx) = tokio::sync::watch::channel(Stop::Running);
    let setup = WorkerSetup {
        repo,
        owner: format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 4]>())),
        lease: s.lease,
        scratch: s.data_dir.join("tmp"),
        wal,
        labels: s.labels.clone(),
        stop: stop_rx,
    };
    tokio::spawn(strongbox_core::placement::announcer(
        service.clone(),
        setup.owner.clone(),
        s.labels.clone(),
    ));
    let jobs = job_runtime(s.workers)?;
    let workers: Vec<_> = (0..s.workers)
        .map(|_| jobs.spawn(worker(service.clone(), setup.clone())))
        .collect();
    tokio::spawn(strongbox_core::schedule::scheduler(service.clone(), s.schedule_check));
    tokio::spawn(strongbox_core::shipping::supervise(service.clone(), s.labels.clone()));
    let shippers = service.clone();
    let mut state =
        strongbox_api::AppState::new(service, &s.public_url, s.retry_after).with_signin_failures(s.signin_failures);
    if s.metrics {
        state = state.with_metrics(strongbox_api::metrics::install().context("installing the metrics recorder")?);
        if let Some(at) = s.metrics_listen {
            state = state.with_metrics_elsewhere(format!("http://{at}"));
        }
    }
    let state = Arc::new(state);
    if let (true, Some(at)) = (s.metrics, s.metrics_listen) {
        let metrics = strongbox_api::metrics_router(state.clone());
        let listener = std::net::TcpListener::bind(at).with_context(|| format!("listening for metrics on {at}"))?;
        listener.set_nonblocking(true)?;
        tracing::info!("serving /metrics on http://{at}");
        let server = axum_server::from_tcp(listener)?;
        tokio::spawn(async move { server.serve(metrics.into_make_service()).await });
    }
    if s.tls.is_none() && !s.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {} without TLS: passwords would cross the network in clear text; set tls_cert and \
             tls_key (or STRONGBOX_TLS_CERT and STRONGBOX_TLS_KEY) to a certificate and its key to serve HTTPS",
            s.listen
        );
    }
    // The client's address: failed sign-ins are throttled by it.
    let app = strongbox_api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tracing::info!("strongbox serving {} (listening on {})", s.public_url, s.listen);
    let handle = axum_server::Handle::new();
    let stop_shipping = move || shippers.shippers.stop_all();
    tokio::spawn(shut_down(
        stop,
        workers,
        s.shutdown_grace,
        handle.clone(),
        stop_shipping,
    ));
    match &s.tls {
        Some((cert, key)) => {
            // from_pem_file sets ALPN to h2 and http/1.1.
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| format!("loading TLS certificate {} and key {}", cert.display(), key.display()))?;
            axum_server::bind_rustls(s.listen, tls)
                .handle(handle)
                .serve(app)
                .await?;
        }
        None => axum_server::bind(s.listen).handle(handle).serve(app).await?,
    }
    jobs.shutdown_background();
    tracing::info!("stopped");
    Ok(())
}

/// On SIGTERM (or SIGINT): lease no new job; give running ones `grace` to
/// finish, then hand them back to the queue, where another server takes
/// them at once; stop shipping logs (pushing what is held); then stop
/// listening and let requests in flight complete.
/// Requests are answered throughout: clients polling a job keep their
/// answers until the server is gone.
async fn shut_down(
    stop: tokio::sync::watch::Sender<Stop>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    grace: Duration,
    server: axum_server::Handle<SocketAddr>,
    stop_shipping: impl FnOnce() + Send + 'static,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => return tracing::error!("cannot catch SIGTERM; stopping will not be graceful"),
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        "shutting down: no new jobs; running ones get {} s to finish",
        grace.as_secs()
    );
    let _ = stop.send(Stop::Draining);
    let mut all = futures::future::join_all(workers);
    if tokio::time::timeout(grace, &mut all).await.is_err() {
        tracing::warn!("grace period over: handing running jobs back to the queue");
        let _ = stop.send(Stop::Now);
        all.await;
    }
    // Log shippers push what they hold before the server goes.
    let _ = tokio::task::spawn_blocking(stop_shipping).await;
    server.graceful_shutdown(Some(Duration::from_secs(10)));
}

/// How much less CPU a job thread gets than a request thread when both want
/// it (nice 10 against 0: about a tenth, by Linux's CFS weights).
const JOB_NICE: i32 = 10;

/// Jobs run on a runtime of their own whose threads, and the threads those
/// start (the backup pipeline's, the engines'), run at a lower CPU priority:
/// requests preempt backups, and the jobs get every cycle the API leaves.
/// (`bench/load_bench.sh`, ~60 backups/s beside 500 requests/s on 2 cores:
/// with jobs on the request runtime, POST p50 25 ms and p99 157 ms; with
/// this and the catalog and index work of the same change, 4 ms and 44 ms.)
fn job_runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.clamp(1, 4))
        .thread_name("strongbox-job")
        .on_thread_start(|| {
            // A Linux thread id names this thread alone; threads it creates
            // inherit its nice value. Failure leaves the default priority.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), JOB_NICE);
        })
        .enable_all()
        .build()?)
}

/// For tests only: the time is what a file says (RFC 3339), so that a
/// test moves the server's clock through schedule windows without waiting.
/// Tests replace the file atomically; an unreadable file is the real time.
struct FileClock(PathBuf);

impl strongbox_core::Clock for FileClock {
    fn now(&self) -> time::OffsetDateTime {
        std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| strongbox_core::dates::parse_rfc3339(t.trim()))
            .unwrap_or_else(time::OffsetDateTime::now_utc)
    }
}

async fn demo(service: &Service, s: &Settings) -> Result<()> {
    let catalog = service.catalog.as_ref();
    let domain = "usexample";
    let user = std::env::var("STRONGBOX_DEMO_USER").unwrap_or_else(|_| "serviceadmin".into());
    catalog.ensure_domain(domain).await?;
    if catalog.user(&user).await?.is_none() || std::env::var("STRONGBOX_DEMO_PASSWORD").is_ok() {
        let (password, generated) = match std::env::var("STRONGBOX_DEMO_PASSWORD") {
            Ok(p) => (p, false),
            Err(_) => (hex::encode(rand::random::<[u8; 9]>()), true),
        };
        service.put_user(&user, domain, &password, Role::Admin).await?;
        if generated {
            // Kept in a file only its owner reads, never printed or logged.
            let file = s.data_dir.join("demo-user.password");
            let _ = std::fs::remove_file(&file);
            server_repo::write_secret(&file, &password)?;
            tracing::info!(
                "demo user {user} in identity domain {domain}: password in {}",
                file.display()
            );
        }
    }
    let db = demo_dir(&s.data_dir)?.join(domain).join("db12c.sqlite");
    if !db.exists() {
        std::fs::create_dir_all(db.parent().unwrap())?;
        let c = rusqlite::Connection::open(&db)?;
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, created_at TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO orders SELECT i, 'customer ' || (i % 977), (i * 37 % 10000) / 100.0,
                    datetime('2026-01-01', '+' || i || ' minutes') FROM n;",
        )?;
    }
    service
        .register_deployment(
            domain,
            "db12c",
            "sqlite".into(),
            serde_json::json!({ "path": db }),
            None,
        )
        .await?;
    tracing::info!(
        "try: curl -i -X POST -u {user}:PASSWORD -H 'X-ID-TENANT-NAME: {domain}' -H 'Content-Type: application/json' \
         -d '{{}}' {}{}/{domain}/db12c/backups",
        s.public_url,
        strongbox_api::PREFIX
    );
    Ok(())
}
