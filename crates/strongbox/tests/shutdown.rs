//! SIGTERM: the server leases no new job and lets the running one finish
//! within its grace period; past it, the job goes back to the queue and
//! another server (same PostgreSQL catalog, same repository) completes it
//! at once, long before the 30 s lease would run out. Requests through
//! both servers are answered throughout, never with a 5xx. SIGKILL in the
//! middle of a recovery: started again, the server finishes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use strongbox_testkit::Database;

struct Pair {
    db: Database,
    root: tempfile::TempDir,
    servers: Vec<Server>,
}

/// Two servers on one catalog and repository, `big` (300 MiB) and `small`
/// deployments, and a backup of `big` queued: its location.
fn pair(grace: u64) -> (Pair, String) {
    let root = tempfile::tempdir().unwrap();
    let db = Database::create("strongbox_shutdown");
    let env = [
        ("STRONGBOX_CATALOG", db.url.clone()),
        (
            "STRONGBOX_REPOSITORY",
            root.path().join("repository").display().to_string(),
        ),
        ("STRONGBOX_REPO_PASSWORD", "pair-shares-this".to_string()),
        ("STRONGBOX_SHUTDOWN_GRACE_SECONDS", grace.to_string()),
        ("STRONGBOX_LEASE_SECONDS", "30".to_string()),
    ];
    let servers: Vec<Server> = ["a", "b"]
        .iter()
        .map(|n| {
            let dir = root.path().join(n);
            std::fs::create_dir_all(&dir).unwrap();
            start_with(&dir, free_port(), &env)
        })
        .collect();
    for (name, mib) in [("big", 300), ("small", 1)] {
        let file = root.path().join(format!("{name}.sqlite"));
        big_database(&file, mib);
        let (status, v) = servers[0].register_sqlite(name, &file);
        assert_eq!(status, "HTTP/2 200", "{v}");
    }
    let (status, location) = servers[0].post_backup("big", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    (Pair { db, root, servers }, location)
}

/// The server whose worker holds job `id`, once it has started.
fn holder(p: &Pair, id: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owner = psql(
            &p.db,
            &format!("SELECT coalesce(lease_owner, '') FROM jobs WHERE id = {id}"),
        );
        if let Some(pid) = owner.split('-').next().and_then(|p| p.parse::<u32>().ok()) {
            return p.servers.iter().position(|s| s.child.id() == pid).unwrap();
        }
        assert!(Instant::now() < deadline, "job {id} was never leased");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm(s: &Server) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Polls `urls` (CA, URL) until `done`; panics on a 5xx. A refused
/// connection (a server that has exited) is fine. Returns how many answers
/// came.
fn poll_all(urls: &[(std::path::PathBuf, String)], done: &AtomicBool) -> usize {
    let mut answered = 0;
    while !done.load(Ordering::Relaxed) {
        for (ca, url) in urls {
            let out = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(ca)
                .args(&AUTH[..])
                .arg(url)
                .output()
                .unwrap();
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(!code.starts_with('5'), "{code} from {url}");
            answered += (code != "000") as usize;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    answered
}

/// The job at `location` as each server serves it.
fn everywhere(p: &Pair, location: &str) -> Vec<(std::path::PathBuf, String)> {
    p.servers
        .iter()
        .map(|s| (s.dir.join("ca.pem"), on(s, location)))
        .collect()
}

/// Stops the poller when the test body ends, also by a failed assertion
/// (else the scope would wait for it forever).
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn location_port(location: &str) -> String {
    location
        .split("localhost:")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn wait_exit(s: &mut Server, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not stop within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn activity(s: &Server, id: &str) -> String {
    let (_, log) = s.json(&[&s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))]);
    log["messages"].to_string()
}

fn on(s: &Server, location: &str) -> String {
    location.replace(&location_port(location), &s.port.to_string())
}

#[test]
fn with_a_long_grace_the_running_backup_finishes_before_the_server_stops() {
    let (mut p, location) = pair(120);
    let id = location.rsplit('/').next().unwrap().to_string();
    let h = holder(&p, &id);
    let urls = everywhere(&p, &location);
    let done = AtomicBool::new(false);
    let other = 1 - h;
    let stopped = std::thread::scope(|scope| {
        let poller = scope.spawn(|| poll_all(&urls, &done));
        let stop_polling = Done(&done);
        sigterm(&p.servers[h]);
        // While it drains, the stopping server still answers, and a job
        // queued through it goes to the other server.
        std::thread::sleep(Duration::from_millis(300));
        let (status, small) = p.servers[h].post_backup("small", &[]);
        assert_eq!(status, "HTTP/2 202", "{small}");
        p.servers[other].wait_for(&on(&p.servers[other], &small), "Succeeded");
        let small_id = small.rsplit('/').next().unwrap();
        let ran = |s: &Server| {
            std::fs::read_to_string(s.dir.join("server.log"))
                .unwrap()
                .contains(&format!(
                    "job{{id={small_id} attempt=1 operation=backup deployment=small}}"
                ))
        };
        assert!(ran(&p.servers[other]) && !ran(&p.servers[h]), "the other server ran it");
        let status = wait_exit(&mut p.servers[h], Duration::from_secs(120));
        let ended = psql(&p.db, &format!("SELECT status FROM jobs WHERE id = {id}"));
        drop(stop_polling);
        assert!(poller.join().unwrap() > 0);
        assert_eq!(ended, "succeeded", "the backup ended before its server exited");
        status
    });
    assert!(stopped.success(), "exit status {stopped}");
    let s = &p.servers[other];
    let job = s.wait_for(&on(s, &location), "Succeeded");
    assert!(job["progress"]["bytes_done"].as_u64().unwrap() > 250 << 20, "{job}");
    let log = activity(s, &id);
    assert!(!log.contains("resumed"), "finished by its first server: {log}");
    assert_eq!(psql(&p.db, &format!("SELECT attempts FROM jobs WHERE id = {id}")), "1");
}

#[test]
fn with_a_short_grace_another_server_completes_the_running_backup_at_once() {
    let (mut p, location) = pair(1);
    let id = location.rsplit('/').next().unwrap().to_string();
    let h = holder(&p, &id);
    let other = 1 - h;
    // Let it get going, then stop its server.
    std::thread::sleep(Duration::from_millis(500));
    let urls = everywhere(&p, &location);
    let done = AtomicBool::new(false);
    let stopped = std::thread::scope(|scope| {
        let poller = scope.spawn(|| poll_all(&urls, &done));
        let stop_polling = Done(&done);
        let signalled = Instant::now();
        sigterm(&p.servers[h]);
        // Taken over when released (1 s grace), not when the 30 s lease
        // runs out.
        loop {
            let attempts = psql(&p.db, &format!("SELECT attempts FROM jobs WHERE id = {id}"));
            if attempts == "2" {
                break;
            }
            assert!(
                signalled.elapsed() < Duration::from_secs(10),
                "not taken over: {attempts} attempt(s)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = wait_exit(&mut p.servers[h], Duration::from_secs(20));
        p.servers[other].wait_for(&on(&p.servers[other], &location), "Succeeded");
        drop(stop_polling);
        assert!(poller.join().unwrap() > 0);
        status
    });
    assert!(stopped.success(), "exit status {stopped}");
    let s = &p.servers[other];
    let log = activity(s, &id);
    assert!(log.contains("this server is shutting down"), "{log}");
    assert!(log.contains("resumed after its worker stopped (attempt 2)"), "{log}");
    let (_, list) = s.json(&[&s.url("/paas/service/dbcs/api/v1.1/instances/usexample/big/backups")]);
    let backups = list["backupList"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "one backup: {list}");
    assert_eq!(backups[0]["status"], "COMPLETED", "{list}");
    let out = std::process::Command::new(BIN)
        .args(["repo", "--repo"])
        .arg(p.root.path().join("repository"))
        .args(["check", "--read-data"])
        .env("STRONGBOX_PASSWORD", "pair-shares-this")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The backup taken over restores exactly (nothing wrote to `big` since
    // `pair` made it).
    let file = p.root.path().join("big.sqlite");
    let at_backup = sqlite_checksum(&file);
    recovers_exactly(s, "big", &file, backups[0]["dbTag"].as_str().unwrap(), &at_backup);
}

/// SIGKILL in the middle of a recovery (its command sleeping, the file not
/// yet written): the killed attempt's command dies with the server (left
/// running, it would read the end of its input as a clean end and write
/// what it had: an empty file here, 3 s in). Started again, the server
/// takes the job back once its lease (2 s) runs out, runs it again and
/// completes it; the file holds the backup's bytes exactly.
#[test]
fn a_server_killed_mid_recovery_finishes_it_when_started_again() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("notes.txt");
    let pids = root.path().join("recovery-pids");
    std::fs::write(&file, "the notes as backed up\n").unwrap();
    let (backup, recovery) = (
        format!("cat {}", file.display()),
        format!("echo $$ >> {} && sleep 3 && cat > {}", pids.display(), file.display()),
    );
    let env = [(
        "STRONGBOX_ALLOW_COMMANDS",
        serde_json::json!([backup, recovery]).to_string(),
    )];
    let mut s = start_with(root.path(), free_port(), &env);
    register_command(&s, "notes", &backup, &recovery);
    post_until_accepted(&s, &format!("{API}/notes/backups"), "{}");
    let (_, list) = s.json(&[&s.url(&format!("{API}/notes/backups"))]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    std::fs::write(&file, "overwritten\n").unwrap();
    let location = ask_recovery(&s, "notes", &format!(r#"{{"tag": "{tag}"}}"#));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&pids).unwrap_or_default().is_empty() {
        assert!(Instant::now() < deadline, "the recovery's command never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let first: u32 = std::fs::read_to_string(&pids).unwrap().trim().parse().unwrap();
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    let killed = Instant::now();
    while alive(first) {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "the killed server's recovery command (pid {first}) lives on"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(4)); // past its `sleep 3`
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "overwritten\n",
        "something of the killed attempt wrote the file"
    );
    s.restart();
    let done = s.wait_for(&location, "Succeeded");
    let id = done["job_id"].as_i64().unwrap().to_string();
    let log = activity(&s, &id);
    assert!(log.contains("resumed after its worker stopped"), "{log}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "the notes as backed up\n");
}

/// Whether process `pid` runs (a zombie does not: nothing reaps orphans in
/// some containers).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}
