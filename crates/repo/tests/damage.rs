//! Deliberately broken repositories: each fault is a clear error naming
//! the object, `check` names the damaged snapshots, nothing panics.

mod common;

use bytes::Bytes;
use common::*;
use object_store::path::Path;
use strongbox_repo::{Error, Repository, Store};

/// A local repository with two snapshots, on its own directory.
async fn fixture() -> (
    tempfile::TempDir,
    Repository,
    strongbox_repo::Snapshot,
    strongbox_repo::Snapshot,
) {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(Store::local(dir.path()).unwrap()).await;
    let a = backup(&repo, &[("a", &data(400_000, 1))]).await;
    let b = backup(&repo, &[("b", &data(400_000, 2))]).await;
    (dir, repo, a, b)
}

fn files_under(dir: &std::path::Path, sub: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join(sub)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The pack holding the first chunk of a snapshot's first file.
async fn pack_of(dir: &std::path::Path, repo: &Repository, snap: &strongbox_repo::Snapshot) -> std::path::PathBuf {
    let name = &snap.files[0].name;
    // The only packs written after `snap`'s backup began are its own; find
    // the pack whose removal breaks this snapshot.
    for p in files_under(dir, "data") {
        let saved = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let mut sink = Vec::new();
        let broken = repo
            .restore_to_writer(snap, name, &mut sink, &strongbox_repo::NoProgress)
            .await
            .is_err();
        std::fs::write(&p, saved).unwrap();
        if broken {
            return p;
        }
    }
    panic!("no pack holds snapshot {}", snap.id);
}

#[tokio::test]
async fn corrupt_pack_is_named_with_its_snapshot() {
    let (dir, repo, a, b) = fixture().await;
    let pack = pack_of(dir.path(), &repo, &a).await;
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
    let pack_id = pack.file_name().unwrap().to_str().unwrap().to_string();

    // Structure alone cannot see a flipped byte (same size); reading data does.
    assert!(repo.check(false).await.unwrap().is_ok());
    let report = repo.check(true).await.unwrap();
    assert!(!report.is_ok());
    assert!(
        report.errors.iter().any(|e| e.contains(&pack_id)),
        "{:?}",
        report.errors
    );
    assert_eq!(report.damaged_snapshots, vec![a.id]);
    assert!(!report.damaged_snapshots.contains(&b.id));

    // Restore refuses the damaged data rather than returning it.
    let mut out = Vec::new();
    let err = repo
        .restore_to_writer(&a, "a", &mut out, &strongbox_repo::NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&pack_id), "{err}");
    assert_eq!(restore(&repo, &b, "b").await, data(400_000, 2));
}

#[tokio::test]
async fn truncated_pack_fails_the_structure_check() {
    let (dir, repo, a, _) = fixture().await;
    let pack = pack_of(dir.path(), &repo, &a).await;
    let bytes = std::fs::read(&pack).unwrap();
    std::fs::write(&pack, &bytes[..bytes.len() / 3]).unwrap();
    let report = repo.check(false).await.unwrap();
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert!(
        report.errors.iter().any(|e| e.contains(name) && e.contains("bytes")),
        "{:?}",
        report.errors
    );
    assert_eq!(report.damaged_snapshots, vec![a.id]);
}

#[tokio::test]
async fn missing_pack_and_missing_index_are_reported() {
    let (dir, repo, a, b) = fixture().await;
    let pack = pack_of(dir.path(), &repo, &a).await;
    std::fs::remove_file(&pack).unwrap();
    let report = repo.check(false).await.unwrap();
    assert!(
        report.errors.iter().any(|e| e.contains("missing")),
        "{:?}",
        report.errors
    );
    assert_eq!(report.damaged_snapshots, vec![a.id]);

    for f in files_under(dir.path(), "index") {
        std::fs::remove_file(f).unwrap();
    }
    let report = repo.check(false).await.unwrap();
    assert!(
        report.errors.iter().any(|e| e.contains("in no index")),
        "{:?}",
        report.errors
    );
    assert_eq!(report.damaged_snapshots.len(), 2);
    assert!(report.damaged_snapshots.contains(&b.id));
    let mut out = Vec::new();
    let err = repo
        .restore_to_writer(&b, "b", &mut out, &strongbox_repo::NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Missing { .. }), "{err}");
}

#[tokio::test]
async fn damaged_index_object_is_named() {
    let (dir, repo, _, _) = fixture().await;
    let idx = files_under(dir.path(), "index").remove(0);
    let mut bytes = std::fs::read(&idx).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 1;
    std::fs::write(&idx, &bytes).unwrap();
    let report = repo.check(false).await.unwrap();
    let name = idx.file_name().unwrap().to_str().unwrap();
    assert!(report.errors.iter().any(|e| e.contains(name)), "{:?}", report.errors);
}

#[tokio::test]
async fn unknown_format_version_is_a_clear_error() {
    let (dir, repo, a, _) = fixture().await;
    let snap_path = dir.path().join("snapshots").join(a.id.to_hex());
    let mut bytes = std::fs::read(&snap_path).unwrap();
    bytes[0] = 9;
    std::fs::write(&snap_path, &bytes).unwrap();
    let err = repo.find_snapshot(&a.id.to_hex()).await.unwrap_err();
    match &err {
        Error::UnsupportedVersion { object, found: 9, .. } => assert!(object.contains(&a.id.to_hex())),
        other => panic!("expected UnsupportedVersion, got {other}"),
    }
    let report = repo.check(false).await.unwrap();
    assert_eq!(report.damaged_snapshots, vec![a.id]);

    // The same for the repository config: opening says so, not "wrong password".
    let cfg = dir.path().join("config");
    let mut bytes = std::fs::read(&cfg).unwrap();
    bytes[0] = 2;
    std::fs::write(&cfg, &bytes).unwrap();
    let err = Repository::open(Store::local(dir.path()).unwrap(), PASSWORD)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::UnsupportedVersion { found: 2, .. }), "{err}");
}

#[tokio::test]
async fn a_snapshot_cannot_be_swapped_for_another_object() {
    // Objects are bound to their kind: an index object renamed into
    // snapshots/ fails authentication instead of parsing as something else.
    let (dir, repo, _, _) = fixture().await;
    let idx = files_under(dir.path(), "index").remove(0);
    let fake = "ab".repeat(32);
    let store = repo.store();
    store
        .put_new(
            &Path::from(format!("snapshots/{fake}")),
            Bytes::from(std::fs::read(idx).unwrap()),
        )
        .await
        .unwrap();
    let err = repo.find_snapshot(&fake).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}
