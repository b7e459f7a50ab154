//! SQLite WAL shipping, measured (issue 15; run by `bench/sqlite_ship.sh`):
//! 1. lag: a writer commits small transactions at a steady rate; each
//!    transaction's lag is from its COMMIT returning to the push of the
//!    object holding it completing (into a local repository);
//! 2. the application's write throughput (unthrottled writer) with the
//!    shipper on against off, rounds alternating which goes first;
//! 3. stored bytes: the shipped log per day of the steady writer, next to
//!    a full backup of the same database and what a later one adds.
//!
//! Usage: ship_bench DIR [--rate 1000] [--seconds 20] [--rounds 5] [--throughput-seconds 5]

#[path = "common/mod.rs"]
mod common;
use common::arg;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use strongbox_engines::sqlite_ship::{RepoArchive, ShipArchive, ShipOptions, Shipper, parse_object_name};
use strongbox_repo::{InitOptions, NoProgress, Repository, Source, Store};

/// The repository archive, noting when each push completed.
struct Timed {
    inner: RepoArchive,
    pushed: Mutex<Vec<(u64, u64, Instant)>>,
}

impl ShipArchive for Timed {
    fn push(&self, name: &str, data: &[u8]) -> Result<(), strongbox_engines::Error> {
        self.inner.push(name, data)?;
        let (_, first, last) = parse_object_name(name).expect("an object name");
        self.pushed.lock().unwrap().push((first, last, Instant::now()));
        Ok(())
    }
}

/// Profiling only: an archive that keeps nothing.
struct Discard;

impl ShipArchive for Discard {
    fn push(&self, _: &str, _: &[u8]) -> Result<(), strongbox_engines::Error> {
        Ok(())
    }
}

fn app(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, at INTEGER, v TEXT)",
    )
    .unwrap();
    c
}

/// One transaction: a row of `bytes` random bytes (hex-encoded).
fn insert(c: &Connection, n: u64, bytes: u64) {
    c.execute(
        "INSERT INTO t(at, v) VALUES (?1, hex(randomblob(?2)))",
        [n as i64, bytes as i64],
    )
    .unwrap();
}

