//! Issue 31: recovery into another place. A SQLite deployment shipping its
//! log is recovered into other files by `latest`, a tag, a timestamp and
//! an scn, each exactly (ordered checksum of every column of every row at
//! that point), while the live database keeps its rows (checksum before and
//! after every recovery), its application writes on through a connection
//! held open, and its shipper goes on in the same generation. Refused with
//! 400 saying why: a place the configuration does not allow (naming the
//! setting), the server's own files, the deployment's own file, a file
//! that exists without `"replace": true`.

use std::path::Path;
use std::time::Duration;

use crate::common::*;

const APP: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/app";

fn insert(c: &rusqlite::Connection, ns: impl IntoIterator<Item = i64>) {
    for n in ns {
        c.execute("INSERT INTO t VALUES (?1, randomblob(100))", [n]).unwrap();
    }
}

/// The shipped log's state: its generation and its last position, once
/// the shipper has shipped transaction `n` of its generation (a time on a
/// sleep was not enough on a loaded machine).
fn shipped(s: &Server, n: u64) -> (String, String) {
    wait_shipped(s, "app", n);
    let (_, v) = s.json(&[&s.url(APP)]);
    let shipping = &v["continuousArchiving"];
    let range = shipping["ranges"].as_array().and_then(|r| r.last()).cloned();
    let range = range.unwrap_or_else(|| panic!("no shipped range: {v}"));
    (
        shipping["generation"].as_str().unwrap_or_default().to_string(),
        range["latestScn"].as_str().unwrap_or_default().to_string(),
    )
}

