//! A PostgreSQL data directory as backup files, and back: what a base
//! backup leaves out (as `pg_basebackup` does), the directory list that
//! restores empty directories, WAL segment names, and the set-up of a
//! restored directory for its first start.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::pitr::{Lsn, segment_name, segment_number};
use crate::Error;

/// The snapshot file listing every directory (empty ones included), one
/// relative path per line; not part of the restored data directory.
pub const DIRECTORIES: &str = ".strongbox-directories";

/// Directories whose contents a base backup leaves out (the directory
/// itself is kept): runtime state, rebuilt or meaningless after recovery.
/// `pg_wal` is left out here and its needed segments added separately.
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files a base backup leaves out, wherever they are.
fn excluded_file(name: &str, top: bool) -> bool {
    name == "pg_internal.init"
        || top
            && (matches!(
                name,
                "postmaster.pid"
                    | "postmaster.opts"
                    | "backup_label"
                    | "tablespace_map"
                    | "recovery.signal"
                    | "standby.signal"
                    | "postgresql.auto.conf.tmp"
                    | "current_logfiles.tmp"
            ) || name.starts_with(".s.PGSQL."))
}

pub struct DataFile {
    /// Relative to the data directory, `/`-separated.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// Every file to back up, and every directory (relative).
pub fn walk(data_dir: &Path) -> Result<(Vec<DataFile>, Vec<String>), Error> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut pending = vec![(data_dir.to_path_buf(), String::new())];
    while let Some((dir, rel)) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // A directory dropped while the backup runs (a dropped database):
            // WAL replay drops it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let meta = match std::fs::metadata(entry.path()) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(entry.path().display(), e)),
            };
            if name.starts_with("pgsql_tmp") {
                continue; // temporary files of running queries
            }
            if meta.is_dir() {
                if rel.is_empty()
                    && name == "pg_tblspc"
                    && std::fs::read_dir(entry.path()).is_ok_and(|mut d| d.next().is_some())
                {
                    return Err(Error::Failed(
                        "the cluster has tablespaces outside its data directory, which the postgresql engine does \
                         not back up yet"
                            .into(),
                    ));
                }
                dirs.push(child.clone());
                if !(rel.is_empty() && EMPTY_DIRS.contains(&name.as_str())) {
                    pending.push((entry.path(), child));
                }
            } else if meta.is_file() && !excluded_file(&name, rel.is_empty()) {
                files.push(DataFile {
                    name: child,
                    path: entry.path(),
                    size: meta.len(),
                });
            }
        }
    }
    dirs.push("pg_wal/archive_status".into());
    dirs.sort();
    dirs.dedup();
    // Big relation files first: the pipeline's threads stay busy while the
    // many small catalog files follow.
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));
    Ok((files, dirs))
}

/// A file opened when first read; a file dropped since the walk reads as
/// empty (WAL replay drops it again).
pub struct LazyFile {
    path: PathBuf,
    file: Option<strongbox_repo::BackupFile>,
    gone: bool,
}

impl LazyFile {
    pub fn new(path: PathBuf) -> Self {
        LazyFile {
            path,
            file: None,
            gone: false,
        }
    }
}

impl Read for LazyFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.gone {
            return Ok(0);
        }
        if self.file.is_none() {
            match strongbox_repo::BackupFile::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.gone = true;
                    return Ok(0);
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))),
            }
        }
        self.file.as_mut().expect("opened above").read(buf)
    }
}

/// The WAL segment names from `first` to `last`, inclusive, on one timeline.
pub fn wal_segments(first: &str, last: &str, segment_size: u64) -> Result<Vec<String>, Error> {
    let parse = |name: &str| -> Result<(u32, u64), Error> {
        let bad = || Error::Failed(format!("{name:?} is not a WAL segment name"));
        let timeline = name.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok());
        let segment = (name.len() == 24).then(|| segment_number(name, segment_size)).flatten();
        Ok((timeline.ok_or_else(bad)?, segment.ok_or_else(bad)?))
    };
    let ((tli, from), (tli_last, to)) = (parse(first)?, parse(last)?);
    if tli != tli_last || to < from {
        return Err(Error::Failed(format!(
            "WAL range {first}..{last} is not on one timeline"
        )));
    }
    Ok((from..=to)
        .map(|seg| segment_name(tli, Lsn(seg * segment_size), segment_size))
        .collect())
}

