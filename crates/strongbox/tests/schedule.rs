//! Backups on a schedule, with the servers' clock in a file the test moves
//! (no sleeping through windows): one backup per period across restarts
//! and across two server processes on one catalog, one catch-up after
//! downtime, and configurations checked field by field, per identity domain.

use std::time::{Duration, Instant};

use crate::common::*;

const CONFIG: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/db12c/backups/config";

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

    // The same from the command line, on the server's data directory.
    let admin = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_strongbox"))
            .args(["admin", "config", "db12c", "--domain", "usexample"])
            .args(args)
            .env("STRONGBOX_DATA_DIR", dir.path().join("data"))
            .output()
            .unwrap()
    };
    let out = admin(&["--recovery-window-days", "400"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("recoveryWindowInDays must be 1 to 365"));
    let out = admin(&["--recovery-window-days", "7", "--window", "01:00-02:00"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, v) = s.json(&[s.url(CONFIG).as_str()]);
    assert_eq!(
        (&v["autoBackupWindow"], &v["cron"]),
        (&serde_json::json!("01:00-02:00"), &serde_json::Value::Null)
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

/// Takes a backup at the moment `at` (the servers' clock), waits for it,
/// and returns its tag.
fn backup_at(s: &Server, at: &str, body: &str) -> String {
    set_clock(&s.dir, at);
    let (status, h, _) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", body, s.url(BACKUPS).as_str()]].concat());
    assert_eq!(status, "HTTP/2 202");
    s.wait_for(header(&h, "location"), "Succeeded");
    backups(s)[0]["dbTag"].as_str().unwrap().to_string()
}

fn tags(s: &Server) -> Vec<String> {
    backups(s)
        .iter()
        .map(|b| b["dbTag"].as_str().unwrap().to_string())
        .collect()
}

fn delete(s: &Server, tag: &str, query: &str) -> (String, serde_json::Value, String) {
    let url = s.url(&format!("{BACKUPS}/{tag}{query}"));
    let (status, h, body) = s.curl(&[&AUTH[..], &["-X", "DELETE", url.as_str()]].concat());
    let location = h.iter().find(|(k, _)| k == "location").map(|(_, v)| v.clone());
    (
        status,
        serde_json::from_str(&body).unwrap_or_default(),
        location.unwrap_or_default(),
    )
}

#[test]
fn backups_outside_the_recovery_window_expire_and_deletion_keeps_its_rules() {
    let dir = tempfile::tempdir().unwrap();
    set_clock(dir.path(), "2026-01-01T00:00:00Z");
    let s = scheduled_server(dir.path(), free_port());
    let (status, v) = s.json(&[
        "-X",
        "PUT",
        "-d",
        r#"{"recoveryWindowInDays": 2, "minimumBackupsKept": 1}"#,
        s.url(CONFIG).as_str(),
    ]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    let forever = backup_at(&s, "2026-01-01T00:00:00Z", r#"{"keepForever": true}"#);
    let day1 = backup_at(&s, "2026-01-02T00:00:00Z", "{}");
    let day2 = backup_at(&s, "2026-01-03T00:00:00Z", "{}");
    let day3 = backup_at(&s, "2026-01-04T00:00:00Z", "{}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        tags(&s),
        [day3.clone(), day2, day1.clone(), forever.clone()],
        "all inside the window or needed at its start"
    );

    // Each goes when the next one reaches the window's start: day 1 on
    // day 5, day 2 on day 6; kept forever and the newest (the minimum), never.
    let expiry: Vec<serde_json::Value> = backups(&s).iter().map(|b| b["expiresAt"].clone()).collect();
    assert_eq!(
        expiry,
        [
            serde_json::Value::Null,
            serde_json::json!("06-Jan-2026 00:00:00 UTC"),
            serde_json::json!("05-Jan-2026 00:00:00 UTC"),
            serde_json::Value::Null
        ]
    );

    // Two days on: day 1 and day 2 left the window; day 3 is the newest
    // before its start (and the minimum), the first is kept forever.
    set_clock(dir.path(), "2026-01-06T00:00:30Z");
    let deadline = Instant::now() + Duration::from_secs(60);
    while tags(&s).len() != 2 {
        assert!(Instant::now() < deadline, "{:?}", backups(&s));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tags(&s), [day3.clone(), forever.clone()]);
    let snapshots = |s: &Server| {
        let out = s.repo_cli(&["--json", "snapshots"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(snapshots(&s), 2, "their snapshots are forgotten");

    // Deletion: kept forever needs force; unknown tags are 404; a deleted
    // backup is gone from the list, the repository and recovery.
    let (status, v, _) = delete(&s, &forever, "");
    assert_eq!(status, "HTTP/2 409", "{v}");
    assert!(v["message"].as_str().unwrap().contains("?force=true"), "{v}");
    let (status, _, _) = delete(&s, "TAG20990101T000000", "");
    assert_eq!(status, "HTTP/2 404");
    let (status, v, _) = delete(&s, &forever, "?force=maybe");
    assert_eq!(status, "HTTP/2 400", "{v}");
    let (status, v, _) = delete(&s, &forever, "?forse=true");
    assert_eq!(status, "HTTP/2 400", "a misspelt parameter is no silent delete: {v}");
    assert!(v["message"].as_str().unwrap().contains("forse"), "{v}");
    let (status, _, location) = delete(&s, &forever, "?force=true");
    assert_eq!(status, "HTTP/2 202");
    assert!(location.contains("/status/expire/job/"), "{location}");
    let job = s.wait_for(&location, "Succeeded");
    assert!(job["message"].as_str().unwrap().contains(&forever), "{job}");
    assert_eq!(tags(&s), [day3]);
    assert_eq!(snapshots(&s), 1);
    let (status, v) = s.json(&[
        "-X",
        "POST",
        "-d",
        &format!(r#"{{"tag": "{forever}"}}"#),
        s.url(&format!("{BACKUPS}/recovery")).as_str(),
    ]);
    assert_eq!(status, "HTTP/2 404", "a deleted backup cannot be recovered: {v}");
    let (status, _, _) = delete(&s, &day1, "");
    assert_eq!(status, "HTTP/2 404", "already expired");
}

#[test]
fn the_servers_backup_defaults_apply_to_deployments_without_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strongbox.toml");
    let serve = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_strongbox"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("STRONGBOX_DATA_DIR", dir.path().join("data"))
            .env("STRONGBOX_LISTEN", format!("127.0.0.1:{port}"))
            .output()
            .unwrap()
    };
    // Bad defaults stop the server before it serves, naming what is wrong.
    for (toml, names) in [
        ("recovery_window_in_days = 0", "recoveryWindowInDays must be 1 to 365"),
        ("window = \"2-4\"", "autoBackupWindow"),
        ("keep_days = 3", "keep_days"),
    ] {
        std::fs::write(&config, format!("[backup_defaults]\n{toml}\n")).unwrap();
        let out = serve(free_port());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(names), "{toml}: {err}");
    }

    std::fs::write(
        &config,
        "[backup_defaults]\nauto_backup_enabled = true\nwindow = \"01:00-03:00\"\nrecovery_window_in_days = 7\n",
    )
    .unwrap();
    set_clock(dir.path(), "2026-01-01T10:00:00Z");
    let s = start_with(
        dir.path(),
        free_port(),
        &[
            (
                "STRONGBOX_TEST_CLOCK_FILE",
                dir.path().join("clock").display().to_string(),
            ),
            ("STRONGBOX_SCHEDULE_CHECK_MS", "50".into()),
            ("STRONGBOX_CONFIG", config.display().to_string()),
        ],
    );
    let (_, v) = s.json(&[s.url(CONFIG).as_str()]);
    assert_eq!(
        (
            &v["autoBackupEnabled"],
            &v["autoBackupWindow"],
            &v["recoveryWindowInDays"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!("01:00-03:00"),
            &serde_json::json!(7)
        ),
        "{v}"
    );
    // On by default from the first period: the demo deployment's first
    // backup is due at once.
    let list = settle_at(&s, 1);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["dbTag"], "TAG20260101T100000");

    // `strongbox admin config` with the same file changes one field and
    // keeps the defaults' others.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strongbox"))
        .args([
            "admin",
            "config",
            "db12c",
            "--domain",
            "usexample",
            "--minimum-backups-kept",
            "2",
        ])
        .env("STRONGBOX_DATA_DIR", dir.path().join("data"))
        .env("STRONGBOX_CONFIG", &config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, v) = s.json(&[s.url(CONFIG).as_str()]);
    assert_eq!(
        (
            &v["autoBackupWindow"],
            &v["recoveryWindowInDays"],
            &v["minimumBackupsKept"]
        ),
        (
            &serde_json::json!("01:00-03:00"),
            &serde_json::json!(7),
            &serde_json::json!(2)
        ),
        "{v}"
    );
}
