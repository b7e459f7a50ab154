//! The API's response bodies, as the DBCS documents them (plus Strongbox's
//! documented additions), typed so that `/openapi.json` describes exactly
//! what the handlers send.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};

/// One backup in `backupList`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupItem {
    pub db_tag: String,
    /// `IN PROGRESS`, `COMPLETED` or `FAILED`.
    pub status: String,
    pub backup_start_date: String,
    pub keep_forever: bool,
    pub job_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_complete_date: Option<String>,
    /// The same as `backupCompleteDate` (both spellings occur upstream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_completed_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<i64>,
    /// Strongbox: where a PostgreSQL base backup's replay ends (its consistency point).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scn: Option<String>,
    /// Strongbox: the timeline the base backup was taken on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Strongbox: when the recovery window lets this backup go (if no
    /// backup is added); absent for `keepForever` ones and the newest
    /// `minimumBackupsKept`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Strongbox: the copies (`copies` in the server's configuration)
    /// holding this backup.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<String>,
    /// Strongbox: when this backup's last restore drill ended (absent:
    /// never drilled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_verified: Option<String>,
    /// Strongbox: `OK` (restored and passed its engine's check) or
    /// `FAILED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_status: Option<String>,
    /// Strongbox: what the drill's check found, or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_message: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupList {
    pub backup_list: Vec<BackupItem>,
}

/// Where a point-in-time recovery stopped (Strongbox).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReachedPoint {
    pub scn: String,
    pub from_timeline: u32,
    /// The timeline the recovery began.
    pub timeline: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_commit: Option<String>,
}

/// One recovery in `recoveryList`; the target the request named is
/// repeated (`latest`, `dbTag`, `timestamp`, `scn`, `timeline`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryItem {
    pub recovery_start_date: String,
    pub status: String,
    pub job_id: i64,
    pub from_backup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_complete_date: Option<String>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub target: serde_json::Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached: Option<ReachedPoint>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryList {
    pub recovery_list: Vec<RecoveryItem>,
}

#[derive(Serialize, ToSchema)]
pub struct Progress {
    pub bytes_done: i64,
    pub bytes_total: Option<i64>,
    pub percent: Option<f64>,
}

/// A job's state as its status (behind a `Location`) words it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub enum JobState {
    #[serde(rename = "In Progress")]
    InProgress,
    Succeeded,
    Failed,
}

/// A recovery target as the request named it, as its fields.
pub fn words(asked: Option<&strongbox_catalog::RecoveryAsked>) -> serde_json::Map<String, Value> {
    match asked.map(serde_json::to_value) {
        Some(Ok(Value::Object(fields))) => fields,
        _ => Default::default(),
    }
}

/// A job's `job_request_parameters`: what its request asked for, from the
/// job's typed spec.
pub fn request_parameters(spec: Option<&strongbox_catalog::JobSpec>) -> Value {
    use strongbox_catalog::{JobSpec, Trigger};
    match spec {
        Some(JobSpec::Backup {
            keep_forever,
            trigger: Trigger::User,
        }) => serde_json::json!({ "keepForever": keep_forever }),
        Some(JobSpec::Recovery { asked, into, .. }) => {
            let mut words = words(asked.as_ref());
            if let Some(into) = into {
                words.insert("target".into(), Value::Object(into.settings.clone()));
                words.insert("replace".into(), Value::Bool(into.replace));
            }
            Value::Object(words)
        }
        Some(JobSpec::Expire {
            deletion: Some(deletion),
            ..
        }) => serde_json::to_value(deletion).unwrap_or_default(),
        _ => serde_json::json!({}),
    }
}

impl From<strongbox_catalog::JobStatus> for JobState {
    fn from(s: strongbox_catalog::JobStatus) -> Self {
        use strongbox_catalog::JobStatus as S;
        match s {
            S::Queued | S::Running => JobState::InProgress,
            S::Succeeded => JobState::Succeeded,
            S::Failed => JobState::Failed,
        }
    }
}

/// A job's state as the activity log words it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ActivityState {
    New,
    Running,
    Succeed,
    Failed,
}

