//! SQLite: the online backup API, copying every page in one step, which
//! holds a single read transaction: the copy is the database as of one
//! commit, while other connections keep writing (in WAL mode) or wait.
//! The copy goes to a scratch file (the backup API needs a destination
//! database) that is unlinked at once and streamed into the repository.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use strongbox_repo::Source;

use crate::Error;

pub struct SqliteEngine {
    pub path: PathBuf,
}

/// The name the database has inside a snapshot.
pub const FILE_NAME: &str = "database.sqlite";

impl SqliteEngine {
    pub fn from_connection(c: &serde_json::Value) -> Result<Self, Error> {
        let path = c
            .get("path")
            .and_then(|p| p.as_str())
            .ok_or_else(|| Error::BadConnection {
                engine: "sqlite",
                reason: "needs {\"path\": \"/path/to/database.sqlite\"}".into(),
            })?;
        Ok(SqliteEngine {
            path: PathBuf::from(path),
        })
    }
}

impl crate::Engine for SqliteEngine {
    fn backup(&self, scratch: &Path) -> Result<Vec<Source>, Error> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::Failed(format!("sqlite {}: {what}: {e}", self.path.display()))
        };
        if !self.path.is_file() {
            return Err(Error::Failed(format!(
                "sqlite database {} does not exist",
                self.path.display()
            )));
        }
        let src = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail("open", &e))?;
        src.busy_timeout(Duration::from_secs(30))
            .map_err(|e| fail("busy timeout", &e))?;
        let copy = tempfile::NamedTempFile::new_in(scratch).map_err(|e| fail("scratch file", &e))?;
        {
            let mut dst = Connection::open(copy.path()).map_err(|e| fail("scratch database", &e))?;
            let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| fail("backup", &e))?;
            // -1: all pages in one step, i.e. one read transaction.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                match backup.step(-1).map_err(|e| fail("backup", &e))? {
                    rusqlite::backup::StepResult::Done => break,
                    _ if std::time::Instant::now() > deadline => {
                        return Err(Error::Failed(format!(
                            "sqlite {}: the database stayed locked for 60 s",
                            self.path.display()
                        )));
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        let (file, path) = copy.into_parts();
        drop(path); // unlinks; the open handle keeps the data until read
        let size = file.metadata().map_err(|e| fail("scratch file", &e))?.len();
        let mut source = Source::new(FILE_NAME, file);
        source.size_hint = Some(size);
        Ok(vec![source])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Engine;
    use std::io::Read;

    #[test]
    fn backup_is_one_consistent_commit_while_another_connection_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.db");
        let w = Connection::open(&db).unwrap();
        w.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        // A writer in another thread commits rows in batches of 10 until told to stop.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Connection::open(&db).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tx = c.transaction().unwrap();
                    for _ in 0..10 {
                        tx.execute("INSERT INTO t(v) VALUES (hex(randomblob(200)))", [])
                            .unwrap();
                    }
                    tx.commit().unwrap();
                    n += 10;
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let engine = SqliteEngine { path: db.clone() };
        let mut sources = engine.backup(dir.path()).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().unwrap();

        let mut bytes = Vec::new();
        sources.remove(0).reader.read_to_end(&mut bytes).unwrap();
        let restored = dir.path().join("restored.db");
        std::fs::write(&restored, &bytes).unwrap();
        let r = Connection::open(&restored).unwrap();
        let check: String = r.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
        assert_eq!(check, "ok");
        let rows: i64 = r.query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap();
        assert!(rows > 0 && rows < written as i64 + 1, "{rows} of {written}");
        assert_eq!(rows % 10, 0, "a whole number of commits: {rows}");
        let max: i64 = r.query_row("SELECT max(id) FROM t", [], |row| row.get(0)).unwrap();
        assert_eq!(max, rows, "no gaps: the copy is a prefix of the commit history");
    }
}
