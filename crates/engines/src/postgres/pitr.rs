//! Point-in-time recovery planning: which base backup a target time or WAL
//! position starts from, and whether the archived WAL reaches it. Pure
//! functions over what the catalog knows of base backups (`BasePosition`)
//! and what the WAL archive lists, so a request is judged before anything
//! is touched.
//!
//! A base backup replays forward along its own timeline through every
//! archived segment in an unbroken run from its start segment; the run's
//! end bounds what it can reach. The archive time of that last segment
//! bounds the reachable moments (every commit in it happened before it
//! was archived).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use strongbox_repo::WalFile;
use time::OffsetDateTime;

/// A WAL position (PostgreSQL's `pg_lsn`): `X/Y` in hex, or the same
/// 64-bit number in decimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad =
            || format!("{s:?} is not a WAL position: write it as PostgreSQL does (0/3000060) or as a decimal number");
        match s.split_once('/') {
            Some((hi, lo)) => {
                let hex = |p: &str| {
                    (1..=8)
                        .contains(&p.len())
                        .then(|| u32::from_str_radix(p, 16).ok())
                        .flatten()
                };
                let (hi, lo) = (hex(hi).ok_or_else(bad)?, hex(lo).ok_or_else(bad)?);
                Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
            }
            None => s.parse().map(Lsn).map_err(|_| bad()),
        }
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl From<Lsn> for String {
    fn from(l: Lsn) -> String {
        l.to_string()
    }
}

impl TryFrom<String> for Lsn {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// Where a physical base backup sits in its cluster's WAL history: what
/// the catalog keeps of each one for point-in-time recovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasePosition {
    pub timeline: u32,
    pub start_lsn: Lsn,
    /// The consistency point: no target before it is reachable from here.
    pub stop_lsn: Lsn,
    /// When `pg_backup_stop` returned (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub stop_time: OffsetDateTime,
    pub segment_size: u64,
}

impl BasePosition {
    /// Where a backup starts, from its `backup_label`: (timeline, LSN).
    pub fn label_start(label: &str) -> Result<(u32, Lsn), String> {
        let field = |name: &str| {
            label
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .ok_or_else(|| format!("no {name} in the backup label {label:?}"))
        };
        let start = field("START WAL LOCATION:")?;
        let lsn = start.split_whitespace().next().unwrap_or_default().parse()?;
        let timeline = field("START TIMELINE:")?
            .parse()
            .map_err(|e| format!("START TIMELINE in the backup label: {e}"))?;
        Ok((timeline, lsn))
    }

    /// The segment the backup's replay starts from.
    pub fn start_segment(&self) -> String {
        segment_name(self.timeline, self.start_lsn, self.segment_size)
    }
}

/// The segment number of a WAL file name (`TTTTTTTTLLLLLLLLSSSSSSSS`, or
/// that followed by `.partial` or `.OFFSET.backup`); `None` for others
/// (timeline histories).
pub fn segment_number(name: &str, segment_size: u64) -> Option<u64> {
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let base = name.get(..24)?;
    if !base.bytes().all(|b| b.is_ascii_hexdigit()) || !(name.len() == 24 || name.as_bytes()[24] == b'.') {
        return None;
    }
    Some(hex(&base[8..16])? * (0x1_0000_0000 / segment_size) + hex(&base[16..24])?)
}

/// The name of the segment holding `lsn` on `timeline`.
pub fn segment_name(timeline: u32, lsn: Lsn, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_size;
    let seg = lsn.0 / segment_size;
    format!("{timeline:08X}{:08X}{:08X}", seg / per_id, seg % per_id)
}

/// What a target asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointTarget {
    Time(OffsetDateTime),
    Lsn(Lsn),
}

/// How far one base backup replays: from its consistency point to the end
/// of the unbroken run of archived segments that starts with its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reach {
    pub earliest_time: OffsetDateTime,
    pub earliest_lsn: Lsn,
    pub latest_time: OffsetDateTime,
    pub latest_lsn: Lsn,
    /// The first missing segment, when later ones are archived (a gap).
    pub gap: Option<String>,
}

impl Reach {
    fn holds(&self, target: PointTarget) -> bool {
        match target {
            PointTarget::Time(t) => self.earliest_time < t && t <= self.latest_time,
            PointTarget::Lsn(l) => self.earliest_lsn <= l && l <= self.latest_lsn,
        }
    }
}

