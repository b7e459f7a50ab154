//! SQLite's write-ahead log, read as the file format defines it
//! (<https://www.sqlite.org/fileformat.html#the_write_ahead_log>): a
//! 32-byte header, then frames of a 24-byte header and one page each. A
//! frame belongs to the log's current generation when its salts equal the
//! header's and the running checksum, seeded by the header's, matches;
//! a frame whose "database size" field is non-zero ends a transaction.
//! Frames after the last such commit frame were never committed.
//!
//! The groundwork of point-in-time recovery for SQLite (issue 15): the
//! committed transactions a log holds, and a base database file brought to
//! the end of any one of them by writing its pages in order.

use std::os::unix::fs::FileExt;
use std::path::Path;

const HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("not a SQLite WAL file: {0}")]
    Format(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The log's header: what ties its frames to one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt: (u32, u32),
    big_endian: bool,
    checksum: (u32, u32),
}

/// A whole log read up to its last valid commit.
#[derive(Clone, Debug)]
pub struct Wal {
    pub header: WalHeader,
    pub commits: Vec<Txn>,
}

impl WalHeader {
    /// Parses and checks a log's 32-byte header.
    pub fn parse(head: &[u8; HEADER]) -> Result<WalHeader, WalError> {
        let big_endian = match be(head, 0) {
            MAGIC_LE => false,
            MAGIC_BE => true,
            m => return Err(WalError::Format(format!("magic {m:#x}"))),
        };
        let page_size = be(head, 8);
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(WalError::Format(format!("page size {page_size}")));
        }
        let header = WalHeader {
            page_size,
            checkpoint_seq: be(head, 12),
            salt: (be(head, 16), be(head, 20)),
            big_endian,
            checksum: (be(head, 24), be(head, 28)),
        };
        if checksum(&head[..24], big_endian, (0, 0)) != header.checksum {
            return Err(WalError::Format("header checksum mismatch".into()));
        }
        Ok(header)
    }

    /// The header of the log at `path`; `None` if the log is missing or
    /// empty (no transaction written since it was last reset).
    pub fn read(path: &Path) -> Result<Option<WalHeader>, WalError> {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut head = [0u8; HEADER];
        match f.read_exact_at(&mut head, 0) {
            Ok(()) => Self::parse(&head).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// One committed transaction read from a live log: the pages it wrote, in
/// log order, and the database's size in pages once it committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    pub db_pages: u32,
    pub pages: Vec<(u32, Vec<u8>)>,
}

/// How far a reader of a live log has got: its header, the next frame,
/// and the running checksum to go on from. Frames are read only up to the
/// last whole commit, so the cursor always rests on a transaction boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub header: WalHeader,
    pub next_frame: u64,
    running: (u32, u32),
}

impl Cursor {
    pub fn at_start(header: WalHeader) -> Cursor {
        Cursor {
            header,
            next_frame: 0,
            running: header.checksum,
        }
    }

    /// Reads the transactions committed after the cursor in the log `f`
    /// and moves past them. Frames of another generation, a bad checksum
    /// or a partial frame end what is read (a writer may be mid-commit).
    pub fn read_commits(&mut self, f: &std::fs::File) -> Result<Vec<Txn>, WalError> {
        let h = self.header;
        let frame_len = (FRAME_HEADER + h.page_size as usize) as u64;
        let (mut out, mut open) = (Vec::new(), Vec::new());
        let (mut at, mut running) = (self.next_frame, self.running);
        // Frames are read 256 at a time (a live log grows by thousands
        // between reads; past its end the file may hold an earlier log's).
        let mut batch = vec![0u8; 256 * frame_len as usize];
        'read: loop {
            let mut got = 0;
            while got < batch.len() {
                match f.read_at(&mut batch[got..], HEADER as u64 + at * frame_len + got as u64)? {
                    0 => break,
                    n => got += n,
                }
            }
            let whole = got / frame_len as usize;
            for frame in batch[..whole * frame_len as usize].chunks_exact(frame_len as usize) {
                let (pgno, db_pages) = (be(frame, 0), be(frame, 4));
                if (be(frame, 8), be(frame, 12)) != h.salt || pgno == 0 {
                    break 'read;
                }
                running = checksum(&frame[..8], h.big_endian, running);
                running = checksum(&frame[FRAME_HEADER..], h.big_endian, running);
                if running != (be(frame, 16), be(frame, 20)) {
                    break 'read;
                }
                at += 1;
                open.push((pgno, frame[FRAME_HEADER..].to_vec()));
                if db_pages != 0 {
                    out.push(Txn {
                        db_pages,
                        pages: std::mem::take(&mut open),
                    });
                    self.next_frame = at;
                    self.running = running;
                }
            }
            if whole < 256 {
                break;
            }
        }
        Ok(out)
    }
}

