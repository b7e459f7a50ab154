//! The shipped log as recovery reads it: positions (a SQLite `scn`), the
//! objects a shipper pushes (names, format), and their replay onto a
//! generation's base.

use std::path::Path;

use super::fail;
use crate::Error;
use crate::sqlite::wal::Txn;

/// Where a base sits, as kept with its backup in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasePosition {
    pub generation: String,
    pub taken_ms: i64,
}

impl BasePosition {
    /// The position of transaction `txn` of the base's generation (0: the base).
    pub fn at(&self, txn: u64) -> Position {
        Position {
            generation: self.generation.clone(),
            txn,
        }
    }
}

/// A position in a shipped log — a SQLite deployment's `scn`: a generation
/// and a transaction number in it, written `GENERATION:N` (`N` decimal;
/// 0 is the generation's base). Distinct from a PostgreSQL LSN (`0/3000060`)
/// by its colon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub generation: String,
    pub txn: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.generation, self.txn)
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (generation, txn) = s
            .split_once(':')
            .filter(|(g, _)| g.len() == 16 && g.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|(g, n)| Some((g.to_ascii_lowercase(), n.parse().ok()?)))
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a position in a shipped SQLite log: write it GENERATION:N, a generation's 16 hex \
                     digits and a transaction number (e.g. 0190f3c2a1b2c3d4:1500)"
                )
            })?;
        Ok(Position { generation, txn })
    }
}

/// A transaction as shipped: when it was seen committed, and its pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shipped {
    pub seen_ms: i64,
    pub txn: Txn,
}

const MAGIC: &[u8; 8] = b"SBSQLWA1";

/// An object's name: generation, first and last transaction numbers.
pub fn object_name(generation: &str, first: u64, last: u64) -> String {
    format!("{generation}-{first:016x}-{last:016x}")
}

/// The parts of an object's name, if it is one.
pub fn parse_object_name(name: &str) -> Option<(&str, u64, u64)> {
    let mut parts = name.rsplitn(3, '-');
    let last = u64::from_str_radix(parts.next()?, 16).ok()?;
    let first = u64::from_str_radix(parts.next()?, 16).ok()?;
    let generation = parts.next()?;
    (!generation.is_empty() && first >= 1 && first <= last).then_some((generation, first, last))
}

/// Objects of an archive listing grouped by generation: each one's
/// (first, last, name), in order. Names that are no objects are skipped.
pub fn by_generation<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> std::collections::BTreeMap<String, Vec<(u64, u64, String)>> {
    let mut out: std::collections::BTreeMap<String, Vec<(u64, u64, String)>> = Default::default();
    for name in names {
        if let Some((generation, first, last)) = parse_object_name(name) {
            out.entry(generation.to_string())
                .or_default()
                .push((first, last, name.to_string()));
        }
    }
    for objects in out.values_mut() {
        objects.sort();
    }
    out
}

pub fn encode(page_size: u32, txns: &[Shipped]) -> Vec<u8> {
    let pages: usize = txns.iter().map(|t| t.txn.pages.len()).sum();
    let mut out = Vec::with_capacity(16 + txns.len() * 16 + pages * (4 + page_size as usize));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&page_size.to_le_bytes());
    out.extend_from_slice(&(txns.len() as u32).to_le_bytes());
    for t in txns {
        out.extend_from_slice(&t.seen_ms.to_le_bytes());
        out.extend_from_slice(&t.txn.db_pages.to_le_bytes());
        out.extend_from_slice(&(t.txn.pages.len() as u32).to_le_bytes());
        for (pgno, page) in &t.txn.pages {
            out.extend_from_slice(&pgno.to_le_bytes());
            out.extend_from_slice(page);
        }
    }
    out
}

