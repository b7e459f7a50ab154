//! Which backups a recovery window needs. Kept: every `keepForever`
//! backup, the newest `minimum` ones, every backup completed inside the
//! window, and the newest one completed by the time the window began (a point
//! at the window's start recovers from it, by replaying archived WAL for
//! engines that have it). Everything else may expire.

use std::collections::BTreeSet;

use time::OffsetDateTime;

/// What the rule needs to know of a completed backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub id: i64,
    pub completed: OffsetDateTime,
    pub keep_forever: bool,
}

/// The ids of the backups to keep at `now`.
pub fn keep(backups: &[Kept], now: OffsetDateTime, window_days: u32, minimum: u32) -> BTreeSet<i64> {
    let window_start = now - time::Duration::days(window_days as i64);
    let mut by_time: Vec<&Kept> = backups.iter().collect();
    by_time.sort_by_key(|b| (b.completed, b.id));
    let mut kept: BTreeSet<i64> = by_time.iter().filter(|b| b.keep_forever).map(|b| b.id).collect();
    kept.extend(by_time.iter().rev().take(minimum as usize).map(|b| b.id));
    kept.extend(by_time.iter().filter(|b| b.completed >= window_start).map(|b| b.id));
    // The newest completed by the window's start: its first moment recovers from it.
    if let Some(before) = by_time.iter().rev().find(|b| b.completed <= window_start) {
        kept.insert(before.id);
    }
    kept
}

/// When each backup expires if no backup is added: the next newer one's
/// completion plus the window (from then on a newer backup covers the
/// window's first moment). Absent for backups kept forever and for the
/// newest `minimum` (only newer backups can make those expire).
pub fn expiry(backups: &[Kept], window_days: u32, minimum: u32) -> std::collections::BTreeMap<i64, OffsetDateTime> {
    let mut by_time: Vec<&Kept> = backups.iter().collect();
    by_time.sort_by_key(|b| (b.completed, b.id));
    let protected = by_time.len().saturating_sub(minimum as usize);
    by_time
        .iter()
        .zip(by_time.iter().skip(1))
        .take(protected)
        .filter(|(b, _)| !b.keep_forever)
        .map(|(b, next)| (b.id, next.completed + time::Duration::days(window_days as i64)))
        .collect()
}

impl crate::Service {
    /// Deletes one backup (by its `dbTag`) as an `expire` job: refused for
    /// one kept forever unless `force`, and while any other job of the
    /// deployment (a recovery from it, say) is queued or running.
    pub async fn delete_backup(
        &self,
        domain: &str,
        deployment: &str,
        tag: &str,
        force: bool,
        origin: &crate::job::Origin,
    ) -> crate::Result<strongbox_catalog::Job> {
        use strongbox_catalog::BackupStatus;
        self.deployment(domain, deployment).await?;
        let backups = self.catalog.backups(domain, deployment).await?;
        let b = backups
            .iter()
            .find(|b| b.db_tag == tag && b.status != BackupStatus::Deleted)
            .ok_or_else(|| {
                crate::Error::NotFound(format!(
                    "{deployment} has no backup with dbTag {tag:?}; GET …/{deployment}/backups lists them"
                ))
            })?;
        if b.status == BackupStatus::InProgress {
            return Err(crate::Error::Conflict(format!(
                "backup {tag} is in progress; delete it once it has finished"
            )));
        }
        if b.keep_forever && !force {
            return Err(crate::Error::Conflict(format!(
                "backup {tag} is kept forever (keepForever); to delete it all the same, add ?force=true"
            )));
        }
        let message = format!("deletion of backup {tag} requested by {}", origin.user);
        let deletion = strongbox_catalog::Deletion {
            db_tag: tag.to_string(),
            force,
        };
        self.expire(domain, deployment, vec![b.job_id], Some(deletion), message, origin)
            .await
    }

    /// Queues an `expire` job for these backups.
    async fn expire(
        &self,
        domain: &str,
        deployment: &str,
        backups: Vec<i64>,
        deletion: Option<strongbox_catalog::Deletion>,
        message: String,
        origin: &crate::job::Origin,
    ) -> crate::Result<strongbox_catalog::Job> {
        let spec = crate::job::JobSpec::Expire { backups, deletion };
        self.create_job(domain, deployment, &spec, origin, |_| {
            (strongbox_catalog::NewRecord::None, message.clone())
        })
        .await
    }

