//! SQLite: the online backup API, copying every page in one step, which
//! holds a single read transaction: the copy is the database as of one
//! commit, while other connections keep writing (in WAL mode) or wait.
//! The copy goes to a scratch file (the backup API needs a destination
//! database) that is unlinked at once and streamed into the repository.
//!
//! Recovery of a healthy database runs the backup API the other way: the
//! backup is restored to a scratch file, checked, then copied over the
//! live database inside one write transaction of the live database.
//! Connections other processes hold stay valid and see the recovered
//! content with their next read; until the copy commits they see the old
//! content, and a copy that fails midway rolls back, leaving the old
//! database as it was. A database file that is missing, or is not a
//! database any more, is replaced whole instead: the backup is restored
//! beside it, checked, synced and renamed over it (with the stale `-wal`
//! and `-shm` files, which would otherwise be replayed into it, removed).

mod check;
pub mod ship;
pub mod wal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use strongbox_repo::Source;

use crate::{BackupFiles, Error, Recovered, RecoveryContext, RecoveryTarget, backups_only};

/// Pages copied per step of a recovery, between progress reports.
const RECOVERY_STEP_PAGES: i32 = 4096;
/// How long a recovery or backup waits for other connections' locks.
const LOCK_WAIT: Duration = Duration::from_secs(60);

pub struct SqliteEngine {
    pub path: PathBuf,
}

/// The name the database has inside a snapshot.
pub const FILE_NAME: &str = "database.sqlite";

impl SqliteEngine {
    /// Recovery writes into the live file in one transaction.
    pub const CAPABILITIES: crate::Capabilities = crate::Capabilities {
        point_in_time: false,
        online_recovery: true,
        ships_log: true,
        streams_wal: false,
        recovers_into: &["path"],
    };

    pub fn from_connection(c: &serde_json::Value) -> Result<Self, Error> {
        crate::only_settings(c, "sqlite", &["path"])?;
        let path = crate::setting(c, "sqlite", "path", "\"/path/to/database.sqlite\"")?;
        Ok(SqliteEngine::new(PathBuf::from(path)))
    }

    pub fn new(path: PathBuf) -> Self {
        SqliteEngine { path }
    }
}

impl crate::Engine for SqliteEngine {
    fn capabilities(&self) -> crate::Capabilities {
        Self::CAPABILITIES
    }

    fn accesses(&self) -> Vec<crate::Access> {
        vec![crate::Access::DatabaseFile {
            setting: "path",
            path: self.path.clone(),
        }]
    }

