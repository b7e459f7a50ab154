//! The `strongbox repo` CLI as real processes: SIGKILL at random moments,
//! two backups at once, and what a user sees on mistakes.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use strongbox_repo::{NoProgress, Repository, Store};

const PASSWORD: &str = "cli test password";

fn strongbox(repo: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strongbox"));
    c.arg("repo")
        .arg("--repo")
        .arg(repo)
        .env("STRONGBOX_PASSWORD", PASSWORD)
        .stdin(Stdio::null());
    c
}

fn ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Compressible, low-repetition text, different for each seed.
fn write_data(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(
            format!(
                "row {} status={} amount={}.{:02}\n",
                x >> 44,
                x % 7,
                (x >> 8) % 5000,
                x % 100
            )
            .as_bytes(),
        );
    }
    out.truncate(len);
    std::fs::write(path, &out).unwrap();
    out
}

fn init(repo: &Path) {
    // Small chunks and packs: many objects, many moments to be killed in.
    let mut c = strongbox(repo);
    c.args(["init", "--chunker", "4096,16384,65536", "--pack-size-mib", "1"]);
    ok(c);
}

async fn open(repo: &Path) -> Repository {
    Repository::open(Store::local(repo).unwrap(), PASSWORD.as_bytes())
        .await
        .unwrap()
}

/// Every snapshot restores to exactly the data of the round its tag names.
async fn assert_snapshots_whole(repo: &Repository, name: &str, rounds: &[Vec<u8>]) -> usize {
    let snaps = repo.snapshots().await.unwrap();
    for s in &snaps {
        let round: usize = s.tags[0].strip_prefix("round-").unwrap().parse().unwrap();
        let mut out = Vec::new();
        repo.restore_to_writer(s, name, &mut out, &NoProgress).await.unwrap();
        assert!(out == rounds[round], "snapshot {} restored different bytes", s.id);
    }
    snaps.len()
}

