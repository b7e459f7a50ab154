//! PostgreSQL, physical (`postgresql`): the whole cluster, read straight
//! from its data directory between `pg_backup_start` and `pg_backup_stop`
//! (PostgreSQL's non-exclusive backup API, as pgBackRest does), with the
//! WAL needed for consistency; each relation file is its own snapshot file,
//! so unchanged files deduplicate and restores write in parallel. A
//! temporary replication slot, held by the backup session, keeps that WAL
//! from being recycled until it has been read.
//!
//! Recovery restores the backup next to the data directory while the
//! server still runs (set to replay to the backup's consistency point and
//! promote to a new timeline), then stops the server, swaps the
//! directories, starts it and waits until it answers a query; only then is
//! the old directory removed. If anything fails after the stop, the old
//! directory is put back and the server started again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strongbox_repo::{Source, Sources};

use super::Conn;
use super::datadir::{self, DIRECTORIES, DataFile, LazyFile, Target};
use super::pitr::{BasePosition, Lsn};
use crate::process::Tool;
use crate::{BackupFiles, Error, Log, setting};

/// How long a started server has to answer its first query.
const START_WAIT: Duration = Duration::from_secs(120);

pub struct PgPhysical {
    conn: Conn,
    data_dir: PathBuf,
    stop_command: String,
    start_command: String,
    /// Filled when a backup's session ends.
    position: Arc<Mutex<Option<BasePosition>>>,
}

fn db_error(what: &str) -> impl Fn(postgres::Error) -> Error + '_ {
    move |e| Error::Failed(format!("{what}: {e}"))
}

/// The session a backup runs in: PostgreSQL ends a non-exclusive backup,
/// and drops the temporary slot, when it closes.
struct Session {
    client: postgres::Client,
    version: i32,
    segment_size: u64,
}

impl Session {
    fn start(conn: &Conn, data_dir: &Path) -> Result<Session, Error> {
        let mut config: postgres::Config = conn
            .url
            .parse()
            .map_err(|e| Error::Failed(format!("connection URL: {e}")))?;
        if let Some(p) = &conn.password {
            config.password(p);
        }
        let mut client = config
            .connect(postgres::NoTls)
            .map_err(|e| Error::Failed(format!("connecting to {}: {e}", conn.url)))?;
        let row = client
            .query_one(
                "SELECT current_setting('data_directory'), current_setting('server_version_num')::int, \
                 (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), pg_is_in_recovery()",
                &[],
            )
            .map_err(db_error("reading the server's settings"))?;
        let (server_dir, version, segment_size, standby): (String, i32, i64, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let same = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| Some(a) == b.canonicalize().ok());
        if !same(Path::new(&server_dir), data_dir) {
            return Err(Error::Failed(format!(
                "the server's data directory is {server_dir}, not the deployment's data_dir {}; the postgresql \
                 engine reads the data directory itself and must run on the database's host",
                data_dir.display()
            )));
        }
        if standby {
            return Err(Error::Failed("the server is a standby; back up the primary".into()));
        }
        let slot = format!("strongbox_{}_{}", std::process::id(), rand_suffix());
        client
            .execute("SELECT pg_create_physical_replication_slot($1, true, true)", &[&slot])
            .map_err(db_error(
                "creating a temporary replication slot (needs REPLICATION or superuser)",
            ))?;
        let start = if version >= 150000 {
            "SELECT pg_backup_start('strongbox', true)"
        } else {
            "SELECT pg_start_backup('strongbox', true, false)"
        };
        client.execute(start, &[]).map_err(db_error("pg_backup_start"))?;
        Ok(Session {
            client,
            version,
            segment_size: segment_size as u64,
        })
    }