    fn backup(&self, cx: &crate::BackupContext) -> Result<crate::BackupStreams, Error> {
        // With continuous archiving, the shipper takes the copy: it begins
        // a generation there, and this backup is its base.
        if let Some(base) = cx.shipper.and_then(|s| s.request_base()) {
            let base = base?;
            let position = crate::Position::ShippedBase(ship::BasePosition {
                generation: base.generation,
                taken_ms: base.taken_ms,
            });
            let size = base.file.metadata().map_err(|e| self.fail("base", e))?.len();
            let mut source = Source::new(FILE_NAME, base.file);
            source.size_hint = Some(size);
            return Ok(crate::BackupStreams {
                sources: strongbox_repo::sources(vec![source]),
                position: crate::PositionWhenRead::known(Some(position)),
            });
        }
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
        .map_err(|e| self.fail("open", e))?;
        src.busy_timeout(Duration::from_secs(30))
            .map_err(|e| self.fail("busy timeout", e))?;
        let copy = tempfile::NamedTempFile::new_in(cx.scratch).map_err(|e| self.fail("scratch file", e))?;
        {
            let mut dst = Connection::open(copy.path()).map_err(|e| self.fail("scratch database", e))?;
            let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| self.fail("backup", e))?;
            // -1: all pages in one step, i.e. one read transaction.
            let locked = format!(
                "sqlite {}: the database stayed locked for {} s",
                self.path.display(),
                LOCK_WAIT.as_secs()
            );
            self.step_to_end(&backup, -1, "backup", &locked, |_, _| Ok(()))?;
        }
        let (file, path) = copy.into_parts();
        drop(path); // unlinks; the open handle keeps the data until read
        let size = file.metadata().map_err(|e| self.fail("scratch file", e))?.len();
        let mut source = Source::new(FILE_NAME, file);
        source.size_hint = Some(size);
        Ok(crate::BackupStreams::without_position(strongbox_repo::sources(vec![
            source,
        ])))
    }

    fn recover(
        &self,
        backup: &dyn BackupFiles,
        target: &RecoveryTarget,
        cx: &RecoveryContext,
    ) -> Result<Recovered, Error> {
        let shipped = match target {
            RecoveryTarget::Shipped(t) => Some(t),
            other => {
                backups_only(other)?;
                None
            }
        };
        // The shipper, if one runs here, pushes what it holds (a replay
        // wants every transaction up to its moment) and ends its
        // generation: the recovered database's history begins with the
        // base taken after the recovery, never inside the old one.
        let lost = match cx.shipper.and_then(|s| s.request_end()) {
            Some(ended) => {
                let lost = ended?;
                (cx.log)("the log shipper pushed what it held and ended its generation".into());
                lost
            }
            None => None,
        };
        let damage = self.damage();
        if let (Some(t), Some(lost)) = (shipped, lost)
            && lost.generation == t.generation
        {
            // What the database holds past the generation's end is in no
            // shipped log: a replay to its end (or to a moment after it)
            // would silently drop it. Unless the file is gone or damaged,
            // when that is the best there is; a position is exact anyway.
            let past_the_end = match t.until {
                ship::Until::Latest => true,
                ship::Until::Time(ms) => ms > lost.read_ms,
                ship::Until::Txn(_) => false,
            };
            if damage.is_none() && past_the_end {
                return Err(Error::Failed(format!(
                    "generation {} of the shipped log ended before this recovery ({}): what was committed since \
                     is in no shipped log, so recovering along it would lose it; a base backup begins a new \
                     generation at once (continuousArchiving in the deployment's details shows when it is live): \
                     ask again then. Nothing was changed",
                    lost.generation, lost.why
                )));
            }
            (cx.log)(format!(
                "generation {} ended before this recovery: {}",
                lost.generation, lost.why
            ));
        }
        let beside = match &damage {
            // In place: the scratch directory will do.
            None => cx.scratch.to_path_buf(),
            // Replaced whole: restored in the database's own directory, so
            // that a rename puts it in place.
            Some(_) => {
                let dir = self.dir();
                std::fs::create_dir_all(&dir).map_err(|e| self.fail("creating its directory", e))?;
                dir
            }
        };
        let copy = tempfile::Builder::new()
            .prefix(".strongbox-recovering")
            .tempfile_in(&beside)
            .map_err(|e| Error::io("scratch file", e))?;
        // Dropped after the connections below: a read-only one leaves its
        // (empty) `-wal` and `-shm` behind, named after the scratch file.
        let _sidecars = Sidecars(copy.path().to_path_buf());
        backup.restore_to(FILE_NAME, copy.path())?;
        let replayed = match shipped {
            Some(t) => Some(self.replay_shipped(copy.path(), t, cx)?),
            None => None,
        };
        let src = Connection::open_with_flags(copy.path(), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| Error::io("opening the restored backup", e))?;
        // A drill's check runs quick_check beside its other passes.
        let checked = if cx.drill { "restored" } else { "restored and checked" };
        if !cx.drill {
            let check: String = src
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| Error::io("checking the restored backup", e))?;
            if check != "ok" {
                return Err(Error::Failed(format!("the restored backup fails quick_check: {check}")));
            }
        }
        let Some(damage) = damage else {
            (cx.log)(format!("backup {checked}; copying it into {}", self.path.display()));
            let pages = self.copy_into_live(&src, |_, _| Ok(()))?;
            return Ok(Recovered::from(format!(
                "{pages} pages copied into {}{}",
                self.path.display(),
                replayed.unwrap_or_default()
            )));
        };
        drop(src);
        (cx.log)(format!(
            "found {damage}; backup {checked} beside it, replacing the file whole"
        ));
        self.replace_with(copy, !cx.drill)?;
        Ok(Recovered::from(format!(
            "{} replaced with the restored backup ({damage} before){}",
            self.path.display(),
            replayed.unwrap_or_default()
        )))
    }

    fn place(&self) -> Option<String> {
        Some(crate::place_of(&self.path))
    }

    fn occupied(&self) -> Option<String> {
        self.path.exists().then(|| format!("{} exists", self.path.display()))
    }

    /// A hidden file beside the database.
    fn drill_place(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let name = self.path.file_name()?.to_string_lossy();
        let place = self.path.with_file_name(format!(".{name}.strongbox-drill"));
        crate::settings(serde_json::json!({"path": place}))
    }

    /// What `PRAGMA integrity_check` checks, in linear time (`check`), and
    /// each table's rows.
    fn check(&self) -> Result<String, Error> {
        let counts = check::check(&self.path).map_err(|e| Error::Failed(format!("{}: {e}", self.path.display())))?;
        let counts: Vec<String> = counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
        Ok(format!(
            "integrity_check ok (quick_check, every index against its table); rows per table: {}",
            crate::listed(&counts)
        ))
    }

    fn discard(&self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(beside(&self.path, suffix));
        }
    }

    fn log_shipping(&self) -> Option<&dyn crate::ShipsLog> {
        Some(self)
    }
}

