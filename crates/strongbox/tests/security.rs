//! The security review (issue 24): what an API password can make the
//! server do. The server's configuration (`[allow]`) decides what
//! deployments may run and touch; the server's own files are never a
//! deployment's; a user of one identity domain reaches nothing of another;
//! names cannot climb out of a directory or end a line; TLS is asked for
//! where it is missing; `/metrics` can listen apart.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use serde_json::json;

const REGISTER: &str = "/strongbox/api/v1/instances/usexample";

fn register(s: &Server, name: &str, body: &serde_json::Value) -> (String, serde_json::Value) {
    s.json(&[
        "-X",
        "PUT",
        "-d",
        &body.to_string(),
        &s.url(&format!("{REGISTER}/{name}")),
    ])
}

fn message(v: &serde_json::Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

/// `strongbox admin deployment` on the server's data directory, with the
/// test servers' `[allow]` and the server's `config` file, if any.
fn admin_deployment(
    dir: &Path,
    config: Option<&Path>,
    name: &str,
    engine: &str,
    connection: &serde_json::Value,
) -> std::process::Output {
    let mut admin = Command::new(BIN);
    admin
        .args(["admin", "deployment", name, "--domain", "usexample", "--engine", engine])
        .arg("--connection")
        .arg(connection.to_string())
        .env("STRONGBOX_DATA_DIR", dir.join("data"))
        .envs(allow_env());
    if let Some(config) = config {
        admin.env("STRONGBOX_CONFIG", config);
    }
    admin.output().unwrap()
}

/// The probe of the issue: an admin registers a `command` deployment whose
/// backup runs `sh -c "id > FILE"`.
fn probe(marker: &Path) -> serde_json::Value {
    json!({"engine": "command", "connection": {
        "backup_command": format!("sh -c \"id > {}; echo x\"", marker.display()),
        "recovery_command": "cat",
    }})
}

#[test]
fn an_admin_password_runs_only_what_the_configuration_allows() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let s = start(&dir);
    let evil = probe(&marker);
    let (status, v) = register(&s, "evil", &evil);
    assert_eq!(status, "HTTP/2 400", "{v}");
    for named in ["backup_command", "[allow]", "`commands`"] {
        assert!(message(&v).contains(named), "the refusal names {named}: {v}");
    }
    // Not registered, so nothing to run.
    let (status, body) = s.post_backup("evil", &[]);
    assert_eq!(status, "HTTP/2 404", "{body}");
    let out = admin_deployment(dir.path(), None, "evil", "command", &evil["connection"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("backup_command"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, list) = s.json(&[&s.url("/paas/service/dbcs/api/v1.1/instances/usexample")]);
    assert_eq!(list["services"].as_array().unwrap().len(), 1, "only the demo: {list}");
    assert!(!marker.exists(), "no program ran");

    // Allowed in the configuration, the same deployment backs up and recovers.
    drop(s);
    let line = evil["connection"]["backup_command"].as_str().unwrap();
    let s = start_with(
        dir.path(),
        free_port(),
        &[
            ("STRONGBOX_ALLOW_COMMANDS", json!([line]).to_string()),
            ("STRONGBOX_ALLOW_PROGRAMS", json!(["cat"]).to_string()),
        ],
    );
    let (status, v) = register(&s, "evil", &evil);
    assert_eq!(status, "HTTP/2 200", "{v}");
    let (status, location) = s.post_backup("evil", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    s.wait_for(&location, "Succeeded");
    let id = std::fs::read_to_string(&marker).unwrap();
    assert!(id.starts_with("uid="), "{id}");
    let (status, h, body) = s.curl(
        &[
            &AUTH[..],
            &[
                "-X",
                "POST",
                "-d",
                r#"{"latest": true}"#,
                &s.url("/paas/service/dbcs/api/v1.1/instances/usexample/evil/backups/recovery"),
            ],
        ]
        .concat(),
    );
    assert_eq!(status, "HTTP/2 202", "{body}");
    s.wait_for(header(&h, "location"), "Succeeded");
}

#[test]
fn the_servers_own_files_are_never_a_deployment_not_even_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strongbox.toml");
    std::fs::write(&config, "workers = 2\n").unwrap();
    let s = start_with(
        dir.path(),
        free_port(),
        &[("STRONGBOX_CONFIG", config.display().to_string())],
    );
    let data = dir.path().join("data");
    std::os::unix::fs::symlink(data.join("catalog.sqlite"), dir.path().join("innocent.db")).unwrap();
    std::os::unix::fs::symlink(&data, dir.path().join("innocent-dir")).unwrap();
    let own = [
        data.join("catalog.sqlite"),
        data.join("repository.password"),
        data.join("repository/config"),
        data.join("tmp/scratch.db"),
        config.clone(),
        dir.path().join("key.pem"),
        dir.path().join("innocent.db"),
        dir.path().join("innocent-dir/catalog.sqlite"),
    ];
    for path in &own {
        let (status, v) = register(&s, "own", &json!({"engine": "sqlite", "connection": {"path": path}}));
        assert_eq!(status, "HTTP/2 400", "{}: {v}", path.display());
        assert!(message(&v).contains("the server's own"), "{}: {v}", path.display());
        if path.ends_with("key.pem") {
            continue; // the server has it from its environment, `admin` from nowhere
        }
        let out = admin_deployment(dir.path(), Some(&config), "own", "sqlite", &json!({"path": path}));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("the server's own"),
            "{}: {err}",
            path.display()
        );
    }
    // A PostgreSQL data directory that holds the server's files would be
    // replaced whole: refused too.
    let (status, v) = register(
        &s,
        "own",
        &json!({"engine": "postgresql", "connection": {
            "url": "postgresql://postgres@127.0.0.1:5432/postgres", "data_dir": dir.path(),
            "stop_command": "true", "start_command": "true",
        }}),
    );
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(message(&v).contains("the server's own"), "{v}");
    // A CA file a connection URL names is read by the server: its own TLS
    // key is refused, and so is a file under none of `certificate_files`.
    for (ca, refused) in [
        (dir.path().join("key.pem"), "the server's own"),
        (
            "/etc/ssl/certs/ca-certificates.crt".into(),
            "under none of `certificate_files`",
        ),
    ] {
        let url = format!(
            "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=verify-ca&sslrootcert={}",
            ca.display()
        );
        let (status, v) = register(
            &s,
            "own",
            &json!({"engine": "postgresql-logical", "connection": {"url": url}}),
        );
        assert_eq!(status, "HTTP/2 400", "{v}");
        assert!(
            message(&v).contains(refused) && message(&v).contains("sslrootcert"),
            "{v}"
        );
    }
    // A database beside them is fine.
    let (status, v) = register(
        &s,
        "app",
        &json!({"engine": "sqlite", "connection": {"path": dir.path().join("app.db")}}),
    );
    assert_eq!(status, "HTTP/2 200", "{v}");
}

#[test]
fn a_deployment_the_configuration_no_longer_allows_is_refused_when_its_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dbs/app.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    big_database(&db, 1);
    let s = start(&dir);
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    let (_, location) = s.post_backup("app", &[]);
    s.wait_for(&location, "Succeeded");
    let port = s.port;
    drop(s);
    // The operator narrows the allowed files to another folder.
    let s = start_with(
        dir.path(),
        port,
        &[(
            "STRONGBOX_ALLOW_DATABASE_FILES",
            json!([dir.path().join("elsewhere")]).to_string(),
        )],
    );
    let (status, location) = s.post_backup("app", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    let job = s.wait_for(&location, "Failed");
    let m = job["message"].as_str().unwrap();
    for named in ["app", "path", "database_files", "[allow]"] {
        assert!(m.contains(named), "the job's message names {named}: {m}");
    }
}

/// Every route of `/openapi.json`, called by an admin of another identity
/// domain: with the victim's domain in the path (and either domain in
/// `X-ID-TENANT-NAME`), and with the caller's own domain in the path but
/// the victim's deployment, job and tag (registration: the victim's
/// database file, which `{domain}` in `[allow]` keeps out of the caller's
/// reach). Nothing of the victim's shows, and nothing is started or
/// changed.
#[test]
fn a_user_of_another_identity_domain_reaches_nothing_on_any_route() {
    let dir = tempfile::tempdir().unwrap();
    let per_domain = json!([dir.path().join("{domain}")]).to_string();
    let s = start_with(
        dir.path(),
        free_port(),
        &[("STRONGBOX_ALLOW_DATABASE_FILES", per_domain)],
    );
    let (_, location) = s.post_backup("db12c", &[]);
    let job = s.wait_for(&location, "Succeeded");
    let job_id = job["job_id"].to_string();
    let (_, list) = s.json(&[&s.url(BACKUPS)]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    let db_path = dir
        .path()
        .join("data-demo/usexample/db12c.sqlite")
        .display()
        .to_string();
    let victim_data = [tag.as_str(), db_path.as_str(), "backup completed", "orders"];
    add_user(dir.path(), "mallory", "evilcorp", "admin");

    let (_, _, spec) = s.curl(&[&s.url("/openapi.json")]);
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let mut calls = 0;
    for (template, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            for (path_domain, tenant) in [
                ("usexample", "usexample"),
                ("usexample", "evilcorp"),
                ("evilcorp", "evilcorp"),
            ] {
                let path = template
                    .replace("{identityDomainId}", path_domain)
                    .replace("{serviceId}", "db12c")
                    .replace("{jobId}", &job_id)
                    .replace("{dbTag}", &tag);
                let body = if template.starts_with("/strongbox/") {
                    json!({"engine": "sqlite", "connection": {"path": db_path}}).to_string()
                } else if template.ends_with("/recovery") {
                    r#"{"latest": true}"#.to_string()
                } else {
                    "{}".to_string()
                };
                let tenant = format!("X-ID-TENANT-NAME:{tenant}");
                let mut args = vec!["-u", "mallory:mallory-pw", "-H", &tenant, "-X", &method];
                if method != "GET" {
                    args.extend(["-H", "Content-Type:application/json", "-d", &body]);
                }
                let url = s.url(&path);
                args.push(&url);
                let (status, _, text) = s.curl(&args);
                calls += 1;
                let code: u16 = status.split(' ').nth(1).unwrap().parse().unwrap();
                let what = format!("{method} {path} (tenant {tenant}): {status} {text}");
                if path_domain == "usexample" {
                    assert!([401, 403].contains(&code), "{what}");
                } else if template.contains("{serviceId}") || template.contains("{jobId}") {
                    // The caller's own domain has no deployment db12c and no such job.
                    assert!([400, 404].contains(&code), "{what}");
                } else {
                    // The caller's own (empty) domain may be listed.
                    assert!(code < 500, "{what}");
                }
                // (A refusal may repeat what the request itself sent.)
                for data in victim_data.iter().filter(|d| !body.contains(**d)) {
                    assert!(!text.contains(data), "{what}: shows {data}");
                }
            }
        }
    }
    assert!(calls >= 36, "every route three ways: {calls}");
    let (_, after) = s.json(&[&s.url(BACKUPS)]);
    assert_eq!(after["backupList"], list["backupList"], "nothing changed");
    let (_, victim) = s.json(&[&s.url("/paas/service/dbcs/api/v1.1/instances/usexample/db12c")]);
    assert_eq!(victim["engine"], "sqlite", "{victim}");
}

#[test]
fn names_that_could_climb_a_directory_or_end_a_line_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = dir.path().join("app.db").display().to_string();
    let long = "a".repeat(300);
    for name in [
        "..",
        "%2E%2E",
        "a%2Fb",
        "a%2F..%2Fb",
        "a%00b",
        "a%0Ab",
        "a%0Db",
        "a%01b",
        "a.b",
        "a%20b",
        &long,
    ] {
        let (status, _, body) = s.curl(
            &[
                &AUTH[..],
                &[
                    "--path-as-is",
                    "-X",
                    "PUT",
                    "-d",
                    &json!({"engine": "sqlite", "connection": {"path": db}}).to_string(),
                    &s.url(&format!("{REGISTER}/{name}")),
                ],
            ]
            .concat(),
        );
        let code: u16 = status.split(' ').nth(1).unwrap().parse().unwrap();
        assert!((400..500).contains(&code), "{name}: {status} {body}");
    }
    let (_, list) = s.json(&[&s.url("/paas/service/dbcs/api/v1.1/instances/usexample")]);
    assert_eq!(list["services"].as_array().unwrap().len(), 1, "only the demo: {list}");
    // Identity domains through `admin`.
    for name in ["..", "a/b", "a\nb", "a\0b", &long] {
        let args: [&[&str]; 2] = [&["admin", "domain", name], &["admin", "user", "u", "--domain", name]];
        for args in args {
            if name.contains('\0') {
                continue; // no argument can hold NUL
            }
            let out = Command::new(BIN)
                .args(args)
                .env("STRONGBOX_DATA_DIR", dir.path().join("data"))
                .env("STRONGBOX_NEW_PASSWORD", "pw")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("cannot name"), "{args:?}: {err}");
        }
    }
}

