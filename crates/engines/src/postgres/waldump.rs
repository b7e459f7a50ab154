//! Reading archived WAL with PostgreSQL's `pg_waldump`: the first commit
//! after a point (is a moment before a recovery still on the current
//! history?), and the last record and commit of an archived run (where
//! complete recovery of a server that no longer answers ends). Segments
//! are fetched from the archive into a scratch directory, one at a time.

use std::path::{Path, PathBuf};
use std::process::Command;

use time::OffsetDateTime;

use super::pitr::{History, Lsn, segment_name};
use crate::{Error, WalArchive};

/// Segments read past a point looking for a commit before giving up: a
/// database that commits nothing for this much WAL is rare, and the
/// planner then refuses rather than guesses.
const SCAN_SEGMENTS: u64 = 8;

/// The prefix of the logical message a recovery commits on the live server
/// before it switches WAL: a transaction that changes nothing.
pub const FLUSH_MARKER: &str = "strongbox.flush";

/// One WAL record as `pg_waldump` lists it.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    /// The transaction it belongs to (0 for none).
    pub tx: u32,
    /// Set for transaction commits: when the transaction committed.
    pub commit: Option<OffsetDateTime>,
    /// A recovery's flush marker (`FLUSH_MARKER`).
    pub flush_marker: bool,
}

/// `pg_waldump` over segments fetched into a scratch directory.
pub struct WalDump<'a> {
    program: PathBuf,
    wal: &'a dyn WalArchive,
    dir: tempfile::TempDir,
}

impl<'a> WalDump<'a> {
    pub fn new(bin_dir: Option<&Path>, wal: &'a dyn WalArchive, scratch: &Path) -> Result<Self, Error> {
        Ok(WalDump {
            program: bin_dir.map_or_else(|| PathBuf::from("pg_waldump"), |d| d.join("pg_waldump")),
            wal,
            dir: tempfile::tempdir_in(scratch).map_err(|e| Error::io("scratch directory", e))?,
        })
    }

    /// Fetches a file into the directory; false if it is not archived.
    fn fetch(&self, name: &str) -> Result<bool, Error> {
        let path = self.dir.path().join(name);
        if path.exists() {
            return Ok(true);
        }
        match self.wal.fetch(name)? {
            Some(data) => std::fs::write(&path, data)
                .map(|()| true)
                .map_err(|e| Error::io(name, e)),
            None => Ok(false),
        }
    }

    /// The records of `timeline`'s files from `start` (or the first record
    /// after it) up to `end`, as far as the fetched segments go.
    fn records(&self, timeline: u32, start: Lsn, end: Option<Lsn>) -> Result<Vec<Record>, Error> {
        let mut c = Command::new(&self.program);
        c.arg("-p")
            .arg(self.dir.path())
            .args(["-t", &timeline.to_string(), "-s", &start.to_string()])
            .env("TZ", "UTC");
        if let Some(end) = end {
            c.args(["-e", &end.to_string()]);
        }
        let out = c
            .output()
            .map_err(|e| Error::Failed(format!("could not run {}: {e}", self.program.display())))?;
        // pg_waldump exits 1 where the fetched WAL ends: what it printed
        // up to there is what counts.
        let records: Vec<Record> = String::from_utf8_lossy(&out.stdout).lines().filter_map(parse).collect();
        let err = String::from_utf8_lossy(&out.stderr);
        let ran_out = [
            "could not find",
            "invalid record",
            "invalid magic number",
            "unexpected pageaddr",
        ]
        .iter()
        .any(|m| err.contains(m));
        if records.is_empty() && !out.status.success() && !ran_out {
            return Err(Error::Failed(format!("pg_waldump: {}", err.trim())));
        }
        Ok(records)
    }