/// Reads an object written by `encode`: its page size and transactions.
pub fn decode(mut data: &[u8]) -> Result<(u32, Vec<Shipped>), Error> {
    let bad = |why: &str| Error::Failed(format!("a shipped SQLite WAL object is damaged: {why}"));
    let mut take = |n: usize| -> Result<&[u8], Error> {
        if data.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = data.split_at(n);
        data = rest;
        Ok(head)
    };
    if take(8)? != MAGIC {
        return Err(bad("wrong magic"));
    }
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let page_size = u32_of(take(4)?);
    if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
        return Err(bad("page size"));
    }
    let count = u32_of(take(4)?);
    let mut out = Vec::new();
    for _ in 0..count {
        let seen_ms = i64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let db_pages = u32_of(take(4)?);
        let n = u32_of(take(4)?);
        let mut pages = Vec::new();
        for _ in 0..n {
            let pgno = u32_of(take(4)?);
            if pgno == 0 {
                return Err(bad("page 0"));
            }
            pages.push((pgno, take(page_size as usize)?.to_vec()));
        }
        out.push(Shipped {
            seen_ms,
            txn: Txn { db_pages, pages },
        });
    }
    if !data.is_empty() {
        return Err(bad("bytes after the last transaction"));
    }
    Ok((page_size, out))
}

/// How far a replay goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Until {
    /// Every shipped transaction.
    Latest,
    /// Transactions seen committed at or before this time (ms since the epoch).
    Time(i64),
    /// Up to and including this transaction number of the generation.
    Txn(u64),
}

/// A recovery of a SQLite deployment from its shipped WAL: the base
/// backup of `generation` replayed to `until`, which the plan saw reach
/// at least transaction `at_least` (the recovery checks it got there).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShippedTarget {
    pub generation: String,
    pub until: Until,
    pub at_least: u64,
}

/// Brings `db` (a generation's base, restored) forward by the generation's
/// objects, given in order as (first transaction number, content), up to
/// `until`. Objects must follow each other without a gap. Returns the last
/// transaction applied (0: the base alone).
pub fn replay(
    db: &Path,
    objects: impl IntoIterator<Item = Result<(u64, Vec<u8>), Error>>,
    until: Until,
) -> Result<u64, Error> {
    let mut done = 0;
    for object in objects {
        let (first, data) = object?;
        if first != done + 1 {
            return Err(Error::Failed(format!(
                "the shipped WAL has a gap: transaction {first} follows {done}"
            )));
        }
        let (page_size, txns) = decode(&data)?;
        let wanted = txns
            .iter()
            .enumerate()
            .take_while(|(i, t)| match until {
                Until::Latest => true,
                Until::Time(ms) => t.seen_ms <= ms,
                Until::Txn(n) => first + (*i as u64) <= n,
            })
            .count();
        crate::sqlite::wal::apply_txns(db, page_size, txns[..wanted].iter().map(|t| &t.txn))
            .map_err(|e| fail(db, "replaying the shipped WAL", e))?;
        done = first + wanted as u64 - 1;
        if wanted < txns.len() {
            break;
        }
    }
    Ok(done)
}

/// The label naming a base's generation on its repository snapshot.
pub const GENERATION_LABEL: &str = "sqlite_generation";
/// The label holding when a base was taken (ms since the epoch).
pub const TAKEN_LABEL: &str = "sqlite_base_taken_ms";

#[cfg(test)]
mod tests {
    use super::Position;

    #[test]
    fn positions_are_written_generation_colon_transaction() {
        let p: Position = " 0190F3C2A1B2C3D4:1500 ".parse().unwrap();
        assert_eq!((p.generation.as_str(), p.txn), ("0190f3c2a1b2c3d4", 1500));
        assert_eq!(p.to_string(), "0190f3c2a1b2c3d4:1500");
        for bad in [
            "0/3000060",
            "0190f3c2a1b2c3:15",
            "0190f3c2a1b2c3d4:",
            "0190f3c2a1b2c3d4:-1",
            "0190f3c2a1b2c3dz:1",
        ] {
            let e = bad.parse::<Position>().unwrap_err();
            assert!(e.contains("GENERATION:N"), "{bad}: {e}");
        }
    }
}
