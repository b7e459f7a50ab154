//! `/metrics`: scraped before and after a backup, a recovery and a failed
//! sign-in, each shows its change; Prometheus' own `promtool` accepts the
//! page, and the example alert rules (which fire in `promtool test rules`).

use std::collections::HashMap;
use std::process::{Command, Stdio};

use crate::common::*;

/// The page's samples: `name{labels}` → value.
fn scrape(s: &Server) -> (String, HashMap<String, f64>) {
    let (status, h, body) = s.curl(&[&s.url("/metrics")]);
    assert_eq!(status, "HTTP/2 200", "{body}");
    assert!(
        header(&h, "content-type").starts_with("text/plain; version=0.0.4"),
        "{h:?}"
    );
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect();
    (body, samples)
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

fn promtool(args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut input, stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const DB12C: &str = r#"{domain="usexample",deployment="db12c"}"#;

#[test]
fn metrics_show_backups_recoveries_and_failed_sign_ins_and_promtool_accepts_them() {
    debian_package("promtool", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let (_, before) = scrape(&s);
    assert_eq!(
        value(&before, r#"strongbox_jobs{operation="backup",state="succeeded"}"#),
        0.0
    );
    assert!(!before.contains_key(&format!("strongbox_last_backup_timestamp_seconds{DB12C}")));

    let (status, location) = s.post_backup("db12c", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    s.wait_for(&location, "Succeeded");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let (_, backed_up) = scrape(&s);
    assert_eq!(
        value(&backed_up, r#"strongbox_jobs{operation="backup",state="succeeded"}"#),
        1.0
    );
    assert_eq!(
        value(
            &backed_up,
            r#"strongbox_jobs_finished_total{operation="backup",outcome="succeeded"}"#
        ),
        1.0
    );
    let last = value(&backed_up, &format!("strongbox_last_backup_timestamp_seconds{DB12C}"));
    assert!((now - last).abs() < 30.0, "last backup at {last}, now {now}");
    assert_eq!(
        value(
            &backed_up,
            &format!("strongbox_recoverable_until_timestamp_seconds{DB12C}")
        ),
        last
    );
    let read = value(&backed_up, &format!("strongbox_backup_read_bytes_total{DB12C}"));
    let stored = value(&backed_up, &format!("strongbox_backup_stored_bytes_total{DB12C}"));
    assert!(
        read > 0.0 && stored > 0.0 && stored <= read,
        "read {read}, stored {stored}"
    );
    let route = r#"route="/paas/service/dbcs/api/v1.1/instances/{identityDomainId}/{serviceId}/backups""#;
    assert_eq!(
        value(
            &backed_up,
            &format!(r#"strongbox_http_requests_total{{{route},method="POST",status="202"}}"#)
        ),
        1.0
    );
    assert!(
        value(
            &backed_up,
            &format!(r#"strongbox_http_request_duration_seconds_count{{{route},method="POST"}}"#)
        ) >= 1.0
    );

    let (status, v, _) = s.curl(
        &[
            &AUTH[..],
            &[
                "-X",
                "POST",
                "-d",
                r#"{"latest": true}"#,
                &s.url(&format!("{BACKUPS}/recovery")),
            ],
        ]
        .concat(),
    );
    assert_eq!(status, "HTTP/2 202", "{v:?}");
    s.wait_for(header(&v, "location"), "Succeeded");
    let (_, recovered) = scrape(&s);
    assert_eq!(
        value(&recovered, r#"strongbox_jobs{operation="recovery",state="succeeded"}"#),
        1.0
    );
    assert_eq!(
        value(
            &recovered,
            r#"strongbox_jobs_finished_total{operation="recovery",outcome="succeeded"}"#
        ),
        1.0
    );
    assert!(
        value(
            &recovered,
            r#"strongbox_job_duration_seconds_count{operation="recovery",outcome="succeeded"}"#
        ) == 1.0
    );
    assert_eq!(value(&recovered, "strongbox_signin_failures_total"), 0.0);

    let (status, _, _) = s.curl(&[
        "-u",
        "serviceadmin:wrong",
        "-H",
        "X-ID-TENANT-NAME:usexample",
        &s.url(BACKUPS),
    ]);
    assert_eq!(status, "HTTP/2 401");
    let (page, refused) = scrape(&s);
    assert_eq!(value(&refused, "strongbox_signin_failures_total"), 1.0);
    assert_eq!(
        value(
            &refused,
            &format!(r#"strongbox_http_requests_total{{{route},method="GET",status="401"}}"#)
        ),
        1.0
    );

    promtool(&["check", "metrics"], Some(&page));
    promtool(&["check", "rules", "prometheus-rules.yml"], None);
    promtool(&["test", "rules", "prometheus-rules.test.yml"], None);
}

/// A PostgreSQL deployment archiving WAL: while it answers, its range
/// reaches the present (a recovery to `latest` flushes first); the archive
/// lag is how far the archive's last commit trails now — small right after
/// a flush, growing while nothing is archived.
#[test]
fn metrics_show_a_postgresql_deployments_archive_lag() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Pg::start(dir.path(), "");
    pg.c.psql("CREATE TABLE t (v int); INSERT INTO t VALUES (1)");
    let backup = pg.backup();
    assert_eq!(backup["status"], "COMPLETED", "{backup}");
    pg.c.psql("INSERT INTO t VALUES (2)");
    pg.flush();
    let pg_labels = r#"{domain="usexample",deployment="pg"}"#;
    let (_, fresh) = scrape(&pg.s);
    let lag = value(&fresh, &format!("strongbox_wal_archive_lag_seconds{pg_labels}"));
    let until = value(
        &fresh,
        &format!("strongbox_recoverable_until_timestamp_seconds{pg_labels}"),
    );
    let last = value(&fresh, &format!("strongbox_last_backup_timestamp_seconds{pg_labels}"));
    assert!(until >= last && last > 0.0, "range ends {until}, last backup {last}");
    assert!(lag < 30.0, "lag {lag} s right after a flush");
    // Nothing archived for 3 s: the lag grows with the clock.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (_, later) = scrape(&pg.s);
    let grown = value(&later, &format!("strongbox_wal_archive_lag_seconds{pg_labels}"));
    assert!(grown >= lag + 2.5, "lag {lag} s, then {grown} s");
    let later_until = value(
        &later,
        &format!("strongbox_recoverable_until_timestamp_seconds{pg_labels}"),
    );
    assert!(
        later_until >= until + 2.5,
        "a live server's range reaches now: {until}, then {later_until}"
    );
}
