//! The WAL receiver of a physical deployment: a thread reading the
//! replication stream (`replication`) into the spool, in `pg_receivewal`'s
//! layout (`NAME.partial` while a segment is written, `NAME` once whole,
//! the timeline's history file), which `receive` stores.
//!
//! It reports WAL as flushed only once `receive` says it is stored in the
//! repository, so the slot keeps on the database server whatever is not
//! stored yet, and a synchronous standby's commits wait for the
//! repository. The spool therefore needs no `fsync`: lost with the
//! Strongbox server, it is streamed again from the slot.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pitr::{Lsn, segment_name};
use super::replication::{Replication, Reporter, Streamed};
use crate::Error;

/// A batch smaller than this (the reading buffer's size) means WAL
/// trickles in: the next is let gather.
const GATHER_BELOW: usize = 1 << 16;

/// Where the stream stands.
#[derive(Default)]
struct Position {
    /// WAL in the spool up to here (its first byte not yet received).
    received: u64,
    /// Stored in the repository up to here: what is reported as flushed.
    stored: u64,
    /// Why the stream ended, once it has.
    ended: Option<String>,
}

struct Shared {
    position: Mutex<Position>,
    /// Signalled as WAL arrives and when the stream ends.
    arrived: Condvar,
    reporter: Mutex<Reporter>,
}

/// A running receiver; dropped, it closes its connection and ends.
pub(super) struct Receiver {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Starts streaming `slot` from `at` (a segment's start) on `timeline`
    /// into `spool` (empty), on a connection in replication mode; with the
    /// timeline's history file (name, content), which replay on it needs.
    /// `gather`: how long to let the server's messages gather before
    /// reading them (zero for a synchronous standby, whose commits wait).
    pub fn start(
        conn: Replication,
        slot: &str,
        at: u64,
        (timeline, history): (u32, Option<(String, Vec<u8>)>),
        (segment_size, gather): (u64, Duration),
        spool: &Path,
    ) -> Result<Receiver, Error> {
        if let Some((name, content)) = history {
            let path = spool.join(&name);
            std::fs::write(&path, content).map_err(|e| Error::io(path.display(), e))?;
        }
        let (mut stream, reporter) = conn.start(slot, at, timeline)?;
        tracing::info!("streaming WAL: from {} on timeline {timeline} (slot {slot})", Lsn(at));
        let shared = Arc::new(Shared {
            position: Mutex::new(Position {
                received: at,
                stored: at,
                ended: None,
            }),
            arrived: Condvar::new(),
            reporter: Mutex::new(reporter),
        });
        let mut writer = SpoolWriter {
            dir: spool.to_path_buf(),
            timeline,
            segment_size,
            open: None,
        };
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("wal-receiver".into())
                .spawn(move || {
                    // The server sends WAL as each commit flushes it: read
                    // one message at a time, the thread woke, wrote and
                    // signalled thousands of times a second (half of the
                    // asynchronous mode's CPU). What arrived together is
                    // written and made known together.
                    let mut batch = Batch::default();
                    let why = loop {
                        let step = stream.next().and_then(|message| match message {
                            Streamed::Wal { start, data } => batch.add(start, &data, &mut writer),
                            Streamed::Keepalive { reply: true } => {
                                shared.received(batch.write(&mut writer)?);
                                shared.report()
                            }
                            Streamed::Keepalive { reply: false } => Ok(()),
                            Streamed::TimelineEnded => Err(Error::Failed(format!(
                                "timeline {timeline} ended on the database server (it follows another now)"
                            ))),
                        });
                        let step = step.and_then(|()| match stream.pending() {
                            true => Ok(()),
                            false => {
                                let bytes = batch.data.len();
                                shared.received(batch.write(&mut writer)?);
                                // Streaming fast (catching up from the slot):
                                // the wakes are few for what they bring, and
                                // waiting would cap the pace at a buffer per
                                // `gather`.
                                if bytes < GATHER_BELOW {
                                    std::thread::sleep(gather);
                                }
                                Ok(())
                            }
                        });
                        if let Err(e) = step {
                            break e.to_string();
                        }
                    };
                    shared.position.lock().expect("position").ended = Some(format!("the WAL receiver stopped: {why}"));
                    shared.arrived.notify_all();
                })
                .map_err(|e| Error::Failed(format!("starting the WAL receiver: {e}")))?
        };
        Ok(Receiver {
            shared,
            thread: Some(thread),
        })
    }

    /// Why it ended, once it has.
    pub fn ended(&self) -> Option<String> {
        self.shared.position.lock().expect("position").ended.clone()
    }

    /// WAL in the spool up to here.
    pub fn received(&self) -> u64 {
        self.shared.position.lock().expect("position").received
    }

    /// Everything before `upto` is stored: reported as flushed (the slot
    /// lets it go; synchronous commits up to it return).
    pub fn stored(&self, upto: u64) -> Result<(), Error> {
        {
            let mut p = self.shared.position.lock().expect("position");
            p.stored = p.stored.max(upto.min(p.received));
        }
        self.shared.report()
    }

