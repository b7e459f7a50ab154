//! SQLite WAL shipping against a model (issue 15): an application commits
//! numbered transactions at random intervals while it checkpoints in every
//! mode, the shipper is restarted or killed, and the database file is
//! replaced; every generation's base plus its shipped transactions is then
//! replayed to random moments, and must hold exactly the transactions of
//! some prefix of the history: none committed after the moment, all those
//! committed a poll or more before it. The seed is printed (MODEL_SEED
//! replays it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use strongbox_engines::sqlite_ship::{
    GENERATION_LABEL, RepoArchive, ShipArchive, ShipOptions, Shipper, ShipperLink, TAKEN_LABEL, Until, by_generation,
    decode, now_ms, replay,
};
use strongbox_repo::{InitOptions, Repository, Store};
use strongbox_testkit::Rng;

const PASSWORD: &[u8] = b"shipping model test";
const ARCHIVE: &str = "model/app";

#[derive(Clone, Copy, Debug)]
enum Op {
    Insert(i64),
    Delete(i64),
}

/// One committed transaction of the application: what it did and the
/// clock just before COMMIT and just after it returned.
#[derive(Debug)]
struct Committed {
    op: Op,
    before_ms: i64,
    after_ms: i64,
}

/// The shipper on its own thread, polling until told to stop; it hands
/// itself back so that the test can stop it cleanly or drop it (a kill:
/// what is pending is never pushed).
struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Shipper, usize)>,
}

/// Bases are stored as snapshots labelled with their generation (the
/// server makes backups of them instead): one at the start, and one
/// whenever continuity is lost.
fn run(db: &Path, archive: Arc<RepoArchive>, opts: &ShipOptions) -> Running {
    let mut shipper = Shipper::start(db, archive.clone(), opts.clone()).expect("shipper starts");
    archive.store_base(shipper.begin_generation().unwrap()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let poll = opts.poll;
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut rolls, mut need_base) = (0, false);
            while !stop.load(Ordering::Relaxed) {
                let polled = shipper.poll().expect("poll");
                rolls += usize::from(polled.rolled);
                need_base |= polled.lost.is_some();
                if need_base {
                    // As the server does: a base that cannot be taken now (the
                    // file is being replaced under the shipper: SQLite reports
                    // a disk I/O error) is taken again at the next poll.
                    match shipper.begin_generation() {
                        Ok(base) => {
                            archive.store_base(base).unwrap();
                            need_base = false;
                        }
                        Err(e) => eprintln!("no base yet ({e}); again at the next poll"),
                    }
                }
                std::thread::sleep(poll);
            }
            (shipper, rolls)
        })
    };
    Running { stop, thread }
}

impl Running {
    /// Stops polling; the shipper and how many times it rolled the log.
    fn finish(self) -> (Shipper, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("shipper thread")
    }
}

fn open_app(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(n INTEGER PRIMARY KEY, pad BLOB)")
        .unwrap();
    c
}

fn rows(db: &Path) -> BTreeSet<i64> {
    let c = Connection::open(db).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "{}", db.display());
    let mut st = c.prepare("SELECT n FROM t").unwrap();
    st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// A generation as the archive holds it.
struct Generation {
    id: String,
    taken_ms: i64,
    snapshot: strongbox_repo::Snapshot,
    /// (first transaction, object name), in order.
    objects: Vec<(u64, u64, String)>,
    /// When its last shipped transaction was seen.
    end_ms: i64,
}

async fn generations(repo: &Repository) -> Vec<Generation> {
    let files = repo.wal_list(ARCHIVE).await.unwrap();
    let mut shipped = by_generation(files.iter().map(|f| f.name.as_str()));
    let mut out = Vec::new();
    for snap in repo.snapshots().await.unwrap() {
        let id = snap.labels[GENERATION_LABEL].clone();
        let taken_ms: i64 = snap.labels[TAKEN_LABEL].parse().unwrap();
        let objects = shipped.remove(&id).unwrap_or_default();
        let end_ms = match objects.last() {
            Some((_, _, name)) => {
                let data = repo.wal_fetch(ARCHIVE, name).await.unwrap().unwrap();
                decode(&data).unwrap().1.last().unwrap().seen_ms
            }
            None => taken_ms,
        };
        out.push(Generation {
            id,
            taken_ms,
            snapshot: snap,
            objects,
            end_ms,
        });
    }
    out.sort_by_key(|g| g.taken_ms);
    out
}

