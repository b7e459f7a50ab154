//! PostgreSQL, physical (`postgresql`): the whole cluster, read straight
//! from its data directory between `pg_backup_start` and `pg_backup_stop`
//! (PostgreSQL's non-exclusive backup API, as pgBackRest does), with the
//! WAL needed for consistency; each relation file is its own snapshot file,
//! so unchanged files deduplicate and restores write in parallel. A
//! temporary replication slot, held by the backup session, keeps that WAL
//! from being recycled until it has been read.
//!
//! Recovery is in `recovery`.

use std::path::{Path, PathBuf};

use strongbox_repo::Source;

use super::Conn;
use super::datadir::{self, DIRECTORIES, DataFile, LazyFile};
use super::pitr::{self, BasePosition, Lsn};
use crate::{BackupFiles, Error, PointInTime, Recovered, RecoveryContext, RecoveryTarget, WalArchive, setting};

pub struct PgPhysical {
    pub(super) conn: Conn,
    pub(super) data_dir: PathBuf,
    pub(super) control: Control,
}

/// Who starts and stops the server on the data directory.
pub(super) enum Control {
    /// The deployment's own server: its start and stop commands.
    Commands { start: String, stop: String },
    /// A copy recovered beside the deployment (`copy`): Strongbox runs it.
    Copy(super::copy::Copy),
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
        let mut client = conn.client()?;
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
            let file = strongbox_repo::BackupFile::open(&path)
                .map_err(|e| Error::io(format!("WAL segment {}", path.display()), e))?;
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
    /// Where the backup's position goes when its session ends.
    position: std::sync::mpsc::Sender<crate::Position>,
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
                    let _ = self.position.send(crate::Position::Wal(position));
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
    /// Base backups plus archived WAL; recovery replaces the data directory.
    pub const CAPABILITIES: crate::Capabilities = crate::Capabilities {
        point_in_time: true,
        online_recovery: false,
        ships_log: false,
        streams_wal: true,
        recovers_into: &["data_dir", "port", "running"],
    };

    pub fn from_connection(c: &serde_json::Value) -> Result<Self, Error> {
        let engine = "postgresql";
        crate::only_settings(
            c,
            engine,
            &["url", "bin_dir", "data_dir", "stop_command", "start_command"],
        )?;
        Ok(PgPhysical {
            conn: Conn::from_connection(c, engine)?,
            data_dir: PathBuf::from(setting(c, engine, "data_dir", "\"/var/lib/postgresql/15/main\"")?),
            control: Control::Commands {
                start: setting(c, engine, "start_command", "\"pg_ctlcluster 15 main start\"")?.into(),
                stop: setting(c, engine, "stop_command", "\"pg_ctlcluster 15 main stop -m fast\"")?.into(),
            },
        })
    }
}

impl crate::Engine for PgPhysical {
    fn capabilities(&self) -> crate::Capabilities {
        Self::CAPABILITIES
    }

    /// Its WAL streamed into the repository (`receive`).
    fn log_shipping(&self) -> Option<&dyn crate::ShipsLog> {
        Some(self)
    }

    fn accesses(&self) -> Vec<crate::Access> {
        let mut out = self.conn.accesses();
        out.push(crate::Access::DataDirectory {
            setting: "data_dir",
            path: self.data_dir.clone(),
        });
        // A copy's server is run with pg_ctl from bin_dir, not by a command.
        if let Control::Commands { start, stop } = &self.control {
            for (setting, line) in [("stop_command", stop), ("start_command", start)] {
                out.push(crate::Access::Command {
                    setting,
                    line: line.clone(),
                });
            }
        }
        out
    }

    fn place(&self) -> Option<String> {
        Some(crate::place_of(&self.data_dir))
    }

    fn occupied(&self) -> Option<String> {
        self.copy_occupied()
    }

    /// A copy in a hidden data directory beside the deployment's, on a
    /// free port.
    fn drill_place(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let dir = self.sibling("drill").ok()?;
        crate::settings(serde_json::json!({"data_dir": dir, "port": crate::free_port()?}))
    }

    /// The copy reached consistency and answers (its recovery checked
    /// that); then the database's own checks.
    fn check(&self) -> Result<String, Error> {
        self.conn.check_database()
    }

    fn discard(&self) {
        self.discard_copy();
    }

    fn backup(&self, _cx: &crate::BackupContext) -> Result<crate::BackupStreams, Error> {
        let session = Session::start(&self.conn, &self.data_dir)?;
        // Walked after pg_backup_start: every file that exists at the
        // backup's start point is seen (files created later are in WAL).
        let (files, dirs) = datadir::walk(&self.data_dir)?;
        let (position, when_read) = crate::PositionWhenRead::pending();
        Ok(crate::BackupStreams {
            sources: Box::new(BackupSources {
                files: files.into_iter(),
                dirs: Some(dirs),
                session,
                data_dir: self.data_dir.clone(),
                tail: None,
                position,
            }),
            position: when_read,
        })
    }

    fn recover(
        &self,
        backup: &dyn BackupFiles,
        target: &RecoveryTarget,
        cx: &RecoveryContext,
    ) -> Result<Recovered, Error> {
        self.recover_in_place(backup, target, cx)
    }

    fn point_in_time(&self) -> Option<&dyn PointInTime> {
        Some(self)
    }
}

impl PointInTime for PgPhysical {
    fn probe(&self) -> Option<pitr::Live> {
        self.live()
    }

    fn first_commit_after(
        &self,
        wal: &dyn WalArchive,
        history: &pitr::History,
        from: Lsn,
        segment_size: u64,
        scratch: &Path,
    ) -> Result<Option<time::OffsetDateTime>, Error> {
        super::waldump::WalDump::new(self.conn.bin_dir(), wal, scratch)?.first_commit_after(history, from, segment_size)
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