/// Recovers `app` as `body` asks into `copy`; the job's parameters name
/// the target.
fn recover_into(s: &Server, body: &str, copy: &Path) -> serde_json::Value {
    let body = body.replacen('}', &format!(r#", "target": {{"path": "{}"}}}}"#, copy.display()), 1);
    let job = post_until_accepted(s, &format!("{API}/app/backups/recovery"), &body);
    assert_eq!(
        job["job_request_parameters"]["target"]["path"],
        copy.display().to_string(),
        "{job}"
    );
    job
}

/// Backs `service` up (waiting for the job) and returns its backup as
/// the list shows it.
fn back_up(s: &Server, service: &str) -> serde_json::Value {
    let job = post_until_accepted(s, &format!("{API}/{service}/backups"), "{}");
    let (_, list) = s.json(&[&s.url(&format!("{API}/{service}/backups"))]);
    list["backupList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["jobId"] == job["job_id"])
        .cloned()
        .unwrap_or_else(|| panic!("backup job {} listed: {list}", job["job_id"]))
}

fn refused(s: &Server, body: &str) -> String {
    let url = s.url(&format!("{APP}/backups/recovery"));
    let (status, v) = s.json(&["-X", "POST", "-d", body, &url]);
    assert_eq!(status, "HTTP/2 400", "{body}: {v}");
    let message = v["message"].as_str().unwrap_or_default().to_string();
    println!("{body}: {message}");
    message
}

#[test]
fn a_sqlite_deployment_recovers_into_other_files_exactly_and_the_live_one_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = dir.path().join("app.sqlite");
    let copies = dir.path().join("copies");
    std::fs::create_dir_all(&copies).unwrap();
    let app = shipping_sqlite(&s, "app", &db);
    app.execute_batch("CREATE TABLE served(at TEXT)").unwrap();

    insert(&app, 1..=50);
    let at_50 = table_checksum(&db, "t");
    // A shipped transaction's time is when the shipper read it (it polls
    // every 100 ms; later on a loaded machine): the 50 are shipped before
    // the second that names their state begins. (Without this wait, CI
    // recovered 34 of them: the last ones were read after that second.)
    shipped(&s, 51); // the table `served`, then the 50
    let t_50 = mark();
    insert(&app, 51..=100);
    app.execute("DELETE FROM t WHERE n % 10 = 0", []).unwrap();
    app.execute("UPDATE t SET pad = x'00' WHERE n % 7 = 0", []).unwrap();
    let at_100 = table_checksum(&db, "t");
    let (_, scn_100) = shipped(&s, 103); // and the delete and the update
    let tag_100 = back_up(&s, "app")["dbTag"].as_str().unwrap().to_string();
    insert(&app, 101..=150);
    let live = table_checksum(&db, "t");
    // The user's backup began a generation: 50 since.
    let (generation, _) = shipped(&s, 50);

    let copy = |name: &str| copies.join(name);
    for (body, name, expected) in [
        (r#"{"latest": true}"#.to_string(), "latest.db", &live),
        (format!(r#"{{"tag": "{tag_100}"}}"#), "tag.db", &at_100),
        (format!(r#"{{"timestamp": "{t_50}"}}"#), "timestamp.db", &at_50),
        (format!(r#"{{"scn": "{scn_100}"}}"#), "scn.db", &at_100),
    ] {
        recover_into(&s, &body, &copy(name));
        assert_eq!(&table_checksum(&copy(name), "t"), expected, "{body} into {name}");
        let check: String = rusqlite::Connection::open(copy(name))
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{name}");
        assert_eq!(table_checksum(&db, "t"), live, "the live database untouched by {body}");
        // The application's connection, open throughout, still writes.
        app.execute("INSERT INTO served VALUES (?1)", [&name]).unwrap();
    }

    // Not the deployment's recoveries: its history lists none, and its
    // shipper goes on in the same generation, shipping what follows.
    let (_, history) = s.json(&[&s.url(&format!("{APP}/backups/recovery/history"))]);
    assert_eq!(history["recoveryList"], serde_json::json!([]), "{history}");
    insert(&app, 151..=160);
    let live = table_checksum(&db, "t");
    let (still, _) = shipped(&s, 64); // 4 rows of `served`, 10 of `t`
    assert_eq!(still, generation, "the shipper's generation went on");
    recover_into(&s, r#"{"latest": true}"#, &copy("later.db"));
    assert_eq!(table_checksum(&copy("later.db"), "t"), live);

    // A file that exists is overwritten only when asked to.
    let message = refused(
        &s,
        &format!(
            r#"{{"tag": "{tag_100}", "target": {{"path": "{}"}}}}"#,
            copy("latest.db").display()
        ),
    );
    assert!(
        message.contains("exists") && message.contains("\"replace\": true"),
        "{message}"
    );
    let body = format!(r#"{{"tag": "{tag_100}", "replace": true}}"#);
    recover_into(&s, &body, &copy("latest.db"));
    assert_eq!(table_checksum(&copy("latest.db"), "t"), at_100);

    // Places the request may not name.
    let message = refused(
        &s,
        r#"{"latest": true, "target": {"path": "/var/lib/strongbox-not-allowed/app.db"}}"#,
    );
    assert!(message.contains("database_files"), "names the setting: {message}");
    let own = format!("{}/./app.sqlite", dir.path().display());
    let message = refused(&s, &format!(r#"{{"latest": true, "target": {{"path": "{own}"}}}}"#));
    assert!(message.contains("app's own"), "{message}");
    let servers = dir.path().join("data").join("copy.db");
    refused(
        &s,
        &format!(r#"{{"latest": true, "target": {{"path": "{}"}}}}"#, servers.display()),
    );
    assert!(!servers.exists());
    let message = refused(&s, r#"{"latest": true, "target": {"file": "/tmp/x.db"}}"#);
    assert!(message.contains("path"), "{message}");
    refused(&s, r#"{"latest": true, "target": "/tmp/x.db"}"#);
    refused(&s, r#"{"latest": true, "replace": true}"#);
    assert_eq!(table_checksum(&db, "t"), live, "the live database untouched");
}

/// A `postgresql-logical` deployment recovered into other databases of
/// the same server (created) by `latest`, a tag and a backup's completion
/// timestamp, each exactly (ordered checksum of every column), the live
/// database's checksum unchanged and its server serving throughout; an
/// existing database is overwritten only with `"replace": true`; the live
/// one itself is refused, even with it.
#[test]
fn a_logical_postgresql_deployment_recovers_into_other_databases_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let live = format!("sb_into_{}", std::process::id());
    let copy = |what: &str| format!("{live}_{what}");
    let _cleanup = DropDatabases {
        mariadb: false,
        names: std::iter::once(live.clone())
            .chain(["latest", "tag", "timestamp"].map(copy))
            .collect(),
    };
    pg("postgres", &format!("DROP DATABASE IF EXISTS {live}"));
    pg("postgres", &format!("CREATE DATABASE {live}"));
    pg(
        &live,
        "CREATE TABLE t AS SELECT n AS id, md5(n::text) AS v FROM generate_series(1, 3000) AS n; \
         CREATE TABLE served(what text)",
    );
    let ordered = "SELECT count(*) || ' ' || md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t";
    let connection = serde_json::json!({"engine": "postgresql-logical", "connection": {
        "url": format!("postgresql://postgres@127.0.0.1:5432/{live}"), "bin_dir": strongbox_testkit::PG_BIN}});
    register(&s, "shop", connection);

    let backup = |s: &Server| {
        let b = back_up(s, "shop");
        (
            b["dbTag"].as_str().unwrap().to_string(),
            b["backupCompleteDate"].as_str().unwrap().to_string(),
        )
    };
    let (first, first_completed) = backup(&s);
    let at_first = pg(&live, ordered);
    // A completion timestamp names the latest backup completed in its
    // second: the next one completes in a later one.
    std::thread::sleep(second_after(Duration::ZERO).1);
    pg(
        &live,
        "UPDATE t SET v = 'changed' WHERE id % 7 = 0; DELETE FROM t WHERE id % 10 = 0",
    );
    pg(
        &live,
        "INSERT INTO t SELECT n, md5(n::text) FROM generate_series(3001, 4000) AS n",
    );
    backup(&s);
    let at_latest = pg(&live, ordered);
    assert_ne!(at_first, at_latest);

    for (body, what, expected) in [
        (r#"{"latest": true"#.to_string(), "latest", &at_latest),
        (format!(r#"{{"tag": "{first}""#), "tag", &at_first),
        (format!(r#"{{"timestamp": "{first_completed}""#), "timestamp", &at_first),
    ] {
        let body = format!(r#"{body}, "target": {{"database": "{}"}}}}"#, copy(what));
        let job = post_until_accepted(&s, &format!("{API}/shop/backups/recovery"), &body);
        assert_eq!(job["job_request_parameters"]["target"]["database"], copy(what), "{job}");
        assert_eq!(&pg(&copy(what), ordered), expected, "{body}");
        assert_eq!(pg(&live, ordered), at_latest, "the live database untouched by {body}");
        pg(&live, &format!("INSERT INTO served VALUES ('{what}')"));
    }

    // An existing database is overwritten only when asked to.
    let into_latest = format!(r#""target": {{"database": "{}"}}"#, copy("latest"));
    let (status, v) = s.json(&[
        "-X",
        "POST",
        "-d",
        &format!(r#"{{"tag": "{first}", {into_latest}}}"#),
        &s.url(&format!("{API}/shop/backups/recovery")),
    ]);
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(v["message"].as_str().unwrap().contains("exists"), "{v}");
    post_until_accepted(
        &s,
        &format!("{API}/shop/backups/recovery"),
        &format!(r#"{{"tag": "{first}", {into_latest}, "replace": true}}"#),
    );
    assert_eq!(pg(&copy("latest"), ordered), at_first);
    let (status, v) = s.json(&[
        "-X",
        "POST",
        "-d",
        &format!(r#"{{"latest": true, "target": {{"database": "{live}"}}, "replace": true}}"#),
        &s.url(&format!("{API}/shop/backups/recovery")),
    ]);
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(v["message"].as_str().unwrap().contains("shop's own"), "{v}");
    assert_eq!(pg(&live, ordered), at_latest, "the live database untouched");
    // The application wrote on between the recoveries: its rows, in order.
    assert_eq!(
        pg(&live, "SELECT string_agg(what, ',' ORDER BY what) FROM served"),
        "latest,tag,timestamp"
    );
}

/// Copies of a cluster stopped when the test ends, however it ends.
struct StopCopies(Vec<std::path::PathBuf>);

impl Drop for StopCopies {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::process::Command::new("runuser")
                .args([
                    "-u",
                    "postgres",
                    "--",
                    &format!("{}/pg_ctl", strongbox_testkit::PG_BIN),
                    "-D",
                ])
                .arg(dir)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// One value a query on the server at `port` returns (`None`: it does not
/// answer).
fn on_port(port: u16, sql: &str) -> Option<String> {
    pg_query_at(port, "postgres", sql).ok()
}

/// A physical PostgreSQL deployment (archiving through Strongbox) recovered
/// into copies beside it — a new data directory on its own port, started
/// by the server — by a tag, a moment, an scn and `latest`, each exactly
/// (ordered checksum of the rows committed by then), while the live
/// cluster's rows keep their checksum and its server answers an
/// application's writes every 100 ms throughout. A copy archives nothing
/// into the deployment's archive (the archived WAL names are the same
/// before and after), is left running or stopped as asked, and is replaced
/// only when the request says so. Refused with 400: the deployment's own
/// port or data directory, a port another server holds.
#[test]
fn a_physical_postgresql_deployment_recovers_into_copies_exactly_while_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let Pg { s, c } = Pg::start(dir.path(), "");
    let place = |name: &str| c.home().join(name);
    let _stop = StopCopies(["tag", "timestamp", "scn", "latest"].map(place).to_vec());
    c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL); CREATE TABLE served (at timestamptz)");
    let upto = |n: i32| {
        format!("SELECT coalesce(md5(string_agg(id || '@' || at, ',' ORDER BY id)), '') FROM ticks WHERE id <= {n}")
    };
    write_ticks(c.port, 1, 20, 20);
    let at_tag = c.psql(&upto(20));
    let tag = back_up(&s, "pg")["dbTag"].as_str().unwrap().to_string();
    let marks = write_ticks(c.port, 21, 60, 20);
    let (at_40, at_60) = (c.psql(&upto(40)), c.psql(&upto(60)));
    write_ticks(c.port, 61, 80, 100);
    let live = c.psql(&upto(i32::MAX));
    assert!(at_tag != at_40 && at_40 != at_60 && at_60 != live);

    // The application writes on while the copies are made.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let application = {
        let (stop, port) = (stop.clone(), c.port);
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut written = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                match on_port(port, "INSERT INTO served VALUES (now())") {
                    Some(_) => written += 1,
                    None => failures.push(format!("{:?}", t.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (written, failures)
        })
    };
    let archived = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("data/repository/wal/usexample/pg"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".streamed"))
            .collect();
        names.sort();
        names
    };

    let mut ports = Vec::new();
    for (asked, name, expected, running) in [
        (format!(r#""tag": "{tag}""#), "tag", &at_tag, false),
        (
            format!(r#""timestamp": "{}""#, marks[0].timestamp),
            "timestamp",
            &at_40,
            true,
        ),
        (format!(r#""scn": "{}""#, marks[1].lsn), "scn", &at_60, true),
        (r#""latest": true"#.to_string(), "latest", &live, true),
    ] {
        let port = strongbox_testkit::free_port();
        ports.push(port);
        let body = format!(
            r#"{{{asked}, "target": {{"data_dir": "{}", "port": {port}, "running": {running}}}}}"#,
            place(name).display()
        );
        let before = archived();
        let job = recover_pg(&s, &c, &body);
        assert_eq!(job["job_request_parameters"]["target"]["port"], port, "{job}");
        if running {
            assert_eq!(on_port(port, &upto(i32::MAX)).as_ref(), Some(expected), "{body}");
            // A copy archives nothing: it is off in the copy's settings.
            assert_eq!(on_port(port, "SHOW archive_mode").as_deref(), Some("off"));
        } else {
            assert_eq!(on_port(port, "SELECT 1"), None, "{body}: the copy was left stopped");
            let ctl = format!(
                "{}/pg_ctl -D {} -l {}/log -w",
                strongbox_testkit::PG_BIN,
                place(name).display(),
                c.home().display()
            );
            strongbox_testkit::as_postgres(&format!("{ctl} start"));
            assert_eq!(on_port(port, &upto(i32::MAX)).as_ref(), Some(expected), "{body}");
            strongbox_testkit::as_postgres(&format!("{ctl} -m fast stop"));
        }
        assert_eq!(c.psql(&upto(i32::MAX)), live, "the live cluster untouched by {body}");
        let after = archived();
        assert!(
            after.iter().all(|n| n.starts_with("00000001")),
            "only the live timeline is archived: {after:?}"
        );
        assert!(before.iter().all(|n| after.contains(n)), "{before:?} {after:?}");
    }

    // A copy is replaced only when asked; what belongs to another server
    // is refused whatever the request says.
    let latest = place("latest");
    let into = |dir: &Path, port: u16| format!(r#""target": {{"data_dir": "{}", "port": {port}}}"#, dir.display());
    let url = s.url(&format!("{PG_INSTANCE}/backups/recovery"));
    let refused = |body: String, why: &str| {
        let (status, v) = s.json(&["-X", "POST", "-d", &body, &url]);
        assert_eq!(status, "HTTP/2 400", "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{body}: {v}");
    };
    refused(
        format!(r#"{{"tag": "{tag}", {}}}"#, into(&latest, ports[3])),
        "holds files",
    );
    refused(
        format!(r#"{{"tag": "{tag}", {}, "replace": true}}"#, into(&latest, c.port)),
        "the deployment's own",
    );
    refused(
        format!(r#"{{"tag": "{tag}", {}, "replace": true}}"#, into(&c.data, ports[0])),
        "pg's own",
    );
    refused(
        format!(r#"{{"tag": "{tag}", {}}}"#, into(&place("other"), 5432)),
        "is taken by the server of",
    );
    recover_pg(
        &s,
        &c,
        &format!(r#"{{"tag": "{tag}", {}, "replace": true}}"#, into(&latest, ports[3])),
    );
    assert_eq!(
        on_port(ports[3], &upto(i32::MAX)).as_ref(),
        Some(&at_tag),
        "the latest copy replaced"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (written, failures) = application.join().unwrap();
    assert!(
        failures.is_empty(),
        "the live server failed the application: {failures:?}"
    );
    assert_eq!(c.psql("SELECT count(*) FROM served"), written.to_string());
    assert_eq!(c.psql(&upto(i32::MAX)), live, "the live cluster untouched");
}

/// A `command` deployment (MariaDB's dump and client, naming their database
/// `$STRONGBOX_DATABASE`) recovered into other databases by `latest`, a
/// tag and a backup's completion timestamp, each exactly (ordered checksum of every column), the live
/// database's checksum unchanged. A command cannot tell whether a database
/// holds data: a copy always needs `"replace": true`, and a deployment
/// whose recovery command does not read the variable is refused (a copy
/// would be restored over it).
#[test]
fn a_command_deployment_recovers_into_other_databases_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let live = format!("sb_into_cmd_{}", std::process::id());
    let copy = |what: &str| format!("{live}_{what}");
    let _cleanup = DropDatabases {
        mariadb: true,
        names: std::iter::once(live.clone())
            .chain(["latest", "tag", "timestamp"].map(copy))
            .collect(),
    };
    maria(&format!(
        "DROP DATABASE IF EXISTS {live}; CREATE DATABASE {live}; USE {live}; \
         CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(40)); INSERT INTO t SELECT seq, MD5(seq) FROM seq_1_to_2000"
    ));
    let ordered = |db: &str| {
        maria(&format!(
            "SELECT count(*), MD5(GROUP_CONCAT(id, ':', v ORDER BY id)) FROM {db}.t"
        ))
    };
    let client = "mariadb -h 127.0.0.1 -u root";
    let connection = |recovery: &str| {
        serde_json::json!({"engine": "command", "connection": {
            "database": live,
            "backup_command": format!("mariadb-dump -h 127.0.0.1 -u root --single-transaction $STRONGBOX_DATABASE"),
            "prepare_command": format!("{client} -e \"CREATE DATABASE IF NOT EXISTS $STRONGBOX_DATABASE\""),
            "recovery_command": recovery,
        }})
    };
    let url = s.url("/strongbox/api/v1/instances/usexample/shop");
    let (status, v) = s.json(&[
        "-X",
        "PUT",
        "-d",
        &connection(&format!("{client} {live}")).to_string(),
        &url,
    ]);
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("recovery_command does not use"),
        "{v}"
    );
    register(&s, "shop", connection(&format!("{client} $STRONGBOX_DATABASE")));

    let first = back_up(&s, "shop");
    let first_completed = first["backupCompleteDate"].as_str().unwrap().to_string();
    let first = first["dbTag"].as_str().unwrap().to_string();
    let at_first = ordered(&live);
    // A completion timestamp names the latest backup completed in its
    // second: the next one completes in a later one.
    std::thread::sleep(second_after(Duration::ZERO).1);
    maria(&format!(
        "USE {live}; UPDATE t SET v = 'changed' WHERE id % 7 = 0; DELETE FROM t WHERE id % 10 = 0; \
         INSERT INTO t SELECT seq, MD5(seq) FROM seq_2001_to_2500"
    ));
    back_up(&s, "shop");
    let at_latest = ordered(&live);
    assert_ne!(at_first, at_latest);

    let recovery = format!("{API}/shop/backups/recovery");
    for (asked, what, expected) in [
        (r#""latest": true"#.to_string(), "latest", &at_latest),
        (format!(r#""tag": "{first}""#), "tag", &at_first),
        (format!(r#""timestamp": "{first_completed}""#), "timestamp", &at_first),
    ] {
        let body = format!(r#"{{{asked}, "target": {{"database": "{}"}}"#, copy(what));
        let (status, v) = s.json(&["-X", "POST", "-d", &format!("{body}}}"), &s.url(&recovery)]);
        assert_eq!(status, "HTTP/2 400", "{v}");
        assert!(
            v["message"].as_str().unwrap().contains("cannot tell whether database"),
            "{v}"
        );
        post_until_accepted(&s, &recovery, &format!(r#"{body}, "replace": true}}"#));
        assert_eq!(&ordered(&copy(what)), expected, "{body}");
        assert_eq!(ordered(&live), at_latest, "the live database untouched by {body}");
    }
    let (status, v) = s.json(&[
        "-X",
        "POST",
        "-d",
        &format!(r#"{{"latest": true, "target": {{"database": "{live}"}}, "replace": true}}"#),
        &s.url(&recovery),
    ]);
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(v["message"].as_str().unwrap().contains("shop's own"), "{v}");
    assert_eq!(ordered(&live), at_latest, "the live database untouched");
}

/// What a query on database `name` of the machine's PostgreSQL prints.
fn pg(name: &str, sql: &str) -> String {
    pg_query(name, sql).unwrap()
}
