//! What Strongbox's tests share (a dev-dependency only): shell commands,
//! free ports, and PostgreSQL clusters of their own — `initdb` in a
//! temporary directory as the `postgres` user, on a free port — so that
//! stopping and starting one touches nothing else on the machine; a
//! database of its own on the machine's PostgreSQL (`Database`); and a
//! real S3 server on loopback (`s3`).

pub mod s3;

use std::path::{Path, PathBuf};

/// PostgreSQL 15's server binaries, as Debian installs them.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a shell command line; its stdout. Panics with stderr on failure.
pub fn sh(line: &str) -> String {
    let out = std::process::Command::new("sh").arg("-c").arg(line).output().unwrap();
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A command line run as the `postgres` user.
pub fn as_postgres(cmd: &str) -> String {
    sh(&format!("runuser -u postgres -- sh -c '{cmd}'"))
}

/// A database of its own on the machine's PostgreSQL (127.0.0.1:5432,
/// trust authentication), dropped with this.
pub struct Database {
    pub url: String,
    pub name: String,
}

impl Database {
    pub fn create(prefix: &str) -> Database {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}_{}_{n}", std::process::id());
        sh(&format!(
            "psql -X -q -h 127.0.0.1 -U postgres -d postgres -c 'DROP DATABASE IF EXISTS {name}' -c 'CREATE DATABASE {name}'"
        ));
        Database {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

impl Database {
    /// Drops the database and creates it again, empty: a catalog's
    /// database lost with the host and set up anew.
    pub fn recreate(&self) {
        sh(&format!(
            "psql -X -q -h 127.0.0.1 -U postgres -d postgres -c 'DROP DATABASE {n} WITH (FORCE)' -c 'CREATE DATABASE {n}'",
            n = self.name
        ));
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .output();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Cluster {
    dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// A running cluster; `settings` go into postgresql.auto.conf.
    pub fn start(settings: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        sh(&format!("chown postgres:postgres {}", dir.path().display()));
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        sh(&format!("chown postgres:postgres {}", data.display()));
        as_postgres(&format!(
            "{PG_BIN}/initdb --no-sync -A trust -U postgres -D {} >/dev/null",
            data.display()
        ));
        let port = free_port();
        std::fs::write(
            data.join("postgresql.auto.conf"),
            format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 wal_keep_size = '1GB'\nfsync = off\n{settings}\n",
                data.display()
            ),
        )
        .unwrap();
        let c = Cluster { dir, data, port };
        as_postgres(&c.ctl("start"));
        c
    }

    /// The cluster's own directory (the data directory's parent), owned by
    /// `postgres`: room for its log and whatever a test puts beside it.
    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    /// The `pg_ctl` command line that starts or (any other `action`) stops it.
    pub fn ctl(&self, action: &str) -> String {
        let d = self.data.display();
        match action {
            "start" => format!("{PG_BIN}/pg_ctl -D {d} -l {d}/../server.log -w start"),
            _ => format!("{PG_BIN}/pg_ctl -D {d} -m fast -w stop"),
        }
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home().join("server.log")).unwrap_or_default()
    }

    /// Waits until the archiver has archived WAL file `name` (and all
    /// before it); panics with the server's log after a minute.
    pub fn wait_archived(&self, name: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self
            .psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            .as_str()
            < name
        {
            assert!(
                std::time::Instant::now() < deadline,
                "archiving stalled: {}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Turns TLS on and plain TCP connections away (`hostssl` lines only);
    /// its certificate names localhost, signed by the CA whose file this
    /// returns.
    pub fn only_tls(&self) -> PathBuf {
        let (ca, cert, key) = test_pki(self.home());
        sh(&format!(
            "chown postgres {} {} && chmod 600 {}",
            cert.display(),
            key.display(),
            key.display()
        ));
        std::fs::write(
            self.data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        self.psql(&format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()));
        self.psql(&format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()));
        self.psql("ALTER SYSTEM SET ssl = on");
        self.psql("SELECT pg_reload_conf()");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.psql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") != "t" {
            assert!(
                std::time::Instant::now() < deadline,
                "TLS never came on: {}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        ca
    }

    /// One statement's output, unaligned, tuples only, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        sh(&format!(
            "{PG_BIN}/psql -X -A -t -v ON_ERROR_STOP=1 -d {} -c \"{sql}\"",
            self.url()
        ))
        .trim()
        .to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_ctl"), "-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// SplitMix64: a small, seedable generator (the sequence is the seed's),
/// for randomized tests, which print their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// A randomized test's seed: `MODEL_SEED` if set (to replay one), else `default`.
pub fn seed(default: u64) -> u64 {
    env_or("MODEL_SEED", default)
}

/// A seed no run has drawn before (from the clock), or `MODEL_SEED` to
/// replay one; printed either way. Each CI run thus tries a new one
/// besides the fixed regression seeds.
pub fn fresh_seed() -> u64 {
    let drawn = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ ((std::process::id() as u64) << 32);
    let seed = seed(drawn % 10_000_000_000);
    println!("fresh seed {seed} (replay with MODEL_SEED={seed})");
    eprintln!("fresh seed {seed} (replay with MODEL_SEED={seed})");
    seed
}

/// A test's setting from the environment variable `name` (a sequence's
/// length, a drill's rounds), else `default`. One that does not parse
/// stops the test: a mistyped `MODEL_SEED` would otherwise run the default
/// seed while the reader believes it replayed theirs.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a {}", std::any::type_name::<T>())),
        Err(_) => default,
    }
}

/// A tmpfs mounted at a directory for the test's life (as root): a real
/// file system of a chosen size, to fill.
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        sh(&format!("mount -t tmpfs -o size={size} tmpfs {}", at.display()));
        Tmpfs(at.to_path_buf())
    }

    pub fn resize(&self, size: &str) {
        sh(&format!("mount -o remount,size={size} {}", self.0.display()));
    }

    /// Writes a file named `name` until the file system is full.
    pub fn fill(&self, name: &str) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join(name);
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5a; 64 * 1024];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", filler.display()),
            }
        }
        // The last partial block may have found room below a page.
        let _ = f.write_all(&block[..4096]);
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A CA, and a certificate for localhost signed by it.
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: a leaf whose issuer equals its subject looks self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Strongbox test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}
