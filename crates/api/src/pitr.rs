//! Point-in-time recovery behind the API: each `postgresql` deployment
//! archives its WAL into the server's repository under its own archive
//! (`DOMAIN/DEPLOYMENT`), with the commands this module spells out; a
//! recovery to a `timestamp` or `scn` is planned here from the catalog's
//! base backup positions and the archive's listing, before any job is
//! queued.

use std::sync::Arc;

use serde_json::{Value, json};
use strongbox_catalog::{Backup, BackupStatus, Deployment};
use strongbox_engines::pitr::{self, Archived, BasePosition, PointTarget, Reach, Unreachable};
use strongbox_repo::Repository;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ApiError;
use crate::handlers::api_date;

/// The engine whose backups replay from an archive.
pub const ENGINE: &str = "postgresql";

/// Keys of a recovery's recorded target that carry the planned point in
/// time to the worker: PostgreSQL's `recovery_target_time` / `_lsn` values.
pub const TARGET_TIME: &str = "recoveryTargetTime";
pub const TARGET_LSN: &str = "recoveryTargetLsn";

/// The server's repository, which holds every deployment's WAL archive, and
/// the command line that reaches it (`strongbox repo -r … --password-file …`).
pub struct WalArchives {
    pub repo: Arc<Repository>,
    pub cli: String,
}

impl WalArchives {
    pub fn archive(domain: &str, deployment: &str) -> String {
        format!("{domain}/{deployment}")
    }

    /// PostgreSQL's `archive_command` for the deployment.
    pub fn archive_command(&self, domain: &str, deployment: &str) -> String {
        format!(
            "{} wal-push --archive {} %p",
            self.cli,
            Self::archive(domain, deployment)
        )
    }

    /// PostgreSQL's `restore_command` for the deployment.
    pub fn restore_command(&self, domain: &str, deployment: &str) -> String {
        format!(
            "{} wal-fetch --archive {} %f %p",
            self.cli,
            Self::archive(domain, deployment)
        )
    }
}

/// A deployment's base backups (completed, with positions) and archived WAL.
pub(crate) struct History {
    bases: Vec<(Backup, BasePosition)>,
    archived: Archived,
}

impl History {
    /// `None` when the deployment cannot recover to a point in time at all.
    pub(crate) async fn of(
        archives: Option<&WalArchives>,
        d: &Deployment,
        backups: &[Backup],
    ) -> Result<Option<History>, ApiError> {
        let Some(archives) = archives.filter(|_| d.engine == ENGINE) else {
            return Ok(None);
        };
        let bases = backups
            .iter()
            .filter(|b| b.status == BackupStatus::Completed)
            .filter_map(|b| Some((b.clone(), serde_json::from_value(b.position.clone()?).ok()?)))
            .collect();
        let files = archives
            .repo
            .wal_list(&WalArchives::archive(&d.domain, &d.name))
            .await
            .map_err(|e| ApiError::internal(format!("listing the WAL archive of {}: {e}", d.name)))?;
        Ok(Some(History {
            bases,
            archived: Archived::new(&files),
        }))
    }

    fn positions(&self) -> Vec<BasePosition> {
        self.bases.iter().map(|(_, p)| p.clone()).collect()
    }

    /// The base backup to replay from to reach `target`.
    pub(crate) fn choose(&self, target: PointTarget) -> Result<&Backup, Unreachable> {
        let i = pitr::choose(&self.positions(), &self.archived, target)?;
        Ok(&self.bases[i].0)
    }

    pub(crate) fn recoverable(&self) -> Vec<Reach> {
        pitr::recoverable(&self.positions(), &self.archived)
    }
}

/// Timestamps as requests spell them: whole seconds, so the earliest is
/// the first whole second after the base backup's consistency point.
fn request_time(t: OffsetDateTime, round_up: bool) -> String {
    let whole = t.replace_nanosecond(0).unwrap_or(t);
    let t = if round_up {
        whole + time::Duration::SECOND
    } else {
        whole
    };
    api_date(&t.format(&Rfc3339).unwrap_or_default())
}

/// The recoverable range as `GET …/{serviceId}` reports it.
pub(crate) fn range_json(ranges: &[Reach]) -> Value {
    let part = |r: &Reach| {
        json!({
            "earliest": {"timestamp": request_time(r.earliest_time, true), "scn": r.earliest_lsn.to_string()},
            "latest": {"timestamp": request_time(r.latest_time, false), "scn": r.latest_lsn.to_string()},
        })
    };
    match (ranges.first(), ranges.last()) {
        (Some(first), Some(last)) => json!({
            "earliest": part(first)["earliest"],
            "latest": part(last)["latest"],
            "ranges": ranges.iter().map(part).collect::<Vec<_>>(),
        }),
        _ => Value::Null,
    }
}

/// The 400 for a target the archive cannot reach, naming what can be.
pub(crate) fn unreachable(what: &str, service: &str, u: &Unreachable) -> ApiError {
    let ranges: Vec<String> = u
        .ranges
        .iter()
        .map(|r| {
            format!(
                "from {} (scn {}) to {} (scn {})",
                request_time(r.earliest_time, true),
                r.earliest_lsn,
                request_time(r.latest_time, false),
                r.latest_lsn
            )
        })
        .collect();
    let range = if ranges.is_empty() {
        format!(
            "nothing of {service} is recoverable to a point in time yet: that needs a base backup taken while its WAL \
             is archived (GET …/{service} shows the archive_command to set)"
        )
    } else {
        format!("{service} is recoverable {}", ranges.join(", and "))
    };
    ApiError::bad_request(format!("{what} cannot be recovered: {}; {range}", u.why))
}
