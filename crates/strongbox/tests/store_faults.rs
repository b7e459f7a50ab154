//! Issue 30: what a store's failure does to the server's jobs and says. A
//! repository on a real file system too small for the backup (a tmpfs,
//! mounted by the test as root); a repository on an S3 server that
//! throttles, errs, drops connections and answers late, then goes down.

use strongbox_testkit::Tmpfs;
use strongbox_testkit::s3::{FaultPlan, Faults, S3Server};

/// A server whose repository is on the test S3 server injecting faults
/// from `seed` (`MODEL_SEED` replays another; printed), requests timing
/// out after 2 s and retried for 5 s: the seed, the faults, the S3 server,
/// the directory and the server.
fn on_a_flaky_store(seed: u64) -> (u64, Faults, S3Server, tempfile::TempDir, Server) {
    let seed = strongbox_testkit::seed(seed);
    println!("seed {seed} (replay: MODEL_SEED={seed})");
    let faults = Faults::new(seed);
    let s3 = S3Server::with_faults(faults.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut env = s3.env().to_vec();
    env.extend([
        ("STRONGBOX_REPOSITORY", s3.repository("server1")),
        ("STRONGBOX_REPO_PASSWORD", "the repository's password".to_string()),
        ("STRONGBOX_S3_TIMEOUT_SECONDS", "2".to_string()),
        ("STRONGBOX_S3_RETRY_SECONDS", "5".to_string()),
    ]);
    let s = start_with(dir.path(), free_port(), &env);
    (seed, faults, s3, dir, s)
}

/// 10 % of requests answered 503 SlowDown, 3 % 500 InternalError, 3 %
/// dropped unanswered, 3 % answered 3 s late (past the 2 s timeout).
fn bad_day() -> FaultPlan {
    FaultPlan {
        slow_down_per_mille: 100,
        internal_error_per_mille: 30,
        dropped_per_mille: 30,
        stalled_per_mille: 30,
        stall: std::time::Duration::from_secs(3),
        down: false,
    }
}

use crate::common::*;

/// A backup larger than the repository's file system (40 MB of random
/// bytes into 16 MiB): the job fails and its message says so once, naming
/// the object ("the repository's disk is full (…): no space left on
/// device", not the OS error four times); the repository checks clean;
/// once there is room the next backup succeeds; the disk full again to
/// its last byte, the server's recovery job restores it exactly.
#[test]
fn a_full_repository_disk_fails_the_backup_in_one_sentence_damages_nothing_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&root.path().join("disk"), "16m");
    let repository = disk.0.join("repository");
    let (data, restored) = (root.path().join("data.bin"), root.path().join("restored.bin"));
    strongbox_testkit::sh(&format!("head -c 40000000 /dev/urandom > {}", data.display()));
    let (backup_command, recovery_command) = (
        format!("cat {}", data.display()),
        format!("cat > {}", restored.display()),
    );
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let env = [
        ("STRONGBOX_REPOSITORY", repository.display().to_string()),
        ("STRONGBOX_REPO_PASSWORD", "the repository's password".to_string()),
        (
            "STRONGBOX_ALLOW_COMMANDS",
            serde_json::json!([backup_command, recovery_command]).to_string(),
        ),
    ];
    let s = start_with(&host, free_port(), &env);
    register_command(&s, "blob", &backup_command, &recovery_command);

    let url = s.url(&format!("{API}/blob/backups"));
    let (status, h, answer) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", "{}", &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{answer}");
    let failed = s.wait_for(header(&h, "location"), "Failed");
    let message = failed["message"].as_str().unwrap_or_default();
    println!("the job said: {message}");
    assert!(message.contains("the repository's disk is full ("), "{failed}");
    assert_eq!(
        message.to_lowercase().matches("no space left on device").count(),
        1,
        "once: {message}"
    );
    let (_, list) = s.json(&[&url]);
    assert!(
        list["backupList"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["status"] != "COMPLETED"),
        "no backup listed as completed: {list}"
    );

    let password = root.path().join("password");
    std::fs::write(&password, "the repository's password").unwrap();
    let check = s.repo_cli_on(&repository, &password, &["check", "--read-data"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    disk.resize("128m");
    let job = post_until_accepted(&s, &format!("{API}/blob/backups"), "{}");
    let (_, list) = s.json(&[&url]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    assert_eq!(list["backupList"][0]["status"], "COMPLETED", "{job}");
    // Full again, to the last byte: the server's recovery job reads the
    // repository and writes nothing there.
    let filled = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", disk.0.join("filler").display()),
            "bs=1M",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&filled.stderr).contains("No space left on device"),
        "{filled:?}"
    );
    post_until_accepted(
        &s,
        &format!("{API}/blob/backups/recovery"),
        &format!(r#"{{"tag": "{tag}"}}"#),
    );
    assert!(
        std::fs::read(&restored).unwrap() == std::fs::read(&data).unwrap(),
        "restored byte for byte from a full disk"
    );
    drop(s);
}

/// The server's repository on an S3 server with a bad day (seeded: 10 %
/// of requests answered 503 SlowDown, 3 % 500 InternalError, 3 % dropped
/// unanswered, 3 % answered after the client's 2 s timeout): a backup and
/// a recovery succeed, exactly (ordered checksum). Then the store goes
/// down in the middle of a backup: the job fails within the retry budget
/// (`STRONGBOX_S3_RETRY_SECONDS=5`) saying so in one sentence, nothing is
/// listed completed that was not; once the server has noticed (health
/// names the repository), a recovery request answers 503 within a second
/// and the deployment's page 200, whole (it needs nothing of the
/// repository), a PostgreSQL deployment's 200 without its recoverable
/// range (`incomplete` says why), the live database as it was; the store back,
/// `check --read-data` is clean and the listed backup recovers exactly.
#[test]
fn a_server_on_a_flaky_store_backs_up_and_recovers_exactly_and_fails_in_one_sentence_when_it_is_down() {
    let (seed, faults, s3, dir, s) = on_a_flaky_store(30_002);
    let db = dir.path().join("app.db");
    big_database(&db, 8);
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    // A PostgreSQL deployment beside it, for its page during the outage.
    let pg = strongbox_testkit::Cluster::start("");
    register_cluster(&s, "pg", &pg, &pg.url());
    let (status, v) = s.json(&[&s.url(&format!("{API}/pg"))]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    let pitr = &v["pointInTimeRecovery"];
    assert_eq!(
        pitr["recoverableRange"],
        serde_json::Value::Null,
        "nothing archived yet: {v}"
    );
    assert!(
        pitr.get("recoverableRange").is_some() && v.get("incomplete").is_none(),
        "{v}"
    );
    faults.set(bad_day());

    let at_backup = sqlite_checksum(&db);
    let (status, location) = s.post_backup("app", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    s.wait_for(&location, "Succeeded");
    write_rows(&db, 1_000_000, 1_000_100);
    assert_ne!(sqlite_checksum(&db), at_backup);
    let recovery = post_until_accepted(&s, &format!("{API}/app/backups/recovery"), r#"{"latest": true}"#);
    assert_eq!(sqlite_checksum(&db), at_backup, "recovered exactly: {recovery}");
    let listed = backup_listing(&s, "app");
    let bad_day = faults.injected();
    println!("seed {seed}: {bad_day:?}");
    assert!(bad_day.faults() > 0, "{bad_day:?}");

    // Down after a few more requests: in the middle of the next backup.
    write_rows(&db, 2_000_000, 2_000_100);
    faults.down_after(8, FaultPlan::default());
    let (status, location) = s.post_backup("app", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    let failed = s.wait_for(&location, "Failed");
    let message = failed["message"].as_str().unwrap_or_default();
    println!("the job said: {message}");
    assert_eq!(message.matches("the store is unavailable (").count(), 1, "{failed}");
    assert_eq!(
        message.matches("503 Service Unavailable SlowDown").count(),
        1,
        "once: {message}"
    );

    // Once the server has noticed, what needs the repository (a recovery)
    // answers 503 + `Retry-After` within a second saying why (it was "500
    // internal error" after the store's retries: 180 s by default); the
    // deployment's page answers at once, whole: this deployment's needs
    // nothing of the repository. The live database is left as it was.
    let live = sqlite_checksum(&db);
    // The server notices (it probes every second) and says so.
    let noticed = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, v) = s.json(&[&s.url("/strongbox/health")]);
        if status == "HTTP/2 503" && v["repository"].is_string() {
            println!("health: {v}");
            break;
        }
        assert!(std::time::Instant::now() < noticed, "health says nothing: {status} {v}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let asked = std::time::Instant::now();
    let (status, v) = s.json(&[&s.url(&format!("{API}/app"))]);
    println!("the deployment's page, after {:?}: {status} {v}", asked.elapsed());
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(status, "HTTP/2 200", "{v}");
    assert!(v["lastBackup"]["dbTag"].is_string(), "{v}");
    assert!(v.get("incomplete").is_none(), "{v}");
    // The PostgreSQL deployment's page: what it reads of the repository
    // (the recoverable range) left out, saying why; the commands to set
    // and what the server says of itself are there.
    let asked = std::time::Instant::now();
    let (status, v) = s.json(&[&s.url(&format!("{API}/pg"))]);
    println!(
        "the PostgreSQL deployment's page, after {:?}: {status} {v}",
        asked.elapsed()
    );
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(status, "HTTP/2 200", "{v}");
    let pitr = &v["pointInTimeRecovery"];
    assert!(
        pitr["archiveCommand"]
            .as_str()
            .unwrap_or_default()
            .contains("--archive usexample/pg"),
        "{v}"
    );
    assert!(pitr["restoreCommand"].is_string(), "{v}");
    assert_eq!(
        (&pitr["serverAnswers"], &pitr["currentTimeline"]),
        (&serde_json::json!(true), &serde_json::json!(1)),
        "{v}"
    );
    assert!(pitr.get("recoverableRange").is_none(), "left out, not null: {v}");
    let incomplete = v["incomplete"].to_string();
    assert!(
        incomplete.contains("recoverableRange is left out: the repository cannot be read now"),
        "{incomplete}"
    );
    let url = s.url(&format!("{API}/app/backups/recovery"));
    let asked = std::time::Instant::now();
    let (status, h, answer) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", r#"{"latest": true}"#, &url]].concat());
    println!("the recovery request, after {:?}: {status} {answer}", asked.elapsed());
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(status, "HTTP/2 503", "{answer}");
    assert_eq!(header(&h, "retry-after"), "5", "{h:?}");
    assert_eq!(
        answer.matches("the repository cannot be read now").count(),
        1,
        "{answer}"
    );
    assert_eq!(sqlite_checksum(&db), live, "the live database untouched");

    faults.set(FaultPlan::default());
    // Answered again once the server's probe sees the store back.
    let back = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.json(&[&s.url("/strongbox/health")]).0 != "HTTP/2 200" {
        assert!(std::time::Instant::now() < back, "health never came back");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let completed = |l: Vec<String>| {
        l.into_iter()
            .filter(|b| b.contains("\"COMPLETED\""))
            .collect::<Vec<_>>()
    };
    let now = backup_listing(&s, "app");
    assert_eq!(
        completed(now.clone()),
        completed(listed),
        "no other backup listed completed"
    );
    assert_eq!(now.iter().filter(|b| b.contains("\"FAILED\"")).count(), 1, "{now:?}");
    let password = dir.path().join("password");
    std::fs::write(&password, "the repository's password").unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_strongbox"))
        .args(["repo", "--repo", &s3.repository("server1"), "--password-file"])
        .arg(&password)
        .args(["check", "--read-data"])
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    write_rows(&db, 3_000_000, 3_000_100);
    post_until_accepted(&s, &format!("{API}/app/backups/recovery"), r#"{"latest": true}"#);
    assert_eq!(sqlite_checksum(&db), at_backup, "the listed backup, exactly");
}

/// Shipping through a store's bad day: a SQLite deployment shipping its log
/// into a repository on the flaky S3 server (seeded), 100 commits, then the
/// store down while 100 more commit (a second marked after the 150th) and
/// until the server reports its pushes failing, then flaky again. Down,
/// the deployment's page says the pushes fail and the transactions wait
/// in memory, and leaves out (saying so) the ranges it would read from the
/// repository. The shipper keeps what it read and pushes it once the store answers: the
/// same generation reaches the 200th transaction, and recovered into other
/// files `latest` holds exactly the live rows and the marked second
/// exactly the first 150 (ordered checksums of every column).
#[test]
fn a_shipped_log_goes_on_through_a_flaky_store_and_catches_up_after_it_was_down() {
    use std::time::{Duration, Instant};
    let (seed, faults, _s3, dir, s) = on_a_flaky_store(30_003);
    let flaky = bad_day();
    faults.set(flaky);
    let db = dir.path().join("app.db");
    let app = shipping_sqlite(&s, "app", &db);
    // The deployment's page, which answers whether the store does or not.
    let page = || {
        let (status, v) = s.json(&[&s.url(&format!("{API}/app"))]);
        assert_eq!(status, "HTTP/2 200", "seed {seed}: {v}");
        v
    };
    let insert = |ns: std::ops::RangeInclusive<i64>| {
        for n in ns {
            app.execute("INSERT INTO t VALUES (?1, randomblob(200))", [n]).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    insert(1..=100);
    let shipped = page()["continuousArchiving"].clone();
    let generation = shipped["generation"].as_str().unwrap_or_default().to_string();
    assert!(!generation.is_empty(), "seed {seed}: no generation: {shipped}");
    faults.set(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    let down = Instant::now();
    insert(101..=150);
    let marked = mark();
    let at_mark = table_checksum(&db, "t");
    insert(151..=200);
    let live = table_checksum(&db, "t");
    // A push fails once the client's retries (5 s) are spent: the
    // server's log says it, and the deployment's page.
    let failing = loop {
        let warned = s.last_warnings(20);
        if let Some(line) = warned.lines().find(|l| l.contains("kept and pushed again")) {
            break line.to_string();
        }
        assert!(
            down.elapsed() < Duration::from_secs(60),
            "seed {seed}: no failing push reported: {warned}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("down {:?}: {failing}", down.elapsed());
    let v = page();
    let error = v["continuousArchiving"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("transactions") && error.contains("wait in memory"),
        "seed {seed}: {v}"
    );
    assert!(v["continuousArchiving"].get("ranges").is_none(), "seed {seed}: {v}");
    let incomplete = v["incomplete"].to_string();
    assert!(
        incomplete.contains("continuousArchiving's ranges are left out"),
        "seed {seed}: {v}"
    );
    println!("the deployment's page while the store is down: {v}");
    faults.set(flaky);
    let back = Instant::now();

    let deadline = back + Duration::from_secs(120);
    loop {
        let v = page()["continuousArchiving"].clone();
        assert_eq!(v["generation"].as_str(), Some(&generation[..]), "seed {seed}: {v}");
        let reached = v["ranges"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["latestScn"] == format!("{generation}:200")));
        if reached {
            println!("shipped to 200 {:?} after the store came back", back.elapsed());
            break;
        }
        assert!(Instant::now() < deadline, "seed {seed}: not shipped to 200: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // 503 as above, 409 while a job runs.
    let recover_into = |goal: &str, name: &str| {
        let copy = dir.path().join(name);
        let body = format!(r#"{{{goal}, "target": {{"path": "{}"}}}}"#, copy.display());
        let path = format!("{API}/app/backups/recovery");
        post_until_accepted_past(&s, &path, &body, &["HTTP/2 503", "HTTP/2 409"]);
        table_checksum(&copy, "t")
    };
    assert_eq!(
        recover_into(r#""latest": true"#, "latest.db"),
        live,
        "seed {seed}: every committed row, exactly"
    );
    assert_eq!(
        recover_into(&format!(r#""timestamp": "{marked}""#), "marked.db"),
        at_mark,
        "seed {seed}: the second marked while the store was down ({marked}), exactly"
    );
    let met = faults.injected();
    println!("seed {seed}: {met:?}");
    assert!(
        met.down > 0 && met.slow_down + met.internal_error + met.dropped > 0,
        "{met:?}"
    );
}
