//! The WAL archive: idempotent pushes, no overwrite, verified fetches —
//! also on a store that ignores create-only puts, where racing pushes of
//! different content under one name never both succeed.

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
    archive_suite(Store::local(dir.path()).unwrap(), dir.path()).await;
    let dir = tempfile::tempdir().unwrap();
    archive_suite(ignores_create(dir.path()), dir.path()).await;
}

async fn archive_suite(store: Store, dir: &std::path::Path) {
    let repo = new_repo(store).await;
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
    let object = dir.join("wal/db/one").join(name);
    let mut raw = std::fs::read(&object).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 1;
    std::fs::write(&object, raw).unwrap();
    let err = repo.wal_fetch(A, name).await.unwrap_err().to_string();
    assert!(err.contains(name), "{err}");
    // An object copied to another name does not pass for it.
    let other = "000000010000000000000004";
    std::fs::copy(
        dir.join("wal/db/one/00000002.history"),
        dir.join("wal/db/one").join(other),
    )
    .unwrap();
    assert!(repo.wal_fetch(A, other).await.is_err());
}

/// Pushes of different content under one name racing from many writers
/// (separate repository handles, as separate `wal-push` processes) on a
/// store that ignores create-only puts: whatever one was told "stored" is
/// what the archive holds, and no other was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_pushes_never_both_succeed_where_the_store_ignores_create_only_puts() {
    let dir = tempfile::tempdir().unwrap();
    new_repo(ignores_create(dir.path())).await;
    for round in 0..20u8 {
        let name = format!("0000000100000000000000{round:02X}");
        let pushes: Vec<_> = (0..4u8)
            .map(|w| {
                let (dir, name) = (dir.path().to_path_buf(), name.clone());
                tokio::spawn(async move {
                    let repo = strongbox_repo::Repository::open(ignores_create(&dir), PASSWORD)
                        .await
                        .unwrap();
                    let data = segment(w.wrapping_add(round.wrapping_mul(7)));
                    (repo.wal_push(A, &name, &data).await, data)
                })
            })
            .collect();
        let mut stored = Vec::new();
        for p in pushes {
            let (result, data) = p.await.unwrap();
            if let Ok(Pushed::Stored { .. }) = result {
                stored.push(data);
            }
        }
        assert!(stored.len() <= 1, "round {round}: {} pushes told stored", stored.len());
        let repo = strongbox_repo::Repository::open(ignores_create(dir.path()), PASSWORD)
            .await
            .unwrap();
        if let Some(won) = stored.pop() {
            assert_eq!(repo.wal_fetch(A, &name).await.unwrap().unwrap(), won, "round {round}");
        }
    }
}

/// A streamed copy with pieces stored after it (synchronous streaming):
/// read back spliced, as far as the pieces follow on without a gap (an
/// overlap is the same WAL); listings show the copy alone; a new copy read
/// with the pieces it holds already is the same; removing the copy removes
/// its pieces.
#[tokio::test]
async fn a_streamed_copy_is_read_with_its_pieces_spliced_on() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(Store::local(dir.path()).unwrap()).await;
    let name = "000000010000000000000007";
    let copy = format!("{name}{}", strongbox_repo::STREAMED_TAIL);
    let wal = segment(3);
    repo.wal_put_streamed(A, name, &wal[..1000]).await.unwrap();
    repo.wal_put_streamed_piece(A, name, 1000, &wal[1000..1500])
        .await
        .unwrap();
    // Overlapping what is stored already.
    repo.wal_put_streamed_piece(A, name, 1200, &wal[1200..4000])
        .await
        .unwrap();
    assert_eq!(repo.wal_fetch(A, &copy).await.unwrap().unwrap(), &wal[..4000]);
    // A gap: what follows it is not used.
    repo.wal_put_streamed_piece(A, name, 5000, &wal[5000..6000])
        .await
        .unwrap();
    assert_eq!(repo.wal_fetch(A, &copy).await.unwrap().unwrap(), &wal[..4000]);
    assert_eq!(
        repo.wal_fetch_for_replay(A, name).await.unwrap(),
        Some((wal[..4000].to_vec(), true))
    );
    let listed: Vec<String> = repo.wal_list(A).await.unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(listed, std::slice::from_ref(&copy));
    // A newer copy holding more than the pieces.
    repo.wal_put_streamed(A, name, &wal[..4500]).await.unwrap();
    assert_eq!(repo.wal_fetch(A, &copy).await.unwrap().unwrap(), &wal[..4500]);
    repo.wal_remove(A, std::slice::from_ref(&copy)).await.unwrap();
    assert_eq!(repo.wal_fetch(A, &copy).await.unwrap(), None);
    let left: Vec<_> = walk(&dir.path().join("wal"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(left.is_empty(), "pieces left after their copy was removed: {left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
