//! Each copy's own recovery window (issue 28). A copy keeps what
//! `retention::keep` needs under its window (`recovery_window_days` in
//! `copies`, else the deployment's `recoveryWindowInDays`), with the
//! deployment's `minimumBackupsKept` and every `keepForever` backup, among
//! the backups it holds or is to be brought. Backups the primary has let go
//! count too: a copy with a longer window keeps a backup deleted from the
//! primary (by its window, by mistake, or with a stolen password) until its
//! own window ends; one with a shorter window is not brought backups it
//! would let go at once.
//!
//! What a copy no longer keeps is forgotten there and its packs pruned;
//! WAL segments older than its oldest remaining base backup (but for what
//! planning reads: `Service::wal_planning_reads`) and shipped generations
//! no remaining backup starts are deleted there and not brought again
//! (`LogFloor`, which `mirror_wal` consults).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use strongbox_catalog::{Backup, BackupStatus, Deployment};
use strongbox_engines::{pitr::segment_number, sqlite_ship};
use time::OffsetDateTime;

use crate::copies::RepoCopy;
use crate::pitr::WalArchives;
use crate::retention::{Kept, keep};
use crate::{Error, Result, Service};

/// What a copy should hold, as of one round.
pub(crate) struct CopyPlan {
    /// Completed backups it lacks and keeps, oldest first, with their
    /// completion and snapshot.
    pub to_copy: Vec<(Backup, Option<OffsetDateTime>, String)>,
    /// Backups it holds and no longer keeps, by deployment.
    pub to_expire: Vec<(Deployment, Vec<Backup>)>,
    /// What the backups it keeps need of each deployment's log.
    pub floor: LogFloor,
    /// The archives whose floor rose since the last round (or that had
    /// none, a server's first): the only ones the copy may hold files of
    /// that are needless now, since WAL rounds never bring such files.
    pub raised: BTreeSet<String>,
}