/// Where a recovered cluster's first start replays to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The backup's consistency point (`recovery_target = 'immediate'`).
    Consistent,
    /// Up to the last commit at or before a moment.
    Time(OffsetDateTime),
    /// Through the first record that starts at or after a position.
    Lsn(Lsn),
}

/// The settings of a recovered cluster's first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverySettings {
    pub replay: Replay,
    /// The timeline whose history replay follows (the backup's if `None`).
    pub timeline: Option<u32>,
    /// Fetches archived WAL; without one, only the backup's own WAL replays.
    pub restore_command: Option<String>,
}

const BEGIN: &str = "# Added by a Strongbox recovery; read only while recovery.signal exists.";
const END: &str = "# End of the Strongbox recovery settings.";

/// Replay to the target, then pause: the recovery checks where replay
/// stopped before promoting, so a wrong stop never becomes a timeline.
/// Promotion starts a new timeline, so the WAL the recovered server writes
/// never takes the names of segments the abandoned history archived; with
/// a restore_command PostgreSQL also sees the archive's timelines and
/// numbers the new one past all of them. Pausing needs hot_standby.
fn recovery_settings(s: &RecoverySettings) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let goal = match s.replay {
        Replay::Consistent => "recovery_target = 'immediate'".to_string(),
        Replay::Time(at) => {
            let format = time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00"
            );
            let at = at.to_offset(time::UtcOffset::UTC).format(&format).unwrap_or_default();
            format!("recovery_target_time = {}", quote(&at))
        }
        Replay::Lsn(lsn) => format!("recovery_target_lsn = '{lsn}'\nrecovery_target_inclusive = on"),
    };
    let timeline = s.timeline.map_or_else(|| "'current'".to_string(), |t| format!("'{t}'"));
    format!(
        "{BEGIN}\nrestore_command = {}\n{goal}\nrecovery_target_timeline = {timeline}\n\
         recovery_target_action = 'pause'\nhot_standby = on\n{END}\n",
        quote(s.restore_command.as_deref().unwrap_or("false"))
    )
}

/// The settings file without recovery settings: an earlier recovery's
/// (ours or another tool's) would name a second target, which PostgreSQL
/// refuses; after a recovery, ours have done their work.
pub fn without_recovery_settings(conf: &str) -> String {
    let recovery = |line: &str| {
        let name = line.trim_start().split(['=', ' ', '\t']).next().unwrap_or_default();
        name.starts_with("recovery_target") || name == "restore_command"
    };
    let mut ours = false;
    let mut kept = String::new();
    for line in conf.lines() {
        match line {
            _ if line.starts_with(BEGIN) || line.starts_with("# Added by a Strongbox recovery") => ours = true,
            END => ours = false,
            _ if ours || recovery(line) => {}
            _ => {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    kept
}

/// Turns a directory the backup's files were restored into into a data
/// directory ready to start: its empty directories, the recovery settings,
/// PostgreSQL's modes, and the owner `(uid, gid)`.
pub fn prepare(dir: &Path, owner: (u32, u32), settings: &RecoverySettings) -> Result<(), Error> {
    let list = dir.join(DIRECTORIES);
    let dirs = std::fs::read_to_string(&list).map_err(|e| Error::io("the backup's directory list", e))?;
    for rel in dirs.lines().filter(|l| !l.is_empty()) {
        let relative = Path::new(rel);
        if !relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::Failed(format!("the backup's directory list names {rel:?}")));
        }
        let path = dir.join(relative);
        std::fs::create_dir_all(&path).map_err(|e| Error::io(path.display(), e))?;
    }
    std::fs::remove_file(&list).map_err(|e| Error::io(list.display(), e))?;
    std::fs::write(dir.join("recovery.signal"), "").map_err(|e| Error::io("recovery.signal", e))?;
    let auto = dir.join(AUTO_CONF);
    let earlier = match std::fs::read_to_string(&auto) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(AUTO_CONF, e)),
    };
    std::fs::write(
        &auto,
        without_recovery_settings(&earlier) + &recovery_settings(settings),
    )
    .map_err(|e| Error::io(AUTO_CONF, e))?;
    own_tree(dir, owner.0, owner.1)
}

