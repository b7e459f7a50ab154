//! The server as a real process over real TLS (a test CA), driven by real
//! curl: what the API test files share.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
    /// The variables it was started with (a restart uses them again).
    pub env: Vec<(String, String)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use strongbox_testkit::test_pki;

pub use strongbox_testkit::free_port;

/// Starts `strongbox serve --demo` on `dir` (PKI made on first use).
pub fn start_in(dir: &Path, port: u16) -> Server {
    start_with(dir, port, &[])
}

/// What the test servers allow deployments to run and touch (`[allow]`):
/// files, data directories and CA files under the temporary directory
/// (where every test keeps its databases, clusters and certificates), the machine's PostgreSQL
/// programs, MariaDB's clients, `runuser` (PostgreSQL's stop and start
/// commands run as `postgres`) and `true`, the loopback address.
pub fn allow_env() -> Vec<(&'static str, String)> {
    let tmp = serde_json::json!([std::env::temp_dir()]).to_string();
    vec![
        ("STRONGBOX_ALLOW_DATABASE_FILES", tmp.clone()),
        ("STRONGBOX_ALLOW_CERTIFICATE_FILES", tmp.clone()),
        ("STRONGBOX_ALLOW_DATA_DIRECTORIES", tmp),
        (
            "STRONGBOX_ALLOW_BIN_DIRS",
            serde_json::json!([strongbox_testkit::PG_BIN]).to_string(),
        ),
        (
            "STRONGBOX_ALLOW_PROGRAMS",
            r#"["mariadb", "mariadb-dump", "runuser", "true"]"#.into(),
        ),
        ("STRONGBOX_ALLOW_HOSTS", r#"["127.0.0.1", "localhost"]"#.into()),
    ]
}

/// `start_in`, with more environment variables for the server (they win
/// over the test defaults, such as the 2 s lease).
pub fn start_with(dir: &Path, port: u16, env: &[(&str, String)]) -> Server {
    let server = spawn_with(dir, port, env);
    wait_for_port(port);
    server
}

/// `start_with` without waiting for the server to listen (servers started
/// together).
pub fn spawn_with(dir: &Path, port: u16, env: &[(&str, String)]) -> Server {
    if !dir.join("cert.pem").exists() {
        test_pki(dir);
    }
    let child = Command::new(env!("CARGO_BIN_EXE_strongbox"))
        .args(["serve", "--demo"])
        .envs(allow_env())
        .env("STRONGBOX_DATA_DIR", dir.join("data"))
        .env("STRONGBOX_LISTEN", format!("127.0.0.1:{port}"))
        .env("STRONGBOX_TLS_CERT", dir.join("cert.pem"))
        .env("STRONGBOX_TLS_KEY", dir.join("key.pem"))
        .env("STRONGBOX_PUBLIC_URL", format!("https://localhost:{port}"))
        .env("STRONGBOX_DEMO_PASSWORD", "Pa55_word")
        .env("STRONGBOX_LEASE_SECONDS", "2")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        // Kept for the tests that read what the server logged.
        .stderr(log_file(dir))
        .spawn()
        .unwrap();
    Server {
        child,
        dir: dir.to_path_buf(),
        port,
        env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
    }
}

/// The server's output (stderr), across restarts: `DIR/server.log`.
pub fn log_file(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap()
}

/// Adds a user to the server's catalog with `strongbox admin user`; the
/// password is `NAME-pw`.
pub fn add_user(dir: &Path, name: &str, domain: &str, role: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_strongbox"))
        .args(["admin", "user", name, "--domain", domain, "--role", role])
        .env("STRONGBOX_DATA_DIR", dir.join("data"))
        .env("STRONGBOX_NEW_PASSWORD", format!("{name}-pw"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Waits until the server accepts connections on `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server on port {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where a loss drill keeps its repository, and the variables a server
/// needs to reach it: a directory `name` under `root`, or, when
/// `STRONGBOX_TEST_S3_ENDPOINT` names an external S3 server
/// (`bench/drills_on_garage.sh`: a Garage cluster), a prefix of its bucket.
pub fn drill_repository(root: &Path, name: &str) -> (String, Vec<(&'static str, String)>) {
    match strongbox_testkit::s3::S3Server::external() {
        Some(s3) => (s3.repository(name), s3.env().to_vec()),
        None => (root.join(name).display().to_string(), Vec::new()),
    }
}

/// The variables that reach a model's repository on a flaky S3 `server`,
/// requests timing out in 2 s (its late answers come after 3 s).
pub fn flaky_s3_reach(server: &strongbox_testkit::s3::S3Server) -> Vec<(&'static str, String)> {
    let mut env = server.env().to_vec();
    env.push(("STRONGBOX_S3_TIMEOUT_SECONDS", "2".to_string()));
    env
}

impl Server {
    /// The last `n` warnings and errors in the server's log, one a line:
    /// what a failing test shows of an answer's "see the server log".
    pub fn last_warnings(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        warned[warned.len().saturating_sub(n)..].join("\n")
    }
}

pub fn start(dir: &tempfile::TempDir) -> Server {
    start_in(dir.path(), free_port())
}

impl Server {
    /// Stops the server and starts it again on the same data and port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let env: Vec<(&str, String)> = self.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        *self = start_with(&self.dir, self.port, &env);
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// curl with the test CA (the seed's `--cacert`), plus `args`; returns
    /// (status line, lower-cased headers, body).
    pub fn curl(&self, args: &[&str]) -> (String, Vec<(String, String)>, String) {
        let ca = self.dir.join("ca.pem");
        let out = Command::new("curl")
            .args(["-sS", "-i", "--cacert"])
            .arg(&ca)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.is_empty(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines.next().unwrap_or_default().trim().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
    h.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
}

pub const BACKUPS: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/db12c/backups";

pub const AUTH: [&str; 6] = [
    "-u",
    "serviceadmin:Pa55_word",
    "-H",
    "X-ID-TENANT-NAME:usexample",
    "-H",
    "Content-Type:application/json",
];

impl Server {
    pub fn json(&self, args: &[&str]) -> (String, serde_json::Value) {
        let (status, _, body) = self.curl(&[&AUTH[..], args].concat());
        (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
    }

    pub fn post_backup(&self, service: &str, extra: &[&str]) -> (String, String) {
        let url = self.url(&format!(
            "/paas/service/dbcs/api/v1.1/instances/usexample/{service}/backups"
        ));
        let (status, h, body) = self.curl(&[&AUTH[..], extra, &["-X", "POST", "-d", "{}", &url]].concat());
        let location = h
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .unwrap_or(body);
        (status, location)
    }

    /// Deletes a backup through the API (`DELETE …/backups/{dbTag}`) and
    /// waits for the expire job: its final status.
    pub fn delete_backup(&self, service: &str, tag: &str) -> serde_json::Value {
        let location = self.request_delete(service, tag);
        self.wait_for(&location, "Succeeded")
    }

    /// Asks for a backup's deletion: its expire job's `Location`.
    pub fn request_delete(&self, service: &str, tag: &str) -> String {
        let url = self.url(&format!(
            "/paas/service/dbcs/api/v1.1/instances/usexample/{service}/backups/{tag}"
        ));
        let (status, h, body) = self.curl(&[&AUTH[..], &["-X", "DELETE", &url]].concat());
        assert_eq!(status, "HTTP/2 202", "DELETE {tag}: {body}");
        header(&h, "location").to_string()
    }

    pub fn wait_for(&self, location: &str, wanted: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, v) = self.json(&[location]);
            if v["job_status"] == wanted {
                return v;
            }
            assert!(v["job_status"] != "Failed" && Instant::now() < deadline, "{v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A SQLite database of about `mib` MiB: `rows` rows of hex text.
pub fn big_database(path: &Path, mib: usize) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    let rows = (mib * 1024 * 1024 / 1100) as i64;
    c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    c.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO t SELECT i, hex(randomblob(500)) || ' row ' || i FROM n",
        [rows],
    )
    .unwrap();
    rows
}

impl Server {
    /// `strongbox repo` on the server's own repository, with its password file.
    pub fn repo_cli(&self, args: &[&str]) -> std::process::Output {
        let data = self.dir.join("data");
        self.repo_cli_on(&data.join("repository"), &data.join("repository.password"), args)
    }

    /// The tags of the snapshots the repository at `repository` holds,
    /// sorted (`repo --json snapshots`).
    pub fn snapshot_tags(&self, repository: &Path, password_file: &Path) -> Vec<String> {
        let out = self.repo_cli_on(repository, password_file, &["--json", "snapshots"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut tags: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["tags"][0].as_str().unwrap().to_string())
            .collect();
        tags.sort();
        tags
    }

    /// `strongbox repo ARGS` on the repository at `repository` (a copy, say).
    pub fn repo_cli_on(&self, repository: &Path, password_file: &Path, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_strongbox"))
            .arg("repo")
            .arg("--repo")
            .arg(repository)
            .arg("--password-file")
            .arg(password_file)
            .args(args)
            .output()
            .unwrap()
    }

    /// Registers a SQLite database as deployment `name` of `usexample`.
    pub fn register_sqlite(&self, name: &str, db: &Path) -> (String, serde_json::Value) {
        let reg = format!(
            "{{\"engine\": \"sqlite\", \"connection\": {{\"path\": \"{}\"}}}}",
            db.display()
        );
        let url = self.url(&format!("/strongbox/api/v1/instances/usexample/{name}"));
        self.json(&["-X", "PUT", "-d", &reg, &url])
    }

    /// Turns continuous archiving on for deployment `name` of `usexample`
    /// (`PUT …/backups/config`).
    pub fn archive_continuously(&self, name: &str) -> (String, serde_json::Value) {
        let url = self.url(&format!(
            "/paas/service/dbcs/api/v1.1/instances/usexample/{name}/backups/config"
        ));
        self.json(&["-X", "PUT", "-d", r#"{"continuousArchiving": true}"#, &url])
    }
}

/// BLAKE3 of the rows of table `t` of a SQLite file in `id` order, each
/// `id` and `v`: equal only for exactly the same rows (`big_database`'s).
pub fn sqlite_checksum(db: &Path) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut h = blake3::Hasher::new();
    let mut st = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    let mut rows = st.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        h.update(&r.get::<_, i64>(0).unwrap().to_le_bytes());
        h.update(r.get_ref(1).unwrap().as_str().unwrap().as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

/// An ordered checksum of every column of every row of `table` (by rowid)
/// of a SQLite file, with the row count to read a failure by.
pub fn table_checksum(db: &Path, table: &str) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare(&format!("SELECT * FROM {table} ORDER BY rowid")).unwrap();
    let columns = st.column_count();
    let mut rows = st.query([]).unwrap();
    let (mut h, mut n) = (blake3::Hasher::new(), 0);
    while let Some(r) = rows.next().unwrap() {
        for i in 0..columns {
            h.update(format!("{:?}\x1f", r.get_ref(i).unwrap()).as_bytes());
        }
        h.update(b"\n");
        n += 1;
    }
    format!("{n} rows {}", h.finalize().to_hex())
}

/// The numbers in column `n` of table `t` of a SQLite file, once it
/// passes an integrity check (the SQLite recovery tests' rows).
pub fn sqlite_rows(db: &Path) -> std::collections::BTreeSet<i64> {
    let c = rusqlite::Connection::open(db).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "{}", db.display());
    let mut st = c.prepare("SELECT n FROM t").unwrap();
    st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// A repository as a PostgreSQL WAL archive.
pub const BIN: &str = env!("CARGO_BIN_EXE_strongbox");

pub struct Archive {
    pub repo: std::path::PathBuf,
    pub password_file: std::path::PathBuf,
}

impl Archive {
    /// A repository the `postgres` user can write (archive_command runs as it).
    pub fn new(dir: &std::path::Path) -> Archive {
        let a = Archive {
            repo: dir.join("archive"),
            password_file: dir.join("archive.password"),
        };
        std::fs::write(&a.password_file, "wal-pw").unwrap();
        strongbox_testkit::sh(&format!(
            "{BIN} repo -r {} --password-file {} init",
            a.repo.display(),
            a.password_file.display()
        ));
        strongbox_testkit::sh(&format!(
            "chown -R postgres:postgres {} {} && chmod 600 {}",
            a.repo.display(),
            a.password_file.display(),
            a.password_file.display()
        ));
        a
    }

    pub fn command(&self, verb: &str) -> String {
        format!(
            "{BIN} repo -r {} --password-file {} {verb}",
            self.repo.display(),
            self.password_file.display()
        )
    }

    /// Runs a verb as `postgres`, as PostgreSQL would.
    pub fn run(&self, verb: &str) -> std::process::Output {
        std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c", &self.command(verb)])
            .output()
            .unwrap()
    }

    /// The binary itself (not a shell or runuser around it), to be killed.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(BIN)
            .args(["repo", "-r"])
            .arg(&self.repo)
            .arg("--password-file")
            .arg(&self.password_file)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// A real PostgreSQL cluster registered as deployment `pg` of a running
/// server, archiving its WAL into the server's repository with the
/// `archive_command` the server reports.
pub struct Pg {
    pub s: Server,
    pub c: strongbox_testkit::Cluster,
}

pub const PG_INSTANCE: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/pg";

impl Pg {
    /// `settings` go into the cluster's configuration.
    pub fn start(dir: &Path, settings: &str) -> Pg {
        Pg::start_with(dir, settings, &[])
    }

    /// `start`, the server with these variables too.
    pub fn start_with(dir: &Path, settings: &str, env: &[(&str, String)]) -> Pg {
        let s = start_with(dir, free_port(), env);
        // PostgreSQL's archive_command runs as postgres: it must reach the
        // server's repository and its password file (where they are files;
        // a repository on S3 is reached with variables instead).
        let data = dir.join("data");
        let files: Vec<String> = ["repository", "repository.password"]
            .iter()
            .map(|f| data.join(f))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        strongbox_testkit::sh(&format!("chmod 755 {d} {d}/data", d = dir.display()));
        if !files.is_empty() {
            strongbox_testkit::sh(&format!("chown -R postgres:postgres {}", files.join(" ")));
        }
        let c = archiving_cluster(&s, settings);
        Pg { s, c }
    }

    pub fn url(&self, path: &str) -> String {
        self.s.url(&format!("{PG_INSTANCE}{path}"))
    }

    /// `GET …/pg`.
    pub fn instance(&self) -> serde_json::Value {
        self.s.json(&[&self.url("")]).1
    }

    /// A base backup through the API; its entry in the backup list.
    pub fn backup(&self) -> serde_json::Value {
        let (status, location) = self.s.post_backup("pg", &[]);
        assert_eq!(status, "HTTP/2 202", "{location}");
        self.s.wait_for(&location, "Succeeded");
        let (_, list) = self.s.json(&[&self.url("/backups")]);
        list["backupList"][0].clone()
    }

    /// `POST …/pg/backups/recovery`: (status line, JSON body, Location).
    pub fn request_recovery(&self, body: &str) -> (String, serde_json::Value, String) {
        let url = self.url("/backups/recovery");
        let (status, h, text) = self.s.curl(&[&AUTH[..], &["-X", "POST", "-d", body, &url]].concat());
        let location = h
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or_default(), location)
    }

    /// A recovery that must be accepted and succeed; its job's final status
    /// (panics with the job's activity log and the server's log otherwise).
    pub fn recover(&self, body: &str) -> serde_json::Value {
        let (status, v, location) = self.request_recovery(body);
        assert_eq!(status, "HTTP/2 202", "{body}: {v}");
        self.finished(&location, body)
    }

    /// Waits for a job to end; panics with its log unless it succeeded.
    pub fn finished(&self, location: &str, what: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let (_, v) = self.s.json(&[location]);
            match v["job_status"].as_str() {
                Some("Succeeded") => return v,
                Some("Failed") => panic!("{what}: {}\n{}\n{}", v["message"], self.activity(&v), self.c.log()),
                _ => assert!(Instant::now() < deadline, "{what}: still running: {v}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A job's activity log messages, one per line.
    pub fn activity(&self, job: &serde_json::Value) -> String {
        let id = job["job_id"].as_i64().unwrap_or_default();
        let (_, log) = self
            .s
            .json(&[&self.s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))]);
        log["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["message"].as_str().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// Commits a transaction that changes nothing (the archive then
    /// reaches the present in time too), switches to a new WAL segment and
    /// waits until it is archived: what was committed is in the archive.
    /// The transaction is the one Strongbox commits before a recovery (a
    /// marker message), which planning knows changes nothing; any other
    /// commit, even an empty one, counts as a change, and the models, which
    /// know rows only, would then disagree with a refusal that is right.
    pub fn flush(&self) {
        self.c.psql(&format!(
            "SELECT pg_logical_emit_message(true, '{}', 'test')",
            strongbox_engines::FLUSH_MARKER
        ));
        let last = self.c.psql("SELECT pg_walfile_name(pg_switch_wal())");
        self.c.wait_archived(&last);
    }

    /// Kills the postmaster (and its children) as a crash would: no
    /// shutdown checkpoint, postmaster.pid left behind.
    pub fn crash(&self) {
        let pid = std::fs::read_to_string(self.c.data.join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim();
        strongbox_testkit::sh(&format!("pkill -9 -P {pid}; kill -9 {pid}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "postmaster {pid} survived SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A point after row `rows` committed and before the next: a whole second
/// (as requests name moments) and the WAL position then.
pub struct Mark {
    pub rows: i32,
    pub timestamp: String,
    pub lsn: String,
}

/// Inserts rows `from..=to` into `ticks`, one transaction each (every row carries its
/// commit time), marking a quiet point after every `every` rows.
pub fn write_ticks(port: u16, from: i32, to: i32, every: i32) -> Vec<Mark> {
    let mut client = postgres::Client::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        postgres::NoTls,
    )
    .unwrap();
    let mut marks = Vec::new();
    for id in from..=to {
        client
            .execute("INSERT INTO ticks VALUES ($1, clock_timestamp())", &[&id])
            .unwrap();
        if id % every == 0 {
            // The next whole second after the commit, then a margin past it.
            let row = client
                .query_one(
                    "SELECT to_char(date_trunc('second', clock_timestamp() AT TIME ZONE 'UTC') + interval '1 second', \
                     'DD-Mon-YYYY HH24:MI:SS'), pg_current_wal_lsn()::text, \
                     extract(epoch FROM date_trunc('second', clock_timestamp()) + interval '1.3 second' - \
                     clock_timestamp())::float8",
                    &[],
                )
                .unwrap();
            std::thread::sleep(Duration::from_secs_f64(row.get::<_, f64>(2)));
            marks.push(Mark {
                rows: id,
                timestamp: row.get(0),
                lsn: row.get(1),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    marks
}

// Not every test uses them.
#[allow(unused_imports)]
pub use strongbox_testkit::{Rng, seed};

/// Installs a Debian package that provides `binary` unless it is on the
/// PATH already (tests run as root on a fresh machine).
pub fn debian_package(binary: &str, package: &str) {
    let have = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return;
    }
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "--no-install-recommends", package][..],
    ] {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "apt-get {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One value a query on a test's PostgreSQL database returns, as text.
pub fn psql(db: &strongbox_testkit::Database, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-d", &db.url, "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub const API: &str = "/paas/service/dbcs/api/v1.1/instances/usexample";

/// Rows `from..=to` committed one transaction each, as the application
/// writes them (table `t` of `big_database`'s shape).
pub fn write_rows(db: &std::path::Path, from: i64, to: i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    for n in from..=to {
        c.execute(
            "INSERT INTO t (id, v) VALUES (?1, ?2)",
            rusqlite::params![n, format!("row {n}")],
        )
        .unwrap();
    }
}

/// `dd-MMM-yyyy HH:mm:ss`, the API's timestamps.
pub fn api_time(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[day]-[month repr:short]-[year] [hour]:[minute]:[second]");
    t.format(&f).unwrap()
}

/// The whole second at least `ahead` from now, and how long until then.
pub fn second_after(ahead: std::time::Duration) -> (time::OffsetDateTime, std::time::Duration) {
    let now = time::OffsetDateTime::now_utc();
    let t = (now + ahead).replace_nanosecond(0).unwrap() + time::Duration::SECOND;
    (t, (t - now).try_into().unwrap())
}

/// The timestamp of the next whole second, once it has passed by more than
/// a second: commits before and after it are apart.
pub fn mark() -> String {
    let (t, wait) = second_after(std::time::Duration::ZERO);
    std::thread::sleep(wait + std::time::Duration::from_millis(1100));
    api_time(t)
}

/// POSTs `body` until it is accepted (a job of the deployment may hold it
/// a moment: the shipper's base backup, the base taken after a recovery),
/// then waits for the job to succeed.
pub fn post_until_accepted(s: &Server, path: &str, body: &str) -> serde_json::Value {
    post_until_accepted_past(s, path, body, &["HTTP/2 409"])
}

/// `post_until_accepted`, asking again (for up to 60 s) while the answer's
/// status line is one of `again`.
pub fn post_until_accepted_past(s: &Server, path: &str, body: &str, again: &[&str]) -> serde_json::Value {
    let url = s.url(path);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, h, answer) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", body, &url]].concat());
        if again.contains(&status.as_str()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
            continue;
        }
        assert_eq!(status, "HTTP/2 202", "{path} {body}: {answer}");
        return s.wait_for(header(&h, "location"), "Succeeded");
    }
}

/// Asks for a recovery of `service` (`body`), which must be accepted (202):
/// the job's location, not waited for.
pub fn ask_recovery(s: &Server, service: &str, body: &str) -> String {
    let url = s.url(&format!("{API}/{service}/backups/recovery"));
    let (status, h, answer) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", body, &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{body}: {answer}");
    header(&h, "location").to_string()
}

/// Recovers SQLite deployment `service` (file `db`) by `tag`, after a write
/// the backup does not hold, and checks the rows are `at_backup`'s exactly
/// (ordered checksum).
pub fn recovers_exactly(s: &Server, service: &str, db: &Path, tag: &str, at_backup: &str) {
    write_rows(db, 10_000_000, 10_000_100);
    assert_ne!(sqlite_checksum(db), at_backup);
    post_until_accepted(
        s,
        &format!("{API}/{service}/backups/recovery"),
        &format!(r#"{{"tag": "{tag}"}}"#),
    );
    assert_eq!(sqlite_checksum(db), at_backup, "backup {tag} of {service}, exactly");
}

/// The highest row id (rows are numbered from 1 without gaps).
pub fn big_database_rows(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// The copy's status on `service`'s view.
pub fn copy_status(s: &Server, service: &str) -> serde_json::Value {
    let (_, v) = s.json(&[&s.url(&format!("{API}/{service}"))]);
    v["copies"][0].clone()
}

/// Waits until, on every copy, a round that began after this call ended
/// with nothing left to copy: what the primary held now, the copies hold.
pub fn wait_copied(s: &Server, service: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let copies = || {
        let (_, v) = s.json(&[&s.url(&format!("{API}/{service}"))]);
        v["copies"].as_array().cloned().unwrap_or_default()
    };
    // A round ends after each of these changes of `lastRound`: the second
    // one began after the first change.
    let mut seen: Vec<Vec<serde_json::Value>> = copies().iter().map(|c| vec![c["lastRound"].clone()]).collect();
    loop {
        let now = copies();
        let mut done = !now.is_empty();
        for (c, seen) in now.iter().zip(seen.iter_mut()) {
            if c["lastRound"] != *seen.last().unwrap() {
                seen.push(c["lastRound"].clone());
            }
            done &= seen.len() >= 3 && c["lagSeconds"] == 0.0 && c["pendingBackups"] == 0 && c["error"].is_null();
        }
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "the copies did not catch up: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sets the servers' clock (`STRONGBOX_TEST_CLOCK_FILE` = `dir/clock`),
/// atomically (a server never reads half a time).
pub fn set_clock(dir: &Path, t: &str) {
    std::fs::write(dir.join("clock.new"), t).unwrap();
    std::fs::rename(dir.join("clock.new"), dir.join("clock")).unwrap();
}

/// A PostgreSQL recovery through `s` (`post_until_accepted`): the job's
/// final status; a failure panics with the cluster's log and the last
/// lines of the server's.
pub fn recover_pg(s: &Server, c: &strongbox_testkit::Cluster, body: &str) -> serde_json::Value {
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        post_until_accepted(s, &format!("{PG_INSTANCE}/backups/recovery"), body)
    }));
    done.unwrap_or_else(|e| {
        let log = std::fs::read_to_string(s.dir.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{body}: {e:?}\n{}\nserver log (last lines first):\n{}",
            c.log(),
            tail.join("\n")
        )
    })
}

/// A cluster (with `settings`) registered with `s` as the physical
/// deployment `pg`, archiving through the `archive_command` `GET
/// …/pg` reports (until set, archiving fails and PostgreSQL keeps the WAL).
pub fn archiving_cluster(s: &Server, settings: &str) -> strongbox_testkit::Cluster {
    let c = strongbox_testkit::Cluster::start(&format!("archive_mode = on\narchive_command = 'false'\n{settings}"));
    register_cluster(s, "pg", &c, &c.url());
    let (_, i) = s.json(&[&s.url(PG_INSTANCE)]);
    let command = i["pointInTimeRecovery"]["archiveCommand"].as_str().unwrap().to_string();
    c.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        command.replace('\'', "''")
    ));
    c.psql("SELECT pg_reload_conf()");
    c
}

/// Registers cluster `c` as the PostgreSQL deployment `name` of
/// `usexample`, reached by `url`, stopped and started as `postgres`.
pub fn register_cluster(s: &Server, name: &str, c: &strongbox_testkit::Cluster, url: &str) {
    let ctl = |a: &str| format!("runuser -u postgres -- {}", c.ctl(a));
    register(
        s,
        name,
        serde_json::json!({"engine": "postgresql", "connection": {
            "url": url, "data_dir": c.data, "bin_dir": strongbox_testkit::PG_BIN,
            "stop_command": ctl("stop"), "start_command": ctl("start")}}),
    );
}

/// Registers a `command` deployment `name` of `usexample`.
pub fn register_command(s: &Server, name: &str, backup_command: &str, recovery_command: &str) {
    let command = serde_json::json!({"engine": "command", "connection": {
        "backup_command": backup_command, "recovery_command": recovery_command}});
    let url = s.url(&format!("/strongbox/api/v1/instances/usexample/{name}"));
    let (status, v) = s.json(&["-X", "PUT", "-d", &command.to_string(), &url]);
    assert_eq!(status, "HTTP/2 200", "{v}");
}

/// A deployment's backups as `GET …/backups` lists them (tag, status,
/// start and completion dates, `keepForever`), sorted: what must come back
/// whole after a loss.
pub fn backup_listing(s: &Server, service: &str) -> Vec<String> {
    let (_, v) = s.json(&[&s.url(&format!("{API}/{service}/backups"))]);
    let mut list: Vec<String> = v["backupList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            format!(
                "{} {} {} {} {}",
                b["dbTag"], b["status"], b["backupStartDate"], b["backupCompleteDate"], b["keepForever"]
            )
        })
        .collect();
    list.sort();
    list
}

