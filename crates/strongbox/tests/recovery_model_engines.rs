//! The recovery model, smaller, for the engines without a log archive
//! (`sqlite`, `postgresql-logical`, `command` with MariaDB): seeded random
//! sequences of inserts, updates, deletes, backups, recoveries by `latest`, `tag`
//! and a backup's completion `timestamp` through the API, the database
//! deleted, damaged or dropped, Strongbox restarted, backups forgotten and
//! pruned. The model holds each backup's rows (ids and values, compared in
//! id order): `latest` is the newest
//! backup still in the repository, `tag` that backup, a `timestamp` the
//! backup completed in that second (a second between backups, an `scn`,
//! a forgotten backup: refused). Every sequence prints its seed;
//! `MODEL_SEED=N` replays one. One SQLite variant keeps its repository on
//! an S3 server that throttles, errs, drops connections and answers late
//! (issue 30: the model stays exact through a store's bad day).

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;
use strongbox_testkit::sh;

/// A row of `t`: id, value.
type Row = (i64, i64);

/// Rows as a client prints them, one per line, the columns split by `sep`.
fn parse_rows(text: &str, sep: char) -> Vec<Row> {
    text.lines()
        .map(|l| {
            let (id, v) = l.trim().split_once(sep).unwrap();
            (id.parse().unwrap(), v.parse().unwrap())
        })
        .collect()
}

/// A database under test: a table `t(id, v)` it can write, read and lose.
trait Database {
    fn registration(&self) -> Value;
    fn write(&self, sql: &str);
    /// Its rows in id order.
    fn rows(&self) -> Vec<Row>;
    /// Breaks it one way (`choice` picks); what was done.
    fn disaster(&self, choice: usize) -> &'static str;
}

struct Sqlite(std::path::PathBuf);

impl Database for Sqlite {
    fn registration(&self) -> Value {
        serde_json::json!({"engine": "sqlite", "connection": {"path": self.0}})
    }

    fn write(&self, sql: &str) {
        rusqlite::Connection::open(&self.0).unwrap().execute_batch(sql).unwrap();
    }

    fn rows(&self) -> Vec<Row> {
        let c = rusqlite::Connection::open(&self.0).unwrap();
        let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        let mut st = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn disaster(&self, choice: usize) -> &'static str {
        if choice.is_multiple_of(2) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
            "the database file deleted"
        } else {
            let size = std::fs::metadata(&self.0).unwrap().len() as usize;
            std::fs::write(&self.0, vec![0x5Au8; size]).unwrap();
            "the database file overwritten with garbage"
        }
    }
}

struct Logical(String);

impl Logical {
    fn psql(&self, db: &str, sql: &str) -> String {
        sh(&format!("psql -X -At -h 127.0.0.1 -U postgres -d {db} -c \"{sql}\""))
    }
}

impl Database for Logical {
    fn registration(&self) -> Value {
        serde_json::json!({"engine": "postgresql-logical", "connection": {
            "url": format!("postgresql://postgres@127.0.0.1:5432/{}", self.0), "bin_dir": strongbox_testkit::PG_BIN}})
    }

    fn write(&self, sql: &str) {
        self.psql(&self.0, sql);
    }

    fn rows(&self) -> Vec<Row> {
        parse_rows(&self.psql(&self.0, "SELECT id, v FROM t ORDER BY id"), '|')
    }

    fn disaster(&self, _: usize) -> &'static str {
        self.psql("postgres", &format!("DROP DATABASE {} WITH (FORCE)", self.0));
        "the database dropped"
    }
}

struct Maria(String);

impl Maria {
    fn run(&self, sql: &str) -> String {
        sh(&format!("mariadb -h 127.0.0.1 -u root -N -B -e \"{sql}\""))
    }
}

