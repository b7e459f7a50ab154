//! The repository describes itself (issue 27). Every backup's snapshot
//! carries what the service needs to list, recover and expire it (its
//! labels: domain, deployment, engine, tag, `keepForever`, when it began,
//! its typed position), and each deployment's engine settings and backup
//! configuration are a record beside the backups
//! (`records/deployments/DOMAIN/NAME`, sealed like every object). The
//! catalog is an index of them plus the job queue: `sync` brings into a
//! catalog what the repository holds and it lacks (after the data
//! directory was lost, or a catalog restored from an older copy), and
//! writes the records a catalog holds and the repository lacks (deployments
//! registered with `admin`, which does not open the repository). Users are
//! not in the repository: `admin user` makes them again (docs/operations.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strongbox_catalog::{
    BackupConfig, Deployment, ImportedBackup, ImportedRecovery, NewDeployment, RecoveryAsked, RecoveryStatus,
};
use strongbox_engines::Position;
use strongbox_engines::pitr::Reached;
use strongbox_repo::{Repository, Snapshot};

use crate::{Error, Result, Service};

/// The format of what this module writes (labels and records); a later
/// version reads this one (`tests/fixtures`).
pub const FORMAT: u32 = 1;

/// Snapshot labels of a backup.
pub mod label {
    pub const FORMAT: &str = "strongbox.format";
    pub const DOMAIN: &str = "domain";
    pub const DEPLOYMENT: &str = "deployment";
    pub const ENGINE: &str = "engine";
    pub const TAG: &str = "tag";
    /// The catalog's job id when it was taken (an earlier catalog's, after a rebuild).
    pub const JOB: &str = "job";
    pub const KEEP_FOREVER: &str = "keepForever";
    pub const STARTED_AT: &str = "startedAt";
    /// `Position::to_stored` (itself versioned).
    pub const POSITION: &str = "position";
}

const DEPLOYMENTS: &str = "deployments";
/// `deletions/DOMAIN/DEPLOYMENT/SNAPSHOT`: a backup a user deleted.
const DELETIONS: &str = "deletions";

/// A backup deleted through the API (`DELETE …/backups/{dbTag}`), written
/// before its snapshot is forgotten. A copy keeps the snapshot for its own
/// window (a deletion by mistake, or with a stolen password, leaves it
/// there for `strongbox repo restore`), and the record travels with the
/// copy's records, so a catalog rebuilt from any repository (a new
/// server on a copy, a primary made again from one) does not list or
/// recover it again: a user's deletion holds through every loss.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeletionRecord {
    v: u32,
    tag: String,
    deleted_at: String,
    /// The expire job's creator.
    by: String,
}
/// `recoveries/DOMAIN/DEPLOYMENT/STARTED_MS-JOB`, written when one ends.
const RECOVERIES: &str = "recoveries";

/// A recovery as the repository keeps it: the history's entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecoveryRecord {
    v: u32,
    domain: String,
    deployment: String,
    /// The backup it restored, by tag.
    from_backup: String,
    #[serde(default)]
    target: Option<RecoveryAsked>,
    status: String,
    started_at: String,
    #[serde(default)]
    completed_at: Option<String>,
    #[serde(default)]
    reached: Option<Reached>,
}

/// A deployment as the repository keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeploymentRecord {
    v: u32,
    domain: String,
    name: String,
    engine: String,
    connection: serde_json::Value,
    #[serde(default)]
    runs_on: Option<String>,
    #[serde(default)]
    backup_config: Option<BackupConfig>,
}

impl DeploymentRecord {
    fn of(d: &Deployment) -> Self {
        DeploymentRecord {
            v: FORMAT,
            domain: d.domain.clone(),
            name: d.name.clone(),
            engine: d.engine.clone(),
            connection: d.connection.clone(),
            runs_on: d.runs_on.clone(),
            backup_config: d.backup_config.clone().ok().flatten(),
        }
    }
}

/// What one `sync` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Deployments whose record was written (new or changed in the catalog).
    pub recorded: usize,
    /// Deployments brought back into the catalog from their records.
    pub deployments: usize,
    /// Backups brought back into the catalog from their snapshots.
    pub backups: usize,
    /// Recoveries brought back into the catalog's history from their records.
    pub recoveries: usize,
    /// Backups of deployments neither catalog nor repository knows the
    /// settings of, by `DOMAIN/DEPLOYMENT`: registering the deployment again
    /// under its name brings them back at the next sync.
    pub orphans: BTreeMap<String, usize>,
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} deployment record(s) written; {} deployment(s), {} backup(s) and {} recoveries brought into the \
             catalog",
            self.recorded, self.deployments, self.backups, self.recoveries
        )?;
        for (d, n) in &self.orphans {
            write!(
                f,
                "; {n} backup(s) of {d}, whose settings are nowhere: register it again under that name to see them"
            )?;
        }
        Ok(())
    }
}

