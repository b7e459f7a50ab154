//! The format is a promise (issue 27): `tests/fixtures/format-1` holds a
//! repository and a catalog written by the version that introduced
//! repository format 1 (`bench/make_format_fixture.sh`), with two backups
//! of a small SQLite database. Every later version must open them, list the
//! backups and recover each exactly — with that catalog (migrated), and
//! with a new catalog rebuilt from the repository alone. A format change
//! ships a reader or a migration; it never rewrites the fixture.

use std::path::{Path, PathBuf};

use crate::common::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format-1");
/// The deployment's database, where the fixture's generator kept it.
const DB: &str = "/tmp/strongbox-fixture/app.db";

/// The rows each backup holds, built here as the generator built them.
fn expected(dir: &Path, second: bool) -> String {
    let path = dir.join(if second { "second.db" } else { "first.db" });
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    for i in 1..=300usize {
        c.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            rusqlite::params![i as i64, format!("row {i} {}", "x".repeat(i % 50))],
        )
        .unwrap();
    }
    if second {
        c.execute_batch("UPDATE t SET v = v || ' changed' WHERE id % 7 = 0; DELETE FROM t WHERE id > 280")
            .unwrap();
    }
    drop(c);
    sqlite_checksum(&path)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest: PathBuf = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn format_1_opens_lists_and_recovers_exactly_with_its_catalog_and_rebuilt() {
    let work = tempfile::tempdir().unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(FIXTURE).join("backups.json")).unwrap()).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let sums = [expected(work.path(), false), expected(work.path(), true)];
    assert_ne!(sums[0], sums[1]);
    for with_catalog in [true, false] {
        let dir = work.path().join(if with_catalog { "with-catalog" } else { "rebuilt" });
        copy_tree(&Path::new(FIXTURE).join("repository"), &dir.join("repository"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        if with_catalog {
            std::fs::copy(
                Path::new(FIXTURE).join("catalog.sqlite"),
                dir.join("data/catalog.sqlite"),
            )
            .unwrap();
        }
        let env = [
            ("STRONGBOX_REPOSITORY", dir.join("repository").display().to_string()),
            ("STRONGBOX_REPO_PASSWORD", "format-fixture".to_string()),
        ];
        let s = start_with(&dir, free_port(), &env);
        let (_, v) = s.json(&[&s.url("/paas/service/dbcs/api/v1.1/instances/usexample/app/backups")]);
        let mut now: Vec<(String, bool)> = v["backupList"]
            .as_array()
            .unwrap_or_else(|| panic!("with catalog {with_catalog}: {v}"))
            .iter()
            .map(|b| (b["dbTag"].as_str().unwrap().to_string(), b["keepForever"] == true))
            .collect();
        now.sort();
        let then: Vec<(String, bool)> = listed
            .iter()
            .map(|b| (b["dbTag"].as_str().unwrap().to_string(), b["keepForever"] == true))
            .collect();
        assert_eq!(now, then, "with catalog {with_catalog}");
        for (b, sum) in then.iter().zip(&sums) {
            let _ = std::fs::remove_dir_all(Path::new(DB).parent().unwrap());
            let url = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/app/backups/recovery");
            let body = format!(r#"{{"tag": "{}"}}"#, b.0);
            let (status, h, answer) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", &body, &url]].concat());
            assert_eq!(status, "HTTP/2 202", "with catalog {with_catalog}, {}: {answer}", b.0);
            s.wait_for(header(&h, "location"), "Succeeded");
            assert_eq!(
                &sqlite_checksum(Path::new(DB)),
                sum,
                "with catalog {with_catalog}, {}",
                b.0
            );
        }
    }
}
