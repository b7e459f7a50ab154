//! One suite for every catalog implementation: SQLite, and PostgreSQL (a
//! database of its own on the machine's server, 127.0.0.1:5432). Besides
//! each call's contract, `concurrently` races many writers, as replicas
//! sharing a catalog do.

use std::time::Duration;

use strongbox_catalog::*;

fn new_job(deployment: &str, key: Option<&str>) -> NewJob {
    NewJob {
        domain: "usexample".into(),
        deployment: deployment.into(),
        spec: JobSpec::Backup {
            keep_forever: false,
            trigger: Trigger::User,
        },
        created_by: "alice".into(),
        idempotency_key: key.map(String::from),
        at: time::OffsetDateTime::now_utc(),
    }
}

fn tagged(tag: &str, keep_forever: bool) -> NewRecord {
    NewRecord::Backup {
        db_tag: tag.into(),
        keep_forever,
    }
}

async fn start_backup(c: &dyn Catalog, job: &NewJob, tag: &str, keep_forever: bool) -> Started {
    c.create_job(job, &tagged(tag, keep_forever), "backup requested")
        .await
        .unwrap()
}

fn done(succeeded: bool, message: &str) -> JobEnd {
    JobEnd {
        at: time::OffsetDateTime::now_utc(),
        succeeded,
        message: message.into(),
        backup: None,
        reached: None,
    }
}

/// A PostgreSQL base backup's place in the WAL.
fn position() -> strongbox_engines::Position {
    strongbox_engines::Position::Wal(strongbox_engines::pitr::BasePosition {
        timeline: 1,
        start_lsn: "0/3000028".parse().unwrap(),
        stop_lsn: "0/3000060".parse().unwrap(),
        stop_time: time::macros::datetime!(2026-12-05 07:00:00 UTC),
        segment_size: 16 << 20,
    })
}