    /// Waits until WAL not stored yet has arrived, the stream ended, or
    /// `timeout` passed.
    pub fn wait_for_wal(&self, timeout: Duration) {
        let until = Instant::now() + timeout;
        let mut p = self.shared.position.lock().expect("position");
        while p.received <= p.stored && p.ended.is_none() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            p = self.shared.arrived.wait_timeout(p, left).expect("position").0;
        }
    }
}

impl Shared {
    /// WAL up to `end` is in the spool: it is received.
    fn received(&self, end: Option<u64>) {
        if let Some(end) = end {
            let mut p = self.position.lock().expect("position");
            p.received = p.received.max(end);
            self.arrived.notify_all();
        }
    }

    /// A standby status update with where the stream stands.
    fn report(&self) -> Result<(), Error> {
        let (received, stored) = {
            let p = self.position.lock().expect("position");
            (p.received, p.stored)
        };
        self.reporter.lock().expect("reporter").report(received, stored)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.reporter.lock().expect("reporter").close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// WAL received and not yet written into the spool: one contiguous run.
#[derive(Default)]
struct Batch {
    start: u64,
    data: Vec<u8>,
}

impl Batch {
    fn add(&mut self, start: u64, data: &[u8], writer: &mut SpoolWriter) -> Result<(), Error> {
        if !self.data.is_empty() && self.start + self.data.len() as u64 != start {
            // Made known with what follows it (`received` only grows).
            self.write(writer)?;
        }
        if self.data.is_empty() {
            self.start = start;
        }
        self.data.extend_from_slice(data);
        Ok(())
    }

    /// Writes what the batch holds into the spool; where it ends.
    fn write(&mut self, writer: &mut SpoolWriter) -> Result<Option<u64>, Error> {
        if self.data.is_empty() {
            return Ok(None);
        }
        writer.write(self.start, &self.data)?;
        let end = self.start + self.data.len() as u64;
        self.data.clear();
        Ok(Some(end))
    }
}

/// Writes streamed WAL into segment files, as PostgreSQL names them.
struct SpoolWriter {
    dir: PathBuf,
    timeline: u32,
    segment_size: u64,
    /// The segment being written: its number and `NAME.partial`.
    open: Option<(u64, File)>,
}

impl SpoolWriter {
    fn write(&mut self, mut at: u64, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            let (segment, offset) = (at / self.segment_size, at % self.segment_size);
            let name = segment_name(self.timeline, Lsn(at), self.segment_size);
            let partial = self.dir.join(format!("{name}.partial"));
            if self.open.as_ref().map(|o| o.0) != Some(segment) {
                let file = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&partial)
                    .map_err(|e| Error::io(partial.display(), e))?;
                self.open = Some((segment, file));
            }
            let n = data.len().min((self.segment_size - offset) as usize);
            let file = &self.open.as_ref().expect("opened above").1;
            file.write_all_at(&data[..n], offset)
                .map_err(|e| Error::io(partial.display(), e))?;
            (at, data) = (at + n as u64, &data[n..]);
            if offset + n as u64 == self.segment_size {
                // Whole: the name replay asks for.
                self.open = None;
                let whole = self.dir.join(&name);
                std::fs::rename(&partial, &whole).map_err(|e| Error::io(whole.display(), e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_across_a_segment_boundary_finishes_the_first_and_begins_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let mut w = SpoolWriter {
            dir: dir.path().into(),
            timeline: 1,
            segment_size: size,
            open: None,
        };
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 + 1).collect();
        w.write(3 * size - 100_000, &data).unwrap();
        let first = std::fs::read(dir.path().join("000000010000000000000002")).unwrap();
        assert_eq!(&first[size as usize - 100_000..], &data[..100_000]);
        let next = std::fs::read(dir.path().join("000000010000000000000003.partial")).unwrap();
        assert_eq!(&next[..200_000], &data[100_000..]);
        assert!(!dir.path().join("000000010000000000000002.partial").exists());
    }

    #[test]
    fn a_batch_writes_its_runs_in_order_and_says_where_they_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter {
            dir: dir.path().into(),
            timeline: 1,
            segment_size: 1 << 20,
            open: None,
        };
        let mut batch = Batch::default();
        batch.add(100, b"abc", &mut w).unwrap();
        batch.add(103, b"def", &mut w).unwrap();
        // Nothing written or known yet: one run, held.
        let path = dir.path().join("000000010000000000000000.partial");
        assert!(!path.exists());
        // A gap: the run before it is written first.
        batch.add(200, b"xyz", &mut w).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[100..], b"abcdef");
        assert_eq!(batch.write(&mut w).unwrap(), Some(203));
        let spool = std::fs::read(&path).unwrap();
        assert_eq!((&spool[100..106], &spool[200..203]), (&b"abcdef"[..], &b"xyz"[..]));
        assert_eq!(batch.write(&mut w).unwrap(), None);
    }
}