    /// Ends the backup: `backup_label`, the WAL segments from the backup's
    /// start to its end, and where the backup sits in the WAL history.
    fn stop(&mut self, data_dir: &Path) -> Result<(Vec<Source>, BasePosition), Error> {
        let stop = if self.version >= 150000 {
            "pg_backup_stop(false)"
        } else {
            "pg_stop_backup(false, false)"
        };
        // clock_timestamp() is read after the function in FROM has run.
        let stop = format!(
            "SELECT lsn::text, labelfile, spcmapfile, \
             to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM {stop}"
        );
        let row = self.client.query_one(&stop, &[]).map_err(db_error("pg_backup_stop"))?;
        let (lsn, label, spcmap, stopped): (String, String, Option<String>, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let position = base_position(&label, &lsn, &stopped, self.segment_size)?;
        let last: String = self
            .client
            .query_one("SELECT pg_walfile_name($1::text::pg_lsn)", &[&lsn])
            .map_err(db_error("naming the last WAL segment"))?
            .get(0);
        let first = position.start_segment();
        let mut tail = vec![Source::new("backup_label", std::io::Cursor::new(label.into_bytes()))];
        if let Some(map) = spcmap.filter(|m| !m.is_empty()) {
            tail.push(Source::new("tablespace_map", std::io::Cursor::new(map.into_bytes())));
        }
        for segment in datadir::wal_segments(&first, &last, self.segment_size)? {
            let path = data_dir.join("pg_wal").join(&segment);
            let file =
                std::fs::File::open(&path).map_err(|e| Error::io(format!("WAL segment {}", path.display()), e))?;
            let mut source = Source::new(format!("pg_wal/{segment}"), file);
            source.size_hint = Some(self.segment_size);
            tail.push(source);
        }
        Ok((tail, position))
    }
}

/// The backup's place in the WAL history, from its label and stop point.
fn base_position(label: &str, stop_lsn: &str, stopped: &str, segment_size: u64) -> Result<BasePosition, Error> {
    let bad = |e: String| Error::Failed(format!("reading the backup's WAL position: {e}"));
    let (timeline, start_lsn) = BasePosition::label_start(label).map_err(bad)?;
    let stop_time = time::OffsetDateTime::parse(stopped, &time::format_description::well_known::Rfc3339)
        .map_err(|e| bad(format!("{stopped:?}: {e}")))?;
    Ok(BasePosition {
        timeline,
        start_lsn,
        stop_lsn: stop_lsn.parse::<Lsn>().map_err(bad)?,
        stop_time,
        segment_size,
    })
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The data files, then (pulled only once they have all been read) the end
/// of the backup session and what it yields.
struct BackupSources {
    files: std::vec::IntoIter<DataFile>,
    dirs: Option<Vec<String>>,
    session: Session,
    data_dir: PathBuf,
    tail: Option<std::vec::IntoIter<Source>>,
    position: Arc<Mutex<Option<BasePosition>>>,
}

impl Iterator for BackupSources {
    type Item = std::io::Result<Source>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(f) = self.files.next() {
            let mut source = Source::new(f.name, LazyFile::new(f.path));
            source.size_hint = Some(f.size);
            return Some(Ok(source));
        }
        if self.tail.is_none() {
            match self.session.stop(&self.data_dir) {
                Ok((mut tail, position)) => {
                    *self.position.lock().unwrap_or_else(|p| p.into_inner()) = Some(position);
                    let list = self.dirs.take().unwrap_or_default().join("\n");
                    tail.push(Source::new(DIRECTORIES, std::io::Cursor::new(list.into_bytes())));
                    self.tail = Some(tail.into_iter());
                }
                Err(e) => {
                    self.tail = Some(Vec::new().into_iter());
                    return Some(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
        self.tail.as_mut()?.next().map(Ok)
    }
}

impl PgPhysical {
    pub fn from_connection(c: &serde_json::Value) -> Result<Self, Error> {
        let engine = "postgresql";
        Ok(PgPhysical {
            conn: Conn::from_connection(c, engine)?,
            data_dir: PathBuf::from(setting(c, engine, "data_dir", "\"/var/lib/postgresql/15/main\"")?),
            stop_command: setting(c, engine, "stop_command", "\"pg_ctlcluster 15 main stop -m fast\"")?.into(),
            start_command: setting(c, engine, "start_command", "\"pg_ctlcluster 15 main start\"")?.into(),
            position: Arc::default(),
        })
    }

    fn sibling(&self, suffix: &str) -> Result<PathBuf, Error> {
        let name = self
            .data_dir
            .file_name()
            .ok_or_else(|| Error::Failed(format!("data_dir {} has no name", self.data_dir.display())))?;
        Ok(self
            .data_dir
            .with_file_name(format!(".{}.strongbox-{suffix}", name.to_string_lossy())))
    }

    fn shell(&self, line: &str, what: &str) -> Result<(), Error> {
        let mut t = Tool::shell(line, what);
        if let Some(p) = &self.conn.password {
            t.secret(p);
        }
        t.run().map(drop)
    }

    /// Starts the server and waits until it has left recovery and answers
    /// a query. (During replay it already answers read-only queries: that
    /// is not yet the recovered database.)
    fn start_and_wait(&self) -> Result<(), Error> {
        self.shell(&self.start_command, "the start command")?;
        let deadline = Instant::now() + START_WAIT;
        loop {
            match self.conn.query("SELECT pg_is_in_recovery()") {
                Ok(r) if r == "f" => return Ok(()),
                Ok(r) if r == "t" && Instant::now() > deadline => {
                    return Err(Error::Failed(format!(
                        "the server was still replaying WAL after {} s",
                        START_WAIT.as_secs()
                    )));
                }
                Ok(r) if r == "t" => std::thread::sleep(Duration::from_millis(100)),
                Ok(other) => return Err(Error::Failed(format!("pg_is_in_recovery() answered {other:?}"))),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::Failed(format!(
                        "the server did not answer within {} s: {e}",
                        START_WAIT.as_secs()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Before replaying to a point in time: a commit later than any moment
    /// asked for (replay that runs out of WAL short of its target is an
    /// error, and only commits mark time), then the current segment
    /// switched out and archived, so the archive reaches the present.
    /// Skipped when the server does not answer: a broken server is a
    /// reason to recover, and the archive then ends where it ends.
    fn archive_up_to_now(&self, log: Log) {
        let switched = self
            .conn
            .query("SELECT txid_current()")
            .and_then(|_| self.conn.query("SELECT pg_walfile_name(pg_switch_wal())"));
        let segment = match switched {
            Ok(s) => s,
            Err(e) => {
                log(format!(
                    "the server did not switch WAL segments ({e}); replaying what is archived"
                ));
                return;
            }
        };
        let deadline = Instant::now() + START_WAIT;
        loop {
            match self
                .conn
                .query("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            {
                Ok(done) if done.as_str() >= segment.as_str() => return,
                _ if Instant::now() > deadline => {
                    log(format!(
                        "{segment} was not archived within {} s; replaying what is archived",
                        START_WAIT.as_secs()
                    ));
                    return;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A worker killed between the two renames of a swap leaves no data
    /// directory; the next attempt puts the old one back first.
    fn repair_interrupted_swap(&self, old: &Path, log: Log) -> Result<(), Error> {
        if !self.data_dir.exists() && old.exists() {
            std::fs::rename(old, &self.data_dir).map_err(|e| Error::io("restoring the old data directory", e))?;
            log(format!(
                "an earlier attempt stopped mid-swap; {} was put back",
                self.data_dir.display()
            ));
        }
        Ok(())
    }

    /// Restores the backup into `staging`, ready to start.
    fn stage(
        &self,
        backup: &dyn BackupFiles,
        staging: &Path,
        owner: &std::fs::Metadata,
        target: &Target,
    ) -> Result<(), Error> {
        std::fs::create_dir(staging).map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
        let result = backup
            .restore_tree(staging)
            .and_then(|()| datadir::prepare(staging, owner, target));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(staging);
        }
        result
    }
}

impl crate::Engine for PgPhysical {
    fn backup(&self, _scratch: &Path) -> Result<Sources, Error> {
        let session = Session::start(&self.conn, &self.data_dir)?;
        // Walked after pg_backup_start: every file that exists at the
        // backup's start point is seen (files created later are in WAL).
        let (files, dirs) = datadir::walk(&self.data_dir)?;
        Ok(Box::new(BackupSources {
            files: files.into_iter(),
            dirs: Some(dirs),
            session,
            data_dir: self.data_dir.clone(),
            tail: None,
            position: self.position.clone(),
        }))
    }

    fn backup_position(&self) -> Option<serde_json::Value> {
        let position = self.position.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        serde_json::to_value(position).ok()
    }

    fn recover(&self, backup: &dyn BackupFiles, scratch: &Path, log: Log) -> Result<String, Error> {
        self.recover_to(backup, &Target::Backup, scratch, log)
    }

    /// Recovers in place to `target`: the backup's consistency point, or a
    /// later moment or WAL position replayed from the WAL archive.
    fn recover_to(
        &self,
        backup: &dyn BackupFiles,
        target: &Target,
        _scratch: &Path,
        log: Log,
    ) -> Result<String, Error> {
        let (staging, old) = (self.sibling("recovering")?, self.sibling("old")?);
        self.repair_interrupted_swap(&old, log)?;
        let owner = std::fs::metadata(&self.data_dir)
            .map_err(|e| Error::io(format!("data directory {}", self.data_dir.display()), e))?;
        if !self.data_dir.join("PG_VERSION").is_file() {
            return Err(Error::Failed(format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION); nothing was changed",
                self.data_dir.display()
            )));
        }
        for leftover in [&staging, &old] {
            if leftover.exists() {
                std::fs::remove_dir_all(leftover).map_err(|e| Error::io(leftover.display(), e))?;
            }
        }
        if *target != Target::Backup {
            self.archive_up_to_now(log);
        }
        self.stage(backup, &staging, &owner, target)?;
        log(format!(
            "backup restored into {}; stopping the server",
            staging.display()
        ));

        self.shell(&self.stop_command, "the stop command").inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&staging);
        })?;
        let rename = |from: &Path, to: &Path| {
            std::fs::rename(from, to)
                .map_err(|e| Error::io(format!("renaming {} to {}", from.display(), to.display()), e))
        };
        rename(&self.data_dir, &old)?;
        rename(&staging, &self.data_dir)?;
        log("server stopped, data directories swapped; starting it".into());
        match self.start_and_wait() {
            Ok(()) => {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(format!("removing {}", old.display()), e))?;
                Ok(format!(
                    "the recovered server at {} answers queries",
                    self.data_dir.display()
                ))
            }
            Err(e) => {
                log(format!(
                    "the recovered server did not come up ({e}); putting the old data back"
                ));
                let _ = self.shell(&self.stop_command, "the stop command");
                let _ = std::fs::remove_dir_all(&self.data_dir);
                rename(&old, &self.data_dir)?;
                self.start_and_wait().map_err(|again| {
                    Error::Failed(format!(
                        "{e}; the old data directory was put back but the server did not start: {again}"
                    ))
                })?;
                Err(Error::Failed(format!(
                    "{e}; the old data directory was put back and the server restarted"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_label_gives_the_backups_place_in_the_wal_history() {
        let label = "START WAL LOCATION: 0/9000028 (file 000000020000000000000009)\n\
                     CHECKPOINT LOCATION: 0/9000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
                     START TIME: 2026-11-29 20:41:00 UTC\nLABEL: strongbox\nSTART TIMELINE: 2\n";
        let p = base_position(label, "0/9000138", "2026-11-29T20:41:01.250000Z", 16 << 20).unwrap();
        assert_eq!(
            (p.timeline, p.start_lsn, p.stop_lsn),
            (2, Lsn(0x900_0028), Lsn(0x900_0138))
        );
        assert_eq!(p.stop_time.unix_timestamp(), 1_795_984_861);
        assert!(base_position("LABEL: x\n", "0/1", "2026-11-29T20:41:01Z", 16 << 20).is_err());
    }
}