/// A database file's `-wal`, `-shm` or `-journal` (`suffix`).
fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(suffix);
    path.into()
}

/// Removes a database file's `-wal` and `-shm` when dropped.
struct Sidecars(PathBuf);

impl Drop for Sidecars {
    fn drop(&mut self) {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(beside(&self.0, suffix));
        }
    }
}

impl crate::ShipsLog for SqliteEngine {
    fn ship(&self, cx: ship::ShipContext) {
        ship::ship(&self.path, cx)
    }
}

impl SqliteEngine {
    /// Brings the restored base at `copy` forward by its generation's
    /// shipped transactions, to the target, and checks it got as far as
    /// the plan saw shipped. Returns words for the summary.
    fn replay_shipped(&self, copy: &Path, t: &ship::ShippedTarget, cx: &RecoveryContext) -> Result<String, Error> {
        let wal = cx
            .wal
            .ok_or_else(|| Error::Failed("replaying the shipped WAL needs the deployment's WAL archive".into()))?;
        let names = wal.names()?;
        let objects = ship::by_generation(names.iter().map(String::as_str))
            .remove(&t.generation)
            .unwrap_or_default();
        (cx.log)(format!(
            "base restored; replaying generation {} ({} shipped objects) to {:?}",
            t.generation,
            objects.len(),
            t.until
        ));
        let fetched = objects.into_iter().map(|(first, _, name)| {
            let data = wal
                .fetch(&name)?
                .ok_or_else(|| Error::Failed(format!("shipped WAL object {name} vanished from the archive")))?;
            Ok((first, data))
        });
        let done = ship::replay(copy, fetched, t.until)?;
        if done < t.at_least {
            return Err(Error::Failed(format!(
                "the shipped WAL of generation {} replays to transaction {} only; the plan saw {} shipped",
                t.generation, done, t.at_least
            )));
        }
        Ok(format!(
            ", replayed to transaction {} of generation {}",
            done, t.generation
        ))
    }

