//! Loss drills (issue 27): what must survive when something beside the
//! database is lost. Servers started together on a new repository all
//! serve; the repository password file lost, a second key slot (an escrow
//! password kept offline) opens the repository and the backups recover
//! exactly.

use std::process::Command;

use crate::common::*;

/// Four servers started at the same instant on one new repository (each
/// with its own catalog), on local disk and on S3: every one serves, and
/// each one's backup lands in the one repository the others read.
#[test]
fn four_servers_started_together_on_a_new_repository_all_serve() {
    let s3 = strongbox_testkit::s3::S3Server::start();
    let root = tempfile::tempdir().unwrap();
    let local = root.path().join("shared-repository").display().to_string();
    for (name, location) in [("local", local), ("s3", s3.repository("together"))] {
        let location = location.as_str();
        let mut env = s3.env().to_vec();
        env.push(("STRONGBOX_REPOSITORY", location.to_string()));
        env.push(("STRONGBOX_REPO_PASSWORD", "replicas-share-this".to_string()));
        let dirs: Vec<_> = (0..4).map(|i| root.path().join(format!("{name}-{i}"))).collect();
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
            test_pki(d); // before the spawns: they then start at once
        }
        let servers: Vec<Server> = dirs.iter().map(|d| spawn_with(d, free_port(), &env)).collect();
        for s in &servers {
            wait_for_port(s.port);
        }
        for (i, s) in servers.iter().enumerate() {
            let db = s.dir.join("app.db");
            big_database(&db, 1);
            assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200", "{name} server {i}");
            let (status, location) = s.post_backup("app", &[]);
            assert_eq!(status, "HTTP/2 202", "{name} server {i}: {location}");
            s.wait_for(&location, "Succeeded");
        }
        // One repository: the four backups are snapshots of it.
        let out = Command::new(BIN)
            .args(["repo", "-r", location, "--json", "snapshots"])
            .env("STRONGBOX_PASSWORD", "replicas-share-this")
            .envs(s3.env())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let of_app = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["labels"]["deployment"] == "app")
            .count();
        assert_eq!(of_app, 4, "{name}: {listed}");
        for (i, s) in servers.iter().enumerate() {
            let log = std::fs::read_to_string(s.dir.join("server.log")).unwrap();
            assert!(!log.contains("already exists"), "{name} server {i}: {log}");
        }
    }
}

