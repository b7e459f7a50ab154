//! Point-in-time recovery: WAL positions and segment names (here), the
//! timelines promotions create (`timeline`), and the planning of a
//! recovery from what the catalog knows of base backups and what the WAL
//! archive lists (`plan`): pure functions, so a request is judged before
//! anything is touched.

mod plan;
mod timeline;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use plan::{Archived, FirstCommit, Goal, Live, Pitr, Plan, Reach, Unreachable, bound_created, reach};
pub use timeline::{History, Span};

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

/// Where a recovery's replay stopped and the recovered history began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reached {
    /// The timeline the recovered server was promoted to.
    pub timeline: u32,
    /// The timeline and position replay stopped at (the new timeline's
    /// switch point).
    pub from_timeline: u32,
    pub lsn: Lsn,
    /// The last commit replayed, if any.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_commit: Option<OffsetDateTime>,
    /// When the new timeline became the live one.
    #[serde(with = "time::serde::rfc3339")]
    pub promoted_at: OffsetDateTime,
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

/// The timeline of a WAL file name (segment, `.partial`, `.backup` or `.history`).
pub fn file_timeline(name: &str) -> Option<u32> {
    let tli = name.get(..8)?;
    let rest = &name[8..];
    let shaped = rest == ".history" || segment_number(name, 16 << 20).is_some();
    (shaped && tli.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(tli, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

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
        assert_eq!(file_timeline("00000002.history"), Some(2));
        assert_eq!(file_timeline("0000000A0000000100000003.partial"), Some(10));
        assert_eq!(file_timeline("0000000A.partial"), None);
        let label = "START WAL LOCATION: 0/9000028 (file 000000020000000000000009)\nSTART TIMELINE: 2\n";
        assert_eq!(BasePosition::label_start(label), Ok((2, Lsn(0x900_0028))));
        assert!(BasePosition::label_start("START TIMELINE: 2\n").is_err());
    }
}
