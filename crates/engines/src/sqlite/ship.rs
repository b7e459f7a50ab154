//! Continuous WAL shipping for SQLite (point-in-time recovery, issue 15):
//! every committed transaction copied out of the database's write-ahead
//! log into the repository, so that the database can be brought back to
//! any moment. Litestream's approach, with the repository as the replica.
//!
//! **Why no frame is ever lost.** The shipper keeps a read transaction
//! open on the database at all times (`reader`). SQLite resets its log
//! only when every frame has been copied into the database file and no
//! reader still reads from the log; a reader that began after the log was
//! fully copied reads the database file only (read-lock slot 0), and then
//! the file cannot be written by a checkpoint until it ends. So while the
//! shipper's reader is open, either nothing resets the log, or it is reset
//! with no frame after the shipper's position (nothing was appended since
//! the reader began, or the checkpoint could not have finished). So any
//! new header on the same log file is a reset, and the new log continues
//! the same history from its first frame, whatever the header's numbers
//! say: the checkpoint sequence in a header is the count of the connection
//! that reset the log (a new connection starts at 0), a TRUNCATE of a log
//! already empty resets it again, and a connection that never reset the
//! log gives the log it writes first fresh random salts. Anything else —
//! the log file gone or another in its place, the database file replaced
//! (another inode), the shipper started afresh — starts a new *generation*.
//!
//! After each read the reader's mark moves to the end
//! (`advance_reader`: a second connection begins reading before the first
//! stops, so a mark is always held, and one that began past frames not yet
//! copied into the database is never the database-file-only kind), which
//! lets the application's checkpoints copy what was shipped, and its
//! RESTART and TRUNCATE checkpoints finish (they wait for every reader to
//! leave the log; a TRUNCATE leaves it empty, and the next log follows).
//!
//! To let the log be reset at all, the shipper *rolls* it now and then:
//! it reads the log to its end, moves its mark there and checkpoints up to
//! it, then takes the write lock (`BEGIN IMMEDIATE`: application writers
//! wait, as for any writer), reads what was written meanwhile (into
//! memory, pushed with the next batch), ends its reader, runs a passive
//! checkpoint, begins its reader again and lets writers go; the next
//! writer resets the log. Doing most of it before the lock keeps the
//! writers' wait short (0.28 ms median).
//!
//! **Generations.** Each begins with a *base*: under the write lock the
//! shipper reads the log to its end and begins its reader there, and the
//! backup API copies the database as that reader sees it. The base plus
//! the generation's transactions, in order, give every state since.
//!
//! **Objects.** Transactions seen by one poll (every `ShipOptions::poll`)
//! share a time, `seen_ms` (the commit happened at most one poll before).
//! Pending transactions are pushed together every `ship_every` as one
//! object named `GENERATION-FIRST-LAST` (transaction numbers within the
//! generation, 16 hex digits each), sealed and compressed by the
//! repository like every object.
//!
//! Here the shipper; in `push` how what it read reaches the repository
//! (on a thread of its own; kept and pushed again while the store fails);
//! in `log` the shipped log as recovery reads it (positions, objects,
//! replay); in `link` how jobs of the same server reach a database's
//! shipper.

mod link;
mod log;
mod push;
mod run;

pub use link::*;
pub use log::*;
pub use run::*;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::wal::{Cursor, WalHeader};
use crate::Error;

/// Where shipped transactions go.
pub trait ShipArchive: Send + Sync {
    /// Stores one object of shipped transactions under `name`.
    fn push(&self, name: &str, data: &[u8]) -> Result<(), Error>;

    /// Stores (or replaces) the streamed copy of WAL file `name`
    /// (`NAME.streamed`).
    fn put_streamed(&self, name: &str, _data: &[u8]) -> Result<(), Error> {
        Err(Error::Failed(format!("{name}: this archive keeps no streamed WAL")))
    }

    /// Stores a piece of the streamed copy of `name`: its bytes from
    /// `offset` on (`NAME.streamed.OFFSET`, read spliced onto the copy).
    fn put_streamed_piece(&self, name: &str, _offset: u64, _data: &[u8]) -> Result<(), Error> {
        Err(Error::Failed(format!("{name}: this archive keeps no streamed WAL")))
    }

    /// Removes pieces a newer streamed copy holds (`piece_name`s).
    fn remove_streamed_pieces(&self, _pieces: &[String]) -> Result<(), Error> {
        Ok(())
    }

    /// Removes the streamed copies of files archived since; how many.
    fn tidy_tails(&self) -> Result<usize, Error> {
        Ok(0)
    }
}