/// A repository in `dir`, and the archive shipped into.
fn repository(dir: &Path) -> (tokio::runtime::Runtime, Arc<Repository>, Arc<RepoArchive>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let repo = Arc::new(
        rt.block_on(Repository::init(
            Store::local(&dir.join("repo")).unwrap(),
            PASSWORD,
            InitOptions::default(),
        ))
        .unwrap(),
    );
    let archive = Arc::new(RepoArchive {
        repo: repo.clone(),
        archive: ARCHIVE.into(),
        runtime: rt.handle().clone(),
    });
    (rt, repo, archive)
}

/// The generation's base brought forward to `until`, in a new file.
fn recover(rt: &tokio::runtime::Runtime, repo: &Repository, g: &Generation, until: Until, dir: &Path) -> PathBuf {
    // Named by generation and target: each recovery gets a file of its own.
    let db = dir.join(format!("recovered-{}-{until:?}.sqlite", g.id));
    rt.block_on(repo.restore_file(&g.snapshot, "database.sqlite", &db, &strongbox_repo::NoProgress))
        .unwrap();
    let objects = g.objects.iter().map(|(first, _, name)| {
        let data = rt.block_on(repo.wal_fetch(ARCHIVE, name)).unwrap().unwrap();
        Ok((*first, data))
    });
    replay(&db, objects, until).unwrap();
    db
}

/// The rows after the first `k` transactions of `history`.
fn state_after(history: &[Committed], k: usize) -> BTreeSet<i64> {
    let mut rows = BTreeSet::new();
    for c in &history[..k] {
        match c.op {
            Op::Insert(n) => rows.insert(n),
            Op::Delete(n) => rows.remove(&n),
        };
    }
    rows
}

