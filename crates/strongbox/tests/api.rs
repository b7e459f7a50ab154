//! The API server as a real process over real TLS (a test CA), driven by
//! real curl: the seed's request end to end, then the error cases.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn the_seed_request_backs_up_a_real_database() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    // The seed's curl command, word for word but for host and CA file.
    let (status, h, body) = s.curl(&[
        "-X",
        "POST",
        "-u",
        "serviceadmin:Pa55_word",
        "-H",
        "X-ID-TENANT-NAME:usexample",
        "-H",
        "Content-Type:application/json",
        "-d",
        "{ }",
        &s.url(BACKUPS),
    ]);
    assert_eq!(status, "HTTP/2 202", "{h:?} {body}");
    assert_eq!(body, "");
    let location = header(&h, "location").to_string();
    let prefix = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/status/backup/job/");
    assert!(
        location.starts_with(&prefix) && location[prefix.len()..].parse::<u64>().is_ok(),
        "{location}"
    );
    assert_eq!(
        header(&h, "service-uri"),
        s.url("/paas/service/dbcs/api/v1.1/instances/usexample/db12c")
    );
    assert_eq!(header(&h, "retry-after"), "60");
    assert_eq!(header(&h, "content-type"), "application/json");
    assert_eq!(header(&h, "content-language"), "en");
    assert_eq!(header(&h, "vary"), "user-agent");
    assert_eq!(
        header(&h, "strict-transport-security"),
        "max-age=31536000;includeSubDomains"
    );
    assert_eq!(header(&h, "access-control-allow-origin"), "*");
    assert_eq!(
        header(&h, "access-control-allow-headers"),
        "Content-Type, api_key, Authorization, X-ID-TENANT-NAME, X-USER-IDENTITY-DOMAIN-NAME"
    );
    assert_eq!(
        header(&h, "access-control-allow-methods"),
        "GET, POST, DELETE, PUT, OPTIONS, HEAD"
    );
    assert_eq!(header(&h, "x-frame-options"), "DENY");
    let ecid = header(&h, "x-oracle-dms-ecid").to_string();
    assert!(ecid.len() >= 16);

    // Poll the job to Succeeded.
    let auth = [
        "-u",
        "serviceadmin:Pa55_word",
        "-H",
        "X-ID-TENANT-NAME:usexample",
        "-H",
        "Content-Type:application/json",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let (status, h, body) = s.curl(&[&auth[..], &[location.as_str()]].concat());
        assert_eq!(status, "HTTP/2 200", "{body}");
        assert_ne!(
            header(&h, "x-oracle-dms-ecid"),
            ecid,
            "a new correlation id per request"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        match v["job_status"].as_str().unwrap() {
            "Succeeded" => break v,
            "In Progress" => {}
            other => panic!("job {other}: {v}"),
        }
        assert!(Instant::now() < deadline, "job did not finish: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(job["job_operation"], "backup");
    assert_eq!(job["identity_domain"], "usexample");
    assert_eq!(job["created_by"], "serviceadmin");
    assert!(job["progress"]["bytes_done"].as_u64().unwrap() > 100_000, "{job}");

    let (status, _, body) = s.curl(&[&auth[..], &[s.url(BACKUPS).as_str()]].concat());
    assert_eq!(status, "HTTP/2 200");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let b = &v["backupList"][0];
    assert_eq!(b["status"], "COMPLETED", "{v}");
    assert!(b["dbTag"].as_str().unwrap().starts_with("TAG"));
    assert!(b["backupCompleteDate"].as_str().unwrap().ends_with(" UTC"));
    assert_eq!(b["backupCompleteDate"], b["backupCompletedDate"]);

    // The activity log sees the same job.
    let id = location.rsplit('/').next().unwrap();
    let (status, _, body) = s.curl(
        &[
            &auth[..],
            &[s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))
                .as_str()],
        ]
        .concat(),
    );
    assert_eq!(status, "HTTP/2 200");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["operationType"].as_str()),
        (Some("SUCCEED"), Some("BACKUP"))
    );
}

