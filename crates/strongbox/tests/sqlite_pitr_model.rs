//! Issue 15's model test, through the API: an application commits
//! numbered transactions (INSERT, UPDATE or DELETE of one row) to a SQLite
//! database at random intervals while a
//! real server ships its log; seeded random steps SIGKILL the server, stop
//! it gracefully, replace the database file, lose it, lose the server's
//! catalog (rebuilt from the repository), take backups, and
//! recover to random seconds, to positions (`scn`) and to `latest`. Every
//! recovery is compared with a model of every state the database went
//! through:
//!
//! - a second: exactly the state after some prefix of the transactions,
//!   holding every one committed a second before it and none begun after
//!   it — or a 400 for a second no generation covers, which must be a
//!   stretch no shipper watched (after a kill, a stop, a replaced file);
//! - `GENERATION:N`: exactly N transactions after that generation's base
//!   backup (listed with `scn` `GENERATION:0`, recovered by its tag);
//! - `latest`: everything (the application idle, the shipper live); after a
//!   SIGKILL with the file lost, or the file lost while the application
//!   writes and the server runs: everything committed a second before the
//!   loss (and the application goes on writing on the recovered file).
//!
//! A state is every row's number and value, each row's padding checked
//! against what its number and value make it.
//!
//! Recoveries are transactions too: each is a state of the model, and later
//! recoveries may go back to moments before or after it. The seed is
//! printed; `MODEL_SEED=N` replays one, `MODEL_STEPS=N` sets the length.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::common::*;

const P: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/app";
/// How long after its commit a transaction may be missing, each bound
/// derived from the shipper's settings (`ShipOptions::new`: the log read
/// every `poll`, 25 ms; a transaction read is pushed within `ship_every`,
/// 500 ms) and checked against what runs measured (printed at the end;
/// four seeds of 40 steps before these bounds: a moment's slack 7–14 ms
/// outside the shipper's down time, the file lost with the server up 0–20
/// ms, with the server killed 402–521 ms).
struct Tolerance {
    /// A recovery to a moment: a commit is stamped when the shipper reads
    /// it, within a poll (and the stamp's own write: 75 ms more). Commits
    /// made while no shipper ran (killed or stopped, until it is live
    /// again) are stamped at its first poll after: `Model::blind`.
    moment_ms: i64,
    /// The file lost while the server runs: what the shipper had not yet
    /// read, a poll (and its read: 75 ms more).
    file_lost_ms: i64,
    /// The file lost and the server killed: what it had read but not yet
    /// pushed too, `ship_every`, and the push in flight (250 ms).
    killed_ms: i64,
}

fn tolerance() -> Tolerance {
    let ship = strongbox_engines::sqlite_ship::ShipOptions::new(PathBuf::new());
    let (poll, ship_every) = (ship.poll.as_millis() as i64, ship.ship_every.as_millis() as i64);
    Tolerance {
        moment_ms: poll + 75,
        file_lost_ms: poll + 75,
        killed_ms: poll + ship_every + 250,
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The rows of `t`: number → value.
type State = BTreeMap<i64, i64>;

#[derive(Clone, Debug)]
enum Op {
    /// A row inserted, or updated, to a value.
    Set(i64, i64),
    Delete(i64),
    /// A recovery: the database holds this from then on.
    Recovered(State),
}

impl Op {
    fn apply(&self, state: &mut State) {
        match self {
            Op::Set(n, v) => {
                state.insert(*n, *v);
            }
            Op::Delete(n) => {
                state.remove(n);
            }
            Op::Recovered(rows) => *state = rows.clone(),
        }
    }
}

/// A row's padding: its number and value make it (10–609 bytes), so that
/// a row restored with the right value but wrong bytes is found.
fn pad(n: i64, v: i64) -> Vec<u8> {
    let mut rng = Rng((n as u64).wrapping_mul(0x9E37_79B9) ^ v as u64);
    let len = 10 + rng.below(600);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// The database's rows, each row's padding checked, after an integrity check.
fn rows(db: &Path) -> State {
    let c = rusqlite::Connection::open(db).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "{}", db.display());
    let mut q = c.prepare("SELECT n, v, pad FROM t ORDER BY n").unwrap();
    let rows = q
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?))
        })
        .unwrap();
    let mut state = State::new();
    for row in rows {
        let (n, v, bytes) = row.unwrap();
        assert!(
            bytes == pad(n, v),
            "row {n} (value {v}): its padding is not what was written"
        );
        state.insert(n, v);
    }
    state
}

