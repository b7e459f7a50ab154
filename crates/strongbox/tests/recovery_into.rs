//! Issue 31: recovery into another place. A SQLite deployment shipping its
//! log is recovered into other files by `latest`, a tag, a timestamp and
//! an scn, each exactly (ordered checksum of every column of every row at
//! that point), while the live database keeps its rows (checksum before and
//! after every recovery), its application writes on through a connection
//! held open, and its shipper goes on in the same generation. Refused with
//! 400 saying why: a place the configuration does not allow (naming the
//! setting), the server's own files, the deployment's own file, a file
//! that exists without `"replace": true`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const APP: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/app";

fn insert(c: &rusqlite::Connection, ns: impl IntoIterator<Item = i64>) {
    for n in ns {
        c.execute("INSERT INTO t VALUES (?1, randomblob(100))", [n]).unwrap();
    }
}

/// The shipped log's state: its generation and its last position, once
/// the shipper has caught up with the last commit (it polls every 100 ms).
fn shipped(s: &Server) -> (String, String) {
    std::thread::sleep(Duration::from_millis(1000));
    let (_, v) = s.json(&[&s.url(APP)]);
    let shipping = &v["continuousArchiving"];
    let range = shipping["ranges"].as_array().and_then(|r| r.last()).cloned();
    let range = range.unwrap_or_else(|| panic!("no shipped range: {v}"));
    (
        shipping["generation"].as_str().unwrap_or_default().to_string(),
        range["latestScn"].as_str().unwrap_or_default().to_string(),
    )
}

/// The timestamp of the next whole second, once it has passed by more than
/// a second: commits before and after it are apart.
fn mark() -> String {
    let (t, wait) = second_after(Duration::ZERO);
    std::thread::sleep(wait + Duration::from_millis(1100));
    api_time(t)
}

