//! Recovery on the day it is needed: the database crashed, its files
//! damaged or gone, its server unable to start. Each case, through the
//! API against a real server and real databases, must bring back exactly
//! the backup's rows (or, for `latest`, every archived commit), and the
//! job's activity log must say what it found.

use crate::common::*;
use strongbox_testkit::sh;

/// The rows as an ordered checksum (with their count, to read a failure by).
const ROWS: &str = "SELECT count(*) || ' ' || md5(coalesce(string_agg(id::text, ',' ORDER BY id), '')) FROM ticks";

/// What `ROWS` reads of rows 1–`n` exactly, computed by the shared server.
fn ticks(n: u32) -> String {
    sh(&format!(
        "psql -X -At -h 127.0.0.1 -U postgres -d postgres -c \"SELECT count(*) || ' ' || md5(string_agg(i::text, \
         ',' ORDER BY i)) FROM generate_series(1, {n}) i\""
    ))
    .trim()
    .to_string()
}

/// A cluster with rows 1–100 in a base backup (its tag returned), then rows
/// 101–170 committed and archived.
fn pg_after_backup(dir: &std::path::Path) -> (Pg, String) {
    let pg = Pg::start(dir, "");
    pg.c.psql("CREATE TABLE ticks (id int PRIMARY KEY)");
    pg.c.psql("INSERT INTO ticks SELECT generate_series(1, 100)");
    let tag = pg.backup()["dbTag"].as_str().unwrap().to_string();
    pg.c.psql("INSERT INTO ticks SELECT generate_series(101, 170)");
    pg.flush();
    (pg, tag)
}

fn as_postgres(line: &str) {
    strongbox_testkit::as_postgres(line);
}

/// Recovers and checks the rows and what the job says it found.
fn recover_and_check(pg: &Pg, body: &str, rows: u32, found: &[&str]) {
    let job = pg.recover(body);
    assert_eq!(pg.c.psql(ROWS), ticks(rows), "{body}: {}", pg.activity(&job));
    let log = pg.activity(&job);
    for f in found {
        assert!(log.contains(f), "{body}: the log should say {f:?}:\n{log}");
    }
    // The old data directory goes once the recovered one serves (removed
    // in the background).
    let parent = pg.c.data.parent().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left: Vec<_> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("strongbox"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {left:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_crashed_server_without_pg_control_recovers_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, tag) = pg_after_backup(dir.path());
    pg.crash();
    std::fs::remove_file(pg.c.data.join("global/pg_control")).unwrap();
    recover_and_check(
        &pg,
        &format!(r#"{{"tag": "{tag}"}}"#),
        100,
        &["postmaster.pid left behind", "pg_control missing"],
    );
}

#[test]
fn a_wiped_data_directory_recovers_by_latest_then_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, tag) = pg_after_backup(dir.path());
    pg.crash();
    std::fs::remove_dir_all(&pg.c.data).unwrap();
    // Complete recovery: everything archived, though the server is gone.
    recover_and_check(
        &pg,
        r#"{"latest": true}"#,
        170,
        &["missing", "does not answer: replaying the WAL archived so far"],
    );
    as_postgres(&pg.c.ctl("stop"));
    std::fs::remove_dir_all(&pg.c.data).unwrap();
    recover_and_check(&pg, &format!(r#"{{"tag": "{tag}"}}"#), 100, &["missing"]);
}

#[test]
fn an_emptied_data_directory_recovers_by_latest() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, _) = pg_after_backup(dir.path());
    pg.crash();
    sh(&format!("find {} -mindepth 1 -delete", pg.c.data.display()));
    recover_and_check(&pg, r#"{"latest": "yes"}"#, 170, &["empty"]);
}

#[test]
fn a_server_that_cannot_start_recovers_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, tag) = pg_after_backup(dir.path());
    as_postgres(&pg.c.ctl("stop"));
    sh(&format!(
        "echo 'this is not a setting' >> {}",
        pg.c.data.join("postgresql.conf").display()
    ));
    let start = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", "sh", "-c", &pg.c.ctl("start")])
        .output()
        .unwrap();
    assert!(!start.status.success(), "the broken server must not start");
    recover_and_check(&pg, &format!(r#"{{"tag": "{tag}"}}"#), 100, &["the server stopped"]);
}

#[test]
fn a_corrupt_table_file_under_a_running_server_recovers_by_latest() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, _) = pg_after_backup(dir.path());
    let file = pg.c.data.join(pg.c.psql("SELECT pg_relation_filepath('ticks')"));
    pg.c.psql("CHECKPOINT");
    as_postgres(&pg.c.ctl("stop"));
    let size = std::fs::metadata(&file).unwrap().len();
    std::fs::write(&file, vec![0xA5u8; size as usize]).unwrap();
    as_postgres(&pg.c.ctl("start"));
    let read = std::process::Command::new(format!("{}/psql", strongbox_testkit::PG_BIN))
        .args(["-X", "-At", "-d", &pg.c.url(), "-c", ROWS])
        .output()
        .unwrap();
    assert!(!read.status.success(), "the damaged table must not read");
    // Its WAL replays every row from the base backup on.
    recover_and_check(
        &pg,
        r#"{"latest": true}"#,
        170,
        &["the server running", "archived the server's WAL up to now"],
    );
}

