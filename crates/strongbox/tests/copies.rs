//! Copies (issue 28): a second repository holding every backup, WAL file,
//! shipped log and record. Drills: the primary repository lost, recoveries
//! exact from the copy; a pack of the primary damaged, the recovery reads
//! the copy and names the damaged object; a copy that is down delays copies
//! (its lag shown) and never a backup.

use std::time::{Duration, Instant};

use crate::common::*;

const OFFSITE_PASSWORD: &str = "the offsite copy's own password";

/// The server's environment with one copy, `offsite`, at `copy`.
fn with_copy(primary: &std::path::Path, copy: &str, more: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("STRONGBOX_REPOSITORY", primary.display().to_string()),
        ("STRONGBOX_REPO_PASSWORD", "the primary's password".to_string()),
        (
            "STRONGBOX_COPIES",
            serde_json::json!([{"name": "offsite", "repository": copy}]).to_string(),
        ),
        ("STRONGBOX_COPY_OFFSITE_PASSWORD", OFFSITE_PASSWORD.to_string()),
        ("STRONGBOX_COPY_SECONDS", "1".to_string()),
    ];
    env.extend_from_slice(more);
    env
}

/// The job's activity log, one message a line.
fn activity(s: &Server, job: &serde_json::Value) -> String {
    let id = job["job_id"].as_i64().unwrap();
    let (_, log) = s.json(&[&s.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))]);
    log["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The primary repository lost (its directory deleted): every backup of a
/// SQLite deployment with a shipped log recovers exactly (ordered
/// checksums) from the copy on S3 by `latest` (every committed
/// transaction), by tag and by timestamp, and a `command` deployment's by
/// tag; each recovery's messages say it read the copy. Then the host is
/// lost too, and a new server on the copy alone lists every backup and
/// recovers exactly.
#[test]
fn the_primary_repository_lost_every_backup_recovers_exactly_from_its_copy() {
    let root = tempfile::tempdir().unwrap();
    let s3 = strongbox_testkit::s3::S3Server::start();
    let (db, file, primary) = (
        root.path().join("app.db"),
        root.path().join("notes.txt"),
        root.path().join("primary"),
    );
    let commands = serde_json::json!([format!("cat {}", file.display()), format!("cat > {}", file.display())]);
    let mut more = s3.env().to_vec();
    more.push(("STRONGBOX_ALLOW_COMMANDS", commands.to_string()));
    let env = with_copy(&primary, &s3.repository("offsite"), &more);
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let s = start_with(&host, free_port(), &env);

    let rows = big_database(&db, 1);
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    assert_eq!(s.archive_continuously("app").0, "HTTP/2 200");
    std::fs::write(&file, "first notes\n").unwrap();
    register_command(
        &s,
        "notes",
        commands[0].as_str().unwrap(),
        commands[1].as_str().unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while copy_status(&s, "app").is_null()
        || s.json(&[&s.url(&format!("{API}/app"))]).1["continuousArchiving"]["generation"].is_null()
    {
        assert!(Instant::now() < deadline, "no generation");
        std::thread::sleep(Duration::from_millis(200));
    }
    let backup = |service: &str, body: &str| post_until_accepted(&s, &format!("{API}/{service}/backups"), body);
    backup("app", r#"{"keepForever": true}"#);
    let at_first = sqlite_checksum(&db);
    write_rows(&db, rows + 1, rows + 200);
    let (moment, wait) = second_after(Duration::from_millis(1200));
    std::thread::sleep(wait + Duration::from_millis(1200));
    let at_moment = sqlite_checksum(&db);
    write_rows(&db, rows + 201, rows + 400);
    backup("app", "{}");
    write_rows(&db, rows + 401, rows + 600);
    let at_loss = sqlite_checksum(&db);
    backup("notes", "{}");
    // Every commit shipped, then copied.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, i) = s.json(&[&s.url(&format!("{API}/app"))]);
        if i["continuousArchiving"]["lagSeconds"] == 0.0 && i["continuousArchiving"]["error"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "still shipping: {i}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(800));
    wait_copied(&s, "app");
    let (_, list) = s.json(&[&s.url(&format!("{API}/app/backups"))]);
    for b in list["backupList"].as_array().unwrap() {
        assert_eq!(b["copies"], serde_json::json!(["offsite"]), "{list}");
    }
    let kept = list["backupList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["keepForever"] == true)
        .map(|b| b["dbTag"].as_str().unwrap().to_string())
        .unwrap();

    // The loss: the primary repository, whole.
    std::fs::remove_dir_all(&primary).unwrap();
    let recover = |service: &str, body: &str| {
        let job = post_until_accepted(&s, &format!("{API}/{service}/backups/recovery"), body);
        let log = activity(&s, &job);
        assert!(log.contains("from copy offsite"), "{body}: {log}");
    };
    recover("app", r#"{"latest": true}"#);
    let missing = rows + 600 - big_database_rows(&db);
    eprintln!("latest from the copy: {missing} of the transactions committed before the loss missing");
    assert_eq!(sqlite_checksum(&db), at_loss, "latest: every committed transaction");
    recover("app", &format!(r#"{{"tag": "{kept}"}}"#));
    assert_eq!(sqlite_checksum(&db), at_first, "by tag {kept}");
    recover("app", &format!(r#"{{"timestamp": "{}"}}"#, api_time(moment)));
    assert_eq!(sqlite_checksum(&db), at_moment, "by timestamp {}", api_time(moment));
    let (_, v) = s.json(&[&s.url(&format!("{API}/notes/backups"))]);
    let tag = v["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    std::fs::write(&file, "overwritten\n").unwrap();
    recover("notes", &format!(r#"{{"tag": "{tag}"}}"#));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "first notes\n");

    // Then the host too: a new server whose repository is the old copy
    // (its password kept offline) lists every backup and recovers exactly.
    // The recoveries ended the shipped log's generation: the base backup
    // beginning the next one comes first (else it may land in the listing
    // after the copy's last round: seen once in five runs).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, v) = s.json(&[&s.url(&format!("{API}/app"))]);
        if v["continuousArchiving"]["generation"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new generation after the recoveries: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    wait_copied(&s, "app");
    let (app_backups, notes_backups) = (backup_listing(&s, "app"), backup_listing(&s, "notes"));
    drop(s);
    std::fs::remove_dir_all(&host).unwrap();
    std::fs::remove_file(&db).unwrap();
    let mut env = vec![
        ("STRONGBOX_REPOSITORY", s3.repository("offsite")),
        ("STRONGBOX_REPO_PASSWORD", OFFSITE_PASSWORD.to_string()),
    ];
    env.extend_from_slice(&more);
    let new_host = root.path().join("new-host");
    std::fs::create_dir_all(&new_host).unwrap();
    let s = start_with(&new_host, free_port(), &env);
    assert_eq!(backup_listing(&s, "app"), app_backups);
    assert_eq!(backup_listing(&s, "notes"), notes_backups);
    post_until_accepted(
        &s,
        &format!("{API}/app/backups/recovery"),
        &format!(r#"{{"tag": "{kept}"}}"#),
    );
    assert_eq!(sqlite_checksum(&db), at_first, "by tag {kept}, on the copy alone");
    post_until_accepted(
        &s,
        &format!("{API}/app/backups/recovery"),
        &format!(r#"{{"timestamp": "{}"}}"#, api_time(moment)),
    );
    assert_eq!(sqlite_checksum(&db), at_moment, "by timestamp, on the copy alone");
}

/// Every pack of the primary damaged: a recovery by tag succeeds through
/// the copy, exact, and its messages name a damaged pack; asked to read
/// the primary only, it fails and says why.
#[test]
fn a_damaged_primary_is_read_from_the_copy_and_the_damage_named() {
    let root = tempfile::tempdir().unwrap();
    let (db, primary) = (root.path().join("app.db"), root.path().join("primary"));
    let (copy, more) = drill_repository(root.path(), "offsite");
    let env = with_copy(&primary, &copy, &more);
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let s = start_with(&host, free_port(), &env);
    big_database(&db, 4);
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    let job = post_until_accepted(&s, &format!("{API}/app/backups"), "{}");
    assert_eq!(job["job_status"], "Succeeded");
    let at_backup = sqlite_checksum(&db);
    wait_copied(&s, "app");
    let (_, list) = s.json(&[&s.url(&format!("{API}/app/backups"))]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    assert_eq!(list["backupList"][0]["copies"], serde_json::json!(["offsite"]));

    let mut packs = Vec::new();
    for dir in std::fs::read_dir(primary.join("data")).unwrap() {
        for pack in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = pack.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            for b in &mut bytes[middle..middle + 64] {
                *b ^= 0xff;
            }
            std::fs::write(&path, bytes).unwrap();
            packs.push(path.file_name().unwrap().to_str().unwrap().to_string());
        }
    }
    assert!(!packs.is_empty());
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM t WHERE id % 2 = 0", [])
        .unwrap();

    let url = s.url(&format!("{API}/app/backups/recovery"));
    let body = format!(r#"{{"tag": "{tag}", "repository": "primary"}}"#);
    let (status, h, answer) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", &body, &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{answer}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let (_, v) = s.json(&[header(&h, "location")]);
        if v["job_status"] == "Failed" {
            break v;
        }
        assert!(v["job_status"] != "Succeeded" && Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = activity(&s, &failed);
    assert!(
        packs.iter().any(|p| log.contains(p.as_str())),
        "names no damaged pack of {packs:?}: {log}"
    );

    let job = post_until_accepted(
        &s,
        &format!("{API}/app/backups/recovery"),
        &format!(r#"{{"tag": "{tag}"}}"#),
    );
    let log = activity(&s, &job);
    assert!(log.contains("trying offsite"), "{log}");
    assert!(
        packs.iter().any(|p| log.contains(p.as_str())),
        "names no damaged pack of {packs:?}: {log}"
    );
    assert_eq!(sqlite_checksum(&db), at_backup);

    let (status, _, answer) = s.curl(
        &[
            &AUTH[..],
            &["-X", "POST", "-d", r#"{"latest": true, "repository": "vault"}"#, &url],
        ]
        .concat(),
    );
    assert_eq!(status, "HTTP/2 400", "{answer}");
    assert!(answer.contains(r#"no repository is named \"vault\""#), "{answer}");
}

/// A copy that cannot be written (its directory cannot be made): backups
/// succeed as ever; the copy's status and `/metrics` show it behind, with
/// the reason; once it can be written, it catches up and lists the backup.
#[test]
fn a_copy_that_is_down_delays_copies_and_never_a_backup() {
    let root = tempfile::tempdir().unwrap();
    let (db, primary) = (root.path().join("app.db"), root.path().join("primary"));
    let blocker = root.path().join("blocker");
    std::fs::write(&blocker, "a file where the copy's directory should be").unwrap();
    // Whole rounds every 3 s, WAL rounds each second between: the status
    // holds while both fail.
    let env = with_copy(
        &primary,
        &blocker.join("offsite").display().to_string(),
        &[("STRONGBOX_COPY_SECONDS", "3".to_string())],
    );
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let s = start_with(&host, free_port(), &env);
    big_database(&db, 1);
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    let began = Instant::now();
    let job = post_until_accepted(&s, &format!("{API}/app/backups"), "{}");
    assert_eq!(job["job_status"], "Succeeded");
    eprintln!("backup with the copy down: {:?}", began.elapsed());

    let deadline = Instant::now() + Duration::from_secs(30);
    let behind = loop {
        let c = copy_status(&s, "app");
        if c["pendingBackups"] == 1 && c["lagSeconds"].as_f64().unwrap_or_default() > 1.0 && !c["error"].is_null() {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the copy's status never showed it behind: {c}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(behind["error"].as_str().unwrap().contains("offsite"), "{behind}");
    // It stays so through the WAL rounds in between.
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(250));
        let c = copy_status(&s, "app");
        assert!(
            c["pendingBackups"] == 1 && !c["error"].is_null() && c["lagSeconds"].as_f64() > Some(1.0),
            "{c}"
        );
    }
    let (_, _, page) = s.curl(&[&s.url("/metrics")]);
    let lag: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix(r#"strongbox_copy_lag_seconds{copy="offsite"} "#))
        .unwrap_or_else(|| panic!("no copy lag in /metrics: {page}"))
        .parse()
        .unwrap();
    assert!(lag > 0.0, "{lag}");

    std::fs::remove_file(&blocker).unwrap();
    wait_copied(&s, "app");
    let (_, list) = s.json(&[&s.url(&format!("{API}/app/backups"))]);
    assert_eq!(
        list["backupList"][0]["copies"],
        serde_json::json!(["offsite"]),
        "{list}"
    );
}

/// The primary repository lost with a physical PostgreSQL deployment: base
/// backup and WAL were copied; with the primary's directory gone (and the
/// cluster's data directory too), `latest` brings back every committed row,
/// a moment and the backup's tag their states, reading the base backup and
/// the WAL from the copy (PostgreSQL's restore_command reaching it), ordered checksums.
#[test]
fn a_postgresql_deployment_recovers_from_the_copy_when_the_primary_is_lost() {
    let root = tempfile::tempdir().unwrap();
    let primary = root.path().join("primary");
    let (copy, more) = drill_repository(root.path(), "offsite");
    // Password files (not variables): PostgreSQL's archive_command and
    // restore_command read them.
    let mut env = vec![
        ("STRONGBOX_REPOSITORY", primary.display().to_string()),
        (
            "STRONGBOX_COPIES",
            serde_json::json!([{"name": "offsite", "repository": copy}]).to_string(),
        ),
        ("STRONGBOX_COPY_SECONDS", "1".to_string()),
    ];
    env.extend(more);
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let s = start_with(&host, free_port(), &env);
    // Both run as postgres.
    strongbox_testkit::sh(&format!(
        "chmod 755 {root} {host} {d} && chown -R postgres:postgres {primary} {d}/repository.password \
         {d}/copy-offsite.password",
        root = root.path().display(),
        host = host.display(),
        d = host.join("data").display(),
        primary = primary.display(),
    ));
    let c = archiving_cluster(&s, "");
    let ctl = |a: &str| format!("runuser -u postgres -- {}", c.ctl(a));
    let sum = "SELECT coalesce(md5(string_agg(id || '@' || at, ',' ORDER BY id)), '') FROM ticks";
    c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");
    c.psql("INSERT INTO ticks VALUES (0, now())");
    post_until_accepted(&s, &format!("{PG_INSTANCE}/backups"), "{}");
    let at_backup = c.psql(sum);
    let (_, list) = s.json(&[&s.url(&format!("{PG_INSTANCE}/backups"))]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    let marks = write_ticks(c.port, 1, 40, 20);
    let at_mark = c.psql(&format!("{sum} WHERE id <= {}", marks[0].rows));
    let at_loss = c.psql(sum);
    let last = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    c.wait_archived(&last);
    wait_copied(&s, "pg");

    // The copy's password file as the server made it (root's, 0600):
    // PostgreSQL's restore_command could not read it. A recovery reading
    // the copy fails before anything is stopped, saying why; the live
    // server serves on, its data untouched.
    let password = host.join("data/copy-offsite.password");
    let owned_by = |user: &str| {
        strongbox_testkit::sh(&format!(
            "chown {user}:{user} {p} && chmod 600 {p}",
            p = password.display()
        ));
    };
    owned_by("root");
    let body = format!(r#"{{"tag": "{tag}", "repository": "offsite"}}"#);
    let url = s.url(&format!("{PG_INSTANCE}/backups/recovery"));
    let (status, h, answer) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", &body, &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{answer}");
    let failed = s.wait_for(header(&h, "location"), "Failed");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("restore_command fails when run as the data directory's owner")
            && message.contains("Permission denied")
            && message.contains("nothing was stopped"),
        "{failed}"
    );
    assert_eq!(c.psql(sum), at_loss, "the live database, untouched and serving");
    owned_by("postgres");

    // The loss: the primary repository and the cluster's data directory.
    std::fs::remove_dir_all(&primary).unwrap();
    strongbox_testkit::sh(&format!("{} || true", ctl("stop")));
    std::fs::remove_dir_all(&c.data).unwrap();
    let recover = |body: &str| {
        let job = recover_pg(&s, &c, body);
        let log = activity(&s, &job);
        assert!(log.contains("from copy offsite"), "{body}: {log}");
    };
    recover(r#"{"latest": true}"#);
    assert_eq!(c.psql(sum), at_loss, "latest: every committed row, from the copy");
    recover(&format!(r#"{{"timestamp": "{}", "timeline": 1}}"#, marks[0].timestamp));
    assert_eq!(c.psql(sum), at_mark, "a moment, from the copy");
    recover(&format!(r#"{{"tag": "{tag}"}}"#));
    assert_eq!(c.psql(sum), at_backup, "by tag, from the copy");
}

/// Bytes of the packs under a local repository's `data/` (object_store's
/// staging files, `NAME#N`, left by a kill, apart), and how many.
fn pack_bytes(repository: &std::path::Path) -> (u64, usize) {
    let packs: Vec<_> = walk(&repository.join("data"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains('#'))
        .collect();
    (packs.iter().map(|p| p.metadata().unwrap().len()).sum(), packs.len())
}

/// A copy killed mid-way: the server gets SIGKILL while it copies a backup
/// (the moment its second pack lands, before that pack's index object:
/// the worst moment); started again, it resumes and the copy completes;
/// the two runs together stored each chunk once, the chunks one
/// uninterrupted copy of the same backup (`strongbox repo copy` into a new
/// repository) stores: nothing crossed twice. The copy then recovers
/// exactly.
#[test]
fn a_copy_killed_midway_resumes_and_sends_nothing_twice() {
    let root = tempfile::tempdir().unwrap();
    let (db, primary, copy) = (
        root.path().join("app.db"),
        root.path().join("primary"),
        root.path().join("offsite"),
    );
    let env = with_copy(&primary, &copy.display().to_string(), &[]);
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let mut s = start_with(&host, free_port(), &env);
    big_database(&db, 192);
    let at_backup = sqlite_checksum(&db);
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    let job = post_until_accepted(&s, &format!("{API}/app/backups"), "{}");
    assert_eq!(job["job_status"], "Succeeded");
    let (primary_bytes, _) = pack_bytes(&primary);

    // The kill: once two packs are in the copy, before its snapshot.
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let (bytes, packs) = pack_bytes(&copy);
        assert!(
            walk(&copy.join("snapshots")).is_empty(),
            "the copy finished before it could be killed ({packs} packs)"
        );
        if packs >= 2 {
            let _ = s.child.kill();
            let _ = s.child.wait();
            break (bytes, packs);
        }
        assert!(Instant::now() < deadline, "the copy never began");
        std::thread::sleep(Duration::from_millis(5));
    };
    s.restart();
    wait_copied(&s, "app");
    let after = pack_bytes(&copy);

    // One uninterrupted copy of the same backup, for the comparison.
    let reference = root.path().join("reference");
    let repo = |location: &std::path::Path, password: &str, args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["repo", "-r"])
            .arg(location)
            .env("STRONGBOX_PASSWORD", password)
            .env("STRONGBOX_TO_PASSWORD", "the reference's password")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let to = reference.display().to_string();
    repo(&primary, "the primary's password", &["copy", "--to", &to]);
    let stats = |location: &std::path::Path, password: &str| -> serde_json::Value {
        serde_json::from_str(&repo(location, password, &["stats"])).unwrap()
    };
    let (resumed, once) = (
        stats(&copy, OFFSITE_PASSWORD),
        stats(&reference, "the reference's password"),
    );
    let once_bytes = pack_bytes(&reference);
    eprintln!(
        "primary {primary_bytes} B; at the kill the copy held {} B in {} packs; resumed: {} B in {} packs, \
         {} chunks ({} twice); one uninterrupted copy: {} B in {} packs, {} chunks",
        at_kill.0,
        at_kill.1,
        after.0,
        after.1,
        resumed["chunks"],
        resumed["duplicate_chunks"],
        once_bytes.0,
        once_bytes.1,
        once["chunks"]
    );
    assert!(at_kill.0 < after.0, "the kill came after the copy's last pack");
    // Nothing crossed twice: every pack the copy holds is indexed (the one
    // the kill left without its index object too) and no chunk is in two
    // packs. The bytes match one copy's but for a few KB either way (each
    // repository cuts chunks with a seed of its own key, and the resumed
    // copy groups them into other compression frames: at most 36 KB of
    // 98 MB, 0.04 %, in six runs); a pack sent twice would be 16 MiB.
    assert_eq!(
        resumed["packs"], after.1,
        "a pack the copy holds is unindexed: {resumed}"
    );
    assert_eq!(resumed["duplicate_chunks"], 0, "chunks sent twice: {resumed}");
    let apart = after.0.abs_diff(once_bytes.0) as f64 / once_bytes.0 as f64;
    assert!(apart < 0.005, "{resumed} against {once}");

    // The copy is whole: with the primary gone, the backup recovers from it.
    std::fs::remove_dir_all(&primary).unwrap();
    std::fs::remove_file(&db).unwrap();
    let (_, list) = s.json(&[&s.url(&format!("{API}/app/backups"))]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    post_until_accepted(
        &s,
        &format!("{API}/app/backups/recovery"),
        &format!(r#"{{"tag": "{tag}"}}"#),
    );
    assert_eq!(sqlite_checksum(&db), at_backup, "recovered exactly from the copy");
}

/// Each copy keeps backups by its own recovery window (the servers' clock
/// in a file the test moves): with the deployment's window at 2 days, a
/// copy with 5 keeps what the primary let go, and one with 1 is never
/// brought what it would let go at once and lets go what leaves its
/// window; the backup it keeps recovers exactly from it alone, and each
/// copy checks clean after its prune.
#[test]
fn each_copy_keeps_backups_by_its_own_recovery_window() {
    let root = tempfile::tempdir().unwrap();
    let (primary, long, short, file) = (
        root.path().join("primary"),
        root.path().join("long"),
        root.path().join("short"),
        root.path().join("notes.txt"),
    );
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    set_clock(&host, "2026-01-01T00:00:00Z");
    let commands = serde_json::json!([format!("cat {}", file.display()), format!("cat > {}", file.display())]);
    let copies = serde_json::json!([
        {"name": "long", "repository": long, "recovery_window_days": 5},
        {"name": "short", "repository": short, "recovery_window_days": 1},
    ]);
    let env = [
        ("STRONGBOX_REPOSITORY", primary.display().to_string()),
        ("STRONGBOX_REPO_PASSWORD", "the primary's password".to_string()),
        ("STRONGBOX_COPIES", copies.to_string()),
        ("STRONGBOX_COPY_LONG_PASSWORD", "long's password".to_string()),
        ("STRONGBOX_COPY_SHORT_PASSWORD", "short's password".to_string()),
        ("STRONGBOX_COPY_SECONDS", "1".to_string()),
        ("STRONGBOX_ALLOW_COMMANDS", commands.to_string()),
        ("STRONGBOX_TEST_CLOCK_FILE", host.join("clock").display().to_string()),
        ("STRONGBOX_SCHEDULE_CHECK_MS", "50".to_string()),
    ];
    let s = start_with(&host, free_port(), &env);
    register_command(
        &s,
        "notes",
        commands[0].as_str().unwrap(),
        commands[1].as_str().unwrap(),
    );
    let (status, v) = s.json(&[
        "-X",
        "PUT",
        "-d",
        r#"{"recoveryWindowInDays": 2, "minimumBackupsKept": 1}"#,
        &s.url(&format!("{API}/notes/backups/config")),
    ]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    let mut tags = Vec::new();
    for day in 1..=4 {
        set_clock(&host, &format!("2026-01-0{day}T00:00:00Z"));
        std::fs::write(&file, format!("the notes of day {day}\n")).unwrap();
        post_until_accepted(&s, &format!("{API}/notes/backups"), "{}");
        let (_, list) = s.json(&[&s.url(&format!("{API}/notes/backups"))]);
        tags.push(list["backupList"][0]["dbTag"].as_str().unwrap().to_string());
    }
    wait_copied(&s, "notes");
    let password = |name: &str| {
        let f = root.path().join(format!("{name}.password"));
        std::fs::write(&f, format!("{name}'s password")).unwrap();
        f
    };
    let (long_password, short_password) = (password("long"), password("short"));
    let primary_password = root.path().join("primary.password");
    std::fs::write(&primary_password, "the primary's password").unwrap();
    let snapshot_tags =
        |repository: &std::path::Path, password: &std::path::Path| s.snapshot_tags(repository, password);
    // On day 4, a 1-day window needs day 3 (the newest by its start) and day 4.
    assert_eq!(snapshot_tags(&long, &long_password), tags);
    assert_eq!(snapshot_tags(&short, &short_password), tags[2..]);

    // Day 6: the primary keeps day 4 only; long all four (day 1 is the
    // newest by its window's start); short day 4.
    set_clock(&host, "2026-01-06T00:00:30Z");
    let listed = || {
        let (_, list) = s.json(&[&s.url(&format!("{API}/notes/backups"))]);
        list["backupList"].as_array().unwrap().clone()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while listed().len() != 1 || snapshot_tags(&short, &short_password).len() != 1 {
        assert!(Instant::now() < deadline, "{:?}", listed());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_copied(&s, "notes");
    assert_eq!(listed()[0]["dbTag"], tags[3].as_str());
    assert_eq!(listed()[0]["copies"], serde_json::json!(["long", "short"]));
    assert_eq!(snapshot_tags(&long, &long_password), tags);
    assert_eq!(snapshot_tags(&short, &short_password), tags[3..]);
    assert_eq!(snapshot_tags(&primary, &primary_password).len(), 1);

    // Day 7: day 1 leaves long's window (day 2 is the newest by its start).
    set_clock(&host, "2026-01-07T00:00:30Z");
    let deadline = Instant::now() + Duration::from_secs(60);
    while snapshot_tags(&long, &long_password).len() != 3 {
        assert!(Instant::now() < deadline, "{:?}", snapshot_tags(&long, &long_password));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(snapshot_tags(&long, &long_password), tags[1..]);
    for (repository, password) in [(&long, &long_password), (&short, &short_password)] {
        let out = s.repo_cli_on(repository, password, &["check", "--read-data"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // What short keeps recovers from it alone, exactly.
    std::fs::write(&file, "overwritten\n").unwrap();
    let body = format!(r#"{{"tag": "{}", "repository": "short"}}"#, tags[3]);
    let job = post_until_accepted(&s, &format!("{API}/notes/backups/recovery"), &body);
    assert!(activity(&s, &job).contains("from copy short"), "{}", activity(&s, &job));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "the notes of day 4\n");
}

/// A backup deleted through the API stays deleted through every loss: the
/// copy keeps its snapshot for its own window (a deletion by mistake can be
/// undone from it with `strongbox repo restore`), but the deletion's record
/// travels with the copy, so a new server on the copy alone (host and
/// primary lost) neither lists nor recovers it, and recovers the other
/// exactly.
#[test]
fn a_backup_deleted_through_the_api_stays_deleted_on_a_server_rebuilt_from_the_copy() {
    let root = tempfile::tempdir().unwrap();
    let (file, primary, copy) = (
        root.path().join("notes.txt"),
        root.path().join("primary"),
        root.path().join("copy"),
    );
    let commands = [format!("cat {}", file.display()), format!("cat > {}", file.display())];
    let allow = [("STRONGBOX_ALLOW_COMMANDS", serde_json::json!(commands).to_string())];
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let s = start_with(
        &host,
        free_port(),
        &with_copy(&primary, &copy.display().to_string(), &allow),
    );
    register_command(&s, "notes", &commands[0], &commands[1]);
    let backup = || post_until_accepted(&s, &format!("{API}/notes/backups"), "{}");
    std::fs::write(&file, "deleted notes\n").unwrap();
    backup();
    let deleted = backup_listing(&s, "notes")[0].split('"').nth(1).unwrap().to_string();
    std::fs::write(&file, "kept notes\n").unwrap();
    backup();
    wait_copied(&s, "notes");
    s.delete_backup("notes", &deleted);
    wait_copied(&s, "notes");
    let password = root.path().join("offsite.password");
    std::fs::write(&password, OFFSITE_PASSWORD).unwrap();
    let out = s.repo_cli_on(&copy, &password, &["--json", "snapshots"]);
    let held: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(held.as_array().unwrap().len(), 2, "the copy keeps both: {held}");
    let kept = backup_listing(&s, "notes")
        .into_iter()
        .find(|b| b.contains("\"COMPLETED\""))
        .unwrap();

    drop(s);
    std::fs::remove_dir_all(&host).unwrap();
    std::fs::remove_dir_all(&primary).unwrap();
    let new_host = root.path().join("new-host");
    std::fs::create_dir_all(&new_host).unwrap();
    let mut env = vec![
        ("STRONGBOX_REPOSITORY", copy.display().to_string()),
        ("STRONGBOX_REPO_PASSWORD", OFFSITE_PASSWORD.to_string()),
    ];
    env.extend_from_slice(&allow);
    let s = start_with(&new_host, free_port(), &env);
    assert_eq!(backup_listing(&s, "notes"), vec![kept.clone()], "only the kept backup");
    let url = s.url(&format!("{API}/notes/backups/recovery"));
    let body = format!(r#"{{"tag": "{deleted}"}}"#);
    let (status, _, answer) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", &body, &url]].concat());
    assert!(
        status.starts_with("HTTP/2 4"),
        "the deleted backup is refused: {status} {answer}"
    );
    std::fs::write(&file, "overwritten\n").unwrap();
    let kept_tag = kept.split('"').nth(1).unwrap();
    post_until_accepted(
        &s,
        &format!("{API}/notes/backups/recovery"),
        &format!(r#"{{"tag": "{kept_tag}"}}"#),
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept notes\n");
}