async fn suite(c: &dyn Catalog) {
    c.ensure_domain("usexample").await.unwrap();
    c.ensure_domain("usexample").await.unwrap();
    c.ensure_domain("idcs-0123abc").await.unwrap();
    // The catalog stores what the core hashed (the core's tests: one domain
    // per user, hashes that verify).
    c.put_user("alice", "usexample", "$argon2id$hash-1", Role::Operator)
        .await
        .unwrap();
    let u = c.user("alice").await.unwrap().unwrap();
    assert_eq!(
        (u.domain.as_str(), u.role, u.password_hash.as_str()),
        ("usexample", Role::Operator, "$argon2id$hash-1")
    );
    c.put_user("alice", "usexample", "$argon2id$hash-2", Role::Reader)
        .await
        .unwrap();
    let u = c.user("alice").await.unwrap().unwrap();
    assert_eq!((u.role, u.password_hash.as_str()), (Role::Reader, "$argon2id$hash-2"));
    assert!(c.user("nobody").await.unwrap().is_none());

    for name in ["db12c", "other"] {
        c.put_deployment(&NewDeployment {
            domain: "usexample".into(),
            name: name.into(),
            engine: "sqlite".into(),
            connection: serde_json::json!({"path": "/tmp/x.db"}),
            runs_on: None,
        })
        .await
        .unwrap();
    }
    assert_eq!(c.deployments("usexample").await.unwrap().len(), 2);
    let config = strongbox_catalog::BackupConfig {
        auto_backup_enabled: true,
        schedule: strongbox_catalog::Schedule::Cron("0 2 * * *".into()),
        ..Default::default()
    };
    assert!(c.put_backup_config("usexample", "db12c", &config).await.unwrap());
    assert!(!c.put_backup_config("idcs-0123abc", "db12c", &config).await.unwrap());
    let all = c.all_deployments().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].backup_config, Ok(Some(config.clone())));
    assert_eq!(all[1].backup_config, Ok(None));
    assert!(
        c.deployment("idcs-0123abc", "db12c").await.unwrap().is_none(),
        "deployments are per domain"
    );

    // One active job per deployment; idempotency keys return the same job.
    let Started::Created(j1) = start_backup(c, &new_job("db12c", Some("k1")), "TAG20260101T000000", true).await else {
        panic!()
    };
    assert_eq!(
        j1.spec.as_ref(),
        Some(&new_job("db12c", None).spec),
        "the spec as given"
    );
    assert_eq!(j1.spec(), Ok(new_job("db12c", None).spec));
    assert!(matches!(start_backup(c, &new_job("db12c", None), "TAG2", false).await, Started::Busy(j) if j.id == j1.id));
    assert_eq!(
        c.active_job("usexample", "db12c").await.unwrap().map(|j| j.id),
        Some(j1.id)
    );
    assert!(c.active_job("usexample", "other").await.unwrap().is_none());
    assert!(
        matches!(start_backup(c, &new_job("db12c", Some("k1")), "TAG3", false).await, Started::Existing(j) if j.id == j1.id)
    );
    let Started::Created(j2) = start_backup(c, &new_job("other", None), "TAG20260101T000000", false).await else {
        panic!()
    };
    assert!(j2.id > j1.id);
    let b = c.backups("usexample", "db12c").await.unwrap();
    assert_eq!(
        (b.len(), b[0].status, b[0].keep_forever),
        (1, BackupStatus::InProgress, true)
    );
    assert_eq!(b[0].db_tag, "TAG20260101T000000");
    assert!(
        c.job("idcs-0123abc", j1.id).await.unwrap().is_none(),
        "jobs are per domain"
    );

    // Lease, progress, finish.
    let lease = Duration::from_secs(30);
    let got = c.lease_job("w1", lease, &[]).await.unwrap().unwrap();
    assert_eq!((got.id, got.status, got.attempts), (j1.id, JobStatus::Running, 1));
    let w1 = Lease::of(&got, "w1");
    let w2 = Lease::of(&got, "w2");
    assert!(c.heartbeat(&w1, lease, 10, Some(100)).await.unwrap());
    assert!(
        !c.heartbeat(&w2, lease, 10, Some(100)).await.unwrap(),
        "only the holder"
    );
    let read = c.job("usexample", j1.id).await.unwrap().unwrap();
    assert_eq!((read.bytes_done, read.bytes_total), (10, Some(100)));
    // Every column reads back as the lease returned it, but for what the
    // heartbeat changed (SQLite reads jobs by a path of its own).
    let expected = Job {
        bytes_done: 10,
        bytes_total: Some(100),
        updated_at: read.updated_at.clone(),
        ..got.clone()
    };
    assert_eq!(format!("{read:?}"), format!("{expected:?}"));
    let active = c.active_job("usexample", "db12c").await.unwrap().unwrap();
    assert_eq!(format!("{active:?}"), format!("{expected:?}"));
    let completed = JobEnd {
        backup: Some(BackupResult {
            snapshot_id: "ab".into(),
            logical_bytes: 100,
            stored_bytes: 40,
            position: Some(position()),
        }),
        ..done(true, "backup completed")
    };
    assert!(!c.finish_job(&w2, &completed).await.unwrap());
    assert!(c.finish_job(&w1, &completed).await.unwrap());
    let j = c.job("usexample", j1.id).await.unwrap().unwrap();
    assert_eq!((j.status, j.bytes_done), (JobStatus::Succeeded, 100));
    let b = &c.backups("usexample", "db12c").await.unwrap()[0];
    assert_eq!(
        (b.status, b.snapshot_id.as_deref(), b.stored_bytes),
        (BackupStatus::Completed, Some("ab"), Some(40))
    );
    assert_eq!(b.position, Some(position()), "the position as given");
    let log: Vec<_> = c
        .job_messages(j1.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message)
        .collect();
    assert_eq!(log, ["backup requested", "backup completed"]);

    // Copies holding it: each noted once, per deployment.
    assert!(c.copies("usexample", "db12c").await.unwrap().is_empty());
    for copy in ["offsite", "vault", "offsite"] {
        c.record_copy("usexample", "db12c", j1.id, copy).await.unwrap();
    }
    let copies = held(c, "db12c").await;
    assert_eq!(copies, [(j1.id, "offsite".to_string()), (j1.id, "vault".to_string())]);
    assert!(c.copies("usexample", "other").await.unwrap().is_empty());
    // A copy's window lets it go: that copy's record only.
    c.forget_copies("usexample", "db12c", "vault", &[j1.id]).await.unwrap();
    c.forget_copies("usexample", "other", "offsite", &[j1.id])
        .await
        .unwrap();
    let copies = held(c, "db12c").await;
    assert_eq!(copies, [(j1.id, "offsite".to_string())]);

    // Tags with a suffix counted in one statement: the tag itself and
    // `TAG_N`, not others that merely begin the same.
    assert_eq!(
        c.count_tags("usexample", "db12c", "TAG20260101T000000").await.unwrap(),
        1
    );
    assert_eq!(
        c.count_tags("usexample", "db12c", "TAG20260101T00000").await.unwrap(),
        0
    );
    assert_eq!(
        c.count_tags("idcs-0123abc", "db12c", "TAG20260101T000000")
            .await
            .unwrap(),
        0
    );

    // Tags are unique per deployment: a taken one is refused, nothing queued.
    assert!(matches!(
        c.create_job(&new_job("db12c", None), &tagged("TAG20260101T000000", false), "x")
            .await,
        Err(Error::Duplicate(_))
    ));
    let Started::Created(j3) = start_backup(c, &new_job("db12c", None), "TAG20260101T000001", false).await else {
        panic!()
    };
    let tags: Vec<_> = c
        .backups("usexample", "db12c")
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.db_tag)
        .collect();
    assert_eq!(tags.len(), 2);
    assert_ne!(tags[0], tags[1]);
    assert_eq!(
        c.count_tags("usexample", "db12c", "TAG20260101T000000").await.unwrap(),
        1
    );

    // A worker that dies: its lease expires, another worker takes the job,
    // counting the attempt; the first holder can no longer end it.
    let short = Duration::from_secs(0);
    let first = c.lease_job("dying", short, &[]).await.unwrap().unwrap();
    assert_eq!(first.id, j2.id);
    let second = c.lease_job("dying", short, &[]).await.unwrap().unwrap();
    assert_eq!(second.id, j3.id);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = c.lease_job("w3", lease, &[]).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (j2.id, 2));
    let dying = Lease::of(&first, "dying");
    assert!(!c.finish_job(&dying, &done(true, "late")).await.unwrap());
    assert!(!c.add_job_message(&dying, "late").await.unwrap());
    assert!(
        c.finish_job(&Lease::of(&again, "w3"), &done(false, "given up"))
            .await
            .unwrap()
    );
    assert_eq!(
        c.backups("usexample", "other").await.unwrap()[0].status,
        BackupStatus::Failed
    );
    // j3 is re-leased by w4 (its first holder died too); failing it records why.
    // Fencing: the same worker (one process, one owner name) leased it
    // first; its first attempt's writes are refused once the second holds
    // it, the second's go through.
    let again = c.lease_job("dying", lease, &[]).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (j3.id, 2));
    let (stale, current) = (Lease::of(&second, "dying"), Lease::of(&again, "dying"));
    assert!(!c.heartbeat(&stale, lease, 1, None).await.unwrap());
    assert!(!c.add_job_message(&stale, "stale").await.unwrap());
    assert!(!c.finish_job(&stale, &done(true, "stale")).await.unwrap());
    assert!(c.add_job_message(&current, "resumed").await.unwrap());
    assert!(
        c.finish_job(&current, &done(false, "backup failed: disk full"))
            .await
            .unwrap()
    );
    let messages: Vec<String> = c
        .job_messages(j3.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message)
        .collect();
    assert!(
        messages.contains(&"resumed".to_string()) && !messages.iter().any(|m| m.contains("stale")),
        "{messages:?}"
    );
    let j = c.job("usexample", j3.id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert!(j.message.unwrap().contains("disk full"));

    recoveries(c, j1.id, j3.id).await;
    placement(c).await;
}

