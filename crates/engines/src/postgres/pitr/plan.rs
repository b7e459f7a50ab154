//! Planning a recovery to a point in time, before anything is touched:
//! which history the point belongs to, which base backup replays to it,
//! and whether the archived WAL reaches it.
//!
//! A point belongs to a timeline's history (the current one unless the
//! request names another). A base backup serves a history when it was
//! taken on it (on one of its timelines before the switch point); it
//! replays through an unbroken run of archived segments along the history
//! from its start segment, and the run's end bounds what it reaches. The
//! archive time of the run's last segment bounds the reachable moments
//! (every commit in it happened before it was archived); while the server
//! answers, the recovery job archives its WAL up to the present first, so
//! the present is reachable too.
//!
//! A moment is a point of the current history only if the database held
//! that history's state then. After a recovery to an earlier point, the
//! database was, at moments before the recovery, on a timeline the current
//! history abandoned; if that timeline had committed anything the current
//! history lacks by then, the moment is refused (naming that timeline),
//! never silently replaced by the current history's state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strongbox_repo::WalFile;
use time::OffsetDateTime;

use super::timeline::History;
use super::{BasePosition, Lsn, file_timeline, segment_name, segment_number};

/// Archived WAL files by name, with their archive times.
#[derive(Clone, Debug, Default)]
pub struct Archived(BTreeMap<String, OffsetDateTime>);

impl Archived {
    /// The archived files by name; a segment not archived whole but
    /// streamed (`NAME.streamed`, its tail) counts as archived, up to where
    /// its tail reaches, as of when the tail was stored.
    pub fn new(files: &[WalFile]) -> Self {
        let mut named: BTreeMap<String, OffsetDateTime> =
            files.iter().map(|f| (f.name.clone(), f.archived_at)).collect();
        for f in files {
            if let Some(segment) = f.name.strip_suffix(strongbox_repo::STREAMED_TAIL) {
                named.entry(segment.to_string()).or_insert(f.archived_at);
            }
        }
        Archived(named)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn at(&self, name: &str) -> Option<OffsetDateTime> {
        self.0.get(name).copied()
    }

    /// The newest timeline anything was archived on.
    pub fn newest_timeline(&self) -> u32 {
        self.0.keys().filter_map(|n| file_timeline(n)).max().unwrap_or(1)
    }

    /// Archived timeline history files: (timeline, name, archive time).
    pub fn histories(&self) -> impl Iterator<Item = (u32, &str, OffsetDateTime)> {
        self.0
            .iter()
            .filter(|(n, _)| n.ends_with(".history"))
            .filter_map(|(n, at)| Some((file_timeline(n)?, n.as_str(), *at)))
    }

    /// Whether a segment of `timeline` after number `segment` is archived.
    pub fn segments_after(&self, timeline: u32, segment: u64, segment_size: u64) -> bool {
        self.segments(segment_size).any(|(t, n)| t == timeline && n > segment)
    }

    /// Whole segments (no `.partial` or `.backup`): (timeline, number).
    fn segments(&self, segment_size: u64) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0
            .keys()
            .filter(|n| n.len() == 24)
            .filter_map(move |n| Some((file_timeline(n)?, segment_number(n, segment_size)?)))
    }
}

/// How far one base backup replays along a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reach {
    pub earliest_time: OffsetDateTime,
    pub earliest_lsn: Lsn,
    pub latest_time: OffsetDateTime,
    pub latest_lsn: Lsn,
    /// The last archived file replay reads, and its timeline.
    pub last_segment: (String, u32),
    /// The first missing segment, when later ones are archived.
    pub gap: Option<String>,
    /// The run ends at the live end of the history's own timeline (not at
    /// a gap): a server on that timeline can archive more.
    pub open: bool,
}

impl Reach {
    fn holds(&self, goal: Goal) -> bool {
        match goal {
            Goal::Latest => true,
            Goal::Time(t) => self.earliest_time < t && t <= self.latest_time,
            Goal::Lsn(l) => self.earliest_lsn <= l && l <= self.latest_lsn,
        }
    }
}

