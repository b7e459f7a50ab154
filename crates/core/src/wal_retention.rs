//! WAL archives against the base backups that replay from them: `check`
//! verifies that each base backup's WAL is archived without a gap from its
//! start on, and `prune` deletes WAL older than an archive's oldest kept
//! base backup, but for what planning still reads. A base backup is a
//! snapshot labelled with the archive it replays from (`wal_archive`, set
//! by the server for `postgresql` deployments) whose `backup_label` says
//! where its replay starts.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use strongbox_engines::pitr::{self, Archived, BasePosition, History, segment_number};
use strongbox_repo::{NoProgress, Repository, Snapshot};

use crate::pitr::WAL_ARCHIVE_LABEL as WAL_ARCHIVE;

struct Base {
    snapshot: String,
    archive: String,
    position: BasePosition,
}

async fn bases(repo: &Repository) -> Result<Vec<Base>> {
    let mut bases = Vec::new();
    for snap in repo.snapshots().await? {
        let Some(archive) = snap.labels.get(WAL_ARCHIVE).cloned() else {
            continue;
        };
        let position = position(repo, &snap)
            .await
            .with_context(|| format!("base backup {}", snap.id.short()))?;
        bases.push(Base {
            snapshot: snap.id.short(),
            archive,
            position,
        });
    }
    Ok(bases)
}

/// Where the snapshot's replay starts; the segment size is that of the
/// WAL segments it holds.
async fn position(repo: &Repository, snap: &Snapshot) -> Result<BasePosition> {
    let segment_size = snap
        .files
        .iter()
        .find(|f| f.name.starts_with("pg_wal/"))
        .map(|f| f.size)
        .context("it holds no WAL segment")?;
    let mut label = Vec::new();
    repo.restore_to_writer(snap, "backup_label", &mut label, &NoProgress)
        .await?;
    let (timeline, start_lsn) =
        BasePosition::label_start(&String::from_utf8_lossy(&label)).map_err(anyhow::Error::msg)?;
    Ok(BasePosition {
        timeline,
        start_lsn,
        // Unknown here; the start is what continuity is checked from.
        stop_lsn: start_lsn,
        stop_time: time::OffsetDateTime::UNIX_EPOCH,
        segment_size,
    })
}

/// Problems found: a base backup whose WAL is missing, or broken by a gap.
pub async fn check(repo: &Repository) -> Result<(usize, Vec<String>)> {
    let bases = bases(repo).await?;
    let mut listings: BTreeMap<String, Archived> = BTreeMap::new();
    let mut problems = Vec::new();
    for b in &bases {
        if !listings.contains_key(&b.archive) {
            listings.insert(b.archive.clone(), Archived::new(&repo.wal_list(&b.archive).await?));
        }
        let what = format!("base backup {} (WAL archive {})", b.snapshot, b.archive);
        match pitr::reach(&listings[&b.archive], &b.position, &History::alone(b.position.timeline)) {
            None => problems.push(format!(
                "{what}: its first WAL segment {} is not archived",
                b.position.start_segment()
            )),
            Some(r) if r.gap.is_some() => problems.push(format!(
                "{what}: WAL segment {} is missing, so point-in-time recovery from it ends at scn {}",
                r.gap.unwrap_or_default(),
                r.latest_lsn
            )),
            Some(_) => {}
        }
    }
    Ok((bases.len(), problems))
}

/// Deletes the WAL files (segments, partial segments, backup histories)
/// of `archive` before the start of its oldest base backup, except those in
/// `keep` (what planning still reads: `Service::wal_planning_reads`);
/// timeline histories stay. Returns how many were deleted.
pub async fn prune(repo: &Repository, archive: &str, keep: &BTreeSet<String>) -> Result<usize> {
    let Some(oldest) = bases(repo)
        .await?
        .into_iter()
        .filter(|b| b.archive == archive)
        .map(|b| b.position)
        .min_by_key(|p| p.start_lsn)
    else {
        return Ok(0);
    };
    let first = oldest.start_lsn.0 / oldest.segment_size;
    let doomed: Vec<String> = repo
        .wal_list(archive)
        .await?
        .into_iter()
        .filter(|f| segment_number(&f.name, oldest.segment_size).is_some_and(|n| n < first))
        .filter(|f| !keep.contains(&f.name))
        .map(|f| f.name)
        .collect();
    repo.wal_remove(archive, &doomed).await?;
    Ok(doomed.len())
}
