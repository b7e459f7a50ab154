//! Streaming a physical deployment's WAL into the repository (issue 29).
//!
//! The receiver (`receiver`, Strongbox's own client of the replication
//! protocol) streams from a physical replication slot, so the server keeps
//! WAL until it is stored, into a spool in the server's scratch directory.
//! Every `STORE_EVERY` (synchronous mode: as soon as WAL arrives) what the
//! spool holds is stored as streamed copies (`NAME.streamed`): the segment
//! being written each time it grows, and finished segments and timeline
//! histories once; then the receiver reports it as flushed.
//! `archive_command` stays the one writer of archived names (a streamed
//! segment holds zeros after a switch where the server's file holds
//! whatever was there, so the two differ, and an archived name never takes
//! other content); a streamed copy goes once its segment is archived
//! (`tidy_tails`). Planning and replay use a streamed copy where a segment
//! is not archived (`Archived`, `strongbox repo wal-fetch`), so a server
//! that loses its disk loses at most the last `GATHER` and `STORE_EVERY`
//! and an upload of commits (synchronous mode: none acknowledged), not
//! everything since the last completed 16 MB segment.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::physical::PgPhysical;
use super::pitr::{History, Lsn};
use super::receiver::Receiver;
use super::replication::Replication;
use crate::Error;
use crate::sqlite_ship::{ShipContext, Stopped, now_ms};

/// How often the spool is stored: the most a lost server loses of what
/// the receiver had, plus an upload (synchronous mode: as WAL arrives).
const STORE_EVERY: Duration = Duration::from_millis(200);
/// A segment's streamed copy is stored whole again, replacing the pieces
/// stored since, once they hold three times what it does, or are this
/// many: what is sealed stays within about one and a half times the WAL
/// received, and a reader splices at most this many pieces on. (Storing
/// the whole tail each time cost a synchronous commit tens of
/// milliseconds, and asynchronous streaming a tenth of a core.)
const PIECES_AT_MOST: usize = 1024;
/// How long after the receiver ended (the server down, restarting,
/// recovered) it is started again.
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// How often streamed copies of segments archived since are removed.
const TIDY_EVERY: Duration = Duration::from_secs(10);
/// How long the receiver lets the server's messages gather before
/// reading them, in asynchronous mode: tens of wakes a second instead of
/// one per commit; a lost server loses at most this much more.
const GATHER: Duration = Duration::from_millis(20);
/// How often the WAL the slot holds on the database server is asked for.
const HELD_EVERY: Duration = Duration::from_secs(2);

impl PgPhysical {
    /// The replication slot of the deployment's receiver: one per data
    /// directory (slot names are lower-case letters, digits and `_`).
    pub fn receiver_slot(&self) -> String {
        let hash = blake3::hash(self.data_dir.as_os_str().as_bytes());
        format!("strongbox_{}", &hash.to_hex()[..16])
    }

    /// Creates the slot if there is none (after a recovery, the restored
    /// data directory has none), then starts the receiver on it, from the
    /// start of the segment its restart point is in, on the server's
    /// current timeline.
    fn start_receiver(&self, slot: &str, spool: &Path, synchronous: bool) -> Result<Receiver, Error> {
        // A receiver left behind holds the slot (another Strongbox server's,
        // or a killed one's the database has not noticed gone yet): this
        // one takes it over.
        let holder = format!(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = '{slot}' \
             AND active"
        );
        if self.conn.query(&holder)? != "0" {
            tracing::info!("streaming WAL: took replication slot {slot} over from the receiver that held it");
            std::thread::sleep(Duration::from_millis(500));
        }
        // Its WAL reserved at creation: streaming begins at its restart point.
        self.conn.query(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true) WHERE NOT EXISTS (SELECT FROM \
             pg_replication_slots WHERE slot_name = '{slot}')"
        ))?;
        let found = self.conn.query(&format!(
            "SELECT pg_size_bytes(current_setting('wal_segment_size')), (SELECT restart_lsn FROM \
             pg_replication_slots WHERE slot_name = '{slot}')"
        ))?;
        let (size, restart) = found
            .split_once('|')
            .ok_or_else(|| Error::Failed(format!("replication slot {slot}: {found:?}")))?;
        let size: u64 = size
            .parse()
            .map_err(|_| Error::Failed(format!("wal_segment_size: {size:?} is not a byte count")))?;
        let mut conn = Replication::connect(&self.conn.url, self.conn.password.as_deref(), slot)?;
        let system = conn.identify_system()?;
        let mut at = if restart.is_empty() {
            system.position
        } else {
            restart.parse::<Lsn>().map_err(Error::Failed)?.0
        };
        let history = match system.timeline {
            1 => None,
            timeline => Some(conn.timeline_history(timeline)?),
        };
        // A slot made while the server was still recovering (the receiver
        // streams from a paused recovery too) points into the timeline it
        // left; the WAL before the switch is what the recovery read (from
        // the repository), and the current timeline's first segment holds
        // it up to the switch: stream from there.
        let began = history.as_ref().and_then(|(_, content)| {
            let parsed = History::parse(system.timeline, &String::from_utf8_lossy(content)).ok()?;
            Some(parsed.span(system.timeline)?.begin.0)
        });
        if let Some(began) = began {
            at = at.max(began);
        }
        let gather = if synchronous { Duration::ZERO } else { GATHER };
        Receiver::start(
            conn,
            slot,
            at - at % size,
            (system.timeline, history),
            (size, gather),
            spool,
        )
    }
}

