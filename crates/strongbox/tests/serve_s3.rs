//! The server with its repository on S3 (a real S3 server on loopback):
//! a backup through the API lands in the bucket, and a recovery from it
//! brings the database back.

use crate::common::*;

const P: &str = "/paas/service/dbcs/api/v1.1/instances/usexample";

#[test]
fn a_server_on_an_s3_repository_backs_up_and_recovers() {
    // In process: the test reads the bucket's directory.
    let s3 = strongbox_testkit::s3::S3Server::in_process();
    let dir = tempfile::tempdir().unwrap();
    let mut env = s3.env().to_vec();
    env.push(("STRONGBOX_REPOSITORY", s3.repository("server1")));
    let s = start_with(dir.path(), free_port(), &env);
    let db = dir.path().join("app.db");
    big_database(&db, 8);
    let at_backup = sqlite_checksum(&db);
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
    assert_ne!(sqlite_checksum(&db), at_backup);
    let url = s.url(&format!("{P}/app/backups/recovery"));
    let (status, h, body) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", r#"{"latest": true}"#, &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{body}");
    s.wait_for(header(&h, "location"), "Succeeded");
    assert_eq!(
        sqlite_checksum(&db),
        at_backup,
        "the backed-up rows, exactly (ordered checksum)"
    );
}
