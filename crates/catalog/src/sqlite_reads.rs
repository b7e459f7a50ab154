//! Reads of one job on the calling thread, with a SQLite connection of
//! that thread's own, for the requests clients repeat most (job status,
//! refusals of a busy deployment). Through the pool each read is two
//! hand-offs to sqlx's SQLite thread and back, which profiling showed cost
//! three times the request's own work; the read itself is a primary-key or
//! index lookup in the page cache, microseconds, and in WAL mode never
//! waits for a writer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::Job;

pub(crate) struct SqliteReads {
    pub(crate) path: PathBuf,
}

impl SqliteReads {
    /// `None` if this path failed (the caller then reads through the pool).
    pub(crate) fn job(&self, sql: &str, params: impl rusqlite::Params) -> Option<Option<Job>> {
        thread_local! {
            static READERS: RefCell<HashMap<PathBuf, rusqlite::Connection>> = RefCell::default();
        }
        READERS.with_borrow_mut(|readers| {
            let read = |c: &rusqlite::Connection| -> rusqlite::Result<Option<Job>> {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(params)?;
                Ok(rows.next()?.map(crate::rows::job))
            };
            let conn = match readers.entry(self.path.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let c = rusqlite::Connection::open_with_flags(
                        &self.path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .ok()?;
                    c.busy_timeout(Duration::from_millis(100)).ok()?;
                    c.pragma_update(None, "query_only", true).ok()?;
                    v.insert(c)
                }
            };
            match read(conn) {
                Ok(found) => Some(found),
                Err(_) => {
                    readers.remove(&self.path);
                    None
                }
            }
        })
    }
}