/// A deployment that names a label: its jobs go only to servers with it;
/// servers' labels are live while they announce themselves.
async fn placement(c: &dyn Catalog) {
    c.ensure_domain("placed").await.unwrap();
    c.put_deployment(&NewDeployment {
        domain: "placed".into(),
        name: "pinned".into(),
        engine: "postgresql".into(),
        connection: serde_json::json!({}),
        runs_on: Some("db-host-1".into()),
    })
    .await
    .unwrap();
    let d = c.deployment("placed", "pinned").await.unwrap().unwrap();
    assert_eq!(d.runs_on.as_deref(), Some("db-host-1"));
    let new = NewJob {
        domain: "placed".into(),
        ..new_job("pinned", None)
    };
    let (queued, running) = (
        count(c, Operation::Backup, JobStatus::Queued).await,
        count(c, Operation::Backup, JobStatus::Running).await,
    );
    let Started::Created(job) = start_backup(c, &new, "TAGP", false).await else {
        panic!()
    };
    assert_eq!(count(c, Operation::Backup, JobStatus::Queued).await, queued + 1);
    let lease = Duration::from_secs(30);
    assert!(
        c.lease_job("plain", lease, &[]).await.unwrap().is_none(),
        "not for unlabelled servers"
    );
    let other = ["db-host-2".to_string()];
    assert!(c.lease_job("other", lease, &other).await.unwrap().is_none());
    let mine = ["db-host-2".to_string(), "db-host-1".to_string()];
    let held = c.lease_job("host1", lease, &mine).await.unwrap().unwrap();
    assert_eq!(held.id, job.id);
    assert_eq!(
        (
            count(c, Operation::Backup, JobStatus::Queued).await,
            count(c, Operation::Backup, JobStatus::Running).await
        ),
        (queued, running + 1)
    );
    // A stopping server releases its job: another takes it over at once,
    // long before the 30 s lease would have run out; the old hold is dead.
    assert!(c.lease_job("host1b", lease, &mine).await.unwrap().is_none());
    assert!(c.release_job(&Lease::of(&held, "host1")).await.unwrap());
    let taken = c.lease_job("host1b", lease, &mine).await.unwrap().unwrap();
    assert_eq!((taken.id, taken.attempts), (job.id, 2));
    assert!(
        !c.release_job(&Lease::of(&held, "host1")).await.unwrap(),
        "a stale hold"
    );
    assert!(!c.heartbeat(&Lease::of(&held, "host1"), lease, 1, None).await.unwrap());
    assert!(c.heartbeat(&Lease::of(&taken, "host1b"), lease, 1, None).await.unwrap());

    assert!(c.live_labels(lease).await.unwrap().is_empty());
    c.announce("host1", &mine).await.unwrap();
    c.announce("plain", &[]).await.unwrap();
    c.announce("host1", &mine).await.unwrap();
    assert_eq!(c.live_labels(lease).await.unwrap(), ["db-host-1", "db-host-2"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        c.live_labels(Duration::ZERO).await.unwrap().is_empty(),
        "a server not heard from is not live"
    );
}

/// The copies of `deployment`'s backups: (backup job id, copy).
async fn held(c: &dyn Catalog, deployment: &str) -> Vec<(i64, String)> {
    c.copies("usexample", deployment)
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.backup_job_id, k.copy))
        .collect()
}

