//! A physical deployment's server seen from outside: whether it answers,
//! whether its process runs, what its data directory holds; stopping and
//! starting it, and watching a recovered one replay, pause and promote.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::physical::PgPhysical;
use super::pitr::{History, Live, Lsn};
use crate::process::Tool;
use crate::{Error, Log};

/// How long a server may make no progress (starting, replaying, stopping).
pub(super) const WAIT: Duration = Duration::from_secs(120);

/// What a recovery found before it started.
pub(super) struct Found {
    /// The server answers queries.
    pub answers: bool,
    /// A server process runs (answering or not): it must be stopped.
    pub running: bool,
    /// The data directory exists (it is moved aside, not deleted, until
    /// the recovered one serves).
    pub dir_exists: bool,
    /// For the job's activity log.
    pub description: String,
}

/// Where a paused replay stands.
#[derive(Debug)]
pub(super) struct Paused {
    pub lsn: Lsn,
    pub last_commit: Option<OffsetDateTime>,
}

const RFC3339_SQL: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

impl PgPhysical {
    pub(super) fn shell(&self, line: &str, what: &str) -> Result<(), Error> {
        let mut t = Tool::shell(line, what);
        if let Some(p) = &self.conn.password {
            t.secret(p);
        }
        t.run().map(drop)
    }

    /// The postmaster running on the data directory, if any: from its lock
    /// file, or (when the directory was wiped under it) by its working
    /// directory.
    fn postmaster_pid(&self) -> Option<u32> {
        let from_lock = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
            .filter(|pid| comm(*pid).is_some_and(|c| c.starts_with("postgres")));
        from_lock.or_else(|| self.postmaster_by_cwd())
    }

