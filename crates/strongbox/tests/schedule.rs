//! Backups on a schedule, with the servers' clock in a file the test moves
//! (no sleeping through windows): one backup per period across restarts
//! and across two server processes on one catalog, one catch-up after
//! downtime, and configurations checked field by field, per identity domain.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const CONFIG: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/db12c/backups/config";

fn set_clock(dir: &Path, t: &str) {
    std::fs::write(dir.join("clock"), t).unwrap();
}

fn scheduled_server(dir: &Path, port: u16) -> Server {
    start_with(
        dir,
        port,
        &[
            ("STRONGBOX_TEST_CLOCK_FILE", dir.join("clock").display().to_string()),
            ("STRONGBOX_SCHEDULE_CHECK_MS", "50".into()),
        ],
    )
}

fn backups(s: &Server) -> Vec<serde_json::Value> {
    let (status, v) = s.json(&[s.url(BACKUPS).as_str()]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    v["backupList"].as_array().unwrap().clone()
}

/// Waits until `n` backups have completed, then long enough for many more
/// scheduler rounds on every server, and returns the list.
fn settle_at(s: &Server, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = backups(s);
        let done = list.iter().filter(|b| b["status"] == "COMPLETED").count();
        if done >= n {
            break;
        }
        assert!(Instant::now() < deadline, "waiting for {n} backups: {list:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500)); // ~30 rounds of each scheduler
    backups(s)
}

#[test]
fn the_schedule_fires_once_per_period_across_restarts_and_servers_and_catches_up_once() {
    let dir = tempfile::tempdir().unwrap();
    set_clock(dir.path(), "2026-01-01T10:00:00Z");
    let a = scheduled_server(dir.path(), free_port());
    let (status, config) = a.json(&[
        "-X",
        "PUT",
        "-d",
        r#"{"autoBackupEnabled": true, "autoBackupWindow": "02:00-04:00"}"#,
        a.url(CONFIG).as_str(),
    ]);
    assert_eq!(status, "HTTP/2 200", "{config}");
    assert_eq!(config["nextScheduledBackup"], "02-Jan-2026 02:00:00 UTC");
    assert_eq!(config["recoveryWindowInDays"], 30);
    let b = scheduled_server(dir.path(), free_port());
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        backups(&a).is_empty(),
        "today's window began before the schedule was on"
    );

    // The window opens: one backup, though two servers look 20 times a second.
    set_clock(dir.path(), "2026-01-02T02:00:30Z");
    let list = settle_at(&a, 1);
    assert_eq!(list.len(), 1, "{list:?}");
    let job = list[0]["jobId"].as_i64().unwrap();
    let (_, log) = a.json(&[a
        .url(&format!("/paas/api/v1.1/activitylog/usexample/job/{job}"))
        .as_str()]);
    assert_eq!(
        (log["initiatedBy"].as_str(), log["authUser"].as_str()),
        (Some("SYSTEM"), Some("SYSTEM"))
    );
    assert!(
        log["messages"][0]["message"]
            .as_str()
            .unwrap()
            .contains("scheduled for 2026-01-02T02:00:00Z"),
        "{log}"
    );
    let port = a.port;
    drop(a);
    let a = scheduled_server(dir.path(), port);
    assert_eq!(settle_at(&a, 1).len(), 1, "a restart in the same period adds none");

    // Three days down, both servers: one catch-up backup, not three.
    drop(b);
    drop(a);
    set_clock(dir.path(), "2026-01-05T11:00:00Z");
    let a = scheduled_server(dir.path(), port);
    let _b = scheduled_server(dir.path(), free_port());
    let list = settle_at(&a, 2);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["dbTag"], "TAG20260105T110000", "the catch-up runs at once");
    set_clock(dir.path(), "2026-01-05T23:59:00Z");
    assert_eq!(settle_at(&a, 2).len(), 2, "the rest of the day adds none");
    let (_, config) = a.json(&[a.url(CONFIG).as_str()]);
    assert_eq!(config["nextScheduledBackup"], "06-Jan-2026 02:00:00 UTC");
    let (_, instance) = a.json(&[a.url("/paas/service/dbcs/api/v1.1/instances/usexample/db12c").as_str()]);
    assert_eq!(instance["lastBackup"]["dbTag"], "TAG20260105T110000", "{instance}");
    assert_eq!(instance["backupConfig"]["autoBackupWindow"], "02:00-04:00");
}