/// A generation's base: the database before its first transaction, as a
/// file to back up (the backup it becomes is where recoveries start).
pub struct Base {
    pub generation: String,
    /// When the base was taken (ms since the epoch): the generation covers
    /// moments from then on.
    pub taken_ms: i64,
    pub file: std::fs::File,
}

#[derive(Clone, Debug)]
pub struct ShipOptions {
    /// How often the log is read for new commits.
    pub poll: Duration,
    /// How long a transaction may wait before it is pushed.
    pub ship_every: Duration,
    /// The log is rolled once it holds this many frames since its last
    /// reset. SQLite's own connections checkpoint at 1000 (by default) on
    /// every commit while the log holds more, which the shipper's reader
    /// keeps from emptying it: rolling at about that size keeps them from
    /// doing so in vain.
    pub roll_frames: u64,
    /// At most one roll per this long, in case an application reader keeps
    /// the log from being reset (rolls would then be in vain).
    pub roll_every: Duration,
    /// Where bases are copied before they are stored.
    pub scratch: PathBuf,
    /// PostgreSQL: the WAL receiver reports WAL flushed once it is on disk
    /// here, as a synchronous standby (`ShipperStatus::standby` names it).
    pub synchronous: bool,
    /// While pushes fail, read transactions wait in memory up to this many
    /// bytes; beyond it the generation ends (the shipper starts again, and
    /// the next base holds them) rather than the server's memory filling.
    pub pending_at_most: usize,
}

impl ShipOptions {
    pub fn new(scratch: PathBuf) -> Self {
        ShipOptions {
            poll: Duration::from_millis(25),
            ship_every: Duration::from_millis(500),
            roll_frames: 900,
            roll_every: Duration::from_millis(100),
            scratch,
            synchronous: false,
            pending_at_most: 256 << 20,
        }
    }
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What one poll found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Transactions read from the log.
    pub read: usize,
    /// Transactions pushed to the archive.
    pub pushed: usize,
    /// Why continuity was lost, if it was: shipping waits for a new base
    /// (`Shipper::begin_generation`).
    pub lost: Option<String>,
    pub rolled: bool,
}

/// A generation that ended because continuity was lost: what was committed
/// after its last shipped transaction is in no shipped log.
#[derive(Clone, Debug)]
pub struct Lost {
    pub generation: String,
    pub why: String,
    /// The log was last read whole then (ms since the epoch): the shipped
    /// transactions hold every moment up to it.
    pub read_ms: i64,
}

pub struct Shipper {
    path: PathBuf,
    wal_path: PathBuf,
    archive: Arc<dyn ShipArchive>,
    opts: ShipOptions,
    /// Holds the read transaction (see the module's comment).
    reader: Connection,
    /// Begins reading before `reader` stops, when the mark moves on.
    spare: Connection,
    /// Takes the write lock for bases and rolls.
    writer: Connection,
    inode: u64,
    /// The log file the cursor reads (its inode): SQLite resets the log in
    /// place, so another file there breaks the history.
    wal_file: Option<u64>,
    /// `None` until a base is taken, and again once continuity is lost.
    pub generation: Option<String>,
    /// The generation that ended last by losing continuity, until the
    /// next base: a recovery along it would miss what came after.
    lost: Option<Lost>,
    /// When the log was last read to its end (ms since the epoch).
    read_ms: i64,
    cursor: Option<Cursor>,
    page_size: u32,
    /// Transactions of this generation pushed so far.
    pub shipped: u64,
    /// Read, not yet stored (the first of them perhaps being pushed).
    pending: Vec<Shipped>,
    pending_bytes: usize,
    /// The push under way, on its own thread (`push`).
    in_flight: Option<push::InFlight>,
    /// Set while pushes fail (the repository unreachable): what is pending
    /// stays in memory and is pushed again later, so the generation goes on
    /// without a gap.
    push_failed: Option<push::PushFailed>,
    /// When the log was last rolled.
    rolled: Option<Instant>,
}

fn fail(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Failed(format!("sqlite {}: {what}: {e}", path.display()))
}

impl Shipper {
    /// Opens the database at `path` for shipping (in WAL mode; it is
    /// switched to it if not). Nothing is shipped before the first base
    /// (`begin_generation`).
    pub fn start(path: &Path, archive: Arc<dyn ShipArchive>, opts: ShipOptions) -> Result<Shipper, Error> {
        let (reader, spare, writer, inode) = Self::connect(path)?;
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        Ok(Shipper {
            path: path.to_path_buf(),
            wal_path: PathBuf::from(wal_path),
            archive,
            opts,
            reader,
            spare,
            writer,
            inode,
            wal_file: None,
            generation: None,
            lost: None,
            read_ms: 0,
            cursor: None,
            page_size: 0,
            shipped: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            in_flight: None,
            push_failed: None,
            rolled: None,
        })
    }

