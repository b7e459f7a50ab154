//! Point-in-time recovery of SQLite through the API (issue 15): with
//! continuous archiving on, the server ships the database's log as it is
//! written; recoveries to a second, to `latest`, after writes on a
//! recovered database, after a SIGKILL of the server with the database
//! file lost, each compared with the rows that must be there.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;

const P: &str = "/paas/service/dbcs/api/v1.1/instances/usexample/app";

fn insert(c: &rusqlite::Connection, ns: impl IntoIterator<Item = i64>) {
    for n in ns {
        c.execute("INSERT INTO t VALUES (?1, randomblob(300))", [n]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Server {
    /// A recovery that must be accepted, replay the shipped log and
    /// succeed. The base backup a recovery queues after itself (for the
    /// recovered history) may hold the deployment for a moment: 409, asked
    /// again.
    fn recover_to(&self, body: &str) -> serde_json::Value {
        let url = self.url(&format!("{P}/backups/recovery"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let (status, h, text) = loop {
            let (status, h, text) = self.curl(&[&AUTH[..], &["-X", "POST", "-d", body, &url]].concat());
            if status != "HTTP/2 409" || Instant::now() > deadline {
                break (status, h, text);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status, "HTTP/2 202", "{body}: {text}");
        let job = self.wait_for(header(&h, "location"), "Succeeded");
        let id = job["job_id"].as_i64().unwrap();
        let (_, log) = self.json(&[&self.url(&format!("/paas/api/v1.1/activitylog/usexample/job/{id}"))]);
        assert!(log.to_string().contains("replayed to transaction"), "{log}");
        job
    }

    fn completed_backups(&self) -> usize {
        let (_, v) = self.json(&[&self.url(&format!("{P}/backups"))]);
        v["backupList"]
            .as_array()
            .map(|l| l.iter().filter(|b| b["status"] == "COMPLETED").count())
            .unwrap_or(0)
    }

    /// Waits for the base backup the shipper asks for.
    fn wait_for_bases(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.completed_backups() < n {
            assert!(Instant::now() < deadline, "no base backup");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn recover_sqlite_to_seconds_latest_and_after_the_server_is_killed_and_the_file_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir);
    let db = dir.path().join("app.sqlite");
    let app = rusqlite::Connection::open(&db).unwrap();
    app.busy_timeout(Duration::from_secs(30)).unwrap();
    app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER PRIMARY KEY, pad BLOB)")
        .unwrap();
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");

    // Before archiving is on, a moment between backups is refused as before.
    let (status, v) = s.archive_continuously("app");
    assert_eq!(
        (status.as_str(), &v["continuousArchiving"]),
        ("HTTP/2 200", &serde_json::json!(true)),
        "{v}"
    );
    // The shipper asks for its first base: a backup, initiated by the system.
    s.wait_for_bases(1);
    let before_writes = mark();
    let (_, v) = s.json(&[&s.url(P)]);
    let shipping = &v["continuousArchiving"];
    assert_eq!(shipping["shipping"], true, "{v}");
    assert!(shipping["generation"].is_string(), "{v}");
    assert!(shipping["lagSeconds"].as_f64().unwrap() < 1.0, "{v}");
    assert_eq!(shipping["ranges"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(shipping["ranges"][0]["latest"], "now", "{v}");

    insert(&app, 1..=50);
    let t1 = mark();
    insert(&app, 51..=100);
    app.execute("DELETE FROM t WHERE n % 10 = 0", []).unwrap();
    let after_100: BTreeSet<i64> = (1..=100).filter(|n| n % 10 != 0).collect();
    let t2 = mark();
    insert(&app, 101..=150);

    // To a second: exactly what was committed by then; the application's
    // connection stays open throughout and sees it.
    s.recover_to(&format!(r#"{{"timestamp": "{t1}"}}"#));
    assert_eq!(sqlite_rows(&db), (1..=50).collect());
    let held: i64 = app.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(held, 50, "the open connection sees the recovered rows");
    s.recover_to(&format!(r#"{{"timestamp": "{t2}"}}"#));
    assert_eq!(sqlite_rows(&db), after_100);
    s.recover_to(&format!(r#"{{"timestamp": "{before_writes}"}}"#));
    assert!(sqlite_rows(&db).is_empty());

    // Writes on the recovered database, then latest: they are there.
    insert(&app, 1001..=1020);
    s.recover_to(r#"{"latest": true}"#);
    assert_eq!(sqlite_rows(&db), (1001..=1020).collect());

    // A moment before the first base is refused, naming the range.
    let (status, v) = s.json(&[
        "-X",
        "POST",
        "-d",
        r#"{"timestamp": "01-Jan-2020 00:00:00"}"#,
        &s.url(&format!("{P}/backups/recovery")),
    ]);
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(v["message"].as_str().unwrap().contains("covers from"), "{v}");

    // Positions: GENERATION:N (the model test recovers them); others are
    // refused with what to write instead.
    let (_, v) = s.json(&[&s.url(P)]);
    let range = &v["continuousArchiving"]["ranges"][0];
    let (generation, _) = range["earliestScn"].as_str().unwrap().split_once(':').unwrap();
    assert_eq!(range["earliestScn"], format!("{generation}:0"), "{v}");
    for (scn, says) in [
        ("0/3000060", "GENERATION:N"),
        ("0190f3c2a1b2c3d4:5", "cannot be recovered"),
        (&format!("{generation}:999999"), "cannot be recovered"),
        (&format!("{generation}:x"), "GENERATION:N"),
    ] {
        let (status, v) = s.json(&[
            "-X",
            "POST",
            "-d",
            &format!(r#"{{"scn": "{scn}"}}"#),
            &s.url(&format!("{P}/backups/recovery")),
        ]);
        assert_eq!(status, "HTTP/2 400", "{scn}: {v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{scn}: {v}");
    }

    // The server killed while the application writes, then the database
    // lost: latest brings back a prefix of the writes holding every one
    // committed more than a second before the kill.
    insert(&app, 2001..=2100);
    let before = sqlite_rows(&db);
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (db, writing) = (db.clone(), writing.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(30)).unwrap();
            let mut committed = Vec::new();
            for n in 3001.. {
                if !writing.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                c.execute("INSERT INTO t VALUES (?1, randomblob(300))", [n]).unwrap();
                committed.push((n, Instant::now()));
                std::thread::sleep(Duration::from_millis(5));
            }
            committed
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    s.child.kill().unwrap();
    let killed = Instant::now();
    s.child.wait().unwrap();
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let committed = writer.join().unwrap();
    drop(app);
    std::fs::remove_file(&db).unwrap();
    for suffix in ["-wal", "-shm"] {
        // Gone already if the application's close checkpointed them away.
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    s = start_in(dir.path(), s.port);
    s.recover_to(r#"{"latest": true}"#);
    let recovered = sqlite_rows(&db);
    let kept: Vec<i64> = recovered.iter().copied().filter(|n| *n > 3000).collect();
    assert_eq!(
        kept,
        (3001..3001 + kept.len() as i64).collect::<Vec<_>>(),
        "a prefix of the writes"
    );
    assert_eq!(recovered.len() - kept.len(), before.len());
    assert!(before.iter().all(|n| recovered.contains(n)));
    let must = committed
        .iter()
        .filter(|(_, at)| killed.duration_since(*at) > Duration::from_secs(1))
        .count();
    let lost_ms = committed
        .get(kept.len())
        .map_or(0, |(_, at)| killed.duration_since(*at).as_millis());
    println!(
        "kill: {} of {} writes recovered; the first lost one was committed {lost_ms} ms before the kill",
        kept.len(),
        committed.len()
    );
    assert!(
        kept.len() >= must,
        "{} recovered, {must} were committed a second before the kill",
        kept.len()
    );
    // The recovery ended the killed server's generation, and the base of
    // the recovered history began the next: every stretch but the last is
    // closed, the last reaches the present.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = s.json(&[&s.url(P)]);
        let ranges = v["continuousArchiving"]["ranges"].as_array().unwrap().clone();
        if ranges.last().is_some_and(|r| r["latest"] == "now") {
            assert!(ranges[..ranges.len() - 1].iter().all(|r| r["latest"] != "now"), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Two shipped objects in the new generation, then `repo check`.
    let app = rusqlite::Connection::open(&db).unwrap();
    insert(&app, 5001..=5010);
    std::thread::sleep(Duration::from_millis(800));
    insert(&app, 5011..=5020);
    std::thread::sleep(Duration::from_millis(800));
    let check = |s: &Server| {
        let out = s.repo_cli(&["check", "--read-data"]);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    // The generations that shipped anything (a recovery's base may be
    // followed by none before the next recovery).
    let with_objects = |s: &Server| {
        let (_, v) = s.json(&[&s.url(P)]);
        v["continuousArchiving"]["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !r["latestScn"].as_str().unwrap().ends_with(":0"))
            .count()
    };
    let shipped = with_objects(&s);
    assert!(shipped >= 2, "the killed server's and the new one");
    let (ok, text) = check(&s);
    assert!(
        ok && text.contains(&format!("{shipped} shipped SQLite generations: no errors")),
        "{text}"
    );

    // Retention: the first base backup deleted takes its generation's
    // shipped log with it; its moments are refused, naming what is left.
    let (_, list) = s.json(&[&s.url(&format!("{P}/backups"))]);
    let oldest = list["backupList"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "COMPLETED")
        .map(|b| b["dbTag"].as_str().unwrap().to_string())
        .min()
        .unwrap();
    s.delete_backup("app", &oldest);
    let (ok, text) = check(&s);
    assert!(
        ok && text.contains(&format!("{} shipped SQLite generations: no errors", shipped - 1)),
        "{text}"
    );
    let (status, v) = s.json(&[
        "-X",
        "POST",
        "-d",
        &format!(r#"{{"timestamp": "{t1}"}}"#),
        &s.url(&format!("{P}/backups/recovery")),
    ]);
    assert_eq!(status, "HTTP/2 400", "{v}");
    assert!(v["message"].as_str().unwrap().contains("covers from"), "{v}");

    // A shipped object lost: check names the transactions missing.
    let folder = dir.path().join("data/repository/wal/usexample/app");
    let mut objects: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
    objects.sort();
    // The first object of a generation that has a later one (objects are
    // named GENERATION-FIRST-LAST).
    let generation = |p: &std::path::Path| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .split('-')
            .next()
            .unwrap()
            .to_string()
    };
    let first = objects
        .windows(2)
        .find(|w| generation(&w[0]) == generation(&w[1]))
        .map(|w| w[0].clone())
        .unwrap_or_else(|| panic!("no generation with two objects: {objects:?}"));
    std::fs::remove_file(&first).unwrap();
    let (ok, text) = check(&s);
    assert!(!ok && text.contains("are missing"), "{text}");
}
