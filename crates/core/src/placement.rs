//! Placement: which servers run a deployment's jobs. A physical PostgreSQL
//! backup must run where the data directory is, so a deployment may name a
//! label (`runsOn`); a server announces its labels (`labels` in its
//! config) and leases only jobs of deployments that name none or one of
//! them. A job whose label no live server has says so in its status
//! instead of waiting silently.

use std::sync::Arc;
use std::time::Duration;

use strongbox_catalog::Job;

use crate::{Error, Result, Service};

/// How often a server announces itself; it is live for three periods.
pub const ANNOUNCE: Duration = Duration::from_secs(5);

/// Checks a label as a deployment's `runsOn` or a server's label.
pub fn check_label(label: &str) -> Result<()> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "label {label:?} is not 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

impl Service {
    /// What a queued job's status says while it waits.
    pub async fn waiting(&self, job: &Job) -> Result<String> {
        let d = self.deployment(&job.domain, &job.deployment).await?;
        let Some(label) = d.runs_on else {
            return Ok("waiting for a worker".into());
        };
        if self.catalog.live_labels(3 * ANNOUNCE).await?.contains(&label) {
            Ok(format!("waiting for a worker on a server labelled {label}"))
        } else {
            Ok(format!(
                "waiting: no live server is labelled {label}, which {} names in runsOn; start one with labels = \
                 [\"{label}\"] in its config (STRONGBOX_LABELS={label})",
                d.name
            ))
        }
    }
}

/// Announces this server and its labels, forever.
pub async fn announcer(service: Arc<Service>, owner: String, labels: Vec<String>) {
    loop {
        if let Err(e) = service.catalog.announce(&owner, &labels).await {
            tracing::warn!("announcing this server failed: {e}");
        }
        tokio::time::sleep(ANNOUNCE).await;
    }
}
