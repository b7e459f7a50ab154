//! Backups on a schedule. Each deployment's `BackupConfig` says whether it
//! is backed up automatically and when: once a day inside a UTC window
//! (`"02:00-04:00"`, as DBCS's `autoBackupWindow`) or at the times of a
//! cron expression. A period is one window (or one cron time); its backup
//! is queued under a key unique per deployment and period, so however
//! many servers share the catalog and however often they look, a period
//! gets one backup. Only the latest period is ever due: after downtime,
//! one catch-up backup, not one per missed period.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strongbox_catalog::Deployment;
pub use strongbox_catalog::{BackupConfig, DrillSchedule, Schedule};
use time::OffsetDateTime;

use crate::job::{Origin, Trigger};
use crate::{Error, Result, Service};

/// What a request to change the configuration may say; what it leaves out
/// stays as it was. (Also the server's `[backup_defaults]`, applied to
/// `BackupConfig::default()`.)
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    pub auto_backup_enabled: Option<bool>,
    pub window: Option<String>,
    pub cron: Option<String>,
    pub recovery_window_in_days: Option<i64>,
    pub minimum_backups_kept: Option<i64>,
    pub continuous_archiving: Option<bool>,
    pub synchronous_archiving: Option<bool>,
    /// Restore drills at the times of this cron expression; `""`: none.
    pub verify: Option<String>,
}

/// `HH:MM-HH:MM` → minutes of the day.
fn parse_window(s: &str) -> Result<(u16, u16)> {
    let bad = || {
        Error::Invalid(format!(
            "autoBackupWindow {s:?} is not a daily UTC window HH:MM-HH:MM, e.g. \"02:00-04:00\""
        ))
    };
    let minutes = |t: &str| -> Result<u16> {
        let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 || t.trim().len() != 5 {
            return Err(bad());
        }
        Ok(h * 60 + m)
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    Ok((minutes(a)?, minutes(b)?))
}

fn parse_cron(s: &str) -> Result<croner::Cron> {
    croner::Cron::from_str(s).map_err(|e| {
        Error::Invalid(format!(
            "cron {s:?} is not a cron expression ({e}); e.g. \"0 2 * * *\" for 02:00 UTC daily"
        ))
    })
}

fn chrono_time(t: OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), 0).expect("a representable time")
}

fn from_chrono(t: chrono::DateTime<chrono::Utc>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).expect("a representable time")
}

/// When a schedule's periods begin.
pub trait ScheduleTimes {
    /// The start of the latest period that began at or before `now`.
    fn period_start(&self, now: OffsetDateTime) -> Option<OffsetDateTime>;
    /// The start of the first period after `now`.
    fn next_start(&self, now: OffsetDateTime) -> Option<OffsetDateTime>;
    /// As the API shows it (`autoBackupWindow`); `None` for cron.
    fn window(&self) -> Option<String>;
}

impl ScheduleTimes for Schedule {
    fn period_start(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        match self {
            Schedule::Window { start, .. } => {
                let midnight = now.replace_time(time::Time::MIDNIGHT);
                let today = midnight + time::Duration::minutes(*start as i64);
                Some(if today <= now {
                    today
                } else {
                    today - time::Duration::DAY
                })
            }
            Schedule::Cron(expr) => {
                let cron = parse_cron(expr).ok()?;
                cron.find_previous_occurrence(&chrono_time(now), true)
                    .ok()
                    .map(from_chrono)
            }
        }
    }

    fn next_start(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        match self {
            Schedule::Window { .. } => self.period_start(now).map(|p| p + time::Duration::DAY),
            Schedule::Cron(expr) => {
                let cron = parse_cron(expr).ok()?;
                cron.find_next_occurrence(&chrono_time(now), false)
                    .ok()
                    .map(from_chrono)
            }
        }
    }

    fn window(&self) -> Option<String> {
        match self {
            Schedule::Window { start, end } => Some(format!(
                "{:02}:{:02}-{:02}:{:02}",
                start / 60,
                start % 60,
                end / 60,
                end % 60
            )),
            Schedule::Cron(_) => None,
        }
    }
}