async fn count(c: &dyn Catalog, operation: Operation, status: JobStatus) -> u64 {
    let counts = c.job_counts().await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for n in &counts {
        assert!(
            seen.insert((&n.operation, n.status)),
            "one row per operation and status: {counts:?}"
        );
    }
    counts
        .iter()
        .find(|n| n.operation == operation && n.status == status)
        .map_or(0, |n| n.count)
}

/// Recovery jobs share the one-active-job rule with backups and keep their
/// own history. `completed` is a completed backup of db12c, `failed` a failed one.
async fn recoveries(c: &dyn Catalog, completed: i64, failed: i64) {
    let recovery = |key: Option<&str>| NewJob {
        spec: JobSpec::Recovery {
            from: completed,
            target: strongbox_engines::RecoveryTarget::Backup { position: None },
            description: "restore".into(),
            asked: Some(RecoveryAsked::Latest),
            repository: None,
            into: None,
        },
        ..new_job("db12c", key)
    };
    let target = RecoveryAsked::Timestamp {
        timestamp: "05-Dec-2026 07:21:59 UTC".into(),
        timeline: Some(2),
    };
    let from = |backup_job_id| NewRecord::Recovery {
        target: target.clone(),
        backup_job_id,
    };
    assert!(
        matches!(
            c.create_job(&recovery(None), &from(failed), "recovery requested").await,
            Err(Error::NotFound(_))
        ),
        "only a completed backup can be recovered from"
    );
    assert!(
        c.recoveries("usexample", "db12c").await.unwrap().is_empty(),
        "nothing left behind"
    );
    let Started::Created(r) = c
        .create_job(&recovery(Some("r1")), &from(completed), "recovery requested")
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(
        matches!(start_backup(c, &new_job("db12c", None), "TAG9", false).await, Started::Busy(j) if j.id == r.id),
        "no backup while a recovery is queued"
    );
    assert!(
        matches!(c.create_job(&recovery(Some("r1")), &from(completed), "again").await.unwrap(), Started::Existing(j) if j.id == r.id)
    );
    let leased = c.lease_job("w5", Duration::from_secs(30), &[]).await.unwrap().unwrap();
    assert_eq!((leased.id, leased.operation), (r.id, Operation::Recovery));
    let w5 = Lease::of(&leased, "w5");
    assert!(c.add_job_message(&w5, "server stopped").await.unwrap());
    let reached = reached_on(2);
    let recovered = JobEnd {
        reached: Some(reached.clone()),
        ..done(true, "recovery completed: database recovered")
    };
    assert!(c.finish_job(&w5, &recovered).await.unwrap());
    let list = c.recoveries("usexample", "db12c").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].status, list[0].backup_job_id, &list[0].target),
        (RecoveryStatus::Completed, Some(completed), &Some(target.clone()))
    );
    assert!(list[0].completed_at.is_some());
    assert_eq!(list[0].reached.as_ref(), Some(&reached));
    assert_eq!(c.recovery("usexample", r.id).await.unwrap().unwrap().job_id, r.id);
    assert!(
        c.recovery("idcs-0123abc", r.id).await.unwrap().is_none(),
        "recoveries are per domain"
    );
    let log: Vec<_> = c
        .job_messages(r.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message)
        .collect();
    assert!(log.iter().any(|m| m == "server stopped"), "{log:?}");
    assert!(log.last().unwrap().contains("database recovered"), "{log:?}");

    let Started::Created(r2) = c
        .create_job(&recovery(None), &from(completed), "recovery requested")
        .await
        .unwrap()
    else {
        panic!()
    };
    let leased = c.lease_job("w5", Duration::from_secs(30), &[]).await.unwrap().unwrap();
    assert_eq!(leased.id, r2.id);
    assert!(
        c.finish_job(&Lease::of(&leased, "w5"), &done(false, "pg_restore exited with 1"))
            .await
            .unwrap()
    );
    let list = c.recoveries("usexample", "db12c").await.unwrap();
    assert_eq!(list[1].status, RecoveryStatus::Failed);
    assert_eq!(
        c.job("usexample", r2.id).await.unwrap().unwrap().status,
        JobStatus::Failed
    );
    assert_eq!(
        c.backup("usexample", completed).await.unwrap().unwrap().job_id,
        completed
    );
    // A drill's outcome, per domain, the last one kept.
    assert_eq!(
        c.backup("usexample", completed).await.unwrap().unwrap().verification,
        None
    );
    let drilled = |ok: bool, message: &str| Verification {
        at: "2026-12-06T07:00:00Z".into(),
        ok,
        message: message.into(),
    };
    c.record_verification("usexample", completed, &drilled(false, "pack 3f2a… is damaged"))
        .await
        .unwrap();
    c.record_verification("usexample", completed, &drilled(true, "integrity ok; t: 150 rows"))
        .await
        .unwrap();
    c.record_verification("idcs-0123abc", completed, &drilled(false, "another domain's"))
        .await
        .unwrap();
    let verified = c.backup("usexample", completed).await.unwrap().unwrap().verification;
    assert_eq!(verified, Some(drilled(true, "integrity ok; t: 150 rows")));
    assert_eq!(verified.unwrap().status(), "OK");
    assert_eq!(drilled(false, "").status(), "FAILED");
    c.mark_backups_deleted("idcs-0123abc", "db12c", &[completed])
        .await
        .unwrap();
    assert_eq!(
        c.backup("usexample", completed).await.unwrap().unwrap().status,
        BackupStatus::Completed,
        "per domain"
    );
    c.mark_backups_deleted("usexample", "db12c", &[completed])
        .await
        .unwrap();
    assert_eq!(
        c.backup("usexample", completed).await.unwrap().unwrap().status,
        BackupStatus::Deleted
    );
    assert!(
        c.backup("idcs-0123abc", completed).await.unwrap().is_none(),
        "backups are per domain"
    );

    // Recoveries indexed again from the repository's records: one from a
    // backup the catalog knows, one whose backup is gone (its timeline's
    // beginning is still needed for planning), each once.
    let tag = c.backup("usexample", completed).await.unwrap().unwrap().db_tag;
    let imported = |from_tag: &str, started_at: &str| ImportedRecovery {
        domain: "usexample".into(),
        deployment: "db12c".into(),
        from_tag: from_tag.into(),
        target: Some(RecoveryAsked::Latest),
        status: RecoveryStatus::Completed,
        started_at: started_at.into(),
        completed_at: Some(started_at.into()),
        reached: Some(reached_on(4)),
        message: "found in the repository".into(),
    };
    let known = imported(&tag, "2026-12-04T07:00:00Z");
    let orphan = imported("TAG20200101T000000", "2026-12-04T08:00:00Z");
    assert!(c.import_recovery(&known).await.unwrap());
    assert!(c.import_recovery(&orphan).await.unwrap());
    assert!(!c.import_recovery(&orphan).await.unwrap(), "indexed once");
    let list = c.recoveries("usexample", "db12c").await.unwrap();
    let by_start = |at: &str| list.iter().find(|r| r.started_at == at).unwrap();
    let (k, o) = (by_start("2026-12-04T07:00:00Z"), by_start("2026-12-04T08:00:00Z"));
    assert_eq!(
        (k.backup_job_id, k.status),
        (Some(completed), RecoveryStatus::Completed)
    );
    assert_eq!((o.backup_job_id, o.reached.as_ref()), (None, Some(&reached_on(4))));
}