/// The labels a backup's snapshot carries (the position comes later:
/// `position_label`).
pub(crate) fn backup_labels(
    d: &Deployment,
    tag: &str,
    job: i64,
    keep_forever: bool,
    started_at: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (label::FORMAT.to_string(), FORMAT.to_string()),
        (label::DOMAIN.to_string(), d.domain.clone()),
        (label::DEPLOYMENT.to_string(), d.name.clone()),
        (label::ENGINE.to_string(), d.engine.clone()),
        (label::TAG.to_string(), tag.to_string()),
        (label::JOB.to_string(), job.to_string()),
        (label::KEEP_FOREVER.to_string(), keep_forever.to_string()),
        (label::STARTED_AT.to_string(), started_at.to_string()),
    ])
}

pub(crate) fn position_label(position: Option<Position>) -> BTreeMap<String, String> {
    position
        .map(|p| (label::POSITION.to_string(), p.to_stored()))
        .into_iter()
        .collect()
}

/// The position a backup's snapshot carries.
pub(crate) fn position_of(s: &Snapshot) -> Option<Position> {
    Position::from_stored(s.labels.get(label::POSITION)?).ok()
}

/// A snapshot as the backup it is, if it is one of a deployment's.
fn imported(s: &Snapshot) -> Option<ImportedBackup> {
    let l = &s.labels;
    let get = |k: &str| l.get(k).cloned();
    let tag = get(label::TAG)?;
    Some(ImportedBackup {
        domain: get(label::DOMAIN)?,
        deployment: get(label::DEPLOYMENT)?,
        keep_forever: get(label::KEEP_FOREVER).is_some_and(|k| k == "true"),
        started_at: get(label::STARTED_AT).unwrap_or_else(|| s.time.clone()),
        completed_at: s.time.clone(),
        snapshot_id: s.id.to_hex(),
        logical_bytes: s.totals.logical_bytes,
        stored_bytes: s.totals.new_bytes_stored,
        position: position_of(s),
        message: format!(
            "backup {tag} found in the repository (snapshot {}) and indexed again",
            s.id.short()
        ),
        db_tag: tag,
    })
}

impl Service {
    /// The repository, on a server (tools that write only the catalog have none).
    pub fn repository(&self) -> Option<&Arc<Repository>> {
        self.wal.as_ref().map(|w| &w.repo)
    }

    /// Writes a deployment's record now (on registration and on each change
    /// of its backup configuration); a failure is logged and left to the
    /// next `sync`.
    pub(crate) async fn record_deployment(&self, d: &Deployment) {
        let Some(repo) = self.repository() else {
            return;
        };
        if let Err(e) = put_record(repo, &DeploymentRecord::of(d)).await {
            tracing::warn!(
                "recording deployment {} in the repository (the next sync tries again): {e}",
                d.name
            );
        }
    }

    /// Writes a recovery's record once it ended (its entry in the history);
    /// a failure is logged: the history is the one thing not rewritten by
    /// a later sync.
    pub(crate) async fn record_recovery(&self, domain: &str, job: i64) {
        let Some(repo) = self.repository() else {
            return;
        };
        let written = async {
            let Some(r) = self.catalog.recovery(domain, job).await? else {
                return Ok(());
            };
            let from = match r.backup_job_id {
                Some(id) => self.catalog.backup(domain, id).await?,
                None => None,
            };
            let started =
                crate::dates::parse_rfc3339(&r.started_at).map_or(0, |t| t.unix_timestamp_nanos() / 1_000_000);
            let record = RecoveryRecord {
                v: FORMAT,
                domain: r.domain.clone(),
                deployment: r.deployment.clone(),
                from_backup: from.map(|b| b.db_tag).unwrap_or_default(),
                target: r.target.clone(),
                status: r.status.as_str().to_string(),
                started_at: r.started_at.clone(),
                completed_at: r.completed_at.clone(),
                reached: r.reached.clone(),
            };
            let body = serde_json::to_vec(&record).map_err(Error::internal)?;
            let name = format!("{}/{}/{started:013}-{job}", r.domain, r.deployment);
            repo.put_record(RECOVERIES, &name, &body).await.map_err(repo_error)
        };
        if let Err(e) = written.await {
            tracing::warn!("recording recovery job {job} in the repository: {e}");
        }
    }