#[test]
fn bad_configurations_are_refused_and_domains_keep_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let put = |body: &str| s.json(&["-X", "PUT", "-d", body, s.url(CONFIG).as_str()]);
    for (body, names) in [
        (
            r#"{"recoveryWindowInDays": 0}"#,
            "recoveryWindowInDays must be 1 to 365",
        ),
        (
            r#"{"recoveryWindowInDays": 366}"#,
            "recoveryWindowInDays must be 1 to 365",
        ),
        (r#"{"autoBackupWindow": "2-4"}"#, "autoBackupWindow"),
        (r#"{"cron": "every night"}"#, "cron"),
        (
            r#"{"cron": "0 2 * * *", "autoBackupWindow": "02:00-04:00"}"#,
            "not both",
        ),
        (r#"{"minimumBackupsKept": -1}"#, "minimumBackupsKept"),
        (r#"{"autoBackupEnabled": "yes"}"#, "autoBackupEnabled"),
        (r#"{"keepDays": 3}"#, "keepDays"),
    ] {
        let (status, v) = put(body);
        assert_eq!(status, "HTTP/2 400", "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(names), "{body}: {v}");
    }
    let (_, v) = s.json(&[s.url(CONFIG).as_str()]);
    assert_eq!(
        (
            &v["autoBackupEnabled"],
            &v["recoveryWindowInDays"],
            &v["autoBackupWindow"]
        ),
        (
            &serde_json::json!(false),
            &serde_json::json!(30),
            &serde_json::json!("02:00-04:00")
        ),
        "nothing changed: {v}"
    );
    let (status, v) = put(r#"{"cron": "0 */6 * * *", "recoveryWindowInDays": 7, "minimumBackupsKept": 3}"#);
    assert_eq!(status, "HTTP/2 200", "{v}");
    assert_eq!(
        (&v["cron"], &v["recoveryWindowInDays"]),
        (&serde_json::json!("0 */6 * * *"), &serde_json::json!(7))
    );

    // The same deployment name in another identity domain is another deployment.
    add_user(dir.path(), "ida", "idcs-77", "admin");
    let ida = [
        "-u",
        "ida:ida-pw",
        "-H",
        "X-ID-TENANT-NAME:idcs-77",
        "-H",
        "Content-Type:application/json",
    ];
    let other = |path: &str| s.url(&format!("/paas/service/dbcs/api/v1.1/instances/idcs-77/db12c{path}"));
    let (status, _, body) = s.curl(&[&ida[..], &[other("/backups/config").as_str()]].concat());
    assert_eq!(status, "HTTP/2 404", "not registered there yet: {body}");
    let db = dir.path().join("other.sqlite");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let register = s.url("/strongbox/api/v1/instances/idcs-77/db12c");
    let connection = format!(
        r#"{{"engine": "sqlite", "connection": {{"path": "{}"}}}}"#,
        db.display()
    );
    let (status, _, body) = s.curl(&[&ida[..], &["-X", "PUT", "-d", &connection, register.as_str()]].concat());
    assert_eq!(status, "HTTP/2 200", "{body}");
    let (_, _, body) = s.curl(&[&ida[..], &[other("/backups/config").as_str()]].concat());
    let theirs: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&theirs["recoveryWindowInDays"], &theirs["cron"]),
        (&serde_json::json!(30), &serde_json::Value::Null)
    );
    let (_, _, body) = s.curl(
        &[
            &ida[..],
            &[
                "-X",
                "PUT",
                "-d",
                r#"{"recoveryWindowInDays": 90}"#,
                other("/backups/config").as_str(),
            ],
        ]
        .concat(),
    );
    assert!(body.contains("\"recoveryWindowInDays\":90"), "{body}");
    let (_, ours) = s.json(&[s.url(CONFIG).as_str()]);
    assert_eq!(ours["recoveryWindowInDays"], 7, "usexample's db12c is untouched");
    let (status, _, _) = s.curl(&[&ida[..], &[s.url(CONFIG).as_str()]].concat());
    assert_eq!(status, "HTTP/2 403", "and out of reach");
}
