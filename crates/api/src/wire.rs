//! The API's response bodies, as the DBCS documents them (plus Strongbox's
//! documented additions), typed so that `/openapi.json` describes exactly
//! what the handlers send.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

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

/// A job's status, behind a `Location`.
#[derive(Serialize, ToSchema)]
pub struct JobStatus {
    pub job_id: i64,
    pub job_operation: String,
    /// `In Progress`, `Succeeded` or `Failed`.
    pub job_status: String,
    pub job_start_date: String,
    pub creation_time: String,
    pub last_modified_time: String,
    pub created_by: String,
    pub identity_domain: String,
    pub description: String,
    /// The request as sent.
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
    /// `NEW`, `RUNNING`, `SUCCEED` or `FAILED`.
    pub status: String,
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
    pub current_timeline: u32,
    pub server_answers: bool,
    /// The recoverable range of the current history; null if none yet.
    pub recoverable_range: Option<RecoverableRange>,
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
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRecovery {
    /// `true`, `"true"` or `"yes"`: the latest backup and, where WAL is
    /// archived, complete recovery to the last committed change.
    #[schema(value_type = Option<Object>)]
    pub latest: Option<Value>,
    /// A backup's `dbTag`.
    pub tag: Option<String>,
    /// `dd-MMM-yyyy HH:mm:ss`, UTC: a backup's completion time or, with
    /// archived WAL, any moment of the current history.
    #[schema(example = "23-Jul-2016 23:04:54")]
    pub timestamp: Option<String>,
    /// A PostgreSQL LSN (`0/3000060`) or the same as a decimal number, of
    /// the current history.
    #[schema(value_type = Option<Object>)]
    pub scn: Option<Value>,
    /// Strongbox: the timeline whose history a `timestamp` or `scn`
    /// belongs to, to recover a point a later recovery abandoned.
    #[schema(value_type = Option<Object>)]
    pub timeline: Option<Value>,
    /// Accepted as the DBCS documents it; a recovery keeps nothing.
    #[serde(rename = "keepForever", default)]
    pub keep_forever: bool,
}

/// `PUT /strongbox/api/v1/instances/…`: an existing database to back up.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// `sqlite`, `postgresql`, `postgresql-logical` or `command`.
    pub engine: String,
    /// Engine settings (see the README); may hold secrets, never returned.
    #[schema(value_type = Object)]
    pub connection: Value,
}

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