impl From<strongbox_catalog::JobStatus> for ActivityState {
    fn from(s: strongbox_catalog::JobStatus) -> Self {
        use strongbox_catalog::JobStatus as S;
        match s {
            S::Queued => ActivityState::New,
            S::Running => ActivityState::Running,
            S::Succeeded => ActivityState::Succeed,
            S::Failed => ActivityState::Failed,
        }
    }
}

/// A job's status, behind a `Location`.
#[derive(Serialize, ToSchema)]
pub struct JobStatus {
    pub job_id: i64,
    pub job_operation: String,
    pub job_status: JobState,
    pub job_start_date: String,
    pub creation_time: String,
    pub last_modified_time: String,
    pub created_by: String,
    pub identity_domain: String,
    pub description: String,
    /// What the request asked for, in its fields (`{"keepForever": true}`,
    /// `{"latest": true}`, `{"dbTag": …, "force": …}`); `{}` for jobs the
    /// server started itself.
    #[schema(value_type = Object)]
    pub job_request_parameters: Value,
    pub message: String,
    #[serde(rename = "service-uri")]
    pub service_uri: String,
    pub progress: Progress,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityMessage {
    pub activity_date: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityLog {
    pub activity_log_id: i64,
    pub service_name: String,
    pub service_type: String,
    pub identity_domain: String,
    pub job_id: i64,
    pub start_date: String,
    pub end_date: Option<String>,
    pub status: ActivityState,
    pub operation_type: String,
    pub summary_message: String,
    pub auth_domain: String,
    pub auth_user: String,
    /// `USER` or `SYSTEM` (the schedule).
    pub initiated_by: String,
    pub messages: Vec<ActivityMessage>,
}

/// One edge of a recoverable range.
#[derive(Serialize, ToSchema)]
pub struct RangeEdge {
    pub scn: String,
    /// Absent when no whole second lies inside the range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RangePart {
    pub earliest: RangeEdge,
    pub latest: RangeEdge,
}

#[derive(Serialize, ToSchema)]
pub struct RecoverableRange {
    pub timeline: u32,
    pub earliest: RangeEdge,
    pub latest: RangeEdge,
    pub ranges: Vec<RangePart>,
}

/// Strongbox: point-in-time recovery of a `postgresql` deployment.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointInTimeRecovery {
    /// PostgreSQL's `archive_command` to set.
    pub archive_command: String,
    /// What replay runs (Strongbox sets it during a recovery).
    pub restore_command: String,
    /// The server's timeline as it answers, else the newest archived;
    /// absent while neither is known (`incomplete` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_timeline: Option<u32>,
    pub server_answers: bool,
    /// The recoverable range of the current history; null if none yet,
    /// absent while the repository does not answer (`incomplete` says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recoverable_range: Option<Option<RecoverableRange>>,
}

#[derive(Serialize, ToSchema)]
pub struct Instance {
    pub service_name: String,
    pub service_uri: String,
    pub status: String,
    pub creation_time: String,
    pub identity_domain: String,
    pub backup_destination: String,
    pub engine: String,
    #[serde(rename = "pointInTimeRecovery", skip_serializing_if = "Option::is_none")]
    pub point_in_time_recovery: Option<PointInTimeRecovery>,
    /// Strongbox, on one deployment's view: its backup configuration.
    #[serde(rename = "backupConfig", skip_serializing_if = "Option::is_none")]
    pub backup_config: Option<BackupConfig>,
    /// Strongbox, on one deployment's view: its latest completed backup.
    #[serde(rename = "lastBackup", skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupItem>,
    /// Strongbox: the label of the servers that run its jobs.
    #[serde(rename = "runsOn", skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
    /// Strongbox, on one deployment's view, when its log is shipped.
    #[serde(rename = "continuousArchiving", skip_serializing_if = "Option::is_none")]
    pub continuous_archiving: Option<ContinuousArchiving>,
    /// Strongbox, on one deployment's view: the server's copies and how
    /// far each is behind its repository.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyStatus>,
    /// Strongbox, on one deployment's view: what it leaves out and why
    /// (the repository does not answer now); asked again once it does,
    /// the view is whole.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
    /// Strongbox: the settings a recovery into another place may name
    /// (`target` of a recovery request; SQLite `path`); absent: in place
    /// only.
    #[serde(rename = "recoversInto", skip_serializing_if = "Vec::is_empty")]
    pub recovers_into: Vec<String>,
}

/// Strongbox: one copy (a further repository) as its copier last found it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyStatus {
    pub name: String,
    /// How long the oldest backup or WAL file it lacks has waited (0: none).
    pub lag_seconds: f64,
    /// Backups waiting to be copied.
    pub pending_backups: usize,
    /// Why the last round failed, if it did.
    pub error: Option<String>,
    pub last_round: Option<String>,
}