    fn connect(path: &Path) -> Result<(Connection, Connection, Connection, u64), Error> {
        let open = || {
            let c = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| fail(path, "open", e))?;
            c.busy_timeout(super::LOCK_WAIT)
                .map_err(|e| fail(path, "busy timeout", e))?;
            // Only the application's connections checkpoint on their own.
            c.pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(|e| fail(path, "wal_autocheckpoint", e))?;
            Ok::<_, Error>(c)
        };
        let writer = open()?;
        let mode: String = writer
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| fail(path, "switching to WAL mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail(
                path,
                "switching to WAL mode",
                format!("the journal mode stayed {mode}"),
            ));
        }
        let inode = std::fs::metadata(path).map_err(|e| fail(path, "stat", e))?.ino();
        Ok((open()?, open()?, writer, inode))
    }

    fn begin_read(&self) -> Result<(), Error> {
        self.begin_read_on(&self.reader)
    }

    fn begin_read_on(&self, c: &Connection) -> Result<(), Error> {
        c.execute_batch("BEGIN")
            .and_then(|_| c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())))
            .map_err(|e| fail(&self.path, "beginning the shipper's read transaction", e))
    }

    /// Moves the reader's mark to the log's end, so that the application's
    /// checkpoints can copy what was shipped into the database (a mark
    /// left behind makes each of its commits try in vain once the log is
    /// long). The spare connection begins reading before the reader stops:
    /// a mark is held throughout.
    fn advance_reader(&mut self) -> Result<(), Error> {
        self.begin_read_on(&self.spare)?;
        self.end_read();
        std::mem::swap(&mut self.reader, &mut self.spare);
        Ok(())
    }

    fn end_read(&self) {
        if !self.reader.is_autocommit() {
            let _ = self.reader.execute_batch("COMMIT");
        }
    }

    /// Runs `f` holding the database's write lock: no application
    /// transaction commits meanwhile.
    fn with_write_lock<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        self.writer
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| fail(&self.path, "taking the write lock", e))?;
        let out = f(self);
        let _ = self.writer.execute_batch("ROLLBACK");
        out
    }

    /// Begins a new generation and returns its base: pending transactions
    /// of the old one are pushed first (they are good), then, under the
    /// write lock, the log is read to its end and the reader begins there;
    /// the base is the database as that reader sees it.
    pub fn begin_generation(&mut self) -> Result<Base, Error> {
        self.push_pending()?;
        self.end_read();
        let (reader, spare, writer, inode) = Self::connect(&self.path)?;
        (self.reader, self.spare, self.writer, self.inode) = (reader, spare, writer, inode);
        let taken_ms = self.with_write_lock(|s| {
            s.wal_file = s.wal_file_now();
            s.cursor = match WalHeader::read(&s.wal_path).map_err(|e| fail(&s.path, "reading the WAL header", e))? {
                Some(h) => {
                    let mut c = Cursor::at_start(h);
                    // Everything in the log now is in the base.
                    c.read_commits(&s.open_wal()?)
                        .map_err(|e| fail(&s.path, "reading the WAL", e))?;
                    Some(c)
                }
                None => None,
            };
            s.begin_read()?;
            Ok(now_ms())
        })?;
        self.read_ms = taken_ms;
        self.page_size = self
            .reader
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| fail(&self.path, "page size", e))?;
        let copy = tempfile::NamedTempFile::new_in(&self.opts.scratch).map_err(|e| fail(&self.path, "scratch", e))?;
        {
            let mut dst = Connection::open(copy.path()).map_err(|e| fail(&self.path, "scratch database", e))?;
            // The backup API reads through the reader's open transaction:
            // the database exactly where the log ended under the lock.
            let backup =
                rusqlite::backup::Backup::new(&self.reader, &mut dst).map_err(|e| fail(&self.path, "base", e))?;
            while backup.step(-1).map_err(|e| fail(&self.path, "copying the base", e))?
                != rusqlite::backup::StepResult::Done
            {
                std::thread::sleep(Duration::from_millis(10)); // the copy's own file busy
            }
        }
        let (file, path) = copy.into_parts();
        drop(path); // unlinked; the open handle keeps the data until read
        let generation = generation_id();
        self.generation = Some(generation.clone());
        self.lost = None;
        self.shipped = 0;
        Ok(Base {
            generation,
            taken_ms,
            file,
        })
    }

    /// Continuity is lost: what is pending is pushed, and nothing more is
    /// shipped until the next base.
    fn lose(&mut self, why: String, polled: &mut Polled) -> Result<(), Error> {
        if let Some(generation) = self.generation.clone() {
            self.lost = Some(Lost {
                generation,
                why: why.clone(),
                read_ms: self.read_ms,
            });
        }
        self.end_generation()?;
        polled.lost = Some(why);
        Ok(())
    }

    /// Pushes what is pending and ships nothing more until the next base.
    fn end_generation(&mut self) -> Result<(), Error> {
        self.push_pending()?;
        self.end_read();
        (self.generation, self.cursor) = (None, None);
        Ok(())
    }

    fn wal_file_now(&self) -> Option<u64> {
        std::fs::metadata(&self.wal_path).ok().map(|m| m.ino())
    }

    fn open_wal(&self) -> Result<std::fs::File, Error> {
        std::fs::File::open(&self.wal_path).map_err(|e| fail(&self.path, "opening the WAL", e))
    }

    /// Reads what was committed since the last poll. `Err(why)` inside
    /// means continuity is lost.
    fn read_new(&mut self) -> Result<Result<usize, String>, Error> {
        let file = self.wal_file_now();
        let header = WalHeader::read(&self.wal_path).map_err(|e| fail(&self.path, "reading the WAL header", e))?;
        let cursor = match (self.cursor, header) {
            (None, None) => {
                self.read_ms = now_ms(); // nothing in the log
                return Ok(Ok(0));
            }
            (None, Some(h)) => {
                self.wal_file = file;
                Cursor::at_start(h)
            }
            (Some(_), _) if file.is_none() => return Ok(Err("the WAL was removed".into())),
            (Some(_), _) if file != self.wal_file => {
                return Ok(Err("the WAL was replaced by another file".into()));
            }
            (Some(c), Some(h)) if c.header == h => c,
            // The log was reset (see the module's comment: with nothing
            // after the cursor); the new one goes on from its first frame.
            (Some(_), Some(h)) => Cursor::at_start(h),
            // A TRUNCATE checkpoint emptied it, which it can only do once
            // every frame was copied into the database and no reader (so not
            // ours) still reads from the log: the next log goes on.
            (Some(c), None) => {
                self.cursor = Some(Cursor::at_start(c.header));
                self.read_ms = now_ms();
                return Ok(Ok(0));
            }
        };
        let mut cursor = cursor;
        let txns = cursor
            .read_commits(&self.open_wal()?)
            .map_err(|e| fail(&self.path, "reading the WAL", e))?;
        self.cursor = Some(cursor);
        let seen_ms = now_ms();
        self.read_ms = seen_ms;
        let n = txns.len();
        for txn in txns {
            self.pending_bytes += self.size_of(&txn);
            self.pending.push(Shipped { seen_ms, txn });
        }
        Ok(Ok(n))
    }

    /// What a transaction holds in memory while pending.
    fn size_of(&self, txn: &super::wal::Txn) -> usize {
        txn.pages.len() * (self.page_size as usize + 4)
    }

    /// One round: notice a replaced file, read new commits, push what is
    /// due, roll a large log.
    pub fn poll(&mut self) -> Result<Polled, Error> {
        let mut polled = Polled::default();
        if self.generation.is_none() {
            return Ok(polled);
        }
        let read = match std::fs::metadata(&self.path).map(|m| m.ino()) {
            Ok(inode) if inode == self.inode => self.read_new()?,
            Ok(_) => Err("the database file was replaced".into()),
            Err(e) => Err(format!("the database file is gone ({e})")),
        };
        match read {
            Ok(n) => polled.read = n,
            Err(why) => {
                self.lose(why, &mut polled)?;
                return Ok(polled);
            }
        }
        // Every poll, also when nothing was read: an application checkpoint
        // in RESTART or TRUNCATE mode waits for every reader to leave the
        // log, which a reader begun once the log is fully copied into the
        // database does.
        self.advance_reader()?;
        polled.pushed = self.push_in_background()?;
        // The log in use since its last reset, not the file (which SQLite
        // keeps at its largest); at most ten rolls a second, in case an
        // application reader keeps the log from being reset.
        let in_use = self.cursor.map_or(0, |c| c.next_frame);
        if in_use >= self.opts.roll_frames && self.rolled.is_none_or(|t| t.elapsed() >= self.opts.roll_every) {
            self.rolled = Some(Instant::now());
            // Most of the work first, without the lock (writers go on): the
            // log read to its end, the mark moved there, the log checkpointed
            // up to it. Under the lock only what was written meanwhile (a
            // push may just have taken tens of milliseconds): read (into
            // memory: pushed with the next batch) and checkpointed.
            match self.read_new()? {
                Ok(n) => polled.read += n,
                Err(why) => {
                    self.lose(why, &mut polled)?;
                    return Ok(polled);
                }
            }
            self.advance_reader()?;
            let _ = self.writer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            let rolled = self.with_write_lock(|s| {
                let read = s.read_new()?;
                if read.is_ok() {
                    s.end_read();
                    let _ = s.reader.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    s.begin_read()?;
                }
                Ok(read)
            })?;
            match rolled {
                Ok(n) => {
                    polled.read += n;
                    polled.rolled = true;
                }
                Err(why) => self.lose(why, &mut polled)?,
            }
        }
        Ok(polled)
    }

    /// How long the oldest transaction not yet pushed has waited: what a
    /// crash of this server now would lose.
    pub fn lag(&self) -> Duration {
        let now = now_ms();
        let oldest = self.pending.first().map_or(now, |t| t.seen_ms);
        Duration::from_millis((now - oldest).max(0) as u64)
    }

    /// Pushes what is pending and stops (a clean shutdown).
    pub fn stop(mut self) -> Result<u64, Error> {
        if self.generation.is_some() {
            let _ = self.read_new()?;
        }
        self.push_pending()?;
        self.end_read();
        Ok(self.shipped)
    }
}

