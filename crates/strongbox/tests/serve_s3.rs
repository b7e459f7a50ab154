//! The server with its repository on S3 (a real S3 server on loopback):
//! a backup through the API lands in the bucket, and a recovery from it
//! brings the database back.

mod common;

use common::*;

const P: &str = "/paas/service/dbcs/api/v1.1/instances/usexample";

fn count(db: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
}

#[test]
fn a_server_on_an_s3_repository_backs_up_and_recovers() {
    // In process: the test reads the bucket's directory.
    let s3 = strongbox_testkit::s3::S3Server::in_process();
    let dir = tempfile::tempdir().unwrap();
    let mut env = s3.env().to_vec();
    env.push(("STRONGBOX_REPOSITORY", s3.repository("server1")));
    let s = start_with(dir.path(), free_port(), &env);
    let db = dir.path().join("app.db");
    let rows = big_database(&db, 8);
    assert_eq!(s.register_sqlite("app", &db).0, "HTTP/2 200");

    let (status, location) = s.post_backup("app", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    s.wait_for(&location, "Succeeded");
    let packs = walk(&s3.bucket_dir().join("server1/data"));
    assert!(!packs.is_empty(), "no pack in the bucket");
    assert!(
        !dir.path().join("data/repository").exists(),
        "nothing went to the local default"
    );

    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM t WHERE id % 2 = 0", [])
        .unwrap();
    assert!(count(&db) < rows);
    let url = s.url(&format!("{P}/app/backups/recovery"));
    let (status, h, body) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", r#"{"latest": true}"#, &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{body}");
    s.wait_for(header(&h, "location"), "Succeeded");
    assert_eq!(count(&db), rows);
}