/// How `got` differs from `want`: rows missing or with another value, and
/// rows it should not hold.
fn differences(want: &State, got: &State) -> String {
    let wrong: Vec<_> = want
        .iter()
        .filter(|(n, v)| got.get(n) != Some(v))
        .map(|(n, _)| n)
        .collect();
    let extra: Vec<_> = got.keys().filter(|n| !want.contains_key(n)).collect();
    format!("missing or other values {wrong:?}, extra {extra:?}")
}

/// A transaction, in commit order.
struct Event {
    begun_ms: i64,
    committed_ms: i64,
    op: Op,
}

/// Every state the database went through: the state after the first k
/// events, for each k.
#[derive(Default)]
struct Model {
    events: Vec<Event>,
    live: State,
    next: i64,
    /// When no shipper read the log: from a kill or stop to the moment the
    /// restarted one was seen live. Commits then are stamped after.
    blind: Vec<(i64, i64)>,
}

impl Model {
    fn push(&mut self, begun_ms: i64, op: Op) {
        op.apply(&mut self.live);
        self.events.push(Event {
            begun_ms,
            committed_ms: now_ms(),
            op,
        });
    }

    /// The k (events applied) in `lo..=hi` whose state is `rows`.
    fn matching(&self, rows: &State, lo: usize, hi: usize) -> Vec<usize> {
        let mut state = State::new();
        let mut found = Vec::new();
        for k in 0..=hi.min(self.events.len()) {
            if k >= lo && &state == rows {
                found.push(k);
            }
            if let Some(e) = self.events.get(k) {
                e.op.apply(&mut state);
            }
        }
        found
    }

    /// The states a recovery to `ms` may hold: at least every event
    /// committed `tolerance_ms` before it (`tolerance_ms` after the end of
    /// the blind stretch it was committed in, if any), none begun after it.
    fn window(&self, ms: i64, tolerance_ms: i64) -> (usize, usize) {
        let stamped_by = |e: &Event| {
            let seen = self
                .blind
                .iter()
                .find(|(from, to)| (*from..=*to).contains(&e.committed_ms))
                .map_or(e.committed_ms, |(_, to)| *to);
            seen <= ms - tolerance_ms
        };
        // Stamps follow the log's order: the first not surely stamped
        // ends the prefix.
        let lo = self
            .events
            .iter()
            .position(|e| !stamped_by(e))
            .unwrap_or(self.events.len());
        let hi = self.events.partition_point(|e| e.begun_ms <= ms);
        (lo.min(hi), hi)
    }
}

enum Command {
    /// Close the connection and wait for `Resume` (acknowledged once closed).
    Pause(mpsc::Sender<()>),
    Resume,
    Stop,
}

fn open_app(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
    c
}

