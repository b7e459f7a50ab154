//! PostgreSQL, two ways.
//!
//! Physical (`postgresql`): `pg_basebackup` over the replication protocol
//! writes the whole cluster as one tar stream, the WAL needed for
//! consistency included (`-X fetch`), straight into the repository (no
//! local copy). Recovery unpacks the backup next to the data directory
//! while the server still runs (set to replay to the backup's consistency
//! point and promote to a new timeline), then stops the server, swaps the
//! directories, starts it and waits until it answers a query; only then is
//! the old directory removed. If anything fails after the stop, the old
//! directory is put back and the server started again.
//!
//! Logical (`postgresql-logical`): `pg_dump -Fc` of one database; recovery
//! is `pg_restore --clean --if-exists --single-transaction`, so a failed
//! restore rolls back and leaves the database as it was.
//!
//! Passwords in connection URLs are taken out of the URL and passed as
//! PGPASSWORD: never in argv (visible to `ps`), masked in messages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strongbox_repo::Source;

use crate::process::Tool;
use crate::{BackupFiles, Error, Log, setting};

/// The name of the base backup inside a snapshot.
pub const BASE_TAR: &str = "base.tar";
/// The name of a logical dump inside a snapshot.
pub const DUMP: &str = "database.dump";
/// How long a started server has to answer its first query.
const START_WAIT: Duration = Duration::from_secs(120);

/// Where and how to connect, with the password held apart.
struct Conn {
    url: String,
    password: Option<String>,
    bin_dir: Option<PathBuf>,
}