#[test]
fn mistakes_get_4xx_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let url = s.url(BACKUPS);
    let good = ["-u", "serviceadmin:Pa55_word", "-H", "X-ID-TENANT-NAME:usexample"];
    let json = ["-H", "Content-Type: application/json"];
    let idcs_url = s.url("/paas/service/dbcs/api/v1.1/instances/idcs-4f2a/db12c/backups");
    let big = "x".repeat(70_000);
    let nosuch = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/nosuch/backups");
    let no_job = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/status/backup/job/999");
    let no_route = s.url("/no/such/route");
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec![
                "-X",
                "POST",
                "-H",
                "X-ID-TENANT-NAME:usexample",
                "-d",
                "{}",
                "-H",
                json[1],
                &url,
            ],
            "401",
            "credentials",
        ),
        (
            vec![
                "-X",
                "POST",
                "-u",
                "serviceadmin:wrong",
                "-H",
                "X-ID-TENANT-NAME:usexample",
                "-H",
                json[1],
                "-d",
                "{}",
                &url,
            ],
            "401",
            "password",
        ),
        (
            vec![
                "-X",
                "POST",
                "-u",
                "serviceadmin:Pa55_word",
                "-H",
                "X-ID-TENANT-NAME:other",
                "-H",
                json[1],
                "-d",
                "{}",
                &url,
            ],
            "403",
            "X-ID-TENANT-NAME",
        ),
        (
            vec![
                "-X",
                "POST",
                "-u",
                "serviceadmin:Pa55_word",
                "-H",
                "X-ID-TENANT-NAME:idcs-4f2a",
                "-H",
                json[1],
                "-d",
                "{}",
                &idcs_url,
            ],
            "403",
            "does not belong",
        ),
        (
            [
                &good[..],
                &["-X", "POST", "-H", json[1], "-d", "{\"keepForever\": tru", &url],
            ]
            .concat(),
            "400",
            "malformed JSON",
        ),
        (
            [&good[..], &["-X", "POST", "-H", json[1], "-d", "[1]", &url]].concat(),
            "400",
            "JSON object",
        ),
        (
            [
                &good[..],
                &["-X", "POST", "-H", json[1], "-d", "{\"keepForever\": \"yes\"}", &url],
            ]
            .concat(),
            "400",
            "keepForever",
        ),
        (
            [&good[..], &["-X", "POST", "-H", json[1], "-d", "{\"tag\": 1}", &url]].concat(),
            "400",
            "unknown field",
        ),
        (
            [
                &good[..],
                &["-X", "POST", "-H", "Content-Type: text/plain", "-d", "{}", &url],
            ]
            .concat(),
            "415",
            "application/json",
        ),
        (
            [&good[..], &["-X", "POST", "-H", json[1], "-d", &big, &url]].concat(),
            "413",
            "exceeds",
        ),
        (
            [&good[..], &["-X", "POST", "-H", json[1], "-d", "{}", &nosuch]].concat(),
            "404",
            "nosuch",
        ),
        ([&good[..], &[no_job.as_str()]].concat(), "404", "999"),
        ([&good[..], &[no_route.as_str()]].concat(), "404", "no such resource"),
        ([&good[..], &["-X", "DELETE", &url]].concat(), "405", "not allowed"),
    ];
    for (args, code, needle) in cases {
        let (status, h, body) = s.curl(&args);
        assert_eq!(status, format!("HTTP/2 {code}"), "{args:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{args:?}: not JSON: {body}"));
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{args:?}: {msg}");
        if code == "401" {
            assert!(header(&h, "www-authenticate").starts_with("Basic"));
        }
    }
    // CORS preflight, without credentials.
    let (status, h, _) = s.curl(&["-X", "OPTIONS", &url]);
    assert_eq!(status, "HTTP/2 200");
    assert_eq!(header(&h, "access-control-allow-origin"), "*");
    // The console with a trailing slash, as people type it.
    let (status, h, _) = s.curl(&[&s.url("/console/")]);
    assert_eq!(status, "HTTP/2 308");
    assert_eq!(header(&h, "location"), "/console");
}