/// A shipper polling on its own thread until `stop`.
fn ship(
    db: &Path,
    archive: Arc<dyn ShipArchive>,
    scratch: &Path,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Shipper> {
    let mut opts = ShipOptions::new(scratch.to_path_buf());
    if let Some(frames) = std::env::var("SHIP_ROLL_FRAMES").ok().and_then(|v| v.parse().ok()) {
        opts.roll_frames = frames; // for profiling
    }
    if let Some(ms) = std::env::var("SHIP_ROLL_EVERY_MS").ok().and_then(|v| v.parse().ok()) {
        opts.roll_every = Duration::from_millis(ms);
    }
    let poll = std::env::var("SHIP_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_millis(25), Duration::from_millis);
    let mut shipper = Shipper::start(db, archive, opts).unwrap();
    drop(shipper.begin_generation().unwrap()); // the base is not what is measured
    std::thread::spawn(move || {
        let (start, mut busy, mut rolls) = (Instant::now(), Duration::ZERO, 0);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            rolls += usize::from(shipper.poll().unwrap().rolled);
            busy += t.elapsed();
            std::thread::sleep(poll);
        }
        if std::env::var("SHIP_PROFILE").is_ok() {
            println!(
                "    shipper busy {:.0} % of {:.1} s, {rolls} rolls",
                busy.as_secs_f64() / start.elapsed().as_secs_f64() * 100.0,
                start.elapsed().as_secs_f64()
            );
        }
        shipper
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(
        args.get(1)
            .expect("usage: ship_bench DIR [--rate N] [--seconds S] [--rounds R] [--row-bytes B]"),
    );
    let rate = arg(&args, "--rate", 1000);
    let seconds = arg(&args, "--seconds", 20);
    let rounds = arg(&args, "--rounds", 5);
    let tp_seconds = arg(&args, "--throughput-seconds", 5);
    // The default was tuned on; another size is a second data set.
    let row_bytes = arg(&args, "--row-bytes", 50);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let repo = Arc::new(
        rt.block_on(Repository::init(
            Store::local(&dir.join("repo")).unwrap(),
            b"bench",
            InitOptions::default(),
        ))
        .unwrap(),
    );

    // 1. Lag at a steady rate, and the bytes it ships.
    let db = dir.join("steady.sqlite");
    let c = app(&db);
    let timed = Arc::new(Timed {
        inner: RepoArchive {
            repo: repo.clone(),
            archive: "bench/steady".into(),
            runtime: rt.handle().clone(),
        },
        pushed: Mutex::default(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let shipper = ship(&db, timed.clone(), &dir, stop.clone());
    let start = Instant::now();
    let total = rate * seconds;
    let mut committed = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        insert(&c, n, row_bytes);
        committed.push(Instant::now());
    }
    let behind = start.elapsed().as_secs_f64() - seconds as f64;
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    shipper.join().unwrap().stop().unwrap();
    let pushed = timed.pushed.lock().unwrap().clone();
    let mut lags: Vec<f64> = Vec::new();
    for (first, last, at) in &pushed {
        for txn in *first..=*last {
            if let Some(commit) = committed.get(txn as usize - 1) {
                lags.push(at.duration_since(*commit).as_secs_f64());
            }
        }
    }
    lags.sort_by(f64::total_cmp);
    let shipped_bytes: u64 = rt
        .block_on(repo.wal_list("bench/steady"))
        .unwrap()
        .iter()
        .map(|f| f.stored_bytes)
        .sum();
    println!(
        "lag at {rate} transactions/s for {seconds} s ({} transactions, {} shipped in {} objects; the writer ended {:.2} s behind its schedule):",
        total,
        lags.len(),
        pushed.len(),
        behind.max(0.0)
    );
    println!(
        "  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 <= 1000 ms)",
        percentile(&lags, 0.5) * 1e3,
        percentile(&lags, 0.99) * 1e3,
        lags.last().copied().unwrap_or_default() * 1e3
    );
    assert_eq!(lags.len() as u64, total, "every transaction shipped");
    let per_day = shipped_bytes as f64 / seconds as f64 * 86_400.0;
    drop(c);
    let full = |label: &str| {
        let file = std::fs::File::open(&db).unwrap();
        let snap = rt
            .block_on(repo.backup(
                vec![Source::new("database.sqlite", file)],
                Default::default(),
                Arc::new(NoProgress),
            ))
            .unwrap();
        println!(
            "  full backup {label}: {:.1} MB database, {:.1} MB stored",
            snap.totals.logical_bytes as f64 / 1e6,
            snap.totals.new_bytes_stored as f64 / 1e6
        );
        snap.totals.new_bytes_stored
    };
    println!(
        "stored bytes: shipped log {:.1} MB for {seconds} s = {:.0} MB per day of this writer",
        shipped_bytes as f64 / 1e6,
        per_day / 1e6
    );
    let first = full("now");
    let c = app(&db);
    for n in 0..(rate * seconds) {
        insert(&c, n, row_bytes);
    }
    drop(c);
    let again = full(&format!(
        "after another {} transactions (deduplicated against the first)",
        rate * seconds
    ));
    let full_per_day = again as f64 * 86_400.0 / seconds as f64;
    println!(
        "  full backups store what the writer added since the last (deduplicated): {:.0} MB per day of this writer \
         (the first one {:.1} MB); the shipped log costs {:.2}x that",
        full_per_day / 1e6,
        first as f64 / 1e6,
        per_day / full_per_day
    );

    // 2. Throughput, shipping on and off, alternating.
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for shipping in order {
            // Profiling: one side only.
            if std::env::var("SHIP_MODE").is_ok_and(|m| (m == "on") != shipping) {
                continue;
            }
            let db = dir.join(format!("tp-{round}-{shipping}.sqlite"));
            let c = app(&db);
            let stop = Arc::new(AtomicBool::new(false));
            // Profiling: only a reader held open, nothing shipped.
            let held = (shipping && std::env::var("SHIP_HOLD_ONLY").is_ok()).then(|| {
                let r = Connection::open(&db).unwrap();
                r.execute_batch("BEGIN").unwrap();
                r.query_row("SELECT count(*) FROM t", [], |_| Ok(())).unwrap();
                r
            });
            let shipper = (shipping && held.is_none()).then(|| {
                let archive: Arc<dyn ShipArchive> = match std::env::var("SHIP_NO_PUSH") {
                    Ok(_) => Arc::new(Discard), // profiling: read, never stored
                    Err(_) => Arc::new(RepoArchive {
                        repo: repo.clone(),
                        archive: format!("bench/tp-{round}"),
                        runtime: rt.handle().clone(),
                    }),
                };
                ship(&db, archive, &dir, stop.clone())
            });
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed() < Duration::from_secs(tp_seconds) {
                insert(&c, n, row_bytes);
                n += 1;
            }
            let per_s = n as f64 / start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            if let Some(s) = shipper {
                s.join().unwrap().stop().unwrap();
            }
            drop(held);
            println!(
                "  round {round}: shipping {}: {per_s:.0} transactions/s",
                if shipping { "on " } else { "off" }
            );
            if shipping {
                on.push(per_s)
            } else {
                off.push(per_s)
            }
            drop(c);
            let _ = std::fs::remove_file(&db);
        }
    }
    if on.is_empty() || off.is_empty() {
        return;
    }
    let (on, off) = (median(on), median(off));
    println!(
        "throughput (median of {rounds}): shipping on {on:.0}/s, off {off:.0}/s = {:.3}x (target >= 0.95x)",
        on / off
    );
}