#[test]
fn recoveries_to_random_moments_hold_exactly_what_was_committed_by_then() {
    let seed = strongbox_testkit::seed(now_ms() as u64);
    println!("sqlite shipping seed {seed} (MODEL_SEED replays it)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let (rt, repo, archive) = repository(dir.path());
    let opts = ShipOptions {
        // Small, so that rolls happen often.
        roll_frames: 60,
        ..ShipOptions::new(dir.path().to_path_buf())
    };
    let db = dir.path().join("app.sqlite");
    let mut app = open_app(&db);
    let mut shipper = run(&db, archive.clone(), &opts);
    let mut history: Vec<Committed> = Vec::new();
    let mut live: Vec<i64> = Vec::new();
    // (kill time, transactions committed by then) for each kill.
    let mut kills: Vec<(i64, usize)> = Vec::new();
    let (mut restarts, mut replaced, mut checkpoints, mut rolls) = (0, 0, 0, 0);
    for n in 1..=600i64 {
        std::thread::sleep(Duration::from_millis(rng.below(12) as u64));
        let op = if !live.is_empty() && rng.below(5) == 0 {
            Op::Delete(live.swap_remove(rng.below(live.len())))
        } else {
            live.push(n);
            Op::Insert(n)
        };
        let tx = app.transaction().unwrap();
        match op {
            Op::Insert(n) => tx
                .execute(
                    "INSERT INTO t VALUES (?1, randomblob(?2))",
                    [n, 10 + rng.below(3000) as i64],
                )
                .unwrap(),
            Op::Delete(n) => tx.execute("DELETE FROM t WHERE n = ?1", [n]).unwrap(),
        };
        let before_ms = now_ms();
        tx.commit().unwrap();
        history.push(Committed {
            op,
            before_ms,
            after_ms: now_ms(),
        });
        match rng.below(100) {
            0..=3 => {
                // The application checkpoints, in any mode; the modes that
                // wait for readers give up after 50 ms (the shipper reads).
                let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][rng.below(4)];
                app.busy_timeout(Duration::from_millis(50)).unwrap();
                let _ = app.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
                app.busy_timeout(Duration::from_secs(30)).unwrap();
                checkpoints += 1;
            }
            4 => {
                let (stopped, n) = shipper.finish();
                stopped.stop().unwrap();
                rolls += n;
                shipper = run(&db, archive.clone(), &opts);
                restarts += 1;
            }
            5 => {
                kills.push((now_ms(), history.len()));
                let (killed, n) = shipper.finish();
                drop(killed); // what was pending is lost
                rolls += n;
                shipper = run(&db, archive.clone(), &opts);
                restarts += 1;
            }
            6 => {
                // The file replaced by a copy of itself, its log removed.
                let copy = dir.path().join("copy.sqlite");
                app.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
                drop(app);
                std::fs::rename(&copy, &db).unwrap();
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
                }
                app = open_app(&db);
                replaced += 1;
            }
            _ => {}
        }
    }
    let end_ms = now_ms();
    let (stopped, n) = shipper.finish();
    stopped.stop().unwrap();
    rolls += n;
    drop(app);
    println!(
        "{restarts} shipper restarts ({} kills), {replaced} replacements, {checkpoints} application checkpoints, \
         {rolls} rolls",
        kills.len()
    );
    assert!(rolls > 0, "the log was rolled");

    let gens = rt.block_on(generations(&repo));
    assert!(gens.len() > restarts, "a generation per start and per replacement");
    let work = tempfile::tempdir().unwrap();
    // Every generation replays whole, without a gap, to a prefix of the history.
    let prefix_of = |got: &BTreeSet<i64>, what: &str| -> usize {
        (0..=history.len())
            .rev()
            .find(|&k| state_after(&history, k) == *got)
            .unwrap_or_else(|| panic!("{what}: {got:?} is no prefix of the history (seed {seed})"))
    };
    for g in &gens {
        let path = recover(&rt, &repo, g, Until::Latest, work.path());
        prefix_of(&rows(&path), &format!("generation {} latest", g.id));
    }
    // A kill loses at most the last second.
    for (killed_ms, committed) in &kills {
        let g = gens.iter().rev().find(|g| g.taken_ms <= *killed_ms).unwrap();
        let path = recover(&rt, &repo, g, Until::Latest, work.path());
        let k = prefix_of(&rows(&path), "latest after a kill");
        let must = history[..*committed]
            .iter()
            .filter(|c| c.after_ms <= killed_ms - 1000)
            .count();
        assert!(
            k >= must,
            "after a kill: {k} transactions, {must} were committed a second before it (seed {seed})"
        );
    }
    // Random moments inside the shipped ranges.
    let first_ms = gens[0].taken_ms;
    let (mut tried, mut worst_lag) = (0, 0);
    while tried < 40 {
        let at = first_ms + rng.below((end_ms - first_ms) as usize) as i64;
        let Some(g) = gens.iter().rev().find(|g| g.taken_ms <= at) else {
            continue;
        };
        if at > g.end_ms && gens.last().map(|l| &l.id) != Some(&g.id) {
            continue; // between generations: nothing was shipped then
        }
        tried += 1;
        let path = recover(&rt, &repo, g, Until::Time(at), work.path());
        let got = rows(&path);
        // A state can recur (a row inserted, then deleted): every prefix
        // with this state is a candidate; one must fit the moment — no
        // transaction begun after it, none missing committed a second before.
        let prefixes: Vec<usize> = (0..=history.len())
            .filter(|&k| state_after(&history, k) == got)
            .collect();
        let fits = |k: usize| {
            history[..k].iter().all(|c| c.before_ms <= at)
                && history.get(k).is_none_or(|next| next.after_ms > at - 1000)
        };
        let Some(k) = prefixes.iter().copied().find(|&k| fits(k)) else {
            panic!(
                "moment {at} in generation {}: the state after {prefixes:?} transactions, none of which holds \
                 exactly what was committed by then (seed {seed})",
                g.id
            );
        };
        if let Some(next) = history.get(k) {
            worst_lag = worst_lag.max(at - next.after_ms);
        }
        std::fs::remove_file(&path).unwrap();
    }
    println!(
        "{} generations; 40 moments recovered exactly; longest a missing transaction had been committed: {worst_lag} ms",
        gens.len()
    );
}

