//! A restored SQLite database checked as `PRAGMA integrity_check` would,
//! in linear time. `integrity_check` is `quick_check` (every page, b-tree,
//! record, NOT NULL and CHECK constraint) plus, for each row, a lookup of
//! its entry in every index, and UNIQUE constraints: on a 1 GiB table with
//! one index, 0.9 s of the first and 8.4 s of the second (3.4 M random
//! index probes). Here `quick_check` runs on a connection of its own while
//! the second is one sequential pass over each table and, on a third
//! connection at the same time, one over each of its indexes, compared as
//! multisets (a sum of each entry's hash, and a count); UNIQUE indexes are
//! checked by grouping their keys in index order. Tables this cannot read
//! that way (WITHOUT ROWID, indexes on expressions or partial ones) get
//! `PRAGMA integrity_check(table)` itself.

use std::path::Path;

use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

/// One index of a rowid table, as this check reads it.
struct Index {
    name: String,
    columns: Vec<String>,
    unique: bool,
}

/// What `integrity_check` finds: `Ok` with the rows per table, or the
/// first problem found (`quick_check`'s before the others', which damage
/// it reports may also have stopped).
pub(super) fn check(path: &Path) -> Result<Vec<(String, i64)>, String> {
    // Pages read through a memory map, not a `pread` each into each
    // connection's cache: the three passes at once on 1 GiB took 1.10 s
    // so, 1.45 s without (bench/drill_cost.sh's database, SQLite's own
    // statements alone). A map's read error is a SIGBUS rather than an
    // error, but what is checked is a recovery's copy written moments ago
    // and not synced: its pages are dirty in the page cache, read from
    // memory.
    let open = || {
        let c =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| format!("opening: {e}"))?;
        c.pragma_update(None, "mmap_size", 1i64 << 40)
            .map_err(|e| format!("mmap_size: {e}"))?;
        c.create_aggregate_function(
            ENTRIES,
            -1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            Entries,
        )
        .map_err(|e| format!("{ENTRIES}: {e}"))?;
        c.create_aggregate_function(
            SUM,
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            WrappingSum,
        )
        .map_err(|e| format!("{SUM}: {e}"))?;
        Ok::<_, String>(c)
    };
    let quick = open()?;
    let (quick, counts) = std::thread::scope(|s| {
        let quick = s.spawn(move || pragma(&quick, "PRAGMA quick_check"));
        let counts = open().and_then(|c| indexes_match(&c, &mut open()?));
        let quick = quick.join().unwrap_or_else(|_| Err("quick_check panicked".into()));
        (quick, counts)
    });
    let quick = quick?;
    if quick != ["ok"] {
        return Err(format!("quick_check: {}", quick.join("; ")));
    }
    counts
}

fn pragma(c: &Connection, sql: &str) -> Result<Vec<String>, String> {
    c.prepare(sql)
        .and_then(|mut q| q.query_map([], |r| r.get::<_, String>(0))?.collect())
        .map_err(|e| format!("{sql}: {e}"))
}

/// Every index of every table holds exactly its table's rows; the rows
/// per table.
fn indexes_match(c: &Connection, other: &mut Connection) -> Result<Vec<(String, i64)>, String> {
    let failed = |what: &str, e: rusqlite::Error| format!("{what}: {e}");
    let tables: Vec<(String, bool)> = c
        .prepare(
            "SELECT name, wr FROM pragma_table_list WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .and_then(|mut q| {
            q.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))?
                .collect()
        })
        .map_err(|e| failed("listing the tables", e))?;
    let mut counts = Vec::new();
    for (table, without_rowid) in tables {
        let mut indexes = Vec::new();
        let mut whole_check = without_rowid;
        let listed: Vec<(String, bool, bool)> = c
            .prepare("SELECT name, \"unique\", partial FROM pragma_index_list(?1)")
            .and_then(|mut q| {
                q.query_map([&table], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, r.get::<_, i64>(2)? != 0))
                })?
                .collect()
            })
            .map_err(|e| failed("listing the indexes", e))?;
        for (name, unique, partial) in listed {
            let columns: Vec<(i64, Option<String>)> = c
                .prepare("SELECT cid, name FROM pragma_index_info(?1) ORDER BY seqno")
                .and_then(|mut q| q.query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(|e| failed("reading an index", e))?;
            if partial || columns.iter().any(|(cid, n)| *cid < 0 || n.is_none()) {
                whole_check = true;
                continue;
            }
            indexes.push(Index {
                name,
                columns: columns.into_iter().filter_map(|(_, n)| n).collect(),
                unique,
            });
        }
        if whole_check {
            let found = pragma(c, &format!("PRAGMA integrity_check({})", crate::quoted(&table)))?;
            if found != ["ok"] {
                return Err(format!("integrity_check({table}): {}", found.join("; ")));
            }
        }
        let rows = if without_rowid {
            c.query_row(&format!("SELECT count(*) FROM {}", crate::quoted(&table)), [], |r| {
                r.get(0)
            })
            .map_err(|e| failed("counting", e))?
        } else {
            table_matches_its_indexes(c, other, &table, &indexes)?
        };
        counts.push((table, rows));
    }
    Ok(counts)
}

