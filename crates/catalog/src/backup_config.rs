//! A deployment's backup configuration as stored: what the core's
//! scheduler and retention read (`strongbox_core::schedule` decides what it
//! means and checks changes).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A deployment's backup configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupConfig {
    pub auto_backup_enabled: bool,
    pub schedule: Schedule,
    /// Every point of the last this many days stays recoverable.
    pub recovery_window_in_days: u32,
    /// Backups kept whatever their age.
    pub minimum_backups_kept: u32,
    /// When automatic backups were last switched on: periods that began
    /// before are not due.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub enabled_since: Option<OffsetDateTime>,
    /// The server ships the database's log as it is written (engines that
    /// can: `Capabilities::ships_log`), for recovery to any moment.
    #[serde(default)]
    pub continuous_archiving: bool,
    /// With continuous archiving of streamed WAL (PostgreSQL): the
    /// receiver is a synchronous standby, so a commit returns once its WAL
    /// is flushed on the Strongbox server (and it reaches the repository
    /// within the receiver's next store).
    #[serde(default)]
    pub synchronous_archiving: bool,
    /// Restore drills on a schedule (`strongbox_core::drill`); `None`: only
    /// when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<DrillSchedule>,
}

/// Restore drills at the times of a cron expression (UTC); periods that
/// began before `since` (when it was set) are not due.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillSchedule {
    pub cron: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            auto_backup_enabled: false,
            schedule: Schedule::Window { start: 120, end: 240 },
            recovery_window_in_days: 30,
            minimum_backups_kept: 1,
            enabled_since: None,
            continuous_archiving: false,
            synchronous_archiving: false,
            verify: None,
        }
    }
}

/// When automatic backups run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Schedule {
    /// Daily, between these minutes of the UTC day (`end` < `start`
    /// wraps past midnight; `end` = `start` is all day). A backup starts
    /// at the window's start, or as soon as the deployment is free; after
    /// downtime, at once.
    Window { start: u16, end: u16 },
    /// At the times a cron expression names (UTC).
    Cron(String),
}
