//! Copying snapshots into another repository (issue 28): exact under the
//! copy's own key on every backend, only what the copy lacks crosses, a
//! copy cut off mid-way resumes without storing anything twice, a damaged
//! source fails the copy naming the object and leaves no snapshot behind.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use strongbox_repo::{InitOptions, NoProgress, Repository, Snapshot, Store};

const COPY_PASSWORD: &[u8] = b"the offsite copy's own password";

/// Small chunks and the smallest packs (1 MiB): many packs from little data.
async fn copy_repo(store: Store) -> Repository {
    Repository::init(
        store,
        COPY_PASSWORD,
        InitOptions {
            chunker: small_chunks(),
            pack_size: 1 << 20,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

async fn copy(from: &Repository, snap: &Snapshot, to: &Repository) -> strongbox_repo::Copied {
    from.copy_snapshot(snap, to, Arc::new(NoProgress)).await.unwrap()
}

#[tokio::test]
async fn a_copy_restores_exactly_under_its_own_key_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let primary = new_repo(Store::local(dir.path()).unwrap()).await;
    let (a, b) = (data(700_000, 1), data(300_000, 2));
    let first = backup(&primary, &[("a", &a), ("b", &b)]).await;
    let second = backup(&primary, &[("a", &a[..500_000]), ("empty", b"")]).await;
    for backend in Backend::all().await {
        let to = copy_repo(backend.store()).await;
        for snap in [&first, &second] {
            let done = copy(&primary, snap, &to).await;
            assert!(!done.already, "{}", backend.name());
            // Reopened with its own password: the copy needs nothing of the primary's.
            let reopened = Repository::open(to.store().clone(), COPY_PASSWORD).await.unwrap();
            let copied = reopened.find_snapshot(&snap.id.to_hex()).await.unwrap();
            assert_eq!(
                (&copied.time, &copied.hostname, &copied.tags, &copied.labels),
                (&snap.time, &snap.hostname, &snap.tags, &snap.labels)
            );
            for f in &snap.files {
                assert_eq!(
                    restore(&reopened, &copied, &f.name).await,
                    restore(&primary, snap, &f.name).await,
                    "{} {}",
                    backend.name(),
                    f.name
                );
            }
            assert!(copy(&primary, snap, &to).await.already, "copying again does nothing");
        }
        // The second snapshot shares `a`'s first 500 kB with the first: the copy
        // stored little for it.
        let report = to.check(true).await.unwrap();
        assert!(report.errors.is_empty(), "{}: {:?}", backend.name(), report.errors);
    }
}

#[tokio::test]
async fn a_copy_of_the_next_backup_moves_about_what_that_backup_added() {
    let dir = tempfile::tempdir().unwrap();
    let primary = new_repo(Store::local(dir.path()).unwrap()).await;
    let to_dir = tempfile::tempdir().unwrap();
    let to = copy_repo(Store::local(to_dir.path()).unwrap()).await;
    let mut file = data(16_000_000, 3);
    let first = backup(&primary, &[("db", &file)]).await;
    copy(&primary, &first, &to).await;
    // 1 % of the file changed, in 160 places: each repository chunks with
    // its own seed, so what one change costs each differs; over 40 places
    // the ratio ranged 0.80–1.22 from run to run, over 160 it averages out.
    for i in 0..160 {
        let at = i * 100_000 + 5_000;
        file[at..at + 1_000].copy_from_slice(&data(1_000, 100 + i as u64));
    }
    let next = backup(&primary, &[("db", &file)]).await;
    let copied = copy(&primary, &next, &to).await;
    let ratio = copied.totals.new_bytes_stored as f64 / next.totals.new_bytes_stored as f64;
    println!(
        "the backup added {} bytes, its copy {} ({ratio:.2}×)",
        next.totals.new_bytes_stored, copied.totals.new_bytes_stored
    );
    // The copy chunks with its own seed, so its changed chunks are not the
    // primary's; issue 28 asks ≤ 1.2× (bench/copy_bench.sh measures it on
    // a database). Here, on 160 small changes of 16 MB, the same bound.
    assert!(ratio <= 1.2, "{ratio}");
    assert!(copied.totals.new_bytes_stored < first.totals.new_bytes_stored / 5);
}

#[tokio::test]
async fn a_copy_cut_off_mid_way_resumes_without_storing_anything_twice() {
    let dir = tempfile::tempdir().unwrap();
    let primary = new_repo(Store::local(dir.path()).unwrap()).await;
    let snap = backup(&primary, &[("db", &data(16_000_000, 4))]).await;
    let to_dir = tempfile::tempdir().unwrap();
    let failing = faulty(
        to_dir.path(),
        Faults {
            packs_stored_before_failing: Some(2),
            ..Default::default()
        },
    );
    let to = copy_repo(failing).await;
    let err = primary
        .copy_snapshot(&snap, &to, Arc::new(NoProgress))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not stored (the store is gone)"), "{err}");
    let to = Repository::open(Store::local(to_dir.path()).unwrap(), COPY_PASSWORD)
        .await
        .unwrap();
    assert!(
        to.snapshot_ids().await.unwrap().is_empty(),
        "no snapshot without all its data"
    );
    let landed = to.stats().await.unwrap().chunks;
    assert!(landed > 0, "the packs stored before the failure are indexed");
    let resumed = copy(&primary, &snap, &to).await;
    let copied = to.find_snapshot(&snap.id.to_hex()).await.unwrap();
    let distinct: BTreeSet<_> = copied.files.iter().flat_map(|f| f.chunks.iter()).collect();
    println!(
        "{landed} chunks landed before the failure, {} stored on resuming, {} in all",
        resumed.totals.new_chunks,
        distinct.len()
    );
    assert_eq!(landed + resumed.totals.new_chunks as usize, distinct.len());
    assert_eq!(to.stats().await.unwrap().chunks, distinct.len());
    assert_eq!(restore(&to, &copied, "db").await, restore(&primary, &snap, "db").await);
}

#[tokio::test]
async fn a_damaged_source_fails_the_copy_naming_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let primary = new_repo(Store::local(dir.path()).unwrap()).await;
    let snap = backup(&primary, &[("db", &data(600_000, 5))]).await;
    let pack = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    for b in &mut bytes[100..200] {
        *b ^= 0x5a;
    }
    std::fs::write(&pack, bytes).unwrap();
    let to_dir = tempfile::tempdir().unwrap();
    let to = copy_repo(Store::local(to_dir.path()).unwrap()).await;
    let err = primary
        .copy_snapshot(&snap, &to, Arc::new(NoProgress))
        .await
        .unwrap_err()
        .to_string();
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "{err}");
    assert!(to.snapshot_ids().await.unwrap().is_empty());
}