/// What a backup configuration means: its changes checked, its schedule's
/// due and next backups.
pub trait BackupPolicy: Sized {
    /// This configuration changed as asked, checked; `now` starts a
    /// schedule switched on.
    fn changed(&self, change: &ConfigChange, now: OffsetDateTime) -> Result<Self>;
    /// The period whose backup is due at `now`, by its start: the latest
    /// one, if automatic backups were on when it began.
    fn due(&self, now: OffsetDateTime) -> Option<OffsetDateTime>;
    /// When the next scheduled backup is due.
    fn next(&self, now: OffsetDateTime) -> Option<OffsetDateTime>;
    /// The period whose restore drill is due at `now`, by its start.
    fn drill_due(&self, now: OffsetDateTime) -> Option<OffsetDateTime>;
    /// When the next scheduled drill is due.
    fn next_drill(&self, now: OffsetDateTime) -> Option<OffsetDateTime>;
}

impl BackupPolicy for BackupConfig {
    fn changed(&self, change: &ConfigChange, now: OffsetDateTime) -> Result<BackupConfig> {
        let mut c = self.clone();
        if change.window.is_some() && change.cron.is_some() {
            return Err(Error::Invalid(
                "name either autoBackupWindow (a daily window) or cron, not both".into(),
            ));
        }
        if let Some(w) = &change.window {
            let (start, end) = parse_window(w)?;
            c.schedule = Schedule::Window { start, end };
        }
        if let Some(expr) = &change.cron {
            parse_cron(expr)?;
            c.schedule = Schedule::Cron(expr.trim().to_string());
        }
        if let Some(days) = change.recovery_window_in_days {
            c.recovery_window_in_days = u32::try_from(days)
                .ok()
                .filter(|d| (1..=365).contains(d))
                .ok_or_else(|| Error::Invalid(format!("recoveryWindowInDays must be 1 to 365 (got {days})")))?;
        }
        if let Some(n) = change.minimum_backups_kept {
            c.minimum_backups_kept = u32::try_from(n)
                .ok()
                .filter(|n| *n <= 1000)
                .ok_or_else(|| Error::Invalid(format!("minimumBackupsKept must be 0 to 1000 (got {n})")))?;
        }
        if let Some(on) = change.continuous_archiving {
            c.continuous_archiving = on;
        }
        if let Some(on) = change.synchronous_archiving {
            c.synchronous_archiving = on;
        }
        if let Some(expr) = &change.verify {
            let expr = expr.trim();
            c.verify = if expr.is_empty() {
                None
            } else {
                parse_cron(expr).map_err(|e| Error::Invalid(format!("verify: {e}")))?;
                // A new schedule's periods count from now.
                match &c.verify {
                    Some(d) if d.cron == expr => c.verify.clone(),
                    _ => Some(DrillSchedule {
                        cron: expr.to_string(),
                        since: now,
                    }),
                }
            };
        }
        if let Some(on) = change.auto_backup_enabled {
            if on && !c.auto_backup_enabled {
                c.enabled_since = Some(now);
            }
            c.auto_backup_enabled = on;
        }
        Ok(c)
    }

    fn due(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        if !self.auto_backup_enabled {
            return None;
        }
        let start = self.schedule.period_start(now)?;
        (start >= self.enabled_since?).then_some(start)
    }

    fn drill_due(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let (schedule, since) = drills(self)?;
        schedule.period_start(now).filter(|start| *start >= since)
    }

    fn next_drill(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let (schedule, since) = drills(self)?;
        schedule.next_start(now.max(since))
    }

    fn next(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        if !self.auto_backup_enabled {
            return None;
        }
        let enabled = self.enabled_since?;
        let mut next = self.schedule.next_start(now)?;
        if next < enabled {
            next = self.schedule.next_start(enabled)?;
        }
        Some(next)
    }
}