fn backup_round(repo: &Path, file: &Path, round: usize) -> Command {
    let mut c = strongbox(repo);
    c.args(["--json", "backup", "--tag", &format!("round-{round}")])
        .arg(file);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_leaves_a_sound_repository() {
    let dir = tempfile::tempdir().unwrap();
    let (repo_dir, file) = (dir.path().join("repo"), dir.path().join("db.bin"));
    let name = file.to_str().unwrap().trim_start_matches('/').to_string();
    // Each round: the same first half, a new second half, so every run
    // has real uploading to be killed in.
    let base = dir.path().join("base");
    let half = 12 << 20;
    let mut base_bytes = write_data(&base, half, 1);
    // Rounds 0-11 share their first half; round 12 shares nothing with them.
    let rounds: Vec<Vec<u8>> = (0..13)
        .map(|r| {
            if r == 12 {
                return write_data(&dir.path().join("part"), 2 * half, 999);
            }
            let mut d = base_bytes.clone();
            d.extend_from_slice(&write_data(&dir.path().join("part"), half, 100 + r as u64));
            d
        })
        .collect();
    base_bytes.clear();

    // How long an uninterrupted backup takes, on a scratch repository.
    let scratch = dir.path().join("scratch");
    init(&scratch);
    std::fs::write(&file, &rounds[0]).unwrap();
    let t = Instant::now();
    ok(backup_round(&scratch, &file, 0));
    let full = t.elapsed();

    init(&repo_dir);
    let mut seed = strongbox_testkit::fresh_seed() | 1;
    let mut killed = 0;
    for (round, content) in rounds.iter().enumerate().take(12) {
        std::fs::write(&file, content).unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Within the first 70 % of an uninterrupted run: later rounds store
        // only half new data and finish sooner than the calibration run.
        let delay = full.mul_f64(0.7 * (seed % 1000) as f64 / 1000.0);
        let mut c = backup_round(&repo_dir, &file, round);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        let repo = open(&repo_dir).await;
        let report = repo.check(round % 4 == 3).await.unwrap();
        assert!(
            report.is_ok(),
            "round {round} (killed after {delay:?}): {:?}",
            report.errors
        );
        assert_snapshots_whole(&repo, &name, &rounds).await;
    }
    assert!(
        killed >= 3,
        "only {killed} of 12 runs were interrupted; the test did not test much"
    );

    // A run killed just after its first pack was indexed, before its
    // snapshot: the next backup of the same data reuses that pack. (Kills
    // at random moments may all land before the first pack on a busy
    // machine; this one cannot.)
    let last = rounds.len() - 1;
    std::fs::write(&file, &rounds[last]).unwrap();
    // Whole index objects only: object_store stages a write as `NAME#N`
    // in the same directory and renames it when complete.
    let indexed = || {
        std::fs::read_dir(repo_dir.join("index")).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().contains('#'))
                .count()
        })
    };
    let before = indexed();
    let chunks_before = open(&repo_dir).await.stats().await.unwrap().chunks;
    let mut c = backup_round(&repo_dir, &file, last);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while indexed() == before {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before its first pack was indexed"
        );
        assert!(Instant::now() < deadline, "no pack indexed in 120 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let stored_by_killed = open(&repo_dir).await.stats().await.unwrap().chunks - chunks_before;
    assert!(stored_by_killed > 0);
    let v: serde_json::Value = serde_json::from_slice(&ok(backup_round(&repo_dir, &file, last)).stdout).unwrap();
    let (new, total) = (
        v["totals"]["new_chunks"].as_u64().unwrap() as usize,
        v["totals"]["chunks"].as_u64().unwrap() as usize,
    );
    assert!(
        total - new >= stored_by_killed,
        "the killed run stored {stored_by_killed} chunks, the next backup reused only {}: {v}",
        total - new
    );
    let repo = open(&repo_dir).await;
    assert!(assert_snapshots_whole(&repo, &name, &rounds).await >= 1);
    // Prune clears what the killed runs left, and the result still checks.
    let mut c = strongbox(&repo_dir);
    c.arg("prune");
    ok(c);
    let report = repo.check(true).await.unwrap();
    assert!(
        report.is_ok() && report.warnings.is_empty(),
        "{:?} {:?}",
        report.errors,
        report.warnings
    );
    assert_snapshots_whole(&repo, &name, &rounds).await;
}

