//! Several servers, one service: three replicas on one PostgreSQL catalog
//! (a database of its own on the machine's server) and one repository.
//! Requests racing through all three for one deployment queue one job; the
//! replica running it is killed (SIGKILL) and another finishes it once the
//! lease expires: no job left in progress, no second backup, the
//! repository sound.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use strongbox_testkit::Database;

const BIG: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/big/backups";

fn replica(root: &Path, name: &str, env: &[(&str, String)]) -> Server {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    start_with(&dir, free_port(), env)
}

#[test]
fn replicas_on_one_catalog_queue_one_job_from_racing_requests_and_finish_a_killed_ones() {
    let root = tempfile::tempdir().unwrap();
    let db = Database::create("strongbox_replicas");
    let env = [
        ("STRONGBOX_CATALOG", db.url.clone()),
        (
            "STRONGBOX_REPOSITORY",
            root.path().join("repository").display().to_string(),
        ),
        ("STRONGBOX_REPO_PASSWORD", "replicas-share-this".to_string()),
    ];
    let mut servers: Vec<Server> = ["a", "b", "c"].iter().map(|n| replica(root.path(), n, &env)).collect();
    let file = root.path().join("big.sqlite");
    big_database(&file, 300);
    let at_backup = sqlite_checksum(&file);
    let (status, v) = servers[0].register_sqlite("big", &file);
    assert_eq!(status, "HTTP/2 200", "{v}");

    // 24 requests at once, 8 through each replica: one job.
    let answers: Vec<(String, String)> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..24)
            .map(|i| {
                let s = &servers[i % 3];
                scope.spawn(move || {
                    let (status, h, body) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", "{}", &s.url(BIG)]].concat());
                    let location = h.iter().find(|(k, _)| k == "location").map(|(_, v)| v.clone());
                    (status, location.unwrap_or(body))
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let accepted: Vec<&String> = answers
        .iter()
        .filter(|(status, _)| status == "HTTP/2 202")
        .map(|(_, location)| location)
        .collect();
    assert_eq!(accepted.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(status, _)| status == "HTTP/2 202" || status == "HTTP/2 409"),
        "{answers:?}"
    );
    let location = accepted[0].clone();
    let id = location.rsplit('/').next().unwrap().to_string();

    // Kill the replica whose worker holds the job, mid-backup.
    let deadline = Instant::now() + Duration::from_secs(30);
    let owner = loop {
        let owner = psql(
            &db,
            &format!("SELECT coalesce(lease_owner, '') FROM jobs WHERE id = {id}"),
        );
        if !owner.is_empty() {
            break owner;
        }
        assert!(Instant::now() < deadline, "job {id} was never leased");
        std::thread::sleep(Duration::from_millis(10));
    };
    let pid: u32 = owner.split('-').next().unwrap().parse().unwrap();
    let holder = servers
        .iter()
        .position(|s| s.child.id() == pid)
        .expect("a replica holds it");
    let mut killed = servers.remove(holder);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();

    // Another replica finishes it after the lease (2 s) expires.
    let s = &servers[0];
    let local = location.replace(&format!("localhost:{}", killed.port), &format!("localhost:{}", s.port));
    let job = s.wait_for(&local, "Succeeded");
    let (_, log) = s.json(&[&s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))]);
    let messages = log["messages"].to_string();
    assert!(
        messages.contains("resumed after its worker stopped"),
        "the job was taken over: {log}"
    );
    assert!(job["progress"]["bytes_done"].as_u64().unwrap() > 250 << 20, "{job}");
    let (_, list) = s.json(&[&s.url(BIG)]);
    let backups = list["backupList"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "no second backup: {list}");
    assert_eq!(backups[0]["status"], "COMPLETED", "{list}");
    assert_eq!(
        psql(&db, "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"),
        "0",
        "no job left in progress"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_strongbox"))
        .args(["repo", "--repo"])
        .arg(root.path().join("repository"))
        .args(["check", "--read-data"])
        .env("STRONGBOX_PASSWORD", "replicas-share-this")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The backup taken over restores exactly.
    recovers_exactly(s, "big", &file, backups[0]["dbTag"].as_str().unwrap(), &at_backup);
}

#[test]
fn a_deployment_that_names_a_label_runs_only_on_servers_with_it_and_says_so_while_none_lives() {
    let root = tempfile::tempdir().unwrap();
    // Two servers on one catalog (a SQLite file both open) and one repository.
    let env = [
        (
            "STRONGBOX_CATALOG",
            root.path().join("catalog.sqlite").display().to_string(),
        ),
        (
            "STRONGBOX_REPOSITORY",
            root.path().join("repository").display().to_string(),
        ),
        ("STRONGBOX_REPO_PASSWORD", "replicas-share-this".to_string()),
    ];
    let plain = replica(root.path(), "plain", &env);
    let file = root.path().join("pinned.sqlite");
    big_database(&file, 1);
    let register = |body: &str| {
        plain.json(&[
            "-X",
            "PUT",
            "-d",
            body,
            &plain.url("/strongbox/api/v1/instances/usexample/pinned"),
        ])
    };
    let (status, v) = register(&format!(
        r#"{{"engine": "sqlite", "connection": {{"path": "{}"}}, "runsOn": "db host"}}"#,
        file.display()
    ));
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(v["message"].as_str().unwrap().contains("label"), "{v}");
    let (status, v) = register(&format!(
        r#"{{"engine": "sqlite", "connection": {{"path": "{}"}}, "runsOn": "db-host-1"}}"#,
        file.display()
    ));
    assert_eq!(status, "HTTP/2 200", "{v}");
    assert_eq!(v["runsOn"], "db-host-1");

    let (status, location) = plain.post_backup("pinned", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    std::thread::sleep(Duration::from_millis(1500));
    let (_, job) = plain.json(&[&location]);
    assert_eq!(
        job["job_status"], "In Progress",
        "the unlabelled server leaves it: {job}"
    );
    assert_eq!(job["progress"]["bytes_done"], 0, "{job}");
    assert!(
        job["message"]
            .as_str()
            .unwrap()
            .contains("no live server is labelled db-host-1"),
        "{job}"
    );

    let labelled = replica(
        root.path(),
        "labelled",
        &[&env[..], &[("STRONGBOX_LABELS", "db-host-1".to_string())]].concat(),
    );
    let job = plain.wait_for(&location, "Succeeded");
    assert!(job["message"].as_str().unwrap().contains("backup completed"), "{job}");
    // Unlabelled deployments still run anywhere, on either server.
    let (status, location) = labelled.post_backup("db12c", &[]);
    assert_eq!(status, "HTTP/2 202");
    labelled.wait_for(&location, "Succeeded");
}
