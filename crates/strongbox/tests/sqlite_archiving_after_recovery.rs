//! Issue 25: continuous archiving of a SQLite deployment around a
//! recovery. A recovery ends the shipper's generation and queues the base
//! of the recovered database's history at once, so that what the
//! application writes next is protected; `latest` follows that history,
//! never one a recovery abandoned; while nothing is shipped the status and
//! `/metrics` say so.
//!
//! Every check compares ordered checksums of the rows (`n`, `pad`), and
//! says how much a loss cost: the transactions committed before it that
//! did not come back, and how long before it the first of them was
//! committed. Seeded (printed; `MODEL_SEED=N` replays).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const P: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/app";

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Row `n`'s content in history `h` (two histories write different rows
/// under the same numbers, so a checksum tells them apart).
fn pad(h: u8, n: i64) -> String {
    blake3::hash(&[&[h][..], &n.to_le_bytes()].concat())
        .to_hex()
        .to_string()
}

/// The ordered checksum of table `table`'s rows, and how many there are.
fn checksum_of(db: &Path, table: &str) -> (usize, String) {
    let c = rusqlite::Connection::open(db).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    let mut st = c.prepare(&format!("SELECT n, pad FROM {table} ORDER BY n")).unwrap();
    let rows: Vec<(i64, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (rows.len(), checksum(rows.iter().map(|(n, p)| (*n, p.as_str()))))
}

fn checksum<'a>(rows: impl Iterator<Item = (i64, &'a str)>) -> String {
    let mut h = blake3::Hasher::new();
    for (n, p) in rows {
        h.update(&n.to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

fn open(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
    c
}

fn lose(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// The API's dates: `dd-MMM-yyyy HH:mm:ss`.
fn api_second(s: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(s).unwrap();
    t.format(time::macros::format_description!(
        "[day]-[month repr:short]-[year] [hour]:[minute]:[second]"
    ))
    .unwrap()
}

struct App {
    s: Server,
    db: PathBuf,
}

impl App {
    fn start(dir: &Path) -> App {
        let s = start_in(dir, free_port());
        let db = dir.join("app.sqlite");
        open(&db)
            .execute_batch("CREATE TABLE t(n INTEGER PRIMARY KEY, pad TEXT)")
            .unwrap();
        assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
        let (status, v) = s.archive_continuously("app");
        assert_eq!(status, "HTTP/2 200", "{v}");
        let app = App { s, db };
        app.wait_protected(Duration::from_secs(60));
        app
    }

    fn archiving(&self) -> serde_json::Value {
        self.s.json(&[&self.s.url(P)]).1["continuousArchiving"].clone()
    }

    /// Waits until the shipper is on a generation with a base that reaches
    /// the present; returns how long that took.
    fn wait_protected(&self, within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let c = self.archiving();
            let live = c["ranges"].as_array().and_then(|r| r.last()).is_some_and(|r| {
                r["latest"] == "now"
                    && c["generation"]
                        .as_str()
                        .is_some_and(|g| r["latestScn"].as_str().unwrap_or_default().starts_with(g))
            });
            if live && c["error"].is_null() {
                return t.elapsed();
            }
            assert!(t.elapsed() < within, "not protected after {within:?}: {c}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A recovery that must succeed (a base backup in progress is waited
    /// out); its job.
    fn recover(&self, body: &str) -> serde_json::Value {
        let url = self.s.url(&format!("{P}/backups/recovery"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, h, text) = self.s.curl(&[&AUTH[..], &["-X", "POST", "-d", body, &url]].concat());
            match status.as_str() {
                "HTTP/2 202" => return self.s.wait_for(header(&h, "location"), "Succeeded"),
                "HTTP/2 409" if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                _ => panic!("{body}: {status} {text}"),
            }
        }
    }

    /// `strongbox_wal_archive_lag_seconds` of the deployment.
    fn lag_metric(&self) -> Option<f64> {
        let (_, _, page) = self.s.curl(&[&self.s.url("/metrics")]);
        page.lines()
            .find(|l| l.starts_with("strongbox_wal_archive_lag_seconds{") && l.contains("deployment=\"app\""))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

/// The application: one insert per transaction, about 500 a second,
/// numbering from `first`; each commit's (n, time) recorded.
fn writer(db: PathBuf, first: i64, go: Arc<AtomicBool>, commits: Arc<Mutex<Vec<(i64, i64)>>>) -> i64 {
    let c = open(&db);
    let mut n = first;
    while go.load(Ordering::Relaxed) {
        c.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![n, pad(0, n)])
            .unwrap();
        commits.lock().unwrap().push((n, now_ms()));
        n += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    n
}

/// Five rounds: the application writes 4–9 s, the file is lost at once,
/// `latest` is recovered, the application goes on writing on the recovered
/// file. Every round brings back every transaction committed more than a
/// second before the loss, exactly, also the rounds after a recovery
/// (before the fix, those lost every one: the shipper's base failed on
/// the missing file and was asked again only a minute later).
#[test]
fn every_round_of_loss_and_latest_recovery_brings_back_what_was_committed() {
    let seed = seed(now_ms() as u64);
    println!("seed {seed} (replay with MODEL_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(dir.path());
    let mut next = 1;
    for round in 1..=5 {
        let go = Arc::new(AtomicBool::new(true));
        let commits = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (db, go, commits) = (app.db.clone(), go.clone(), commits.clone());
            std::thread::spawn(move || writer(db, next, go, commits))
        };
        std::thread::sleep(Duration::from_millis(4000 + rng.below(5000) as u64));
        lose(&app.db);
        let lost_at = now_ms();
        go.store(false, Ordering::Relaxed);
        thread.join().unwrap();
        if round == 1 {
            // Nothing receives the commits now: the status and the metric
            // say so within 2 s, and the lag grows.
            let t = Instant::now();
            let (c, lag) = loop {
                let c = app.archiving();
                let lag = app.lag_metric();
                if !c["error"].is_null() && lag.is_some_and(|l| l > 0.0) {
                    break (c, lag.unwrap());
                }
                assert!(
                    t.elapsed() < Duration::from_secs(2),
                    "status still healthy: {c} (metric {lag:?})"
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            let shown = t.elapsed();
            assert!(c["error"].as_str().unwrap().contains("not shipping since"), "{c}");
            std::thread::sleep(Duration::from_millis(1100));
            let later = app.lag_metric().unwrap();
            let c2 = app.archiving();
            assert!(later >= lag + 1.0, "the metric grows: {lag} then {later}");
            assert!(
                c2["lagSeconds"].as_f64().unwrap() >= c["lagSeconds"].as_f64().unwrap() + 1.0,
                "the status' lag grows: {c} then {c2}"
            );
            println!(
                "round 1: status and metric showed the loss {} ms after it: {c}",
                shown.as_millis()
            );
        }
        app.recover(r#"{"latest": true}"#);
        let commits = commits.lock().unwrap().clone();
        let (rows, got) = checksum_of(&app.db, "t");
        let m = rows as i64; // rows 1..=m: this round's next..=m and all before
        let expected: Vec<(i64, String)> = (1..=m).map(|n| (n, pad(0, n))).collect();
        if got != checksum(expected.iter().map(|(n, p)| (*n, p.as_str()))) {
            let c = rusqlite::Connection::open(&app.db).unwrap();
            let ns: Vec<i64> = c
                .prepare("SELECT n FROM t ORDER BY n")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let gap = ns.iter().zip(1..).find(|(n, i)| **n != *i);
            panic!(
                "seed {seed} round {round}: the recovered rows are not exactly 1..={m}: {} rows, {:?}..{:?}, first \
                 difference {gap:?}",
                ns.len(),
                ns.first(),
                ns.last()
            );
        }
        let committed_before = |ms: i64| commits.iter().filter(|(_, at)| *at <= ms).count() as i64;
        let must = next + committed_before(lost_at - 1000) - 1;
        let lost: Vec<&(i64, i64)> = commits.iter().filter(|(n, at)| *n > m && *at <= lost_at).collect();
        assert!(
            m >= must,
            "seed {seed} round {round}: recovered up to row {m}, but row {must} was committed more than 1 s \
             before the loss"
        );
        println!(
            "seed {seed} round {round}: {} transactions written, {} came back exactly; {} committed before the loss \
             lost, the first of them {} ms before it",
            commits.len(),
            m - next + 1,
            lost.len(),
            lost.first().map_or(0, |(_, at)| lost_at - at)
        );
        let protected = app.wait_protected(Duration::from_secs(20));
        println!(
            "round {round}: protected again {} ms after the recovery",
            protected.as_millis()
        );
        next = m + 1;
    }
}

/// Rows 1–60, the file lost, a recovery to a moment after row 30, 20 new
/// rows on the recovered file, the file lost again, `latest`: rows 1–30
/// and the 20 new, never the abandoned 31–60; 20 times, the losses at
/// different instants (each time in a table of its own, the earlier ones
/// checked too).
#[test]
fn latest_after_a_point_in_time_recovery_never_returns_the_abandoned_history() {
    let seed = seed(now_ms() as u64);
    println!("seed {seed} (replay with MODEL_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(dir.path());
    let mut tables: Vec<(String, String)> = Vec::new();
    for i in 0..20 {
        let table = format!("h{i}");
        let write = |rows: std::ops::RangeInclusive<i64>, history: u8| {
            let c = open(&app.db);
            for n in rows {
                c.execute(
                    &format!("INSERT INTO {table} VALUES (?1, ?2)"),
                    rusqlite::params![n, pad(history, n)],
                )
                .unwrap();
            }
        };
        open(&app.db)
            .execute_batch(&format!("CREATE TABLE {table}(n INTEGER PRIMARY KEY, pad TEXT)"))
            .unwrap();
        write(1..=30, 1);
        // The next whole second, after row 30 was seen by the shipper.
        let second = (now_ms() + 100) / 1000 + 1;
        while now_ms() < second * 1000 + 100 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let shipped = |app: &App| app.archiving()["shippedTransactions"].as_u64().unwrap_or_default();
        let before = shipped(&app);
        write(31..=60, 1);
        // Rows 31-60 shipped (the history the recovery below abandons holds
        // them, and the moment before them is covered), then lost a little
        // later: a loss before anything after the moment is shipped leaves
        // the moment past the end of the log, and refused.
        let deadline = Instant::now() + Duration::from_secs(30);
        while shipped(&app) < before + 30 {
            assert!(
                Instant::now() < deadline,
                "seed {seed}: rows 31-60 never shipped: {}",
                app.archiving()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let first_loss = rng.below(700) as u64;
        std::thread::sleep(Duration::from_millis(first_loss));
        lose(&app.db);
        app.recover(&format!(r#"{{"timestamp": "{}"}}"#, api_second(second)));
        let want = |rows: &[(i64, u8)]| {
            let rows: Vec<(i64, String)> = rows.iter().map(|(n, h)| (*n, pad(*h, *n))).collect();
            checksum(rows.iter().map(|(n, p)| (*n, p.as_str())))
        };
        let thirty: Vec<(i64, u8)> = (1..=30).map(|n| (n, 1)).collect();
        assert_eq!(
            checksum_of(&app.db, &table),
            (30, want(&thirty)),
            "seed {seed} iteration {i}: the moment after row 30"
        );
        // New rows at once or a little later: before or after the base.
        std::thread::sleep(Duration::from_millis(rng.below(300) as u64));
        write(31..=50, 2);
        // Shipped well before the loss (p99 of the shipping lag: 0.55 s).
        let second_loss = 1100 + rng.below(400) as u64;
        std::thread::sleep(Duration::from_millis(second_loss));
        lose(&app.db);
        app.recover(r#"{"latest": true}"#);
        let fifty: Vec<(i64, u8)> = thirty.iter().copied().chain((31..=50).map(|n| (n, 2))).collect();
        let got = checksum_of(&app.db, &table);
        assert_eq!(
            got,
            (50, want(&fifty)),
            "seed {seed} iteration {i} (losses {first_loss} ms and {second_loss} ms after the writes): rows 1-30 \
             and the 20 new ones"
        );
        tables.push((table, got.1));
        for (t, sum) in &tables {
            assert_eq!(
                &checksum_of(&app.db, t).1,
                sum,
                "seed {seed} iteration {i}: table {t} changed"
            );
        }
        println!(
            "seed {seed} iteration {i}: 50 rows exactly (first loss {first_loss} ms after row 60 was shipped, \
             second {second_loss} ms after the new rows)"
        );
        app.wait_protected(Duration::from_secs(20));
    }
}