/// Strongbox: continuous archiving of a SQLite deployment's log.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContinuousArchiving {
    /// A shipper runs on the server that answered.
    pub shipping: bool,
    /// The generation being shipped (null: waiting for its base backup).
    pub generation: Option<String>,
    pub shipped_transactions: u64,
    /// How long the oldest transaction read but not yet stored has waited:
    /// what a crash of the server now would lose.
    pub lag_seconds: Option<f64>,
    /// Why shipping stopped, if it did.
    pub error: Option<String>,
    /// Stretches recoverable to any second, oldest first; absent while
    /// the repository does not answer (`incomplete` says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<TimeRange>>,
    /// PostgreSQL: the WAL the receiver's replication slot keeps on the
    /// database server, in bytes (it grows while the receiver is away).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_held_bytes: Option<u64>,
    /// PostgreSQL: the WAL receiver's application name, to list in the
    /// server's `synchronous_standby_names` with `synchronousArchiving`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_name: Option<String>,
}

/// One generation of a shipped log: recoverable to any second and any
/// position (`scn`, `GENERATION:N`) between its edges.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeRange {
    pub earliest: String,
    /// `now` while the shipper is on this stretch.
    pub latest: String,
    /// The generation's base: `GENERATION:0`.
    pub earliest_scn: String,
    /// Its last transaction shipped so far.
    pub latest_scn: String,
}

#[derive(Serialize, ToSchema)]
pub struct InstanceList {
    pub service_type: String,
    pub implementation_version: String,
    pub services: Vec<Instance>,
    pub uri: String,
}

/// Every error: a status code and what was wrong and how to fix it.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
}

/// `POST …/backups`: `{}` or `{"keepForever": true}`.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBackup {
    /// Keep this backup outside the recovery window.
    #[serde(rename = "keepForever", default)]
    pub keep_forever: bool,
}

/// `POST …/backups/recovery`: exactly one of `latest`, `tag`, `timestamp`, `scn`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRecovery {
    pub latest: Option<Value>,
    pub tag: Option<String>,
    pub timestamp: Option<String>,
    pub scn: Option<Value>,
    /// Strongbox: the timeline whose history a `timestamp` or `scn` belongs to.
    pub timeline: Option<Value>,
    /// Accepted as the DBCS documents it; a recovery keeps nothing.
    #[serde(rename = "keepForever", default)]
    pub keep_forever: bool,
    /// Strongbox: the repository to read, `primary` or a copy's name
    /// (unnamed: the primary, then each copy holding the backup).
    #[serde(default, deserialize_with = "present_string")]
    pub repository: Option<String>,
    /// Strongbox: recover into this place instead of in place: the
    /// deployment's settings it names instead (SQLite: `{"path": …}`;
    /// PostgreSQL: `{"data_dir": …, "port": …}`).
    pub target: Option<Value>,
    /// Strongbox: whether what is at `target` may be overwritten.
    pub replace: Option<bool>,
}

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

/// An object of exactly these properties (`required` ones first).
fn object(required: &[(&str, Schema)], optional: &[(&str, Schema)], description: &str) -> Schema {
    let mut o = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    for (name, schema) in required {
        o = o.property(*name, schema.clone()).required(*name);
    }
    for (name, schema) in optional {
        o = o.property(*name, schema.clone());
    }
    o.build().into()
}

/// `dd-MMM-yyyy HH:mm:ss`, with an optional ` UTC`.
const TIMESTAMP_PATTERN: &str = "^(0[1-9]|[12][0-9]|3[01])-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-(19|20)[0-9]{2} \
                                 ([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]( UTC)?$";