impl Database for Maria {
    fn registration(&self) -> Value {
        let db = &self.0;
        serde_json::json!({"engine": "command", "connection": {
            "backup_command": format!("mariadb-dump -h 127.0.0.1 -u root --single-transaction {db}"),
            "prepare_command": format!("mariadb -h 127.0.0.1 -u root -e 'CREATE DATABASE IF NOT EXISTS {db}'"),
            "recovery_command": format!("mariadb -h 127.0.0.1 -u root {db}"),
        }})
    }

    fn write(&self, sql: &str) {
        self.run(&format!("USE {}; {sql}", self.0));
    }

    fn rows(&self) -> Vec<Row> {
        parse_rows(&self.run(&format!("SELECT id, v FROM {}.t ORDER BY id", self.0)), '\t')
    }

    fn disaster(&self, _: usize) -> &'static str {
        self.run(&format!("DROP DATABASE {}", self.0));
        "the database dropped"
    }
}

struct Backup {
    tag: String,
    /// As the backup list prints it, whole seconds.
    completed: String,
    rows: Vec<Row>,
    forgotten: bool,
}

/// One sequence's database, server and model.
struct Run<'a> {
    engine: &'a str,
    seed: u64,
    db: &'a dyn Database,
    s: Server,
    rng: Rng,
    backups: Vec<Backup>,
    next: i64,
    /// The database was lost or damaged: only a recovery helps.
    broken: bool,
    log: String,
    /// The repository on S3 (`s3://…`, with the variables that reach it),
    /// when not the server's local default.
    s3: Option<(String, Vec<(&'static str, String)>)>,
}

const BASE: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/d";

impl Run<'_> {
    fn fail(&self, what: String) -> ! {
        panic!(
            "{}, seed {} (replay with MODEL_SEED={}): {what}\n--- operations:\n{}",
            self.engine, self.seed, self.seed, self.log
        )
    }

    fn insert(&mut self) {
        let n = 1 + self.rng.below(50) as i64;
        self.db.write(&format!(
            "INSERT INTO t (id, v) SELECT {} + n, n * 7 FROM ({}) AS s",
            self.next,
            (0..n)
                .map(|i| format!("SELECT {i} AS n"))
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        ));
        self.next += n;
        self.log += &format!("insert {n} rows\n");
    }

    fn backup(&mut self) {
        let (status, location) = self.s.post_backup("d", &[]);
        assert_eq!(status, "HTTP/2 202", "{location}");
        self.s.wait_for(&location, "Succeeded");
        let (_, list) = self.s.json(&[&self.s.url(&format!("{BASE}/backups"))]);
        let item = &list["backupList"][0];
        self.backups.push(Backup {
            tag: item["dbTag"].as_str().unwrap().into(),
            completed: item["backupCompleteDate"].as_str().unwrap().into(),
            rows: self.db.rows(),
            forgotten: false,
        });
        self.log += &format!("backup {}\n", item["dbTag"]);
    }

    fn recover(&mut self) {
        let live: Vec<&Backup> = self.backups.iter().filter(|b| !b.forgotten).collect();
        let (body, expected): (String, Result<Vec<Row>, &str>) = match self.rng.below(5) {
            0 | 1 => (
                r#"{"latest": true}"#.into(),
                live.last().map(|b| b.rows.clone()).ok_or("no completed backup"),
            ),
            2 => {
                let b = &self.backups[self.rng.below(self.backups.len())];
                let expected = if b.forgotten { Err("dbTag") } else { Ok(b.rows.clone()) };
                (format!(r#"{{"tag": "{}"}}"#, b.tag), expected)
            }
            3 => {
                let b = live[self.rng.below(live.len())];
                // The newest backup completed in that second.
                let same = live.iter().rev().find(|o| o.completed == b.completed).unwrap();
                (format!(r#"{{"timestamp": "{}"}}"#, b.completed), Ok(same.rows.clone()))
            }
            _ => (r#"{"scn": "0/3000060"}"#.into(), Err("point-in-time recovery")),
        };
        self.log += &format!("recover {body}\n");
        let url = self.s.url(&format!("{BASE}/backups/recovery"));
        let ask = || self.s.curl(&[&AUTH[..], &["-X", "POST", "-d", &body, &url]].concat());
        let (mut status, mut h, mut text) = ask();
        // The repository found failing (the store's bad day): 503 and
        // `Retry-After`, asked again then, as a client does.
        for _ in 0..6 {
            if status != "HTTP/2 503" {
                break;
            }
            let after: u64 = header(&h, "retry-after")
                .parse()
                .unwrap_or_else(|_| self.fail(format!("{body}: 503 without Retry-After: {text}")));
            self.log += &format!("  503 ({text}); asked again {after} s later\n");
            std::thread::sleep(Duration::from_secs(after));
            (status, h, text) = ask();
        }
        match expected {
            Err(why) => {
                if !status.starts_with("HTTP/2 4") || !text.contains(why) {
                    self.fail(format!("{body}: expected a refusal ({why}), got {status} {text}"));
                }
            }
            Ok(rows) => {
                if status != "HTTP/2 202" {
                    self.fail(format!("{body}: expected a recovery, got {status} {text}"));
                }
                let location = header(&h, "location").to_string();
                // A deadline, so a stuck job fails with the seed rather than hang.
                let deadline = Instant::now() + Duration::from_secs(300);
                let job = loop {
                    let (_, j) = self.s.json(&[&location]);
                    if j["job_status"] != "In Progress" {
                        break j;
                    }
                    if Instant::now() > deadline {
                        self.fail(format!("{body}: still in progress after 300 s: {j}"));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                };
                if job["job_status"] != "Succeeded" {
                    self.fail(format!("{body}: {job}"));
                }
                let got = self.db.rows();
                if got != rows {
                    self.fail(format!("{body}: holds {got:?}, not {rows:?}"));
                }
                self.broken = false;
            }
        }
    }

    fn forget_and_prune(&mut self) {
        let live: Vec<usize> = (0..self.backups.len())
            .filter(|i| !self.backups[*i].forgotten)
            .collect();
        if live.len() < 2 {
            return;
        }
        // Never the newest.
        let i = live[self.rng.below(live.len() - 1)];
        let out = self.repo_cli(&["--json", "snapshots"]);
        let snapshots: Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = snapshots
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["tags"][0] == self.backups[i].tag.as_str())
            .map(|x| x["id"].as_str().unwrap().to_string())
            .unwrap();
        for args in [&["forget", &id][..], &["prune"]] {
            let out = self.repo_cli(args);
            if !out.status.success() {
                self.fail(format!("repo {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        self.backups[i].forgotten = true;
        self.log += &format!("forget {}, prune\n", self.backups[i].tag);
    }

    /// `strongbox repo ARGS` on the server's repository, wherever it is.
    fn repo_cli(&self, args: &[&str]) -> std::process::Output {
        let Some((location, env)) = &self.s3 else {
            return self.s.repo_cli(args);
        };
        std::process::Command::new(env!("CARGO_BIN_EXE_strongbox"))
            .args(["repo", "--repo", location])
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("STRONGBOX_PASSWORD", S3_PASSWORD)
            .output()
            .unwrap()
    }

    fn step(&mut self) {
        if self.broken {
            return self.recover();
        }
        match self.rng.below(11) {
            0 | 1 => self.insert(),
            2 => {
                let m = 2 + self.rng.below(5);
                self.db.write(&format!("DELETE FROM t WHERE id % {m} = 0"));
                self.log += &format!("delete every {m}th\n");
            }
            10 => {
                let m = 2 + self.rng.below(5);
                self.db
                    .write(&format!("UPDATE t SET v = v + {} WHERE id % {m} = 1", 11 * m));
                self.log += &format!("update every {m}th\n");
            }
            3 | 4 => self.backup(),
            5 | 6 => self.recover(),
            7 => {
                let what = self.db.disaster(self.rng.below(2));
                self.broken = true;
                self.log += &format!("disaster: {what}\n");
            }
            8 => {
                self.s.restart();
                self.log += "restart Strongbox\n";
            }
            _ => self.forget_and_prune(),
        }
    }
}

const S3_PASSWORD: &str = "the model's S3 repository";

fn sequence(seed: u64, engine: &str, db: &dyn Database, ops: usize) {
    sequence_on(seed, engine, db, ops, None)
}

/// `sequence`, the repository on `s3` (a server with faults) when given.
fn sequence_on(seed: u64, engine: &str, db: &dyn Database, ops: usize, s3: Option<&strongbox_testkit::s3::S3Server>) {
    eprintln!("{engine} recovery model: seed {seed} (replay with MODEL_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let s3 = s3.map(|server| (server.repository("model"), crate::common::flaky_s3_reach(server)));
    let s = match &s3 {
        None => start(&dir),
        Some((location, env)) => {
            let mut env = env.clone();
            env.push(("STRONGBOX_REPOSITORY", location.clone()));
            env.push(("STRONGBOX_REPO_PASSWORD", S3_PASSWORD.to_string()));
            start_with(dir.path(), free_port(), &env)
        }
    };
    let url = s.url("/strongbox/api/v1/instances/usexample/d");
    let (status, v) = s.json(&["-X", "PUT", "-d", &db.registration().to_string(), &url]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    let mut run = Run {
        engine,
        seed,
        db,
        s,
        rng: Rng(seed),
        backups: Vec::new(),
        next: 1,
        broken: false,
        log: String::new(),
        s3,
    };
    // Rows and a backup first, so a disaster always has something to come back to.
    run.insert();
    run.backup();
    for _ in 0..ops {
        run.step();
    }
    let recovered = run.log.matches("recover").count();
    eprintln!(
        "{engine}, seed {seed}: {ops} operations, {recovered} recovery requests\n{}",
        run.log
    );
}

fn ops() -> usize {
    strongbox_testkit::env_or("MODEL_OPS", 30)
}

#[test]
fn sqlite_sequences_recover_what_the_model_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let db = Sqlite(dir.path().join("model.sqlite"));
    db.write("PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);");
    sequence(seed(0xD0C5_0001), "sqlite", &db, ops());
}

/// The SQLite model with its repository on an S3 server with a bad day:
/// 10 % of requests answered 503 SlowDown, 3 % 500, 3 % dropped, 2 %
/// answered after the client's timeout (the work done).
#[test]
fn sqlite_sequences_on_a_flaky_s3_store_recover_what_the_model_predicts() {
    use strongbox_testkit::s3::{FaultPlan, Faults, S3Server};
    let seed = seed(0xD0C5_0004);
    let faults = Faults::new(seed);
    let server = S3Server::with_faults(faults.clone());
    faults.set(FaultPlan::bad_day());
    let dir = tempfile::tempdir().unwrap();
    let db = Sqlite(dir.path().join("model.sqlite"));
    db.write("PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);");
    sequence_on(seed, "sqlite on a flaky S3 store", &db, ops(), Some(&server));
    let met = faults.injected();
    eprintln!("seed {seed}: the store's bad day: {met:?}");
    assert!(met.faults() > 0, "{met:?}");
}

#[test]
fn logical_sequences_recover_what_the_model_predicts() {
    let db = Logical(format!("sb_model_{}", std::process::id()));
    db.psql("postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.0));
    db.psql("postgres", &format!("CREATE DATABASE {}", db.0));
    db.write("CREATE TABLE t (id int PRIMARY KEY, v bigint NOT NULL)");
    sequence(seed(0xD0C5_0002), "postgresql-logical", &db, ops());
    db.psql("postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.0));
}

#[test]
fn command_sequences_recover_what_the_model_predicts() {
    let db = Maria(format!("sb_model_{}", std::process::id()));
    db.run(&format!("DROP DATABASE IF EXISTS {0}; CREATE DATABASE {0}", db.0));
    db.write("CREATE TABLE t (id INT PRIMARY KEY, v BIGINT NOT NULL)");
    sequence(seed(0xD0C5_0003), "command", &db, ops());
    db.run(&format!("DROP DATABASE IF EXISTS {}", db.0));
}
