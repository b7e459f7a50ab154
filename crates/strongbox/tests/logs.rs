//! What the server logs: one line per request carrying the correlation id
//! its response sent (`x-oracle-dms-ecid`), the steps of each job carrying
//! the job's id, JSON lines on request, and never a password — neither
//! the users' (right or wrong) nor the repository's nor one a deployment's
//! connection holds, also when its engine fails.

use crate::common::*;

const REPO_PASSWORD: &str = "repo-S3cret-4711";
const ENGINE_SECRET: &str = "engine-S3cret-0815";
const WRONG_PASSWORD: &str = "Wr0ng-guess-42";

/// Runs requests that leave traces (a backup, a recovery through a console
/// session, a failing backup, a wrong password) and returns (the server's
/// log, the backup's ecid, its job id, everything the API and `/metrics`
/// showed of the jobs).
fn exercise(env: &[(&str, String)]) -> (String, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        env,
        &[
            ("STRONGBOX_REPO_PASSWORD", REPO_PASSWORD.to_string()),
            (
                "STRONGBOX_ALLOW_COMMANDS",
                r#"["echo dumping $MYSQL_PWD >&2; exit 3"]"#.to_string(),
            ),
        ],
    ]
    .concat();
    let s = start_with(dir.path(), free_port(), &env);
    let (status, h, body) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", "{}", &s.url(BACKUPS)]].concat());
    assert_eq!(status, "HTTP/2 202", "{body}");
    let ecid = header(&h, "x-oracle-dms-ecid").to_string();
    let location = header(&h, "location").to_string();
    let job = location.rsplit('/').next().unwrap().to_string();
    s.wait_for(&location, "Succeeded");
    // A recovery, and through a console session (its cookie and CSRF
    // token are secrets too: neither may be logged).
    let (status, h, body) = s.curl(&[
        "-X",
        "POST",
        "-d",
        r#"{"user": "serviceadmin", "password": "Pa55_word"}"#,
        &s.url("/console/session"),
    ]);
    assert_eq!(status, "HTTP/2 200", "{body}");
    let cookie = header(&h, "set-cookie").split(';').next().unwrap().to_string();
    let csrf = serde_json::from_str::<serde_json::Value>(&body).unwrap()["csrfToken"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, h, body) = s.curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Cookie: {cookie}"),
        "-H",
        &format!("X-CSRF-Token: {csrf}"),
        "-H",
        "X-ID-TENANT-NAME: usexample",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"latest": true}"#,
        &s.url(&format!("{BACKUPS}/recovery")),
    ]);
    assert_eq!(status, "HTTP/2 202", "{body}");
    let recovered = s.wait_for(header(&h, "location"), "Succeeded");
    let (_, _, page) = s.curl(&[&s.url("/metrics")]);
    let secrets = [cookie.split_once('=').unwrap().1.to_string(), csrf];

    // A deployment whose dump command fails, with a secret in its environment.
    let (status, v) = s.json(&[
        "-X",
        "PUT",
        "-d",
        &format!(
            r#"{{"engine": "command", "connection": {{"backup_command": "echo dumping $MYSQL_PWD >&2; exit 3",
                 "recovery_command": "true", "env": {{"MYSQL_PWD": "{ENGINE_SECRET}"}}}}}}"#
        ),
        &s.url("/strongbox/api/v1/instances/usexample/failing"),
    ]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    let (status, failing) = s.post_backup("failing", &[]);
    assert_eq!(status, "HTTP/2 202", "{failing}");
    let failed = s.wait_for(&failing, "Failed");
    let id = failed["job_id"].to_string();
    let (_, activity) = s.json(&[&s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))]);
    let (status, _, _) = s.curl(&[
        "-u",
        &format!("serviceadmin:{WRONG_PASSWORD}"),
        "-H",
        "X-ID-TENANT-NAME:usexample",
        &s.url(BACKUPS),
    ]);
    assert_eq!(status, "HTTP/2 401");
    // Lines are written by the server's log thread as soon as it is idle:
    // wait for the last request's, then stop the server.
    let read = || std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !read().lines().any(|l| l.contains("401")) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(s);
    let log = read();
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()) && !page.contains(secret.as_str()),
            "a session secret shown"
        );
    }
    (log, ecid, job, format!("{failed}\n{activity}\n{recovered}\n{page}"))
}

/// No password, and no `Authorization` header value (Base64 of
/// `user:password`, right or wrong), anywhere in `shown`.
fn assert_no_secret(shown: &str) {
    use base64::Engine;
    let basic = |credentials: &str| base64::engine::general_purpose::STANDARD.encode(credentials);
    let headers = [
        basic("serviceadmin:Pa55_word"),
        basic(&format!("serviceadmin:{WRONG_PASSWORD}")),
    ];
    for secret in ["Pa55_word", REPO_PASSWORD, ENGINE_SECRET, WRONG_PASSWORD]
        .into_iter()
        .chain(headers.iter().map(String::as_str))
    {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
}

#[test]
fn each_request_and_job_step_is_one_line_and_no_password_is_ever_shown() {
    let (log, ecid, job, api) = exercise(&[]);
    let request = log
        .lines()
        .find(|l| l.contains(&ecid))
        .unwrap_or_else(|| panic!("no line with ecid {ecid}:\n{log}"));
    assert!(request.contains("POST") && request.contains("status=202"), "{request}");
    let job_lines: Vec<&str> = log.lines().filter(|l| l.contains(&format!("job{{id={job} "))).collect();
    assert!(
        job_lines.iter().any(|l| l.contains("backup started")) && job_lines.iter().any(|l| l.contains("succeeded")),
        "the job's steps, each with its id:\n{log}"
    );
    assert!(log.contains("status=401"), "the refused request is logged:\n{log}");
    assert!(
        log.contains("failed: backup failed"),
        "the failed job is logged:\n{log}"
    );
    assert_no_secret(&log);
    assert_no_secret(&api);
}

/// The same at the most verbose level, where the libraries below (HTTP/2,
/// TLS, the database drivers) log too.
#[test]
fn no_password_or_authorization_header_is_logged_even_at_trace_level() {
    let (log, ..) = exercise(&[("STRONGBOX_LOG", "trace".to_string())]);
    assert!(log.lines().count() > 100, "trace logging on:\n{log}");
    assert_no_secret(&log);
}

#[test]
fn json_logs_are_one_object_per_line_with_the_ecid_and_the_job_id() {
    let (log, ecid, job, _) = exercise(&[("STRONGBOX_LOG_FORMAT", "json".to_string())]);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request = lines
        .iter()
        .find(|v| v["fields"]["ecid"] == ecid.as_str())
        .unwrap_or_else(|| panic!("no line with ecid {ecid}:\n{log}"));
    assert_eq!(request["fields"]["status"], 202, "{request}");
    assert!(
        lines
            .iter()
            .any(|v| v["span"]["name"] == "job" && v["span"]["id"].as_i64() == job.parse().ok()),
        "a line of job {job}:\n{log}"
    );
    assert_no_secret(&log);
}