/// Archived segments by name, with their archive times.
pub struct Archived(BTreeMap<String, i64>);

impl Archived {
    pub fn new(files: &[WalFile]) -> Self {
        Archived(files.iter().map(|f| (f.name.clone(), f.archived_at)).collect())
    }

    /// How far `base` replays, or `None` if its own WAL is not all archived yet.
    pub fn reach(&self, base: &BasePosition) -> Option<Reach> {
        let size = base.segment_size;
        let name = |seg: u64| segment_name(base.timeline, Lsn(seg * size), size);
        let first = base.start_lsn.0 / size;
        let mut seg = first;
        let mut archived_at = None;
        while let Some(at) = self.0.get(&name(seg)) {
            archived_at = Some(*at);
            seg += 1;
        }
        // Replay needs at least the WAL up to the consistency point.
        if seg * size <= base.stop_lsn.0 {
            return None;
        }
        let missing = name(seg);
        let timeline = format!("{:08X}", base.timeline);
        let gap = self
            .0
            .range(missing.clone()..)
            .any(|(n, _)| n.len() == 24 && n.starts_with(&timeline))
            .then_some(missing);
        Some(Reach {
            earliest_time: base.stop_time,
            earliest_lsn: base.stop_lsn,
            latest_time: OffsetDateTime::from_unix_timestamp(archived_at?).ok()?,
            latest_lsn: Lsn(seg * size),
            gap,
        })
    }
}

/// The recoverable stretches of a deployment's history, one per base
/// backup that reaches anything, oldest first, overlapping ones merged.
pub fn recoverable(bases: &[BasePosition], archived: &Archived) -> Vec<Reach> {
    let mut reaches: Vec<Reach> = bases.iter().filter_map(|b| archived.reach(b)).collect();
    reaches.sort_by_key(|r| r.earliest_lsn);
    let mut merged: Vec<Reach> = Vec::new();
    for r in reaches {
        match merged.last_mut() {
            Some(last) if r.earliest_lsn <= last.latest_lsn => {
                if r.latest_lsn > last.latest_lsn {
                    last.latest_lsn = r.latest_lsn;
                    last.latest_time = r.latest_time;
                    last.gap = r.gap;
                }
            }
            _ => merged.push(r),
        }
    }
    merged
}

/// Why a target cannot be recovered, and what can (the API words it).
#[derive(Debug, PartialEq, Eq)]
pub struct Unreachable {
    pub why: String,
    pub ranges: Vec<Reach>,
}

