//! A shipper's life as the server runs it: (re)started after errors, a
//! base asked for whenever one is needed (never for a file that is not
//! there), the requests of the deployment's jobs answered (`ShipperLink`),
//! and its status kept true: while no generation receives the
//! application's commits, `stopped` says why and since when, and `lag`
//! counts from then; while pushes fail (the generation goes on, what it
//! read waits in memory), `stopped` says so and `lag` is the oldest
//! waiting transaction's age.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ShipArchive, ShipOptions, Shipper, ShipperLink, now_ms};

/// What a running shipper last reported.
#[derive(Clone, Debug, Default)]
pub struct ShipperStatus {
    pub generation: Option<String>,
    pub shipped: u64,
    /// When the shipper last read the log (ms since the epoch).
    pub polled_ms: i64,
    /// How long the oldest transaction read but not yet pushed has waited;
    /// while no generation receives commits, how long since one last did.
    pub lag: Duration,
    /// Set while the application's commits do not reach the repository:
    /// no generation receives them, or storing what was read fails.
    pub stopped: Option<Stopped>,
    /// WAL the database keeps for the shipper, in bytes (PostgreSQL: from
    /// its replication slot's restart point to now), as last asked.
    pub held_bytes: Option<u64>,
    /// PostgreSQL: the application name the WAL receiver connects with
    /// (its slot's name), what `synchronous_standby_names` lists to make
    /// it a synchronous standby.
    pub standby: Option<String>,
}

/// Why nothing is shipped now.
#[derive(Clone, Debug)]
pub struct Stopped {
    /// Since when (ms since the epoch).
    pub since_ms: i64,
    /// What ended the last generation, or kept the shipper from starting.
    pub why: String,
    /// What the shipper waits for.
    pub waiting: String,
}

/// What the server gives the shipper of one deployment.
pub struct ShipContext<'a> {
    pub archive: Arc<dyn ShipArchive>,
    pub options: ShipOptions,
    /// The deployment's jobs reach the shipper through it.
    pub link: &'a ShipperLink,
    /// Set when the server no longer wants this deployment shipped.
    pub stop: &'a AtomicBool,
    /// Set with `stop` when the deployment no longer wants continuous
    /// archiving here (not when the server stops): the shipper lets go of
    /// what it holds on the database (PostgreSQL: its replication slot,
    /// which would otherwise keep WAL on the server's disk for ever).
    pub forget: &'a AtomicBool,
    pub status: &'a Mutex<ShipperStatus>,
    /// Queues a backup, which becomes a new generation's base; the reason
    /// is why one is needed.
    pub ask_base: &'a (dyn Fn(&str) + Sync),
}

/// How soon a shipper without a generation asks for a base again: the
/// first retry after a second, doubling to at most this.
const ASK_AGAIN_AT_MOST: Duration = Duration::from_secs(8);

/// Ships the database at `path` until `cx.stop` is set.
pub fn ship(path: &Path, cx: ShipContext) {
    let since = |ms: i64| Duration::from_millis((now_ms() - ms).max(0) as u64);
    // Why nothing is shipped, and since when (ms).
    let mut idle = ("continuous archiving started".to_string(), now_ms());
    while !cx.stop.load(Ordering::Relaxed) {
        let mut shipper = match Shipper::start(path, cx.archive.clone(), cx.options.clone()) {
            Ok(s) => s,
            Err(e) => {
                let mut st = cx.status.lock().expect("status");
                st.stopped = Some(Stopped {
                    since_ms: idle.1,
                    why: e.to_string(),
                    waiting: "starting again within a second".into(),
                });
                st.lag = since(idle.1);
                drop(st);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let requests = cx.link.open();
        let (mut asked, mut wait) = (None::<Instant>, Duration::from_secs(1));
        let mut failed = None;
        while !cx.stop.load(Ordering::Relaxed) {
            if let Some(why) = shipper.answer(&requests) {
                idle = (why, now_ms());
            }
            match shipper.poll() {
                Ok(polled) => {
                    if let Some(why) = polled.lost {
                        tracing::warn!(
                            "continuous archiving of {}: {why}; a new base is needed",
                            path.display()
                        );
                        idle = (why, now_ms());
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
            let present = path.exists();
            // A base is asked for when the file is there, then again with a
            // growing wait if none came (the backup was refused while another
            // job ran, or failed).
            if shipper.generation.is_none() && present && asked.is_none_or(|t| t.elapsed() >= wait) {
                if asked.is_some() {
                    wait = (wait * 2).min(ASK_AGAIN_AT_MOST);
                }
                (cx.ask_base)(&idle.0);
                asked = Some(Instant::now());
            }
            if shipper.generation.is_some() {
                (asked, wait) = (None, Duration::from_secs(1));
            }
            {
                let mut s = cx.status.lock().expect("status");
                s.generation = shipper.generation.clone();
                s.shipped = shipper.shipped;
                s.polled_ms = now_ms();
                (s.lag, s.stopped) = match &shipper.generation {
                    Some(_) => (shipper.lag(), shipper.push_failure()),
                    None => {
                        let waiting = match (present, asked) {
                            (false, _) => {
                                "waiting for the database file to come back (a recovery brings it back)".into()
                            }
                            (true, Some(t)) => format!(
                                "waiting for a base backup (asked {} s ago; asked again while refused or failed)",
                                t.elapsed().as_secs()
                            ),
                            (true, None) => "waiting for a base backup".into(),
                        };
                        let stopped = Stopped {
                            since_ms: idle.1,
                            why: idle.0.clone(),
                            waiting,
                        };
                        (since(idle.1), Some(stopped))
                    }
                };
            }
            std::thread::sleep(cx.options.poll);
        }
        cx.link.close();
        shipper.answer(&requests);
        if let Err(e) = shipper.stop() {
            failed.get_or_insert(e.to_string());
        }
        idle = (failed.unwrap_or_else(|| "the shipper started again".into()), now_ms());
        if !cx.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