    /// Queues (at most once an hour) an `expire` job for the completed
    /// backups of `d` its recovery window no longer needs.
    pub(crate) async fn expire_unneeded(
        &self,
        d: &strongbox_catalog::Deployment,
        config: &crate::schedule::BackupConfig,
        now: OffsetDateTime,
    ) -> crate::Result<()> {
        let completed = completed(&self.catalog.backups(&d.domain, &d.name).await?);
        let kept = keep(
            &completed,
            now,
            config.recovery_window_in_days,
            config.minimum_backups_kept,
        );
        let expired: Vec<i64> = completed.iter().map(|b| b.id).filter(|id| !kept.contains(id)).collect();
        if expired.is_empty() {
            return Ok(());
        }
        // One key per hour: while backups are due to expire, at most one
        // expire job an hour, so one that failed is tried again within it.
        let origin = crate::job::Origin::system(format!("strongbox-expire:{}T{:02}", now.date(), now.hour()));
        let message = format!(
            "{} backup(s) outside the {}-day recovery window expire",
            expired.len(),
            config.recovery_window_in_days
        );
        match self.expire(&d.domain, &d.name, expired, None, message, &origin).await {
            Ok(_) | Err(crate::Error::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The completed backups among `backups`, as the rule sees them.
pub(crate) fn completed(backups: &[strongbox_catalog::Backup]) -> Vec<Kept> {
    backups
        .iter()
        .filter(|b| b.status == strongbox_catalog::BackupStatus::Completed)
        .filter_map(|b| {
            Some(Kept {
                id: b.job_id,
                completed: crate::dates::parse_rfc3339(b.completed_at.as_deref()?)?,
                keep_forever: b.keep_forever,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn history() -> impl Strategy<Value = (Vec<Kept>, u32, u32, i64)> {
        (
            prop::collection::vec((0i64..200 * 24, any::<bool>(), 0u8..10), 0..40),
            1u32..60,
            0u32..5,
            0i64..220 * 24,
        )
            .prop_map(|(mut raw, days, minimum, now_hours)| {
                // A deployment runs one job at a time: no two backups complete together.
                raw.sort_by_key(|r| r.0);
                raw.dedup_by_key(|r| r.0);
                let epoch = time::macros::datetime!(2026-01-01 00:00 UTC);
                let backups = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, (hours, forever, rare))| Kept {
                        id: i as i64 + 1,
                        completed: epoch + time::Duration::hours(hours),
                        keep_forever: forever && rare == 0,
                    })
                    .collect();
                (backups, days, minimum, now_hours)
            })
    }

    proptest! {
        /// With what is kept every moment of the window still recovers from
        /// the backup it had before (the newest completed by then); every
        /// `keepForever` backup and the newest `minimum` stay; and nothing
        /// else is kept that no moment of the window needs.
        #[test]
        fn keeps_exactly_what_the_window_needs((backups, days, minimum, now_hours) in history()) {
            let now = time::macros::datetime!(2026-01-01 00:00 UTC) + time::Duration::hours(now_hours);
            let backups: Vec<Kept> = backups.into_iter().filter(|b| b.completed <= now).collect();
            let kept = keep(&backups, now, days, minimum);
            let window_start = now - time::Duration::days(days as i64);
            let newest_by = |set: &[&Kept], t: OffsetDateTime| {
                set.iter().filter(|b| b.completed <= t).max_by_key(|b| (b.completed, b.id)).map(|b| b.id)
            };
            let all: Vec<&Kept> = backups.iter().collect();
            let left: Vec<&Kept> = backups.iter().filter(|b| kept.contains(&b.id)).collect();
            // The moments where what recovers can change: the window's start
            // and each backup's completion inside it.
            let moments: Vec<OffsetDateTime> = std::iter::once(window_start)
                .chain(all.iter().map(|b| b.completed).filter(|t| *t >= window_start))
                .collect();
            for t in &moments {
                prop_assert_eq!(newest_by(&left, *t), newest_by(&all, *t), "moment {}", t);
            }
            let mut newest: Vec<&Kept> = all.clone();
            newest.sort_by_key(|b| std::cmp::Reverse((b.completed, b.id)));
            for b in &left {
                if b.keep_forever || newest.iter().take(minimum as usize).any(|n| n.id == b.id) {
                    continue;
                }
                // Without it, some moment of the window would recover from another backup.
                let without: Vec<&Kept> = left.iter().copied().filter(|o| o.id != b.id).collect();
                prop_assert!(
                    moments.iter().any(|t| newest_by(&without, *t) != newest_by(&left, *t)),
                    "backup {:?} is kept but no moment of the window needs it", b
                );
            }
            for b in &backups {
                if b.keep_forever {
                    prop_assert!(kept.contains(&b.id));
                }
            }
            prop_assert!(newest.iter().take(minimum as usize).all(|n| kept.contains(&n.id)));

            // Each backup's expiry is the moment the rule stops keeping it
            // (no backup added); one without expiry is kept from now on.
            let expiry = expiry(&backups, days, minimum);
            for b in &backups {
                let later = now + time::Duration::days(400);
                match expiry.get(&b.id) {
                    Some(at) => {
                        let before = (*at - time::Duration::SECOND).max(b.completed);
                        prop_assert!(keep(&backups, before, days, minimum).contains(&b.id), "{:?} before {}", b, at);
                        prop_assert!(!keep(&backups, *at, days, minimum).contains(&b.id), "{:?} at {}", b, at);
                    }
                    None => prop_assert!(keep(&backups, later, days, minimum).contains(&b.id), "{:?}", b),
                }
            }
        }
    }
}
