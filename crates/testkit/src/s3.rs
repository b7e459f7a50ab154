//! A real S3 server for a test: by default s3s-fs on 127.0.0.1, storing
//! into a temporary directory, on a thread and runtime of its own so that
//! synchronous and async tests, and other processes, can all use it. When
//! `STRONGBOX_TEST_S3_ENDPOINT` is set, the external server it names
//! instead (`bench/drills_on_garage.sh` runs the loss drills on a Garage
//! cluster that way), with `STRONGBOX_TEST_S3_ACCESS_KEY`, `…_SECRET_KEY`,
//! `…_REGION` and `…_BUCKET`; each server then works under a prefix of its
//! own in that bucket, so runs never meet.
//!
//! The in-process server injects faults on request (`Faults`): answers of
//! 503 SlowDown or 500 InternalError, connections closed unanswered, and
//! stalls, drawn from a seed, to test what a store's bad day does.

pub const ACCESS_KEY: &str = "test-access";
pub const SECRET_KEY: &str = "test-secret";
pub const REGION: &str = "us-east-1";
/// The one bucket the in-process server holds.
pub const BUCKET: &str = "backups";

pub struct S3Server {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    access_key: String,
    secret_key: String,
    region: String,
    bucket: String,
    /// Empty in process; `run-…/` on an external server.
    prefix: String,
    /// The in-process server's directory (none for an external one).
    dir: Option<tempfile::TempDir>,
    /// What the in-process server injects (inert for an external one).
    pub faults: Faults,
}

impl S3Server {
    pub fn start() -> S3Server {
        Self::external().unwrap_or_else(Self::in_process)
    }

    /// The external server `STRONGBOX_TEST_S3_ENDPOINT` names, if any.
    pub fn external() -> Option<S3Server> {
        let var = |name: &str| std::env::var(format!("STRONGBOX_TEST_S3_{name}")).ok();
        let endpoint = var("ENDPOINT")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Some(S3Server {
            endpoint,
            access_key: var("ACCESS_KEY").expect("STRONGBOX_TEST_S3_ACCESS_KEY"),
            secret_key: var("SECRET_KEY").expect("STRONGBOX_TEST_S3_SECRET_KEY"),
            region: var("REGION").unwrap_or_else(|| REGION.into()),
            bucket: var("BUCKET").unwrap_or_else(|| BUCKET.into()),
            prefix: format!("run-{}-{nanos}/", std::process::id()),
            dir: None,
            faults: Faults::new(0),
        })
    }

    /// The in-process server, whatever the environment says.
    pub fn in_process() -> S3Server {
        Self::with_faults(Faults::new(0))
    }

    /// The in-process server, injecting what `faults` says (none until
    /// told: see `Faults::set`).
    pub fn with_faults(faults: Faults) -> S3Server {
        use s3s::auth::SimpleAuth;
        use s3s::service::S3ServiceBuilder;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(dir.path()).unwrap();
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let serving = faults.clone();
        // Detached: it serves until the test process ends.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let service = FaultyService {
                        inner: service.clone(),
                        faults: serving.clone(),
                    };
                    tokio::spawn(async move {
                        let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        S3Server {
            endpoint,
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            region: REGION.into(),
            bucket: BUCKET.into(),
            prefix: String::new(),
            dir: Some(dir),
            faults,
        }
    }

    /// A repository location on this server: `s3://BUCKET/[PREFIX]name`.
    pub fn repository(&self, name: &str) -> String {
        format!("s3://{}/{}{name}", self.bucket, self.prefix)
    }

    /// Where the bucket's objects land on disk.
    pub fn bucket_dir(&self) -> std::path::PathBuf {
        let dir = self.dir.as_ref().expect("only the in-process server has a directory");
        dir.path().join(BUCKET)
    }

    /// The `AWS_*` variables that point a client at this server.
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", self.region.clone()),
        ]
    }
}

/// What the in-process server does wrong, per request, changeable while it
/// serves. Rates are per thousand requests, drawn from a seeded generator
/// (which requests meet a fault depends on the order they arrive in, so a
/// seed replays the rates and the sequence, not the exact requests).
#[derive(Clone)]
pub struct Faults(std::sync::Arc<std::sync::Mutex<FaultState>>);

/// The faults to inject.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultPlan {
    /// Answered 503 with an S3 `SlowDown` body (throttling).
    pub slow_down_per_mille: u32,
    /// Answered 500 with an S3 `InternalError` body.
    pub internal_error_per_mille: u32,
    /// The connection closed with no answer (a proxy or server dying).
    pub dropped_per_mille: u32,
    /// Served, then answered only after `stall`: longer than the client's
    /// timeout, a request that times out although it was done (a put that
    /// landed, for all its writer knows, or not).
    pub stalled_per_mille: u32,
    pub stall: std::time::Duration,
    /// Every request answered 503: the store is down.
    pub down: bool,
}

