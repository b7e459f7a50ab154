//! The WAL archive: idempotent pushes, no overwrite, verified fetches.

mod common;

use common::*;
use strongbox_repo::{Pushed, Store};

/// The archive the tests push into (the server names one `DOMAIN/DEPLOYMENT`).
const A: &str = "db/one";

fn segment(seed: u8) -> Vec<u8> {
    // WAL-like: mostly compressible, some noise.
    (0..1 << 20)
        .map(|i: u32| {
            if i.is_multiple_of(97) {
                seed ^ (i as u8)
            } else {
                (i / 512) as u8
            }
        })
        .collect()
}

#[tokio::test]
async fn pushes_are_idempotent_never_overwrite_and_fetches_verify() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(Store::local(dir.path()).unwrap()).await;
    let name = "000000010000000000000003";
    let (a, b) = (segment(1), segment(2));

    assert_eq!(repo.wal_fetch(A, name).await.unwrap(), None, "not archived yet");
    let Pushed::Stored { bytes } = repo.wal_push(A, name, &a).await.unwrap() else {
        panic!("first push stores")
    };
    assert!(bytes < a.len() as u64 / 4, "compressed: {bytes} of {}", a.len());
    assert_eq!(repo.wal_push(A, name, &a).await.unwrap(), Pushed::AlreadyArchived);
    let err = repo.wal_push(A, name, &b).await.unwrap_err().to_string();
    assert!(err.contains("different") && err.contains(name), "{err}");
    assert_eq!(
        repo.wal_fetch(A, name).await.unwrap().unwrap(),
        a,
        "the first content stays"
    );

    repo.wal_push(A, "00000002.history", b"1\t0/3000060\tno recovery target specified\n")
        .await
        .unwrap();
    let names: Vec<_> = repo.wal_list(A).await.unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, [name, "00000002.history"]);

    // Another cluster's archive: its own files under the same names.
    repo.wal_push("db/two", name, &b).await.unwrap();
    assert_eq!(repo.wal_fetch("db/two", name).await.unwrap().unwrap(), b);
    assert_eq!(repo.wal_list("db/two").await.unwrap().len(), 1);
    assert_eq!(repo.wal_list(A).await.unwrap().len(), 2, "db/two is not in db/one");
    repo.wal_remove("db/two", &[name.to_string()]).await.unwrap();
    assert!(repo.wal_list("db/two").await.unwrap().is_empty());
    assert_eq!(
        repo.wal_fetch(A, name).await.unwrap().unwrap(),
        a,
        "removal stayed in its archive"
    );
    for bad_archive in ["", "db//x", "../x", "db/.x"] {
        assert!(repo.wal_push(bad_archive, name, b"x").await.is_err(), "{bad_archive:?}");
    }

    for bad in ["", "../x", "a/b", ".hidden", &"9".repeat(65)] {
        assert!(repo.wal_push(A, bad, b"x").await.is_err(), "{bad:?}");
    }

    // A damaged object is an error naming it, never wrong WAL.
    let object = dir.path().join("wal/db/one").join(name);
    let mut raw = std::fs::read(&object).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 1;
    std::fs::write(&object, raw).unwrap();
    let err = repo.wal_fetch(A, name).await.unwrap_err().to_string();
    assert!(err.contains(name), "{err}");
    // An object copied to another name does not pass for it.
    let other = "000000010000000000000004";
    std::fs::copy(
        dir.path().join("wal/db/one/00000002.history"),
        dir.path().join("wal/db/one").join(other),
    )
    .unwrap();
    assert!(repo.wal_fetch(A, other).await.is_err());
}
