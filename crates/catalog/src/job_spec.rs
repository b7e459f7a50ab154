//! What a job does, typed: stored with serde (here, the one place) in the
//! job's row, read back as it was queued.

use serde::{Deserialize, Serialize};
use strongbox_engines::RecoveryTarget;

use crate::{Job, Operation};

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

/// The name jobs the server starts itself are created by.
pub const SYSTEM: &str = "SYSTEM";

impl JobSpec {
    pub fn operation(&self) -> Operation {
        match self {
            JobSpec::Backup { .. } => Operation::Backup,
            JobSpec::Recovery { .. } => Operation::Recovery,
            JobSpec::Expire { .. } => Operation::Expire,
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

impl Job {
    /// What the job does. Jobs queued before specs were kept are backups
    /// (recoveries of that time have no plan to run).
    pub fn spec(&self) -> Result<JobSpec, String> {
        match (&self.spec, self.operation) {
            (Some(spec), _) => Ok(spec.clone()),
            (None, Operation::Backup) => Ok(JobSpec::Backup {
                keep_forever: false,
                trigger: Trigger::User,
            }),
            (None, other) => Err(format!(
                "job {} was queued by an earlier Strongbox version without a plan (or one this version cannot \
                 read); request the {other} again",
                self.id
            )),
        }
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
