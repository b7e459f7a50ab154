//! PostgreSQL engines against a real cluster that each test creates (see
//! `strongbox-testkit`), so that stopping and starting it touches nothing
//! else on the machine.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::Repo;
use strongbox_engines::engine_for;
use strongbox_testkit::{Cluster, PG_BIN, sh};

/// What these tests ask of a cluster beyond the testkit's.
trait ClusterExt {
    fn dump(&self) -> String;
    fn sums(&self) -> Vec<i64>;
    fn physical(&self) -> Arc<dyn strongbox_engines::Engine>;
}

impl ClusterExt for Cluster {
    /// The pgbench tables' content, in a comparable form.
    fn dump(&self) -> String {
        sh(&format!(
            "{PG_BIN}/pg_dump --data-only --inserts --rows-per-insert=1000 -t 'pgbench_*' -t extra -d {} | \
             grep -v '^--' | grep -v '^SET\\|^SELECT pg_catalog\\|^.restrict\\|^.unrestrict'",
            self.url()
        ))
    }

    /// pgbench's invariant: every transaction adds the same delta to one
    /// account, teller and branch and logs it in history; a transaction-
    /// consistent copy keeps the four sums equal.
    fn sums(&self) -> Vec<i64> {
        self.psql(
            "SELECT (SELECT coalesce(sum(abalance),0) FROM pgbench_accounts) || ',' || \
                    (SELECT coalesce(sum(tbalance),0) FROM pgbench_tellers) || ',' || \
                    (SELECT coalesce(sum(bbalance),0) FROM pgbench_branches) || ',' || \
                    (SELECT coalesce(sum(delta),0) FROM pgbench_history)",
        )
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect()
    }

    fn physical(&self) -> Arc<dyn strongbox_engines::Engine> {
        let ctl = |a: &str| format!("runuser -u postgres -- {}", self.ctl(a));
        engine_for(
            "postgresql",
            &serde_json::json!({
                "url": self.url(),
                "data_dir": self.data,
                "stop_command": ctl("stop"),
                "start_command": ctl("start"),
                "bin_dir": PG_BIN,
            }),
        )
        .unwrap()
        .into()
    }
}

fn pgbench(c: &Cluster, args: &str) {
    sh(&format!("{PG_BIN}/pgbench {args} {} 2>&1", c.url()));
}

/// Dumps compared line by line; a failure shows the first difference only.
fn assert_same(got: &str, want: &str) {
    let first = got.lines().zip(want.lines()).position(|(g, w)| g != w);
    assert!(
        first.is_none() && got.lines().count() == want.lines().count(),
        "the recovered data differs from the backup's at line {first:?}: {:?} vs {:?} ({} vs {} lines)",
        first.and_then(|i| got.lines().nth(i)),
        first.and_then(|i| want.lines().nth(i)),
        got.lines().count(),
        want.lines().count()
    );
}