/// A generation's name: its start time in milliseconds (so names sort by
/// age) and randomness (two starts in one millisecond differ).
fn generation_id() -> String {
    let random = strongbox_repo::Id::random().to_hex();
    format!("{:012x}{}", now_ms(), &random[..4])
}

/// The repository as a shipping archive: objects in the deployment's WAL
/// archive (and, for tools and tests, bases as snapshots labelled with
/// their generation; the server backs them up as backup jobs).
pub struct RepoArchive {
    pub repo: Arc<strongbox_repo::Repository>,
    /// The WAL archive's name (`DOMAIN/DEPLOYMENT` on the server).
    pub archive: String,
    pub runtime: tokio::runtime::Handle,
}

impl ShipArchive for RepoArchive {
    fn push(&self, name: &str, data: &[u8]) -> Result<(), Error> {
        self.runtime
            .block_on(self.repo.wal_push(&self.archive, name, data))
            .map(|_| ())
            .map_err(|e| Error::Failed(format!("shipping {name} into the WAL archive: {e}")))
    }

    fn put_streamed(&self, name: &str, data: &[u8]) -> Result<(), Error> {
        self.runtime
            .block_on(self.repo.wal_put_streamed(&self.archive, name, data))
            .map(|_| ())
            .map_err(|e| Error::Failed(format!("storing the streamed copy of {name}: {e}")))
    }