    fn postmaster_by_cwd(&self) -> Option<u32> {
        let dir = self.data_dir.to_string_lossy();
        let deleted = format!("{dir} (deleted)");
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cwd = std::fs::read_link(entry.path().join("cwd")).ok()?;
            let cwd = cwd.to_string_lossy();
            let postgres = |p: u32| comm(p).is_some_and(|c| c.starts_with("postgres"));
            // The postmaster: a postgres process whose parent is not one.
            ((cwd == dir || cwd == deleted) && postgres(pid) && !parent(pid).is_some_and(postgres)).then_some(pid)
        })
    }

    /// The postmaster, found through a backend (its parent).
    fn postmaster_of_backend(&self) -> Option<u32> {
        parent(self.conn.query("SELECT pg_backend_pid()").ok()?.parse().ok()?)
    }

    /// What the deployment looks like now.
    pub(super) fn found(&self) -> Result<Found, Error> {
        let dir = &self.data_dir;
        let answers = self.conn.query("SELECT 1").is_ok();
        let pid = self.postmaster_pid();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => Some(e.filter_map(Result::ok).map(|e| e.file_name()).collect::<Vec<_>>()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let mut description = match &entries {
            None => format!("the data directory {} missing", dir.display()),
            Some(names) if names.is_empty() => format!("the data directory {} empty", dir.display()),
            Some(names) if !dir.join("PG_VERSION").is_file() => {
                let postgres_like = ["base", "global", "pg_wal", "postgresql.auto.conf"]
                    .iter()
                    .any(|n| names.iter().any(|f| f == *n));
                if !postgres_like {
                    return Err(Error::Failed(format!(
                        "{} holds files but is not a PostgreSQL data directory (no PG_VERSION, base, global or \
                         pg_wal); nothing was changed: check the deployment's data_dir",
                        dir.display()
                    )));
                }
                format!("the data directory {} damaged (no PG_VERSION)", dir.display())
            }
            Some(_) if answers => "the server running".to_string(),
            Some(_) if pid.is_some() => format!(
                "the server's process running (pid {}) but not answering",
                pid.unwrap_or_default()
            ),
            Some(_) if dir.join("postmaster.pid").exists() => {
                "the server down, its postmaster.pid left behind (it crashed or was killed)".to_string()
            }
            Some(_) => "the server stopped".to_string(),
        };
        if entries.as_ref().is_some_and(|n| !n.is_empty()) && !dir.join("global/pg_control").is_file() {
            description += ", global/pg_control missing";
        }
        if entries
            .as_ref()
            .is_none_or(|n| n.is_empty() || !dir.join("PG_VERSION").is_file())
        {
            if answers {
                description += ", yet a server still answering";
            } else if let Some(pid) = pid {
                description += &format!(", yet its postmaster still running (pid {pid})");
            }
        }
        Ok(Found {
            answers,
            running: answers || pid.is_some(),
            dir_exists: entries.is_some(),
            description,
        })
    }

    /// Who owns the data directory (or, when it is gone, its parent):
    /// files restored by root are given to that user.
    pub(super) fn owner(&self) -> Result<(u32, u32), Error> {
        let parent = self.data_dir.parent().unwrap_or(Path::new("/"));
        let (path, meta) = match std::fs::metadata(&self.data_dir) {
            Ok(m) => (self.data_dir.as_path(), m),
            Err(_) => (
                parent,
                std::fs::metadata(parent).map_err(|e| Error::io(format!("{}", parent.display()), e))?,
            ),
        };
        if meta.uid() == 0 && nix_euid() == 0 {
            return Err(Error::Failed(format!(
                "cannot tell which user PostgreSQL runs as: {} belongs to root; create {} empty, owned by the \
                 PostgreSQL user, and retry",
                path.display(),
                self.data_dir.display()
            )));
        }
        Ok((meta.uid(), meta.gid()))
    }

    /// Stops a running server: its stop command, or (when that fails and
    /// the server runs on, e.g. without its lock file) a fast-shutdown
    /// signal to the postmaster, then an immediate one.
    pub(super) fn stop(&self, log: Log) -> Result<(), Error> {
        let Err(e) = self.stop_server() else {
            return Ok(());
        };
        let Some(pid) = self.postmaster_pid().or_else(|| self.postmaster_of_backend()) else {
            return if self.conn.query("SELECT 1").is_ok() {
                Err(e)
            } else {
                Ok(()) // it stopped after all
            };
        };
        log(format!(
            "the stop command failed ({e}); stopping the postmaster (pid {pid}) with a signal"
        ));
        for signal in ["INT", "QUIT"] {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Ok(());
            }
        }
        Err(Error::Failed(format!("the server (pid {pid}) did not stop: {e}")))
    }

    /// Stops whatever runs on the data directory, best effort (a recovered
    /// server that failed its checks).
    pub(super) fn stop_quietly(&self) {
        if self.postmaster_pid().is_some() || self.conn.query("SELECT 1").is_ok() {
            let _ = self.stop(&|_| {});
        }
    }

    /// Starts the server and waits until it has left recovery and answers.
    pub(super) fn start_and_wait(&self) -> Result<(), Error> {
        self.start_server()?;
        self.wait_until(
            "the server to answer outside recovery",
            |r| Ok((r == "f").then_some(())),
            "SELECT pg_is_in_recovery()",
        )
    }

    /// Polls `sql` until `done` accepts its answer; fails when the server
    /// process is gone or `WAIT` passes.
    fn wait_until<T>(
        &self,
        what: &str,
        mut done: impl FnMut(&str) -> Result<Option<T>, Error>,
        sql: &str,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.conn.query(sql) {
                Ok(answer) => {
                    if let Some(v) = done(&answer)? {
                        return Ok(v);
                    }
                }
                Err(e) if self.postmaster_pid().is_none() && !self.data_dir.join("postmaster.pid").exists() => {
                    let log = self.log_tail();
                    return Err(Error::Failed(if log.is_empty() {
                        format!("the server stopped while waiting for {what} (its log says why): {e}")
                    } else {
                        format!("the server stopped while waiting for {what}; its log ends: {log}")
                    }));
                }
                Err(_) => {}
            }
            if Instant::now() > deadline {
                return Err(Error::Failed(format!("waited {} s for {what}", WAIT.as_secs())));
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    /// Waits until replay pauses at its target; where it stopped. Replay
    /// may take long: the wait only ends when it stops making progress.
    pub(super) fn wait_paused(&self) -> Result<Paused, Error> {
        let sql = format!(
            "SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state(), pg_last_wal_replay_lsn(), \
             to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', {RFC3339_SQL})"
        );
        let mut progress = None;
        loop {
            let step = self.wait_until(
                "replay to reach its target",
                |answer| {
                    let f: Vec<&str> = answer.split('|').collect();
                    match f.as_slice() {
                        ["t", "paused", lsn, commit] => Ok(Some(Some(Paused {
                            lsn: lsn.parse().map_err(Error::Failed)?,
                            last_commit: parse_time(commit),
                        }))),
                        ["t", _, lsn, _] if Some(lsn.to_string()) != progress => {
                            progress = Some(lsn.to_string());
                            Ok(Some(None)) // moving: the wait starts over
                        }
                        ["t", ..] => Ok(None),
                        _ => Err(Error::Failed(format!(
                            "the recovered server left recovery without pausing at its target ({answer})"
                        ))),
                    }
                },
                &sql,
            )?;
            if let Some(paused) = step {
                return Ok(paused);
            }
        }
    }

    /// Ends a paused recovery: the server promotes to a new timeline.
    /// Returns that timeline and its history (from pg_wal). (Resuming
    /// replay, not `pg_promote()`: a paused startup process notices a
    /// promotion request only once a second, and the end-of-recovery
    /// checkpoint that resuming costs also leaves pg_control naming the
    /// new timeline, which tools such as pgBackRest check.)
    pub(super) fn promote(&self) -> Result<History, Error> {
        self.conn.query("SELECT pg_wal_replay_resume()")?;
        let timeline = self.wait_until(
            "the promotion",
            |r| Ok(u32::from_str_radix(r, 16).ok()),
            "SELECT CASE WHEN pg_is_in_recovery() THEN '' ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
        )?;
        let path = self.data_dir.join("pg_wal").join(format!("{timeline:08X}.history"));
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
        History::parse(timeline, &text).map_err(Error::Failed)
    }

    /// The live server's timeline and position, if it answers (a standby
    /// does not count: it cannot archive up to now).
    pub(super) fn live(&self) -> Option<Live> {
        let answer = self
            .conn
            .query(
                "SELECT CASE WHEN pg_is_in_recovery() THEN '' ELSE substr(pg_walfile_name(pg_current_wal_lsn()), \
                 1, 8) || '|' || pg_current_wal_lsn() END",
            )
            .ok()?;
        let (timeline, lsn) = answer.split_once('|')?;
        Some(Live {
            timeline: u32::from_str_radix(timeline, 16).ok()?,
            lsn: lsn.parse().ok()?,
            at: OffsetDateTime::now_utc(),
        })
    }
}

/// A process's command name.
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

/// A process's parent.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces, so split after ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// This process's effective user (root may hand files to any owner).
pub(super) fn nix_euid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}
