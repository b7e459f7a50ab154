//! The WAL archive: idempotent pushes, no overwrite, verified fetches.

mod common;

use common::*;
use strongbox_repo::{Pushed, Store};

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

    assert_eq!(repo.wal_fetch(name).await.unwrap(), None, "not archived yet");
    let Pushed::Stored { bytes } = repo.wal_push(name, &a).await.unwrap() else {
        panic!("first push stores")
    };
    assert!(bytes < a.len() as u64 / 4, "compressed: {bytes} of {}", a.len());
    assert_eq!(repo.wal_push(name, &a).await.unwrap(), Pushed::AlreadyArchived);
    let err = repo.wal_push(name, &b).await.unwrap_err().to_string();
    assert!(err.contains("different") && err.contains(name), "{err}");
    assert_eq!(
        repo.wal_fetch(name).await.unwrap().unwrap(),
        a,
        "the first content stays"
    );

    repo.wal_push("00000002.history", b"1\t0/3000060\tno recovery target specified\n")
        .await
        .unwrap();
    let names: Vec<_> = repo.wal_list().await.unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, [name, "00000002.history"]);

    for bad in ["", "../x", "a/b", ".hidden", &"9".repeat(65)] {
        assert!(repo.wal_push(bad, b"x").await.is_err(), "{bad:?}");
    }

    // A damaged object is an error naming it, never wrong WAL.
    let object = dir.path().join("wal").join(name);
    let mut raw = std::fs::read(&object).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 1;
    std::fs::write(&object, raw).unwrap();
    let err = repo.wal_fetch(name).await.unwrap_err().to_string();
    assert!(err.contains(name), "{err}");
    // An object copied to another name does not pass for it.
    let other = "000000010000000000000004";
    std::fs::copy(
        dir.path().join("wal/00000002.history"),
        dir.path().join("wal").join(other),
    )
    .unwrap();
    assert!(repo.wal_fetch(other).await.is_err());
}
