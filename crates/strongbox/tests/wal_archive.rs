//! `strongbox repo wal-push` as a real cluster's archive_command and
//! `wal-fetch` as what a restore_command runs: segments arrive, come back
//! byte for byte, a conflicting push fails, and a push killed at any
//! moment leaves nothing a retry trips over.

use std::process::Command;
use std::time::Duration;

use crate::common::{Archive, BIN};
use strongbox_testkit::{Cluster, sh};

#[test]
fn a_cluster_archives_into_the_repository_and_gets_its_wal_back() {
    let dir = tempfile::tempdir().unwrap();
    sh(&format!("chown postgres:postgres {}", dir.path().display()));
    let archive = Archive::new(dir.path());
    let c = Cluster::start(&format!(
        "archive_mode = on\narchive_command = '{}'",
        archive.command("wal-push %p")
    ));
    c.psql("CREATE TABLE t (n int, pad text)");
    let mut switched = Vec::new();
    for i in 0..3 {
        c.psql(&format!(
            "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g WHERE {i} >= 0"
        ));
        switched.push(c.psql("SELECT pg_walfile_name(pg_switch_wal())"));
    }
    c.wait_archived(switched.last().unwrap());
    assert_eq!(c.psql("SELECT failed_count FROM pg_stat_archiver"), "0", "{}", c.log());

    // The repository unreachable for a while: pushes fail, PostgreSQL keeps
    // the segments and retries; once it is back, every one arrives.
    let away = dir.path().join("archive.away");
    std::fs::rename(&archive.repo, &away).unwrap();
    for _ in 0..2 {
        c.psql("INSERT INTO t SELECT g, repeat('y', 200) FROM generate_series(1, 20000) g");
        switched.push(c.psql("SELECT pg_walfile_name(pg_switch_wal())"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.psql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(std::time::Instant::now() < deadline, "no push failed while unreachable");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::rename(&away, &archive.repo).unwrap();
    // New WAL wakes the archiver, which retries the oldest pending first.
    c.psql("INSERT INTO t VALUES (0, 'wake')");
    switched.push(c.psql("SELECT pg_walfile_name(pg_switch_wal())"));
    let last = switched.last().unwrap().clone();
    c.wait_archived(&last);

    let list = String::from_utf8(archive.run("wal-list").stdout).unwrap();
    for segment in &switched {
        assert!(list.contains(segment.as_str()), "{segment} not in {list}");
    }
    // Fetched back byte for byte (while the server still holds its copy).
    let fetched = dir.path().join("fetched");
    let out = archive.run(&format!("wal-fetch {last} {}", fetched.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(c.data.join("pg_wal").join(&last)).unwrap()
    );
    // Not archived: a non-zero exit, which restore_command reads as "no such file".
    let out = archive.run(&format!("wal-fetch 0000000100000000000000FF {}", fetched.display()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the WAL archive"));

    // A different file under an archived name: refused, never overwritten.
    let other = dir.path().join(&switched[0]);
    std::fs::write(&other, vec![7u8; 16 << 20]).unwrap();
    sh(&format!("chown postgres {}", other.display()));
    let out = archive.run(&format!("wal-push {}", other.display()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different"), "{out:?}");
}

#[test]
fn a_push_killed_at_any_moment_is_retried_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    sh(&format!("chown postgres:postgres {}", dir.path().display()));
    let archive = Archive::new(dir.path());
    let segment = dir.path().join("000000010000000000000042");
    let content: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 ^ (i / 4096) as u8)
        .collect();
    std::fs::write(&segment, &content).unwrap();

    let segment_arg = segment.to_str().unwrap();
    let mut killed = 0;
    for delay_ms in [5, 20, 40, 60, 80, 120, 160, 240] {
        let mut child = archive.spawn(&["wal-push", segment_arg]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        // What PostgreSQL does next: push again. It must succeed, whatever
        // the killed push left.
        let status = archive.spawn(&["wal-push", segment_arg]).wait().unwrap();
        assert!(status.success(), "retry after a kill at {delay_ms} ms failed");
        let fetched = dir.path().join("fetched");
        let fetched_arg = fetched.to_str().unwrap();
        assert!(
            archive
                .spawn(&["wal-fetch", "000000010000000000000042", fetched_arg])
                .wait()
                .unwrap()
                .success()
        );
        assert!(
            std::fs::read(&fetched).unwrap() == content,
            "fetched bytes differ after a kill at {delay_ms} ms"
        );
        let list = Command::new(BIN)
            .args(["repo", "-r", archive.repo.to_str().unwrap(), "--password-file"])
            .arg(&archive.password_file)
            .arg("wal-list")
            .output()
            .unwrap();
        let list = String::from_utf8(list.stdout).unwrap();
        assert_eq!(
            list.lines().count(),
            1,
            "one archived file, nothing half-written listed: {list}"
        );
        // The next round starts from an empty archive again.
        std::fs::remove_dir_all(archive.repo.join("wal")).unwrap();
    }
    assert!(
        killed >= 2,
        "only {killed} pushes were interrupted; the test did not test much"
    );
}