fn reached_on(timeline: u32) -> strongbox_engines::pitr::Reached {
    strongbox_engines::pitr::Reached {
        timeline,
        from_timeline: timeline - 1,
        lsn: "0/5000028".parse().unwrap(),
        last_commit: None,
        promoted_at: time::macros::datetime!(2026-12-04 08:00:01 UTC),
    }
}

/// Many writers at once, as several replicas: 16 queue a job for one
/// deployment (one wins, the rest find it busy); 8 workers lease 12 jobs
/// of 12 deployments (each job leased once, all leased).
async fn concurrently(c: std::sync::Arc<dyn Catalog>) {
    c.ensure_domain("race").await.unwrap();
    for i in 0..12 {
        c.put_deployment(&NewDeployment {
            domain: "race".into(),
            name: format!("d{i}"),
            engine: "sqlite".into(),
            connection: serde_json::json!({}),
            runs_on: None,
        })
        .await
        .unwrap();
    }
    let queue = |i: usize, deployment: String| {
        let c = c.clone();
        tokio::spawn(async move {
            let job = NewJob {
                domain: "race".into(),
                ..new_job(&deployment, None)
            };
            start_backup(&*c, &job, &format!("TAG{i}"), false).await
        })
    };
    let racers: Vec<_> = (0..16).map(|i| queue(i, "d0".into())).collect();
    let mut created = 0;
    for r in racers {
        match r.await.unwrap() {
            Started::Created(_) => created += 1,
            Started::Busy(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(created, 1, "one active job per deployment");
    for i in 1..12 {
        assert!(matches!(
            queue(100 + i, format!("d{i}")).await.unwrap(),
            Started::Created(_)
        ));
    }
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(j) = c
                    .lease_job(&format!("w{w}"), Duration::from_secs(60), &[])
                    .await
                    .unwrap()
                {
                    mine.push(j.id);
                }
                mine
            })
        })
        .collect();
    let mut leased = Vec::new();
    for w in workers {
        leased.extend(w.await.unwrap());
    }
    leased.sort();
    let before = leased.len();
    leased.dedup();
    assert_eq!((before, leased.len()), (12, 12), "each job leased once: {leased:?}");
}