/// Nothing of the recovery stays beside the data directory (the old one
/// is removed in the background once the recovered one serves).
fn no_leftovers(data: &Path) {
    let parent = data.parent().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let names: Vec<_> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("strongbox"))
            .collect();
        if names.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {names:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_backup_under_load_then_recovery_in_place() {
    let c = Cluster::start("");
    pgbench(&c, "-i -q -s 5");
    let repo = Repo::new().await;
    let engine = c.physical();

    // Backup 1 while pgbench writes through 2 clients.
    let load = {
        let url = c.url();
        std::thread::spawn(move || sh(&format!("{PG_BIN}/pgbench -n -c 2 -T 8 {url}")))
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    let under_load = repo.backup(engine.clone()).await.unwrap();
    load.join().unwrap();
    let history_after_load: i64 = c.psql("SELECT count(*) FROM pgbench_history").parse().unwrap();

    // Backup 2 at rest: its consistency point is exactly the data now.
    let at_rest = repo.backup(engine.clone()).await.unwrap();
    let expected = c.dump();
    let second = at_rest.totals.new_bytes_stored as f64 / at_rest.totals.logical_bytes as f64;
    assert!(
        second < 0.2,
        "the second base backup reuses the first's chunks: {second:.3} new"
    );

    // More writes, then recovery from the backup at rest ("latest").
    pgbench(&c, "-n -t 300");
    c.psql("CREATE TABLE extra AS SELECT generate_series(1, 1000) AS n");
    assert_ne!(c.dump(), expected);
    assert!(expected.lines().count() > 1000, "the dump holds the data");
    let (result, log) = repo.recover(engine.clone(), &at_rest).await;
    let summary = result.unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    assert!(summary.contains("answers queries"), "{summary}");
    assert!(log.iter().any(|l| l.contains("recovered one in place")), "{log:?}");
    assert_same(&c.dump(), &expected);
    assert_eq!(c.psql("SELECT to_regclass('extra') IS NULL"), "t");
    // Promoted to a new timeline: its WAL cannot collide with the old history's.
    let timeline = c.psql("SELECT timeline_id FROM pg_control_checkpoint()");
    assert_eq!(
        (c.psql("SELECT pg_is_in_recovery()"), timeline.as_str()),
        ("f".to_string(), "2")
    );
    no_leftovers(&c.data);

    // Recovery from the backup taken under load ("tag"): a transaction-
    // consistent state from during the load.
    let (result, _) = repo.recover(engine.clone(), &under_load).await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let sums = c.sums();
    assert!(sums.iter().all(|s| *s == sums[0]), "pgbench sums disagree: {sums:?}");
    let history: i64 = c.psql("SELECT count(*) FROM pgbench_history").parse().unwrap();
    assert!(
        history > 0 && history < history_after_load,
        "a state from during the load: {history} of {history_after_load} transactions"
    );
    assert_eq!(c.psql("SELECT count(*) FROM pgbench_accounts"), "500000");
    no_leftovers(&c.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_recovery_that_cannot_start_puts_the_old_data_back() {
    let c = Cluster::start("");
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 100) AS n");
    let repo = Repo::new().await;
    let snap = repo.backup(c.physical()).await.unwrap();
    c.psql("INSERT INTO t SELECT generate_series(101, 150)");
    // A start command that fails for the recovered data directory only: the
    // engine must restore the old directory and start the server on it.
    let marker = c.data.parent().unwrap().join("first-start-fails");
    std::fs::write(&marker, "").unwrap();
    let start = format!(
        "if [ -e {m} ]; then rm {m}; echo 'simulated start failure' >&2; exit 1; fi; runuser -u postgres -- {}",
        c.ctl("start"),
        m = marker.display()
    );
    let engine: Arc<dyn strongbox_engines::Engine> = engine_for(
        "postgresql",
        &serde_json::json!({
            "url": c.url(), "data_dir": c.data, "bin_dir": PG_BIN,
            "stop_command": format!("runuser -u postgres -- {}", c.ctl("stop")),
            "start_command": start,
        }),
    )
    .unwrap()
    .into();
    let (result, _) = repo.recover(engine, &snap).await;
    let err = result.unwrap_err();
    assert!(
        err.contains("simulated start failure") && err.contains("old data directory was put back"),
        "{err}"
    );
    assert_eq!(c.psql("SELECT count(*) FROM t"), "150", "the old data, served again");
    no_leftovers(&c.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_dump_and_restore_of_one_database_with_a_password_kept_secret() {
    let c = Cluster::start("");
    c.psql("CREATE ROLE app LOGIN PASSWORD 's3cret-pw' SUPERUSER");
    c.psql("CREATE DATABASE shop OWNER app");
    let url = format!("postgresql://app:s3cret-pw@127.0.0.1:{}/shop", c.port);
    let shop = |sql: &str| {
        sh(&format!(
            "{PG_BIN}/psql -X -A -t -v ON_ERROR_STOP=1 -d {url} -c \"{sql}\""
        ))
        .trim()
        .to_string()
    };
    shop(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric); INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 5000) g",
    );
    let engine: Arc<dyn strongbox_engines::Engine> = engine_for(
        "postgresql-logical",
        &serde_json::json!({"url": url, "bin_dir": PG_BIN}),
    )
    .unwrap()
    .into();
    let repo = Repo::new().await;
    let snap = repo.backup(engine.clone()).await.unwrap();
    shop("DELETE FROM orders WHERE id > 100; CREATE TABLE later (x int)");
    let (result, _) = repo.recover(engine.clone(), &snap).await;
    result.unwrap();
    assert_eq!(
        shop("SELECT count(*) || ' ' || sum(total) FROM orders"),
        "5000 18753750.0"
    );
    assert_eq!(
        shop("SELECT to_regclass('later') IS NULL"),
        "f",
        "--clean drops only what the dump holds"
    );

    // A failing dump fails the backup, and the message hides the password.
    let wrong: Arc<dyn strongbox_engines::Engine> = engine_for(
        "postgresql-logical",
        &serde_json::json!({"url": format!("postgresql://app:s3cret-pw@127.0.0.1:{}/nosuchdb", c.port), "bin_dir": PG_BIN}),
    )
    .unwrap()
    .into();
    let err = repo.backup(wrong).await.unwrap_err();
    assert!(err.contains("pg_dump failed") && err.contains("nosuchdb"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");
}
