//! Issue 30: the catalog's database stopped for 10 s in the middle of a
//! backup, and of a recovery. Every request is answered within a second
//! (503 with `Retry-After` while it is down, the health check naming the
//! catalog); the backup then succeeds, once, and restores exactly; the
//! recovery succeeds and its data is exact.

use std::time::{Duration, Instant};

use crate::common::*;

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
    let (answers, unavailable) = answered_within_a_second(s, &urls, stopped + Duration::from_secs(10));
    ctl("start");
    assert!(unavailable > answers / 2, "{unavailable} of {answers} were 503");
}

/// Asks `urls` and the health check every 100 ms until `until`, the
/// catalog down: each answered within a second, 200 or 503 with
/// `Retry-After` and words naming the catalog, the health check 503 at
/// least once. How many were asked, and answered 503.
fn answered_within_a_second(s: &Server, urls: &[String], until: Instant) -> (u32, u32) {
    let (mut answers, mut unavailable, mut slowest) = (0, 0, Duration::ZERO);
    let mut health_named_catalog = false;
    while Instant::now() < until {
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
    println!("{answers} requests while the catalog was down: {unavailable} answered 503, the slowest in {slowest:?}");
    assert!(health_named_catalog, "the health check never named the catalog");
    (answers, unavailable)
}

/// Catalog down × prune: seven backups of `notes` (each a different
/// text), six deleted one by one, the catalog stopped for 3 s a seeded
/// 10–40 ms after each deletion is sent, so that the outage begins before
/// it is queued (503, sent again after), during its expire job's forget
/// and prune, or after. Requests
/// answer within a second; every deletion's job ends `Succeeded` (taken
/// again after the outage where it had to be); the repository holds the
/// snapshots of exactly the backups listed; `check --read-data` is clean;
/// the backup left restores exactly.
#[test]
fn backups_deleted_while_the_catalog_stops_are_gone_and_the_rest_restore() {
    let seed = strongbox_testkit::fresh_seed();
    let (_root, catalog, data, s) = notes("cat", "cat >");
    let ctl = |a: &str| strongbox_testkit::as_postgres(&catalog.ctl(a));
    let listed = || -> Vec<String> {
        let (_, list) = s.json(&[&s.url(&format!("{API}/notes/backups"))]);
        let mut tags: Vec<String> = list["backupList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["dbTag"].as_str().unwrap().to_string())
            .collect();
        tags.sort();
        tags
    };
    let data_dir = s.dir.join("data");
    let in_repository = || s.snapshot_tags(&data_dir.join("repository"), &data_dir.join("repository.password"));
    let mut last = serde_json::Value::Null;
    for i in 1..=7 {
        std::fs::write(&data, format!("the notes, version {i}\n")).unwrap();
        last = post_until_accepted(&s, &format!("{API}/notes/backups"), "{}");
    }
    // The newest is kept.
    let (_, list) = s.json(&[&s.url(&format!("{API}/notes/backups"))]);
    let newest = list["backupList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["jobId"] == last["job_id"]);
    let kept = newest.unwrap()["dbTag"].as_str().unwrap().to_string();
    let tags: Vec<String> = listed().into_iter().filter(|t| *t != kept).collect();
    assert_eq!(tags.len(), 6);
    let mut x = seed | 1;
    let mut during = 0;
    for tag in tags {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Here a job ran 15–30 ms after its deletion was sent.
        let delay = Duration::from_millis(10 + x % 30);
        let url = s.url(&format!("{API}/notes/backups/{tag}"));
        let delete = || s.curl(&[&AUTH[..], &["-X", "DELETE", &url]].concat());
        // The stop begins `delay` after the deletion is sent: before it is
        // queued (503), while its job runs, or after.
        let (stopped_at, (status, h, body)) = std::thread::scope(|sc| {
            let stopper = sc.spawn(|| {
                std::thread::sleep(delay);
                let at = strongbox_testkit::sh("date -u +%Y-%m-%dT%H:%M:%S.%NZ")
                    .trim()
                    .to_string();
                ctl("stop");
                at
            });
            let answer = delete();
            (stopper.join().unwrap(), answer)
        });
        let location = match status.as_str() {
            "HTTP/2 202" => Some(header(&h, "location").to_string()),
            "HTTP/2 503" => None,
            other => panic!(
                "seed {seed}: DELETE {tag}: {other}: {body}\n--- the server's last warnings:\n{}",
                s.last_warnings(10)
            ),
        };
        let asked = location
            .clone()
            .unwrap_or_else(|| s.url(&format!("{API}/notes/backups")));
        answered_within_a_second(&s, &[asked], Instant::now() + Duration::from_secs(3));
        ctl("start");
        let location = location.unwrap_or_else(|| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, h, body) = delete();
                if status == "HTTP/2 202" {
                    break header(&h, "location").to_string();
                }
                assert!(Instant::now() < deadline, "seed {seed}: DELETE {tag}: {status}: {body}");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let done = loop {
            let (_, v) = s.json(&[&location]);
            if v["job_status"] == "Succeeded" || v["job_status"] == "Failed" {
                break v;
            }
            assert!(Instant::now() < deadline, "seed {seed}: {v}");
            std::thread::sleep(Duration::from_millis(100));
        };
        // Timestamps of one format compare as strings.
        let hit = done["job_start_date"].as_str().unwrap() < stopped_at.as_str()
            && done["last_modified_time"].as_str().unwrap() > stopped_at.as_str();
        println!(
            "{tag}: the catalog stopped {delay:?} after the deletion was sent ({}; {}), ended {}: {}",
            status,
            if hit { "its job running" } else { "its job not running" },
            done["job_status"],
            done["message"]
        );
        during += hit as u32;
        assert_eq!(done["job_status"], "Succeeded", "seed {seed}: {done}");
        assert!(!listed().contains(&tag), "seed {seed}: {tag} still listed");
        assert_eq!(
            in_repository(),
            listed(),
            "seed {seed}: the repository holds what is listed"
        );
    }
    println!("seed {seed}: {during} of 6 outages began while the expire job ran");
    assert_eq!(listed(), std::slice::from_ref(&kept));
    let out = s.repo_cli(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    std::fs::write(&data, "overwritten\n").unwrap();
    post_until_accepted(
        &s,
        &format!("{API}/notes/backups/recovery"),
        &format!(r#"{{"tag": "{kept}"}}"#),
    );
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "the notes, version 7\n");
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