/// One pass over the table hashing each row as each index would hold it
/// (its columns and rowid), on `other` (a connection is not shared
/// between threads, but may be lent to one), while each index is read
/// here; a UNIQUE index's keys grouped. Returns the table's rows.
fn table_matches_its_indexes(
    c: &Connection,
    other: &mut Connection,
    table: &str,
    indexes: &[Index],
) -> Result<i64, String> {
    let (expected, found) = std::thread::scope(|s| {
        let expected = s.spawn(move || table_sums(other, table, indexes));
        let found: Result<Vec<Sum>, String> = indexes.iter().map(|i| index_sum(c, table, i)).collect();
        (
            expected
                .join()
                .unwrap_or_else(|_| Err("reading the table panicked".into())),
            found,
        )
    });
    let (expected, rows) = expected?;
    for ((index, expected), found) in indexes.iter().zip(expected).zip(found?) {
        if found != expected {
            return Err(format!(
                "index {} does not hold table {table}'s rows ({} entries for {} rows, or different ones)",
                index.name, found.1, expected.1
            ));
        }
    }
    Ok(rows)
}

/// A multiset of entries: the sum of their hashes, and how many.
type Sum = (u64, i64);

/// Each index's entries as the table's rows make them; and the rows.
fn table_sums(c: &Connection, table: &str, indexes: &[Index]) -> Result<(Vec<Sum>, i64), String> {
    let entries: String = indexes
        .iter()
        .map(|i| format!(", {}", entries_of(&i.columns)))
        .collect();
    let sql = format!("SELECT count(*){entries} FROM {} NOT INDEXED", crate::quoted(table));
    c.query_row(&sql, [], |r| {
        let rows: i64 = r.get(0)?;
        let sums = (1..=indexes.len())
            .map(|i| Ok((r.get::<_, i64>(i)? as u64, rows)))
            .collect::<rusqlite::Result<Vec<Sum>>>()?;
        Ok((sums, rows))
    })
    .map_err(|e| format!("reading {table}: {e}"))
}

/// The aggregate of an index's entries: its columns and the rowid.
fn entries_of(columns: &[String]) -> String {
    let columns: Vec<String> = columns.iter().map(|c| crate::quoted(c)).collect();
    format!("{ENTRIES}({}, rowid)", columns.join(", "))
}

