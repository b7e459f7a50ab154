//! The catalog rebuilt from the repository, measured (issue 27; run by
//! `bench/catalog_sync.sh`): a repository with BACKUPS backups spread over
//! DEPLOYMENTS deployments (each a snapshot labelled as the server labels
//! them, each deployment with its record), then a server with an empty
//! SQLite catalog syncs: the time it takes, and what a sync that finds
//! nothing new costs in CPU (a running server syncs every `sync_seconds`).
//!
//!   cargo run --release -p strongbox-core --example catalog_sync -- DIR [DEPLOYMENTS] [BACKUPS]

use std::sync::Arc;
use std::time::Instant;

use strongbox_core::Service;
use strongbox_core::pitr::WalArchives;
use strongbox_core::records::{FORMAT, label};
use strongbox_repo::{BackupOptions, NoProgress, Repository, Source, Store};

fn cpu_seconds() -> f64 {
    // /proc/self/stat: utime and stime, fields 14 and 15, in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

async fn service(catalog: &std::path::Path, repo: Arc<Repository>, scratch: &std::path::Path) -> Service {
    let catalog = strongbox_catalog::SqlCatalog::open_sqlite(catalog).await.unwrap();
    let mut s = Service::new(Arc::new(catalog));
    s.wal = Some(Arc::new(WalArchives::new(repo, String::new(), scratch.to_path_buf())));
    s.host_policy.database_files.push(scratch.to_path_buf());
    s
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("DIR"));
    let deployments: usize = args.get(2).map_or(100, |n| n.parse().unwrap());
    let backups: usize = args.get(3).map_or(10_000, |n| n.parse().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let repo = Arc::new(
        Repository::init(
            Store::local(&dir.join("repository")).unwrap(),
            b"bench",
            Default::default(),
        )
        .await
        .unwrap(),
    );
    // The first server: deployments registered (their records written),
    // then the backups, as snapshots with the server's labels.
    let first = service(&dir.join("first.sqlite"), repo.clone(), &dir).await;
    for d in 0..deployments {
        let path = dir.join(format!("d{d:03}.db"));
        first
            .register_deployment(
                "bench",
                &format!("d{d:03}"),
                "sqlite".into(),
                serde_json::json!({"path": path}),
                None,
            )
            .await
            .unwrap();
    }
    let started = Instant::now();
    let per = backups.div_ceil(deployments);
    let mut made = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for b in 0..backups {
        let (repo, d) = (repo.clone(), b % deployments);
        let tag = format!("TAG20261205T{:06}", b / deployments);
        tasks.spawn(async move {
            let labels = [
                (label::FORMAT, FORMAT.to_string()),
                (label::DOMAIN, "bench".into()),
                (label::DEPLOYMENT, format!("d{d:03}")),
                (label::ENGINE, "sqlite".into()),
                (label::TAG, tag),
                (label::KEEP_FOREVER, "false".into()),
                (label::STARTED_AT, "2026-12-05T10:00:00Z".into()),
            ];
            let opts = BackupOptions {
                labels: labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                ..Default::default()
            };
            let data = format!("backup {b} of deployment {d}").into_bytes();
            let source = Source::new("db", std::io::Cursor::new(data));
            repo.backup(vec![source], opts, Arc::new(NoProgress)).await.unwrap();
        });
        if tasks.len() >= 8 {
            tasks.join_next().await.unwrap().unwrap();
            made += 1;
        }
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
        made += 1;
    }
    eprintln!(
        "made {made} backups ({per} per deployment) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The host lost: a new server, an empty catalog, the same repository
    // opened anew, with a cold page cache (as root) as a new host has it.
    drop((first, repo));
    let repo = Arc::new(
        Repository::open(Store::local(&dir.join("repository")).unwrap(), b"bench")
            .await
            .unwrap(),
    );
    let cold = std::process::Command::new("sh")
        .args(["-c", "sync && echo 3 > /proc/sys/vm/drop_caches"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(cold, "cannot drop the page cache: run the benchmark as root");
    let second = service(&dir.join("second.sqlite"), repo.clone(), &dir).await;
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    let report = second.sync().await.unwrap();
    let (rebuild, rebuild_cpu) = (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    assert_eq!(report.deployments, deployments, "{report}");
    assert_eq!(report.backups, backups, "{report}");
    println!(
        "rebuild: {deployments} deployments, {backups} backups in {rebuild:.2} s ({rebuild_cpu:.2} s CPU, cold cache)"
    );
    // Syncs that find nothing new: what a running server pays every round.
    let rounds = 5;
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..rounds {
        let r = second.sync().await.unwrap();
        assert_eq!(r.backups + r.deployments + r.recorded, 0, "{r}");
    }
    let per_sync = (cpu_seconds() - cpu) / rounds as f64;
    println!(
        "idle sync: {:.3} s wall, {per_sync:.3} s CPU each; every 60 s that is {:.2} % of a core",
        wall.elapsed().as_secs_f64() / rounds as f64,
        per_sync / 60.0 * 100.0
    );
}
