//! What the engine tests share: a real repository in a temporary
//! directory, backups into it and recoveries out of it, the way the
//! server's workers run them.
#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use strongbox_engines::{Engine, RecoveryContext, RecoveryTarget, SnapshotFiles};
use strongbox_repo::{BackupOptions, Counters, Repository, Snapshot, Store};

pub struct Repo {
    pub dir: tempfile::TempDir,
    pub repo: Arc<Repository>,
}

impl Repo {
    pub async fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(&dir.path().join("repo")).unwrap();
        let repo = Repository::init(store, b"test", Default::default()).await.unwrap();
        std::fs::create_dir(dir.path().join("scratch")).unwrap();
        Repo {
            dir,
            repo: Arc::new(repo),
        }
    }

    pub fn scratch(&self) -> std::path::PathBuf {
        self.dir.path().join("scratch")
    }

    pub async fn backup(&self, engine: Arc<dyn Engine>) -> Result<Snapshot, String> {
        let scratch = self.scratch();
        let streams = tokio::task::spawn_blocking(move || {
            engine.backup(&strongbox_engines::BackupContext {
                scratch: &scratch,
                shipper: None,
            })
        })
        .await
        .unwrap()
        .map_err(|e| e.to_string())?;
        let options = BackupOptions {
            tags: vec![],
            labels: BTreeMap::new(),
            ..Default::default()
        };
        self.repo
            .backup_sources(streams.sources, options, Arc::new(Counters::default()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Recovers from `snapshot`; the summary and the activity-log lines.
    pub async fn recover(&self, engine: Arc<dyn Engine>, snapshot: &Snapshot) -> (Result<String, String>, Vec<String>) {
        let files = SnapshotFiles::new(
            self.repo.clone(),
            snapshot.clone(),
            tokio::runtime::Handle::current(),
            Arc::new(Counters::default()),
        );
        let scratch = self.scratch();
        tokio::task::spawn_blocking(move || {
            let log = Mutex::new(Vec::new());
            let cx = RecoveryContext {
                scratch: &scratch,
                log: &|m| log.lock().unwrap().push(m),
                wal: None,
                shipper: None,
                drill: false,
            };
            let result = engine
                .recover(&files, &RecoveryTarget::Backup { position: None }, &cx)
                .map(|r| r.summary)
                .map_err(|e| e.to_string());
            (result, log.into_inner().unwrap())
        })
        .await
        .unwrap()
    }
}
