//! Issue 30: the catalog's database stopped for 10 s in the middle of a
//! backup, and of a recovery. Every request is answered within a second
//! (503 with `Retry-After` while it is down, the health check naming the
//! catalog); the backup then succeeds, once, and restores exactly; the
//! recovery succeeds and its data is exact.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_catalog_stopped_mid_backup_gets_quick_503s_and_the_backup_succeeds_once() {
    // A backup that runs for 14 s: the outage falls inside it.
    let (_root, catalog, data, s) = notes("sleep 14 && cat", "cat >");
    let (status, location) = s.post_backup("notes", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    outage(&s, &catalog, &location);

    let done = s.wait_for(&location, "Succeeded");
    let (_, list) = s.json(&[&s.url(&format!("{API}/notes/backups"))]);
    let backups = list["backupList"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{list}");
    assert_eq!(backups[0]["status"], "COMPLETED", "{list}");
    assert_eq!(done["job_id"], backups[0]["jobId"]);
    let (_, health) = s.json(&[&s.url("/strongbox/health")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut health = health;
    while health["status"] != "ok" {
        assert!(Instant::now() < deadline, "{health}");
        std::thread::sleep(Duration::from_millis(200));
        health = s.json(&[&s.url("/strongbox/health")]).1;
    }
    std::fs::write(&data, "overwritten\n").unwrap();
    let tag = backups[0]["dbTag"].as_str().unwrap();
    post_until_accepted(
        &s,
        &format!("{API}/notes/backups/recovery"),
        &format!(r#"{{"tag": "{tag}"}}"#),
    );
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "the notes as backed up\n");
    let out = s.repo_cli(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A server whose catalog is on a PostgreSQL cluster of the test's own (to
/// stop) and a `command` deployment `notes` backing up and recovering a
/// file (`BACKUP FILE`, `RECOVERY FILE`): the directory, the cluster, the
/// file and the server.
fn notes(
    backup: &str,
    recovery: &str,
) -> (
    tempfile::TempDir,
    strongbox_testkit::Cluster,
    std::path::PathBuf,
    Server,
) {
    let root = tempfile::tempdir().unwrap();
    let catalog = strongbox_testkit::Cluster::start("");
    let data = root.path().join("notes.txt");
    std::fs::write(&data, "the notes as backed up\n").unwrap();
    let backup_command = format!("{backup} {}", data.display());
    let recovery_command = format!("{recovery} {}", data.display());
    let env = [
        ("STRONGBOX_CATALOG", catalog.url()),
        (
            "STRONGBOX_ALLOW_COMMANDS",
            serde_json::json!([backup_command, recovery_command]).to_string(),
        ),
        // Leases outlast the outage (the test servers' default is 2 s).
        ("STRONGBOX_LEASE_SECONDS", "30".to_string()),
    ];
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let s = start_with(&host, free_port(), &env);
    register_command(&s, "notes", &backup_command, &recovery_command);
    (root, catalog, data, s)
}

/// A second into job `location`, stops the catalog's cluster for 10 s: a
/// WAL file is pushed and fetched back exactly (archiving needs only the
/// repository); the job, the backup list and the health check, asked every
/// 100 ms, are each answered within a second, 200 or 503 with
/// `Retry-After` and words naming the catalog, the health check among them.
fn outage(s: &Server, catalog: &strongbox_testkit::Cluster, location: &str) {
    std::thread::sleep(Duration::from_secs(1));
    let urls = [location.to_string(), s.url(&format!("{API}/notes/backups"))];
    let ctl = |a: &str| strongbox_testkit::as_postgres(&catalog.ctl(a));
    ctl("stop");
    let stopped = Instant::now();
    // PostgreSQL's archive_command and restore_command go on: they need
    // only the repository, not the catalog.
    let segment = s.dir.join("000000010000000000000001");
    let bytes: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&segment, &bytes).unwrap();
    let pushed = s.repo_cli(&["wal-push", "--archive", "usexample/notes", segment.to_str().unwrap()]);
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let fetched = s.dir.join("fetched");
    let name = "000000010000000000000001";
    let out = s.repo_cli(&[
        "wal-fetch",
        "--archive",
        "usexample/notes",
        name,
        fetched.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        std::fs::read(&fetched).unwrap() == bytes,
        "the pushed WAL, byte for byte"
    );
    println!("WAL pushed and fetched {:?} into the outage", stopped.elapsed());
    let (mut answers, mut unavailable, mut slowest) = (0, 0, Duration::ZERO);
    let mut health_named_catalog = false;
    while stopped.elapsed() < Duration::from_secs(10) {
        for url in urls.iter().cloned().chain([s.url("/strongbox/health")]) {
            let asked = Instant::now();
            let (status, h, body) = s.curl(&[&AUTH[..], &["--max-time", "5", &url]].concat());
            let took = asked.elapsed();
            slowest = slowest.max(took);
            assert!(took < Duration::from_secs(1), "{url}: {status} after {took:?}: {body}");
            answers += 1;
            match status.as_str() {
                "HTTP/2 200" => {}
                "HTTP/2 503" => {
                    unavailable += 1;
                    assert!(!header(&h, "retry-after").is_empty(), "{url}: no Retry-After");
                    assert!(body.contains("catalog"), "{url}: {body}");
                    health_named_catalog |= url.ends_with("/strongbox/health");
                }
                other => panic!("{url}: {other}: {body}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ctl("start");
    println!("{answers} requests while the catalog was down: {unavailable} answered 503, the slowest in {slowest:?}");
    assert!(unavailable > answers / 2, "{unavailable} of {answers} were 503");
    assert!(health_named_catalog, "the health check never named the catalog");
}

#[test]
fn a_catalog_stopped_mid_recovery_gets_quick_503s_and_the_recovery_succeeds() {
    // A recovery that runs for 14 s: the outage falls inside it.
    let (_root, catalog, data, s) = notes("cat", "sleep 14 && cat >");
    post_until_accepted(&s, &format!("{API}/notes/backups"), "{}");
    let (_, list) = s.json(&[&s.url(&format!("{API}/notes/backups"))]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    std::fs::write(&data, "overwritten\n").unwrap();
    let location = ask_recovery(&s, "notes", &format!(r#"{{"tag": "{tag}"}}"#));
    outage(&s, &catalog, &location);

    let done = s.wait_for(&location, "Succeeded");
    assert_eq!(
        std::fs::read_to_string(&data).unwrap(),
        "the notes as backed up\n",
        "{done}"
    );
}

/// A SQLite log shipped while the catalog is stopped for 10 s: 100
/// transactions commit during the outage; once the catalog is back, the
/// shipped log reaches the 150th and `latest` recovered into another file
/// holds exactly the live rows (ordered checksum).
#[test]
fn a_log_shipped_while_the_catalog_is_down_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let catalog = strongbox_testkit::Cluster::start("");
    let env = [
        ("STRONGBOX_CATALOG", catalog.url()),
        ("STRONGBOX_LEASE_SECONDS", "30".to_string()),
    ];
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let s = start_with(&host, free_port(), &env);
    let db = root.path().join("app.db");
    let app = shipping_sqlite(&s, "app", &db);
    let insert = |ns: std::ops::RangeInclusive<i64>, every: Duration| {
        for n in ns {
            app.execute("INSERT INTO t VALUES (?1, randomblob(200))", [n]).unwrap();
            std::thread::sleep(every);
        }
    };
    insert(1..=50, Duration::from_millis(10));

    let ctl = |a: &str| strongbox_testkit::as_postgres(&catalog.ctl(a));
    ctl("stop");
    let stopped = Instant::now();
    insert(51..=150, Duration::from_millis(80));
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    ctl("start");
    let live = table_checksum(&db, "t");

    wait_shipped(&s, "app", 150);
    let copy = root.path().join("copy.db");
    let body = format!(r#"{{"latest": true, "target": {{"path": "{}"}}}}"#, copy.display());
    post_until_accepted(&s, &format!("{API}/app/backups/recovery"), &body);
    assert_eq!(table_checksum(&copy, "t"), live, "every committed row, exactly");
}