    /// Copies `src` over the live database in one write transaction, in
    /// steps; `after_step(remaining, total)` runs between steps (progress,
    /// and the tests' fault injection). Returns the page count.
    fn copy_into_live(
        &self,
        src: &Connection,
        after_step: impl FnMut(i32, i32) -> Result<(), Error>,
    ) -> Result<i32, Error> {
        let mut live = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| self.fail("open", e))?;
        live.busy_timeout(LOCK_WAIT).map_err(|e| self.fail("busy timeout", e))?;
        let copy = rusqlite::backup::Backup::new(src, &mut live).map_err(|e| self.fail("recovery", e))?;
        let locked = format!(
            "sqlite {}: other connections kept the database locked for {} s; nothing was changed",
            self.path.display(),
            LOCK_WAIT.as_secs()
        );
        self.step_to_end(&copy, RECOVERY_STEP_PAGES, "recovery", &locked, after_step)
    }

    /// Steps a backup-API copy to its end, `pages` per step (-1: all in
    /// one), waiting up to `LOCK_WAIT` for other connections' locks (then
    /// failing with `locked`); `after_step(remaining, total)` runs between
    /// steps. Returns the page count.
    fn step_to_end(
        &self,
        copy: &rusqlite::backup::Backup,
        pages: i32,
        what: &str,
        locked: &str,
        mut after_step: impl FnMut(i32, i32) -> Result<(), Error>,
    ) -> Result<i32, Error> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            let step = copy.step(pages).map_err(|e| self.fail(what, e))?;
            let p = copy.progress();
            match step {
                rusqlite::backup::StepResult::Done => return Ok(p.pagecount),
                rusqlite::backup::StepResult::More => after_step(p.remaining, p.pagecount)?,
                _ if std::time::Instant::now() > deadline => return Err(Error::Failed(locked.to_string())),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// What is wrong with the database file, if anything a recovery in
    /// place cannot mend: missing, or not a database (its header is gone).
    /// Damage deeper in the file is mended in place: the copy rewrites
    /// every page.
    fn damage(&self) -> Option<String> {
        if !self.path.exists() {
            return Some("the database file missing".into());
        }
        let header = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .and_then(|c| c.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0)));
        match header {
            Ok(_) => None,
            Err(rusqlite::Error::SqliteFailure(e, msg))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
                ) =>
            {
                Some(format!(
                    "the database file damaged ({})",
                    msg.unwrap_or_else(|| e.to_string())
                ))
            }
            Err(_) => None, // locked, or another trouble the copy reports itself
        }
    }

    /// Puts the restored file in the database's place: synced, the old
    /// file's owner and mode kept, stale journals removed, renamed over
    /// it, the directory synced.
    /// Puts `copy` in the database's place; `durable`: synced first, and
    /// the rename after (not for a drill's scratch file, removed soon).
    fn replace_with(&self, copy: tempfile::NamedTempFile, durable: bool) -> Result<(), Error> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let (file, path) = copy.into_parts();
        let like = std::fs::metadata(&self.path).or_else(|_| std::fs::metadata(self.dir()));
        if let Ok(m) = &like {
            let mode = if m.is_dir() { 0o644 } else { m.mode() & 0o7777 };
            let _ = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()));
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| self.fail("setting the mode", e))?;
        }
        if durable {
            file.sync_all().map_err(|e| self.fail("syncing the restored file", e))?;
        }
        for suffix in ["-wal", "-shm", "-journal"] {
            match std::fs::remove_file(beside(&self.path, suffix)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.fail("removing the stale journal", e)),
            }
        }
        path.persist(&self.path)
            .map_err(|e| self.fail("renaming the restored file", e.error))?;
        if !durable {
            return Ok(());
        }
        std::fs::File::open(self.dir())
            .and_then(|d| d.sync_all())
            .map_err(|e| self.fail("syncing its directory", e))
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Failed(format!("sqlite {}: {what}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Engine;
    use std::io::Read;

    /// A backup with no shipper: the streams.
    fn plain_backup(engine: &SqliteEngine, scratch: &Path) -> strongbox_repo::Sources {
        let cx = crate::BackupContext { scratch, shipper: None };
        engine.backup(&cx).unwrap().sources
    }

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
        let engine = SqliteEngine::new(db.clone());
        let mut sources = plain_backup(&engine, dir.path());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().unwrap();

        let mut bytes = Vec::new();
        sources.next().unwrap().unwrap().reader.read_to_end(&mut bytes).unwrap();
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

    /// A database of `rows` rows with a checksum-able content.
    fn database(path: &Path, rows: i64) -> Connection {
        let c = Connection::open(path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT); DELETE FROM t;",
        )
        .unwrap();
        c.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
             INSERT INTO t SELECT i, hex(randomblob(100)) FROM n",
            [rows],
        )
        .unwrap();
        c
    }

    fn rows(c: &Connection) -> Vec<(i64, String)> {
        let mut st = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn recovery_in_place_is_seen_by_a_connection_held_open_and_a_failed_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let held = database(&live, 120_000);
        let engine = SqliteEngine::new(live.clone());
        let mut sources = plain_backup(&engine, dir.path());
        let mut bytes = Vec::new();
        sources.next().unwrap().unwrap().reader.read_to_end(&mut bytes).unwrap();
        let backed_up = rows(&held);

        // Later writes, through the connection that stays open throughout.
        held.execute_batch("DELETE FROM t WHERE id % 3 = 0; UPDATE t SET v = 'changed' WHERE id % 7 = 0; INSERT INTO t(v) VALUES ('new');")
            .unwrap();
        let changed = rows(&held);
        assert_ne!(changed, backed_up);

        let restored = dir.path().join("restored.db");
        std::fs::write(&restored, &bytes).unwrap();
        let src = Connection::open(&restored).unwrap();

        // A copy that fails after its first step: the live database is untouched.
        let mut steps = 0;
        let err = engine
            .copy_into_live(&src, |remaining, total| {
                steps += 1;
                assert!(remaining < total, "pages were copied before the failure");
                Err(Error::Failed("injected failure".into()))
            })
            .unwrap_err();
        assert_eq!((steps, err.to_string().as_str()), (1, "injected failure"));
        assert_eq!(rows(&held), changed, "a failed recovery leaves the old content");
        let check: String = held.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");

        // The real recovery: the same open connection sees the backup's rows.
        let pages = engine.copy_into_live(&src, |_, _| Ok(())).unwrap();
        assert!(pages > RECOVERY_STEP_PAGES, "several steps: {pages} pages");
        assert_eq!(rows(&held), backed_up);
        let check: String = held.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        // And a new connection too.
        assert_eq!(rows(&Connection::open(&live).unwrap()), backed_up);
    }
}