#[tokio::test]
async fn wal_files_and_records_are_mirrored_once_and_records_follow_changes() {
    let dir = tempfile::tempdir().unwrap();
    let primary = new_repo(Store::local(dir.path()).unwrap()).await;
    let to_dir = tempfile::tempdir().unwrap();
    let to = copy_repo(Store::local(to_dir.path()).unwrap()).await;
    let segments: Vec<(String, Vec<u8>)> = (1..=3)
        .map(|i| (format!("00000001000000000000000{i}"), data(50_000, 10 + i)))
        .collect();
    for (name, bytes) in &segments {
        primary.wal_push("d/pg", name, bytes).await.unwrap();
    }
    primary.put_record("deployments", "d/pg", b"{\"v\":1}").await.unwrap();
    primary
        .put_record("recoveries", "d/pg/1-7", b"{\"v\":1,\"r\":1}")
        .await
        .unwrap();
    let first = primary.mirror_objects(&to).await.unwrap();
    assert_eq!(first.objects, 5);
    assert!(first.oldest_lacking.is_some());
    for (name, bytes) in &segments {
        assert_eq!(to.wal_fetch("d/pg", name).await.unwrap().as_ref(), Some(bytes));
    }
    assert_eq!(
        to.records("recoveries", "").await.unwrap(),
        primary.records("recoveries", "").await.unwrap()
    );
    let again = primary.mirror_objects(&to).await.unwrap();
    assert_eq!((again.objects, again.oldest_lacking), (0, None));
    primary
        .put_record("deployments", "d/pg", b"{\"v\":1,\"changed\":true}")
        .await
        .unwrap();
    assert_eq!(primary.mirror_objects(&to).await.unwrap().objects, 1);
    assert_eq!(
        to.records("deployments", "").await.unwrap(),
        primary.records("deployments", "").await.unwrap()
    );
}