/// Every file under `dir`, at any depth.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            files.extend(walk(&e.path()));
        } else {
            files.push(e.path());
        }
    }
    files
}

/// A SQLite database at `db` (WAL mode, table `t(n INTEGER PRIMARY KEY,
/// pad BLOB)`) registered as `service` with continuous archiving on, once
/// the shipper's first base backup has completed: the application's
/// connection.
pub fn shipping_sqlite(s: &Server, service: &str, db: &Path) -> rusqlite::Connection {
    let app = rusqlite::Connection::open(db).unwrap();
    app.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
    app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER PRIMARY KEY, pad BLOB)")
        .unwrap();
    assert_eq!(s.register_sqlite(service, db).0, "HTTP/2 200");
    assert_eq!(s.archive_continuously(service).0, "HTTP/2 200");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while backup_listing(s, service).iter().all(|b| !b.contains("\"COMPLETED\"")) {
        assert!(std::time::Instant::now() < deadline, "no base backup of {service}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    app
}

/// Waits (up to 120 s) until the shipped log of `service` reaches
/// transaction `n` of the shipper's current generation (`latestScn`
/// `GENERATION:N` of the last range).
pub fn wait_shipped(s: &Server, service: &str, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (status, v) = s.json(&[&s.url(&format!("{API}/{service}"))]);
        let shipping = &v["continuousArchiving"];
        let latest = shipping["ranges"]
            .as_array()
            .and_then(|r| r.last())
            .and_then(|r| r["latestScn"].as_str())
            .and_then(|scn| scn.split_once(':'))
            .filter(|(generation, _)| shipping["generation"] == *generation)
            .and_then(|(_, n)| n.parse::<u64>().ok());
        if status == "HTTP/2 200" && latest >= Some(n) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "not shipped to {n}: {status} {v}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Registers (or re-registers) deployment `name` of `usexample` with `body`
/// (`{"engine": …, "connection": {…}}`), which must be accepted.
pub fn register(s: &Server, name: &str, body: serde_json::Value) {
    let url = s.url(&format!("/strongbox/api/v1/instances/usexample/{name}"));
    let (status, v) = s.json(&["-X", "PUT", "-d", &body.to_string(), &url]);
    assert_eq!(status, "HTTP/2 200", "{v}");
}

/// A server whose clock is the file `dir/clock` (`set_clock`), its
/// scheduler looking every 50 ms.
pub fn scheduled_server(dir: &Path, port: u16) -> Server {
    start_with(
        dir,
        port,
        &[
            ("STRONGBOX_TEST_CLOCK_FILE", dir.join("clock").display().to_string()),
            ("STRONGBOX_SCHEDULE_CHECK_MS", "50".into()),
        ],
    )
}

/// What a query on database `name` of the machine's PostgreSQL prints,
/// trimmed, or why it failed.
pub fn pg_query(name: &str, sql: &str) -> Result<String, String> {
    pg_query_at(5432, name, sql)
}

/// `pg_query` on the server listening on 127.0.0.1:`port`.
pub fn pg_query_at(port: u16, name: &str, sql: &str) -> Result<String, String> {
    let port = port.to_string();
    let args = [
        "-X",
        "-A",
        "-t",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "-d",
        name,
        "-c",
        sql,
    ];
    let out = Command::new("psql").args(args).output().unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(format!("{name}: {}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// What a statement on the machine's MariaDB prints, trimmed.
pub fn maria(sql: &str) -> String {
    strongbox_testkit::sh(&format!("mariadb -h 127.0.0.1 -u root -N -B -e \"{sql}\""))
        .trim()
        .to_string()
}

/// Databases of the machine's PostgreSQL (or, with `mariadb`, MariaDB)
/// dropped when the test ends, however it ends.
pub struct DropDatabases {
    pub mariadb: bool,
    pub names: Vec<String>,
}

impl Drop for DropDatabases {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = if self.mariadb {
                Command::new("mariadb")
                    .args(["-h", "127.0.0.1", "-u", "root", "-e"])
                    .arg(format!("DROP DATABASE IF EXISTS {name}"))
                    .output()
            } else {
                Command::new("psql")
                    .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
                    .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .output()
            };
        }
    }
}
