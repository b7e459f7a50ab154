//! Point-in-time recovery through the API: a real cluster archives its WAL
//! into the server's repository with the archive_command the server
//! reports, base backups are API jobs, and recoveries to three moments and
//! three WAL positions (before and after the second base backup) each hold
//! exactly the rows committed by then. Targets the archive cannot reach
//! are refused, naming the recoverable range, before anything is touched.

use std::time::Instant;

use crate::common::{Pg, Server};
use serde_json::Value;
use strongbox_engines::pitr::Lsn;

const INSTANCE: &str = crate::common::PG_INSTANCE;
/// The ticks' ordered checksum (ids and times).
const TICKS: &str = "SELECT coalesce(md5(string_agg(id || '@' || at, ',' ORDER BY id)), '') FROM ticks";

fn backup(s: &Server) -> String {
    let (status, location) = s.post_backup("pg", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    s.wait_for(&location, "Succeeded");
    let (_, list) = s.json(&[&s.url(&format!("{INSTANCE}/backups"))]);
    list["backupList"][0]["dbTag"].as_str().unwrap().to_string()
}

fn recover(s: &Server, body: &str) -> (String, Value) {
    s.json(&[
        "-X",
        "POST",
        "-d",
        body,
        &s.url(&format!("{INSTANCE}/backups/recovery")),
    ])
}

#[test]
fn recovery_to_moments_and_scns_holds_exactly_the_rows_committed_by_then() {
    let dir = tempfile::tempdir().unwrap();
    let Pg { s, c } = Pg::start(dir.path(), "");
    let data = dir.path().join("data");
    let (_, instance) = s.json(&[&s.url(INSTANCE)]);
    let pitr = &instance["pointInTimeRecovery"];
    assert!(
        pitr["archiveCommand"]
            .as_str()
            .unwrap()
            .contains("--archive usexample/pg"),
        "{pitr}"
    );
    assert_eq!(pitr["recoverableRange"], Value::Null, "nothing archived yet: {pitr}");
    c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");

    // Before any base backup: nothing to replay from, and the message says so.
    let (status, v) = recover(&s, r#"{"scn": "0/1000000"}"#);
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(v["message"].as_str().unwrap().contains("base backup"), "{v}");

    // Base backup 1, writes, base backup 2, more writes, all archived.
    let first = backup(&s);
    let mut marks = crate::common::write_ticks(c.port, 1, 60, 20);
    let second = backup(&s);
    marks.extend(crate::common::write_ticks(c.port, 61, 120, 20));
    let last = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    c.wait_archived(&last);
    assert_eq!(marks.len(), 6);
    // What each mark's moment held, read before any recovery.
    let held: std::collections::HashMap<i32, String> = marks
        .iter()
        .map(|m| (m.rows, c.psql(&format!("{TICKS} WHERE id <= {}", m.rows))))
        .collect();

    // The server reports what the archive reaches.
    let (_, instance) = s.json(&[&s.url(INSTANCE)]);
    let range = &instance["pointInTimeRecovery"]["recoverableRange"];
    assert!(
        range["earliest"]["scn"].is_string() && range["latest"]["timestamp"].is_string(),
        "{range}"
    );
    let latest_lsn: Lsn = range["latest"]["scn"].as_str().unwrap().parse().unwrap();

    // Unreachable targets: refused with the range, nothing touched.
    let before = c.psql(TICKS);
    for (body, why) in [
        (
            r#"{"timestamp": "01-Jan-2020 00:00:00"}"#.to_string(),
            "before the first base backup",
        ),
        (
            format!(r#"{{"scn": {}}}"#, latest_lsn.0 + (1 << 30)),
            "after the last archived WAL",
        ),
        (r#"{"scn": "zz/1"}"#.to_string(), "not a WAL position"),
    ] {
        let (status, v) = recover(&s, &body);
        let message = v["message"].as_str().unwrap_or_default();
        assert_eq!(status, "HTTP/2 400", "{body}: {v}");
        assert!(message.contains(why), "{body}: {message}");
        if why != "not a WAL position" {
            assert!(message.contains("recoverable from"), "names the range: {message}");
        }
    }
    // A gap in the archive ends what the first backup reaches.
    let archive = data.join("repository/wal/usexample/pg");
    let segment = |lsn: &str| c.psql(&format!("SELECT pg_walfile_name('{lsn}')"));
    let hole = archive.join(segment(&marks[1].lsn));
    std::fs::rename(&hole, hole.with_extension("away")).unwrap();
    let (status, v) = recover(&s, &format!(r#"{{"scn": "{}"}}"#, marks[1].lsn));
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(v["message"].as_str().unwrap().contains("gap"), "{v}");
    std::fs::rename(hole.with_extension("away"), &hole).unwrap();
    assert_eq!(c.psql(TICKS), before, "refusals touched nothing");

    // Three moments and three positions (one as a decimal number), before
    // and after base backup 2; each from the latest base backup before it.
    // The first recovery starts timeline 2: the later targets are points of
    // timeline 1, which the requests name.
    let decimal = |lsn: &str| lsn.parse::<Lsn>().unwrap().0.to_string();
    let cases = [
        (
            format!(r#"{{"timestamp": "{}"}}"#, marks[0].timestamp),
            &marks[0],
            &first,
        ),
        (
            format!(r#"{{"scn": "{}", "timeline": 1}}"#, marks[1].lsn),
            &marks[1],
            &first,
        ),
        (
            format!(r#"{{"timestamp": "{}", "timeline": 1}}"#, marks[2].timestamp),
            &marks[2],
            &first,
        ),
        (
            format!(r#"{{"scn": {}, "timeline": "1"}}"#, decimal(&marks[3].lsn)),
            &marks[3],
            &second,
        ),
        (
            format!(r#"{{"timestamp": "{}", "timeline": 1}}"#, marks[4].timestamp),
            &marks[4],
            &second,
        ),
        (
            format!(r#"{{"scn": "{}", "timeline": 1}}"#, marks[5].lsn),
            &marks[5],
            &second,
        ),
    ];
    for (body, mark, base) in cases {
        let started = Instant::now();
        let url = s.url(&format!("{INSTANCE}/backups/recovery"));
        let (status, h, text) = s.curl(&[&crate::common::AUTH[..], &["-X", "POST", "-d", &body, &url]].concat());
        assert_eq!(status, "HTTP/2 202", "{body}: {text}");
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.wait_for(crate::common::header(&h, "location"), "Succeeded")
        }));
        assert!(done.is_ok(), "{body}: the recovery failed\n{}", c.log());
        assert_eq!(
            c.psql(TICKS),
            held[&mark.rows],
            "{body}: exactly the rows committed by then (ordered checksum)\n{}",
            c.log()
        );
        let (_, history) = s.json(&[&s.url(&format!("{INSTANCE}/backups/recovery/history"))]);
        assert_eq!(
            history["recoveryList"][0]["fromBackup"],
            base.as_str(),
            "{body}: {history}"
        );
        eprintln!("{body}: recovered in {:.1} s", started.elapsed().as_secs_f64());
    }

    // `repo check` verifies each base backup's WAL is archived without a
    // gap; a missing segment fails it, naming the base backup.
    let repo_cli = |args: &[&str]| {
        let out = s.repo_cli(args);
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = repo_cli(&["check"]);
    assert!(
        ok && text.contains("WAL of 2 base backups, 0 shipped SQLite generations: no errors"),
        "{text}"
    );
    std::fs::rename(&hole, hole.with_extension("away")).unwrap();
    let (ok, text) = repo_cli(&["check"]);
    let missing = hole.file_name().unwrap().to_str().unwrap();
    assert!(!ok && text.contains(missing) && text.contains("base backup"), "{text}");
    std::fs::rename(hole.with_extension("away"), &hole).unwrap();

    // Retention: once the first base backup is deleted, its expire job
    // deletes the WAL only it needed, keeps what the second replays, and
    // keeps where timeline 2 parted from timeline 1 (older than the second
    // base backup): a moment while timeline 1 was live is checked there
    // against the current history.
    // (Files named on timeline 1, where the base backups were taken; the
    // recoveries moved the cluster on.)
    let on_timeline_1 = |lsn: &str| archive.join(format!("00000001{}", &segment(lsn)[8..]));
    let files = || std::fs::read_dir(&archive).unwrap().count();
    let (present, parted) = (files(), on_timeline_1(&marks[0].lsn));
    assert!(parted.exists());
    let job = s.delete_backup("pg", &first);
    assert!(files() < present, "WAL is deleted: {job}");
    assert!(
        !hole.exists() || hole == parted,
        "WAL between the two base backups is deleted: {job}"
    );
    assert!(parted.exists(), "where timeline 2 parts stays: {job}");
    assert!(on_timeline_1(&marks[3].lsn).exists(), "WAL after the second stays");
    let (ok, text) = repo_cli(&["check"]);
    assert!(
        ok && text.contains("WAL of 1 base backups, 0 shipped SQLite generations: no errors"),
        "{text}"
    );
}