#[test]
fn a_data_directory_wiped_under_a_running_server_recovers_by_latest() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, _) = pg_after_backup(dir.path());
    // The postmaster runs on without its files (and its lock file).
    std::fs::remove_dir_all(&pg.c.data).unwrap();
    recover_and_check(&pg, r#"{"latest": true}"#, 170, &["missing", "postmaster"]);
}

/// A SQLite deployment `big` with a backup; its tag and the backed-up
/// rows' ordered checksum.
fn sqlite_with_backup(s: &Server, db: &std::path::Path) -> (String, String) {
    big_database(db, 3);
    let at_backup = sqlite_checksum(db);
    assert_eq!(s.register_sqlite("big", db).0, "HTTP/2 200");
    let (_, location) = s.post_backup("big", &[]);
    s.wait_for(&location, "Succeeded");
    let (_, list) = s.json(&[&s.url("/paas/service/dbcs/api/v1.1/instances/usexample/big/backups")]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    // Later writes, which the recovery must take back.
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute("DELETE FROM t WHERE id % 2 = 0", []).unwrap();
    (tag, at_backup)
}

fn sqlite_recover(s: &Server, body: &str) -> serde_json::Value {
    let url = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/big/backups/recovery");
    let (status, h, text) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", body, &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{body}: {text}");
    let job = s.wait_for(header(&h, "location"), "Succeeded");
    let id = job["job_id"].as_i64().unwrap();
    s.json(&[&s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))])
        .1
}

/// The rows' ordered checksum and `PRAGMA integrity_check`'s verdict.
fn sqlite_rows(db: &std::path::Path) -> (String, String) {
    let c = rusqlite::Connection::open(db).unwrap();
    let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    (sqlite_checksum(db), check)
}

#[test]
fn a_deleted_sqlite_database_recovers_by_latest() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = dir.path().join("big.sqlite");
    let (_, rows) = sqlite_with_backup(&s, &db);
    for f in ["big.sqlite", "big.sqlite-wal", "big.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let log = sqlite_recover(&s, r#"{"latest": true}"#);
    assert_eq!(sqlite_rows(&db), (rows, "ok".into()));
    assert!(log["messages"].to_string().contains("missing"), "{log}");
}