/// A configuration's drill schedule, as a schedule and since when.
fn drills(c: &BackupConfig) -> Option<(Schedule, OffsetDateTime)> {
    let d = c.verify.as_ref()?;
    Some((Schedule::Cron(d.cron.clone()), d.since))
}

impl Service {
    /// The configuration stored for a deployment; the server's defaults
    /// (`backup_defaults`) if none is.
    pub fn config_of(&self, d: &Deployment) -> Result<BackupConfig> {
        match &d.backup_config {
            Ok(stored) => Ok(stored.clone().unwrap_or_else(|| self.backup_defaults.clone())),
            Err(e) => Err(Error::internal(format!(
                "{}'s stored backup configuration is unreadable: {e}",
                d.name
            ))),
        }
    }

    pub async fn backup_config(&self, domain: &str, deployment: &str) -> Result<BackupConfig> {
        self.config_of(&self.deployment(domain, deployment).await?)
    }

    pub async fn change_backup_config(
        &self,
        domain: &str,
        deployment: &str,
        change: &ConfigChange,
    ) -> Result<BackupConfig> {
        let current = self.backup_config(domain, deployment).await?;
        let changed = current.changed(change, self.clock.now())?;
        if changed.synchronous_archiving {
            let d = self.deployment(domain, deployment).await?;
            let streams =
                strongbox_engines::engine_for(&d.engine, &d.connection).is_ok_and(|e| e.capabilities().streams_wal);
            if !streams {
                return Err(Error::Invalid(format!(
                    "synchronousArchiving needs a deployment whose WAL the server streams (a physical PostgreSQL \
                     deployment); {deployment} is {}",
                    d.engine
                )));
            }
            if !changed.continuous_archiving {
                return Err(Error::Invalid(
                    "synchronousArchiving needs continuousArchiving: turn both on, or synchronousArchiving off".into(),
                ));
            }
        }
        if !self.catalog.put_backup_config(domain, deployment, &changed).await? {
            return Err(Error::NotFound(format!(
                "no database deployment {deployment} in identity domain {domain}"
            )));
        }
        self.record_deployment(&self.deployment(domain, deployment).await?)
            .await;
        Ok(changed)
    }