/// An application's RESTART and TRUNCATE checkpoints wait for every reader
/// to leave the log; the shipper's reader must leave it once it is copied,
/// or each such checkpoint stalls for the application's busy timeout.
/// Neither breaks the generation: a truncated log's successor follows it.
#[test]
fn restart_and_truncate_checkpoints_finish_at_once_and_keep_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, repo, archive) = repository(dir.path());
    let db = dir.path().join("app.sqlite");
    let app = open_app(&db);
    let shipper = run(&db, archive, &ShipOptions::new(dir.path().to_path_buf()));
    let insert = |from: i64| {
        for n in from..from + 50 {
            app.execute("INSERT INTO t VALUES (?1, randomblob(200))", [n]).unwrap();
        }
    };
    let mut n = 0;
    for mode in ["TRUNCATE", "RESTART", "TRUNCATE"] {
        insert(n);
        n += 50;
        std::thread::sleep(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let busy: i64 = app
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0))
            .unwrap();
        let took = started.elapsed();
        assert_eq!(busy, 0, "{mode} checkpoint gave up");
        assert!(took < Duration::from_secs(2), "{mode} checkpoint took {took:?}");
        if mode == "TRUNCATE" {
            let len = std::fs::metadata(format!("{}-wal", db.display())).unwrap().len();
            assert_eq!(len, 0, "the log was truncated");
        }
        // The shipper sees the log as the checkpoint left it.
        std::thread::sleep(Duration::from_millis(100));
    }
    insert(n);
    n += 50;
    one_generation_holds_them_all(&rt, &repo, shipper, n, "");
}

/// Stops the shipper (once it has read the last commits) and checks that
/// it shipped one generation, whose latest state holds rows `0..n`; `seen`
/// goes into the failure message.
fn one_generation_holds_them_all(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    shipper: Running,
    n: i64,
    seen: &str,
) {
    std::thread::sleep(Duration::from_millis(100));
    let (shipper, _) = shipper.finish();
    shipper.stop().unwrap();
    let gens = rt.block_on(generations(repo));
    assert_eq!(gens.len(), 1, "one generation throughout{seen}");
    let work = tempfile::tempdir().unwrap();
    let path = recover(rt, repo, &gens[0], Until::Latest, work.path());
    assert_eq!(rows(&path), (0..n).collect());
}

/// However SQLite resets the log, the generation goes on, whatever the new
/// log's header says: a TRUNCATE checkpoint of a log already empty resets
/// it again (one more to the first salt each time, so the next log is
/// several resets on); the checkpoint sequence in a header is the count of
/// the connection that reset the log, not the database's (a new connection
/// starts at 0); and a connection that never reset the log, writing first
/// into an empty one, gives it fresh random salts. Found by the server's
/// model (soak seed 38698847: a `latest` missed the transaction committed
/// after such a reset, the shipper having ended its generation on "the WAL
/// was restarted without continuity" just before).
#[test]
fn every_kind_of_log_reset_keeps_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, repo, archive) = repository(dir.path());
    let db = dir.path().join("app.sqlite");
    let mut app = open_app(&db);
    let shipper = run(&db, archive, &ShipOptions::new(dir.path().to_path_buf()));
    let mut n = 0;
    let mut insert = |app: &Connection, k: i64| {
        for _ in 0..k {
            app.execute("INSERT INTO t VALUES (?1, randomblob(200))", [n]).unwrap();
            n += 1;
        }
    };
    let checkpoint = |app: &Connection, mode: &str| {
        let busy: i64 = app
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0, "{mode} checkpoint gave up");
    };
    let header = || strongbox_engines::sqlite_wal::WalHeader::read(&PathBuf::from(format!("{}-wal", db.display())));
    let mut seen = Vec::new();
    for step in 0..8 {
        insert(&app, 10);
        std::thread::sleep(Duration::from_millis(100));
        match step % 4 {
            // Several resets of an empty log, nothing written between.
            0 => (0..3).for_each(|_| checkpoint(&app, "TRUNCATE")),
            // Another connection writes first into the emptied log: new salts.
            1 => {
                checkpoint(&app, "TRUNCATE");
                app = open_app(&db);
            }
            // A new connection resets the log copied whole: its own count.
            2 => {
                checkpoint(&app, "FULL");
                std::thread::sleep(Duration::from_millis(100)); // the shipper's reader leaves the log
                app = open_app(&db);
            }
            _ => checkpoint(&app, "RESTART"),
        }
        insert(&app, 1);
        seen.push(header().unwrap().unwrap());
    }
    let headers: Vec<_> = seen.iter().map(|h| (h.checkpoint_seq, h.salt.0)).collect();
    let seen = format!(" (the logs' checkpoint sequences and first salts: {headers:?})");
    one_generation_holds_them_all(&rt, &repo, shipper, n, &seen);
}