/// Recovers `app` as `body` asks into `copy`; the job's parameters name
/// the target.
fn recover_into(s: &Server, body: &str, copy: &Path) -> serde_json::Value {
    let body = body.replacen('}', &format!(r#", "target": {{"path": "{}"}}}}"#, copy.display()), 1);
    let job = post_until_accepted(s, &format!("{API}/app/backups/recovery"), &body);
    assert_eq!(
        job["job_request_parameters"]["target"]["path"],
        copy.display().to_string(),
        "{job}"
    );
    job
}

fn refused(s: &Server, body: &str) -> String {
    let url = s.url(&format!("{APP}/backups/recovery"));
    let (status, v) = s.json(&["-X", "POST", "-d", body, &url]);
    assert_eq!(status, "HTTP/2 400", "{body}: {v}");
    let message = v["message"].as_str().unwrap_or_default().to_string();
    println!("{body}: {message}");
    message
}

#[test]
fn a_sqlite_deployment_recovers_into_other_files_exactly_and_the_live_one_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = dir.path().join("app.sqlite");
    let copies = dir.path().join("copies");
    std::fs::create_dir_all(&copies).unwrap();
    let app = rusqlite::Connection::open(&db).unwrap();
    app.busy_timeout(Duration::from_secs(30)).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER PRIMARY KEY, pad BLOB); CREATE TABLE served(at TEXT)",
    )
    .unwrap();
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    assert_eq!(s.archive_continuously("app").0, "HTTP/2 200");
    let deadline = Instant::now() + Duration::from_secs(60);
    while backup_listing(&s, "app").iter().all(|b| !b.contains("\"COMPLETED\"")) {
        assert!(Instant::now() < deadline, "no base backup");
        std::thread::sleep(Duration::from_millis(200));
    }

    insert(&app, 1..=50);
    let at_50 = table_checksum(&db, "t");
    let t_50 = mark();
    insert(&app, 51..=100);
    app.execute("DELETE FROM t WHERE n % 10 = 0", []).unwrap();
    app.execute("UPDATE t SET pad = x'00' WHERE n % 7 = 0", []).unwrap();
    let at_100 = table_checksum(&db, "t");
    let (_, scn_100) = shipped(&s);
    let job = post_until_accepted(&s, &format!("{API}/app/backups"), "{}");
    let (_, list) = s.json(&[&s.url(&format!("{APP}/backups"))]);
    let tag_100 = list["backupList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["jobId"] == job["job_id"])
        .and_then(|b| b["dbTag"].as_str())
        .unwrap_or_else(|| panic!("backup job {} listed: {list}", job["job_id"]))
        .to_string();
    insert(&app, 101..=150);
    let live = table_checksum(&db, "t");
    let (generation, _) = shipped(&s);

    let copy = |name: &str| copies.join(name);
    for (body, name, expected) in [
        (r#"{"latest": true}"#.to_string(), "latest.db", &live),
        (format!(r#"{{"tag": "{tag_100}"}}"#), "tag.db", &at_100),
        (format!(r#"{{"timestamp": "{t_50}"}}"#), "timestamp.db", &at_50),
        (format!(r#"{{"scn": "{scn_100}"}}"#), "scn.db", &at_100),
    ] {
        recover_into(&s, &body, &copy(name));
        assert_eq!(&table_checksum(&copy(name), "t"), expected, "{body} into {name}");
        let check: String = rusqlite::Connection::open(copy(name))
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{name}");
        assert_eq!(table_checksum(&db, "t"), live, "the live database untouched by {body}");
        // The application's connection, open throughout, still writes.
        app.execute("INSERT INTO served VALUES (?1)", [&name]).unwrap();
    }

    // Not the deployment's recoveries: its history lists none, and its
    // shipper goes on in the same generation, shipping what follows.
    let (_, history) = s.json(&[&s.url(&format!("{APP}/backups/recovery/history"))]);
    assert_eq!(history["recoveryList"], serde_json::json!([]), "{history}");
    insert(&app, 151..=160);
    let live = table_checksum(&db, "t");
    let (still, _) = shipped(&s);
    assert_eq!(still, generation, "the shipper's generation went on");
    recover_into(&s, r#"{"latest": true}"#, &copy("later.db"));
    assert_eq!(table_checksum(&copy("later.db"), "t"), live);

    // A file that exists is overwritten only when asked to.
    let message = refused(
        &s,
        &format!(
            r#"{{"tag": "{tag_100}", "target": {{"path": "{}"}}}}"#,
            copy("latest.db").display()
        ),
    );
    assert!(
        message.contains("exists") && message.contains("\"replace\": true"),
        "{message}"
    );
    let body = format!(r#"{{"tag": "{tag_100}", "replace": true}}"#);
    recover_into(&s, &body, &copy("latest.db"));
    assert_eq!(table_checksum(&copy("latest.db"), "t"), at_100);

    // Places the request may not name.
    let message = refused(
        &s,
        r#"{"latest": true, "target": {"path": "/var/lib/strongbox-not-allowed/app.db"}}"#,
    );
    assert!(message.contains("database_files"), "names the setting: {message}");
    let own = format!("{}/./app.sqlite", dir.path().display());
    let message = refused(&s, &format!(r#"{{"latest": true, "target": {{"path": "{own}"}}}}"#));
    assert!(message.contains("app's own"), "{message}");
    let servers = dir.path().join("data").join("copy.db");
    refused(
        &s,
        &format!(r#"{{"latest": true, "target": {{"path": "{}"}}}}"#, servers.display()),
    );
    assert!(!servers.exists());
    let message = refused(&s, r#"{"latest": true, "target": {"file": "/tmp/x.db"}}"#);
    assert!(message.contains("path"), "{message}");
    refused(&s, r#"{"latest": true, "target": "/tmp/x.db"}"#);
    refused(&s, r#"{"latest": true, "replace": true}"#);
    assert_eq!(table_checksum(&db, "t"), live, "the live database untouched");
}