impl utoipa::PartialSchema for StartRecovery {
    fn schema() -> RefOr<Schema> {
        let keep: Schema = ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .description(Some("accepted as the DBCS documents it; a recovery keeps nothing"))
            .build()
            .into();
        let timeline: Schema = OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)))
            .item(string("a whole number").pattern(Some("^[1-9][0-9]{0,8}$")))
            .description(Some(
                "Strongbox: the timeline whose history the target belongs to, to recover a point a later recovery \
                 abandoned",
            ))
            .build()
            .into();
        let latest: Schema = OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .enum_values(Some([true])),
            )
            .item(string("true or yes").enum_values(Some(["true", "yes"])))
            .description(Some(
                "the latest backup and, where WAL is archived, complete recovery to the last committed change",
            ))
            .build()
            .into();
        let lsn = "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$";
        let scn: Schema = OneOfBuilder::new()
            .item(string("a PostgreSQL LSN").pattern(Some(lsn)))
            .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
            .item(string("a position in a shipped SQLite log").pattern(Some("^[0-9A-Fa-f]{16}:[0-9]{1,19}$")))
            .description(Some(
                "a PostgreSQL LSN (`0/3000060`) or the same as a decimal number; for a SQLite deployment with \
                 continuous archiving, GENERATION:N (a generation's 16 hex digits and a transaction number, 0 its \
                 base)",
            ))
            .build()
            .into();
        let timestamp: Schema = string(
            "dd-MMM-yyyy HH:mm:ss (UTC): a backup's completion time, or with archived WAL any moment of the \
             current history",
        )
        .pattern(Some(TIMESTAMP_PATTERN))
        .build()
        .into();
        let tag: Schema = string("a backup's dbTag").min_length(Some(1)).build().into();
        let repository: Schema = string(
            "Strongbox: the repository to read, `primary` or the name of a copy (`copies` in the server's \
             configuration); unnamed, the primary and then each copy that holds the backup",
        )
        .min_length(Some(1))
        .build()
        .into();
        let target: Schema = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Strongbox: recover into this place instead of in place, leaving the deployment as it is: the \
                 deployment's settings it names instead (GET …/{serviceId} recoversInto lists them): for SQLite \
                 {\"path\": \"/srv/copies/app.db\"}, postgresql-logical {\"database\": \"shop_copy\"}, postgresql \
                 {\"data_dir\": \"/var/lib/postgresql/15/copy\", \"port\": 5433, \"running\": true}; only \
                 places the server's configuration allows ([allow]); not in the deployment's recovery history",
            ))
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .build()
            .into();
        let replace: Schema = ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .description(Some(
                "Strongbox: with target, whether what is there may be overwritten (else an existing target is \
                 refused)",
            ))
            .build()
            .into();
        let keep_only = [
            ("keepForever", keep.clone()),
            ("repository", repository.clone()),
            ("target", target.clone()),
            ("replace", replace.clone()),
        ];
        let with_timeline = [
            ("timeline", timeline),
            ("keepForever", keep),
            ("repository", repository),
            ("target", target),
            ("replace", replace),
        ];
        let one_of = OneOfBuilder::new()
            .item(object(
                &[("latest", latest)],
                &keep_only,
                "the latest backup (complete recovery)",
            ))
            .item(object(&[("tag", tag)], &keep_only, "a backup"))
            .item(object(&[("timestamp", timestamp)], &with_timeline, "a moment"))
            .item(object(&[("scn", scn)], &with_timeline, "a position"))
            .description(Some("exactly one recovery target"))
            .build();
        RefOr::T(Schema::OneOf(one_of))
    }
}

impl ToSchema for StartRecovery {}

/// `PUT /strongbox/api/v1/instances/…`: an existing database to back up.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub engine: String,
    /// Engine settings; may hold secrets, never returned.
    pub connection: Value,
    /// Only servers with this label run its jobs.
    #[serde(rename = "runsOn", default, deserialize_with = "present_string")]
    pub runs_on: Option<String>,
}

/// An optional field that, when present, is a string (not `null`).
fn present_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(Some)
}