#[test]
fn a_server_beyond_loopback_without_tls_warns_and_metrics_can_listen_apart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("STRONGBOX_DATA_DIR", dir.path().join("data"))
        .env("STRONGBOX_LISTEN", format!("0.0.0.0:{port}"))
        .stdout(Stdio::null())
        .stderr(log_file(dir.path()))
        .spawn()
        .unwrap();
    wait_for_port(port);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        log.contains("without TLS") && log.contains("STRONGBOX_TLS_CERT"),
        "{log}"
    );
    let loopback = tempfile::tempdir().unwrap();
    let s = start(&loopback);
    let log = std::fs::read_to_string(loopback.path().join("server.log")).unwrap();
    assert!(!log.contains("without TLS"), "TLS is on: {log}");
    drop(s);

    let metrics = free_port();
    let s = start_with(
        dir.path(),
        free_port(),
        &[("STRONGBOX_METRICS_LISTEN", format!("127.0.0.1:{metrics}"))],
    );
    let out = Command::new("curl")
        .args(["-sS", &format!("http://127.0.0.1:{metrics}/metrics")])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains("strongbox_jobs{"), "{page}");
    let (status, _, body) = s.curl(&[&s.url("/metrics")]);
    assert_eq!(status, "HTTP/2 404", "{body}");
    assert!(body.contains(&format!("127.0.0.1:{metrics}")), "{body}");
}