    /// One round of the scheduler over every deployment: queues the
    /// scheduled backup that is due and not yet queued, and an `expire` job
    /// for what the recovery window no longer needs. A deployment busy with
    /// another job is looked at again on the next round.
    pub async fn run_schedule(&self) -> Result<()> {
        let now = self.clock.now();
        for d in self.catalog.all_deployments().await? {
            let config = match self.config_of(&d) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("{e}");
                    continue;
                }
            };
            if let Err(e) = self.backup_if_due(&d, &config, now).await {
                tracing::warn!("scheduled backup of {}: {e}", d.name);
            }
            if let Err(e) = self.drill_if_due(&d, &config, now).await {
                tracing::warn!("scheduled restore drill of {}: {e}", d.name);
            }
            if let Err(e) = self.expire_unneeded(&d, &config, now).await {
                tracing::warn!("expiring backups of {}: {e}", d.name);
            }
        }
        Ok(())
    }

    async fn backup_if_due(&self, d: &Deployment, config: &BackupConfig, now: OffsetDateTime) -> Result<()> {
        let Some(period) = config.due(now) else {
            return Ok(());
        };
        let period = crate::dates::rfc3339(period);
        // Unique per deployment: one job per period, across servers.
        let origin = Origin::system(format!("strongbox-schedule:{period}"));
        match self
            .start_backup(&d.domain, &d.name, false, Trigger::Schedule { period }, &origin)
            .await
        {
            Ok(_) | Err(Error::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Service {
    /// Queues the scheduled drill that is due and not yet queued (once per
    /// period across servers, as backups). A deployment busy with another
    /// job is looked at again on the next round.
    async fn drill_if_due(&self, d: &Deployment, config: &BackupConfig, now: OffsetDateTime) -> Result<()> {
        let Some(period) = config.drill_due(now) else {
            return Ok(());
        };
        let origin = Origin::system(format!("strongbox-drill:{}", crate::dates::rfc3339(period)));
        match self.start_drill(&d.domain, &d.name, &origin).await {
            Ok(_) | Err(Error::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Runs a scheduler round every `every`, forever.
pub async fn scheduler(service: Arc<Service>, every: Duration) {
    loop {
        if let Err(e) = service.run_schedule().await {
            tracing::warn!("scheduling: {e}");
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn enabled(window: &str, at: OffsetDateTime) -> BackupConfig {
        let change = ConfigChange {
            auto_backup_enabled: Some(true),
            window: Some(window.into()),
            ..Default::default()
        };
        BackupConfig::default().changed(&change, at).unwrap()
    }

    #[test]
    fn the_latest_period_since_enabling_is_due_and_only_that_one() {
        let c = enabled("02:00-04:00", datetime!(2026-01-01 10:00 UTC));
        assert_eq!(
            c.due(datetime!(2026-01-01 23:59 UTC)),
            None,
            "today's window began before enabling"
        );
        assert_eq!(
            c.next(datetime!(2026-01-01 23:59 UTC)),
            Some(datetime!(2026-01-02 02:00 UTC))
        );
        assert_eq!(
            c.due(datetime!(2026-01-02 02:00 UTC)),
            Some(datetime!(2026-01-02 02:00 UTC))
        );
        assert_eq!(c.due(datetime!(2026-01-02 01:59 UTC)), None);
        // Three days down: one catch-up, for the latest period.
        assert_eq!(
            c.due(datetime!(2026-01-05 11:00 UTC)),
            Some(datetime!(2026-01-05 02:00 UTC))
        );
        let wraps = enabled("23:30-00:30", datetime!(2026-01-01 10:00 UTC));
        assert_eq!(
            wraps.due(datetime!(2026-01-02 00:10 UTC)),
            Some(datetime!(2026-01-01 23:30 UTC))
        );
        let off = BackupConfig {
            auto_backup_enabled: false,
            ..c
        };
        assert_eq!(off.due(datetime!(2026-01-05 11:00 UTC)), None);
    }

    #[test]
    fn cron_periods_are_its_times() {
        let change = ConfigChange {
            auto_backup_enabled: Some(true),
            cron: Some("0 */6 * * *".into()),
            ..Default::default()
        };
        let c = BackupConfig::default()
            .changed(&change, datetime!(2026-01-01 00:30 UTC))
            .unwrap();
        assert_eq!(c.due(datetime!(2026-01-01 05:59 UTC)), None);
        assert_eq!(
            c.due(datetime!(2026-01-01 07:00 UTC)),
            Some(datetime!(2026-01-01 06:00 UTC))
        );
        assert_eq!(
            c.next(datetime!(2026-01-01 07:00 UTC)),
            Some(datetime!(2026-01-01 12:00 UTC))
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let at = datetime!(2026-01-01 00:00 UTC);
        let refused = |change: ConfigChange| BackupConfig::default().changed(&change, at).unwrap_err().to_string();
        for w in ["2-4", "02:00", "25:00-01:00", "02:60-03:00", "2:00-04:00"] {
            let e = refused(ConfigChange {
                window: Some(w.into()),
                ..Default::default()
            });
            assert!(e.contains("autoBackupWindow"), "{w}: {e}");
        }
        let e = refused(ConfigChange {
            cron: Some("every day".into()),
            ..Default::default()
        });
        assert!(e.contains("cron"), "{e}");
        for days in [0, 366, -1] {
            let e = refused(ConfigChange {
                recovery_window_in_days: Some(days),
                ..Default::default()
            });
            assert!(e.contains("recoveryWindowInDays must be 1 to 365"), "{e}");
        }
        let e = refused(ConfigChange {
            minimum_backups_kept: Some(-3),
            ..Default::default()
        });
        assert!(e.contains("minimumBackupsKept"), "{e}");
        let e = refused(ConfigChange {
            window: Some("02:00-04:00".into()),
            cron: Some("0 2 * * *".into()),
            ..Default::default()
        });
        assert!(e.contains("not both"), "{e}");
    }
}