/// `postgresql://[user[:password]@]host[:port][/database]`.
const POSTGRES_URL_PATTERN: &str =
    "^postgres(ql)?://([A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]*)?@)?[A-Za-z0-9.-]+(:[1-9][0-9]{0,3})?(/[A-Za-z0-9_]*)?$";

impl utoipa::PartialSchema for Registration {
    fn schema() -> RefOr<Schema> {
        // Not empty, not only white space.
        let text = |d: &str| -> Schema { string(d).pattern(Some("\\S")).build().into() };
        let url: Schema = string("where to connect; a password in it is kept secret")
            .pattern(Some(POSTGRES_URL_PATTERN))
            .build()
            .into();
        let label: Schema = string("only servers with this label run its jobs (e.g. the database's host)")
            .pattern(Some("^[A-Za-z0-9._-]{1,64}$"))
            .build()
            .into();
        let engine = |name: &str, connection: Schema| -> Schema {
            let name_schema: Schema = string("the engine").enum_values(Some([name])).build().into();
            object(
                &[("engine", name_schema), ("connection", connection)],
                &[("runsOn", label.clone())],
                name,
            )
        };
        let env: Schema = ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(
                string("a value").build().into(),
            ))))
            .description(Some("environment for the commands (passwords go here, never in argv)"))
            .build()
            .into();
        let one_of = OneOfBuilder::new()
            .item(engine(
                "sqlite",
                object(&[("path", text("the database file"))], &[], "SQLite"),
            ))
            .item(engine(
                "postgresql",
                object(
                    &[
                        ("url", url.clone()),
                        ("data_dir", text("the cluster's data directory")),
                        ("stop_command", text("stops the cluster")),
                        ("start_command", text("starts the cluster")),
                    ],
                    &[("bin_dir", text("where PostgreSQL's tools are"))],
                    "a PostgreSQL cluster, physically",
                ),
            ))
            .item(engine(
                "postgresql-logical",
                object(
                    &[("url", url)],
                    &[("bin_dir", text("where PostgreSQL's tools are"))],
                    "one PostgreSQL database, with pg_dump",
                ),
            ))
            .item(engine(
                "command",
                object(
                    &[
                        ("backup_command", text("writes the backup to stdout")),
                        ("recovery_command", text("reads a backup on stdin")),
                    ],
                    &[
                        (
                            "prepare_command",
                            text("runs before a recovery, e.g. to create the database"),
                        ),
                        ("env", env),
                    ],
                    "any dump tool",
                ),
            ))
            .description(Some("an existing database: its engine and how to reach it"))
            .build();
        RefOr::T(Schema::OneOf(one_of))
    }
}

impl ToSchema for Registration {}

/// The identity domain of a path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct DomainPath {
    /// Identity domain name, or an `idcs-…` identity service id.
    pub identity_domain_id: String,
}

/// A deployment's path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ServicePath {
    /// Identity domain name, or an `idcs-…` identity service id.
    pub identity_domain_id: String,
    /// The database deployment's name.
    pub service_id: String,
}

/// A job's status path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct JobPath {
    /// Identity domain name, or an `idcs-…` identity service id.
    pub identity_domain_id: String,
    /// `backup` or `recovery`, as in the job's `Location`.
    pub request_name: String,
    /// The job's id, as in its `Location`.
    pub job_id: String,
}

/// A job's activity-log path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ActivityPath {
    /// Identity domain name, or an `idcs-…` identity service id.
    pub identity_domain_id: String,
    /// The job's id.
    pub job_id: String,
}

/// The header every DBCS request carries.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct Tenant {
    /// The identity domain, as in the path.
    #[serde(rename = "X-ID-TENANT-NAME")]
    pub tenant: String,
}

/// A header that makes a retried POST return the job the first one made.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct Idempotency {
    /// Any string; the same key for the same deployment names the same job.
    #[serde(rename = "Idempotency-Key")]
    pub key: Option<String>,
}