/// Picks the base backup (an index into `bases`) to recover `target` from:
/// the latest one before it whose archived WAL reaches it.
pub fn choose(bases: &[BasePosition], archived: &Archived, target: PointTarget) -> Result<usize, Unreachable> {
    let before = |b: &BasePosition| match target {
        PointTarget::Time(t) => b.stop_time < t,
        PointTarget::Lsn(l) => b.stop_lsn <= l,
    };
    let candidates = bases.iter().enumerate().filter(|(_, b)| before(b));
    let chosen = candidates
        .filter_map(|(i, b)| Some((i, b, archived.reach(b)?)))
        .max_by_key(|(_, b, _)| b.stop_lsn);
    if let Some((i, _, reach)) = &chosen
        && reach.holds(target)
    {
        return Ok(*i);
    }
    let why = match &chosen {
        None => "it is before the first base backup whose WAL is archived".to_string(),
        Some((_, _, reach)) if reach.gap.is_some() => format!(
            "the WAL archive has a gap: segment {} is missing",
            reach.gap.as_deref().unwrap_or_default()
        ),
        Some(_) => "it is after the last archived WAL".to_string(),
    };
    Err(Unreachable {
        why,
        ranges: recoverable(bases, archived),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn base(start: u64, stop: u64, at: i64) -> BasePosition {
        BasePosition {
            timeline: 1,
            start_lsn: Lsn(start),
            stop_lsn: Lsn(stop),
            stop_time: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            segment_size: SEG,
        }
    }

    fn archived(segments: &[(u64, i64)]) -> Archived {
        let files: Vec<WalFile> = segments
            .iter()
            .map(|&(seg, at)| WalFile {
                name: segment_name(1, Lsn(seg * SEG), SEG),
                stored_bytes: 1,
                archived_at: at,
            })
            .collect();
        Archived::new(&files)
    }

    #[test]
    fn lsns_parse_in_both_spellings_and_print_as_postgresql_does() {
        assert_eq!("0/3000060".parse::<Lsn>().unwrap(), Lsn(0x300_0060));
        assert_eq!("50331744".parse::<Lsn>().unwrap(), Lsn(0x300_0060));
        assert_eq!("1A/FF".parse::<Lsn>().unwrap().to_string(), "1A/FF");
        for bad in ["", "0/", "/1", "x/1", "0/123456789", "-5", "0x10"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
        assert_eq!(segment_name(2, Lsn(0x1_0300_0060), SEG), "000000020000000100000003");
        assert_eq!(segment_number("000000020000000100000003", SEG), Some(0x103));
        assert_eq!(
            segment_number("000000020000000100000003.00000028.backup", SEG),
            Some(0x103)
        );
        assert_eq!(segment_number("000000020000000100000003.partial", SEG), Some(0x103));
        assert_eq!(segment_number("00000002.history", SEG), None);
        let label = "START WAL LOCATION: 0/9000028 (file 000000020000000000000009)\nSTART TIMELINE: 2\n";
        assert_eq!(BasePosition::label_start(label), Ok((2, Lsn(0x900_0028))));
        assert!(BasePosition::label_start("START TIMELINE: 2\n").is_err());
    }

    #[test]
    fn the_latest_base_before_the_target_is_chosen_and_unreachable_targets_name_the_range() {
        let bases = [
            base(2 * SEG + 40, 2 * SEG + 200, 100),
            base(5 * SEG + 40, 5 * SEG + 200, 200),
        ];
        let wal = archived(&[(2, 110), (3, 150), (4, 190), (5, 210), (6, 300)]);
        let t = |s| PointTarget::Time(OffsetDateTime::from_unix_timestamp(s).unwrap());
        assert_eq!(choose(&bases, &wal, t(150)), Ok(0));
        assert_eq!(choose(&bases, &wal, t(250)), Ok(1));
        assert_eq!(choose(&bases, &wal, PointTarget::Lsn(Lsn(4 * SEG))), Ok(0));
        assert_eq!(choose(&bases, &wal, PointTarget::Lsn(Lsn(5 * SEG + 200))), Ok(1));
        let early = choose(&bases, &wal, t(99)).unwrap_err();
        assert!(early.why.contains("before the first base backup"), "{early:?}");
        assert_eq!(
            early.ranges[0].earliest_lsn,
            Lsn(2 * SEG + 200),
            "names the range: {early:?}"
        );
        let late = choose(&bases, &wal, t(301)).unwrap_err();
        assert!(late.why.contains("after the last archived WAL"), "{late:?}");
        assert_eq!(late.ranges.len(), 1, "names the range: {late:?}");
        assert!(choose(&bases, &wal, PointTarget::Lsn(Lsn(7 * SEG + 1))).is_err());
        let one = recoverable(&bases, &wal);
        assert_eq!(one.len(), 1, "overlapping reaches merge: {one:?}");
        assert_eq!(
            (one[0].earliest_lsn, one[0].latest_lsn),
            (Lsn(2 * SEG + 200), Lsn(7 * SEG))
        );
    }

    #[test]
    fn a_gap_in_the_archive_ends_a_reach_and_is_named() {
        let bases = [base(2 * SEG + 40, 2 * SEG + 200, 100)];
        let wal = archived(&[(2, 110), (3, 150), (5, 210)]);
        let reach = wal.reach(&bases[0]).unwrap();
        assert_eq!(reach.latest_lsn, Lsn(4 * SEG));
        let err = choose(&bases, &wal, PointTarget::Lsn(Lsn(5 * SEG))).unwrap_err();
        assert!(
            err.why.contains("gap") && err.why.contains(&segment_name(1, Lsn(4 * SEG), SEG)),
            "{err:?}"
        );
        // A base whose own WAL is not archived yet reaches nothing.
        assert!(archived(&[(3, 1)]).reach(&bases[0]).is_none());
    }
}