#[test]
fn a_server_killed_mid_backup_finishes_the_job_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = start_in(dir.path(), port);

    // A completed backup first: it must survive the crash.
    let (status, first) = s.post_backup("db12c", &["-H", "Idempotency-Key: nightly-1"]);
    assert_eq!(status, "HTTP/2 202");
    s.wait_for(&first, "Succeeded");
    // The same Idempotency-Key gives the same job, not a second backup.
    let (status, again) = s.post_backup("db12c", &["-H", "Idempotency-Key: nightly-1"]);
    assert_eq!((status.as_str(), again.as_str()), ("HTTP/2 202", first.as_str()));

    // A bigger deployment, registered through Strongbox's own endpoint.
    let db = dir.path().join("big.sqlite");
    let rows = big_database(&db, 300);
    let (status, v) = s.register_sqlite("big", &db);
    assert_eq!(status, "HTTP/2 200", "{v}");
    assert!(v.get("connection").is_none(), "connection settings are never returned");

    let (status, location) = s.post_backup("big", &[]);
    assert_eq!(status, "HTTP/2 202");
    let id = location.rsplit('/').next().unwrap().to_string();
    let activity = s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.json(&[&activity]).1["status"] != "RUNNING" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    // One backup at a time per deployment.
    let (status, v) = s.json(&[
        "-X",
        "POST",
        "-d",
        "{}",
        &s.url("/paas/service/dbcs/api/v1.1/instances/usexample/big/backups"),
    ]);
    assert_eq!(status, "HTTP/2 409", "{v}");
    assert!(v["message"].as_str().unwrap().contains(&format!("job {id}")), "{v}");

    s.child.kill().unwrap(); // SIGKILL, mid-backup
    s.child.wait().unwrap();
    let s = start_in(dir.path(), port);
    let job = s.wait_for(&location, "Succeeded");
    let log = s.json(&[&activity]).1;
    let messages = log["messages"].to_string();
    assert!(
        messages.contains("resumed after its worker stopped"),
        "the job was not interrupted: {log}"
    );
    assert!(job["progress"]["bytes_done"].as_u64().unwrap() > 250 << 20, "{job}");

    // Both backups are listed COMPLETED.
    let (_, list) = s.json(&[&s.url(BACKUPS)]);
    assert_eq!(list["backupList"][0]["status"], "COMPLETED", "{list}");
    let (_, list) = s.json(&[&s.url("/paas/service/dbcs/api/v1.1/instances/usexample/big/backups")]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    assert_eq!(list["backupList"][0]["status"], "COMPLETED", "{list}");

    // The snapshot, restored with the repository CLI, is a sound database
    // holding every row.
    let repo_cli = |args: &[&str]| {
        let out = s.repo_cli(args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let snaps: serde_json::Value = serde_json::from_slice(&repo_cli(&["--json", "snapshots"])).unwrap();
    let snap = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["labels"]["tag"] == tag.as_str())
        .unwrap();
    assert_eq!(snap["labels"]["deployment"], "big");
    let target = dir.path().join("restored");
    repo_cli(&[
        "restore",
        snap["id"].as_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ]);
    let c = rusqlite::Connection::open(target.join("database.sqlite")).unwrap();
    let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, rows);
}

#[test]
fn tenants_see_nothing_of_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let (_, location) = s.post_backup("db12c", &[]);
    let id = location.rsplit('/').next().unwrap();
    add_user(dir.path(), "alice", "idcs-4f2a9c", "operator");
    let alice = ["-u", "alice:alice-pw", "-H", "X-ID-TENANT-NAME:idcs-4f2a9c"];
    // Her own domain has no such job: 404, not a hint that it exists elsewhere.
    let theirs = s.url(&format!(
        "/paas/service/dbcs/api/v1.1/instances/idcs-4f2a9c/status/backup/job/{id}"
    ));
    let (status, _, body) = s.curl(&[&alice[..], &[theirs.as_str()]].concat());
    assert_eq!(status, "HTTP/2 404", "{body}");
    // Another domain's path: 403.
    let (status, _, _) = s.curl(
        &[
            &["-u", "alice:alice-pw", "-H", "X-ID-TENANT-NAME:usexample"][..],
            &[location.as_str()],
        ]
        .concat(),
    );
    assert_eq!(status, "HTTP/2 403");
    let (status, _, body) = s.curl(
        &[
            &alice[..],
            &[s.url("/paas/service/dbcs/api/v1.1/instances/idcs-4f2a9c").as_str()],
        ]
        .concat(),
    );
    assert_eq!(status, "HTTP/2 200");
    assert!(!body.contains("db12c"), "{body}");

    // A reader of usexample reads everything there and starts nothing.
    add_user(dir.path(), "rita", "usexample", "reader");
    let rita = ["-u", "rita:rita-pw", "-H", "X-ID-TENANT-NAME:usexample"];
    let (status, _, body) = s.curl(&[&rita[..], &[location.as_str()]].concat());
    assert_eq!(status, "HTTP/2 200", "{body}");
    let backups = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/db12c/backups");
    let (status, _, body) = s.curl(&[&rita[..], &[backups.as_str()]].concat());
    assert_eq!(status, "HTTP/2 200", "{body}");
    for (method, path) in [("POST", "/backups"), ("POST", "/backups/recovery")] {
        let url = s.url(&format!("/paas/service/dbcs/api/v1.1/instances/usexample/db12c{path}"));
        let (status, _, body) = s.curl(
            &[
                &rita[..],
                &[
                    "-X",
                    method,
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    r#"{"latest": true}"#,
                ],
                &[url.as_str()],
            ]
            .concat(),
        );
        assert_eq!(status, "HTTP/2 403", "{method} {path}: {body}");
        assert!(
            body.contains("the reader role") && body.contains("needs the operator role"),
            "{body}"
        );
    }
    // Registration names files and commands on the server's machine: admins only.
    add_user(dir.path(), "otto", "usexample", "operator");
    let register = s.url("/strongbox/api/v1/instances/usexample/other");
    for user in ["rita:rita-pw", "otto:otto-pw"] {
        let (status, _, body) = s.curl(&[
            "-u",
            user,
            "-H",
            "X-ID-TENANT-NAME:usexample",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"engine": "command", "connection": {"backup_command": "cat /etc/shadow", "recovery_command": "true"}}"#,
            register.as_str(),
        ]);
        assert_eq!(status, "HTTP/2 403", "{user}: {body}");
        assert!(body.contains("needs the admin role"), "{body}");
    }
}

