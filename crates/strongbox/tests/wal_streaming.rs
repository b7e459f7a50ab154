//! Issue 29: a PostgreSQL server and its disk lost, the WAL streamed into
//! the repository (Strongbox's receiver on a replication slot, its unfinished
//! segment stored as a tail every 200 ms) brings back every transaction
//! committed more than a second before the loss, not only those in the
//! last completed 16 MB segment. Turned off, its slot goes.

use std::time::{Duration, Instant};

use crate::common::*;

/// The scenario of the issue, through the API: `archive_command` from `GET
/// …/{serviceId}` (PostgreSQL's defaults otherwise), continuous archiving
/// on, a base backup, 100 transactions 0.1 s apart, then the server killed
/// and its data directory deleted at once. `latest` brings back exactly the
/// first N rows as committed (ids and commit times, in order), N at least
/// every row committed a second before the loss.
#[test]
fn a_server_and_its_disk_lost_lose_at_most_the_last_second_of_commits() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Pg::start(dir.path(), "");
    let config = pg.url("/backups/config");
    let (status, v) = pg.s.archive_continuously("pg");
    assert_eq!(status, "HTTP/2 200", "{v}");
    streaming_from_its_slot(&pg, true);
    // The instance says it streams, and how much WAL its slot keeps on the
    // database server (a segment at most while the receiver keeps up);
    // `/metrics` too.
    let deadline = Instant::now() + Duration::from_secs(30);
    let streaming = loop {
        let v = pg.instance()["continuousArchiving"].clone();
        if v["slotHeldBytes"].is_u64() {
            break v;
        }
        assert!(Instant::now() < deadline, "no slotHeldBytes: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (&streaming["shipping"], &streaming["error"]),
        (&serde_json::json!(true), &serde_json::Value::Null),
        "{streaming}"
    );
    assert!(streaming["slotHeldBytes"].as_u64() <= Some(32 << 20), "{streaming}");
    let (_, _, page) = pg.s.curl(&[&pg.s.url("/metrics")]);
    assert!(
        page.lines()
            .any(|l| l.starts_with(r#"strongbox_wal_slot_held_bytes{domain="usexample",deployment="pg"}"#)),
        "{page}"
    );
    let (committed, before, lost_at) = commit_then_lose(&pg, 100);

    // ... and, the server gone, that it does not, why, and since when.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = pg.instance()["continuousArchiving"].clone();
        if v["error"].as_str().is_some_and(|e| e.contains("WAL receiver")) && v["lagSeconds"].as_f64() > Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the receiver's status never said it stopped: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = pg.s.repo_cli(&["wal-list", "--archive", "usexample/pg"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let job = pg.recover(r#"{"latest": true}"#);
    assert_eq!(job["job_status"], "Succeeded", "{job}\n{}", pg.c.log());
    let back = exact_prefix(&before, &pg.c.psql(ROWS));
    let before_last_second = a_second_before(&committed, lost_at);
    let missing_for = committed.get(back).map(|t| lost_at.duration_since(*t).as_millis());
    println!(
        "the last commit {} ms before the loss; {back} of 100 transactions came back; {before_last_second} had been committed more than 1 s before the \
         loss; the first missing one {}",
        lost_at.duration_since(committed[99]).as_millis(),
        missing_for.map_or("none".into(), |ms| format!("was committed {ms} ms before the loss"))
    );
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'strongbox_%'";
    // Streaming goes on from the recovered server (a new slot there) ...
    streaming_from_its_slot(&pg, true);
    // ... until it is turned off: the slot goes with it (left, it would
    // keep WAL on the database's disk for ever).
    let (status, v) =
        pg.s.json(&["-X", "PUT", "-d", r#"{"continuousArchiving": false}"#, &config]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.c.psql(slots) != "0" {
        assert!(
            Instant::now() < deadline,
            "the slot stayed after streaming was turned off"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        back >= before_last_second,
        "{back} < {before_last_second}; the WAL archive held:\n{listed}\nthe recovery:\n{}\nthe server:\n{}",
        pg.activity(&job),
        std::fs::read_to_string(dir.path().join("server.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("strongbox::request"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The same loss against a server that takes TCP connections over TLS
/// only, registered with `sslmode=verify-full`: its backups (a session on
/// the server) and its stream (the receiver, seen in `pg_stat_ssl`) speak
/// TLS, and `latest` brings back every transaction committed a second
/// before the server and its disk were lost, exactly.
#[test]
fn over_tls_only_the_server_and_its_disk_lost_lose_at_most_the_last_second() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Pg::start(dir.path(), "");
    let ca = pg.c.only_tls();
    let url = format!(
        "postgresql://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.c.port,
        ca.display()
    );
    register_cluster(&pg.s, "pg", &pg.c, &url);
    let (status, v) = pg.s.archive_continuously("pg");
    assert_eq!(status, "HTTP/2 200", "{v}");
    streaming_from_its_slot(&pg, true);
    let receiver = "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.application_name \
                    LIKE 'strongbox_%'";
    assert_eq!(pg.c.psql(receiver), "t", "the receiver streams over TLS");
    let (committed, before, lost_at) = commit_then_lose(&pg, 30);
    let job = pg.recover(r#"{"latest": true}"#);
    assert_eq!(job["job_status"], "Succeeded", "{job}\n{}", pg.c.log());
    let back = exact_prefix(&before, &pg.c.psql(ROWS));
    let before_last_second = a_second_before(&committed, lost_at);
    println!(
        "over TLS: the last commit {} ms before the loss; {back} of 30 transactions came back ({before_last_second} \
         committed more than 1 s before)",
        lost_at.duration_since(committed[29]).as_millis()
    );
    assert!(back >= before_last_second, "{back} < {before_last_second}");
    // The recovered server (TLS-only still: its configuration came back
    // with it) streams again, over TLS.
    streaming_from_its_slot(&pg, true);
    assert_eq!(pg.c.psql(receiver), "t");
}

/// Synchronous mode (`synchronousArchiving`): the receiver is a
/// synchronous standby (the server lists its `standbyName` in
/// `synchronous_standby_names`) that reports WAL flushed only once it is
/// stored, so a commit returns only once its WAL is in the repository.
/// Ten rounds (`SYNC_ROUNDS` to change): 100 transactions; the moment the
/// last commit returns the Strongbox server is SIGKILLed and its spool
/// deleted, and the database server killed and its data directory
/// deleted; a new Strongbox server on the repository, and `latest` brings
/// back all of them, every time (ordered checksum of every row). And while the receiver is away a
/// commit waits for it (what synchronous means; the receiver is back
/// within about a second).
#[test]
fn synchronous_mode_loses_no_acknowledged_commit() {
    let rounds: i32 = strongbox_testkit::env_or("SYNC_ROUNDS", 10);
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Pg::start(dir.path(), "");
    let config = pg.url("/backups/config");
    let (status, v) =
        pg.s.json(&["-X", "PUT", "-d", r#"{"synchronousArchiving": true}"#, &config]);
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("needs continuousArchiving"),
        "{v}"
    );
    let standby = synchronous_archiving(&pg);
    pg.c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");
    pg.backup();

    // Away, the receiver holds commits up until it is back.
    pg.c.psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = '{standby}'"
    ));
    let began = Instant::now();
    pg.c.psql("INSERT INTO ticks VALUES (0, clock_timestamp())");
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "a commit did not wait for the standby: {waited:?}"
    );
    println!("a commit while the receiver was away waited {waited:?}");

    let rows = "SELECT coalesce(md5(string_agg(id || '@' || at, ',' ORDER BY id)), '') FROM ticks";
    for round in 0..rounds {
        wait_synchronous(&pg, &standby);
        let mut client = postgres::Client::connect(
            &format!("host=127.0.0.1 port={} user=postgres dbname=postgres", pg.c.port),
            postgres::NoTls,
        )
        .unwrap();
        for id in 1..=100 {
            client
                .execute(
                    "INSERT INTO ticks VALUES ($1, clock_timestamp())",
                    &[&(round * 100 + id)],
                )
                .unwrap();
        }
        // The checksum read on the same connection, then the loss at once:
        // Strongbox's host with what its receiver had not stored, and the
        // database's.
        let before: String = client.query_one(rows, &[]).unwrap().get(0);
        let job = both_hosts_lost_then_latest(&mut pg, dir.path());
        drop(client);
        assert_eq!(
            pg.c.psql(rows),
            before,
            "round {round}: every acknowledged commit back, exactly\n{}",
            pg.activity(&job)
        );
        println!("round {round}: all {} rows back", round * 100 + 101);
    }
}

/// Synchronous mode with the repository down (the S3 store answering 503
/// to everything): a commit does not return while its WAL cannot be
/// stored; once the store is back it returns, and with both hosts then
/// lost (Strongbox's spool deleted, the database's data directory too) a
/// new Strongbox server on the repository brings it back. A receiver that
/// acknowledged WAL once on its own disk would let the commit return at
/// once.
#[test]
fn synchronous_mode_holds_commits_while_the_repository_is_down() {
    use strongbox_testkit::s3::{FaultPlan, Faults, S3Server};
    let faults = Faults::new(29);
    let store = S3Server::with_faults(faults.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::common::flaky_s3_reach(&store);
    env.push(("STRONGBOX_PASSWORD", "sync-s3".to_string()));
    let reach = env.clone();
    env.push(("STRONGBOX_REPOSITORY", store.repository("sync")));
    env.push(("STRONGBOX_REPO_PASSWORD", "sync-s3".to_string()));
    let mut pg = Pg::start_with(dir.path(), "", &env);
    // archive_command reaches the store as the server does.
    let command = pg.c.psql("SHOW archive_command");
    let vars: Vec<String> = reach.iter().map(|(k, v)| format!("{k}='{v}'")).collect();
    pg.c.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        format!("env {} {command}", vars.join(" ")).replace('\'', "''")
    ));
    pg.c.psql("SELECT pg_reload_conf()");
    synchronous_archiving(&pg);
    pg.c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");
    pg.backup();

    faults.set(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    let url = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", pg.c.port);
    let (returned, committed) = std::sync::mpsc::channel();
    let began = Instant::now();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .execute("INSERT INTO ticks VALUES (1, clock_timestamp())", &[])
            .unwrap();
        let _ = returned.send(Instant::now());
    });
    let held = Duration::from_secs(5);
    assert!(
        committed.recv_timeout(held).is_err(),
        "a commit returned while the repository was down"
    );
    faults.set(FaultPlan::default());
    let back = Instant::now();
    let at = committed
        .recv_timeout(Duration::from_secs(60))
        .expect("the commit never returned");
    println!(
        "the commit waited {:?} with the repository down {held:?}; it returned {:?} after the store came back",
        at - began,
        at - back
    );
    // The one row as committed (id and commit time).
    let before = pg.c.psql(ROWS);
    assert!(before.starts_with("1@") && !before.contains(','), "{before}");
    let job = both_hosts_lost_then_latest(&mut pg, dir.path());
    assert_eq!(
        pg.c.psql(ROWS),
        before,
        "the commit back, exactly\n{}",
        pg.activity(&job)
    );
}

/// The receiver kept away for 60 s (`AWAY_SECONDS` to change) under
/// pgbench (replication connections refused in `pg_hba.conf`): its status
/// says so (`error`, `lagSeconds` growing) and the WAL its slot holds on
/// the database server grows (`slotHeldBytes`, `/metrics`: what
/// `StrongboxWalSlotGrowing` alerts on, `contrib/prometheus-rules.test.yml`);
/// let back, it catches up from its slot; `repo check` finds no gap, and
/// with the server and its disk then lost, `latest` brings back every row
/// (ordered checksums of pgbench's tables).
#[test]
fn a_receiver_kept_away_under_pgbench_catches_up_from_its_slot() {
    let away: u64 = strongbox_testkit::env_or("AWAY_SECONDS", 60);
    let dir = tempfile::tempdir().unwrap();
    let pg = Pg::start(dir.path(), "");
    let (status, v) = pg.s.archive_continuously("pg");
    assert_eq!(status, "HTTP/2 200", "{v}");
    let pgbench = format!("{}/pgbench", strongbox_testkit::PG_BIN);
    strongbox_testkit::sh(&format!("{pgbench} -i -q -s 2 {} 2>&1", pg.c.url()));
    pg.backup();
    let receiving = "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'strongbox_%'";
    let wait_for = |sql: &str, want: &str, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while pg.c.psql(sql) != want {
            assert!(Instant::now() < deadline, "{what}:\n{}", pg.c.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for(receiving, "1", "no receiver");

    // Away: replication connections refused, the receiver's cut.
    let hba = pg.c.data.join("pg_hba.conf");
    let open = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host replication all 0.0.0.0/0 reject\n{open}")).unwrap();
    pg.c.psql("SELECT pg_reload_conf()");
    pg.c.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication");
    let load = std::process::Command::new(&pgbench)
        .args(["-n", "-c", "2", "-R", "200", "-T", &away.to_string(), &pg.c.url()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(away.min(10)));
    let held_then = pg.instance()["continuousArchiving"]["slotHeldBytes"].as_u64();
    let mut load = load;
    assert!(load.wait().unwrap().success(), "pgbench failed");
    let (mut status_away, deadline) = (serde_json::Value::Null, Instant::now() + Duration::from_secs(10));
    // The slot's figure is asked for every 2 s: wait for one after the load.
    while Instant::now() < deadline {
        status_away = pg.instance()["continuousArchiving"].clone();
        if status_away["slotHeldBytes"].as_u64() > held_then {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("away {away} s: {status_away}");
    assert!(
        status_away["error"]
            .as_str()
            .is_some_and(|e| e.contains("WAL receiver")),
        "{status_away}"
    );
    assert!(
        status_away["lagSeconds"].as_f64() > Some(away as f64 / 2.0),
        "{status_away}"
    );
    assert!(
        status_away["slotHeldBytes"].as_u64() > held_then,
        "the slot's WAL did not grow under pgbench: {status_away} (then {held_then:?})"
    );
    let (_, _, page) = pg.s.curl(&[&pg.s.url("/metrics")]);
    let held: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix(r#"strongbox_wal_slot_held_bytes{domain="usexample",deployment="pg"} "#))
        .unwrap_or_else(|| panic!("no slot figure in /metrics: {page}"))
        .parse()
        .unwrap();
    assert!(held > 0.0, "{held}");

    // Back: it catches up from the slot.
    std::fs::write(&hba, open).unwrap();
    pg.c.psql("SELECT pg_reload_conf()");
    let back = Instant::now();
    let now = pg.c.psql("SELECT pg_current_wal_lsn()");
    wait_for(
        &format!("{receiving} AND write_lsn >= '{now}'"),
        "1",
        "the receiver did not catch up",
    );
    println!("caught up {:?} after it was let back", back.elapsed());
    let sums = "SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts \
                UNION ALL SELECT md5(string_agg(tid || ':' || bid || ':' || aid || ':' || delta || ':' || mtime, ',' \
                ORDER BY mtime, tid, bid, aid, delta)) FROM pgbench_history";
    let before = pg.c.psql(sums);
    pg.flush();
    let check = pg.s.repo_cli(&["check"]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    pg.crash();
    std::fs::remove_dir_all(&pg.c.data).unwrap();
    let job = recover_pg(&pg.s, &pg.c, r#"{"latest": true}"#);
    assert_eq!(job["job_status"], "Succeeded", "{job}");
    assert_eq!(pg.c.psql(sums), before, "every row, exactly");
}

/// A timeline switch, then the loss: a recovery (to the backup, so the
/// server goes on as timeline 2), the receiver streaming again from the
/// recovered server, 60 transactions 0.1 s apart on the new timeline, then
/// the server killed and its data directory deleted. `latest` follows
/// timeline 2 and its streamed tail: exactly the first N of the new
/// timeline's rows (ordered, with commit times), N at least every row
/// committed a second before the loss; its messages say it used the tail.
#[test]
fn a_timeline_switch_then_a_loss_recovers_the_new_timelines_tail() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Pg::start(dir.path(), "");
    let (status, v) = pg.s.archive_continuously("pg");
    assert_eq!(status, "HTTP/2 200", "{v}");
    pg.c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let tag = pg.backup()["dbTag"].as_str().unwrap().to_string();
    pg.c.psql("INSERT INTO ticks SELECT g, clock_timestamp() FROM generate_series(1000, 1019) g");
    let job = pg.recover(&format!(r#"{{"tag": "{tag}"}}"#));
    assert_eq!(job["job_status"], "Succeeded", "{job}");
    assert_eq!(pg.c.psql("SELECT timeline_id FROM pg_control_checkpoint()"), "2");
    streaming_from_its_slot(&pg, true);

    let committed = commit_ticks(&pg, 1..=60);
    let (job, back, before_last_second) = lose_and_recover_latest(&pg, &committed);
    let activity = pg.activity(&job);
    println!(
        "timeline 2: {back} of 60 transactions came back; {before_last_second} had been committed more than 1 s \
         before the loss"
    );
    assert!(back >= before_last_second, "{back} < {before_last_second}:\n{activity}");
    assert!(
        activity.contains("timeline 2") && activity.contains("replay reads the tail streamed of it"),
        "{activity}"
    );
}

/// SIGKILL of the Strongbox server while its receiver streams: the
/// receiver's connection dies with it within seconds (its slot
/// inactive); 30 transactions commit while the server is down, their WAL
/// kept by the slot; started again, the server's receiver resumes from the
/// slot; 30 more commit; then the database server and its disk are lost.
/// `latest` brings back exactly the first N rows, N at least every row
/// committed a second before the loss: those of the outage among them.
#[test]
fn a_server_killed_while_streaming_resumes_from_its_slot_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Pg::start(dir.path(), "");
    let (status, v) = pg.s.archive_continuously("pg");
    assert_eq!(status, "HTTP/2 200", "{v}");
    streaming_from_its_slot(&pg, true);
    pg.c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");
    pg.backup();
    let mut committed = commit_ticks(&pg, 1..=30);
    pg.s.child.kill().unwrap(); // SIGKILL
    pg.s.child.wait().unwrap();
    streaming_from_its_slot(&pg, false);
    committed.extend(commit_ticks(&pg, 31..=60));
    pg.s.restart();
    streaming_from_its_slot(&pg, true);
    committed.extend(commit_ticks(&pg, 61..=90));
    let (job, back, before_last_second) = lose_and_recover_latest(&pg, &committed);
    println!(
        "{back} of 90 transactions came back (31-60 committed while Strongbox was down); {before_last_second} had \
         been committed more than 1 s before the loss"
    );
    assert!(
        back >= before_last_second && back >= 60,
        "{back} < {before_last_second}:\n{}",
        pg.activity(&job)
    );
}

/// The loss: the rows as committed read at once, the server killed and
/// its data directory deleted; then `latest`, which must succeed. The job,
/// how many rows came back (exactly the first ones, as committed), and how
/// many of `committed` returned more than a second before the loss.
fn lose_and_recover_latest(pg: &Pg, committed: &[Instant]) -> (serde_json::Value, usize, usize) {
    let before = pg.c.psql(ROWS);
    let lost_at = Instant::now();
    pg.crash();
    std::fs::remove_dir_all(&pg.c.data).unwrap();
    let job = pg.recover(r#"{"latest": true}"#);
    assert_eq!(job["job_status"], "Succeeded", "{job}\n{}", pg.c.log());
    let back = exact_prefix(&before, &pg.c.psql(ROWS));
    (job, back, a_second_before(committed, lost_at))
}

/// Turns synchronous archiving on and names the receiver in the server's
/// `synchronous_standby_names`; waits until it is the synchronous
/// standby. Its name.
fn synchronous_archiving(pg: &Pg) -> String {
    let (status, v) = pg.s.json(&[
        "-X",
        "PUT",
        "-d",
        r#"{"continuousArchiving": true, "synchronousArchiving": true}"#,
        &pg.url("/backups/config"),
    ]);
    assert_eq!(status, "HTTP/2 200", "{v}");
    assert_eq!(v["synchronousArchiving"], true, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let standby = loop {
        if let Some(name) = pg.instance()["continuousArchiving"]["standbyName"].as_str() {
            break name.to_string();
        }
        assert!(Instant::now() < deadline, "no standbyName: {}", pg.instance());
        std::thread::sleep(Duration::from_millis(200));
    };
    pg.c.psql(&format!("ALTER SYSTEM SET synchronous_standby_names = '\"{standby}\"'"));
    pg.c.psql("SELECT pg_reload_conf()");
    wait_synchronous(pg, &standby);
    standby
}

/// Waits (30 s at most) until `standby` is the server's synchronous standby.
fn wait_synchronous(pg: &Pg, standby: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.c.psql(&format!(
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{standby}' AND sync_state = 'sync'"
    )) != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the receiver is not a synchronous standby:\n{}",
            pg.c.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Both hosts lost at once: the Strongbox server SIGKILLed and its
/// receiver's spool deleted (its disk, as far as streaming goes), the
/// database server killed and its data directory deleted. Then a new
/// Strongbox server on the repository recovers `latest`, which must
/// succeed; the job.
fn both_hosts_lost_then_latest(pg: &mut Pg, dir: &std::path::Path) -> serde_json::Value {
    pg.s.child.kill().unwrap();
    pg.s.child.wait().unwrap();
    pg.crash();
    for spool in std::fs::read_dir(dir.join("data/tmp")).unwrap() {
        let spool = spool.unwrap().path();
        if spool.file_name().unwrap().to_string_lossy().starts_with("receive-") {
            std::fs::remove_dir_all(spool).unwrap();
        }
    }
    std::fs::remove_dir_all(&pg.c.data).unwrap();
    pg.s.restart();
    let job = recover_pg(&pg.s, &pg.c, r#"{"latest": true}"#);
    assert_eq!(job["job_status"], "Succeeded", "{job}");
    job
}

/// Waits (30 s at most) until a receiver streams from the deployment's
/// slot (`active`), or none does.
fn streaming_from_its_slot(pg: &Pg, active: bool) {
    let query = "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'strongbox_%' AND active";
    let wanted = if active { "1" } else { "0" };
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.c.psql(query) != wanted {
        assert!(
            Instant::now() < deadline,
            "active receivers never {wanted}:\n{}",
            pg.c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every row of `ticks` as committed (ids and commit times, in order).
const ROWS: &str = "SELECT coalesce(string_agg(id || '@' || at, ',' ORDER BY id), '') FROM ticks";

/// A table `ticks` and a base backup, `n` transactions 0.1 s apart, then
/// the loss: the server killed and its data directory deleted at once.
/// When each commit returned, every row as committed (one query: the loss
/// follows at once), and when the loss came.
fn commit_then_lose(pg: &Pg, n: i32) -> (Vec<Instant>, String, Instant) {
    pg.c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");
    pg.backup();
    let committed = commit_ticks(pg, 1..=n);
    let before = pg.c.psql(ROWS);
    let lost_at = Instant::now();
    pg.crash();
    std::fs::remove_dir_all(&pg.c.data).unwrap();
    (committed, before, lost_at)
}

/// Inserts `ids` into `ticks`, one transaction each, 0.1 s apart; when
/// each commit returned.
fn commit_ticks(pg: &Pg, ids: std::ops::RangeInclusive<i32>) -> Vec<Instant> {
    // The Unix socket (in the data directory): no TLS to set up, whatever
    // the cluster asks of TCP connections.
    let mut client = postgres::Client::connect(
        &format!(
            "host={} port={} user=postgres dbname=postgres",
            pg.c.data.display(),
            pg.c.port
        ),
        postgres::NoTls,
    )
    .unwrap();
    let mut committed = Vec::new();
    for id in ids {
        client
            .execute("INSERT INTO ticks VALUES ($1, clock_timestamp())", &[&id])
            .unwrap();
        committed.push(Instant::now());
        std::thread::sleep(Duration::from_millis(100));
    }
    committed
}

/// How many rows came back (`after`, as `ROWS` reads them), asserting they
/// are exactly the first ones of `before`, as committed.
fn exact_prefix(before: &str, after: &str) -> usize {
    let before: Vec<&str> = before.split(',').collect();
    let after: Vec<&str> = after.split(',').filter(|r| !r.is_empty()).collect();
    let back = after.len();
    assert_eq!(after, before[..back], "exactly the first {back} rows, as committed");
    back
}

/// How many of the commits returned more than a second before `lost_at`.
fn a_second_before(committed: &[Instant], lost_at: Instant) -> usize {
    committed
        .iter()
        .filter(|t| lost_at.duration_since(**t) > Duration::from_secs(1))
        .count()
}
