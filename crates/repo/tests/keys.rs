//! Key slots: any slot's password opens the repository; a wrong one is a
//! clear error; the last slot cannot be removed.

mod common;

use common::*;
use strongbox_repo::{Error, InitOptions, Repository, Store};

#[tokio::test]
async fn key_slots() {
    let dir = tempfile::tempdir().unwrap();
    let store = || Store::local(dir.path()).unwrap();
    let repo = new_repo(store()).await;
    let snap = backup(&repo, &[("f", b"some bytes")]).await;

    match Repository::open(store(), b"wrong").await {
        Err(Error::WrongPassword { slots: 1 }) => {}
        other => panic!("expected WrongPassword, got {:?}", other.err()),
    }
    let second = repo.add_key(b"second password").await.unwrap();
    let other = Repository::open(store(), b"second password").await.unwrap();
    assert_eq!(restore(&other, &snap, "f").await, b"some bytes");
    assert_eq!(repo.list_keys().await.unwrap().len(), 2);

    let first = repo
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.id != second)
        .unwrap()
        .id;
    repo.remove_key(&first).await.unwrap();
    assert!(matches!(
        Repository::open(store(), PASSWORD).await,
        Err(Error::WrongPassword { .. })
    ));
    assert!(Repository::open(store(), b"second password").await.is_ok());
    let err = repo.remove_key(&second).await.unwrap_err();
    assert!(err.to_string().contains("only key slot"), "{err}");

    // Neither the password nor the master key is stored in clear.
    for e in std::fs::read_dir(dir.path().join("keys")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!text.contains("second password"));
    }
}

#[tokio::test]
async fn init_refuses_an_existing_repository_and_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    new_repo(Store::local(dir.path()).unwrap()).await;
    let again = Repository::init(Store::local(dir.path()).unwrap(), PASSWORD, InitOptions::default()).await;
    assert!(matches!(again, Err(Error::AlreadyInitialized { .. })));
    // Also where the store ignores create-only puts, and with inits racing:
    // one repository, which opens.
    let ignoring = tempfile::tempdir().unwrap();
    let inits: Vec<_> = (0..4)
        .map(|_| {
            let dir = ignoring.path().to_path_buf();
            tokio::spawn(async move { Repository::init(ignores_create(&dir), PASSWORD, InitOptions::default()).await })
        })
        .collect();
    let mut made = 0;
    for i in inits {
        match i.await.unwrap() {
            Ok(_) => made += 1,
            Err(Error::AlreadyInitialized { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(made <= 1, "{made} inits succeeded");
    if made == 0 {
        new_repo(ignores_create(ignoring.path())).await;
    }
    Repository::open(ignores_create(ignoring.path()), PASSWORD)
        .await
        .unwrap();
    let again = Repository::init(ignores_create(ignoring.path()), PASSWORD, InitOptions::default()).await;
    assert!(matches!(again, Err(Error::AlreadyInitialized { .. })));

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Repository::open(Store::local(empty.path()).unwrap(), PASSWORD).await,
        Err(Error::NotARepository { .. })
    ));
    let bad = InitOptions {
        compression_level: 40,
        ..Default::default()
    };
    assert!(matches!(
        Repository::init(Store::local(empty.path()).unwrap(), PASSWORD, bad).await,
        Err(Error::Invalid(_))
    ));
    let bad = InitOptions {
        chunker: strongbox_repo::ChunkerParams {
            min: 8192,
            avg: 4096,
            max: 65536,
        },
        ..Default::default()
    };
    assert!(matches!(
        Repository::init(Store::local(empty.path()).unwrap(), PASSWORD, bad).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        Repository::init(Store::local(empty.path()).unwrap(), b"", InitOptions::default()).await,
        Err(Error::Invalid(_))
    ));
}

/// Replicas started together on a new store (issue 27): four
/// `open_or_init` at the same instant, on local disk, on S3 and on a store
/// that ignores create-only puts, ten rounds each. Every one opens; all
/// four hold the same repository (one config id), and what each backs up
/// the others restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_started_together_open_one_repository() {
    for backend in Backend::all().await {
        if matches!(backend, Backend::Memory) {
            continue; // each memory store is a store of its own
        }
        for round in 0..10 {
            let store = match &backend {
                Backend::S3(s) => {
                    let mut config = s.config.clone();
                    config.prefix = format!("round-{round}");
                    Store::s3(&config).unwrap()
                }
                Backend::Local(dir) | Backend::IgnoresCreate(dir) => {
                    let sub = dir.path().join(format!("round-{round}"));
                    std::fs::create_dir_all(&sub).unwrap();
                    match &backend {
                        Backend::Local(_) => Store::local(&sub).unwrap(),
                        _ => ignores_create(&sub),
                    }
                }
                Backend::Memory => unreachable!(),
            };
            let start = std::sync::Arc::new(tokio::sync::Barrier::new(4));
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    let (store, start) = (store.clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        Repository::open_or_init(store, PASSWORD, InitOptions::default()).await
                    })
                })
                .collect();
            let mut repos = Vec::new();
            for r in racers {
                let opened = r.await.unwrap();
                let (repo, created) = opened.unwrap_or_else(|e| panic!("{} round {round}: {e}", backend.name()));
                repos.push((repo, created));
            }
            let created = repos.iter().filter(|(_, c)| *c).count();
            assert_eq!(created, 1, "{} round {round}: {created} created", backend.name());
            let ids: std::collections::BTreeSet<String> = repos.iter().map(|(r, _)| r.config().id.to_hex()).collect();
            assert_eq!(ids.len(), 1, "{} round {round}: configs {ids:?}", backend.name());
            let snaps: Vec<_> = {
                let mut s = Vec::new();
                for (i, (repo, _)) in repos.iter().enumerate() {
                    s.push(backup(repo, &[("f", format!("from racer {i}").as_bytes())]).await);
                }
                s
            };
            let reader = Repository::open(store.clone(), PASSWORD).await.unwrap();
            for (i, snap) in snaps.iter().enumerate() {
                assert_eq!(restore(&reader, snap, "f").await, format!("from racer {i}").as_bytes());
            }
        }
    }
}