/// The catalog's tables, columns (with their kind of type) and explicit
/// indexes, as a database reports them after migrating.
type Schema = std::collections::BTreeSet<String>;

fn kind(declared: &str) -> &'static str {
    match declared.to_ascii_lowercase().as_str() {
        "text" => "text",
        "integer" | "bigint" | "bigserial" | "int8" => "integer",
        other => panic!("a column type the catalogs should not use: {other}"),
    }
}

fn sqlite_schema(path: &std::path::Path) -> Schema {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut out = Schema::new();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('sqlite_sequence', '_sqlx_migrations')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in tables {
        let mut st = c.prepare(&format!("PRAGMA table_info({t})")).unwrap();
        let cols = st
            .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .unwrap()
            .map(Result::unwrap);
        for (name, ty) in cols {
            out.insert(format!("column {t}.{name} {}", kind(&ty)));
        }
    }
    let indexes = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect::<Vec<_>>();
    out.extend(indexes.into_iter().map(|i| format!("index {i}")));
    out
}

async fn postgres_schema(url: &str) -> Schema {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut out = Schema::new();
    let cols: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (t, name, ty) in cols {
        out.insert(format!("column {t}.{name} {}", kind(&ty)));
    }
    // Not the ones PRIMARY KEY and UNIQUE constraints make (SQLite's
    // are its autoindexes).
    let indexes: Vec<(String,)> = sqlx::query_as(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey' \
         AND indexname NOT LIKE '%_key'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    out.extend(indexes.into_iter().map(|(i,)| format!("index {i}")));
    out
}

/// The two databases' migrations build the same tables, columns and
/// indexes: the one set of statements finds the same rows on either.
#[tokio::test]
async fn both_migrations_build_the_same_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    drop(SqlCatalog::open_sqlite(&path).await.unwrap());
    let db = strongbox_testkit::Database::create("strongbox_schema");
    drop(SqlCatalog::connect_postgres(&db.url).await.unwrap());
    let (sqlite, postgres) = (sqlite_schema(&path), postgres_schema(&db.url).await);
    assert!(sqlite.len() > 60, "{sqlite:?}");
    let only_sqlite: Vec<_> = sqlite.difference(&postgres).collect();
    let only_postgres: Vec<_> = postgres.difference(&sqlite).collect();
    assert!(
        only_sqlite.is_empty() && only_postgres.is_empty(),
        "only in SQLite: {only_sqlite:?}; only in PostgreSQL: {only_postgres:?}"
    );
}

