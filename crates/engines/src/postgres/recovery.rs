//! Physical recovery in place, from whatever state the deployment is in:
//! running, stopped, crashed, unable to start, damaged, empty or gone.
//!
//! The backup is restored next to the data directory (the server, if it
//! runs, keeps serving meanwhile), set to replay to its target and pause
//! there. Then a running server is stopped (one that is down is not), the
//! data directory (if any) moved aside, the restored one moved in, and the
//! server started. Where replay paused is checked against the plan before
//! the server is promoted to a new timeline, and the new timeline's
//! history against it again after; only then is the old directory removed.
//! If anything fails after the swap, the old directory is put back and a
//! server that ran before is started again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::datadir::{self, AUTO_CONF, RecoverySettings, Replay};
use super::physical::{Control, PgPhysical};
use super::pitr::{self, Lsn, Reached};
use super::server::{Paused, WAIT};
use super::waldump::{FLUSH_MARKER, LastCommit, RunEnd, WalDump};
use crate::{BackupFiles, Error, Log, PitrTarget, Recovered, RecoveryContext, RecoveryTarget};

/// How long a recovery waits for the current segment to be archived when
/// archive_command was failing already: a few of its retries.
const FAILING_ARCHIVE_WAIT: Duration = Duration::from_secs(5);

/// Where prefetched WAL waits, inside `pg_wal` (see `wal-fetch`).
pub const PREFETCH_SPOOL: &str = ".strongbox-prefetch";

/// A position of the plan's history at or after which replay stops, on
/// the stretch it stops on. PostgreSQL writes the new timeline's history as
/// that of `recovery_target_timeline` plus where replay stopped; naming the
/// timeline of that stretch, rather than the history's own when replay
/// stops on an ancestor's stretch before later timelines began, keeps the
/// file's switch points increasing. Out of order, PostgreSQL's own readers
/// place a position just before the new switch point on the ancestor, as
/// far as its old end: a replication slot made then streams the ancestor's
/// WAL past where the new timeline began, and fails on segments the server
/// never had (the recovery model, seed 377733964).
fn stop_bound(replay: &Replay, p: &PitrTarget) -> Lsn {
    match *replay {
        Replay::Lsn(l) => l,
        Replay::Consistent => p.base.stop_lsn,
        // Past `quiet_from` the history holds no commit by then: replay
        // stops before it.
        Replay::Time(_) => p.quiet_from.map_or(Lsn(u64::MAX), |q| Lsn(q.0.saturating_sub(1))),
    }
}

/// What replay must show when it pauses.
struct Expected {
    replay: Replay,
    /// The timeline replay follows (`None`: the backup's own).
    timeline: Option<u32>,
    /// The timeline a backup's own replay stops on, when known.
    stop_timeline: Option<u32>,
    /// A consistency point replay must stop exactly at.
    exactly: Option<Lsn>,
    /// Replay must not stop before this position.
    at_least: Option<Lsn>,
    /// What the job asked for, in words.
    what: String,
}