    /// Records that a user deleted backup `tag` (snapshot `snapshot`) of
    /// `job`'s deployment; before it is forgotten, so an error fails the
    /// deletion (its job is tried again) rather than let it come back.
    pub(crate) async fn record_deletion(&self, job: &strongbox_catalog::Job, tag: &str, snapshot: &str) -> Result<()> {
        let Some(repo) = self.repository() else {
            return Ok(());
        };
        let record = DeletionRecord {
            v: FORMAT,
            tag: tag.to_string(),
            deleted_at: crate::dates::rfc3339(self.clock.now()),
            by: job.created_by.clone(),
        };
        let body = serde_json::to_vec(&record).map_err(Error::internal)?;
        let name = format!("{}/{}/{snapshot}", job.domain, job.deployment);
        repo.put_record(DELETIONS, &name, &body).await.map_err(repo_error)
    }

    /// Brings the catalog and the repository's records into line (see the
    /// module's comment). Safe to run on several servers at once.
    pub async fn sync(&self) -> Result<SyncReport> {
        let repo = self
            .repository()
            .ok_or_else(|| Error::internal("no repository to sync the catalog with"))?
            .clone();
        let mut report = SyncReport::default();
        let known = self.sync_deployments(&repo, &mut report).await?;
        self.sync_backups(&repo, &known, &mut report).await?;
        // The recovery history, once its backups are indexed.
        self.sync_recoveries(&repo, &known, &mut report).await?;
        Ok(report)
    }

    /// Deployments: records written where the catalog's differ, catalog rows
    /// added from records; every deployment then known, by (domain, name).
    async fn sync_deployments(&self, repo: &Repository, report: &mut SyncReport) -> Result<Known> {
        let stored = repo.records(DEPLOYMENTS, "").await.map_err(repo_error)?;
        let mut records: BTreeMap<(String, String), DeploymentRecord> = BTreeMap::new();
        for (name, body) in stored {
            if let Some(r) = readable::<DeploymentRecord>("deployment", &name, &body) {
                records.insert((r.domain.clone(), r.name.clone()), r);
            }
        }
        let mut known: Known = self
            .catalog
            .all_deployments()
            .await?
            .into_iter()
            .map(|d| ((d.domain.clone(), d.name.clone()), d))
            .collect();
        // The catalog's deployments are the newer word: where they changed,
        // their records follow.
        for (key, d) in &known {
            let record = DeploymentRecord::of(d);
            if records.get(key) != Some(&record) {
                put_record(repo, &record).await?;
                report.recorded += 1;
            }
        }
        for (key, r) in &records {
            if known.contains_key(key) {
                continue;
            }
            self.catalog.ensure_domain(&r.domain).await?;
            let d = self
                .catalog
                .put_deployment(&NewDeployment {
                    domain: r.domain.clone(),
                    name: r.name.clone(),
                    engine: r.engine.clone(),
                    connection: r.connection.clone(),
                    runs_on: r.runs_on.clone(),
                })
                .await?;
            if let Some(c) = &r.backup_config {
                self.catalog.put_backup_config(&r.domain, &r.name, c).await?;
            }
            known.insert(key.clone(), d);
            report.deployments += 1;
        }
        Ok(known)
    }