/// A repository on a bad day: each push takes a second while `slow` is
/// set; pushes fail while `down` is set, the first of them after storing
/// its object (the answer lost, as a store that stops mid-request may do).
struct Unreachable {
    inner: Arc<RepoArchive>,
    slow: AtomicBool,
    down: AtomicBool,
    answer_lost: AtomicBool,
}

impl Unreachable {
    /// Over `inner`, answering at first.
    fn over(inner: Arc<RepoArchive>) -> Arc<Self> {
        Arc::new(Unreachable {
            inner,
            slow: AtomicBool::new(false),
            down: AtomicBool::new(false),
            answer_lost: AtomicBool::new(false),
        })
    }
}

/// How long a push takes while the store is slow.
const SLOW_PUSH: Duration = Duration::from_secs(1);

impl ShipArchive for Unreachable {
    fn push(&self, name: &str, data: &[u8]) -> Result<(), strongbox_engines::Error> {
        if self.slow.load(Ordering::Relaxed) {
            std::thread::sleep(SLOW_PUSH);
        }
        if self.down.load(Ordering::Relaxed) {
            if !self.answer_lost.swap(true, Ordering::Relaxed) {
                self.inner.push(name, data)?;
            }
            return Err(strongbox_engines::Error::Failed("the store does not answer".into()));
        }
        self.inner.push(name, data)
    }
}

/// While the repository is slow, polls go on (a transaction's time is when
/// a poll saw it); while it fails, the shipper keeps what it read (and
/// says so) and pushes it once the repository answers: one generation,
/// whose objects follow each other without a gap or an overlap (though the
/// first failed push was stored) and whose latest state holds every row.
#[test]
fn slow_or_failing_pushes_hold_back_no_poll_and_keep_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, repo, archive) = repository(dir.path());
    let store = Unreachable::over(archive.clone());
    let db = dir.path().join("app.sqlite");
    let app = open_app(&db);
    let opts = ShipOptions {
        ship_every: Duration::from_millis(50),
        ..ShipOptions::new(dir.path().to_path_buf())
    };
    let mut shipper = Shipper::start(&db, store.clone(), opts).unwrap();
    archive.store_base(shipper.begin_generation().unwrap()).unwrap();
    let (mut n, mut slowest) = (0, Duration::ZERO);
    let mut commit_and_poll = |shipper: &mut Shipper, k: i64| {
        for _ in 0..k {
            app.execute("INSERT INTO t VALUES (?1, randomblob(200))", [n]).unwrap();
            n += 1;
            let started = std::time::Instant::now();
            let polled = shipper.poll().expect("a failing push does not stop the shipper");
            slowest = slowest.max(started.elapsed());
            assert_eq!(polled.lost, None);
            std::thread::sleep(Duration::from_millis(10));
        }
        (n, slowest)
    };
    commit_and_poll(&mut shipper, 20);
    store.slow.store(true, Ordering::Relaxed);
    let (_, slowest) = commit_and_poll(&mut shipper, 100);
    // A poll waiting for a push would take the store's second; one that
    // does not, milliseconds.
    assert!(
        slowest < SLOW_PUSH / 2,
        "a poll took {slowest:?} while the store was slow"
    );
    store.slow.store(false, Ordering::Relaxed);
    store.down.store(true, Ordering::Relaxed);
    commit_and_poll(&mut shipper, 100);
    let failure = shipper.push_failure().expect("failing pushes are reported");
    assert_eq!(failure.why, "the store does not answer");
    assert!(failure.waiting.contains("transactions (0."), "{}", failure.waiting);
    assert!(shipper.lag() >= Duration::from_millis(500), "{:?}", shipper.lag());
    store.down.store(false, Ordering::Relaxed);
    let n = commit_and_poll(&mut shipper, 20).0 as u64;
    // Pushed again after the wait, which doubles to at most 4 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shipper.shipped < n {
        assert!(
            std::time::Instant::now() < deadline,
            "shipped {} of {n}",
            shipper.shipped
        );
        shipper.poll().unwrap();
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(shipper.push_failure().is_none());
    shipper.stop().unwrap();
    let gens = rt.block_on(generations(&repo));
    assert_eq!(gens.len(), 1, "one generation throughout");
    let ranges: Vec<(u64, u64)> = gens[0].objects.iter().map(|(first, last, _)| (*first, *last)).collect();
    let follow = ranges.windows(2).all(|w| w[1].0 == w[0].1 + 1);
    assert!(
        follow && ranges[0].0 == 1 && ranges.last().unwrap().1 == n,
        "{ranges:?}"
    );
    let work = tempfile::tempdir().unwrap();
    let path = recover(&rt, &repo, &gens[0], Until::Latest, work.path());
    assert_eq!(rows(&path), (0..n as i64).collect());
}