impl Expected {
    fn check(&self, p: &Paused) -> Result<(), String> {
        if let Some(at) = self.exactly
            && p.lsn != at
        {
            return Err(format!(
                "replay paused at scn {}, not at the backup's consistency point {at}",
                p.lsn
            ));
        }
        if let Some(min) = self.at_least
            && p.lsn < min
        {
            return Err(format!("replay paused at scn {}, before {min}", p.lsn));
        }
        match self.replay {
            Replay::Lsn(l) if p.lsn <= l => {
                return Err(format!("replay paused at scn {}, not past the target {l}", p.lsn));
            }
            Replay::Time(t) if p.last_commit.is_some_and(|c| c > t) => {
                return Err(format!(
                    "replay applied a commit of {}, after the target {t}",
                    p.last_commit.map(|c| c.to_string()).unwrap_or_default()
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

impl PgPhysical {
    pub(super) fn sibling(&self, suffix: &str) -> Result<PathBuf, Error> {
        let name = self
            .data_dir
            .file_name()
            .ok_or_else(|| Error::Failed(format!("data_dir {} has no name", self.data_dir.display())))?;
        Ok(self
            .data_dir
            .with_file_name(format!(".{}.strongbox-{suffix}", name.to_string_lossy())))
    }

    /// Old data directories an earlier process was removing when it died.
    fn remove_stray_trash(&self) {
        let (Some(parent), Ok(prefix)) = (self.data_dir.parent(), self.sibling("trash-")) else {
            return;
        };
        let prefix = prefix.file_name().unwrap_or_default().to_string_lossy().into_owned();
        // This process's own are being removed already.
        let mine = format!("{prefix}{}-", std::process::id());
        for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && !name.starts_with(&mine) {
                let _ = std::fs::remove_dir_all(entry.path());
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

    pub(super) fn recover_in_place(
        &self,
        backup: &dyn BackupFiles,
        target: &RecoveryTarget,
        cx: &RecoveryContext,
    ) -> Result<Recovered, Error> {
        let log = cx.log;
        let (staging, old) = (self.sibling("recovering")?, self.sibling("old")?);
        self.repair_interrupted_swap(&old, log)?;
        self.port_taken()?;
        let found = self.found()?;
        log(format!("found {}", found.description));
        let owner = self.owner()?;
        for leftover in [&staging, &old] {
            if leftover.exists() {
                std::fs::remove_dir_all(leftover).map_err(|e| Error::io(leftover.display(), e))?;
            }
        }
        self.remove_stray_trash();
        // A copy's WAL comes from the deployment's server.
        let source_answers = match &self.control {
            Control::Commands { .. } => found.answers,
            Control::Copy(c) => c.live.query("SELECT 1").is_ok(),
        };
        let expected = self.expected(target, source_answers, cx)?;
        if let Some(w) = cx.wal {
            super::restore_probe::probe(&w.restore_command(), w, owner, &self.sibling("probe")?)?;
        }
        // A server that answers checkpoints while the backup restores, so
        // that stopping it (which writes its dirty pages) is quick.
        let checkpointed = found.answers.then(|| {
            let conn = self.conn.clone();
            std::thread::spawn(move || conn.query("CHECKPOINT"))
        });
        let settings = RecoverySettings {
            replay: expected.replay,
            timeline: expected.timeline,
            restore_command: cx.wal.map(|w| w.restore_command()),
        };
        std::fs::create_dir(&staging).map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
        // PostgreSQL syncs a data directory it finds uncleanly shut down
        // before it replays. Written back while the backup restores (and,
        // for what is left, while the old server stops), that sync finds
        // nothing left to do.
        let restoring = Arc::new(AtomicBool::new(true));
        let writeback = {
            let (staging, restoring) = (staging.clone(), restoring.clone());
            std::thread::spawn(move || {
                while restoring.load(Ordering::Relaxed) {
                    let _ = datadir::sync_tree(&staging);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let restored = backup
            .restore_tree(&staging)
            .and_then(|()| self.make_copy(&staging))
            .and_then(|()| datadir::prepare(&staging, owner, &settings));
        restoring.store(false, Ordering::Relaxed);
        let _ = writeback.join();
        restored.inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&staging);
        })?;
        log(format!(
            "backup restored into {}; replay {}",
            staging.display(),
            expected.what
        ));
        let synced = {
            let staging = staging.clone();
            std::thread::spawn(move || datadir::sync_tree(&staging))
        };
        if let Some(c) = checkpointed {
            let _ = c.join(); // best effort: the stop checkpoints anyway
        }
        if found.running {
            self.stop(log).inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&staging);
            })?;
            log("server stopped".into());
        }
        synced
            .join()
            .map_err(|_| Error::Failed("syncing the restored files panicked".into()))??;
        let rename = |from: &Path, to: &Path| {
            std::fs::rename(from, to)
                .map_err(|e| Error::io(format!("renaming {} to {}", from.display(), to.display()), e))
        };
        if found.dir_exists {
            rename(&self.data_dir, &old)?;
        }
        rename(&staging, &self.data_dir)?;
        log(format!(
            "{}; starting the recovered server",
            if found.dir_exists {
                format!("old data directory kept at {}, recovered one in place", old.display())
            } else {
                "recovered data directory in place".to_string()
            }
        ));
        match self.replay_and_promote(&expected, target, log) {
            Ok(reached) => {
                if found.dir_exists {
                    // The recovered server serves: the old data goes, in the
                    // background (a later recovery removes what a crash
                    // here would leave).
                    let unique = OffsetDateTime::now_utc().unix_timestamp_nanos();
                    let trash = self.sibling(&format!("trash-{}-{unique}", std::process::id()))?;
                    rename(&old, &trash)?;
                    std::thread::spawn(move || std::fs::remove_dir_all(trash));
                }
                self.tidy_after_recovery();
                let left = self.leave_copy()?;
                Ok(Recovered {
                    summary: format!(
                        "replay stopped at scn {} on timeline {}{}; promoted to timeline {}; {left}",
                        reached.lsn,
                        reached.from_timeline,
                        reached
                            .last_commit
                            .map(|c| format!(" (last commit replayed: {c})"))
                            .unwrap_or_default(),
                        reached.timeline,
                    ),
                    reached: Some(reached),
                })
            }
            Err(e) => {
                log(format!("the recovery failed ({e}); putting the old data back"));
                self.stop_quietly();
                std::fs::remove_dir_all(&self.data_dir).map_err(|e| Error::io("removing the failed recovery", e))?;
                if !found.dir_exists {
                    return Err(Error::Failed(format!(
                        "{e}; the data directory was removed again (there was none)"
                    )));
                }
                rename(&old, &self.data_dir)?;
                if !found.running {
                    return Err(Error::Failed(format!(
                        "{e}; the old data directory was put back (its server was down before and was left down)"
                    )));
                }
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

    /// Starts the recovered server, checks where replay paused, promotes,
    /// and checks the new timeline's history.
    fn replay_and_promote(&self, expected: &Expected, target: &RecoveryTarget, log: Log) -> Result<Reached, Error> {
        self.start_server()?;
        let paused = self.wait_paused()?;
        let planned = match target {
            RecoveryTarget::PointInTime(p) => Some(&p.history),
            RecoveryTarget::Backup { .. } | RecoveryTarget::Shipped(_) => None,
        };
        expected.check(&paused).map_err(Error::Failed)?;
        // Replay followed the timeline of the stretch it was to stop on
        // (`stop_bound`). A position inside that stretch's last record
        // stops replay only after the next record, which on that timeline
        // is one the planned history abandoned: refused before it becomes
        // a timeline.
        if let (Some(h), Some(t)) = (planned, expected.timeline)
            && !h.holds(t, paused.lsn)
        {
            let end = h.spans().iter().find(|s| s.timeline == t).and_then(|s| s.end);
            return Err(Error::Failed(format!(
                "replay paused at scn {}, past the end of timeline {t}'s part of the planned history{}: the \
                 position asked is inside its last record; ask for that scn or an earlier one",
                paused.lsn,
                end.map(|e| format!(" (scn {e})")).unwrap_or_default()
            )));
        }
        log(format!(
            "replay paused at scn {}{}, as planned; promoting",
            paused.lsn,
            paused
                .last_commit
                .map(|c| format!(" after a commit of {c}"))
                .unwrap_or_default()
        ));
        let history = self.promote()?;
        let parent = history
            .spans()
            .iter()
            .rev()
            .nth(1)
            .copied()
            .ok_or_else(|| Error::Failed("the new timeline's history names no parent".into()))?;
        // At exactly a switch point PostgreSQL has already moved on to the
        // child timeline: either holds the position.
        let on_plan = match planned {
            Some(h) => h.holds(parent.timeline, paused.lsn),
            None => expected.stop_timeline.is_none_or(|t| t == parent.timeline),
        };
        if parent.end != Some(paused.lsn) || !on_plan {
            return Err(Error::Failed(format!(
                "the new timeline {} branched from timeline {} at scn {}, not from the planned history at {} \
                 where replay paused",
                history.timeline(),
                parent.timeline,
                parent.end.unwrap_or(Lsn(0)),
                paused.lsn
            )));
        }
        Ok(Reached {
            timeline: history.timeline(),
            from_timeline: parent.timeline,
            lsn: paused.lsn,
            last_commit: paused.last_commit,
            promoted_at: OffsetDateTime::now_utc(),
        })
    }

    /// Works out where replay goes and what it must show, archiving the
    /// live server's WAL up to now first when it answers.
    fn expected(&self, target: &RecoveryTarget, answers: bool, cx: &RecoveryContext) -> Result<Expected, Error> {
        let p = match target {
            RecoveryTarget::Backup { position } => {
                return Ok(Expected {
                    replay: Replay::Consistent,
                    timeline: None,
                    stop_timeline: position.as_ref().map(|p| p.timeline),
                    exactly: position.as_ref().map(|p| p.stop_lsn),
                    at_least: None,
                    what: "to the backup's consistency point".into(),
                });
            }
            RecoveryTarget::PointInTime(p) => p,
            RecoveryTarget::Shipped(_) => {
                return Err(Error::Failed(
                    "a shipped SQLite WAL is no PostgreSQL recovery target".into(),
                ));
            }
        };
        let flushed = if answers {
            self.archive_up_to_now(p.history.timeline(), cx.log)
        } else {
            (cx.log)("the server does not answer: replaying the WAL archived so far".into());
            None
        };
        let mut e = Expected {
            replay: Replay::Consistent,
            timeline: Some(p.history.timeline()),
            stop_timeline: None,
            exactly: None,
            at_least: Some(p.base.stop_lsn),
            what: String::new(),
        };
        let to_end = |e: &mut Expected, end: Option<Lsn>| match end {
            Some(l) if l >= p.base.stop_lsn => {
                e.replay = Replay::Lsn(l);
                e.what = format!(
                    "through the last archived record (scn {l}) of timeline {}'s history",
                    p.history.timeline()
                );
            }
            _ => {
                e.replay = Replay::Consistent;
                e.exactly = Some(p.base.stop_lsn);
                e.what = "to the backup's consistency point: nothing later is archived".into();
            }
        };
        match p.goal {
            pitr::Goal::Lsn(l) => {
                // Replay stops at a position only on a record at or after
                // it; when the archive (final: nothing more will be
                // archived on that history) holds none, its state is all of it.
                let end = match flushed {
                    Some(now) if l <= now => None,
                    _ => Some(self.run_end(p, None, cx)?.last_record),
                };
                match end {
                    Some(last) if l > last => {
                        (cx.log)(format!(
                            "the archive holds no record after scn {l}: replaying all of it"
                        ));
                        to_end(&mut e, Some(last));
                    }
                    _ => {
                        e.replay = Replay::Lsn(l);
                        e.what = format!("to scn {l} on timeline {}'s history", p.history.timeline());
                    }
                }
            }
            pitr::Goal::Latest => match flushed {
                Some(now) => {
                    e.replay = Replay::Lsn(now);
                    e.what = format!("through everything archived, up to scn {now} (now)");
                }
                None => to_end(&mut e, Some(self.run_end(p, None, cx)?.last_record)),
            },
            pitr::Goal::Time(t) => {
                // Past `quiet_from` the history holds no commit by then: a
                // replay that finds none after the moment before it stops
                // there, rather than wait for the first commit of a later
                // timeline (after any WAL its autovacuum wrote).
                let end = match (p.quiet_from, flushed) {
                    (Some(quiet), _) => Some(self.run_end(p, Some(quiet), cx)?),
                    (None, Some(_)) => None,
                    (None, None) => Some(self.run_end(p, None, cx)?),
                };
                // Replay stops at a moment only on a later commit; when the
                // archive holds none, the moment's state is all of it.
                let none_later = |c: LastCommit| match c {
                    LastCommit::At(c) => c <= t,
                    LastCommit::NoneSinceBase => true,
                    LastCommit::Unknown => false,
                };
                match end {
                    Some(end) if none_later(end.last_commit) => {
                        (cx.log)(format!("the archive holds no commit after {t}: replaying all of it"));
                        to_end(&mut e, Some(end.last_record));
                    }
                    _ => {
                        e.replay = Replay::Time(t);
                        e.what = format!("to {t} on timeline {}'s history", p.history.timeline());
                    }
                }
            }
        }
        e.timeline = Some(p.history.timeline_at(stop_bound(&e.replay, p)));
        Ok(e)
    }

    /// Where the archived WAL along the plan's history ends (before
    /// `until`, if set).
    fn run_end(&self, p: &PitrTarget, until: Option<Lsn>, cx: &RecoveryContext) -> Result<RunEnd, Error> {
        let wal = cx
            .wal
            .ok_or_else(|| Error::Failed("no WAL archive to replay from".into()))?;
        let dump = WalDump::new(self.conn.bin_dir(), wal, cx.scratch)?;
        let size = p.base.segment_size;
        let last = match until {
            Some(until) => dump
                .archived_file(&p.history, until.0.saturating_sub(1) / size, size)?
                .ok_or_else(|| Error::Failed(format!("the WAL before scn {until} is no longer archived")))?,
            None => {
                pitr::reach(&wal.list()?, &p.base, &p.history)
                    .ok_or_else(|| Error::Failed("the base backup's WAL is no longer archived".into()))?
                    .last_segment
                    .0
            }
        };
        let names = wal.names()?;
        let streamed = format!("{last}{}", strongbox_repo::STREAMED_TAIL);
        if !names.contains(&last) && names.contains(&streamed) {
            (cx.log)(format!(
                "WAL segment {last} is not archived whole: replay reads the tail streamed of it, as far as it reached"
            ));
        }
        dump.run_end(&p.history, &last, until, p.base.start_lsn, size)
    }

    /// Before replaying to a point in time: a commit (replay can only stop
    /// at a moment once it sees a later commit; a transaction holding only
    /// a marker message, which planning knows changes nothing), then the current segment
    /// switched out and archived, so the archive reaches the present.
    /// Returns the position just before the switch (everything committed
    /// until now lies before it), if the server is on `timeline`.
    fn archive_up_to_now(&self, timeline: u32, log: Log) -> Option<Lsn> {
        let switched = self
            .source()
            .query(&format!(
                "SELECT pg_logical_emit_message(true, '{FLUSH_MARKER}', 'flush')"
            ))
            .and_then(|_| self.source().query("SELECT pg_current_wal_insert_lsn()"))
            .and_then(|now| Ok((now, self.source().query("SELECT pg_walfile_name(pg_switch_wal())")?)));
        let (now, segment) = match switched {
            Ok(s) => s,
            Err(e) => {
                log(format!(
                    "the server did not switch WAL segments ({e}); replaying what is archived"
                ));
                return None;
            }
        };
        let deadline = Instant::now() + WAIT;
        // The archiver: its last archived file, its count of failures, the
        // last file it failed on, and whether it is failing now (its last
        // failure after its last success). Once archive_command has failed
        // PostgreSQL's three tries in a row (it then waits a minute before
        // the next), or was failing already and still is a few seconds
        // on, waiting longer is no use.
        let archiver = || {
            let row = self.source().query(
                "SELECT coalesce(last_archived_wal, '') || ' ' || failed_count || ' ' || \
                 coalesce(last_failed_wal, '-') || ' ' || \
                 coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) \
                 FROM pg_stat_archiver",
            )?;
            let parts: Vec<&str> = row.split(' ').collect();
            let failed: u64 = parts.get(1).and_then(|n| n.parse().ok()).unwrap_or_default();
            let part = |i: usize| parts.get(i).copied().unwrap_or_default().to_string();
            Ok::<_, Error>((part(0), failed, part(2), part(3) == "true"))
        };
        let (failed_before, failing_before) =
            archiver().map_or((0, false), |(_, failed, _, failing)| (failed, failing));
        let started = Instant::now();
        loop {
            match archiver() {
                Ok((done, ..)) if done.as_str() >= segment.as_str() => break,
                Ok((_, failed, file, failing))
                    if failed >= failed_before + 3
                        || (failing_before && failing && started.elapsed() > FAILING_ARCHIVE_WAIT) =>
                {
                    log(format!(
                        "{segment} is not being archived: archive_command keeps failing (the last time on {file}); \
                         replaying what is archived"
                    ));
                    return None;
                }
                _ if Instant::now() > deadline => {
                    log(format!(
                        "{segment} was not archived within {} s; replaying what is archived",
                        WAIT.as_secs()
                    ));
                    return None;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let on = u32::from_str_radix(segment.get(..8)?, 16).ok()?;
        if on != timeline {
            log(format!(
                "the server is on timeline {on}; the recovery follows timeline {timeline}, whose archive ends where it \
                 ends"
            ));
            return None;
        }
        log(format!("archived the server's WAL up to now (scn {now})"));
        now.parse().ok()
    }

    /// After a successful recovery: its settings out of postgresql.auto.conf
    /// (so a later restart or standby set-up never replays to them again),
    /// and the prefetched WAL gone.
    fn tidy_after_recovery(&self) {
        let auto = self.data_dir.join(AUTO_CONF);
        if let Ok(text) = std::fs::read_to_string(&auto) {
            let _ = std::fs::write(&auto, datadir::without_recovery_settings(&text));
        }
        let _ = std::fs::remove_dir_all(self.data_dir.join("pg_wal").join(PREFETCH_SPOOL));
    }
}