impl crate::ShipsLog for PgPhysical {
    fn ship(&self, cx: ShipContext) {
        let slot = self.receiver_slot();
        let spool = cx.options.scratch.join(format!("receive-{slot}"));
        cx.status.lock().expect("status").standby = Some(slot.clone());
        let mut receiver: Option<Receiver> = None;
        let mut start_at = Instant::now();
        let mut last_tidy = Instant::now();
        let mut last_held = Instant::now();
        let mut session = None;
        // Each segment's tail as stored so far.
        let mut tails: HashMap<String, Tail> = HashMap::new();
        let stopped = |why: String, waiting: &str| {
            let mut st = cx.status.lock().expect("status");
            if st.stopped.as_ref().is_none_or(|s| s.why != why) {
                tracing::warn!("streaming WAL: {why}");
                st.stopped = Some(Stopped {
                    since_ms: now_ms(),
                    why,
                    waiting: waiting.into(),
                });
            }
        };
        while !cx.stop.load(Ordering::Relaxed) {
            if let Some(why) = receiver.as_ref().and_then(Receiver::ended) {
                receiver = None;
                start_at = Instant::now() + RESTART_AFTER;
                stopped(why, "streaming again within a second");
            }
            if receiver.is_none() && Instant::now() >= start_at {
                // Started on an empty spool: a spool left from before a
                // recovery would point at a history the server no longer has.
                let started = store_spool(&spool, &cx, &mut tails)
                    .and_then(|_| empty(&spool))
                    .and_then(|()| self.start_receiver(&slot, &spool, cx.options.synchronous));
                tails.clear();
                match started {
                    Ok(r) => receiver = Some(r),
                    Err(e) => {
                        start_at = Instant::now() + RESTART_AFTER;
                        stopped(
                            format!("the WAL receiver could not start: {e}"),
                            "streaming again within a second",
                        );
                    }
                }
            }
            if last_tidy.elapsed() >= TIDY_EVERY {
                last_tidy = Instant::now();
                if let Err(e) = cx.archive.tidy_tails() {
                    tracing::warn!("streaming WAL: {e}");
                }
            }
            if last_held.elapsed() >= HELD_EVERY {
                last_held = Instant::now();
                // Unknown while the server does not answer.
                let held = self.held_bytes(&slot, &mut session).ok();
                cx.status.lock().expect("status").held_bytes = held;
            }
            // Read before the spool: all WAL before it is in the spool.
            let upto = receiver.as_ref().map(Receiver::received);
            let outcome = store_spool(&spool, &cx, &mut tails).and_then(|whole| match (&receiver, upto) {
                // A report failing means the connection is gone: the
                // receiver's thread says so at once.
                (Some(r), Some(upto)) if whole => r.stored(upto).or(Ok(())),
                _ => Ok(()),
            });
            match outcome {
                Ok(()) if receiver.is_some() => {
                    let mut st = cx.status.lock().expect("status");
                    st.stopped = None;
                    st.polled_ms = now_ms();
                    st.lag = Duration::ZERO;
                }
                Ok(()) => {}
                Err(e) => stopped(e.to_string(), "storing again within a second"),
            }
            // While stopped, the lag is how long since: what the server
            // wrote since then is not streamed (archive_command still
            // archives whole segments).
            {
                let mut st = cx.status.lock().expect("status");
                if let Some(since) = st.stopped.as_ref().map(|s| s.since_ms) {
                    st.lag = Duration::from_millis((now_ms() - since).max(0) as u64);
                    st.polled_ms = now_ms();
                }
            }
            match &receiver {
                // A synchronous standby's commits wait for the store.
                Some(r) if cx.options.synchronous => r.wait_for_wal(STORE_EVERY),
                _ => std::thread::sleep(STORE_EVERY),
            }
        }
        // Dropping the receiver closes its connection; the slot stays (the
        // server keeps WAL for it: a restarted server streams on from
        // where this one stopped) unless streaming is turned off.
        drop(receiver);
        if cx.forget.load(Ordering::Relaxed) {
            let _ = store_spool(&spool, &cx, &mut tails);
            let _ = std::fs::remove_dir_all(&spool);
            self.drop_slot(&slot);
        }
    }
}