/// The application: inserts (70 %), updates (15 %), deletes (12 %),
/// checkpoints in a random mode (3 %), 0–30 ms apart; each commit goes
/// into the model.
fn application(db: PathBuf, model: Arc<Mutex<Model>>, mut rng: Rng, commands: mpsc::Receiver<Command>) -> usize {
    let mut app = Some(open_app(&db));
    let mut checkpoints = 0;
    loop {
        match commands.try_recv() {
            Ok(Command::Pause(ack)) => {
                drop(app.take());
                ack.send(()).unwrap();
                match commands.recv().unwrap() {
                    Command::Resume => app = Some(open_app(&db)),
                    Command::Stop => return checkpoints,
                    Command::Pause(_) => unreachable!("paused twice"),
                }
            }
            Ok(Command::Stop) => return checkpoints,
            Ok(Command::Resume) | Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => return checkpoints,
        }
        std::thread::sleep(Duration::from_millis(rng.below(30) as u64));
        let c = app.as_ref().unwrap();
        let roll = rng.below(100);
        let mut m = model.lock().unwrap();
        let begun = now_ms();
        if roll < 3 {
            let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][rng.below(4)];
            drop(m);
            c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                .unwrap();
            checkpoints += 1;
        } else if roll < 30 && !m.live.is_empty() {
            let n = *m.live.keys().nth(rng.below(m.live.len())).unwrap();
            let (changed, op) = if roll < 15 {
                (c.execute("DELETE FROM t WHERE n = ?1", [n]).unwrap(), Op::Delete(n))
            } else {
                let v = rng.below(1_000_000) as i64;
                let sql = "UPDATE t SET v = ?2, pad = ?3 WHERE n = ?1";
                (
                    c.execute(sql, rusqlite::params![n, v, pad(n, v)]).unwrap(),
                    Op::Set(n, v),
                )
            };
            assert_eq!(changed, 1, "row {n} is in the model but not in the database");
            m.push(begun, op);
        } else {
            m.next += 1;
            let (n, v) = (m.next, rng.below(1_000_000) as i64);
            c.execute("INSERT INTO t VALUES (?1, ?2, ?3)", rusqlite::params![n, v, pad(n, v)])
                .unwrap();
            m.push(begun, Op::Set(n, v));
        }
    }
}

/// The API's dates: `dd-MMM-yyyy HH:mm:ss`.
const API_DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[day]-[month repr:short]-[year] [hour]:[minute]:[second]");

fn api_second(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap();
    t.format(API_DATE).unwrap()
}

/// An API date (`dd-MMM-yyyy HH:mm:ss`, ` UTC` or not) in seconds since the epoch.
fn api_seconds(shown: &str) -> i64 {
    time::PrimitiveDateTime::parse(shown.trim_end_matches(" UTC"), API_DATE)
        .unwrap()
        .assume_utc()
        .unix_timestamp()
}

struct Run {
    s: Server,
    db: PathBuf,
    model: Arc<Mutex<Model>>,
    commands: mpsc::Sender<Command>,
    seed: u64,
    log: String,
    /// When something stopped a generation (kill, stop, replacement,
    /// backup): the stretches no generation covers begin there.
    disruptions: Vec<i64>,
    /// Per generation: the event counts its base may sit at.
    bases: HashMap<String, BTreeSet<usize>>,
    /// The longest a transaction missing from a recovery to a moment had
    /// been committed by then.
    slack_ms: i64,
    /// The longest a transaction lost with the file had been committed by
    /// the loss: the server up, and killed.
    lost_up_ms: i64,
    lost_killed_ms: i64,
}

