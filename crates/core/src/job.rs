//! Jobs as the core knows them: typed (`JobSpec`), stored with serde in the
//! catalog, and created in one place for every caller (the API, the
//! scheduler), with the same tags, activity-log lines and conflict rules.

use strongbox_catalog::{Job, NewJob, NewRecord, Started};

use crate::dates::db_tag;
use crate::{Error, Result, Service};

pub use strongbox_catalog::{Deletion, JobSpec, Operation, RecoveryAsked, SYSTEM, Trigger};

/// Who asks, and how: the caller's name and the `Idempotency-Key` that
/// makes a retried request return the same job.
#[derive(Clone, Debug)]
pub struct Origin {
    pub user: String,
    pub idempotency_key: Option<String>,
}

impl Origin {
    /// The server itself (the scheduler), under a key that makes the job
    /// once-only across servers.
    pub fn system(key: String) -> Origin {
        Origin {
            user: SYSTEM.into(),
            idempotency_key: Some(key),
        }
    }
}

impl Service {
    /// Queues `spec` for a deployment: the one place jobs are created.
    /// A second job while one is active is a `Conflict`.
    pub(crate) async fn create_job(
        &self,
        domain: &str,
        deployment: &str,
        spec: &JobSpec,
        origin: &Origin,
        record: impl Fn(&str) -> (NewRecord, String),
    ) -> Result<Job> {
        let operation = spec.operation();
        let job = NewJob {
            domain: domain.into(),
            deployment: deployment.into(),
            spec: spec.clone(),
            created_by: origin.user.clone(),
            idempotency_key: origin.idempotency_key.clone(),
            at: self.clock.now(),
        };
        // Most refusals need no write transaction: a job already active is
        // seen by a plain read (the transaction below decides every race).
        // Not with an idempotency key, whose own job is an answer, not a 409.
        let active = match &job.idempotency_key {
            None => self.catalog.active_job(domain, deployment).await?,
            Some(_) => None,
        };
        let started = match active {
            Some(running) => Started::Busy(running),
            None => loop {
                let tag = self.next_tag(domain, deployment, job.at, operation).await?;
                let (record, message) = record(&tag);
                match self.catalog.create_job(&job, &record, &message).await {
                    // Taken meanwhile (another server's backup of the
                    // deployment, in the same second): the next one.
                    Err(strongbox_catalog::Error::Duplicate(_)) => continue,
                    Err(strongbox_catalog::Error::NotFound(what)) => {
                        return Err(Error::NotFound(format!(
                            "no {what}; GET …/{deployment}/backups lists them"
                        )));
                    }
                    other => break other?,
                }
            },
        };
        match started {
            Started::Created(j) | Started::Existing(j) => {
                self.queued.notify_waiters();
                Ok(j)
            }
            Started::Busy(running) => Err(Error::Conflict(format!(
                "{} of {deployment} is already in progress (job {}); {}",
                running.operation.with_article(),
                running.id,
                match operation {
                    Operation::Backup | Operation::Expire | Operation::Verify => "retry when it has finished",
                    Operation::Recovery => "a recovery waits until it has finished",
                }
            ))),
        }
    }

    /// A backup's tag says when it was taken: `TAGyyyymmddThhmmss`, and
    /// `_2`, `_3`, … after it for further backups of the deployment within
    /// the same second (the API allows any string), found with one read.
    /// Jobs other than backups take no tag.
    pub(crate) async fn next_tag(
        &self,
        domain: &str,
        deployment: &str,
        at: time::OffsetDateTime,
        operation: Operation,
    ) -> Result<String> {
        let tag = db_tag(at);
        if operation != Operation::Backup {
            return Ok(tag);
        }
        Ok(match self.catalog.count_tags(domain, deployment, &tag).await? {
            0 => tag,
            taken => format!("{tag}_{}", taken + 1),
        })
    }

    /// Starts a backup of a deployment.
    pub async fn start_backup(
        &self,
        domain: &str,
        deployment: &str,
        keep_forever: bool,
        trigger: Trigger,
        origin: &Origin,
    ) -> Result<Job> {
        self.deployment(domain, deployment).await?;
        let by = match &trigger {
            Trigger::User => format!("requested by {}", origin.user),
            Trigger::Schedule { period } => format!("scheduled for {period}"),
            Trigger::Shipping { reason } => format!("for continuous archiving ({reason})"),
        };
        let spec = JobSpec::Backup { keep_forever, trigger };
        self.create_job(domain, deployment, &spec, origin, |tag| {
            (
                NewRecord::Backup {
                    db_tag: tag.into(),
                    keep_forever,
                },
                format!("backup {by} (tag {tag})"),
            )
        })
        .await
    }
}
