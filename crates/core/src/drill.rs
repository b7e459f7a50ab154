//! Restore drills (issue 31): a deployment's backups proven restorable by
//! restoring them. A drill recovers its newest backup, one older backup
//! chosen at random and, where its log reaches moments, a random moment
//! after the newest backup, each into a scratch place beside the
//! deployment's own that its engine names (`Engine::drill_place`: a hidden
//! file, data directory or database; never the live one), checks what
//! came back with the database's own checks (`Engine::check`), removes
//! the scratch place, and records the outcome on the backup
//! (`lastVerified`, `verifyStatus`, `verifyMessage`). A failed drill fails
//! its job naming the backup and what failed; the backup stays.
//!
//! A drill is the deployment's active job while it runs (one at a time): a
//! backup asked for meanwhile gets 409, and a scheduled backup due
//! meanwhile is queued by the scheduler's next round after it (a period's
//! backup stays due until the next period begins), not skipped.

use std::sync::Arc;

use strongbox_catalog::{Backup, Drill, Job, NewRecord, RecoveryInto, Verification};
use strongbox_engines::Engine;
use time::OffsetDateTime;

use crate::job::{JobSpec, Origin};
use crate::pitr::RecoveryPlan;
use crate::recovery::{RecoveryRequest, completed_at};
use crate::{Error, Result, Service};

impl Service {
    /// Plans a drill of `deployment` now and queues it.
    pub async fn start_drill(&self, domain: &str, deployment: &str, origin: &Origin) -> Result<Job> {
        let d = self.deployment(domain, deployment).await?;
        let engine = self.engine_of(&d)?;
        if engine.drill_place().is_none() {
            return Err(Error::Invalid(format!(
                "{deployment} is a {} deployment, which names no scratch place to drill its backups in",
                d.engine
            )));
        }
        let usable = self.backups_held(domain, deployment, true).await?;
        let Some(newest) = usable.last() else {
            return Err(Error::Invalid(format!(
                "{deployment} has no completed backup to drill; start one with POST …/{deployment}/backups"
            )));
        };
        // Which older backup and which moment: different each drill.
        let mut chosen = vec![newest];
        if usable.len() > 1 {
            chosen.push(&usable[rand::random_range(0..usable.len() - 1)]);
        }
        let mut drills: Vec<Drill> = chosen
            .into_iter()
            .map(|b| drill(b, crate::recovery::backup_plan(b, "")))
            .collect();
        if engine.capabilities().point_in_time || self.ships(&d) {
            // Moments are whole seconds: from the first after the newest
            // backup completed to now.
            let completed = completed_at(newest).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let from = completed.replace_nanosecond(0).unwrap_or(completed) + time::Duration::SECOND;
            let span = (self.clock.now() - from).whole_seconds().max(0) as usize;
            let at = from + time::Duration::seconds(rand::random_range(0..=span) as i64);
            let request = RecoveryRequest::Time { at, timeline: None };
            let planned = match self.planner(&d, &usable, &request).await {
                Ok(planner) => planner.plan(&request, &d, &usable).await,
                Err(e) => Err(e),
            };
            match planned {
                Ok((b, plan)) => drills.push(drill(&b, plan)),
                // The moment is not recoverable (yet): the backups are
                // drilled all the same.
                Err(e) => tracing::info!("drill of {deployment}: no moment drilled: {e}"),
            }
        }
        let spec = JobSpec::Verify { drills: drills.clone() };
        let what: Vec<&str> = drills.iter().map(|d| d.description.as_str()).collect();
        let message = format!("restore drill requested by {}: {}", origin.user, what.join("; "));
        self.create_job(domain, deployment, &spec, origin, |_| {
            (NewRecord::None, message.clone())
        })
        .await
    }

    /// The engine a drill of `d` recovers into, and how it is asked for.
    pub(crate) fn drill_engine(&self, d: &strongbox_catalog::Deployment) -> Result<(Arc<dyn Engine>, RecoveryInto)> {
        let place = self
            .engine_of(d)?
            .drill_place()
            .ok_or_else(|| Error::Invalid(format!("{} names no scratch place to drill its backups in", d.name)))?;
        let into = RecoveryInto {
            settings: place,
            replace: true,
        };
        Ok((self.engine_into(d, &into)?, into))
    }
}

/// The drill's outcome for one backup, as recorded.
pub(crate) fn verification(at: OffsetDateTime, outcome: &std::result::Result<String, String>) -> Verification {
    Verification {
        at: crate::dates::rfc3339(at),
        ok: outcome.is_ok(),
        message: match outcome {
            Ok(m) | Err(m) => m.clone(),
        },
    }
}

/// One recovery of a drill, from backup `b` as `plan` says.
fn drill(b: &Backup, plan: RecoveryPlan) -> Drill {
    Drill {
        from: b.job_id,
        tag: b.db_tag.clone(),
        target: plan.target,
        description: plan.description,
    }
}