    /// When the first transaction after `from` on `history` committed
    /// (recoveries' flush markers aside: they change nothing); `None` if the
    /// archive holds no commit there. Fails when it cannot
    /// tell (a segment past `from` is missing, or no commit within
    /// `SCAN_SEGMENTS`).
    pub fn first_commit_after(
        &self,
        history: &History,
        from: Lsn,
        segment_size: u64,
    ) -> Result<Option<OffsetDateTime>, Error> {
        let first = from.0 / segment_size;
        let mut markers = std::collections::HashSet::new();
        for segment in first..first + SCAN_SEGMENTS {
            let timeline = history.segment_timeline(segment, segment_size);
            let name = segment_name(timeline, Lsn(segment * segment_size), segment_size);
            if !self.fetch(&name)? {
                // Past the last archived segment: nothing more was committed
                // (that the archive knows of).
                let later = self.wal.list()?.segments_after(timeline, segment, segment_size);
                return if later {
                    Err(Error::Failed(format!("WAL segment {name} is not archived")))
                } else {
                    Ok(None)
                };
            }
            // From the segment's start, not `from`: a marker's message may
            // lie before `from` and its commit after (a recovery to the
            // message's position stops between the two).
            let start = Lsn(segment * segment_size);
            let span_end = history.span(timeline).and_then(|s| s.end);
            let end = Lsn((segment + 1) * segment_size).min(span_end.unwrap_or(Lsn(u64::MAX)));
            for r in self.records(timeline, start, Some(end))? {
                if r.flush_marker {
                    markers.insert(r.tx);
                }
                match r.commit {
                    Some(c) if r.lsn >= from && !markers.contains(&r.tx) => return Ok(Some(c)),
                    _ => {}
                }
            }
        }
        Err(Error::Failed(format!(
            "no commit within {SCAN_SEGMENTS} segments after scn {from}"
        )))
    }