/// While the repository fails, what waits in memory is bounded: failed
/// pushes are borne until `pending_at_most`, then the poll fails saying so
/// in one sentence (the server then starts the shipper again, which asks
/// for a new base).
#[test]
fn transactions_waiting_past_the_memory_bound_end_the_generation_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let (_rt, _repo, archive) = repository(dir.path());
    let store = Unreachable::over(archive.clone());
    store.down.store(true, Ordering::Relaxed);
    store.answer_lost.store(true, Ordering::Relaxed); // no push stored
    let db = dir.path().join("app.sqlite");
    let app = open_app(&db);
    let opts = ShipOptions {
        ship_every: Duration::from_millis(10),
        pending_at_most: 64 << 10,
        ..ShipOptions::new(dir.path().to_path_buf())
    };
    let mut shipper = Shipper::start(&db, store, opts).unwrap();
    archive.store_base(shipper.begin_generation().unwrap()).unwrap();
    // A 200-byte row changes a page or more (4 KiB and its frame header):
    // the 16th transaction passes 64 KiB at the latest.
    let mut tolerated = 0;
    for n in 0..100 {
        app.execute("INSERT INTO t VALUES (?1, randomblob(200))", [n]).unwrap();
        std::thread::sleep(Duration::from_millis(15));
        match shipper.poll() {
            Ok(polled) => {
                assert_eq!(polled.lost, None);
                tolerated += usize::from(shipper.push_failure().is_some());
            }
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.starts_with("the store does not answer; 0.1 MiB of transactions waited in memory")
                        && e.ends_with("more than the 0.1 MiB held, so this generation ends"),
                    "{e}"
                );
                assert!(
                    n < 16 && tolerated > 0,
                    "ended at transaction {n}, {tolerated} polls after a failure"
                );
                println!("ended at transaction {n}, {tolerated} polls after the first failed push");
                return;
            }
        }
    }
    panic!("100 transactions waited in memory, far more than 64 KiB");
}

/// Runs `ask` with a link to `shipper`, which answers its requests on
/// another thread meanwhile, as the server's shipper thread answers jobs.
fn answering<T>(shipper: &mut Shipper, ask: impl FnOnce(&ShipperLink) -> T) -> T {
    let link = ShipperLink::default();
    let requests = link.open();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let stop = &stop;
        s.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                shipper.answer(&requests);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let out = ask(&link);
        stop.store(true, Ordering::Relaxed);
        out
    })
}