impl Run {
    fn note(&mut self, what: impl AsRef<str>) {
        let _ = writeln!(self.log, "{}", what.as_ref());
        eprintln!("seed {}: {}", self.seed, what.as_ref());
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "seed {} (replay with MODEL_SEED={}): {what}\n--- steps:\n{}",
            self.seed, self.seed, self.log
        )
    }

    fn pause(&self) {
        let (ack, acked) = mpsc::channel();
        self.commands.send(Command::Pause(ack)).unwrap();
        acked.recv().unwrap();
    }

    fn resume(&self) {
        self.commands.send(Command::Resume).unwrap();
    }

    fn instance(&self) -> serde_json::Value {
        self.s.json(&[&self.s.url(P)]).1
    }

    /// Waits until the shipper is on a generation with a base: what it
    /// ships from then on is recoverable.
    fn wait_live(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.instance();
            let c = &v["continuousArchiving"];
            let ranges = c["ranges"].as_array().cloned().unwrap_or_default();
            let live = ranges.last().is_some_and(|r| {
                r["latest"] == "now"
                    && c["generation"]
                        .as_str()
                        .is_some_and(|g| r["latestScn"].as_str().unwrap().starts_with(g))
            });
            if live && c["error"].is_null() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format!("the shipper found no live generation: {v}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// POSTs a recovery; `Ok((rows, activity log))` once it succeeded,
    /// `Err(message)` for a 400. A job in progress (the shipper's base
    /// backup) is waited out.
    fn recover(&self, body: &str) -> Result<(State, String), String> {
        let url = self.s.url(&format!("{P}/backups/recovery"));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, h, text) = self.s.curl(&[&AUTH[..], &["-X", "POST", "-d", body, &url]].concat());
            match status.as_str() {
                "HTTP/2 202" => {
                    let job = self.s.wait_for(header(&h, "location"), "Succeeded");
                    let id = job["job_id"].as_i64().unwrap();
                    let (_, log) = self
                        .s
                        .json(&[&self.s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))]);
                    return Ok((rows(&self.db), log.to_string()));
                }
                "HTTP/2 400" => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    return Err(v["message"].as_str().unwrap().to_string());
                }
                "HTTP/2 409" if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(300)),
                _ => self.fail(format!("{body}: {status} {text}")),
            }
        }
    }

    /// A recovery's result becomes the database's state. It also ends the
    /// shipper's generation (the next begins with the base taken after it).
    fn recovered(&mut self, begun: i64, rows: State) {
        self.model.lock().unwrap().push(begun, Op::Recovered(rows));
        self.disruptions.push(now_ms());
    }

    fn recover_second(&mut self, rng: &mut Rng, first_ms: i64) {
        let now_s = now_ms() / 1000;
        let from_s = first_ms / 1000 + 1;
        if now_s - 2 < from_s {
            return;
        }
        let second = from_s + rng.below((now_s - 2 - from_s + 1) as usize) as i64;
        let ms = second * 1000;
        let shown = api_second(ms);
        self.pause();
        let begun = now_ms();
        match self.recover(&format!(r#"{{"timestamp": "{shown}"}}"#)) {
            Ok((got, log)) => {
                let m = self.model.lock().unwrap();
                // A second no generation covers may still be a backup's
                // completion second, which names that backup (DBCS): the
                // state when it was taken, within that second.
                let (lo, hi) = if log.contains("replayed to transaction") {
                    m.window(ms, tolerance().moment_ms)
                } else if log.contains("completed in that second") {
                    let t = tolerance().moment_ms;
                    (m.window(ms, t).0, m.window(ms + 999, t).1)
                } else {
                    drop(m);
                    self.fail(format!(
                        "timestamp {shown}: neither replayed nor a backup's second: {log}"
                    ));
                };
                let found = m.matching(&got, lo, hi);
                let Some(&k) = found.first() else {
                    let exact = m.matching(&got, 0, m.events.len());
                    drop(m);
                    self.fail(format!(
                        "timestamp {shown}: {} rows, not the state after events {lo}..={hi} (it is the state \
                         after {exact:?})",
                        got.len()
                    ));
                };
                // How long the first transaction left out had been committed.
                let slack = m.events.get(k).map_or(0, |e| ms - e.committed_ms);
                drop(m);
                self.slack_ms = self.slack_ms.max(slack);
                self.note(format!(
                    "timestamp {shown}: {} rows = state after {k} events",
                    got.len()
                ));
                self.recovered(begun, got);
            }
            Err(message) => {
                // A refusal is right only for a second no shipper watched:
                // one no listed stretch holds whole, next to a disruption.
                let v = self.instance();
                let ranges = v["continuousArchiving"]["ranges"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let inside = ranges.iter().any(|r| {
                    let from = api_seconds(r["earliest"].as_str().unwrap());
                    from < second && (r["latest"] == "now" || api_seconds(r["latest"].as_str().unwrap()) > second)
                });
                let near = self.disruptions.iter().any(|d| ms >= d - 2000 && ms <= d + 120_000);
                if !message.contains("cannot be recovered") || inside || !near {
                    self.fail(format!(
                        "timestamp {shown} refused, inside a stretch or near no disruption: {message}; {v}"
                    ));
                }
                self.note(format!("timestamp {shown}: refused ({message})"));
            }
        }
        self.resume();
    }

    fn recover_position(&mut self, rng: &mut Rng) {
        let v = self.instance();
        let ranges = v["continuousArchiving"]["ranges"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if ranges.is_empty() {
            return;
        }
        let range = &ranges[rng.below(ranges.len())];
        let (generation, last) = range["latestScn"].as_str().unwrap().split_once(':').unwrap();
        let last: usize = last.parse().unwrap();
        assert_eq!(range["earliestScn"], format!("{generation}:0"), "{v}");
        let txn = rng.below(last + 1);
        let scn = format!("{generation}:{txn}");
        self.pause();
        if !self.bases.contains_key(generation) {
            // The generation's base backup (the one at `GENERATION:0`), restored
            // by its tag: where the generation's positions count from.
            let (_, list) = self.s.json(&[&self.s.url(&format!("{P}/backups"))]);
            let base = format!("{generation}:0");
            let Some(tag) = list["backupList"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["scn"] == base.as_str())
                .map(|b| b["dbTag"].as_str().unwrap().to_string())
            else {
                self.fail(format!("no backup lists scn {base}: {list}"));
            };
            let begun = now_ms();
            let got = self
                .recover(&format!(r#"{{"tag": "{tag}"}}"#))
                .unwrap_or_else(|e| self.fail(format!("tag {tag}: {e}")))
                .0;
            let m = self.model.lock().unwrap();
            let at: BTreeSet<usize> = m.matching(&got, 0, m.events.len()).into_iter().collect();
            drop(m);
            if at.is_empty() {
                self.fail(format!(
                    "base {tag} of generation {generation}: {} rows, no state of the model",
                    got.len()
                ));
            }
            self.note(format!(
                "tag {tag} (base of {generation}): {} rows, the state after {at:?} events",
                got.len()
            ));
            self.bases.insert(generation.to_string(), at);
            self.recovered(begun, got);
        }
        let begun = now_ms();
        let got = self
            .recover(&format!(r#"{{"scn": "{scn}"}}"#))
            .unwrap_or_else(|e| self.fail(format!("scn {scn} (inside {range}) refused: {e}")))
            .0;
        let m = self.model.lock().unwrap();
        let bases: BTreeSet<usize> = m
            .matching(&got, txn, m.events.len())
            .into_iter()
            .map(|k| k - txn)
            .collect();
        drop(m);
        let known = self.bases.get_mut(generation).unwrap();
        let both: BTreeSet<usize> = known.intersection(&bases).copied().collect();
        if both.is_empty() {
            let known = known.clone();
            self.fail(format!(
                "scn {scn}: {} rows, {txn} transactions after a base at {bases:?}, but the generation's other \
                 positions put it at {known:?}",
                got.len()
            ));
        }
        *known = both.clone();
        self.note(format!("scn {scn}: {} rows, base at event {both:?}", got.len()));
        self.recovered(begun, got);
        self.resume();
    }

    fn recover_latest(&mut self) {
        self.wait_live();
        self.pause();
        let begun = now_ms();
        let (got, log) = self.recover(r#"{"latest": true}"#).unwrap_or_else(|e| self.fail(e));
        let want = self.model.lock().unwrap().live.clone();
        if got != want {
            // Which generation was replayed, how far, and the server's warnings.
            self.fail(format!(
                "latest: {} rows, the application had committed {}: {}\nthe recovery's activity: {log}\nthe \
                 server's last warnings:\n{}",
                got.len(),
                want.len(),
                differences(&want, &got),
                self.s.last_warnings(20)
            ));
        }
        self.note(format!("latest: all {} rows", got.len()));
        self.recovered(begun, got);
        self.resume();
    }

    fn kill(&mut self) -> i64 {
        let killed = now_ms();
        self.model.lock().unwrap().blind.push((killed, i64::MAX));
        self.s.child.kill().unwrap();
        self.s.child.wait().unwrap();
        self.disruptions.push(killed);
        killed
    }

    /// Waits for the restarted shipper to be live: the blind stretch since
    /// the kill or stop ends then.
    fn live_again(&mut self) {
        self.wait_live();
        let now = now_ms();
        if let Some(open) = self.model.lock().unwrap().blind.last_mut().filter(|b| b.1 == i64::MAX) {
            open.1 = now;
        }
    }

    /// SIGKILL while the application writes, the file lost, the server
    /// back: `latest` holds every transaction committed a second before the kill.
    fn kill_and_lose_the_file(&mut self, rng: &mut Rng) {
        self.wait_live();
        std::thread::sleep(Duration::from_millis(300 + rng.below(1500) as u64));
        let killed = self.kill();
        std::thread::sleep(Duration::from_millis(rng.below(500) as u64));
        self.pause();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db.display()));
        }
        self.s = start_in(&self.s.dir.clone(), self.s.port);
        let begun = now_ms();
        let got = self.recover(r#"{"latest": true}"#).unwrap_or_else(|e| self.fail(e)).0;
        let m = self.model.lock().unwrap();
        let (lo, hi) = m.window(killed, tolerance().killed_ms);
        let Some(&k) = m.matching(&got, lo, hi).first() else {
            drop(m);
            self.fail(format!(
                "latest after a kill and the file lost: {} rows, not the state after events {lo}..={hi}",
                got.len()
            ));
        };
        let lost = match m.events.get(k) {
            Some(e) if e.committed_ms <= killed => {
                self.lost_killed_ms = self.lost_killed_ms.max(killed - e.committed_ms);
                format!(
                    "the first transaction lost was committed {} ms before the kill",
                    killed - e.committed_ms
                )
            }
            _ => "none committed before the kill was lost".to_string(),
        };
        drop(m);
        self.note(format!("SIGKILL, file lost, latest: {} rows; {lost}", got.len()));
        self.recovered(begun, got);
        self.live_again();
        self.resume();
    }

    /// The file (and its log) lost while the application writes and the
    /// server runs; `latest`; the application goes on writing on the
    /// recovered file. Every transaction committed a second before the
    /// loss comes back.
    fn lose_the_file(&mut self, rng: &mut Rng) {
        self.wait_live();
        std::thread::sleep(Duration::from_millis(300 + rng.below(1500) as u64));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db.display()));
        }
        let lost = now_ms();
        // Commits go on into the unlinked file until the application sees it.
        std::thread::sleep(Duration::from_millis(rng.below(200) as u64));
        self.pause();
        let begun = now_ms();
        let got = self.recover(r#"{"latest": true}"#).unwrap_or_else(|e| self.fail(e)).0;
        let m = self.model.lock().unwrap();
        let (lo, hi) = m.window(lost, tolerance().file_lost_ms);
        let Some(&k) = m.matching(&got, lo, hi).first() else {
            drop(m);
            self.fail(format!(
                "latest after the file was lost: {} rows, not the state after events {lo}..={hi}",
                got.len()
            ));
        };
        let missing = m.events[k..].iter().filter(|e| e.committed_ms <= lost).count();
        let first = m.events.get(k).filter(|e| e.committed_ms <= lost);
        if let Some(e) = first {
            self.lost_up_ms = self.lost_up_ms.max(lost - e.committed_ms);
        }
        let lost_note = first.map_or("none committed before the loss was lost".to_string(), |e| {
            format!(
                "{missing} committed before it lost, the first {} ms before it",
                lost - e.committed_ms
            )
        });
        drop(m);
        self.note(format!(
            "file lost (server up), latest: {} rows; {lost_note}",
            got.len()
        ));
        self.recovered(begun, got);
        // The model's later events are on the recovered file: the ones
        // written to the unlinked file are gone with it.
        self.resume();
    }

    fn restart(&mut self, graceful: bool) {
        if graceful {
            self.model.lock().unwrap().blind.push((now_ms(), i64::MAX));
            let out = std::process::Command::new("kill")
                .args(["-TERM", &self.s.child.id().to_string()])
                .output()
                .unwrap();
            assert!(out.status.success());
            self.s.child.wait().unwrap();
            self.disruptions.push(now_ms());
        } else {
            self.kill();
        }
        self.s = start_in(&self.s.dir.clone(), self.s.port);
        self.live_again();
        self.note(if graceful {
            "server stopped, started"
        } else {
            "server SIGKILLed, started"
        });
    }

    /// The server's catalog lost (issue 27): SIGKILL, the catalog deleted,
    /// the server started again on the same repository, which it rebuilds
    /// the catalog from (the deployment, its archiving setting, backups and
    /// recovery history). Nothing the model knows changes.
    fn lose_catalog(&mut self) {
        self.kill();
        let data = self.s.dir.join("data");
        for f in ["catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"] {
            let _ = std::fs::remove_file(data.join(f));
        }
        self.s = start_in(&self.s.dir.clone(), self.s.port);
        self.live_again();
        self.note("server SIGKILLed, its catalog lost, started: the catalog rebuilt from the repository");
    }

    /// The file replaced by a copy of itself, its log removed: the shipper
    /// must start a new generation; the model's state is unchanged.
    fn replace_file(&mut self) {
        self.pause();
        let copy = self.db.with_extension("copy");
        let c = rusqlite::Connection::open(&self.db).unwrap();
        c.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
        drop(c);
        std::fs::rename(&copy, &self.db).unwrap();
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db.display()));
        }
        self.disruptions.push(now_ms());
        self.note("file replaced");
        self.resume();
    }

    fn backup(&mut self) {
        let (status, location) = self.s.post_backup("app", &[]);
        if status == "HTTP/2 202" {
            self.s.wait_for(&location, "Succeeded");
            self.disruptions.push(now_ms());
            self.note("backup (a new generation)");
        }
    }
}

