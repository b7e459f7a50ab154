//! Pushing what the shipper read into the repository, on a thread of its
//! own: a transaction's time is when a poll saw it (`Shipped::seen_ms`),
//! which is only true if polls go on while the store takes its time (a
//! push retried for seconds once held back the reads after it, and a
//! recovery to a second inside that wait missed commits made before it).
//!
//! One push at a time, in order: a generation's objects are stored one
//! after the other, so that a crash never leaves a gap before a stored
//! object. A push that fails keeps its transactions pending; they are
//! pushed again, first as the same object (its name and content: the store
//! may have kept it though its answer was lost, and a generation's objects
//! must not overlap), after a wait that doubles while pushes fail.

use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::time::{Duration, Instant};

use super::{Shipper, Stopped, encode, now_ms, object_name};
use crate::Error;

/// The push under way: how many of the first pending transactions it
/// holds, and its outcome once it has one.
pub(super) struct InFlight {
    n: usize,
    done: Receiver<Result<(), Error>>,
}

/// Pushes failing since `since_ms`.
pub(super) struct PushFailed {
    since_ms: i64,
    error: String,
    /// How many of the first pending transactions the failed push held.
    batch: usize,
    wait: Duration,
    again_at: Instant,
}

/// A failed push is tried again after this, the wait doubling up to
/// `AGAIN_AT_MOST` while it fails.
const AGAIN_AFTER: Duration = Duration::from_millis(250);
const AGAIN_AT_MOST: Duration = Duration::from_secs(4);

/// An object holds at most about this much (at least one transaction), so
/// that what gathered during an outage goes out in pieces.
const OBJECT_BYTES: usize = 16 << 20;

impl Shipper {
    /// One poll's part: takes the outcome of the push under way, if it has
    /// one, and starts the next when one is due. Returns how many
    /// transactions were stored; an error only once more is pending than
    /// memory may hold (`ShipOptions::pending_at_most`).
    pub(super) fn push_in_background(&mut self) -> Result<usize, Error> {
        let pushed = self.finish_push(false).unwrap_or(0);
        // `lag`: the oldest pending transaction's age (zero if none).
        let due = (self.lag() >= self.opts.ship_every || self.pending_bytes >= OBJECT_BYTES)
            && self.in_flight.is_none()
            && self.push_failed.as_ref().is_none_or(|f| Instant::now() >= f.again_at);
        if due {
            self.start_push();
        }
        let at_most = self.opts.pending_at_most;
        match &self.push_failed {
            Some(f) if self.pending_bytes >= at_most => Err(Error::Failed(format!(
                "{}; {:.1} MiB of transactions waited in memory for the repository, more than the {:.1} MiB held, \
                 so this generation ends",
                f.error,
                mib(self.pending_bytes),
                mib(at_most)
            ))),
            _ => Ok(pushed),
        }
    }

    /// Pushes every pending transaction and waits for it (a base, the end
    /// of a generation, a clean stop).
    pub(super) fn push_pending(&mut self) -> Result<usize, Error> {
        let mut pushed = self.finish_push(true)?;
        while !self.pending.is_empty() {
            self.start_push();
            pushed += self.finish_push(true)?;
        }
        Ok(pushed)
    }

    /// Starts pushing the first pending transactions: the batch that failed
    /// last, as it was, or as many as fit one object.
    fn start_push(&mut self) {
        if self.in_flight.is_some() || self.pending.is_empty() {
            return;
        }
        let n = match &self.push_failed {
            Some(f) => f.batch,
            None => {
                let mut bytes = 0;
                let fit = self.pending.iter().take_while(|t| {
                    bytes += self.size_of(&t.txn);
                    bytes <= OBJECT_BYTES
                });
                fit.count().max(1)
            }
        };
        let generation = self
            .generation
            .as_deref()
            .expect("transactions are read only within a generation");
        let name = object_name(generation, self.shipped + 1, self.shipped + n as u64);
        let data = encode(self.page_size, &self.pending[..n]);
        let archive = self.archive.clone();
        let (tx, done) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(archive.push(&name, &data));
        });
        self.in_flight = Some(InFlight { n, done });
    }

    /// Takes the outcome of the push under way (`wait`: waiting for it);
    /// how many transactions it stored.
    fn finish_push(&mut self, wait: bool) -> Result<usize, Error> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(0);
        };
        let outcome = match wait {
            true => flight.done.recv().map_err(|_| TryRecvError::Disconnected),
            false => flight.done.try_recv(),
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(TryRecvError::Empty) => {
                self.in_flight = Some(flight);
                return Ok(0);
            }
            Err(TryRecvError::Disconnected) => Err(Error::Failed("the push's thread ended without an answer".into())),
        };
        let n = flight.n;
        if let Err(e) = outcome {
            let (since_ms, wait) = match &self.push_failed {
                Some(f) => (f.since_ms, (f.wait * 2).min(AGAIN_AT_MOST)),
                None => {
                    tracing::warn!(
                        "continuous archiving of {}: {e}; the transactions are kept and pushed again",
                        self.path.display()
                    );
                    (now_ms(), AGAIN_AFTER)
                }
            };
            self.push_failed = Some(PushFailed {
                since_ms,
                error: e.to_string(),
                batch: n,
                wait,
                again_at: Instant::now() + wait,
            });
            return Err(e);
        }
        self.push_failed = None;
        self.shipped += n as u64;
        let bytes: usize = self.pending[..n].iter().map(|t| self.size_of(&t.txn)).sum();
        self.pending_bytes -= bytes;
        self.pending.drain(..n);
        Ok(n)
    }

    /// Why what is read does not reach the repository now, while pushes
    /// fail: nothing is lost yet (it waits in memory), but a crash of this
    /// server would lose it.
    pub fn push_failure(&self) -> Option<Stopped> {
        self.push_failed.as_ref().map(|f| Stopped {
            since_ms: f.since_ms,
            why: f.error.clone(),
            waiting: format!(
                "pushing again within {} s; {} transactions ({:.1} MiB) wait in memory",
                f.wait.as_secs_f64().ceil(),
                self.pending.len(),
                mib(self.pending_bytes)
            ),
        })
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
