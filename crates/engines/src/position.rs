//! Where a backup sits in its database's history: the one record of it
//! that planning reads, the catalog keeps, and the repository will carry
//! beside each backup (so a copy of the repository alone can plan
//! recoveries). Its stored form is a promise: tagged by kind, versioned,
//! and readable in every form an earlier version wrote.

use serde::{Deserialize, Serialize};

use crate::pitr;
use crate::sqlite::ship as sqlite_ship;

/// A backup's place in its database's history; engines without a log
/// have none (`Option<Position>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Position {
    /// A PostgreSQL base backup: its timeline, start and consistency
    /// points in the WAL, when it stopped.
    Wal(pitr::BasePosition),
    /// A SQLite backup that is the base of a generation of its shipped log.
    ShippedBase(sqlite_ship::BasePosition),
}

/// The stored form's version: `{"v": 1, "kind": …, …}`.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Stored {
    v: u32,
    #[serde(flatten)]
    position: Position,
}

impl Position {
    /// The stored form (JSON).
    pub fn to_stored(&self) -> String {
        serde_json::to_string(&Stored {
            v: VERSION,
            position: self.clone(),
        })
        .expect("a position serializes")
    }

    /// Reads a stored position: this version's form, or the untagged forms
    /// of catalogs written before positions were typed (a PostgreSQL base's
    /// fields, or a SQLite generation's).
    pub fn from_stored(text: &str) -> Result<Position, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("a stored position is not JSON ({e}): {text}"))?;
        match value.get("v").and_then(|v| v.as_u64()) {
            Some(1) => serde_json::from_value::<Stored>(value)
                .map(|s| s.position)
                .map_err(|e| format!("stored position {text}: {e}")),
            Some(v) => Err(format!(
                "a stored position of format {v}, written by a newer Strongbox: {text}"
            )),
            None if value.get("generation").is_some() => serde_json::from_value(value)
                .map(Position::ShippedBase)
                .map_err(|e| format!("stored position {text}: {e}")),
            None => serde_json::from_value(value)
                .map(Position::Wal)
                .map_err(|e| format!("stored position {text}: {e}")),
        }
    }

    pub fn wal(&self) -> Option<&pitr::BasePosition> {
        match self {
            Position::Wal(p) => Some(p),
            Position::ShippedBase(_) => None,
        }
    }

    pub fn shipped_base(&self) -> Option<&sqlite_ship::BasePosition> {
        match self {
            Position::ShippedBase(p) => Some(p),
            Position::Wal(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_stored_tagged_and_versioned_and_read_in_every_form() {
        let wal = Position::Wal(pitr::BasePosition {
            timeline: 2,
            start_lsn: "0/3000028".parse().unwrap(),
            stop_lsn: "0/3000100".parse().unwrap(),
            stop_time: time::macros::datetime!(2026-12-05 08:00:00 UTC),
            segment_size: 16 << 20,
        });
        let shipped = Position::ShippedBase(sqlite_ship::BasePosition {
            generation: "01a2455d1899a96d".into(),
            taken_ms: 1796460056625,
        });
        let stored = wal.to_stored();
        assert_eq!(
            stored,
            r#"{"v":1,"kind":"wal","timeline":2,"start_lsn":"0/3000028","stop_lsn":"0/3000100","stop_time":"2026-12-05T08:00:00Z","segment_size":16777216}"#
        );
        assert_eq!(
            shipped.to_stored(),
            r#"{"v":1,"kind":"shippedBase","generation":"01a2455d1899a96d","takenMs":1796460056625}"#
        );
        for p in [&wal, &shipped] {
            assert_eq!(&Position::from_stored(&p.to_stored()).unwrap(), p);
        }
        // What catalogs before the typed form hold.
        let legacy_wal = r#"{"timeline":2,"start_lsn":"0/3000028","stop_lsn":"0/3000100","stop_time":"2026-12-05T08:00:00Z","segment_size":16777216}"#;
        assert_eq!(Position::from_stored(legacy_wal).unwrap(), wal);
        let legacy_shipped = r#"{"generation":"01a2455d1899a96d","takenMs":1796460056625}"#;
        assert_eq!(Position::from_stored(legacy_shipped).unwrap(), shipped);
        assert!(
            Position::from_stored(r#"{"v":2,"kind":"wal"}"#)
                .unwrap_err()
                .contains("newer Strongbox")
        );
        assert!(Position::from_stored("{}").is_err());
    }
}