/// A streamed WAL tail grows under one name: the copy follows each new
/// version (and no unchanged one twice), and drops its tail once the whole
/// file is archived and copied.
#[tokio::test]
async fn a_streamed_tail_is_copied_again_as_it_grows_and_dropped_once_archived() {
    let dir = tempfile::tempdir().unwrap();
    let primary = new_repo(Store::local(dir.path()).unwrap()).await;
    let to_dir = tempfile::tempdir().unwrap();
    let to = copy_repo(Store::local(to_dir.path()).unwrap()).await;
    let mut seen = strongbox_repo::StreamedSeen::default();
    let name = "000000010000000000000007";
    let streamed = format!("{name}{}", strongbox_repo::STREAMED_TAIL);
    let (v1, v2) = (data(40_000, 1), data(60_000, 2));
    primary.wal_put_streamed("d/pg", name, &v1).await.unwrap();
    assert_eq!(
        primary.mirror_wal(&to, &mut seen, &|_, _| false).await.unwrap().objects,
        1
    );
    assert_eq!(to.wal_fetch("d/pg", &streamed).await.unwrap(), Some(v1));
    assert_eq!(
        primary.mirror_wal(&to, &mut seen, &|_, _| false).await.unwrap().objects,
        0,
        "unchanged"
    );
    // Object stores keep modification times to the millisecond or second:
    // the next version is told apart by its size too.
    primary.wal_put_streamed("d/pg", name, &v2).await.unwrap();
    assert_eq!(
        primary.mirror_wal(&to, &mut seen, &|_, _| false).await.unwrap().objects,
        1
    );
    assert_eq!(to.wal_fetch("d/pg", &streamed).await.unwrap(), Some(v2.clone()));
    primary.wal_push("d/pg", name, &v2).await.unwrap();
    primary.wal_tidy_streamed("d/pg").await.unwrap();
    assert_eq!(
        primary.mirror_wal(&to, &mut seen, &|_, _| false).await.unwrap().objects,
        1
    );
    assert_eq!(to.wal_fetch("d/pg", name).await.unwrap(), Some(v2));
    assert_eq!(
        to.wal_fetch("d/pg", &streamed).await.unwrap(),
        None,
        "the copy's tail is gone"
    );
    assert!(seen.is_empty(), "{seen:?}");
}

/// What a copy's own retention let go is not brought again while the
/// primary still holds it; everything else is.
#[tokio::test]
async fn wal_a_copy_no_longer_needs_is_not_brought_again() {
    let dir = tempfile::tempdir().unwrap();
    let primary = new_repo(Store::local(dir.path()).unwrap()).await;
    let to_dir = tempfile::tempdir().unwrap();
    let to = copy_repo(Store::local(to_dir.path()).unwrap()).await;
    let (old, new) = ("000000010000000000000003", "000000010000000000000009");
    for (i, name) in [old, new].into_iter().enumerate() {
        primary.wal_push("d/pg", name, &data(30_000, i as u64)).await.unwrap();
    }
    let mut seen = strongbox_repo::StreamedSeen::default();
    let needless = |archive: &str, name: &str| archive == "d/pg" && name == old;
    assert_eq!(primary.mirror_wal(&to, &mut seen, &needless).await.unwrap().objects, 1);
    let names: Vec<String> = to.wal_list("d/pg").await.unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, [new]);
    assert_eq!(primary.mirror_wal(&to, &mut seen, &needless).await.unwrap().objects, 0);
    assert_eq!(
        primary.mirror_wal(&to, &mut seen, &|_, _| false).await.unwrap().objects,
        1
    );
}
