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
        /// What the request named (`None` for jobs queued before it was kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asked: Option<RecoveryAsked>,
        /// The repository the client named to read (the primary or a
        /// copy); `None`: the primary, falling back to copies.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository: Option<String>,
        /// Into another place than the deployment's own (`None`: in place).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        into: Option<RecoveryInto>,
    },
    /// A restore drill: each backup recovered into a scratch place of the
    /// server's choosing, checked by its engine, the place removed, and
    /// the outcome recorded on the backup (`Catalog::record_verification`).
    Verify { drills: Vec<Drill> },
    /// Forgets these backups (by the jobs that made them), then prunes the
    /// repository and the WAL archives of what no backup needs any more.
    Expire {
        backups: Vec<i64>,
        /// The deletion a user asked for (`None`: the recovery window's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deletion: Option<Deletion>,
    },
}

/// One recovery of a restore drill: from the backup made by job `from`
/// (`tag`), to `target`, as planned when the drill was queued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drill {
    pub from: i64,
    pub tag: String,
    pub target: RecoveryTarget,
    pub description: String,
}

/// A recovery into another place than the deployment's (a copy to look
/// at, a clone): the deployment's settings it names instead (those its
/// engine's `Capabilities::recovers_into` lists), and whether what is
/// there may be overwritten. The deployment itself is not touched, and
/// its recovery history does not list it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryInto {
    pub settings: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub replace: bool,
}

/// A backup a user asked to delete (`DELETE …/backups/{dbTag}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deletion {
    pub db_tag: String,
    pub force: bool,
}

/// A recovery's target as the request named it, in the client's words:
/// what the recovery history and the job's request parameters show. Stored
/// as the request's own fields (`{"latest": true}`, `{"dbTag": …}`,
/// `{"timestamp": …, "timeline": …}`, `{"scn": …}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AskedFields", into = "AskedFields")]
pub enum RecoveryAsked {
    Latest,
    Tag(String),
    Timestamp { timestamp: String, timeline: Option<u32> },
    Scn { scn: String, timeline: Option<u32> },
}

/// `RecoveryAsked`'s stored form.
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AskedFields {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    latest: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    /// Clients may send a decimal position as a number.
    #[serde(skip_serializing_if = "Option::is_none")]
    scn: Option<ScnWords>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ScnWords {
    Text(String),
    Number(u64),
}

impl TryFrom<AskedFields> for RecoveryAsked {
    type Error = String;

    fn try_from(f: AskedFields) -> Result<Self, String> {
        let timeline = f.timeline;
        Ok(match (f.latest, f.db_tag, f.timestamp, f.scn) {
            (true, None, None, None) => RecoveryAsked::Latest,
            (false, Some(tag), None, None) => RecoveryAsked::Tag(tag),
            (false, None, Some(timestamp), None) => RecoveryAsked::Timestamp { timestamp, timeline },
            (false, None, None, Some(scn)) => RecoveryAsked::Scn {
                scn: match scn {
                    ScnWords::Text(s) => s,
                    ScnWords::Number(n) => n.to_string(),
                },
                timeline,
            },
            _ => return Err("a recovery target names exactly one of latest, dbTag, timestamp, scn".into()),
        })
    }
}

impl From<RecoveryAsked> for AskedFields {
    fn from(a: RecoveryAsked) -> Self {
        match a {
            RecoveryAsked::Latest => AskedFields {
                latest: true,
                ..Default::default()
            },
            RecoveryAsked::Tag(tag) => AskedFields {
                db_tag: Some(tag),
                ..Default::default()
            },
            RecoveryAsked::Timestamp { timestamp, timeline } => AskedFields {
                timestamp: Some(timestamp),
                timeline,
                ..Default::default()
            },
            RecoveryAsked::Scn { scn, timeline } => AskedFields {
                scn: Some(ScnWords::Text(scn)),
                timeline,
                ..Default::default()
            },
        }
    }
}

/// Its stored form, e.g. `{"dbTag":"TAG20261205T072159"}` (in messages).
impl std::fmt::Display for RecoveryAsked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| std::fmt::Error)?)
    }
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

