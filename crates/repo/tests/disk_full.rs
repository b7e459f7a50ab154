//! Issue 30: the repository's disk full (a real tmpfs, mounted by the test
//! as root) for what `strongbox/tests/store_faults.rs` (a backup) does not
//! cover: a WAL push and a prune fail saying so once, naming the object;
//! restores and WAL fetches still work (the day the disk is full may be
//! the day a recovery is needed); the repository checks clean; prune frees
//! what was forgotten given a few KiB; once there is room, the push goes
//! through.

mod common;

use strongbox_testkit::Tmpfs;

use common::*;
use strongbox_repo::{Error, PruneOptions, StorageFailure, Store};

fn digest(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

/// The error is the disk-full one, and says it once.
fn full(e: &Error, what: &str) {
    let words = e.to_string();
    println!("{what}: {words}");
    assert!(
        matches!(
            e,
            Error::Storage {
                kind: StorageFailure::DiskFull,
                ..
            }
        ),
        "{what}: {e:?}"
    );
    assert!(words.starts_with("the repository's disk is full ("), "{what}: {words}");
    assert_eq!(words.matches("no space left on device").count(), 1, "{what}: {words}");
}

#[tokio::test]
async fn a_full_disk_fails_wal_pushes_and_prune_once_said_and_restores_still_work() {
    let root = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&root.path().join("disk"), "32m");
    let repo = new_repo(Store::local(&disk.0.join("repository")).unwrap()).await;
    let (old, kept) = (data(3_000_000, 1), data(3_000_000, 2));
    let old_snap = backup(&repo, &[("db", &old)]).await;
    let kept_snap = backup(&repo, &[("db", &kept)]).await;
    let segment = |n: u64| data(1 << 20, 100 + n);
    let name = |n: u64| format!("0000000100000000000000{n:02X}");
    repo.wal_push("main", &name(1), &segment(1)).await.unwrap();

    let filler = disk.fill("filler");
    full(
        &repo.wal_push("main", &name(2), &segment(2)).await.unwrap_err(),
        "WAL push",
    );

    // A full disk does not stop a recovery.
    assert_eq!(digest(&restore(&repo, &old_snap, "db").await), digest(&old));
    assert_eq!(digest(&restore(&repo, &kept_snap, "db").await), digest(&kept));
    let fetched = repo.wal_fetch("main", &name(1)).await.unwrap().unwrap();
    assert_eq!(digest(&fetched), digest(&segment(1)));
    assert_eq!(
        repo.wal_fetch("main", &name(2)).await.unwrap(),
        None,
        "no half-pushed segment"
    );

    // Prune on a disk full to the last page fails, said once, and
    // damages nothing; given the few KiB its lock and plan take (here the
    // forgotten snapshot's), it frees the space of what was forgotten.
    repo.forget(&[old_snap.id]).await.unwrap();
    let last_pages = disk.fill("last pages");
    full(&repo.prune(&PruneOptions::default()).await.unwrap_err(), "prune");
    let check = repo.check(true).await.unwrap();
    assert!(check.is_ok(), "{:?}", check.errors);
    assert_eq!(digest(&restore(&repo, &kept_snap, "db").await), digest(&kept));
    std::fs::remove_file(last_pages).unwrap();
    let pruned = repo.prune(&PruneOptions::default()).await.unwrap();
    println!("pruned on a full disk: {pruned:?}");
    assert!(
        pruned.packs_deleted > 0 && pruned.bytes_deleted > 1_000_000,
        "{pruned:?}"
    );
    assert_eq!(repo.snapshot_ids().await.unwrap(), vec![kept_snap.id]);
    let check = repo.check(true).await.unwrap();
    assert!(check.is_ok(), "{:?}", check.errors);
    assert_eq!(digest(&restore(&repo, &kept_snap, "db").await), digest(&kept));

    // Room again: the push that failed goes through.
    std::fs::remove_file(filler).unwrap();
    repo.wal_push("main", &name(2), &segment(2)).await.unwrap();
    let fetched = repo.wal_fetch("main", &name(2)).await.unwrap().unwrap();
    assert_eq!(digest(&fetched), digest(&segment(2)));
}