/// How far `base` replays along `history`; `None` if it is not on that
/// history or its own WAL is not all archived yet.
pub fn reach(archived: &Archived, base: &BasePosition, history: &History) -> Option<Reach> {
    if !history.holds(base.timeline, base.stop_lsn) {
        return None;
    }
    let size = base.segment_size;
    let mut segment = base.start_lsn.0 / size;
    let mut last = None;
    let end = loop {
        let timeline = history.segment_timeline(segment, size);
        let name = segment_name(timeline, Lsn(segment * size), size);
        if let Some(at) = archived.at(&name) {
            last = Some((name, timeline, at));
            segment += 1;
            continue;
        }
        // The new timeline's copy of the segment it began in is not
        // archived yet; the parent's holds the WAL up to the switch.
        let begin = history.span(timeline).map_or(Lsn(0), |s| s.begin);
        if begin.0 > segment * size
            && let Some(parent) = history.parent_of(timeline)
        {
            let name = segment_name(parent, Lsn(segment * size), size);
            if let Some(at) = archived.at(&name) {
                last = Some((name, parent, at));
                break begin;
            }
        }
        break Lsn(segment * size);
    };
    let (name, timeline, at) = last?;
    if end < base.stop_lsn {
        return None;
    }
    let gap = archived
        .segments(size)
        .any(|(t, n)| n > segment && history.segment_timeline(n, size) == t)
        .then(|| segment_name(history.segment_timeline(segment, size), Lsn(segment * size), size));
    Some(Reach {
        earliest_time: base.stop_time,
        earliest_lsn: base.stop_lsn,
        latest_time: at.max(base.stop_time),
        latest_lsn: end,
        last_segment: (name, timeline),
        open: gap.is_none() && history.segment_timeline(segment, size) == history.timeline(),
        gap,
    })
}

/// What a recovery asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Goal {
    /// Everything archived (complete recovery).
    Latest,
    #[serde(with = "time::serde::rfc3339")]
    Time(OffsetDateTime),
    Lsn(Lsn),
}

/// The live server, when it answers: its timeline and position, then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live {
    pub timeline: u32,
    pub lsn: Lsn,
    pub at: OffsetDateTime,
}

/// Why a target cannot be recovered, and what can (the API words it).
#[derive(Debug, PartialEq, Eq)]
pub struct Unreachable {
    pub why: String,
    /// The timeline whose history was searched, and its recoverable stretches.
    pub timeline: u32,
    pub ranges: Vec<Reach>,
}

/// The plan of a recovery: replay from base backup `base` along `history`
/// to `goal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub base: usize,
    pub goal: Goal,
    pub history: History,
    pub reach: Reach,
    /// For a moment: where the history enters timelines begun after it,
    /// which hold no commit by then (replay need not go further).
    pub quiet_from: Option<Lsn>,
}

/// What is known of one deployment's WAL history.
pub struct Pitr<'a> {
    pub bases: &'a [BasePosition],
    pub archived: &'a Archived,
    /// The history of every timeline with an archived history file.
    pub histories: &'a BTreeMap<u32, History>,
    /// When each timeline after the first became the live one.
    pub created: &'a BTreeMap<u32, OffsetDateTime>,
    pub live: Option<Live>,
}

/// Bounds when each timeline became live (`created`) by the base backups
/// taken on it: a timeline was live by the time a base backup on it
/// completed, and so was every timeline before it in its history. Where
/// no recovery recorded a promotion, `created` is the time its history
/// file was archived, and a repository made again from a copy holds the
/// time it was copied instead: later than every moment before, which
/// would make planning think the history held nothing of them.
pub fn bound_created(
    created: &mut BTreeMap<u32, OffsetDateTime>,
    bases: &[BasePosition],
    histories: &BTreeMap<u32, History>,
) {
    for b in bases.iter().filter(|b| b.stop_time != OffsetDateTime::UNIX_EPOCH) {
        let first = History::first();
        let history = histories.get(&b.timeline).unwrap_or(&first);
        for span in history.spans() {
            if let Some(c) = created.get_mut(&span.timeline) {
                *c = (*c).min(b.stop_time);
            }
        }
    }
}

/// The first commit after a position of a history (from reading its WAL).
pub type FirstCommit<'f> = dyn FnMut(&History, Lsn) -> Result<Option<OffsetDateTime>, String> + 'f;