/// Where ALTER SYSTEM keeps its settings, and a recovery its own.
pub const AUTO_CONF: &str = "postgresql.auto.conf";

/// Writes every file and directory under `dir` to disk (fsync).
pub fn sync_tree(dir: &Path) -> Result<(), Error> {
    let io = |e| Error::io(format!("syncing {}", dir.display()), e);
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).map_err(io)? {
            sync_tree(&entry.map_err(io)?.path())?;
        }
    }
    if meta.is_dir() || meta.is_file() {
        std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Files restored by root must belong to the server's user, readable by it
/// alone (PostgreSQL refuses a data directory others can read).
fn own_tree(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    let io = |e| Error::io(path.display(), e);
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io)?;
    let is_dir = std::fs::symlink_metadata(path).map_err(io)?.is_dir();
    let mode = if is_dir { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    if is_dir {
        for entry in std::fs::read_dir(path).map_err(io)? {
            own_tree(&entry.map_err(io)?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_segment_ranges_cross_log_ids() {
        let seg = 16 << 20;
        assert_eq!(
            wal_segments("0000000100000000000000FE", "000000010000000100000001", seg).unwrap(),
            [
                "0000000100000000000000FE",
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        assert_eq!(
            wal_segments("000000020000000000000003", "000000020000000000000003", seg)
                .unwrap()
                .len(),
            1
        );
        assert!(wal_segments("000000010000000000000003", "000000020000000000000004", seg).is_err());
        assert!(wal_segments("nonsense", "000000020000000000000004", seg).is_err());
    }

    #[test]
    fn an_earlier_recoverys_settings_give_way_to_the_new_target() {
        let restore = Some("x %f %p".to_string());
        let earlier = format!(
            "# Do not edit this file manually!\nport = 5433\n{}",
            recovery_settings(&RecoverySettings {
                replay: Replay::Time(time::macros::datetime!(2026-11-29 20:00:00 UTC)),
                timeline: Some(2),
                restore_command: restore.clone(),
            })
        ) + "restore_command = 'pgbackrest archive-get %f \"%p\"'\nwork_mem = '8MB'\n";
        let conf = without_recovery_settings(&earlier)
            + &recovery_settings(&RecoverySettings {
                replay: Replay::Lsn(Lsn(0x300_0060)),
                timeline: None,
                restore_command: restore,
            });
        assert!(
            conf.contains("port = 5433")
                && conf.contains("work_mem")
                && conf.contains("recovery_target_lsn = '0/3000060'")
                && conf.contains("recovery_target_timeline = 'current'"),
            "{conf}"
        );
        assert!(
            !conf.contains("recovery_target_time =") && !conf.contains("pgbackrest"),
            "{conf}"
        );
        assert_eq!(conf.matches("restore_command").count(), 1, "{conf}");
        assert_eq!(conf.matches("hot_standby").count(), 1, "{conf}");
        // After the recovery, none of it stays.
        let after = without_recovery_settings(&conf);
        assert_eq!(
            after,
            "# Do not edit this file manually!\nport = 5433\nwork_mem = '8MB'\n"
        );
        assert!(
            recovery_settings(&RecoverySettings {
                replay: Replay::Time(time::macros::datetime!(2026-11-29 20:00:01.5 UTC)),
                timeline: Some(3),
                restore_command: None,
            })
            .contains("recovery_target_time = '2026-11-29 20:00:01.500000+00'\nrecovery_target_timeline = '3'")
        );
    }

    #[test]
    fn runtime_files_are_left_out_and_empty_directories_listed() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "base/1/1259",
            "base/1/pg_internal.init",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x",
            ".s.PGSQL.5432.lock",
            "base/pgsql_tmp/t1",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        std::fs::create_dir_all(d.path().join("pg_notify")).unwrap();
        let (files, dirs) = walk(d.path()).unwrap();
        let mut names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["PG_VERSION", "base/1/1259"]);
        for dir in [
            "base",
            "base/1",
            "pg_wal",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_notify",
        ] {
            assert!(dirs.iter().any(|d| d == dir), "{dir} in {dirs:?}");
        }
        assert!(!dirs.iter().any(|d| d.contains("pgsql_tmp")), "{dirs:?}");
    }
}