#[tokio::test]
async fn sqlite_catalog_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let c = SqlCatalog::open_sqlite(&dir.path().join("catalog.db")).await.unwrap();
    suite(&c).await;
    // State survives reopening (a restarted server).
    drop(c);
    let c = SqlCatalog::open_sqlite(&dir.path().join("catalog.db")).await.unwrap();
    assert_eq!(c.deployments("usexample").await.unwrap().len(), 2);
    let config = strongbox_catalog::BackupConfig {
        auto_backup_enabled: true,
        schedule: strongbox_catalog::Schedule::Cron("0 2 * * *".into()),
        ..Default::default()
    };
    assert!(c.put_backup_config("usexample", "db12c", &config).await.unwrap());
    assert!(!c.put_backup_config("idcs-0123abc", "db12c", &config).await.unwrap());
    let all = c.all_deployments().await.unwrap();
    let names: Vec<_> = all.iter().map(|d| (d.domain.as_str(), d.name.as_str())).collect();
    assert_eq!(
        names,
        [("placed", "pinned"), ("usexample", "db12c"), ("usexample", "other")]
    );
    assert_eq!(all[1].backup_config, Ok(Some(config.clone())));
    assert_eq!(all[2].backup_config, Ok(None));
    concurrently(std::sync::Arc::new(c)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_catalog_passes_the_suite() {
    let db = strongbox_testkit::Database::create("strongbox_catalog");
    let c = SqlCatalog::connect_postgres(&db.url).await.unwrap();
    suite(&c).await;
    // State survives reconnecting (a restarted replica), and migrations
    // run once.
    drop(c);
    let c = open(&db.url).await.unwrap();
    assert_eq!(c.deployments("usexample").await.unwrap().len(), 2);
    concurrently(c).await;
}