/// An index's entries (its columns and rowid, read from the index alone);
/// a UNIQUE one's keys must not repeat, found in the same pass: its
/// entries summed per key (grouped as the index orders them, so by its
/// collations) and the keys held more than once counted: one pass over
/// the index, not a scan and then a GROUP BY (alone, 0.42 s and 0.65 s
/// over a 2.7 M-row index).
fn index_sum(c: &Connection, table: &str, index: &Index) -> Result<Sum, String> {
    let failed = |e: rusqlite::Error| format!("reading index {}: {e}", index.name);
    let (t, i) = (crate::quoted(table), crate::quoted(&index.name));
    let entries = entries_of(&index.columns);
    if !index.unique {
        let sql = format!("SELECT {entries}, count(*) FROM {t} INDEXED BY {i}");
        return c
            .query_row(&sql, [], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .map_err(failed);
    }
    let columns: Vec<String> = index.columns.iter().map(|c| crate::quoted(c)).collect();
    let null: Vec<String> = columns.iter().map(|c| format!("{c} IS NULL")).collect();
    let sql = format!(
        "SELECT {SUM}(h), coalesce(sum(n), 0), count(*) FILTER (WHERE n > 1 AND NOT null_key) FROM \
         (SELECT {entries} AS h, count(*) AS n, ({}) AS null_key FROM {t} INDEXED BY {i} GROUP BY {})",
        null.join(" OR "),
        columns.join(", ")
    );
    let (sum, entries, twice): (i64, i64, i64) = c
        .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(failed)?;
    if twice > 0 {
        return Err(format!(
            "UNIQUE index {} holds {twice} key(s) more than once",
            index.name
        ));
    }
    Ok((sum as u64, entries))
}

/// The names the check's connections know `Entries` and `WrappingSum` by.
const ENTRIES: &str = "strongbox_entries";
const SUM: &str = "strongbox_sum";

/// `strongbox_entries(value, …)`: the sum (wrapping) of each row's hash of
/// its arguments, a multiset of entries, computed within SQLite's scan:
/// stepping each row out into Rust to hash it took twice SQLite's own scan
/// (1.19 s against 0.59 s over a 1 GiB table).
struct Entries;

impl Aggregate<u64, i64> for Entries {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<u64> {
        Ok(0)
    }

    fn step(&self, ctx: &mut Context<'_>, sum: &mut u64) -> rusqlite::Result<()> {
        let mut h = SEED;
        for i in 0..ctx.len() {
            h = hash_value(h, ctx.get_raw(i));
        }
        *sum = sum.wrapping_add(finish(h));
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, sum: Option<u64>) -> rusqlite::Result<i64> {
        Ok(sum.unwrap_or(0) as i64)
    }
}

/// `strongbox_sum(integer)`: a sum that wraps (of `Entries`' sums), where
/// SQLite's `sum` fails on overflow.
struct WrappingSum;

impl Aggregate<u64, i64> for WrappingSum {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<u64> {
        Ok(0)
    }

    fn step(&self, ctx: &mut Context<'_>, sum: &mut u64) -> rusqlite::Result<()> {
        *sum = sum.wrapping_add(ctx.get::<i64>(0)? as u64);
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, sum: Option<u64>) -> rusqlite::Result<i64> {
        Ok(sum.unwrap_or(0) as i64)
    }
}

const SEED: u64 = 0x243F_6A88_85A3_08D3;

/// A value by its type and content, as stored, mixed into `h` (a fast
/// multiply-rotate hash: it finds damage, not an adversary's collisions).
fn hash_value(h: u64, v: ValueRef<'_>) -> u64 {
    let mix = |h: u64, word: u64| (h ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    let bytes = |mut h: u64, tag: u64, b: &[u8]| {
        h = mix(h, tag << 56 | b.len() as u64);
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            h = mix(h, u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        mix(h, u64::from_le_bytes(last))
    };
    match v {
        ValueRef::Null => mix(h, 0),
        ValueRef::Integer(i) => mix(mix(h, 1), i as u64),
        ValueRef::Real(f) => mix(mix(h, 2), f.to_bits()),
        ValueRef::Text(t) => bytes(h, 3, t),
        ValueRef::Blob(b) => bytes(h, 4, b),
    }
}

/// The entry's hash, its bits spread (sums of hashes compare multisets).
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database, then its index made to disagree with its table the way
    /// damage would (the index's definition rewritten under it).
    #[test]
    fn an_index_that_does_not_hold_its_tables_rows_is_found_as_integrity_check_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b TEXT); CREATE INDEX t_a ON t(a); \
             CREATE UNIQUE INDEX t_b ON t(b); CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID; \
             CREATE TABLE e(x TEXT); CREATE INDEX e_lower ON e(lower(x)); INSERT INTO e VALUES ('A'); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
             INSERT INTO t SELECT i, 'a' || (i % 97), 'b' || i FROM n; INSERT INTO w VALUES ('x', 1), ('y', NULL);",
        )
        .unwrap();
        drop(c);
        let rows = |v: &[(&str, i64)]| v.iter().map(|(t, n)| (t.to_string(), *n)).collect::<Vec<_>>();
        assert_eq!(check(&path).unwrap(), rows(&[("e", 1), ("t", 5000), ("w", 2)]));

        // The index t_a now claims to be over b: its entries are a's.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA writable_schema = ON; UPDATE sqlite_schema SET sql = 'CREATE INDEX t_a ON t(b)' \
             WHERE name = 't_a'; PRAGMA writable_schema = OFF;",
        )
        .unwrap();
        drop(c);
        let theirs = pragma(&Connection::open(&path).unwrap(), "PRAGMA integrity_check").unwrap();
        assert_ne!(theirs, ["ok"], "SQLite's own check finds it too");
        let ours = check(&path).unwrap_err();
        assert!(ours.contains("index t_a does not hold table t's rows"), "{ours}");
    }

    /// A b-tree page of the table overwritten: `quick_check`'s finding.
    #[test]
    fn a_damaged_page_is_found_by_quick_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA page_size = 4096; CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
             INSERT INTO t SELECT i, 'a' || i FROM n;",
        )
        .unwrap();
        drop(c);
        assert!(check(&path).is_ok());
        let mut bytes = std::fs::read(&path).unwrap();
        // Page 5 (from 1) is one of t's leaves: its cell pointers garbled.
        bytes[4 * 4096 + 8..4 * 4096 + 40].fill(0xEE);
        std::fs::write(&path, bytes).unwrap();
        let found = check(&path).unwrap_err();
        assert!(found.contains("quick_check"), "{found}");
    }

    #[test]
    fn a_unique_index_holding_a_key_twice_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, b TEXT); CREATE INDEX t_b ON t(b); \
             INSERT INTO t VALUES (1, 'x'), (2, 'x'), (3, NULL), (4, NULL); \
             PRAGMA writable_schema = ON; UPDATE sqlite_schema SET sql = 'CREATE UNIQUE INDEX t_b ON t(b)' \
             WHERE name = 't_b'; PRAGMA writable_schema = OFF;",
        )
        .unwrap();
        drop(c);
        let ours = check(&path).unwrap_err();
        assert!(
            ours.contains("UNIQUE index t_b holds 1 key(s) more than once"),
            "{ours}"
        );
    }
}