impl PgPhysical {
    /// How much WAL the slot keeps on the database server (its restart
    /// point to the present), in bytes; asked on a session kept for it (a
    /// `psql` each time forked the whole server every 2 s).
    fn held_bytes(&self, slot: &str, session: &mut Option<postgres::Client>) -> Result<u64, Error> {
        let client = match session {
            Some(client) => client,
            None => session.insert(self.conn.client()?),
        };
        let held = client.query_opt(
            "SELECT coalesce(pg_current_wal_lsn() - restart_lsn, 0)::bigint FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        );
        match held {
            Ok(row) => Ok(row.map_or(0, |r| r.get::<_, i64>(0)) as u64),
            Err(e) => {
                *session = None;
                Err(Error::Failed(format!("replication slot {slot}: {e}")))
            }
        }
    }

    /// Drops the receiver's slot (its walsender may take a moment to go).
    fn drop_slot(&self, slot: &str) {
        let mut last = String::new();
        for _ in 0..25 {
            match self.conn.query(&format!("SELECT pg_drop_replication_slot('{slot}')")) {
                Ok(_) => {
                    tracing::info!("streaming WAL turned off: dropped replication slot {slot}");
                    return;
                }
                Err(e) if e.to_string().contains("does not exist") => return,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        tracing::warn!(
            "streaming WAL turned off, but replication slot {slot} could not be dropped ({last}): it keeps WAL \
             on the database server until dropped (SELECT pg_drop_replication_slot('{slot}'))"
        );
    }
}

/// A tail as stored: how much of it, how much its copy holds, and the
/// pieces stored after that copy.
struct Tail {
    stored: u64,
    copied: u64,
    pieces: Vec<String>,
}

/// Stores what the spool holds: whole segments and histories (then removed
/// from the spool, with their tails from the repository), then what the
/// segment being written gained: as a piece of its streamed copy, or (the
/// first time, and as `PIECES_AT_MOST` says) as the copy, whole, which
/// replaces the pieces. Whether all of it was: a file renamed while it
/// was read is stored next time.
fn store_spool(spool: &Path, cx: &ShipContext, tails: &mut HashMap<String, Tail>) -> Result<bool, Error> {
    let mut names: Vec<String> = match std::fs::read_dir(spool) {
        Ok(entries) => entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::io(spool.display(), e)),
    };
    names.sort();
    let mut whole_read = true;
    for name in &names {
        let path = spool.join(name);
        let whole = (name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit())) || name.ends_with(".history");
        // The receiver renames a finished segment's `.partial`.
        let vanished = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        if whole {
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                Err(e) if vanished(&e) => {
                    whole_read = false;
                    continue;
                }
                Err(e) => return Err(Error::io(path.display(), e)),
            };
            match tails.remove(name) {
                // Its copy and pieces hold the rest: the last piece finishes
                // it (sealing the whole segment again cost as much as all
                // its pieces and copies together).
                Some(t) if (t.stored as usize) < data.len() => {
                    cx.archive
                        .put_streamed_piece(name, t.stored, &data[t.stored as usize..])?
                }
                Some(_) => {}
                None => cx.archive.put_streamed(name, &data)?,
            }
            std::fs::remove_file(&path).map_err(|e| Error::io(path.display(), e))?;
            continue;
        }
        let Some(segment) = name.strip_suffix(".partial") else {
            continue;
        };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if vanished(&e) => {
                whole_read = false;
                continue;
            }
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        let len = file.metadata().map_err(|e| Error::io(path.display(), e))?.len();
        let from = match tails.get(segment) {
            Some(t) if t.stored >= len => continue,
            Some(t) if t.stored - t.copied < 3 * t.copied && t.pieces.len() < PIECES_AT_MOST => t.stored,
            _ => 0,
        };
        let mut data = vec![0; (len - from) as usize];
        file.read_exact_at(&mut data, from)
            .map_err(|e| Error::io(path.display(), e))?;
        if from > 0 {
            cx.archive.put_streamed_piece(segment, from, &data)?;
            let t = tails.get_mut(segment).expect("matched above");
            t.pieces.push(strongbox_repo::piece_name(segment, from));
            t.stored = len;
            continue;
        }
        let tail = received(&data);
        if tail.is_empty() {
            continue;
        }
        cx.archive.put_streamed(segment, tail)?;
        let replaced = tails.insert(
            segment.to_string(),
            Tail {
                stored: tail.len() as u64,
                copied: tail.len() as u64,
                pieces: Vec::new(),
            },
        );
        remove_pieces(cx, replaced);
    }
    Ok(whole_read)
}