#[test]
fn recoveries_of_a_shipped_sqlite_log_match_the_model_through_kills_restarts_and_replacements() {
    let seed = seed(now_ms() as u64);
    let steps: usize = strongbox_testkit::env_or("MODEL_STEPS", 26);
    println!("seed {seed} (replay with MODEL_SEED={seed}), {steps} steps");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = dir.path().join("app.sqlite");
    open_app(&db)
        .execute_batch("CREATE TABLE t(n INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad BLOB NOT NULL)")
        .unwrap();
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    let (status, v) = s.archive_continuously("app");
    assert_eq!(status, "HTTP/2 200", "{v}");

    let model = Arc::new(Mutex::new(Model::default()));
    let (commands, received) = mpsc::channel();
    let application = {
        let (db, model, rng) = (db.clone(), model.clone(), Rng(seed ^ 0xA991));
        std::thread::spawn(move || application(db, model, rng, received))
    };
    let mut run = Run {
        s,
        db,
        model,
        commands,
        seed,
        log: String::new(),
        disruptions: vec![now_ms()],
        bases: HashMap::new(),
        slack_ms: 0,
        lost_up_ms: 0,
        lost_killed_ms: 0,
    };
    run.wait_live();
    let first_ms = now_ms();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for _ in 0..steps {
        std::thread::sleep(Duration::from_millis(200 + rng.below(1500) as u64));
        let step = match rng.below(100) {
            0..=25 => "timestamp",
            26..=39 => "scn",
            40..=51 => "latest",
            52..=60 => "kill",
            61..=67 => "stop",
            68..=75 => "replace",
            76..=83 => "kill, file lost",
            84..=91 => "file lost",
            92..=95 => "catalog lost",
            _ => "backup",
        };
        *counts.entry(step).or_default() += 1;
        match step {
            "timestamp" => run.recover_second(&mut rng, first_ms),
            "scn" => run.recover_position(&mut rng),
            "latest" => run.recover_latest(),
            "kill" => run.restart(false),
            "stop" => run.restart(true),
            "replace" => run.replace_file(),
            "kill, file lost" => run.kill_and_lose_the_file(&mut rng),
            "file lost" => run.lose_the_file(&mut rng),
            "catalog lost" => run.lose_catalog(),
            _ => run.backup(),
        }
    }
    // The end: everything the application committed is there.
    run.recover_latest();
    run.commands.send(Command::Stop).unwrap();
    let checkpoints = application.join().unwrap();
    let events = run.model.lock().unwrap().events.len();
    let v = run.instance();
    let generations = v["continuousArchiving"]["ranges"].as_array().unwrap().len();
    println!(
        "seed {seed}: {steps} steps {counts:?}; {events} transactions, {checkpoints} application checkpoints, \
         {generations} generations; longest a transaction missing from a recovery to a second had been \
         committed: {} ms (tolerance {} ms); longest one lost with the file had been committed: {} ms with the \
         server up (tolerance {} ms), {} ms with it killed (tolerance {} ms)",
        run.slack_ms,
        tolerance().moment_ms,
        run.lost_up_ms,
        tolerance().file_lost_ms,
        run.lost_killed_ms,
        tolerance().killed_ms
    );
    assert!(generations >= 1, "{v}");
    let out = run.s.repo_cli(&["check", "--read-data"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("shipped SQLite generations: no errors"),
        "{text}"
    );
}