    /// The archived file replay reads for segment number `segment` of
    /// `history`: the newest timeline's, or (for the segment a timeline
    /// began in, before its copy is archived) its parent's.
    pub fn archived_file(&self, history: &History, segment: u64, segment_size: u64) -> Result<Option<String>, Error> {
        let timeline = history.segment_timeline(segment, segment_size);
        for t in [Some(timeline), history.parent_of(timeline)].into_iter().flatten() {
            let name = segment_name(t, Lsn(segment * segment_size), segment_size);
            if self.fetch(&name)? {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// Where the archived WAL along `history` ends, at archived file `last`
    /// (or before position `until`, if set): its last record, and its last
    /// commit, looked for back to the base backup's start (`from`).
    pub fn run_end(
        &self,
        history: &History,
        last: &str,
        until: Option<Lsn>,
        from: Lsn,
        segment_size: u64,
    ) -> Result<RunEnd, Error> {
        let last_segment = super::pitr::segment_number(last, segment_size)
            .ok_or_else(|| Error::Failed(format!("{last} is not a WAL segment")))?;
        let first = from.0 / segment_size;
        let mut last_record = None;
        let mut last_commit = LastCommit::NoneSinceBase;
        for segment in (first..=last_segment).rev().take(SCAN_SEGMENTS as usize) {
            let file = if segment == last_segment {
                last.to_string()
            } else {
                segment_name(
                    history.segment_timeline(segment, segment_size),
                    Lsn(segment * segment_size),
                    segment_size,
                )
            };
            let timeline = super::pitr::file_timeline(&file).unwrap_or(1);
            if !self.fetch(&file)? {
                return Err(Error::Failed(format!("WAL segment {file} is no longer archived")));
            }
            let start = Lsn(segment * segment_size).max(from);
            let mut end = Lsn((segment + 1) * segment_size);
            for bound in [
                history.span(timeline).and_then(|s| s.end),
                until.filter(|_| segment == last_segment),
            ] {
                end = end.min(bound.unwrap_or(end));
            }
            let records = self.records(timeline, start, Some(end))?;
            if last_record.is_none() {
                last_record = Some(
                    records
                        .last()
                        .map(|r| r.lsn)
                        .ok_or_else(|| Error::Failed(format!("pg_waldump found no record in {file}")))?,
                );
            }
            if let Some(c) = records.iter().rev().find_map(|r| r.commit) {
                last_commit = LastCommit::At(c);
                break;
            }
            if segment != first && last_segment - segment + 1 == SCAN_SEGMENTS {
                last_commit = LastCommit::Unknown; // the scan stops short of the base
            }
        }
        Ok(RunEnd {
            last_record: last_record.unwrap_or(from),
            last_commit,
        })
    }
}

/// Where an archived run of WAL ends.
#[derive(Debug, PartialEq, Eq)]
pub struct RunEnd {
    /// Where its last complete record starts.
    pub last_record: Lsn,
    pub last_commit: LastCommit,
}

/// The last commit of a run.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum LastCommit {
    At(OffsetDateTime),
    /// None between the base backup's start and the run's end.
    NoneSinceBase,
    /// None in the last segments read; earlier ones were not.
    Unknown,
}

/// One line of `pg_waldump`: `rmgr: … lsn: 0/03000068, prev …, desc: COMMIT 2026-11-30 04:19:31.413921 UTC`.
fn parse(line: &str) -> Option<Record> {
    let lsn = line.split("lsn: ").nth(1)?.split(',').next()?.trim().parse().ok()?;
    let tx = line.split("tx: ").nth(1)?.split(',').next()?.trim().parse().ok()?;
    let flush_marker = line.contains("rmgr: LogicalMessage") && line.contains(&format!("prefix \"{FLUSH_MARKER}\";"));
    let commit = line
        .contains("rmgr: Transaction")
        .then(|| line.split("desc: COMMIT ").nth(1))
        .flatten()
        .and_then(|rest| {
            let stamp: String = rest.split(';').next()?.trim().trim_end_matches(" UTC").into();
            let format = time::macros::format_description!(
                version = 2,
                "[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]"
            );
            time::PrimitiveDateTime::parse(&stamp, &format)
                .ok()
                .map(|t| t.assume_utc())
        });
    Some(Record {
        lsn,
        tx,
        commit,
        flush_marker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waldump_lines_give_positions_and_commit_times() {
        let commit = "rmgr: Transaction len (rec/tot):     34/    34, tx:        725, lsn: 0/03000068, prev \
                      0/03000028, desc: COMMIT 2026-11-30 04:19:31.413921 UTC";
        let r = parse(commit).unwrap();
        assert_eq!(r.lsn, Lsn(0x300_0068));
        assert_eq!(
            r.commit.unwrap(),
            time::macros::datetime!(2026-11-30 04:19:31.413921 UTC)
        );
        let with_invals = "rmgr: Transaction len (rec/tot):    229/   229, tx:        731, lsn: 0/0153D718, prev \
                           0/0153D6E0, desc: COMMIT 2026-11-30 04:19:32 UTC; inval msgs: catcache 80";
        assert_eq!(
            parse(with_invals).unwrap().commit.unwrap(),
            time::macros::datetime!(2026-11-30 04:19:32 UTC)
        );
        let insert = "rmgr: Heap        len (rec/tot):     59/    59, tx:        725, lsn: 0/03000028, prev \
                      0/02000100, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16384 blk 0";
        assert_eq!(
            parse(insert).unwrap(),
            Record {
                lsn: Lsn(0x300_0028),
                tx: 725,
                commit: None,
                flush_marker: false,
            }
        );
        let marker = "rmgr: LogicalMessage len (rec/tot):     65/    65, tx:        727, lsn: 0/01D744C8, prev \
                      0/01D74490, desc: MESSAGE transactional, prefix \"strongbox.flush\"; payload (5 bytes): 66 6C \
                      75 73 68";
        let r = parse(marker).unwrap();
        assert!(r.flush_marker && r.tx == 727 && r.commit.is_none(), "{r:?}");
        let other = marker.replace("strongbox.flush", "app");
        assert!(!parse(&other).unwrap().flush_marker);
        assert_eq!(parse("pg_waldump: error: could not find file").map(|r| r.lsn), None);
    }
}