/// The repository password file is lost (with the database); the escrow
/// password added with `admin key add` opens the repository, and both
/// backups recover exactly (ordered checksums of the rows).
#[test]
fn an_escrow_key_recovers_every_backup_when_the_password_file_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (repository, mut env) = drill_repository(dir.path(), "repository");
    env.push(("STRONGBOX_REPOSITORY", repository));
    let mut s = start_with(dir.path(), free_port(), &env);
    let log = || std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    let warned = "the repository password is kept only in";
    assert!(log().contains(warned), "no warning at start: {}", log());
    assert!(log().contains("strongbox admin key add"), "{}", log());

    let server_env = env.clone();
    let admin = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .arg("admin")
            .args(args)
            .env("STRONGBOX_DATA_DIR", dir.path().join("data"))
            .envs(server_env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let added = admin(&["key", "add"], &[("STRONGBOX_NEW_PASSWORD", "escrow, kept offline")]);
    assert!(added.contains("added key slot"), "{added}");
    let slots = admin(&["key", "list"], &[]);
    assert_eq!(slots.lines().count(), 2, "{slots}");
    assert!(!slots.contains("escrow"), "a secret listed: {slots}");

    let db = dir.path().join("app.db");
    big_database(&db, 2);
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    let mut backups = Vec::new();
    for round in 0..2 {
        let (status, location) = s.post_backup("app", &[]);
        assert_eq!(status, "HTTP/2 202", "{location}");
        let job = s.wait_for(&location, "Succeeded");
        backups.push((job["job_id"].clone(), sqlite_checksum(&db)));
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute("UPDATE t SET v = v || ?1 WHERE id % 3 = 0", [format!(" round {round}")])
            .unwrap();
    }
    let (_, list) = s.json(&[&s.url("/paas/service/dbcs/api/v1.1/instances/usexample/app/backups")]);
    let tags: Vec<(serde_json::Value, String)> = list["backupList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["jobId"].clone(), b["dbTag"].as_str().unwrap().to_string()))
        .collect();

    // The loss: the password file and the database.
    let _ = s.child.kill();
    let _ = s.child.wait();
    std::fs::remove_file(dir.path().join("data/repository.password")).unwrap();
    std::fs::remove_file(&db).unwrap();
    env.push(("STRONGBOX_REPO_PASSWORD", "escrow, kept offline".to_string()));
    let s = start_with(dir.path(), s.port, &env);
    for (job, checksum) in &backups {
        let tag = &tags.iter().find(|(j, _)| j == job).expect("the backup is listed").1;
        let url = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/app/backups/recovery");
        let body = format!(r#"{{"tag": "{tag}"}}"#);
        let (status, h, answer) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", &body, &url]].concat());
        assert_eq!(status, "HTTP/2 202", "{answer}");
        s.wait_for(header(&h, "location"), "Succeeded");
        assert_eq!(&sqlite_checksum(&db), checksum, "backup {tag} recovered exactly");
    }
}

/// The Strongbox host lost (issue 27): its data directory (catalog, with
/// every deployment, configuration and backup row) and the databases are
/// gone; the repository (another disk, as S3 would be) and its password
/// remain. A new server on them, with nothing registered again, lists
/// every backup with its tag, dates and `keepForever`, has the backup
/// configuration back, and recovers exactly (ordered checksums): a SQLite
/// deployment with a shipped log by tag, by timestamp and by `latest` (every
/// transaction committed before the loss), a `command` deployment by tag.
#[test]
fn the_host_lost_a_new_server_on_the_same_repository_recovers_every_backup() {
    let root = tempfile::tempdir().unwrap();
    let (repository, env) = drill_repository(root.path(), "repository");
    host_lost(root.path(), &repository, &env, None);
}

/// The same drill with the repository on S3 (the in-process S3 server) and
/// the catalog on PostgreSQL: its database is dropped with the host and
/// created again, empty, for the new server.
#[test]
fn the_host_lost_a_new_server_on_the_same_s3_repository_recovers_every_backup() {
    let root = tempfile::tempdir().unwrap();
    let s3 = strongbox_testkit::s3::S3Server::start();
    let catalog = strongbox_testkit::Database::create("drill_catalog");
    let mut env = s3.env().to_vec();
    env.push(("STRONGBOX_CATALOG", catalog.url.clone()));
    host_lost(root.path(), &s3.repository("drill"), &env, Some(&catalog));
}

fn host_lost(
    root: &std::path::Path,
    repository: &str,
    more_env: &[(&'static str, String)],
    catalog: Option<&strongbox_testkit::Database>,
) {
    let db = root.join("app.db");
    let file = root.join("notes.txt");
    let commands = serde_json::json!([format!("cat {}", file.display()), format!("cat > {}", file.display())]);
    let mut env = vec![
        ("STRONGBOX_REPOSITORY", repository.to_string()),
        ("STRONGBOX_REPO_PASSWORD", "kept apart from the host".to_string()),
        ("STRONGBOX_ALLOW_COMMANDS", commands.to_string()),
    ];
    env.extend_from_slice(more_env);
    let before = root.join("host");
    std::fs::create_dir_all(&before).unwrap();
    let s = start_with(&before, free_port(), &env);

    big_database(&db, 1);
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");
    let config_url = s.url(&format!("{API}/app/backups/config"));
    let change = r#"{"continuousArchiving": true, "recoveryWindowInDays": 9, "autoBackupWindow": "03:30-05:00"}"#;
    let (status, config) = s.json(&["-X", "PUT", "-d", change, &config_url]);
    assert_eq!(status, "HTTP/2 200", "{config}");
    std::fs::write(&file, "first notes\n").unwrap();
    register_command(
        &s,
        "notes",
        commands[0].as_str().unwrap(),
        commands[1].as_str().unwrap(),
    );

    // Backups: app's first kept forever; then rows, a quiet moment T, more
    // rows, a second backup, more rows; notes' one backup.
    let backup = |service: &str, body: &str| post_until_accepted(&s, &format!("{API}/{service}/backups"), body);
    // The shipper's base: wait until app's first generation is there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, i) = s.json(&[&s.url(&format!("{API}/app"))]);
        if !i["continuousArchiving"]["generation"].is_null() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no generation: {i}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    backup("app", r#"{"keepForever": true}"#);
    let at_first = sqlite_checksum(&db);
    let rows = big_database_rows(&db);
    write_rows(&db, rows + 1, rows + 200);
    let (moment, wait) = second_after(std::time::Duration::from_millis(1200));
    std::thread::sleep(wait + std::time::Duration::from_millis(1200));
    let at_moment = sqlite_checksum(&db);
    write_rows(&db, rows + 201, rows + 400);
    backup("app", "{}");
    write_rows(&db, rows + 401, rows + 600);
    let last_commit = time::OffsetDateTime::now_utc();
    let at_loss = sqlite_checksum(&db);
    backup("notes", "{}");
    // Every commit shipped (the status says so) before the host goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, i) = s.json(&[&s.url(&format!("{API}/app"))]);
        if i["continuousArchiving"]["lagSeconds"] == 0.0 && i["continuousArchiving"]["error"].is_null() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still shipping: {i}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(800));
    let app_backups = backup_listing(&s, "app");
    let notes_backups = backup_listing(&s, "notes");
    // The shipper's first base, the one kept forever, the second.
    assert_eq!(app_backups.len(), 3, "{app_backups:?}");

    // The loss.
    drop(s);
    std::fs::remove_dir_all(&before).unwrap();
    std::fs::remove_file(&db).unwrap();
    let _ = std::fs::remove_file(root.join("app.db-wal"));
    let _ = std::fs::remove_file(root.join("app.db-shm"));
    std::fs::remove_file(&file).unwrap();
    if let Some(catalog) = catalog {
        catalog.recreate();
    }

    let after = root.join("new-host");
    std::fs::create_dir_all(&after).unwrap();
    let s = start_with(&after, free_port(), &env);
    let log = std::fs::read_to_string(after.join("server.log")).unwrap();
    assert!(
        log.contains(", 4 backup(s) and 0 recoveries brought into the catalog"),
        "{log}"
    );
    assert_eq!(backup_listing(&s, "app"), app_backups, "{log}");
    assert_eq!(backup_listing(&s, "notes"), notes_backups);
    let (_, restored) = s.json(&[&s.url(&format!("{API}/app/backups/config"))]);
    for key in ["recoveryWindowInDays", "autoBackupWindow", "continuousArchiving"] {
        assert_eq!(restored[key], config[key], "{key}: {restored}");
    }

    let recover =
        |service: &str, body: &str| post_until_accepted(&s, &format!("{API}/{service}/backups/recovery"), body);
    let (_, v) = s.json(&[&s.url(&format!("{API}/app/backups"))]);
    let kept = v["backupList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["keepForever"] == true)
        .map(|b| b["dbTag"].as_str().unwrap().to_string())
        .expect("the backup kept forever is listed");
    // `latest` first: after any recovery, `latest` is the recovered history's.
    recover("app", r#"{"latest": true}"#);
    let missing = rows + 600 - big_database_rows(&db);
    eprintln!(
        "latest after the host was lost: {missing} of the transactions committed before the loss (last at {}) missing",
        api_time(last_commit)
    );
    assert_eq!(sqlite_checksum(&db), at_loss, "latest: every committed transaction");
    recover("app", &format!(r#"{{"tag": "{kept}"}}"#));
    assert_eq!(sqlite_checksum(&db), at_first, "by tag {kept}");
    recover("app", &format!(r#"{{"timestamp": "{}"}}"#, api_time(moment)));
    assert_eq!(sqlite_checksum(&db), at_moment, "by timestamp {}", api_time(moment));
    let (_, v) = s.json(&[&s.url(&format!("{API}/notes/backups"))]);
    let tag = v["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    recover("notes", &format!(r#"{{"tag": "{tag}"}}"#));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "first notes\n");
}

/// The host lost with a physical PostgreSQL deployment (issue 27): base
/// backup, rows, a point-in-time recovery that starts timeline 2, rows on
/// it, all archived; then the Strongbox host (data directory, catalog,
/// password file) and the cluster's data directory are lost. The operator
/// puts the password back from its offline copy and starts a new server on
/// the repository: `latest` brings back every row committed on timeline 2
/// before the loss, the backup's tag and a moment of timeline 1 their
/// states (ordered checksums).
#[test]
fn a_postgresql_deployment_comes_back_after_the_host_is_lost_across_a_timeline_switch() {
    let root = tempfile::tempdir().unwrap();
    let (repository, mut env) = drill_repository(root.path(), "repository");
    env.push(("STRONGBOX_REPOSITORY", repository.clone()));
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let s = start_with(&host, free_port(), &env);
    // PostgreSQL's archive_command runs as postgres (and reaches an S3
    // repository with the variables it inherits from this test).
    let local = std::path::Path::new(&repository)
        .exists()
        .then_some(repository.as_str());
    let share = |data_dir: &std::path::Path| {
        strongbox_testkit::sh(&format!(
            "chmod 755 {root} {d} && chown -R postgres:postgres {repo} {d}/repository.password",
            root = root.path().display(),
            d = data_dir.display(),
            repo = local.unwrap_or_default()
        ))
    };
    share(&host.join("data"));
    std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let c = archiving_cluster(&s, "");
    let ctl = |a: &str| format!("runuser -u postgres -- {}", c.ctl(a));
    let sum = "SELECT coalesce(md5(string_agg(id || '@' || at, ',' ORDER BY id)), '') FROM ticks";
    c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");

    let (status, location) = s.post_backup("pg", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    s.wait_for(&location, "Succeeded");
    let at_backup = c.psql(sum);
    let marks = write_ticks(c.port, 1, 40, 20);
    let upto = |rows: i32| c.psql(&format!("{sum} WHERE id <= {rows}"));
    let (at_mark, at_second_mark) = (upto(marks[0].rows), upto(marks[1].rows));
    let last = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    c.wait_archived(&last);
    // Timeline 2 begins at the first mark.
    post_until_accepted(
        &s,
        &format!("{PG_INSTANCE}/backups/recovery"),
        &format!(r#"{{"timestamp": "{}"}}"#, marks[0].timestamp),
    );
    assert_eq!(c.psql(sum), at_mark, "the point-in-time recovery");
    write_ticks(c.port, 1001, 1030, 1000);
    let at_loss = c.psql(sum);
    let last = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    assert!(last.starts_with("00000002"), "on timeline 2: {last}");
    c.wait_archived(&last);
    let (_, list) = s.json(&[&s.url(&format!("{PG_INSTANCE}/backups"))]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();

    // The loss: the host's data directory (its password file with it: the
    // operator has a copy) and the cluster's data directory.
    let password = std::fs::read_to_string(host.join("data/repository.password")).unwrap();
    drop(s);
    std::fs::remove_dir_all(&host).unwrap();
    strongbox_testkit::sh(&format!("{} || true", ctl("stop")));
    std::fs::remove_dir_all(&c.data).unwrap();

    // A new machine set up as the old one was (the same paths: the
    // cluster's archive_command, in every base backup, names them), with
    // the password put back.
    let new_host = host.clone();
    std::fs::create_dir_all(new_host.join("data")).unwrap();
    std::fs::write(new_host.join("data/repository.password"), password).unwrap();
    share(&new_host.join("data"));
    std::fs::set_permissions(&new_host, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let s = start_with(&new_host, free_port(), &env);
    let log = std::fs::read_to_string(new_host.join("server.log")).unwrap();
    assert!(
        log.contains(", 1 backup(s) and 1 recoveries brought into the catalog"),
        "{log}"
    );
    // The recovery history is back: the point-in-time recovery made before the loss.
    let (_, history) = s.json(&[&s.url(&format!("{PG_INSTANCE}/backups/recovery/history"))]);
    let entry = &history["recoveryList"][0];
    assert_eq!(history["recoveryList"].as_array().map(Vec::len), Some(1), "{history}");
    assert_eq!(
        (
            entry["timestamp"].as_str(),
            entry["status"].as_str(),
            entry["fromBackup"].as_str()
        ),
        (Some(marks[0].timestamp.as_str()), Some("COMPLETED"), Some(tag.as_str())),
        "{history}"
    );
    assert_eq!(entry["reached"]["timeline"], 2, "{history}");
    let recover = |body: &str| {
        recover_pg(&s, &c, body);
    };
    recover(r#"{"latest": true}"#);
    assert_eq!(c.psql(sum), at_loss, "latest: every row committed on timeline 2");
    recover(&format!(r#"{{"tag": "{tag}"}}"#));
    assert_eq!(c.psql(sum), at_backup, "by tag {tag}");
    recover(&format!(r#"{{"timestamp": "{}", "timeline": 1}}"#, marks[1].timestamp));
    assert_eq!(c.psql(sum), at_second_mark, "a moment of timeline 1");
}