    fn put_streamed_piece(&self, name: &str, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.runtime
            .block_on(self.repo.wal_put_streamed_piece(&self.archive, name, offset, data))
            .map(|_| ())
            .map_err(|e| Error::Failed(format!("storing a piece of the streamed copy of {name}: {e}")))
    }

    fn remove_streamed_pieces(&self, pieces: &[String]) -> Result<(), Error> {
        self.runtime
            .block_on(self.repo.wal_remove(&self.archive, pieces))
            .map_err(|e| Error::Failed(format!("removing pieces of a streamed copy: {e}")))
    }

    fn tidy_tails(&self) -> Result<usize, Error> {
        self.runtime
            .block_on(self.repo.wal_tidy_streamed(&self.archive))
            .map_err(|e| Error::Failed(format!("removing streamed copies of archived WAL: {e}")))
    }
}

impl RepoArchive {
    /// Backs up a base as a snapshot labelled with its generation (the
    /// server backs bases up as backup jobs instead).
    pub fn store_base(&self, base: Base) -> Result<strongbox_repo::Snapshot, Error> {
        let Base {
            generation,
            taken_ms,
            file,
        } = base;
        let labels = [
            (GENERATION_LABEL, generation.to_string()),
            (TAKEN_LABEL, taken_ms.to_string()),
        ];
        let opts = strongbox_repo::BackupOptions {
            tags: vec![],
            labels: labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ..Default::default()
        };
        let source = strongbox_repo::Source::new(super::FILE_NAME, file);
        self.runtime
            .block_on(
                self.repo
                    .backup(vec![source], opts, Arc::new(strongbox_repo::NoProgress)),
            )
            .map_err(|e| Error::Failed(format!("storing the base of generation {generation}: {e}")))
    }
}