/// A recovery asks the shipper to end its generation; if reading the log
/// one last time finds continuity lost, the answer says so (and which
/// generation), so that the recovery does not replay that generation as if
/// it held everything. Without a loss the answer names none.
#[test]
fn ending_for_a_recovery_reports_a_generation_that_lost_continuity() {
    let dir = tempfile::tempdir().unwrap();
    let (_rt, _repo, archive) = repository(dir.path());
    let db = dir.path().join("app.sqlite");
    let app = open_app(&db);
    let end = |shipper: &mut Shipper| {
        answering(shipper, |link| link.request_end())
            .expect("the shipper runs")
            .expect("it ended its generation")
    };
    let mut shipper = Shipper::start(&db, archive.clone(), ShipOptions::new(dir.path().to_path_buf())).unwrap();
    for lose in [false, true] {
        let base = shipper.begin_generation().unwrap();
        let generation = base.generation.clone();
        archive.store_base(base).unwrap();
        app.execute("INSERT INTO t VALUES (?1, randomblob(200))", [i64::from(lose)])
            .unwrap();
        if lose {
            std::fs::remove_file(format!("{}-wal", db.display())).unwrap();
        }
        match (lose, end(&mut shipper)) {
            (false, None) => {}
            (true, Some(lost)) => {
                assert_eq!(lost.generation, generation);
                assert_eq!(lost.why, "the WAL was removed");
            }
            (lose, answer) => panic!("continuity lost: {lose}; the shipper answered {answer:?}"),
        }
        assert_eq!(shipper.generation, None, "the generation ended");
    }
}

/// A `latest` along a generation that lost continuity just before the
/// recovery asked the shipper to end it is refused before anything is
/// changed: replaying that generation to its end would silently drop what
/// the database holds past it.
#[test]
fn a_latest_along_a_generation_that_lost_continuity_is_refused_and_changes_nothing() {
    use strongbox_engines::{Engine, RecoveryContext, RecoveryTarget, SnapshotFiles, SqliteEngine};
    let dir = tempfile::tempdir().unwrap();
    let (rt, repo, archive) = repository(dir.path());
    let db = dir.path().join("app.sqlite");
    let app = open_app(&db);
    app.execute("INSERT INTO t VALUES (1, randomblob(200))", []).unwrap();
    let mut shipper = Shipper::start(&db, archive.clone(), ShipOptions::new(dir.path().to_path_buf())).unwrap();
    let base = shipper.begin_generation().unwrap();
    let generation = base.generation.clone();
    let snapshot = archive.store_base(base).unwrap();
    app.execute("INSERT INTO t VALUES (2, randomblob(200))", []).unwrap();
    std::fs::remove_file(format!("{}-wal", db.display())).unwrap();
    let before = std::fs::read(&db).unwrap();
    let files = SnapshotFiles::new(
        repo.clone(),
        snapshot,
        rt.handle().clone(),
        Arc::new(strongbox_repo::Counters::default()),
    );
    let along = |until| {
        RecoveryTarget::Shipped(strongbox_engines::sqlite_ship::ShippedTarget {
            generation: generation.clone(),
            until,
            at_least: 0,
        })
    };
    // `latest`, and a moment after the generation's last read, for the same
    // reason (one before it is held whole by the shipped log).
    let (refused, refused_later) = answering(&mut shipper, |link| {
        let cx = RecoveryContext {
            scratch: dir.path(),
            log: &|_| {},
            wal: None,
            shipper: Some(link),
            drill: false,
        };
        let recover = |until| {
            SqliteEngine::new(db.clone())
                .recover(&files, &along(until), &cx)
                .map(|r| r.summary)
        };
        (recover(Until::Latest), recover(Until::Time(now_ms())))
    });
    let err = refused
        .expect_err("recovered along a generation that lost continuity")
        .to_string();
    let said = format!("generation {generation} of the shipped log ended before this recovery (the WAL was removed)");
    assert!(err.contains(&said), "{err}");
    let err = refused_later
        .expect_err("recovered to a moment past the lost generation's end")
        .to_string();
    assert!(err.contains(&said), "{err}");
    assert!(std::fs::read(&db).unwrap() == before, "the database file changed");
}