impl Pitr<'_> {
    /// The live timeline: the server's if it answers, else the newest archived.
    pub fn current(&self) -> u32 {
        self.live
            .map(|l| l.timeline)
            .unwrap_or_else(|| self.archived.newest_timeline())
    }

    /// The server's timeline, when its history file is on its way to the
    /// repository: a promotion outside Strongbox (ours record where they
    /// branch) whose history is not stored yet. PostgreSQL archives a
    /// history file before any WAL of its timeline (the name sorts first,
    /// and the receiver streams it first too), so while none of the
    /// timeline's WAL is stored it is coming, within seconds unless
    /// archive_command fails; once some is, it was never archived (the
    /// promotion came before archiving was set up) and waiting would not
    /// help: `history` says so.
    pub fn awaited_history(&self) -> Option<u32> {
        let t = self.live?.timeline;
        (t != 1 && !self.histories.contains_key(&t) && !self.archived.is_empty() && self.archived.newest_timeline() < t)
            .then_some(t)
    }

    pub fn history(&self, timeline: u32) -> Result<History, String> {
        if timeline == 1 {
            return Ok(History::first());
        }
        self.histories.get(&timeline).cloned().ok_or_else(|| {
            let known: Vec<String> = std::iter::once(1)
                .chain(self.histories.keys().copied())
                .map(|t| t.to_string())
                .collect();
            format!(
                "timeline {timeline} is unknown (its history file is not archived); known timelines: {}",
                known.join(", ")
            )
        })
    }

    /// The timeline the database was live on at `t`.
    pub fn live_at(&self, t: OffsetDateTime) -> u32 {
        self.created
            .iter()
            .filter(|(_, c)| **c <= t)
            .map(|(tli, _)| *tli)
            .max()
            .unwrap_or(1)
    }

    /// `reach`, up to the present when the server answers on the
    /// history's own timeline (the recovery archives up to then first).
    fn reach(&self, base: &BasePosition, history: &History) -> Option<Reach> {
        let mut r = reach(self.archived, base, history)?;
        if let Some(live) = self.live.filter(|l| r.open && l.timeline == history.timeline()) {
            r.latest_time = r.latest_time.max(live.at);
            r.latest_lsn = r.latest_lsn.max(live.lsn);
        }
        Some(r)
    }

    /// The recoverable stretches of `history`, one per base backup that
    /// reaches anything, oldest first, overlapping ones merged.
    pub fn ranges(&self, history: &History) -> Vec<Reach> {
        let mut reaches: Vec<Reach> = self.bases.iter().filter_map(|b| self.reach(b, history)).collect();
        reaches.sort_by_key(|r| r.earliest_lsn);
        let mut merged: Vec<Reach> = Vec::new();
        for r in reaches {
            match merged.last_mut() {
                Some(last) if r.earliest_lsn <= last.latest_lsn => {
                    if r.latest_lsn > last.latest_lsn {
                        let earliest = (last.earliest_time, last.earliest_lsn);
                        *last = r;
                        (last.earliest_time, last.earliest_lsn) = earliest;
                    }
                }
                _ => merged.push(r),
            }
        }
        merged
    }

    /// Plans a recovery to `goal` on the history of `timeline` (the current
    /// one if `None`). `first_commit` reads WAL, for moments when the
    /// database was on another history than the one recovered.
    pub fn plan(&self, goal: Goal, timeline: Option<u32>, first_commit: &mut FirstCommit) -> Result<Plan, Unreachable> {
        let target = timeline.unwrap_or_else(|| self.current());
        let history = self.history(target).map_err(|why| Unreachable {
            why,
            timeline: target,
            ranges: Vec::new(),
        })?;
        let refuse = |why: String| Unreachable {
            why,
            timeline: target,
            ranges: self.ranges(&history),
        };
        let before = |b: &BasePosition| match goal {
            Goal::Latest => true,
            Goal::Time(t) => b.stop_time < t,
            Goal::Lsn(l) => b.stop_lsn <= l,
        };
        let chosen = self
            .bases
            .iter()
            .enumerate()
            .filter(|(_, b)| before(b))
            .filter_map(|(i, b)| Some((i, self.reach(b, &history)?)))
            .max_by_key(|(i, _)| self.bases[*i].stop_lsn);
        let Some((base, reach)) = chosen else {
            return Err(refuse(format!(
                "it is before the first base backup on timeline {target}'s history whose WAL is archived"
            )));
        };
        if let (Goal::Time(t), None) = (goal, timeline) {
            self.same_state_at(t, &history, first_commit).map_err(refuse)?;
        }
        if reach.holds(goal) {
            let quiet_from = match goal {
                Goal::Time(t) => history
                    .spans()
                    .iter()
                    .skip(1)
                    .find(|s| self.created.get(&s.timeline).is_some_and(|c| *c > t))
                    .map(|s| s.begin),
                _ => None,
            };
            return Ok(Plan {
                base,
                goal,
                history,
                reach,
                quiet_from,
            });
        }
        Err(refuse(match reach.gap {
            Some(gap) => format!("the WAL archive has a gap: segment {gap} is missing"),
            None if reach.open && self.live.is_none() => {
                "it is after the last archived WAL, and the server does not answer (so nothing later can be \
                 archived first)"
                    .to_string()
            }
            None => format!("it is after the last archived WAL of timeline {target}'s history"),
        }))
    }

    /// Checks that at moment `t` the database held `history`'s state: that
    /// the timeline live then had committed nothing `history` lacks, and
    /// `history` nothing the live one lacked.
    fn same_state_at(
        &self,
        t: OffsetDateTime,
        history: &History,
        first_commit: &mut FirstCommit,
    ) -> Result<(), String> {
        let was = self.live_at(t);
        if was == history.timeline() {
            return Ok(());
        }
        let then = self.history(was)?;
        let Some(parted) = then.divergence(history) else {
            return Ok(());
        };
        // Timelines created after t committed nothing by then.
        let created_by_t = |h: &History| {
            h.spans()
                .iter()
                .filter(|s| s.end.is_none_or(|e| e > parted))
                .any(|s| self.created.get(&s.timeline).is_none_or(|c| *c <= t))
        };
        for side in [&then, history] {
            if !created_by_t(side) {
                continue;
            }
            match first_commit(side, parted) {
                Ok(Some(c)) if c <= t => {
                    return Err(format!(
                        "at that moment the database was on timeline {was}, which had committed changes (from {c}) \
                         after scn {parted}, where the history of timeline {} parts from it; that point is not on \
                         the current history. To recover it anyway, name its timeline: add \"timeline\": {was}",
                        history.timeline()
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "at that moment the database was on timeline {was}, which parts from the history of timeline \
                         {} at scn {parted}, and its WAL after that point could not be read ({e}); name the timeline \
                         to recover: add \"timeline\": {was} or \"timeline\": {}",
                        history.timeline(),
                        history.timeline()
                    ));
                }
            }
        }
        Ok(())
    }

    /// What `same_state_at` may read for a moment from `since` on (no base
    /// backup lets an earlier one be asked): for each two timelines live
    /// from then on, each one's history from where they part — those that
    /// part before `before` only. A timeline begun later branches from one
    /// of these histories at a point some base backup reaches (not before
    /// `before`), so it needs nothing more. WAL retention keeps the WAL
    /// these reads need, though it is older than every base backup.
    pub fn checked_stretches(&self, since: OffsetDateTime, before: Lsn) -> Vec<(History, Lsn)> {
        let live: Vec<History> = std::iter::once(self.live_at(since))
            .chain(self.created.iter().filter(|(_, c)| **c > since).map(|(t, _)| *t))
            .filter_map(|t| self.history(t).ok())
            .collect();
        let mut stretches: Vec<(History, Lsn)> = Vec::new();
        for (i, a) in live.iter().enumerate() {
            for b in &live[i + 1..] {
                let Some(parted) = a.divergence(b).filter(|p| *p < before) else {
                    continue;
                };
                for side in [a, b] {
                    if !stretches.iter().any(|(h, p)| h == side && *p == parted) {
                        stretches.push((side.clone(), parted));
                    }
                }
            }
        }
        stretches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEG: u64 = 16 << 20;

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(s).unwrap()
    }

    fn base(timeline: u32, start: u64, stop: u64, time: i64) -> BasePosition {
        BasePosition {
            timeline,
            start_lsn: Lsn(start),
            stop_lsn: Lsn(stop),
            stop_time: at(time),
            segment_size: SEG,
        }
    }

    /// Segments (timeline, number, archive time) and history files (timeline, time).
    fn archived(segments: &[(u32, u64, i64)], histories: &[(u32, i64)]) -> Archived {
        let mut files: Vec<WalFile> = segments
            .iter()
            .map(|&(tli, seg, t)| WalFile {
                name: segment_name(tli, Lsn(seg * SEG), SEG),
                stored_bytes: 1,
                archived_at: at(t),
            })
            .collect();
        files.extend(histories.iter().map(|&(tli, t)| WalFile {
            name: format!("{tli:08X}.history"),
            stored_bytes: 1,
            archived_at: at(t),
        }));
        Archived::new(&files)
    }

    fn no_scan(_: &History, _: Lsn) -> Result<Option<OffsetDateTime>, String> {
        panic!("no WAL needs reading here")
    }

    fn plan(p: &Pitr, goal: Goal, timeline: Option<u32>) -> Result<usize, Unreachable> {
        p.plan(goal, timeline, &mut no_scan).map(|plan| plan.base)
    }

    #[test]
    fn the_latest_base_before_the_target_is_chosen_and_unreachable_targets_name_the_range() {
        let bases = [
            base(1, 2 * SEG + 40, 2 * SEG + 200, 100),
            base(1, 5 * SEG + 40, 5 * SEG + 200, 200),
        ];
        let wal = archived(&[(1, 2, 110), (1, 3, 150), (1, 4, 190), (1, 5, 210), (1, 6, 300)], &[]);
        let none = BTreeMap::new();
        let p = Pitr {
            bases: &bases,
            archived: &wal,
            histories: &none,
            created: &BTreeMap::new(),
            live: None,
        };
        let t = |s| Goal::Time(at(s));
        assert_eq!(plan(&p, t(150), None), Ok(0));
        assert_eq!(plan(&p, t(250), None), Ok(1));
        assert_eq!(plan(&p, Goal::Lsn(Lsn(4 * SEG)), None), Ok(0));
        assert_eq!(plan(&p, Goal::Lsn(Lsn(5 * SEG + 200)), None), Ok(1));
        assert_eq!(plan(&p, Goal::Latest, None), Ok(1));
        let early = plan(&p, t(99), None).unwrap_err();
        assert!(early.why.contains("before the first base backup"), "{early:?}");
        assert_eq!(
            early.ranges[0].earliest_lsn,
            Lsn(2 * SEG + 200),
            "names the range: {early:?}"
        );
        let late = plan(&p, t(301), None).unwrap_err();
        assert!(late.why.contains("server does not answer"), "{late:?}");
        assert_eq!(late.ranges.len(), 1, "names the range: {late:?}");
        assert!(plan(&p, Goal::Lsn(Lsn(7 * SEG + 1)), None).is_err());
        let one = p.ranges(&History::first());
        assert_eq!(one.len(), 1, "overlapping reaches merge: {one:?}");
        assert_eq!(
            (one[0].earliest_lsn, one[0].latest_lsn),
            (Lsn(2 * SEG + 200), Lsn(7 * SEG))
        );
        assert_eq!(one[0].last_segment.0, segment_name(1, Lsn(6 * SEG), SEG));

        // While the server answers, the present is reachable: the recovery
        // archives up to it first.
        let live = Pitr {
            live: Some(Live {
                timeline: 1,
                lsn: Lsn(7 * SEG + 500),
                at: at(400),
            }),
            ..p
        };
        assert_eq!(plan(&live, t(399), None), Ok(1));
        assert_eq!(plan(&live, Goal::Lsn(Lsn(7 * SEG + 1)), None), Ok(1));
        assert!(
            plan(&live, t(401), None)
                .unwrap_err()
                .why
                .contains("after the last archived WAL")
        );
    }

    #[test]
    fn a_gap_in_the_archive_ends_a_reach_and_is_named() {
        let b = base(1, 2 * SEG + 40, 2 * SEG + 200, 100);
        let wal = archived(&[(1, 2, 110), (1, 3, 150), (1, 5, 210)], &[]);
        let r = reach(&wal, &b, &History::first()).unwrap();
        assert_eq!((r.latest_lsn, r.open), (Lsn(4 * SEG), false));
        let none = BTreeMap::new();
        let bases = [b.clone()];
        let p = Pitr {
            bases: &bases,
            archived: &wal,
            histories: &none,
            created: &none_created(),
            live: None,
        };
        let err = plan(&p, Goal::Lsn(Lsn(5 * SEG)), None).unwrap_err();
        assert!(
            err.why.contains("gap") && err.why.contains(&segment_name(1, Lsn(4 * SEG), SEG)),
            "{err:?}"
        );
        // A base whose own WAL is not archived yet reaches nothing.
        assert!(reach(&archived(&[(1, 3, 1)], &[]), &b, &History::first()).is_none());
    }

    fn none_created() -> BTreeMap<u32, OffsetDateTime> {
        BTreeMap::new()
    }

    /// Timeline 1: base A (segment 2), writes to segment 6, base B (segment
    /// 5). At t=300 a recovery to A's point (0/2000200) made timeline 2,
    /// which wrote segments 2 (its copy) to 4.
    fn branched() -> (
        Vec<BasePosition>,
        Archived,
        BTreeMap<u32, History>,
        BTreeMap<u32, OffsetDateTime>,
    ) {
        let bases = vec![
            base(1, 2 * SEG + 40, 2 * SEG + 200, 100),
            base(1, 5 * SEG + 40, 5 * SEG + 200, 200),
        ];
        let wal = archived(
            &[
                (1, 2, 110),
                (1, 3, 150),
                (1, 4, 190),
                (1, 5, 210),
                (1, 6, 290),
                (2, 2, 320),
                (2, 3, 340),
                (2, 4, 360),
            ],
            &[(2, 301)],
        );
        let histories = BTreeMap::from([(2, History::parse(2, "1\t0/2000200\treached consistency").unwrap())]);
        let created = BTreeMap::from([(2, at(300))]);
        (bases, wal, histories, created)
    }

    #[test]
    fn after_a_recovery_points_follow_the_new_timeline_and_its_ancestors_only() {
        let (bases, wal, histories, created) = branched();
        let p = Pitr {
            bases: &bases,
            archived: &wal,
            histories: &histories,
            created: &created,
            live: None,
        };
        assert_eq!(p.current(), 2);
        // An scn past the switch is a position of timeline 2, replayed from A
        // through timeline 2's segments (timeline 1's are another history).
        let planned = p.plan(Goal::Lsn(Lsn(4 * SEG)), None, &mut no_scan).unwrap();
        assert_eq!((planned.base, planned.history.timeline()), (0, 2));
        assert_eq!(planned.reach.latest_lsn, Lsn(5 * SEG));
        assert_eq!(planned.reach.last_segment, (segment_name(2, Lsn(4 * SEG), SEG), 2));
        // B is on the abandoned part of timeline 1: not a base of timeline 2.
        assert_eq!(plan(&p, Goal::Lsn(Lsn(5 * SEG + 300)), None).unwrap_err().timeline, 2);
        assert_eq!(plan(&p, Goal::Latest, None), Ok(0));
        // Named explicitly, timeline 1's history is recoverable, from B.
        assert_eq!(plan(&p, Goal::Lsn(Lsn(5 * SEG + 300)), Some(1)), Ok(1));
        assert_eq!(plan(&p, Goal::Time(at(250)), Some(1)), Ok(1));
        assert!(
            plan(&p, Goal::Latest, Some(7))
                .unwrap_err()
                .why
                .contains("timeline 7 is unknown")
        );
    }

    #[test]
    fn a_live_timeline_without_a_stored_history_is_awaited_until_its_wal_is_stored() {
        let (bases, wal, histories, created) = branched();
        let live = |timeline| {
            Some(Live {
                timeline,
                lsn: Lsn(5 * SEG),
                at: at(400),
            })
        };
        let p = |live, archived| Pitr {
            bases: &bases,
            archived,
            histories: &histories,
            created: &created,
            live,
        };
        // Timeline 2's history is stored; 1 has none; the server is not asked.
        assert_eq!(p(live(2), &wal).awaited_history(), None);
        assert_eq!(p(live(1), &wal).awaited_history(), None);
        assert_eq!(p(None, &wal).awaited_history(), None);
        // Promoted to 3, nothing of it stored yet: its history is coming.
        assert_eq!(p(live(3), &wal).awaited_history(), Some(3));
        // A segment of 3 stored without its history: it never will be.
        let without_history = archived(&[(1, 2, 110), (2, 2, 320), (3, 4, 380)], &[(2, 301)]);
        assert_eq!(p(live(3), &without_history).awaited_history(), None);
        // Nothing archived at all: not a deployment archiving its WAL.
        assert_eq!(p(live(3), &archived(&[], &[])).awaited_history(), None);
    }

    #[test]
    fn a_moment_when_the_database_held_what_the_current_history_abandoned_is_refused() {
        let (bases, wal, histories, created) = branched();
        let p = Pitr {
            bases: &bases,
            archived: &wal,
            histories: &histories,
            created: &created,
            live: None,
        };
        // At t=150 the database was on timeline 1, past the switch point:
        // timeline 1 committed at t=120 what timeline 2 does not hold.
        let mut scanned = Vec::new();
        let mut first_commit = |h: &History, from: Lsn| {
            scanned.push((h.timeline(), from));
            Ok(Some(at(120)))
        };
        let err = p.plan(Goal::Time(at(150)), None, &mut first_commit).unwrap_err();
        assert!(
            err.why.contains("timeline 1") && err.why.contains("\"timeline\": 1"),
            "{err:?}"
        );
        assert_eq!(scanned, [(1, Lsn(0x200_0200))], "timeline 1 read from the switch point");
        // Before timeline 1's first commit after the switch, both histories
        // hold the same: the moment is recovered on timeline 2.
        let planned = p
            .plan(Goal::Time(at(110)), None, &mut |_, _| Ok(Some(at(120))))
            .unwrap();
        assert_eq!((planned.base, planned.history.timeline()), (0, 2));
        // WAL that cannot be read is no licence to guess.
        let err = p
            .plan(Goal::Time(at(110)), None, &mut |_, _| Err("segment missing".into()))
            .unwrap_err();
        assert!(err.why.contains("segment missing"), "{err:?}");
        // Moments after the recovery are timeline 2's own: no WAL read.
        assert_eq!(plan(&p, Goal::Time(at(330)), None), Ok(0));
        // Before timeline 2 began, its WAL holds nothing of the moment.
        assert_eq!(planned.quiet_from, Some(Lsn(0x200_0200)));
        assert_eq!(
            p.plan(Goal::Time(at(330)), None, &mut no_scan).unwrap().quiet_from,
            None
        );
        // Named explicitly, the abandoned moment is timeline 1's.
        assert_eq!(plan(&p, Goal::Time(at(150)), Some(1)), Ok(0));
    }

    /// A history file archived late (copied into a repository made again
    /// from a copy) says nothing of when its timeline began once a base
    /// backup on it completed earlier: a moment after that base replays
    /// on its timeline rather than stop short at the switch.
    #[test]
    fn a_timeline_is_live_by_the_time_a_base_backup_on_it_completed() {
        let (mut bases, wal, histories, mut created) = branched();
        bases.push(base(2, 3 * SEG + 40, 3 * SEG + 200, 345));
        created.insert(2, at(900));
        let stale = created.clone();
        bound_created(&mut created, &bases, &histories);
        assert_eq!(created[&2], at(345));
        let p = Pitr {
            bases: &bases,
            archived: &wal,
            histories: &histories,
            created: &created,
            live: None,
        };
        let planned = p.plan(Goal::Time(at(350)), None, &mut no_scan).unwrap();
        assert_eq!((planned.base, planned.quiet_from), (2, None));
        // Without the bound, timeline 2 would seem begun after the moment,
        // and replay would stop at its switch point, short of the base.
        let p = Pitr { created: &stale, ..p };
        let planned = p.plan(Goal::Time(at(350)), None, &mut |_, _| Ok(None)).unwrap();
        assert_eq!((planned.base, planned.quiet_from), (2, Some(Lsn(0x200_0200))));
    }

    #[test]
    fn the_stretches_checked_for_moments_in_range_are_those_where_live_timelines_part() {
        let (bases, wal, mut histories, mut created) = branched();
        // At t=400 a recovery named timeline 1 and made timeline 3 from it
        // at 0/5000300, past B's start.
        histories.insert(3, History::parse(3, "1\t0/5000300\tbefore 250").unwrap());
        created.insert(3, at(400));
        let p = Pitr {
            bases: &bases,
            archived: &wal,
            histories: &histories,
            created: &created,
            live: None,
        };
        let parted = Lsn(0x200_0200);
        let b_start = bases[1].start_lsn;
        let stretches = |since| -> Vec<(u32, Lsn)> {
            p.checked_stretches(at(since), b_start)
                .iter()
                .map(|(h, l)| (h.timeline(), *l))
                .collect()
        };
        // From t=250 on timelines 1, 2 and 3 were live: 2 parts from both
        // at 0/2000200; 1 and 3 part at 0/5000300, which B reaches.
        assert_eq!(stretches(250), [(1, parted), (2, parted), (3, parted)]);
        // From t=350 on, only 2 and 3.
        assert_eq!(stretches(350), [(2, parted), (3, parted)]);
        // Nothing to keep when only one timeline is left to ask about.
        assert_eq!(stretches(450), []);
        // Parting points at or after the oldest base's start need nothing kept.
        assert_eq!(p.checked_stretches(at(250), parted), []);
    }

    #[test]
    fn a_new_timelines_first_segment_not_yet_archived_leaves_the_parents_copy_up_to_the_switch() {
        // Timeline 2 began mid-segment 3; only timeline 1's segment 3 is archived.
        let b = base(1, 2 * SEG + 40, 2 * SEG + 200, 100);
        let h2 = History::parse(2, "1\t0/3000100\tx").unwrap();
        let wal = archived(&[(1, 2, 110), (1, 3, 150)], &[(2, 160)]);
        let r = reach(&wal, &b, &h2).unwrap();
        assert_eq!((r.latest_lsn, r.open), (Lsn(3 * SEG + 0x100), true));
        assert_eq!(r.last_segment.1, 1);
        // Recovered to the base's own consistency point: the new timeline
        // begins there, and reaches it (then the present, while it answers).
        let h3 = History::parse(3, &format!("1\t{}\tx", b.stop_lsn)).unwrap();
        let wal = archived(&[(1, 2, 110)], &[(3, 160)]);
        let r = reach(&wal, &b, &h3).unwrap();
        assert_eq!((r.latest_lsn, r.open), (b.stop_lsn, true));
        let bases = [b.clone()];
        let histories = BTreeMap::from([(3, h3)]);
        let p = Pitr {
            bases: &bases,
            archived: &wal,
            histories: &histories,
            created: &BTreeMap::new(),
            live: Some(Live {
                timeline: 3,
                lsn: Lsn(2 * SEG + 0x3000),
                at: at(200),
            }),
        };
        assert_eq!(plan(&p, Goal::Lsn(Lsn(2 * SEG + 0x2000)), None), Ok(0));
    }

    proptest! {
        /// Whatever the archive holds, a reach never ends before it begins.
        #[test]
        fn earliest_is_never_after_latest(
            start in 0u64..6, stop_off in 0u64..(2 * SEG), stop_time in 0i64..1000,
            segments in proptest::collection::vec((1u32..3, 0u64..10, 0i64..1000), 0..12),
            switch in 1u64..(8 * SEG), live in proptest::option::of((0u64..(12 * SEG), 0i64..2000)),
        ) {
            let b = base(1, start * SEG + 40, start * SEG + 40 + stop_off, stop_time);
            let wal = archived(&segments, &[(2, 500)]);
            let histories = BTreeMap::from([(2, History::parse(2, &format!("1\t{}\tx", Lsn(switch))).unwrap())]);
            let bases = [b];
            let p = Pitr {
                bases: &bases,
                archived: &wal,
                histories: &histories,
                created: &BTreeMap::new(),
                live: live.map(|(lsn, t)| Live { timeline: 2, lsn: Lsn(lsn), at: at(t) }),
            };
            for h in [History::first(), histories[&2].clone()] {
                for r in p.ranges(&h) {
                    prop_assert!(r.earliest_time <= r.latest_time, "{r:?}");
                    prop_assert!(r.earliest_lsn <= r.latest_lsn, "{r:?}");
                }
            }
        }
    }
}
