//! Recovery through the API, against the real server: every way to name a
//! target, the mistakes that must touch nothing, history, job status and
//! activity log, and no backup while a recovery runs.

use std::time::Duration;

use crate::common::*;

const P: &str = "/paas/service/dbcs/api/v1.1/instances/usexample";

fn rows(c: &rusqlite::Connection) -> (i64, i64, String) {
    c.query_row(
        "SELECT count(*), coalesce(sum(id), 0), coalesce(max(v), '') FROM t",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

impl Server {
    fn post_recovery(&self, body: &str) -> (String, String, serde_json::Value) {
        let url = self.url(&format!("{P}/big/backups/recovery"));
        let (status, h, text) = self.curl(&[&AUTH[..], &["-X", "POST", "-d", body, &url]].concat());
        let location = h
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        (status, location, serde_json::from_str(&text).unwrap_or_default())
    }

    fn history(&self) -> Vec<serde_json::Value> {
        let (status, v) = self.json(&[&self.url(&format!("{P}/big/backups/recovery/history"))]);
        assert_eq!(status, "HTTP/2 200", "{v}");
        v["recoveryList"].as_array().unwrap().clone()
    }
}

#[test]
fn recover_by_latest_tag_and_timestamp_while_a_connection_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = dir.path().join("big.sqlite");
    big_database(&db, 40);
    assert_eq!(s.register_sqlite("big", &db).0, "HTTP/2 200");
    let held = rusqlite::Connection::open(&db).unwrap();

    let (status, _, v) = s.post_recovery(r#"{"latest": true}"#);
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(v["message"].as_str().unwrap().contains("no completed backup"), "{v}");

    let (status, location) = s.post_backup("big", &[]);
    assert_eq!(status, "HTTP/2 202");
    s.wait_for(&location, "Succeeded");
    let backed_up = rows(&held);
    let (_, list) = s.json(&[&s.url(&format!("{P}/big/backups"))]);
    let backup = &list["backupList"][0];
    let (tag, completed) = (
        backup["dbTag"].as_str().unwrap(),
        backup["backupCompleteDate"].as_str().unwrap(),
    );

    // Later writes, through the connection that stays open throughout.
    held.execute_batch("DELETE FROM t WHERE id % 5 = 0; UPDATE t SET v = 'zzz changed' WHERE id = 7;")
        .unwrap();
    let changed = rows(&held);
    assert_ne!(changed, backed_up);

    // Mistakes: each a 4xx with a message that says what was wrong; none touches anything.
    std::thread::sleep(Duration::from_millis(1100)); // so that "a second after the backup" is in the past
    let after_backup = {
        let format = time::macros::format_description!("[day]-[month repr:short]-[year] [hour]:[minute]:[second]");
        let t = time::PrimitiveDateTime::parse(completed.trim_end_matches(" UTC"), &format).unwrap();
        (t + time::Duration::SECOND).format(&format).unwrap()
    };
    let between = format!(r#"{{"timestamp": "{after_backup}"}}"#);
    let mistakes: Vec<(&str, &str, &str)> = vec![
        ("{}", "400", "exactly one recovery target"),
        (r#"{"latest": true, "tag": "x"}"#, "400", "latest and tag"),
        (r#"{"latest": "no"}"#, "400", "latest must be true"),
        (
            r#"{"tag": "TAG20000101T000000"}"#,
            "404",
            "no completed backup with dbTag",
        ),
        (r#"{"timestamp": "2026-01-01 10:00"}"#, "400", "dd-MMM-yyyy HH:mm:ss"),
        (r#"{"timestamp": "01-Jan-2999 00:00:00"}"#, "400", "in the future"),
        (
            r#"{"timestamp": "01-Jan-2000 00:00:00"}"#,
            "400",
            "before the first backup",
        ),
        (&between, "400", "between backups"),
        (r#"{"scn": "0/3000060"}"#, "400", "point-in-time recovery"),
        (r#"{"latest": true, "when": 1}"#, "400", "unknown field"),
        ("[1]", "400", "JSON object"),
    ];
    for (body, code, says) in &mistakes {
        let (status, location, v) = s.post_recovery(body);
        assert_eq!(status, format!("HTTP/2 {code}"), "{body}: {v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: {message}");
        assert!(location.is_empty());
    }
    assert!(
        message_names_tag(&s, &between, tag),
        "the refusal names the backup to use instead"
    );
    assert!(s.history().is_empty(), "no recovery was queued");
    assert_eq!(rows(&held), changed, "nothing was touched");

    // latest, as "yes": 202 with the backup's headers, then the job succeeds.
    let (status, location, _) = s.post_recovery(r#"{"latest": "yes"}"#);
    assert_eq!(status, "HTTP/2 202");
    assert!(location.contains("/usexample/status/recovery/job/"), "{location}");
    // A backup cannot start while the recovery is queued or running.
    let (status, body) = s.post_backup("big", &[]);
    assert_eq!(status, "HTTP/2 409", "{body}");
    // Nor can a backup be deleted (its expire job would prune what the
    // recovery reads).
    let url = s.url(&format!(
        "/paas/service/dbcs/api/v1.1/instances/usexample/big/backups/{tag}"
    ));
    let (status, _, body) = s.curl(&[&AUTH[..], &["-X", "DELETE", &url]].concat());
    assert_eq!(status, "HTTP/2 409", "{body}");
    assert!(body.contains("a recovery of big is already in progress"), "{body}");
    let job = s.wait_for(&location, "Succeeded");
    assert_eq!(job["job_operation"], "recovery");
    assert!(job["message"].as_str().unwrap().contains(tag), "{job}");
    assert_eq!(rows(&held), backed_up, "the open connection sees the recovered rows");
    let check: String = held.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let id = location.rsplit('/').next().unwrap();
    let (_, log) = s.json(&[&s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))]);
    assert_eq!(
        (log["operationType"].as_str(), log["status"].as_str()),
        (Some("RECOVERY"), Some("SUCCEED"))
    );
    let messages = log["messages"].to_string();
    assert!(messages.contains("copying it into"), "{messages}");

    // By timestamp (the completion date as the backup list prints it) and by tag.
    for body in [
        format!(r#"{{"timestamp": "{completed}"}}"#),
        format!(r#"{{"tag": "{tag}"}}"#),
    ] {
        held.execute("DELETE FROM t WHERE id < 100", []).unwrap();
        let (status, location, v) = s.post_recovery(&body);
        assert_eq!(status, "HTTP/2 202", "{body}: {v}");
        s.wait_for(&location, "Succeeded");
        assert_eq!(rows(&held), backed_up, "{body}");
    }

    let history = s.history();
    assert_eq!(history.len(), 3);
    // Newest first; each names what its request named.
    assert_eq!(history[0]["dbTag"], tag);
    assert_eq!(history[1]["timestamp"], completed);
    assert_eq!(
        history[2]["latest"], true,
        "clients compare latest with the JSON boolean"
    );
    for h in &history {
        assert_eq!(h["status"], "COMPLETED");
        assert!(h["recoveryStartDate"].as_str().unwrap().ends_with(" UTC"), "{h}");
        assert!(h["recoveryCompleteDate"].as_str().unwrap().ends_with(" UTC"), "{h}");
        assert_eq!(h["fromBackup"], tag);
    }
}

fn message_names_tag(s: &Server, body: &str, tag: &str) -> bool {
    let (_, _, v) = s.post_recovery(body);
    v["message"].as_str().unwrap_or_default().contains(tag)
}
