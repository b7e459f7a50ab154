//! A real S3 server for a test: by default s3s-fs on 127.0.0.1, storing
//! into a temporary directory, on a thread and runtime of its own so that
//! synchronous and async tests, and other processes, can all use it. When
//! `STRONGBOX_TEST_S3_ENDPOINT` is set, the external server it names
//! instead (`bench/drills_on_garage.sh` runs the loss drills on a Garage
//! cluster that way), with `STRONGBOX_TEST_S3_ACCESS_KEY`, `…_SECRET_KEY`,
//! `…_REGION` and `…_BUCKET`; each server then works under a prefix of its
//! own in that bucket, so runs never meet.

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
        })
    }

    /// The in-process server, whatever the environment says.
    pub fn in_process() -> S3Server {
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
                    let service = service.clone();
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