impl Conn {
    fn from_connection(c: &serde_json::Value, engine: &'static str) -> Result<Self, Error> {
        let raw = setting(c, engine, "url", "\"postgresql://postgres@127.0.0.1:5432/postgres\"")?;
        let bad = |reason: String| Error::BadConnection { engine, reason };
        let mut url = url::Url::parse(raw).map_err(|e| bad(format!("\"url\" is not a URL ({e})")))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad("\"url\" must start with postgresql://".into()));
        }
        let password = url.password().map(|p| percent_decode(p));
        url.set_password(None).map_err(|()| bad("\"url\" has no host".into()))?;
        let bin_dir = c.get("bin_dir").and_then(|v| v.as_str()).map(PathBuf::from);
        Ok(Conn {
            url: url.to_string(),
            password,
            bin_dir,
        })
    }

    fn tool(&self, program: &str) -> Tool {
        let path = match &self.bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let mut t = Tool::new(path, program);
        if let Some(p) = &self.password {
            t.secret_env("PGPASSWORD", p);
        }
        t
    }

    /// Runs one query with psql; its output, trimmed.
    fn query(&self, sql: &str) -> Result<String, Error> {
        let mut t = self.tool("psql");
        t.command
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &self.url, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5");
        Ok(t.run()?.trim().to_string())
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("p={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

pub struct PgPhysical {
    conn: Conn,
    data_dir: PathBuf,
    stop_command: String,
    start_command: String,
}

impl PgPhysical {
    pub fn from_connection(c: &serde_json::Value) -> Result<Self, Error> {
        let engine = "postgresql";
        Ok(PgPhysical {
            conn: Conn::from_connection(c, engine)?,
            data_dir: PathBuf::from(setting(c, engine, "data_dir", "\"/var/lib/postgresql/15/main\"")?),
            stop_command: setting(c, engine, "stop_command", "\"pg_ctlcluster 15 main stop -m fast\"")?.into(),
            start_command: setting(c, engine, "start_command", "\"pg_ctlcluster 15 main start\"")?.into(),
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

    /// Starts the server and waits until it answers a query.
    fn start_and_wait(&self) -> Result<(), Error> {
        self.shell(&self.start_command, "the start command")?;
        let deadline = Instant::now() + START_WAIT;
        loop {
            match self.conn.query("SELECT 1") {
                Ok(one) if one == "1" => return Ok(()),
                Ok(other) => return Err(Error::Failed(format!("SELECT 1 answered {other:?}"))),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::Failed(format!(
                        "the server did not answer within {} s: {e}",
                        START_WAIT.as_secs()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
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
}

impl crate::Engine for PgPhysical {
    fn backup(&self, _scratch: &Path) -> Result<Vec<Source>, Error> {
        let mut t = self.conn.tool("pg_basebackup");
        t.command.args([
            "-d",
            &self.conn.url,
            "-D",
            "-",
            "--format=tar",
            "--wal-method=fetch",
            "--checkpoint=fast",
            "--label=strongbox",
        ]);
        Ok(vec![Source::new(BASE_TAR, t.output_stream()?)])
    }

    fn recover(&self, backup: &dyn BackupFiles, _scratch: &Path, log: Log) -> Result<String, Error> {
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
        unpack(backup.open(BASE_TAR)?, &staging, &owner)?;
        log(format!(
            "backup unpacked into {}; stopping the server",
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

/// Settings for the recovered server's first start: replay the backup's
/// own WAL (in pg_wal; there is no archive to fetch from, hence `false`) up
/// to its consistency point, then promote. The promotion starts a new
/// timeline, so the WAL the recovered server writes never takes the names
/// of segments the abandoned history already archived.
const RECOVERY_SETTINGS: &str = "\n# Added by a Strongbox recovery; read only while recovery.signal exists.\n\
    restore_command = 'false'\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\n";

/// Unpacks a base backup tar into a new directory owned like `like`, set
/// up to recover to the backup's consistency point on its first start.
fn unpack(tar: impl std::io::Read, dir: &Path, like: &std::fs::Metadata) -> Result<(), Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::create_dir(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    let result = unpack_entries(&mut archive, dir)
        .map_err(|e| Error::io("unpacking the base backup", e))
        .and_then(|()| {
            use std::io::Write;
            std::fs::write(dir.join("recovery.signal"), "").map_err(|e| Error::io("recovery.signal", e))?;
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(dir.join("postgresql.auto.conf"))
                .and_then(|mut f| f.write_all(RECOVERY_SETTINGS.as_bytes()))
                .map_err(|e| Error::io("postgresql.auto.conf", e))
        })
        .and_then(|()| {
            // PostgreSQL refuses a data directory others can read.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(dir.display(), e))
        })
        .and_then(|()| chown_tree(dir, like.uid(), like.gid()));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Unpacks every entry but the lock file of a Unix socket that lived in
/// the data directory: copied along by pg_basebackup, it would make the
/// recovered server believe another one still runs.
fn unpack_entries(archive: &mut tar::Archive<impl std::io::Read>, dir: &Path) -> std::io::Result<()> {
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if path.components().count() == 1 && name.starts_with(".s.PGSQL.") {
            continue;
        }
        entry.unpack_in(dir)?;
    }
    Ok(())
}

/// Files unpacked by root must belong to the server's user.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("chown {}", path.display()), e))?;
    if std::fs::symlink_metadata(path)
        .map_err(|e| Error::io(path.display(), e))?
        .is_dir()
    {
        for entry in std::fs::read_dir(path).map_err(|e| Error::io(path.display(), e))? {
            chown_tree(&entry.map_err(|e| Error::io(path.display(), e))?.path(), uid, gid)?;
        }
    }
    Ok(())
}

pub struct PgLogical {
    conn: Conn,
}

impl PgLogical {
    pub fn from_connection(c: &serde_json::Value) -> Result<Self, Error> {
        Ok(PgLogical {
            conn: Conn::from_connection(c, "postgresql-logical")?,
        })
    }
}

impl crate::Engine for PgLogical {
    fn backup(&self, _scratch: &Path) -> Result<Vec<Source>, Error> {
        let mut t = self.conn.tool("pg_dump");
        t.command
            .args(["--format=custom", "--compress=0", "-d", &self.conn.url]);
        Ok(vec![Source::new(DUMP, t.output_stream()?)])
    }

    fn recover(&self, backup: &dyn BackupFiles, _scratch: &Path, log: Log) -> Result<String, Error> {
        let dump = backup.open(DUMP)?;
        log("restoring with pg_restore --clean in one transaction".into());
        let mut t = self.conn.tool("pg_restore");
        t.command.args([
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--exit-on-error",
            "-d",
            &self.conn.url,
        ]);
        t.feed(dump)?;
        Ok("pg_restore completed in one transaction".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_leave_the_url() {
        let c = Conn::from_connection(
            &serde_json::json!({"url": "postgresql://app:s%40cret@127.0.0.1:5432/shop"}),
            "postgresql-logical",
        )
        .unwrap();
        assert_eq!(c.url, "postgresql://app@127.0.0.1:5432/shop");
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"url": "mysql://x"}),
            serde_json::json!({"url": "::"}),
        ] {
            let e = Conn::from_connection(&bad, "postgresql").err().unwrap().to_string();
            assert!(e.contains("url"), "{e}");
        }
    }
}