    /// Backups: snapshots the catalog does not index yet.
    async fn sync_backups(&self, repo: &Repository, known: &Known, report: &mut SyncReport) -> Result<()> {
        let mut indexed = BTreeSet::new();
        for (domain, name) in known.keys() {
            for b in self.catalog.backups(domain, name).await? {
                indexed.extend(b.snapshot_id);
            }
        }
        let unindexed: Vec<String> = repo
            .snapshot_ids()
            .await
            .map_err(repo_error)?
            .iter()
            .map(|id| id.to_hex())
            .filter(|hex| !indexed.contains(hex) && !self.not_backups.lock().expect("not_backups").contains(hex))
            .collect();
        if unindexed.is_empty() {
            return Ok(());
        }
        // Snapshots users deleted (a copy may still hold them): not again.
        // Read only when some snapshot is not indexed: not every sync.
        let deleted: BTreeSet<String> = repo
            .records(DELETIONS, "")
            .await
            .map_err(repo_error)?
            .into_iter()
            .filter_map(|(name, _)| name.rsplit('/').next().map(str::to_string))
            .collect();
        // Imported oldest first, so that job ids follow the order backups
        // were taken in (ids are listed in random order).
        let mut found = Vec::new();
        for hex in unindexed {
            if deleted.contains(&hex) {
                // Not to be indexed again: not read again either.
                self.not_backups.lock().expect("not_backups").insert(hex);
                continue;
            }
            let snapshot = match repo.find_snapshot(&hex).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("snapshot {hex}: {e}");
                    continue;
                }
            };
            let Some(b) = imported(&snapshot) else {
                self.not_backups.lock().expect("not_backups").insert(hex);
                continue;
            };
            if !known.contains_key(&(b.domain.clone(), b.deployment.clone())) {
                *report
                    .orphans
                    .entry(format!("{}/{}", b.domain, b.deployment))
                    .or_default() += 1;
                continue;
            }
            found.push(b);
        }
        found.sort_by_cached_key(|b| (crate::dates::parse_rfc3339(&b.started_at), b.snapshot_id.clone()));
        for b in found {
            if self.catalog.import_backup(&b).await? {
                report.backups += 1;
            }
        }
        Ok(())
    }

    /// Recoveries the history lacks (read first: importing is a write
    /// transaction, even when it finds the entry).
    async fn sync_recoveries(&self, repo: &Repository, known: &Known, report: &mut SyncReport) -> Result<()> {
        let mut in_history = BTreeSet::new();
        for (domain, name) in known.keys() {
            for r in self.catalog.recoveries(domain, name).await? {
                in_history.insert((r.domain, r.deployment, r.started_at));
            }
        }
        for (name, body) in repo.records(RECOVERIES, "").await.map_err(repo_error)? {
            let Some(r) = readable::<RecoveryRecord>("recovery", &name, &body) else {
                continue;
            };
            if !known.contains_key(&(r.domain.clone(), r.deployment.clone()))
                || in_history.contains(&(r.domain.clone(), r.deployment.clone(), r.started_at.clone()))
            {
                continue;
            }
            let imported = ImportedRecovery {
                message: format!(
                    "recovery from backup {} found in the repository and indexed again",
                    r.from_backup
                ),
                domain: r.domain,
                deployment: r.deployment,
                from_tag: r.from_backup,
                target: r.target,
                status: RecoveryStatus::parse(&r.status),
                started_at: r.started_at,
                completed_at: r.completed_at,
                reached: r.reached,
            };
            if self.catalog.import_recovery(&imported).await? {
                report.recoveries += 1;
            }
        }
        Ok(())
    }
}

/// The catalog's deployments by (domain, name).
type Known = BTreeMap<(String, String), Deployment>;

/// A record this version can read: of a format no newer than its own (a
/// newer one is skipped with a warning rather than misread) and parsed.
fn readable<T: serde::de::DeserializeOwned>(kind: &str, name: &str, body: &[u8]) -> Option<T> {
    #[derive(Deserialize)]
    struct Format {
        v: u32,
    }
    let read = serde_json::from_slice::<Format>(body).and_then(|f| match f.v {
        v if v > FORMAT => Ok(Err(v)),
        _ => serde_json::from_slice::<T>(body).map(Ok),
    });
    match read {
        Ok(Ok(r)) => Some(r),
        Ok(Err(v)) => {
            tracing::warn!("{kind} record {name} has format {v} (newer than {FORMAT}): skipped");
            None
        }
        Err(e) => {
            tracing::warn!("{kind} record {name} is unreadable: {e}");
            None
        }
    }
}

async fn put_record(repo: &Repository, r: &DeploymentRecord) -> Result<()> {
    let body = serde_json::to_vec(r).map_err(Error::internal)?;
    repo.put_record(DEPLOYMENTS, &format!("{}/{}", r.domain, r.name), &body)
        .await
        .map_err(repo_error)
}

fn repo_error(e: strongbox_repo::Error) -> Error {
    Error::repository("the repository", e)
}

/// Syncs every `every` (a backup another server or the repository CLI wrote
/// appears in this server's catalog), logging what each round brought.
pub async fn sync_periodically(service: Arc<Service>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match service.sync().await {
            Ok(r) if r.recorded + r.deployments + r.backups + r.recoveries == 0 => {}
            Ok(r) => tracing::info!("catalog sync: {r}"),
            Err(e) => tracing::warn!("catalog sync: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a later version may write is skipped, not misread: a record of
    /// a newer format (even one this version could parse) is not read.
    #[test]
    fn records_of_a_newer_format_are_skipped() {
        let record = |v: u32| {
            serde_json::to_vec(&RecoveryRecord {
                v,
                domain: "d".into(),
                deployment: "app".into(),
                from_backup: "TAG1".into(),
                target: None,
                status: "COMPLETED".into(),
                started_at: "2026-12-05T14:00:00.000Z".into(),
                completed_at: None,
                reached: None,
            })
            .unwrap()
        };
        let read = |body: &[u8]| readable::<RecoveryRecord>("recovery", "d/app/1-1", body).map(|r| r.from_backup);
        assert_eq!(read(&record(FORMAT)), Some("TAG1".to_string()));
        assert_eq!(read(&record(FORMAT + 1)), None);
        assert_eq!(read(br#"{"v": 1, "domain": 7}"#), None);
        assert_eq!(read(b"not json"), None);
    }
}
