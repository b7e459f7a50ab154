//! The command engine with MariaDB's own tools against the MariaDB server
//! on this machine (127.0.0.1:3306, root): dump, change, recover, compare.

mod common;

use std::sync::Arc;

use common::Repo;
use strongbox_engines::{Engine, engine_for};
use strongbox_testkit::sh;

fn maria(db: &str, sql: &str) -> String {
    sh(&format!("mariadb -h 127.0.0.1 -u root -N -B {db} -e \"{sql}\""))
        .trim()
        .to_string()
}

fn dump(db: &str) -> String {
    sh(&format!(
        "mariadb-dump -h 127.0.0.1 -u root --skip-dump-date --order-by-primary {db}"
    ))
}

fn engine(c: serde_json::Value) -> Arc<dyn Engine> {
    engine_for("command", &c).unwrap().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_dump_change_recover_compare() {
    let db = format!("strongbox_test_{}", std::process::id());
    maria("", &format!("DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}"));
    maria(
        &db,
        "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(40), total DECIMAL(10,2)); \
         INSERT INTO orders SELECT seq, CONCAT('customer ', seq % 97), seq * 1.25 FROM seq_1_to_20000",
    );
    let before = dump(&db);
    let engine = engine(serde_json::json!({
        "backup_command": format!("mariadb-dump -h 127.0.0.1 -u root --single-transaction {db}"),
        "recovery_command": format!("mariadb -h 127.0.0.1 -u root {db}"),
        "env": {"MYSQL_PWD": ""},
    }));
    let repo = Repo::new().await;
    let snap = repo.backup(engine.clone()).await.unwrap();

    maria(
        &db,
        "DELETE FROM orders WHERE id % 2 = 0; UPDATE orders SET total = 0 WHERE id < 100; CREATE TABLE later (x INT)",
    );
    assert_ne!(dump(&db), before);
    let (result, log) = repo.recover(engine, &snap).await;
    result.unwrap();
    assert!(log.iter().any(|l| l.contains("verified")), "{log:?}");
    // The dump restores its own tables; a table created later stays.
    maria(&db, "DROP TABLE later");
    assert_eq!(dump(&db), before, "the database as backed up");
    assert_eq!(
        maria(&db, "SELECT COUNT(*), SUM(total) FROM orders"),
        "20000\t250012500.00"
    );
    maria("", &format!("DROP DATABASE {db}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_commands_fail_the_job_with_their_stderr_and_no_secret() {
    let repo = Repo::new().await;
    let failing = engine(serde_json::json!({
        "backup_command": "mariadb-dump -h 127.0.0.1 -u nobody_here --password=\"$DB_PW\" nosuchdb",
        "recovery_command": "cat >/dev/null",
        "env": {"DB_PW": "pw-that-must-not-show"},
    }));
    let err = repo.backup(failing).await.unwrap_err();
    assert!(err.contains("the backup command failed"), "{err}");
    assert!(err.contains("nobody_here"), "the tool's own words: {err}");
    assert!(!err.contains("pw-that-must-not-show"), "{err}");

    // A recovery command that rejects its input fails the recovery.
    let ok_backup = engine(serde_json::json!({
        "backup_command": "echo 'SELEC broken;'",
        "recovery_command": "mariadb -h 127.0.0.1 -u root",
    }));
    let snap = repo.backup(ok_backup.clone()).await.unwrap();
    let (result, _) = repo.recover(ok_backup, &snap).await;
    let err = result.unwrap_err();
    assert!(
        err.contains("the recovery command failed") && err.contains("SQL syntax"),
        "{err}"
    );
}
