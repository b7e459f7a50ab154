//! One suite, every backend: memory, local disk, and a real S3 server.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use object_store::path::Path;
use strongbox_repo::{Counters, Error, NoProgress, Repository, Source};

async fn store_semantics(b: &Backend) {
    let store = b.store();
    let honours = !matches!(b, Backend::IgnoresCreate(_));
    assert_eq!(store.honours_create().await.unwrap(), honours, "{}", b.name());
    let p = Path::from("index/aa");
    assert!(
        store.put_new(&p, Bytes::from_static(b"first")).await.unwrap(),
        "{}",
        b.name()
    );
    if honours {
        // Create-only: a second write is refused and changes nothing.
        assert!(
            !store.put_new(&p, Bytes::from_static(b"second")).await.unwrap(),
            "{}",
            b.name()
        );
    }
    assert!(store.list("claims").await.unwrap().is_empty(), "the probe cleans up");
    // An exclusive create never replaces, whatever the store.
    let config = Path::from("config");
    assert!(
        store
            .create_exclusive(&config, Bytes::from_static(b"one"), "c1")
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_exclusive(&config, Bytes::from_static(b"two"), "c2")
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(&config).await.unwrap(),
        Bytes::from_static(b"one"),
        "{}",
        b.name()
    );
    store.delete_exclusive(&config).await.unwrap();
    assert!(store.list("claims").await.unwrap().is_empty(), "{}", b.name());
    assert!(
        store
            .create_exclusive(&config, Bytes::from_static(b"two"), "c2")
            .await
            .unwrap()
    );
    store.delete_exclusive(&config).await.unwrap();
    let p = Path::from("index/aa");
    assert_eq!(
        store.get(&p).await.unwrap(),
        Bytes::from_static(b"first"),
        "{}",
        b.name()
    );
    assert_eq!(store.get_range(&p, 1..3).await.unwrap(), Bytes::from_static(b"ir"));
    store
        .put_new(&Path::from("index/bb"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    store
        .put_new(&Path::from("data/00/cc"), Bytes::from_static(b"y"))
        .await
        .unwrap();
    let mut listed: Vec<String> = store
        .list("index")
        .await
        .unwrap()
        .iter()
        .map(|m| m.location.to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, ["index/aa", "index/bb"], "{}", b.name());
    assert_eq!(store.list("data").await.unwrap().len(), 1);
    store.delete(&p).await.unwrap();
    store.delete(&p).await.unwrap(); // deleting what is gone is fine
    assert!(
        matches!(store.get(&p).await, Err(Error::Missing { .. })),
        "{}",
        b.name()
    );
}

async fn repository_round_trip(b: &Backend) {
    let repo = new_repo(b.store()).await;
    let big = data(3_000_000, 1);
    let small = data(10_000, 2);
    let counters = Arc::new(Counters::default());
    let s1 = repo
        .backup(
            vec![
                Source::new("db/main.sqlite", std::io::Cursor::new(big.clone())),
                Source::new("empty", std::io::empty()),
                Source::new("small", std::io::Cursor::new(small.clone())),
            ],
            Default::default(),
            counters.clone(),
        )
        .await
        .unwrap();
    assert_eq!(s1.totals.logical_bytes, 3_010_000);
    assert_eq!(counters.read.load(std::sync::atomic::Ordering::Relaxed), 3_010_000);
    assert!(
        s1.totals.new_bytes_stored < 3_010_000 / 2,
        "text compresses: {:?}",
        s1.totals
    );
    assert_eq!(restore(&repo, &s1, "db/main.sqlite").await, big, "{}", b.name());
    assert_eq!(restore(&repo, &s1, "empty").await, b"");
    assert_eq!(restore(&repo, &s1, "small").await, small);

    // Same data again: nothing new stored.
    let s2 = backup(&repo, &[("db/main.sqlite", &big)]).await;
    assert_eq!(s2.totals.new_chunks, 0, "{}", b.name());

    // Reopen with the password: same snapshots, parallel restore to a file.
    let first = repo;
    let repo = Repository::open(b.store_again(&first), PASSWORD).await.unwrap();
    assert_eq!(repo.snapshots().await.unwrap().len(), 2);
    // The first handle has cached the index objects it read; what the
    // second one writes since is still found (nothing stored twice).
    let fresh = data(500_000, 3);
    backup(&repo, &[("fresh", &fresh)]).await;
    let again = backup(&first, &[("fresh", &fresh)]).await;
    assert_eq!(again.totals.new_chunks, 0, "{}", b.name());
    first.forget(&[again.id]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    repo.restore_all(&s1, dir.path(), &NoProgress).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("db/main.sqlite")).unwrap(), big);
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok(), "{}: {:?}", b.name(), report.errors);
    assert_eq!(report.snapshots, 3);
}

/// Two writers (separate handles, as separate processes) backing up data
/// that shares most of its chunks, at the same time: both snapshots
/// restore exactly and every pack reads back whole.
async fn overlapping_backups(b: &Backend) {
    let repo = new_repo(b.store()).await;
    let shared = data(2_000_000, 11);
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let store = b.store_again(&repo);
            let mut content = shared.clone();
            content.extend(data(300_000, 20 + w));
            tokio::spawn(async move {
                let repo = Repository::open(store, PASSWORD).await.unwrap();
                let snap = backup(&repo, &[("db", &content)]).await;
                (snap, content)
            })
        })
        .collect();
    for w in writers {
        let (snap, content) = w.await.unwrap();
        assert_eq!(restore(&repo, &snap, "db").await, content, "{}", b.name());
    }
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok(), "{}: {report:?}", b.name());
}

trait Again {
    fn store_again(&self, repo: &Repository) -> strongbox_repo::Store;
}
impl Again for Backend {
    /// The same storage as `repo` (memory stores cannot be reopened by name).
    fn store_again(&self, repo: &Repository) -> strongbox_repo::Store {
        match self {
            Backend::Memory => repo.store().clone(),
            _ => self.store(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_passes_the_store_suite() {
    for b in Backend::all().await {
        store_semantics(&b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_round_trips_a_repository() {
    for b in Backend::all().await {
        repository_round_trip(&b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_backend_takes_overlapping_backups_from_two_writers() {
    for b in Backend::all().await {
        overlapping_backups(&b).await;
    }
}