/// Removes the pieces of a tail its streamed copy now holds whole (left,
/// they are removed with the copy).
fn remove_pieces(cx: &ShipContext, tail: Option<Tail>) {
    if let Some(t) = tail.filter(|t| !t.pieces.is_empty())
        && let Err(e) = cx.archive.remove_streamed_pieces(&t.pieces)
    {
        tracing::warn!("streaming WAL: {e}");
    }
}

/// A segment's tail as stored: without zeros past what was received (a
/// file `pg_receivewal` wrote, left from an older server, is the
/// segment's size from the start), so that storing it costs what it
/// holds, not 16 MiB each time.
fn received(data: &[u8]) -> &[u8] {
    &data[..data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)]
}

/// A stored tail as replay reads it: padded with zeros to its segment's
/// size (from its first page's long header), as PostgreSQL takes only
/// whole segment files; a whole one, or anything else, as it is.
pub fn whole_segment(mut data: Vec<u8>) -> Vec<u8> {
    // XLogLongPageHeaderData: xlp_info (u16 at 2) has XLP_LONG_HEADER;
    // xlp_seg_size is the u32 at 32.
    const XLP_LONG_HEADER: u16 = 0x0002;
    let field = |at: usize, n: usize| {
        data.get(at..at + n)
            .map(|b| b.iter().rev().fold(0u64, |v, x| v << 8 | u64::from(*x)))
    };
    let (Some(info), Some(size)) = (field(2, 2), field(32, 4)) else {
        return data;
    };
    let size = size as usize;
    if info as u16 & XLP_LONG_HEADER != 0
        && size.is_power_of_two()
        && (1 << 20..=1 << 30).contains(&size)
        && data.len() < size
    {
        data.resize(size, 0);
    }
    data
}

/// Removes what the spool holds (its whole files are stored by then),
/// creating it if needed.
fn empty(spool: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(spool) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(spool.display(), e)),
    }
    std::fs::create_dir_all(spool).map_err(|e| Error::io(spool.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 MiB segment with its long page header, WAL (ending in zero bytes
    /// of its own) up to 300,000 bytes, zeros after.
    fn segment() -> Vec<u8> {
        let mut s = vec![0u8; 1 << 20];
        s[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        s[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        s[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
        for (i, b) in s[40..299_990].iter_mut().enumerate() {
            *b = (i % 251) as u8 | 1;
        }
        s
    }

    #[test]
    fn a_tail_is_stored_without_its_zeros_and_read_back_whole() {
        let s = segment();
        let stored = received(&s);
        assert_eq!(stored.len(), 299_990);
        assert_eq!(whole_segment(stored.to_vec()), s);
        // A whole segment, or what has no long header, is left as it is.
        assert_eq!(whole_segment(s.clone()), s);
        assert_eq!(whole_segment(vec![1, 2, 3]), [1, 2, 3]);
        let mut no_header = stored.to_vec();
        no_header[2] = 0;
        assert_eq!(whole_segment(no_header.clone()), no_header);
    }
}
