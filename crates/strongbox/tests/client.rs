//! `strongbox client` against a real server over TLS: a backup and a
//! recovery followed to their end (exit 0), the lists, a job's status by
//! id, a failing backup (exit 2 with the job's message), a wrong password
//! (exit 1 with the server's message), no password and no terminal.

use std::process::{Command, Output};

use crate::common::*;

fn client(s: &Server, password: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.arg("client")
        .args(args)
        .env("STRONGBOX_URL", s.url(""))
        .env("STRONGBOX_DOMAIN", "usexample")
        .env("STRONGBOX_USER", "serviceadmin")
        .env("STRONGBOX_CACERT", s.dir.join("ca.pem"))
        .env_remove("STRONGBOX_USER_PASSWORD")
        .stdin(std::process::Stdio::null());
    if let Some(p) = password {
        c.env("STRONGBOX_USER_PASSWORD", p);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_client_backs_up_recovers_lists_and_reports_failures_in_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let failing = r#"["echo disk full >&2; exit 3"]"#.to_string();
    let s = start_with(dir.path(), free_port(), &[("STRONGBOX_ALLOW_COMMANDS", failing)]);
    let pw = Some("Pa55_word");
    let db = dir.path().join("data-demo/usexample/db12c.sqlite");
    let at_backup = table_checksum(&db, "orders");

    let out = client(&s, pw, &["backup", "db12c"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("backup: Succeeded: backup completed"), "{said}");
    let (_, list) = s.json(&[&s.url(BACKUPS)]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();

    let out = client(&s, pw, &["backups", "db12c"]);
    assert!(
        out.status.success() && text(&out).contains(&format!("{tag}\tCOMPLETED")),
        "{}",
        text(&out)
    );

    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM orders WHERE rowid % 2 = 0", [])
        .unwrap();
    assert_ne!(table_checksum(&db, "orders"), at_backup);
    let out = client(&s, pw, &["recover", "db12c", "--tag", &tag]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        table_checksum(&db, "orders"),
        at_backup,
        "the backup's rows, exactly (ordered checksum)"
    );
    assert!(
        text(&out).contains("recovery: Succeeded: recovery completed"),
        "{}",
        text(&out)
    );
    let out = client(&s, pw, &["recoveries", "db12c"]);
    assert!(out.status.success() && text(&out).contains(&tag), "{}", text(&out));

    // Into another file: the backup's rows there, the deployment as it was.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM orders WHERE rowid % 3 = 0", [])
        .unwrap();
    let live = table_checksum(&db, "orders");
    let copy = dir.path().join("copy.sqlite");
    let to = format!("path={}", copy.display());
    let out = client(&s, pw, &["recover", "db12c", "--tag", &tag, "--to", &to]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(table_checksum(&copy, "orders"), at_backup, "the copy, exactly");
    assert_eq!(table_checksum(&db, "orders"), live, "the deployment untouched");
    let out = client(&s, pw, &["recover", "db12c", "--latest", "--to", &to]);
    assert!(
        !out.status.success() && text(&out).contains("\"replace\": true"),
        "{}",
        text(&out)
    );
    let out = client(&s, pw, &["recover", "db12c", "--latest", "--to", &to, "--replace"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(table_checksum(&copy, "orders"), at_backup, "latest is that backup");

    // A job's status by its id, as JSON.
    let out = client(&s, pw, &["--json", "status", "1", "--watch"]);
    assert!(out.status.success(), "{}", text(&out));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (job["job_id"].as_i64(), job["job_status"].as_str()),
        (Some(1), Some("Succeeded"))
    );

    // A backup that fails: exit status 2 and why.
    let (status, v) = s.json(&[
        "-X",
        "PUT",
        "-d",
        r#"{"engine": "command", "connection": {"backup_command": "echo disk full >&2; exit 3", "recovery_command": "true"}}"#,
        &s.url("/strongbox/api/v1/instances/usexample/failing"),
    ]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    let out = client(&s, pw, &["backup", "failing"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("backup: Failed: backup failed"), "{}", text(&out));

    // Refused requests: exit status 1 with the server's message.
    let out = client(&s, Some("wrong"), &["backups", "db12c"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("401 Unauthorized: wrong user name or password"),
        "{}",
        text(&out)
    );
    let out = client(&s, pw, &["recover", "db12c", "--tag", "TAG19990101T000000"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("TAG19990101T000000"), "{}", text(&out));
    let out = client(&s, None, &["backups", "db12c"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("STRONGBOX_USER_PASSWORD"), "{}", text(&out));
    assert!(!text(&out).contains("Pa55_word"));
}
