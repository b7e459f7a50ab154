//! Issue 31: restore drills. A drill recovers a deployment's newest
//! backup, an older one and (with a log) a moment into a scratch place
//! beside the deployment, checks the result with the database's own
//! checks, removes it and records `lastVerified` / `verifyStatus` /
//! `verifyMessage` on each backup; `/metrics` shows the last verification
//! and counts failures. On the configuration's `verify` schedule (the
//! first drill of SQLite, physical PostgreSQL and `command` deployments)
//! or asked for (`POST …/backups/verify`, the others). A damaged pack fails the drill of a
//! backup that needs it, naming the backup and the object; a PostgreSQL
//! backup whose data will not start fails with the server's own log line.
//! The live database is never touched (checksums before and after).

use std::collections::HashMap;
use std::path::Path;

use crate::common::*;

/// A drill of `service`, asked for; the job at its end (`Succeeded` or
/// `Failed`).
fn drill(s: &Server, service: &str) -> serde_json::Value {
    let url = s.url(&format!("{API}/{service}/backups/verify"));
    let (status, h, body) = s.curl(&[&AUTH[..], &["-X", "POST", &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{body}");
    let location = header(&h, "location").to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let (_, v) = s.json(&[&location]);
        if v["job_status"] == "Succeeded" || v["job_status"] == "Failed" {
            assert_eq!(v["job_operation"], "verify", "{v}");
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The scheduler's drill of `service`, at its end: `verify` set hourly
/// while the server's clock (`dir/clock`, `scheduled_server`)
/// reads two hours ago, so that a period has begun since by the real
/// clock, which the server reads again once the file is gone; then the
/// schedule cleared (a later period would queue another).
fn scheduled_drill(s: &Server, service: &str) -> serde_json::Value {
    let before = verify_jobs(s, service);
    let two_hours_ago = std::process::Command::new("date")
        .args(["-u", "-d", "-2 hours", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    set_clock(&s.dir, String::from_utf8(two_hours_ago.stdout).unwrap().trim());
    let config = |body: &str| {
        let url = s.url(&format!("{API}/{service}/backups/config"));
        let (status, v) = s.json(&["-X", "PUT", "-d", body, &url]);
        assert_eq!(status, "HTTP/2 200", "{v}");
    };
    config(r#"{"verify": "0 * * * *"}"#);
    std::fs::remove_file(s.dir.join("clock")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let new: Vec<serde_json::Value> = verify_jobs(s, service)
            .into_iter()
            .filter(|j| !before.iter().any(|b| b["job_id"] == j["job_id"]))
            .collect();
        assert!(new.len() <= 1, "one drill for the period: {new:?}");
        if let Some(job) = new.first() {
            assert_eq!(job["created_by"], "SYSTEM", "the scheduler's: {job}");
            if job["job_status"] == "Succeeded" || job["job_status"] == "Failed" {
                config(r#"{"verify": ""}"#);
                return job.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled drill ended: {new:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `service`'s verify jobs (jobs are numbered from 1; another operation's
/// job is not found under `verify`: twenty misses in a row end the list).
fn verify_jobs(s: &Server, service: &str) -> Vec<serde_json::Value> {
    let (mut found, mut misses) = (Vec::new(), 0);
    for id in 1.. {
        let url = s.url(&format!(
            "/paas/service/dbcs/api/v1.1/instances/usexample/status/verify/job/{id}"
        ));
        let (status, v) = s.json(&[&url]);
        if status == "HTTP/2 404" {
            misses += 1;
            if misses == 20 {
                break;
            }
            continue;
        }
        misses = 0;
        if v["service-uri"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("/{service}")))
        {
            found.push(v);
        }
    }
    found
}

/// The backups as listed, by tag.
fn backups(s: &Server, service: &str) -> HashMap<String, serde_json::Value> {
    let (_, list) = s.json(&[&s.url(&format!("{API}/{service}/backups"))]);
    list["backupList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["dbTag"].as_str().unwrap().to_string(), b.clone()))
        .collect()
}

/// One sample of `/metrics`, 0 when absent.
fn metric(s: &Server, key: &str) -> f64 {
    let (status, _, body) = s.curl(&[&s.url("/metrics")]);
    assert_eq!(status, "HTTP/2 200", "{body}");
    body.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(k, _)| *k == key)
        .map_or(0.0, |(_, v)| v.parse().unwrap())
}

/// Backs `service` up; its tag.
fn back_up(s: &Server, service: &str) -> String {
    let job = post_until_accepted(s, &format!("{API}/{service}/backups"), "{}");
    let found = backups(s, service)
        .into_values()
        .find(|b| b["jobId"] == job["job_id"])
        .unwrap_or_else(|| panic!("backup job {} listed", job["job_id"]));
    found["dbTag"].as_str().unwrap().to_string()
}

/// The files beside `db` a drill may leave (none, once it ends).
fn scratch_beside(db: &Path) -> Vec<String> {
    std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("strongbox"))
        .collect()
}

/// A SQLite deployment shipping its log: a drill passes for the newest
/// backup, an older one and a moment, each `OK` with what the check found
/// (integrity and the rows of each table); the live rows unchanged; no
/// scratch file left; `/metrics` has the verification's time. Then a pack
/// of the repository is damaged: the next drill fails, names the backup
/// and the pack, marks it `FAILED` (it stays listed), and the failure
/// counter rises.
#[test]
fn a_sqlite_deployments_backups_are_drilled_and_a_damaged_pack_fails_its_drill() {
    let dir = tempfile::tempdir().unwrap();
    let s = scheduled_server(dir.path(), free_port());
    let db = dir.path().join("app.sqlite");
    let app = shipping_sqlite(&s, "app", &db);
    let insert = |from: i64, to: i64| {
        for n in from..=to {
            app.execute("INSERT INTO t VALUES (?1, randomblob(3000))", [n]).unwrap();
        }
    };
    insert(1, 200);
    let first = back_up(&s, "app");
    insert(201, 400);
    let second = back_up(&s, "app");
    insert(401, 450);
    wait_shipped(&s, "app", 50);
    let live = table_checksum(&db, "t");
    // A whole second after the newest backup: a moment to drill.
    std::thread::sleep(std::time::Duration::from_millis(2100));

    let job = scheduled_drill(&s, "app");
    assert_eq!(job["job_status"], "Succeeded", "{job}");
    let message = job["message"].as_str().unwrap();
    println!("{message}");
    assert!(
        message.contains("3 drill(s) passed"),
        "newest, older, a moment: {message}"
    );
    // The newest, one older backup (the shipper's own base backup is one
    // too) and a moment's base, each recorded.
    let drilled: std::collections::BTreeSet<&str> = message
        .rsplit_once('(')
        .unwrap()
        .1
        .trim_end_matches(')')
        .split(", ")
        .collect();
    assert!(drilled.contains(second.as_str()) && drilled.len() >= 2, "{drilled:?}");
    let listed = backups(&s, "app");
    assert!(listed.contains_key(&first));
    for tag in &drilled {
        let b = &listed[*tag];
        assert_eq!(b["verifyStatus"], "OK", "{b}");
        assert!(b["lastVerified"].is_string(), "{b}");
        assert!(
            b["verifyMessage"].as_str().unwrap().contains("integrity_check ok"),
            "{b}"
        );
    }
    // Its rows counted: the backup's 400, or (its last drill the moment's,
    // a second after the last commit) all 450.
    let newest = listed[&second]["verifyMessage"].as_str().unwrap();
    assert!(
        newest.contains("rows per table: t 400 (") || newest.contains("rows per table: t 450 ("),
        "{newest}"
    );
    assert_eq!(table_checksum(&db, "t"), live, "the live database untouched");
    assert_eq!(scratch_beside(&db), Vec::<String>::new(), "no scratch file left");
    let labels = r#"{domain="usexample",deployment="app"}"#;
    let verified = metric(&s, &format!("strongbox_last_verified_timestamp_seconds{labels}"));
    assert!(verified > 1.7e9, "last verified {verified}");

    // Damage the repository's packs (each byte flipped in the middle of
    // every pack file): the next drill fails on what it reads.
    let data = dir.path().join("data/repository/data");
    let mut damaged = Vec::new();
    for sub in std::fs::read_dir(&data).unwrap() {
        for pack in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let path = pack.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            damaged.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    let job = drill(&s, "app");
    assert_eq!(job["job_status"], "Failed", "{job}");
    let message = job["message"].as_str().unwrap();
    println!("{message}");
    assert!(
        message.contains(&format!("backup {second}")),
        "names the backup: {message}"
    );
    assert!(
        damaged.iter().any(|p| message.contains(&p[..16])),
        "names the damaged object: {message}"
    );
    let b = &backups(&s, "app")[&second];
    assert_eq!(b["verifyStatus"], "FAILED", "{b}");
    assert_eq!(b["status"], "COMPLETED", "a failed drill deletes nothing: {b}");
    assert!(metric(&s, &format!("strongbox_verify_failures_total{labels}")) >= 1.0);
    assert_eq!(table_checksum(&db, "t"), live, "the live database untouched");
    assert_eq!(scratch_beside(&db), Vec::<String>::new(), "no scratch file left");
}

/// Drills on the configuration's schedule (the servers' clock in a file):
/// `verify` set, the next drill shown; none before its time; one drill job
/// per period once it comes, however often the scheduler looks.
#[test]
fn drills_run_on_the_configurations_schedule_once_per_period() {
    let dir = tempfile::tempdir().unwrap();
    set_clock(dir.path(), "2026-01-01T10:00:00Z");
    let s = scheduled_server(dir.path(), free_port());
    let db = dir.path().join("app.sqlite");
    write_rows_table(&db);
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    back_up(&s, "app");
    let url = s.url(&format!("{API}/app/backups/config"));
    let (status, v) = s.json(&["-X", "PUT", "-d", r#"{"verify": "0 5 * * *"}"#, &url]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    assert_eq!(v["verify"], "0 5 * * *", "{v}");
    assert_eq!(v["nextDrill"], "02-Jan-2026 05:00:00 UTC", "{v}");
    let (status, v) = s.json(&["-X", "PUT", "-d", r#"{"verify": "every day"}"#, &url]);
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(v["message"].as_str().unwrap().contains("verify"), "{v}");

    // Jobs are numbered from 1: the drills among the first ten.
    let drills = || {
        (1..=10)
            .filter(|id| {
                let (_, v) = s.json(&[&s.url(&format!(
                    "/paas/service/dbcs/api/v1.1/instances/usexample/status/verify/job/{id}"
                ))]);
                v["job_operation"] == "verify"
            })
            .count()
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(drills(), 0, "not before its time");
    set_clock(dir.path(), "2026-01-02T05:00:30Z");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while backups(&s, "app").values().all(|b| b["verifyStatus"] != "OK") {
        assert!(
            std::time::Instant::now() < deadline,
            "no drill ran: {:?}",
            backups(&s, "app")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(drills(), 1, "one drill for the period");
}

fn write_rows_table(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    write_rows(db, 1, 100);
}

/// A physical PostgreSQL deployment archiving its WAL: a drill recovers
/// the newest backup, an older one and a moment into a copy beside the
/// cluster (its own port), each `OK` with `amcheck` over the B-tree
/// indexes and the rows of each table; the copy's data directory gone
/// after; the live cluster's rows unchanged and its server up. Then a
/// backup whose configuration names a library that does not exist: its
/// copy will not start, and the drill fails with the server's own log line.
#[test]
fn a_postgresql_deployments_backups_are_drilled_in_copies_and_a_copy_that_will_not_start_fails_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = [
        (
            "STRONGBOX_TEST_CLOCK_FILE",
            dir.path().join("clock").display().to_string(),
        ),
        ("STRONGBOX_SCHEDULE_CHECK_MS", "50".into()),
    ];
    let Pg { s, c } = Pg::start_with(dir.path(), "", &clock);
    c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let rows = "SELECT coalesce(md5(string_agg(id || '@' || at, ',' ORDER BY id)), '') FROM ticks";
    write_ticks(c.port, 1, 100, 1000);
    let first = back_up(&s, "pg");
    write_ticks(c.port, 101, 200, 1000);
    let second = back_up(&s, "pg");
    write_ticks(c.port, 201, 250, 1000);
    let live = c.psql(rows);
    std::thread::sleep(std::time::Duration::from_millis(2100));

    let job = scheduled_drill(&s, "pg");
    assert_eq!(job["job_status"], "Succeeded", "{job}\n{}", c.log());
    println!("{}", job["message"]);
    let listed = backups(&s, "pg");
    let newest = &listed[&second];
    assert_eq!(newest["verifyStatus"], "OK", "{newest}");
    let found = newest["verifyMessage"].as_str().unwrap();
    assert!(found.contains("B-tree indexes sound"), "amcheck ran: {found}");
    // The backup's 200 rows, or (its last drill the moment's, taken while
    // rows 201-250 were written) those committed by that moment.
    let counted: u32 = found
        .split("public.ticks ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the rows counted: {found}"));
    assert!((200..=250).contains(&counted), "{found}");
    assert!(listed.contains_key(&first));
    let left: Vec<String> = std::fs::read_dir(c.home())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("strongbox"))
        .collect();
    assert!(left.is_empty(), "the drill's copy removed: {left:?}");
    assert_eq!(c.psql(rows), live, "the live cluster untouched");

    // A backup the server will not start from: its configuration names a
    // library that is not there (the live server read it before, and
    // forgets it again after the backup).
    c.psql("ALTER SYSTEM SET shared_preload_libraries = 'strongbox_no_such_library'");
    let broken = back_up(&s, "pg");
    c.psql("ALTER SYSTEM RESET shared_preload_libraries");
    let job = drill(&s, "pg");
    assert_eq!(job["job_status"], "Failed", "{job}");
    let message = job["message"].as_str().unwrap();
    println!("{message}");
    assert!(message.contains(&format!("backup {broken}")), "{message}");
    assert!(
        message.contains("could not access file \"strongbox_no_such_library\""),
        "the server's own log line: {message}"
    );
    assert_eq!(backups(&s, "pg")[&broken]["verifyStatus"], "FAILED");
    assert_eq!(c.psql(rows), live, "the live cluster untouched");
    assert_eq!(c.psql("SELECT 1"), "1", "and serving");
}

/// A `postgresql-logical` deployment: its backups drilled in another
/// database of the same server, dropped after; the live one unchanged.
#[test]
fn a_logical_postgresql_deployments_backups_are_drilled_in_a_scratch_database() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = strongbox_testkit::Database::create("sb_drill");
    let live = db.name.clone();
    pg_query(
        &live,
        "CREATE TABLE t AS SELECT n AS id, md5(n::text) AS v FROM generate_series(1, 500) AS n; \
                  ALTER TABLE t ADD PRIMARY KEY (id)",
    )
    .unwrap();
    let ordered = "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t";
    let at_backup = pg_query(&live, ordered).unwrap();
    let connection = serde_json::json!({"engine": "postgresql-logical", "connection": {
        "url": format!("postgresql://postgres@127.0.0.1:5432/{live}"), "bin_dir": strongbox_testkit::PG_BIN}});
    register(&s, "shop", connection);
    let tag = back_up(&s, "shop");
    let job = drill(&s, "shop");
    assert_eq!(job["job_status"], "Succeeded", "{job}");
    let b = &backups(&s, "shop")[&tag];
    assert_eq!(b["verifyStatus"], "OK", "{b}");
    let found = b["verifyMessage"].as_str().unwrap();
    assert!(
        found.contains("B-tree indexes sound") && found.contains("public.t 500"),
        "{found}"
    );
    let scratch = pg_query(&format!("{live}_strongbox_drill"), "SELECT 1");
    assert!(
        scratch.as_ref().is_err_and(|e| e.contains("does not exist")),
        "the scratch database dropped: {scratch:?}"
    );
    assert_eq!(
        pg_query(&live, ordered).unwrap(),
        at_backup,
        "the live database untouched"
    );
}

/// A `command` deployment (MariaDB) with a check and a drop command: its
/// backup drilled in a scratch database, the check's answer recorded, the
/// scratch database dropped after; the live one unchanged.
#[test]
fn a_command_deployments_backup_is_drilled_with_its_check_command() {
    let dir = tempfile::tempdir().unwrap();
    let s = scheduled_server(dir.path(), free_port());
    let live = format!("sb_drill_cmd_{}", std::process::id());
    maria(&format!(
        "DROP DATABASE IF EXISTS {live}; DROP DATABASE IF EXISTS {live}_strongbox_drill; CREATE DATABASE {live}; \
         USE {live}; CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t SELECT seq FROM seq_1_to_1234"
    ));
    let ordered = format!("SELECT MD5(GROUP_CONCAT(id ORDER BY id)) FROM {live}.t");
    let at_backup = maria(&ordered);
    let client = "mariadb -h 127.0.0.1 -u root";
    let reg = serde_json::json!({"engine": "command", "connection": {
        "database": live,
        "backup_command": "mariadb-dump -h 127.0.0.1 -u root --single-transaction $STRONGBOX_DATABASE",
        "prepare_command": format!("{client} -e \"CREATE DATABASE IF NOT EXISTS $STRONGBOX_DATABASE\""),
        "recovery_command": format!("{client} $STRONGBOX_DATABASE"),
        "check_command": format!("{client} -N -B -e \"SELECT count(*) FROM $STRONGBOX_DATABASE.t\""),
        "drop_command": format!("{client} -e \"DROP DATABASE IF EXISTS $STRONGBOX_DATABASE\""),
    }});
    register(&s, "shop", reg);
    let tag = back_up(&s, "shop");
    let job = scheduled_drill(&s, "shop");
    assert_eq!(job["job_status"], "Succeeded", "{job}");
    let b = &backups(&s, "shop")[&tag];
    assert_eq!(b["verifyStatus"], "OK", "{b}");
    assert!(
        b["verifyMessage"]
            .as_str()
            .unwrap()
            .contains("the check command answered: 1234 ("),
        "{b}"
    );
    assert_eq!(
        maria(&format!("SHOW DATABASES LIKE '{live}_strongbox_drill'")),
        "",
        "the scratch database dropped"
    );
    assert_eq!(maria(&ordered), at_backup, "the live database untouched");
    maria(&format!("DROP DATABASE {live}"));
}