impl FaultPlan {
    /// A store's bad day, as the model tests meet it: 10 % of requests
    /// answered 503 SlowDown, 3 % 500, 3 % dropped, 2 % answered after 3 s
    /// (past the 2 s timeout the tests give their clients).
    pub fn bad_day() -> FaultPlan {
        FaultPlan {
            slow_down_per_mille: 100,
            internal_error_per_mille: 30,
            dropped_per_mille: 30,
            stalled_per_mille: 20,
            stall: std::time::Duration::from_secs(3),
            down: false,
        }
    }
}

/// How many requests met each fault, and how many were served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub slow_down: u64,
    pub internal_error: u64,
    pub dropped: u64,
    pub stalled: u64,
    pub down: u64,
    pub served: u64,
}

impl Injected {
    pub fn faults(&self) -> u64 {
        self.slow_down + self.internal_error + self.dropped + self.stalled + self.down
    }
}

pub struct FaultState {
    /// Requests still served before the store goes down (`down_after`).
    until_down: Option<u64>,
    rng: u64,
    plan: FaultPlan,
    injected: Injected,
}

#[derive(Clone, Copy)]
enum Fault {
    None,
    SlowDown,
    InternalError,
    Dropped,
    Stalled(std::time::Duration),
    Down,
}

impl Faults {
    /// No faults until `set`; `seed` drives which requests meet them.
    pub fn new(seed: u64) -> Faults {
        Faults(std::sync::Arc::new(std::sync::Mutex::new(FaultState {
            until_down: None,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            plan: FaultPlan::default(),
            injected: Injected::default(),
        })))
    }

    pub fn set(&self, plan: FaultPlan) {
        let mut s = self.0.lock().unwrap();
        s.plan = plan;
        s.until_down = None;
    }

    /// `plan`, then down after `requests` more requests: a store that
    /// goes away in the middle of something.
    pub fn down_after(&self, requests: u64, plan: FaultPlan) {
        let mut s = self.0.lock().unwrap();
        s.plan = plan;
        s.until_down = Some(requests);
    }

    pub fn injected(&self) -> Injected {
        self.0.lock().unwrap().injected
    }

    fn draw(&self) -> Fault {
        let mut s = self.0.lock().unwrap();
        match s.until_down {
            Some(0) => s.plan.down = true,
            Some(n) => s.until_down = Some(n - 1),
            None => {}
        }
        let plan = s.plan;
        // xorshift64: the sequence a seed replays.
        s.rng ^= s.rng << 13;
        s.rng ^= s.rng >> 7;
        s.rng ^= s.rng << 17;
        let mut roll = (s.rng % 1000) as u32;
        let mut hit = |rate: u32| {
            let hit = roll < rate;
            roll = roll.saturating_sub(rate);
            hit
        };
        let fault = if plan.down {
            Fault::Down
        } else if hit(plan.slow_down_per_mille) {
            Fault::SlowDown
        } else if hit(plan.internal_error_per_mille) {
            Fault::InternalError
        } else if hit(plan.dropped_per_mille) {
            Fault::Dropped
        } else if hit(plan.stalled_per_mille) {
            Fault::Stalled(plan.stall)
        } else {
            Fault::None
        };
        let n = &mut s.injected;
        match fault {
            Fault::None => n.served += 1,
            Fault::SlowDown => n.slow_down += 1,
            Fault::InternalError => n.internal_error += 1,
            Fault::Dropped => n.dropped += 1,
            Fault::Stalled(_) => n.stalled += 1,
            Fault::Down => n.down += 1,
        }
        fault
    }
}

/// The S3 service behind `Faults`.
#[derive(Clone)]
struct FaultyService {
    inner: s3s::service::S3Service,
    faults: Faults,
}

fn s3_error(status: u16, code: &str) -> s3s::HttpResponse {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test server</Message></Error>"
    );
    let mut r = s3s::HttpResponse::new(s3s::Body::from(body));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for FaultyService {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let fault = self.faults.draw();
        let inner = self.inner.clone();
        Box::pin(async move {
            match fault {
                Fault::None => hyper::service::Service::call(&inner, req).await,
                Fault::SlowDown | Fault::Down => Ok(s3_error(503, "SlowDown")),
                Fault::InternalError => Ok(s3_error(500, "InternalError")),
                // An error makes hyper close the connection unanswered.
                Fault::Dropped => Err(s3s::HttpError::new("injected: connection dropped".into())),
                Fault::Stalled(stall) => {
                    let answer = hyper::service::Service::call(&inner, req).await;
                    tokio::time::sleep(stall).await;
                    answer
                }
            }
        })
    }
}