/// Writes transactions' pages into the database file `db` (at the state
/// they followed) and sizes it as the last one left it.
pub fn apply_txns<'a>(db: &Path, page_size: u32, txns: impl IntoIterator<Item = &'a Txn>) -> Result<(), WalError> {
    let out = std::fs::OpenOptions::new().write(true).open(db)?;
    let mut last = None;
    for txn in txns {
        for (pgno, page) in &txn.pages {
            out.write_all_at(page, (*pgno as u64 - 1) * page_size as u64)?;
        }
        last = Some(txn.db_pages);
    }
    if let Some(pages) = last {
        out.set_len(pages as u64 * page_size as u64)?;
    }
    out.sync_all()?;
    Ok(())
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing `s`.
fn checksum(data: &[u8], big_endian: bool, mut s: (u32, u32)) -> (u32, u32) {
    for pair in data.chunks_exact(8) {
        let word = |b: &[u8]| {
            let b: [u8; 4] = b.try_into().expect("4 bytes");
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s.0 = s.0.wrapping_add(word(&pair[..4])).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(word(&pair[4..])).wrapping_add(s.0);
    }
    s
}

fn be(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Wal {
    /// Reads the log at `path`: every frame of its generation up to the last
    /// commit whose frames all check out.
    pub fn read(path: &Path) -> Result<Wal, WalError> {
        let header =
            WalHeader::read(path)?.ok_or_else(|| WalError::Format("shorter than its 32-byte header".into()))?;
        let mut cursor = Cursor::at_start(header);
        let commits = cursor.read_commits(&std::fs::File::open(path)?)?;
        Ok(Wal { header, commits })
    }

    /// Brings `db` (the database file as it was when this log began: every
    /// earlier frame checkpointed into it) to the end of commit `upto`
    /// (an index into `commits`).
    pub fn apply(&self, db: &Path, upto: usize) -> Result<(), WalError> {
        if upto >= self.commits.len() {
            return Err(WalError::Format(format!(
                "no commit {upto}; the log holds {}",
                self.commits.len()
            )));
        }
        apply_txns(db, self.header.page_size, &self.commits[..=upto])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    use strongbox_testkit::Rng;

    fn seed() -> u64 {
        let seed = strongbox_testkit::seed(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        );
        println!("sqlite wal seed {seed} (MODEL_SEED replays it)");
        seed
    }

    /// A database in WAL mode that only the test checkpoints, its base file
    /// copied right after a checkpoint that emptied the log.
    fn fresh(dir: &Path) -> (Connection, std::path::PathBuf) {
        let db = dir.join("app.sqlite");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            // auto_vacuum: deletes shrink the database, so commits end at
            // fewer pages than the file had.
            "PRAGMA auto_vacuum=FULL; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; \
             CREATE TABLE t (n INTEGER PRIMARY KEY, body BLOB);",
        )
        .unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        std::fs::copy(&db, dir.join("base.sqlite")).unwrap();
        (c, db)
    }

    /// Rows (n, size) a database holds.
    fn rows(db: &Path) -> Vec<(i64, i64)> {
        let c = Connection::open(db).unwrap();
        let mut q = c.prepare("SELECT n, length(body) FROM t ORDER BY n").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn the_base_brought_to_each_commit_holds_exactly_the_rows_committed_by_then() {
        let mut rng = Rng(seed());
        let dir = tempfile::tempdir().unwrap();
        let (c, db) = fresh(dir.path());
        // A model: the rows after each transaction (inserts of random
        // sizes, some spanning overflow pages; updates; deletes).
        let mut model: Vec<(i64, i64)> = Vec::new();
        let mut after: Vec<Vec<(i64, i64)>> = Vec::new();
        let mut next = 1;
        for _ in 0..40 {
            let tx = c.unchecked_transaction().unwrap();
            for _ in 0..1 + rng.below(5) {
                match rng.below(4) {
                    0 if !model.is_empty() => {
                        let i = rng.below(model.len());
                        tx.execute("DELETE FROM t WHERE n = ?1", [model[i].0]).unwrap();
                        model.remove(i);
                    }
                    1 if !model.is_empty() => {
                        let i = rng.below(model.len());
                        let size = rng.below(20_000) as i64;
                        tx.execute("UPDATE t SET body = zeroblob(?2) WHERE n = ?1", [model[i].0, size])
                            .unwrap();
                        model[i].1 = size;
                    }
                    _ => {
                        let size = rng.below(20_000) as i64;
                        tx.execute("INSERT INTO t VALUES (?1, randomblob(?2))", [next, size])
                            .unwrap();
                        model.push((next, size));
                        next += 1;
                    }
                }
            }
            tx.commit().unwrap();
            model.sort();
            after.push(model.clone());
        }
        let wal_path = dir.path().join("app.sqlite-wal");
        let wal = Wal::read(&wal_path).unwrap();
        assert_eq!(wal.commits.len(), after.len(), "one commit per transaction");
        for (k, expected) in after.iter().enumerate() {
            let copy = dir.path().join(format!("at-{k}.sqlite"));
            std::fs::copy(dir.path().join("base.sqlite"), &copy).unwrap();
            wal.apply(&copy, k).unwrap();
            assert_eq!(&rows(&copy), expected, "after commit {k}");
            let ok: String = Connection::open(&copy)
                .unwrap()
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok", "commit {k}");
            let pages = wal.commits[k].db_pages as u64 * wal.header.page_size as u64;
            assert_eq!(std::fs::metadata(&copy).unwrap().len(), pages, "commit {k}'s size");
        }
        assert_eq!(rows(&db), *after.last().unwrap());
        let sizes: Vec<u32> = wal.commits.iter().map(|k| k.db_pages).collect();
        assert!(
            sizes.windows(2).any(|w| w[1] < w[0]),
            "some commit shrank the database: {sizes:?}"
        );
    }

    #[test]
    fn a_damaged_frame_ends_the_log_at_the_commit_before_it_and_a_restarted_log_is_a_new_generation() {
        let mut rng = Rng(seed());
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = fresh(dir.path());
        for i in 0..10 {
            c.execute("INSERT INTO t VALUES (?1, randomblob(3000))", [i]).unwrap();
        }
        let wal_path = dir.path().join("app.sqlite-wal");
        let whole = Wal::read(&wal_path).unwrap();
        assert_eq!(whole.commits.len(), 10);
        // One byte of a random frame's page flipped: its checksum, and every
        // later one, fail; what was committed before it still reads.
        let copy = dir.path().join("damaged-wal");
        std::fs::copy(&wal_path, &copy).unwrap();
        let frames: usize = whole.commits.iter().map(|k| k.pages.len()).sum();
        let victim = rng.below(frames);
        let mut bytes = std::fs::read(&copy).unwrap();
        let frame_len = FRAME_HEADER + whole.header.page_size as usize;
        let at = HEADER + victim * frame_len + FRAME_HEADER + rng.below(whole.header.page_size as usize);
        bytes[at] ^= 0x40;
        std::fs::write(&copy, &bytes).unwrap();
        let damaged = Wal::read(&copy).unwrap();
        // The commits whose frames all lie before the damaged one.
        let before = whole
            .commits
            .iter()
            .scan(0, |end, k| {
                *end += k.pages.len();
                Some(*end)
            })
            .filter(|&end| end <= victim)
            .count();
        assert_eq!(damaged.commits.len(), before, "frame {victim} damaged");
        assert_eq!(&damaged.commits[..], &whole.commits[..before]);

        // A checkpoint that empties the log, then writes: SQLite starts the
        // log over with new salts; the old generation's frames beyond the new
        // ones (still in the file) are not read.
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
        c.execute("INSERT INTO t VALUES (100, randomblob(10))", []).unwrap();
        let restarted = Wal::read(&wal_path).unwrap();
        assert_ne!(restarted.header.salt, whole.header.salt);
        assert_eq!(restarted.commits.len(), 1, "{restarted:?}");
        assert!(std::fs::metadata(&wal_path).unwrap().len() > 2 * (FRAME_HEADER as u64 + 4096));

        for bad in [&b"not a log"[..], &[0u8; 64][..]] {
            std::fs::write(&copy, bad).unwrap();
            assert!(matches!(Wal::read(&copy), Err(WalError::Format(_))));
        }
    }
}
