//! Jobs as the core knows them: typed (`JobSpec`), stored with serde in the
//! catalog, and created in one place for every caller (the API, the
//! scheduler), with the same tags, activity-log lines and conflict rules.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use strongbox_catalog::{Job, NewJob, NewRecord, Started};
use strongbox_engines::RecoveryTarget;

use crate::dates::db_tag;
use crate::{Error, Result, Service};

/// What a job does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobSpec {
    Backup {
        #[serde(rename = "keepForever")]
        keep_forever: bool,
        trigger: Trigger,
    },
    /// Recovery in place from the backup made by job `from`, to `target`,
    /// as planned when the request was accepted (`description` says it in
    /// words for the activity log).
    Recovery {
        from: i64,
        target: RecoveryTarget,
        description: String,
    },
    /// Forgets these backups (by the jobs that made them), then prunes the
    /// repository and the WAL archives of what no backup needs any more.
    Expire { backups: Vec<i64> },
}

/// Who asked for a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// A user, through the API.
    User,
    /// The server's own schedule, for the period named.
    Schedule { period: String },
    /// Continuous archiving, which needs a base for a new generation of
    /// the shipped log (it began, or continuity was lost: `reason`).
    Shipping { reason: String },
}

/// A job's kind, as the DBCS wire names it (`job_operation`, the status
/// path's `{requestName}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Backup,
    Recovery,
    Expire,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Backup => "backup",
            Operation::Recovery => "recovery",
            Operation::Expire => "expire",
        }
    }
}

impl JobSpec {
    pub fn operation(&self) -> Operation {
        match self {
            JobSpec::Backup { .. } => Operation::Backup,
            JobSpec::Recovery { .. } => Operation::Recovery,
            JobSpec::Expire { .. } => Operation::Expire,
        }
    }

    /// The spec a job was queued with. Jobs queued before specs were kept
    /// are backups (recoveries of that time have no plan to run).
    pub fn of(job: &Job) -> Result<JobSpec> {
        match &job.spec {
            Some(spec) => serde_json::from_value(spec.clone())
                .map_err(|e| Error::Internal(format!("job {} has an unreadable spec: {e}", job.id))),
            None if job.operation == Operation::Backup.as_str() => Ok(JobSpec::Backup {
                keep_forever: false,
                trigger: Trigger::User,
            }),
            None => Err(Error::Invalid(format!(
                "job {} was queued by an earlier Strongbox version without a plan; request the {} again",
                job.id, job.operation
            ))),
        }
    }

    /// `USER` or `SYSTEM`, as the activity log's `initiatedBy` says.
    pub fn initiated_by(&self, created_by: &str) -> &'static str {
        match self {
            JobSpec::Backup {
                trigger: Trigger::Schedule { .. } | Trigger::Shipping { .. },
                ..
            } => "SYSTEM",
            JobSpec::Expire { .. } if created_by == SYSTEM => "SYSTEM",
            _ => "USER",
        }
    }
}

/// The name jobs the server starts itself are created by.
pub const SYSTEM: &str = "SYSTEM";

/// Who asks, and how: the caller's name, the request as sent, and the
/// `Idempotency-Key` that makes a retried request return the same job.
#[derive(Clone, Debug)]
pub struct Origin {
    pub user: String,
    pub params: Value,
    pub idempotency_key: Option<String>,
}

impl Origin {
    /// The server itself (the scheduler), under a key that makes the job
    /// once-only across servers.
    pub fn system(key: String) -> Origin {
        Origin {
            user: SYSTEM.into(),
            params: serde_json::json!({}),
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
            operation: operation.as_str().into(),
            spec: serde_json::to_value(spec).map_err(Error::internal)?,
            params: origin.params.clone(),
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
        // Backup tags are per second and unique; a backup within the same
        // second as another takes the next free second.
        let mut tag_time = job.at;
        let started = if let Some(running) = active {
            Started::Busy(running)
        } else {
            loop {
                let (record, message) = record(&db_tag(tag_time));
                match self.catalog.create_job(&job, &record, &message).await {
                    Err(strongbox_catalog::Error::Duplicate(_)) => tag_time += time::Duration::SECOND,
                    Err(strongbox_catalog::Error::NotFound(what)) => {
                        return Err(Error::NotFound(format!(
                            "no {what}; GET …/{deployment}/backups lists them"
                        )));
                    }
                    other => break other?,
                }
            }
        };
        match started {
            Started::Created(j) | Started::Existing(j) => {
                self.queued.notify_waiters();
                Ok(j)
            }
            Started::Busy(running) => Err(Error::Conflict(format!(
                "a {} of {deployment} is already in progress (job {}); {}",
                running.operation,
                running.id,
                match operation {
                    Operation::Backup | Operation::Expire => "retry when it has finished",
                    Operation::Recovery => "a recovery waits until it has finished",
                }
            ))),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_stored_in_a_stable_form_and_read_back() {
        let scheduled = JobSpec::Backup {
            keep_forever: true,
            trigger: Trigger::Schedule {
                period: "2026-11-30".into(),
            },
        };
        let stored = serde_json::to_value(&scheduled).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"backup": {"keepForever": true, "trigger": {"schedule": {"period": "2026-11-30"}}}})
        );
        assert_eq!(serde_json::from_value::<JobSpec>(stored).unwrap(), scheduled);
        assert_eq!(scheduled.initiated_by(SYSTEM), "SYSTEM");
        let recovery = JobSpec::Recovery {
            from: 7,
            target: RecoveryTarget::Backup { position: None },
            description: "restore backup TAG1".into(),
        };
        let back: JobSpec = serde_json::from_value(serde_json::to_value(&recovery).unwrap()).unwrap();
        assert_eq!(
            (back.operation(), back.initiated_by("alice")),
            (Operation::Recovery, "USER")
        );
        let expire = JobSpec::Expire { backups: vec![3] };
        assert_eq!(
            (expire.initiated_by(SYSTEM), expire.initiated_by("alice")),
            ("SYSTEM", "USER")
        );
        assert!(serde_json::from_value::<JobSpec>(serde_json::json!({"restore": {}})).is_err());
    }
}