/// A deployment's backup configuration (Strongbox extension, after DBCS's
/// and OCI's `autoBackupEnabled`, `autoBackupWindow`, `recoveryWindowInDays`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupConfig {
    pub auto_backup_enabled: bool,
    /// The daily UTC window backups start in, e.g. `02:00-04:00`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_backup_window: Option<String>,
    /// Or a cron expression (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    pub recovery_window_in_days: u32,
    pub minimum_backups_kept: u32,
    /// When automatic backups were switched on.
    pub enabled_since: Option<String>,
    /// When the next scheduled backup is due.
    pub next_scheduled_backup: Option<String>,
    /// The server ships the database's log as it is written (SQLite), for
    /// recovery to any moment.
    pub continuous_archiving: bool,
    /// PostgreSQL: the WAL receiver is a synchronous standby (commits wait
    /// until their WAL is on the Strongbox server).
    pub synchronous_archiving: bool,
    /// Restore drills at the times of this cron expression (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
    /// When the next scheduled drill is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_drill: Option<String>,
}

/// `PUT …/backups/config`: what to change; what is left out stays.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChangeBackupConfig {
    pub auto_backup_enabled: Option<bool>,
    pub auto_backup_window: Option<String>,
    pub cron: Option<String>,
    /// Numbers, as JSON Schema's integers: `7` or `7.0`.
    pub recovery_window_in_days: Option<serde_json::Number>,
    pub minimum_backups_kept: Option<serde_json::Number>,
    pub continuous_archiving: Option<bool>,
    pub synchronous_archiving: Option<bool>,
    pub verify: Option<String>,
}

impl utoipa::PartialSchema for ChangeBackupConfig {
    /// Any of the fields, but a window or a cron expression, not both.
    fn schema() -> RefOr<Schema> {
        let integer = |min: f64, max: f64, d: &str| -> Schema {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(min))
                .maximum(Some(max))
                .description(Some(d))
                .build()
                .into()
        };
        let common = [
            (
                "autoBackupEnabled",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some("back up on the schedule"))
                    .build()
                    .into(),
            ),
            (
                "continuousArchiving",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some(
                        "ship the database's log as it is written (SQLite), for recovery to any moment",
                    ))
                    .build()
                    .into(),
            ),
            (
                "synchronousArchiving",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some(
                        "PostgreSQL with continuous archiving: the WAL receiver is a synchronous standby, so a \
                         commit returns once its WAL is on the Strongbox server",
                    ))
                    .build()
                    .into(),
            ),
            (
                "verify",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(
                        "restore drills at the times of this cron expression (UTC), e.g. \"0 5 * * 0\"; \"\" for \
                         none (POST …/backups/verify drills at once)",
                    ))
                    .build()
                    .into(),
            ),
            (
                "recoveryWindowInDays",
                integer(1.0, 365.0, "every point of the last this many days stays recoverable"),
            ),
            (
                "minimumBackupsKept",
                integer(0.0, 1000.0, "backups kept whatever their age"),
            ),
        ];
        let window: Schema = string("a daily UTC window HH:MM-HH:MM; the same start and end mean all day")
            .pattern(Some("^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$"))
            .build()
            .into();
        let cron: Schema = string("a cron expression, 5 or 6 fields, UTC").build().into();
        let with = |extra: (&'static str, Schema), d: &str| {
            let fields: Vec<(&str, Schema)> = common.iter().cloned().chain([extra]).collect();
            object(&[], &fields, d)
        };
        let any_of = utoipa::openapi::schema::AnyOfBuilder::new()
            .item(with(("autoBackupWindow", window), "on a daily window"))
            .item(with(("cron", cron), "on a cron schedule"))
            .description(Some("what to change; what is left out stays"))
            .build();
        RefOr::T(Schema::AnyOf(any_of))
    }
}

impl ToSchema for ChangeBackupConfig {}

/// A backup's path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct BackupPath {
    /// Identity domain name, or an `idcs-…` identity service id.
    pub identity_domain_id: String,
    /// The database deployment's name.
    pub service_id: String,
    /// The backup's `dbTag`.
    pub db_tag: String,
}

/// `?force=true` deletes a backup kept forever. Any other query parameter
/// is refused (400), as the document says: a misspelt `forse=true` must not
/// delete the backup as if it were absent.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Force {
    /// Delete even a `keepForever` backup.
    #[serde(default)]
    pub force: bool,
}