/// Per log archive, what a copy's remaining base backups need: WAL
/// segments from the oldest one's start (and the files planning reads
/// before it), shipped generations they start. An archive it says nothing
/// of keeps everything.
#[derive(Clone, Debug, Default)]
pub struct LogFloor(BTreeMap<String, ArchiveFloor>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ArchiveFloor {
    /// (first segment number, segment size) of the oldest base backup kept.
    first_segment: Option<(u64, u64)>,
    /// WAL files before it that planning reads.
    planning_reads: BTreeSet<String>,
    /// Shipped generations of backups it let go (or never took) and keeps
    /// none of: a generation no backup starts yet (the one shipping now,
    /// after a recovery) is not among them.
    needless_generations: BTreeSet<String>,
}

impl LogFloor {
    /// Whether the copy no longer needs `name` of `archive`.
    pub fn needless(&self, archive: &str, name: &str) -> bool {
        let Some(f) = self.0.get(archive) else {
            return false;
        };
        if let Some((first, size)) = f.first_segment
            && segment_number(name, size).is_some_and(|n| n < first)
            && !f.planning_reads.contains(name)
        {
            return true;
        }
        sqlite_ship::parse_object_name(name).is_some_and(|(g, _, _)| f.needless_generations.contains(g))
    }
}

impl Service {
    /// What `copy` should be brought and let go, by its window at `now`.
    pub(crate) async fn copy_plan(&self, copy: &RepoCopy, now: OffsetDateTime) -> Result<CopyPlan> {
        let stored = copy.floor();
        let mut plan = CopyPlan {
            to_copy: Vec::new(),
            to_expire: Vec::new(),
            floor: LogFloor::default(),
            raised: BTreeSet::new(),
        };
        for d in self.catalog.all_deployments().await? {
            let held: HashSet<i64> = self
                .catalog
                .copies(&d.domain, &d.name)
                .await?
                .into_iter()
                .filter(|c| c.copy == copy.name)
                .map(|c| c.backup_job_id)
                .collect();
            let all = self.catalog.backups(&d.domain, &d.name).await?;
            // Completed in the primary, or held by the copy whatever the primary did since.
            let candidates: Vec<(Backup, OffsetDateTime)> = all
                .iter()
                .filter(|b| b.status == BackupStatus::Completed || held.contains(&b.job_id))
                .filter(|b| b.snapshot_id.is_some())
                .filter_map(|b| Some((b.clone(), crate::recovery::completed_at(b)?)))
                .collect();
            let config = self.config_of(&d)?;
            let window = copy.window_days.unwrap_or(config.recovery_window_in_days);
            let rule: Vec<Kept> = candidates
                .iter()
                .map(|(b, at)| Kept {
                    id: b.job_id,
                    completed: *at,
                    // The primary let it go: its keepForever went with it.
                    keep_forever: b.keep_forever && b.status == BackupStatus::Completed,
                })
                .collect();
            let kept = keep(&rule, now, window, config.minimum_backups_kept);
            let mut expire = Vec::new();
            let mut kept_backups = Vec::new();
            for (b, at) in candidates {
                match (kept.contains(&b.job_id), held.contains(&b.job_id)) {
                    (true, held) => {
                        if !held && b.status == BackupStatus::Completed {
                            let id = b.snapshot_id.clone().unwrap_or_default();
                            plan.to_copy.push((b.clone(), Some(at), id));
                        }
                        kept_backups.push(b);
                    }
                    (false, true) => expire.push(b),
                    (false, false) => {}
                }
            }
            let archive = WalArchives::archive(&d.domain, &d.name);
            let stored = stored.0.get(&archive);
            if let Some(f) = self
                .archive_floor(&d, &all, &kept_backups, !expire.is_empty(), stored)
                .await?
            {
                if !expire.is_empty() || stored != Some(&f) {
                    plan.raised.insert(archive.clone());
                }
                plan.floor.0.insert(archive, f);
            }
            if !expire.is_empty() {
                plan.to_expire.push((d, expire));
            }
        }
        plan.to_copy.sort_by_key(|(_, at, _)| *at);
        Ok(plan)
    }

    /// What `kept` (a deployment's backups a copy keeps) need of its log;
    /// `None` (keep it all) when one of them has no known position. The
    /// WAL floor is found anew (finding what planning reads may read WAL)
    /// only where the copy lets backups go (`expiring`) or had none (a
    /// server's first round): else its oldest kept base backup is the same.
    async fn archive_floor(
        &self,
        d: &Deployment,
        all: &[Backup],
        kept: &[Backup],
        expiring: bool,
        stored: Option<&ArchiveFloor>,
    ) -> Result<Option<ArchiveFloor>> {
        let positions: Option<Vec<_>> = kept.iter().map(|b| b.position.clone()).collect();
        let Some(positions) = positions.filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let generation = |b: &Backup| Some(b.position.as_ref()?.shipped_base()?.generation.clone());
        let kept_generations: BTreeSet<String> = kept.iter().filter_map(generation).collect();
        let mut floor = ArchiveFloor {
            needless_generations: all
                .iter()
                .filter_map(generation)
                .filter(|g| !kept_generations.contains(g))
                .collect(),
            ..Default::default()
        };
        let wal: Option<Vec<_>> = positions.iter().map(|p| p.wal().cloned()).collect();
        if let Some(oldest) = wal.and_then(|w| w.into_iter().min_by_key(|p| p.start_lsn)) {
            match stored.filter(|s| !expiring && s.first_segment.is_some()) {
                Some(s) => {
                    floor.first_segment = s.first_segment;
                    floor.planning_reads = s.planning_reads.clone();
                }
                None => {
                    floor.first_segment = Some((oldest.start_lsn.0 / oldest.segment_size, oldest.segment_size));
                    floor.planning_reads = match self.wal_planning_reads(d).await {
                        Ok(reads) => reads,
                        // Not knowing them, the copy keeps its whole log this round.
                        Err(e) => {
                            tracing::warn!("finding the WAL planning reads of {}: {e}", d.name);
                            return Ok(None);
                        }
                    };
                }
            }
        }
        Ok(Some(floor))
    }

    /// Lets go in `to` (copy `copy`) what its window no longer keeps: the
    /// backups' snapshots forgotten and the catalog told, packs pruned,
    /// then the log files its floor marks needless deleted (where it rose:
    /// `CopyPlan::raised`). Returns how
    /// many backups and log files went.
    pub(crate) async fn expire_in_copy(
        &self,
        copy: &RepoCopy,
        to: &WalArchives,
        plan: &CopyPlan,
    ) -> Result<(usize, usize)> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| Error::unavailable(format!("{what} in copy {}: {e}", copy.name));
        let mut backups = 0;
        if !plan.to_expire.is_empty() {
            let present = to
                .repo
                .snapshot_ids()
                .await
                .map_err(|e| failed("listing snapshots", &e))?;
            for (d, expire) in &plan.to_expire {
                let ids: HashSet<&str> = expire.iter().filter_map(|b| b.snapshot_id.as_deref()).collect();
                let forget: Vec<_> = present
                    .iter()
                    .filter(|p| ids.contains(p.to_hex().as_str()))
                    .copied()
                    .collect();
                to.repo
                    .forget(&forget)
                    .await
                    .map_err(|e| failed("forgetting backups", &e))?;
                let job_ids: Vec<i64> = expire.iter().map(|b| b.job_id).collect();
                self.catalog
                    .forget_copies(&d.domain, &d.name, &copy.name, &job_ids)
                    .await?;
                let tags: Vec<&str> = expire.iter().map(|b| b.db_tag.as_str()).collect();
                tracing::info!(
                    "copy {}: {} of {} outside its recovery window, forgotten",
                    copy.name,
                    tags.join(", "),
                    d.name
                );
                backups += expire.len();
            }
            to.repo
                .prune(&Default::default())
                .await
                .map_err(|e| failed("pruning", &e))?;
        }
        let mut files = 0;
        for archive in &plan.raised {
            let doomed: Vec<String> = to
                .repo
                .wal_list(archive)
                .await
                .map_err(|e| failed("listing WAL", &e))?
                .into_iter()
                .map(|f| f.name)
                .filter(|name| plan.floor.needless(archive, name))
                .collect();
            if !doomed.is_empty() {
                to.repo
                    .wal_remove(archive, &doomed)
                    .await
                    .map_err(|e| failed("deleting WAL", &e))?;
                files += doomed.len();
            }
        }
        Ok((backups, files))
    }
}
