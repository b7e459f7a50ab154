//! A generation's base under load (issue 25; run by `bench/sqlite_base.sh`):
//! the time to take a base of a SQLite database (`Shipper::begin_generation`:
//! the write lock, the log read to its end, the copy through the shipper's
//! open read transaction) and to store it in a local repository, with an
//! application committing small transactions at a steady rate beside it,
//! and the same on the idle database; rounds alternate which goes first,
//! page cache dropped before each (as root). The base must complete under
//! load: SQLite's online backup restarts a copy when another connection
//! writes, unless the copy reads through one read transaction, as this one
//! does. Also checks each base: a restored copy passes `integrity_check`
//! and holds every row committed before the base was asked for.
//!
//! Usage: base_bench DIR [--mib 1024] [--rate 500] [--rounds 3]

#[path = "common/mod.rs"]
mod common;
use common::arg;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use strongbox_engines::sqlite_ship::{RepoArchive, ShipOptions, Shipper};
use strongbox_repo::{InitOptions, Repository, Store};

fn drop_caches() {
    let ok = std::process::Command::new("sh")
        .args(["-c", "sync && echo 3 > /proc/sys/vm/drop_caches"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "dropping the page cache needs root: run as root");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Takes and stores one base; (seconds to take, seconds to store, rows
/// committed before it was asked for, rows in the restored base).
fn base(
    db: &Path,
    repo: &Arc<Repository>,
    scratch: &Path,
    rt: &tokio::runtime::Runtime,
    committed: &AtomicU64,
) -> (f64, f64, u64, i64) {
    let archive = Arc::new(RepoArchive {
        repo: repo.clone(),
        archive: "bench/app".into(),
        runtime: rt.handle().clone(),
    });
    let mut shipper = Shipper::start(db, archive.clone(), ShipOptions::new(scratch.to_path_buf())).unwrap();
    let before = committed.load(Ordering::SeqCst);
    let t = Instant::now();
    let base = shipper.begin_generation().unwrap();
    let took = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let snap = archive.store_base(base).unwrap();
    let stored = t.elapsed().as_secs_f64();
    shipper.stop().unwrap();
    // The base restored: whole, and holding every row committed before.
    let restored = scratch.join("restored.sqlite");
    let _ = std::fs::remove_file(&restored);
    rt.block_on(repo.restore_file(&snap, "database.sqlite", &restored, &strongbox_repo::NoProgress))
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let c = Connection::open(&restored).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    let rows: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    (took, stored, before, rows)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(
        args.get(1)
            .expect("usage: base_bench DIR [--mib N] [--rate N] [--rounds N]"),
    );
    let (mib, rate, rounds) = (
        arg(&args, "--mib", 1024),
        arg(&args, "--rate", 500),
        arg(&args, "--rounds", 3),
    );
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("scratch")).unwrap();
    let db = dir.join("app.sqlite");
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let rows = mib * 1024 * 1024 / 1100;
        c.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
             INSERT INTO t(v) SELECT randomblob(1000) FROM n",
            [rows as i64],
        )
        .unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    let size = std::fs::metadata(&db).unwrap().len();
    println!(
        "database {} MiB; writer {rate} transactions/s; {rounds} rounds, alternating",
        size >> 20
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(dir.join("repository").to_str().unwrap()).unwrap();
    let repo = Arc::new(
        rt.block_on(Repository::init(store, b"bench", InitOptions::default()))
            .unwrap(),
    );
    let (mut idle, mut loaded) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for under_load in if round % 2 == 0 { [false, true] } else { [true, false] } {
            drop_caches();
            let stop = Arc::new(AtomicBool::new(false));
            let committed = Arc::new(AtomicU64::new(0));
            let writer = under_load.then(|| {
                let (db, stop, committed) = (db.clone(), stop.clone(), committed.clone());
                std::thread::spawn(move || {
                    let c = Connection::open(&db).unwrap();
                    c.busy_timeout(Duration::from_secs(60)).unwrap();
                    let start = Instant::now();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        c.execute("INSERT INTO t(v) VALUES (randomblob(100))", []).unwrap();
                        n += 1;
                        committed.store(n, Ordering::SeqCst);
                        let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    (n, start.elapsed().as_secs_f64())
                })
            });
            let rows_before: i64 = Connection::open(&db)
                .unwrap()
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let (took, stored, committed_before, rows) = base(&db, &repo, &dir.join("scratch"), &rt, &committed);
            stop.store(true, Ordering::Relaxed);
            let written = writer.map(|w| w.join().unwrap());
            assert!(
                rows >= rows_before + committed_before as i64,
                "the base holds {rows} rows; {} were committed before it was asked for",
                rows_before + committed_before as i64
            );
            let what = match written {
                Some((n, secs)) => format!("under load ({n} transactions in {secs:.1} s, {:.0}/s)", n as f64 / secs),
                None => "idle".into(),
            };
            println!(
                "round {round}: {what}: base taken in {took:.2} s, stored in {stored:.2} s; restored whole with {rows} rows"
            );
            if under_load { &mut loaded } else { &mut idle }.push(took + stored);
        }
    }
    let (i, l) = (median(idle), median(loaded));
    println!(
        "median base (take + store): idle {i:.2} s, under load {l:.2} s: {:.2}x",
        l / i
    );
}