/// Prune SIGKILLed: eight backups sharing half their data, six forgotten;
/// a prune killed the moment its plan is stored, then prunes killed at
/// random moments (seeded) within the time an uninterrupted one takes
/// (timed on a copy) until one finishes. After each, the repository checks
/// and both kept backups restore exactly; the last prune leaves no plan
/// waiting and the repository clean, without warnings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_killed_at_random_moments_leaves_a_sound_repository() {
    let dir = tempfile::tempdir().unwrap();
    let (repo_dir, file) = (dir.path().join("repo"), dir.path().join("db.bin"));
    let name = file.to_str().unwrap().trim_start_matches('/').to_string();
    // Shared and own blocks interleaved: packs hold both, so forgetting
    // leaves them part-used and prune repacks (reads and rewrites), not
    // only deletes.
    let shared = write_data(&dir.path().join("shared"), 8 << 20, 1);
    let rounds: Vec<Vec<u8>> = (0..8)
        .map(|r| {
            let own = write_data(&dir.path().join("part"), 8 << 20, 10 + r);
            shared
                .chunks(256 << 10)
                .zip(own.chunks(256 << 10))
                .flat_map(|(a, b)| a.iter().chain(b).copied())
                .collect()
        })
        .collect();
    init(&repo_dir);
    for (round, content) in rounds.iter().enumerate() {
        std::fs::write(&file, content).unwrap();
        ok(backup_round(&repo_dir, &file, round));
    }
    let repo = open(&repo_dir).await;
    let mut snaps = repo.snapshots().await.unwrap();
    snaps.sort_by(|a, b| a.time.cmp(&b.time));
    let forget: Vec<_> = snaps.iter().take(6).map(|s| s.id).collect();
    repo.forget(&forget).await.unwrap();

    // How long an uninterrupted prune takes, on a copy.
    let copy = dir.path().join("copy");
    strongbox_testkit::sh(&format!("cp -a {} {}", repo_dir.display(), copy.display()));
    let t = Instant::now();
    let mut c = strongbox(&copy);
    c.args(["--json", "prune"]);
    let pruned = ok(c);
    let full = t.elapsed();

    // First killed the moment its plan is stored (polled every
    // millisecond), so that one kill surely lands mid-prune: the next
    // prune finishes that plan. A prune that ends before its plan is seen
    // (a loaded machine may not poll in time) is tried again on the
    // repository as it was.
    let planned = || {
        std::fs::read_dir(repo_dir.join("plans")).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().contains('#'))
                .count()
        })
    };
    let pristine = dir.path().join("pristine");
    strongbox_testkit::sh(&format!("cp -a {} {}", repo_dir.display(), pristine.display()));
    let mut killed_at_plan = false;
    for attempt in 0..5 {
        if attempt > 0 {
            strongbox_testkit::sh(&format!(
                "rm -rf {r} && cp -a {p} {r}",
                r = repo_dir.display(),
                p = pristine.display()
            ));
        }
        let mut c = strongbox(&repo_dir);
        c.arg("prune").stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while planned() == 0 && child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no plan in 60 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        killed_at_plan = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if killed_at_plan {
            break;
        }
    }
    assert!(killed_at_plan, "5 prunes ended before their plan was seen");
    let repo = open(&repo_dir).await;
    assert!(repo.check(true).await.unwrap().is_ok());
    assert_eq!(assert_snapshots_whole(&repo, &name, &rounds).await, 2);

    let mut seed = strongbox_testkit::fresh_seed() | 1;
    let mut killed = 1;
    for attempt in 0..8 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = full.mul_f64(0.9 * (seed % 1000) as f64 / 1000.0);
        let mut c = strongbox(&repo_dir);
        c.arg("prune").stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        let repo = open(&repo_dir).await;
        let report = repo.check(attempt % 2 == 1).await.unwrap();
        assert!(
            report.is_ok(),
            "prune {attempt} (killed after {delay:?}): {:?}",
            report.errors
        );
        assert_eq!(
            assert_snapshots_whole(&repo, &name, &rounds).await,
            2,
            "prune {attempt}"
        );
        if finished {
            break;
        }
    }
    println!(
        "{killed} prunes killed (an uninterrupted one took {full:?}: {})",
        String::from_utf8_lossy(&pruned.stdout).trim()
    );
    let mut c = strongbox(&repo_dir);
    c.args(["--json", "prune"]);
    let last: serde_json::Value = serde_json::from_slice(&ok(c).stdout).unwrap();
    assert_eq!(last["plans_waiting"], 0, "{last}");
    let report = open(&repo_dir).await.check(true).await.unwrap();
    assert!(
        report.is_ok() && report.warnings.is_empty(),
        "{:?} {:?}",
        report.errors,
        report.warnings
    );
    assert_eq!(assert_snapshots_whole(&open(&repo_dir).await, &name, &rounds).await, 2);
}