#[test]
fn serve_reads_a_toml_config_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("strongbox.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nworkers = 1\nretry_after = 7\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strongbox"))
        .args(["serve", "--demo", "--config"])
        .arg(&config)
        .env("STRONGBOX_DEMO_PASSWORD", "pw")
        .env_remove("STRONGBOX_LISTEN")
        .env_remove("STRONGBOX_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    let out = Command::new("curl")
        .args([
            "-s",
            "-i",
            "-X",
            "POST",
            "-u",
            "serviceadmin:pw",
            "-H",
            "X-ID-TENANT-NAME: usexample",
        ])
        .args(["-H", "Content-Type: application/json", "-d", "{}"])
        .arg(format!(
            "http://127.0.0.1:{port}/paas/service/dbcs/api/v1.1/instances/usexample/db12c/backups"
        ))
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 202"), "{text}");
    assert!(text.contains("retry-after: 7"), "{text}");
    assert!(text.contains(&format!("location: http://127.0.0.1:{port}/")), "{text}");
    assert!(dir.path().join("data/catalog.sqlite").exists());

    std::fs::write(&config, "listen = \"127.0.0.1:1\"\nwrokers = 2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strongbox"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrokers") && err.contains("strongbox.toml"), "{err}");
}

/// Failed sign-ins are throttled per client address and per user: after
/// ten wrong passwords the next attempt is refused with 429 and
/// `Retry-After`, before any hashing; a client whose credentials were
/// verified before the flood keeps working.
#[test]
fn failed_sign_ins_are_throttled_with_429_and_verified_clients_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let (status, _) = s.json(&[&s.url(BACKUPS)]);
    assert_eq!(status, "HTTP/2 200", "verified before the flood");
    let attempt =
        |user_password: &str| s.curl(&["-u", user_password, "-H", "X-ID-TENANT-NAME:usexample", &s.url(BACKUPS)]);
    for i in 0..10 {
        let (status, _, body) = attempt(&format!("serviceadmin:wrong-{i}"));
        assert_eq!(status, "HTTP/2 401", "attempt {i}: {body}");
    }
    let (status, h, body) = attempt("serviceadmin:wrong-10");
    assert_eq!(status, "HTTP/2 429", "{body}");
    let wait: u64 = header(&h, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(body.contains("too many failed sign-ins"), "{body}");
    // Another user from the same address: the address is throttled too.
    add_user(dir.path(), "other", "usexample", "reader");
    let (status, _, body) = attempt("other:other-pw");
    assert_eq!(status, "HTTP/2 429", "{body}");
    // The credentials verified before the flood still work.
    let (status, v) = s.json(&[&s.url(BACKUPS)]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    // Counted in /metrics: 10 hashed and refused, 2 refused unhashed.
    let (_, _, page) = s.curl(&[&s.url("/metrics")]);
    for (name, n) in [
        ("strongbox_signin_failures_total", 10),
        ("strongbox_signin_throttled_total", 2),
    ] {
        assert!(page.lines().any(|l| l == format!("{name} {n}")), "{name} {n}:\n{page}");
    }
}