/// The name backups indexed from the repository are created by (the
/// catalog rebuilt: their jobs ran in an earlier catalog).
pub const IMPORTED: &str = "repository";

impl JobSpec {
    pub fn operation(&self) -> Operation {
        match self {
            JobSpec::Backup { .. } => Operation::Backup,
            JobSpec::Recovery { .. } => Operation::Recovery,
            JobSpec::Expire { .. } => Operation::Expire,
            JobSpec::Verify { .. } => Operation::Verify,
        }
    }

    /// `USER` or `SYSTEM`, as the activity log's `initiatedBy` says.
    pub fn initiated_by(&self, created_by: &str) -> &'static str {
        match self {
            JobSpec::Backup {
                trigger: Trigger::Schedule { .. } | Trigger::Shipping { .. },
                ..
            } => "SYSTEM",
            JobSpec::Expire { .. } | JobSpec::Verify { .. } if created_by == SYSTEM => "SYSTEM",
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
            asked: Some(RecoveryAsked::Tag("TAG1".into())),
            repository: Some("offsite".into()),
            into: Some(RecoveryInto {
                settings: serde_json::json!({"path": "/srv/copies/app.db"})
                    .as_object()
                    .unwrap()
                    .clone(),
                replace: true,
            }),
        };
        let back: JobSpec = serde_json::from_value(serde_json::to_value(&recovery).unwrap()).unwrap();
        assert_eq!(back, recovery);
        assert_eq!(
            (back.operation(), back.initiated_by("alice")),
            (Operation::Recovery, "USER")
        );
        let expire = JobSpec::Expire {
            backups: vec![3],
            deletion: None,
        };
        assert_eq!(
            (expire.initiated_by(SYSTEM), expire.initiated_by("alice")),
            ("SYSTEM", "USER")
        );
        let JobSpec::Recovery { into: Some(into), .. } = &back else {
            panic!("{back:?}")
        };
        assert_eq!(into.settings["path"], "/srv/copies/app.db");
        assert!(serde_json::from_value::<JobSpec>(serde_json::json!({"restore": {}})).is_err());
        // Specs queued before the request was kept still read.
        let old = serde_json::json!({"recovery": {"from": 7, "target": {"backup": {"position": null}},
            "description": "restore backup TAG1"}});
        assert!(matches!(
            serde_json::from_value::<JobSpec>(old).unwrap(),
            JobSpec::Recovery { asked: None, .. }
        ));
    }

    #[test]
    fn recovery_targets_keep_the_requests_words() {
        use serde_json::json;
        let forms = [
            (RecoveryAsked::Latest, json!({"latest": true})),
            (RecoveryAsked::Tag("TAG1".into()), json!({"dbTag": "TAG1"})),
            (
                RecoveryAsked::Timestamp {
                    timestamp: "2026-12-05T10:00:00+01:00".into(),
                    timeline: Some(2),
                },
                json!({"timestamp": "2026-12-05T10:00:00+01:00", "timeline": 2}),
            ),
            (
                RecoveryAsked::Scn {
                    scn: "0/3000060".into(),
                    timeline: None,
                },
                json!({"scn": "0/3000060"}),
            ),
        ];
        for (asked, stored) in forms {
            assert_eq!(serde_json::to_value(&asked).unwrap(), stored);
            assert_eq!(serde_json::from_value::<RecoveryAsked>(stored).unwrap(), asked);
        }
        // What catalogs of earlier versions hold: a decimal scn as sent.
        assert_eq!(
            serde_json::from_value::<RecoveryAsked>(json!({"scn": 50331744})).unwrap(),
            RecoveryAsked::Scn {
                scn: "50331744".into(),
                timeline: None
            }
        );
        assert!(serde_json::from_value::<RecoveryAsked>(json!({"latest": true, "dbTag": "T"})).is_err());
        assert!(serde_json::from_value::<RecoveryAsked>(json!({})).is_err());
    }
}