#[test]
fn two_processes_back_up_into_one_repository_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    init(&repo);
    let files: Vec<_> = (0..2)
        .map(|i| {
            let f = dir.path().join(format!("f{i}"));
            (f.clone(), write_data(&f, 12 << 20, 10 + i))
        })
        .collect();
    let children: Vec<_> = files
        .iter()
        .map(|(f, _)| {
            let mut c = strongbox(&repo);
            c.arg("backup").arg(f).stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut c = strongbox(&repo);
    c.args(["--json", "snapshots"]);
    let listed: serde_json::Value = serde_json::from_slice(&ok(c).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    for (f, data) in &files {
        let name = f.to_str().unwrap().trim_start_matches('/');
        let id = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["files"][0]["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut c = strongbox(&repo);
        c.args(["restore", &id, "--stdout"]);
        assert!(ok(c).stdout == *data, "{name} restored different bytes");
    }
    let mut c = strongbox(&repo);
    c.args(["check", "--read-data"]);
    ok(c);
}

#[test]
fn mistakes_get_clear_messages_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");

    let out = strongbox(&repo).arg("snapshots").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("strongbox repo init"),
        "{out:?}"
    );

    init(&repo);
    let out = strongbox(&repo)
        .env("STRONGBOX_PASSWORD", "nope")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong password"),
        "{out:?}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_strongbox"))
        .args(["repo", "snapshots"])
        .env_remove("STRONGBOX_REPO")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--repo"), "{out:?}");

    let out = strongbox(&repo)
        .args(["restore", "latest", "--target", "x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshots"), "{out:?}");

    // stdin backup, restored through stdout; no progress noise when stderr is not a terminal.
    let mut child = strongbox(&repo)
        .args(["backup", "-", "--stdin-name", "dump.sql", "--tag", "nightly"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"CREATE TABLE t(x);\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    let out = ok({
        let mut c = strongbox(&repo);
        c.args(["restore", "latest", "--stdout"]);
        c
    });
    assert_eq!(out.stdout, b"CREATE TABLE t(x);\n");

    let out = strongbox(&repo).args(["check"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no errors"));
    let out = strongbox(&repo).args(["forget"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));

    // A repository its user may read but not write (root's, run as
    // `nobody`): the backup fails saying so once, naming the object and
    // what to do; the repository still checks.
    let bin = dir.path().join("strongbox");
    std::fs::copy(env!("CARGO_BIN_EXE_strongbox"), &bin).unwrap();
    let data = dir.path().join("data.bin");
    write_data(&data, 1 << 20, 5);
    strongbox_testkit::sh(&format!(
        "chmod 755 {}; chmod 644 {}",
        dir.path().display(),
        data.display()
    ));
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&bin)
        .arg("repo")
        .arg("--repo")
        .arg(&repo)
        .arg("backup")
        .arg(&data)
        .env("STRONGBOX_PASSWORD", PASSWORD)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    println!("as nobody: {said}");
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the repository may not be written or read here ("),
        "{said}"
    );
    assert_eq!(
        said.to_lowercase().matches("permission denied").count(),
        1,
        "once: {said}"
    );
    let out = strongbox(&repo).args(["check"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `repo copy`: into a new repository under its own password, every
/// snapshot restores byte for byte from the copy; again, nothing is copied.
#[test]
fn repo_copy_seeds_another_repository_and_copies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, to) = (dir.path().join("repo"), dir.path().join("copy"));
    init(&repo);
    let file = dir.path().join("data.txt");
    let data = write_data(&file, 3_000_000, 7);
    ok({
        let mut c = strongbox(&repo);
        c.arg("backup").arg(&file);
        c
    });
    let copy = || {
        let mut c = strongbox(&repo);
        c.arg("copy")
            .arg("--to")
            .arg(&to)
            .env("STRONGBOX_TO_PASSWORD", "the copy's own");
        String::from_utf8_lossy(&ok(c).stdout).to_string()
    };
    let first = copy();
    assert!(first.contains("1 of 1 snapshot(s) copied"), "{first}");
    let again = copy();
    assert!(again.contains("0 of 1 snapshot(s) copied (0 bytes stored)"), "{again}");
    let restored = dir.path().join("restored");
    let mut c = Command::new(env!("CARGO_BIN_EXE_strongbox"));
    c.arg("repo")
        .arg("--repo")
        .arg(&to)
        .env("STRONGBOX_PASSWORD", "the copy's own")
        .args(["restore", "latest", "--target"])
        .arg(&restored);
    ok(c);
    // Files are kept under their path without the leading `/`.
    let name = file.to_string_lossy().trim_start_matches('/').to_string();
    assert!(
        std::fs::read(restored.join(&name)).unwrap() == data,
        "the copy restores other bytes"
    );
}
