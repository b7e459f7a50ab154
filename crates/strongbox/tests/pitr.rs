//! Point-in-time recovery at the engine level: a real cluster archives its
//! WAL into the repository with `strongbox repo … wal-push`, base backups go
//! into the same repository, and recoveries to moments and WAL positions
//! (replaying with `wal-fetch`) hold exactly the rows committed by then.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Archive;
use strongbox_engines::{PgPhysical, PgTarget, SnapshotFiles};
use strongbox_repo::{BackupOptions, Counters, Repository, Snapshot, Store};
use strongbox_testkit::{Cluster, PG_BIN, sh};

/// A quiet moment after row `rows` committed: its time and WAL position.
struct Mark {
    rows: i32,
    at: String,
    lsn: String,
}

async fn base_backup(repo: &Arc<Repository>, engine: &Arc<PgPhysical>, scratch: &std::path::Path) -> Snapshot {
    let (engine, scratch) = (engine.clone(), scratch.to_path_buf());
    let sources = tokio::task::spawn_blocking(move || strongbox_engines::Engine::backup(engine.as_ref(), &scratch))
        .await
        .unwrap()
        .unwrap();
    let options = BackupOptions::default();
    repo.backup_sources(sources, options, Arc::new(Counters::default()))
        .await
        .unwrap()
}

/// Inserts rows `from..=to`, one transaction each, marking a quiet moment
/// after every `every` rows.
fn write(port: u16, from: i32, to: i32, every: i32) -> Vec<Mark> {
    let mut client = postgres::Client::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        postgres::NoTls,
    )
    .unwrap();
    let mut marks = Vec::new();
    for id in from..=to {
        client
            .execute("INSERT INTO ticks VALUES ($1, clock_timestamp())", &[&id])
            .unwrap();
        if id % every == 0 {
            std::thread::sleep(Duration::from_millis(30));
            let row = client
                .query_one("SELECT clock_timestamp()::text, pg_current_wal_lsn()::text", &[])
                .unwrap();
            marks.push(Mark {
                rows: id,
                at: row.get(0),
                lsn: row.get(1),
            });
            std::thread::sleep(Duration::from_millis(30));
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    marks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_to_moments_and_wal_positions_holds_exactly_the_rows_committed_by_then() {
    let dir = tempfile::tempdir().unwrap();
    sh(&format!("chown postgres:postgres {}", dir.path().display()));
    let archive = Archive::new(dir.path());
    let c = Cluster::start(&format!(
        "archive_mode = on\narchive_command = '{}'",
        archive.command("wal-push %p")
    ));
    c.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let repo = Arc::new(
        Repository::open(Store::local(&archive.repo).unwrap(), b"wal-pw")
            .await
            .unwrap(),
    );
    let ctl = |a: &str| format!("runuser -u postgres -- {}", c.ctl(a));
    let engine = Arc::new(
        PgPhysical::from_connection(&serde_json::json!({
            "url": c.url(), "data_dir": c.data, "bin_dir": PG_BIN,
            "stop_command": ctl("stop"), "start_command": ctl("start"),
        }))
        .unwrap(),
    );
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();

    // Base backup 1, writes, base backup 2, more writes.
    let first = base_backup(&repo, &engine, &scratch).await;
    let port = c.port;
    let mut marks = tokio::task::spawn_blocking(move || write(port, 1, 60, 20))
        .await
        .unwrap();
    let second = base_backup(&repo, &engine, &scratch).await;
    marks.extend(
        tokio::task::spawn_blocking(move || write(port, 61, 120, 20))
            .await
            .unwrap(),
    );
    // Everything written so far reaches the archive.
    let last = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    c.wait_archived(&last);
    assert_eq!(marks.len(), 6);

    let restore_command = archive.command("wal-fetch %f %p");
    // Three moments and three WAL positions, before and after backup 2; each
    // recovery starts from the latest base backup before its target.
    let cases: Vec<(PgTarget, i32, &Snapshot)> = vec![
        (
            PgTarget::Time {
                at: marks[0].at.clone(),
                restore_command: restore_command.clone(),
            },
            marks[0].rows,
            &first,
        ),
        (
            PgTarget::Lsn {
                lsn: marks[1].lsn.clone(),
                restore_command: restore_command.clone(),
            },
            marks[1].rows,
            &first,
        ),
        (
            PgTarget::Time {
                at: marks[2].at.clone(),
                restore_command: restore_command.clone(),
            },
            marks[2].rows,
            &first,
        ),
        (
            PgTarget::Lsn {
                lsn: marks[3].lsn.clone(),
                restore_command: restore_command.clone(),
            },
            marks[3].rows,
            &second,
        ),
        (
            PgTarget::Time {
                at: marks[4].at.clone(),
                restore_command: restore_command.clone(),
            },
            marks[4].rows,
            &second,
        ),
        (
            PgTarget::Lsn {
                lsn: marks[5].lsn.clone(),
                restore_command: restore_command.clone(),
            },
            marks[5].rows,
            &second,
        ),
    ];
    for (target, rows, base) in cases {
        let files = SnapshotFiles::new(
            repo.clone(),
            base.clone(),
            tokio::runtime::Handle::current(),
            Arc::new(Counters::default()),
        );
        let engine = engine.clone();
        let t = target.clone();
        let result = tokio::task::spawn_blocking(move || engine.recover_to(&files, &t, &|_| {}))
            .await
            .unwrap();
        result.unwrap_or_else(|e| panic!("{target:?}: {e}\n{}", c.log()));
        assert_eq!(
            c.psql("SELECT count(*) || ' ' || coalesce(max(id), 0) FROM ticks"),
            format!("{rows} {rows}"),
            "{target:?}: exactly the rows committed by then\n{}",
            c.log()
                .lines()
                .filter(|l| l.contains("recovery")
                    || l.contains("restore")
                    || l.contains("timeline")
                    || l.contains("FATAL"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
