//! What an operator watches per deployment: when it was last backed up and
//! how far back and forward it can be recovered. `/metrics` and the console
//! read it; alerts are built on it (no backup for a day, an archive that
//! stopped reaching the present).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use strongbox_catalog::{BackupStatus, Deployment};
use time::OffsetDateTime;

use crate::dates::parse_rfc3339;
use crate::{Result, Service};

#[derive(Clone, Debug)]
pub struct DeploymentHealth {
    pub deployment: Deployment,
    /// When the newest completed backup completed.
    pub last_backup: Option<OffsetDateTime>,
    /// When a restore drill last proved one of its backups restorable.
    pub last_verified: Option<OffsetDateTime>,
    /// The earliest and the latest moment a recovery can reach: with a WAL
    /// archive, the current history's archived range; otherwise the oldest
    /// and newest completed backups.
    pub recoverable: Option<(OffsetDateTime, OffsetDateTime)>,
    /// With a WAL archive, its last archived commit; with a shipped log,
    /// the present minus the shipper's lag: how far a recovery reaches if
    /// the database is lost now.
    pub archived_until: Option<OffsetDateTime>,
}

impl Service {
    /// Every deployment of every identity domain, with its health.
    pub async fn health(&self) -> Result<Vec<DeploymentHealth>> {
        let mut all = Vec::new();
        for d in self.catalog.all_deployments().await? {
            all.push(self.deployment_health(d).await?);
        }
        Ok(all)
    }

    pub async fn deployment_health(&self, d: Deployment) -> Result<DeploymentHealth> {
        let backups = self.catalog.backups(&d.domain, &d.name).await?;
        let kept = || backups.iter().filter(|b| b.status == BackupStatus::Completed);
        let completed: Vec<OffsetDateTime> = kept()
            .filter_map(|b| b.completed_at.as_deref().and_then(parse_rfc3339))
            .collect();
        let last_verified = kept()
            .filter_map(|b| b.verification.as_ref().filter(|v| v.ok))
            .filter_map(|v| parse_rfc3339(&v.at))
            .max();
        let last_backup = completed.iter().max().copied();
        let from_backups = completed.iter().min().copied().zip(last_backup);
        // While the repository cannot be read, what the catalog knows.
        let reach = match self.pitr_status(&d).await?.map(|p| p.reach) {
            Some(Err(message)) => {
                tracing::debug!("{}: {message}", d.name);
                None
            }
            reach => reach.and_then(Result::ok),
        };
        let archived = reach.as_ref().and_then(|r| {
            let (first, last) = (r.ranges.first()?, r.ranges.last()?);
            Some((first.earliest_time, last.latest_time))
        });
        // A shipped SQLite log reaches as far as its shipper (on this
        // server): the present minus its lag, which counts from when
        // shipping stopped while no generation receives commits.
        let shipped_until = self
            .shippers
            .status(&d.domain, &d.name)
            .map(|s| self.clock.now() - s.lag);
        Ok(DeploymentHealth {
            deployment: d,
            last_backup,
            last_verified,
            archived_until: reach.and_then(|r| r.archived_until).or(shipped_until),
            recoverable: archived.or(from_backups),
        })
    }
}

/// What the server needs to answer, as last probed (`probe`): `None`
/// where it answered, else why not. `/strongbox/health` reads it, so a
/// load balancer's check costs no query.
#[derive(Default)]
pub struct Dependencies {
    pub catalog: Mutex<Option<String>>,
    pub repository: Mutex<Option<String>>,
}

impl Dependencies {
    /// Why the repository did not answer its last probe, if it did not.
    pub fn failing_repository(&self) -> Option<String> {
        self.repository.lock().expect("dependency").clone()
    }

    /// The failing dependencies, by name, with why.
    pub fn failing(&self) -> Vec<(&'static str, String)> {
        [("catalog", &self.catalog), ("repository", &self.repository)]
            .into_iter()
            .filter_map(|(name, m)| Some((name, m.lock().expect("dependency").clone()?)))
            .collect()
    }
}

/// Probes the catalog and the repository every `every`, until the server stops.
pub async fn probe(service: Arc<Service>, every: Duration) {
    // Probes of the repository that failed in a row: one slow answer (a
    // stalled request, which the store's client retries) is not an outage
    // and must not turn requests away; two are (the answer comes within
    // `every` of the second).
    let mut repository_misses = 0;
    loop {
        let catalog = match tokio::time::timeout(every, service.catalog.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(crate::Error::from(e).to_string()),
            Err(_) => Some(format!("the catalog did not answer within {} ms", every.as_millis())),
        };
        let repository = match service.repository() {
            None => None,
            Some(repo) => match tokio::time::timeout(every, repo.is_present()).await {
                Ok(Ok(true)) => None,
                Ok(Ok(false)) => Some("the repository's store no longer holds it (its config object is gone)".into()),
                Ok(Err(e)) => Some(format!("the repository cannot be read: {e}")),
                Err(_) => Some(format!("the repository did not answer within {} ms", every.as_millis())),
            },
        };
        repository_misses = if repository.is_some() { repository_misses + 1 } else { 0 };
        let repository = repository.filter(|_| repository_misses >= 2);
        for (now, was, what) in [
            (&catalog, &service.dependencies.catalog, "catalog"),
            (&repository, &service.dependencies.repository, "repository"),
        ] {
            let mut was = was.lock().expect("dependency");
            if *was != *now {
                match now {
                    Some(why) => tracing::warn!("the {what} is failing: {why}"),
                    None => tracing::info!("the {what} answers again"),
                }
                *was = now.clone();
            }
        }
        tokio::time::sleep(every).await;
    }
}