#[test]
fn a_sqlite_database_overwritten_with_garbage_recovers_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = dir.path().join("big.sqlite");
    let (tag, rows) = sqlite_with_backup(&s, &db);
    let size = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![0x5Au8; size]).unwrap();
    let log = sqlite_recover(&s, &format!(r#"{{"tag": "{tag}"}}"#));
    assert_eq!(sqlite_rows(&db), (rows, "ok".into()));
    assert!(log["messages"].to_string().contains("damaged"), "{log}");
    // A stale -wal of the garbage file would have been replayed into the
    // restored one: none is left.
    assert!(!dir.path().join("big.sqlite-wal").exists() || sqlite_rows(&db).1 == "ok");
}

fn backup_and_recover_latest(s: &Server, name: &str, between: impl FnOnce()) -> serde_json::Value {
    let (status, location) = s.post_backup(name, &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    s.wait_for(&location, "Succeeded");
    between();
    let url = s.url(&format!(
        "/paas/service/dbcs/api/v1.1/instances/usexample/{name}/backups/recovery"
    ));
    let (status, h, text) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", r#"{"latest": true}"#, &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{text}");
    let job = s.wait_for(header(&h, "location"), "Succeeded");
    let id = job["job_id"].as_i64().unwrap();
    s.json(&[&s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))])
        .1
}

#[test]
fn a_dropped_database_comes_back_with_the_logical_engine() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = format!("sb_dropped_{}", std::process::id());
    let psql = |d: &str, sql: &str| {
        sh(&format!("psql -X -At -h 127.0.0.1 -U postgres -d {d} -c \"{sql}\""))
            .trim()
            .to_string()
    };
    psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"));
    psql("postgres", &format!("CREATE DATABASE {db}"));
    psql(&db, "CREATE TABLE t AS SELECT generate_series(1, 5000) AS id");
    let ordered = "SELECT count(*) || ' ' || md5(string_agg(id::text, ',' ORDER BY id)) FROM t";
    let at_backup = psql(&db, ordered);
    register(
        &s,
        "logical",
        serde_json::json!({"engine": "postgresql-logical", "connection": {
            "url": format!("postgresql://postgres@127.0.0.1:5432/{db}"), "bin_dir": strongbox_testkit::PG_BIN}}),
    );
    let log = backup_and_recover_latest(&s, "logical", || {
        psql("postgres", &format!("DROP DATABASE {db}"));
    });
    assert_eq!(psql(&db, ordered), at_backup, "the rows, exactly (ordered checksum)");
    assert!(
        log["messages"].to_string().contains("did not exist; created it"),
        "{log}"
    );
    psql("postgres", &format!("DROP DATABASE {db}"));
}

#[test]
fn a_dropped_database_comes_back_with_the_command_engine() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = format!("sb_dropped_{}", std::process::id());
    let maria = |sql: &str| {
        sh(&format!("mariadb -h 127.0.0.1 -u root -N -B -e \"{sql}\""))
            .trim()
            .to_string()
    };
    maria(&format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}; USE {db}; CREATE TABLE t (id INT PRIMARY KEY); \
         INSERT INTO t SELECT seq FROM seq_1_to_3000"
    ));
    let ordered = format!("SELECT count(*), MD5(GROUP_CONCAT(id ORDER BY id)) FROM {db}.t");
    let at_backup = maria(&ordered);
    register(
        &s,
        "maria",
        serde_json::json!({"engine": "command", "connection": {
            "backup_command": format!("mariadb-dump -h 127.0.0.1 -u root --single-transaction {db}"),
            "prepare_command": format!("mariadb -h 127.0.0.1 -u root -e 'CREATE DATABASE IF NOT EXISTS {db}'"),
            "recovery_command": format!("mariadb -h 127.0.0.1 -u root {db}"),
        }}),
    );
    let log = backup_and_recover_latest(&s, "maria", || {
        maria(&format!("DROP DATABASE {db}"));
    });
    assert_eq!(maria(&ordered), at_backup, "the rows, exactly (ordered checksum)");
    assert!(
        log["messages"].to_string().contains("prepare command succeeded"),
        "{log}"
    );
    maria(&format!("DROP DATABASE {db}"));
}
