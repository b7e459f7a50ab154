//! Timelines: every promotion (ours after a recovery, or a failover)
//! starts a new timeline, and PostgreSQL archives a history file
//! (`0000000N.history`) naming the ancestors and where it branched off
//! each. A timeline's history is the WAL a recovery along it replays: each
//! ancestor up to its switch point, then the timeline itself. WAL past a
//! switch point on an ancestor belongs to an abandoned branch.

use serde::{Deserialize, Serialize};

use super::Lsn;

/// One timeline's stretch of a history: WAL positions `begin..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub timeline: u32,
    pub begin: Lsn,
    /// Where the history leaves this timeline; `None` for its last one.
    pub end: Option<Lsn>,
}

impl Span {
    fn holds(&self, lsn: Lsn) -> bool {
        self.begin <= lsn && self.end.is_none_or(|end| lsn <= end)
    }
}

/// A timeline's history, oldest stretch first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    spans: Vec<Span>,
}

impl History {
    /// Timeline 1, which has no history file.
    pub fn first() -> History {
        History {
            spans: vec![Span {
                timeline: 1,
                begin: Lsn(0),
                end: None,
            }],
        }
    }

    /// One timeline on its own from the start, whatever its ancestors: for
    /// checking the continuity of its archived WAL.
    pub fn alone(timeline: u32) -> History {
        History {
            spans: vec![Span {
                timeline,
                begin: Lsn(0),
                end: None,
            }],
        }
    }

    /// Parses the history file of `timeline`: lines `PARENT\tSWITCHPOINT\tREASON`.
    ///
    /// PostgreSQL writes the recovery's target timeline as the parent,
    /// even when replay stopped on one of its ancestors (before the target
    /// timeline began), and reads a position as the newest timeline whose
    /// stretch holds it. So the stretches here are the ones that win: each
    /// line's ends where any later one begins, if sooner, and one that
    /// thereby holds nothing is left out.
    pub fn parse(timeline: u32, text: &str) -> Result<History, String> {
        let mut lines = Vec::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let bad = || format!("timeline {timeline}'s history has a malformed line {line:?}");
            let mut fields = line.split_whitespace();
            let parent: u32 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
            let end: Lsn = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
            if lines.last().is_some_and(|(t, _)| *t >= parent) || parent >= timeline {
                return Err(format!("{}: timelines must increase", bad()));
            }
            lines.push((parent, end));
        }
        if lines.is_empty() && timeline != 1 {
            return Err(format!("timeline {timeline}'s history names no parent"));
        }
        // Each timeline's stretch begins where the previous line ended.
        let mut raw = Vec::new();
        let mut begin = Lsn(0);
        for (t, end) in lines {
            raw.push((t, begin));
            begin = end;
        }
        raw.push((timeline, begin));
        // A stretch wins up to the earliest begin of any later one.
        let mut spans = Vec::new();
        let mut later = None::<Lsn>;
        for &(t, begin) in raw.iter().rev() {
            match later {
                None => spans.push(Span {
                    timeline: t,
                    begin,
                    end: None,
                }),
                Some(l) if begin < l => spans.push(Span {
                    timeline: t,
                    begin,
                    end: Some(l),
                }),
                Some(_) => {}
            }
            later = Some(later.map_or(begin, |l| l.min(begin)));
        }
        spans.reverse();
        Ok(History { spans })
    }

    /// The timeline this is the history of.
    pub fn timeline(&self) -> u32 {
        self.spans.last().expect("a history has a span").timeline
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// The timeline replay is on at `lsn` of this history (at a switch
    /// point, as PostgreSQL has it, already the new one).
    pub fn timeline_at(&self, lsn: Lsn) -> u32 {
        self.spans
            .iter()
            .rev()
            .find(|s| s.begin <= lsn)
            .map_or(1, |s| s.timeline)
    }

    /// Whether position `lsn` of `timeline` is part of this history.
    pub fn holds(&self, timeline: u32, lsn: Lsn) -> bool {
        self.spans.iter().any(|s| s.timeline == timeline && s.holds(lsn))
    }

    /// Which timeline's file of segment number `segment` replay reads: the
    /// newest one begun by the segment's end (the segment of a switch point
    /// is the child's: it copies the parent's WAL up to the switch).
    pub fn segment_timeline(&self, segment: u64, segment_size: u64) -> u32 {
        self.spans
            .iter()
            .rev()
            .find(|s| s.begin.0 / segment_size <= segment)
            .map_or(1, |s| s.timeline)
    }

    /// The history of `timeline`, promoted at `at` on this history's last
    /// timeline: what PostgreSQL writes into its history file (this
    /// history's lines and `LAST\tAT`). For a promotion a recovery recorded
    /// whose history file is not in the repository yet.
    pub fn branch(&self, timeline: u32, at: Lsn) -> Result<History, String> {
        let last = *self.spans.last().expect("a history has a span");
        if timeline <= last.timeline || at < last.begin {
            return Err(format!(
                "timeline {timeline} cannot branch at {at} from timeline {}'s history (its stretch begins at {})",
                last.timeline, last.begin
            ));
        }
        let mut spans = self.spans.clone();
        spans.last_mut().expect("a history has a span").end = Some(at);
        spans.push(Span {
            timeline,
            begin: at,
            end: None,
        });
        Ok(History { spans })
    }

    /// The timeline `timeline` branched from in this history.
    pub fn parent_of(&self, timeline: u32) -> Option<u32> {
        let i = self.spans.iter().position(|s| s.timeline == timeline)?;
        Some(self.spans.get(i.checked_sub(1)?)?.timeline)
    }

    /// The span of `timeline` in this history.
    pub fn span(&self, timeline: u32) -> Option<&Span> {
        self.spans.iter().find(|s| s.timeline == timeline)
    }

    /// The first position at which this history and `other` hold different
    /// WAL (`None` if they are the same history).
    pub fn divergence(&self, other: &History) -> Option<Lsn> {
        for (a, b) in self.spans.iter().zip(&other.spans) {
            if a.timeline != b.timeline {
                return Some(a.begin);
            }
            match (a.end, b.end) {
                (Some(x), Some(y)) if x == y => {}
                (None, None) => return None,
                (x, y) => return Some(x.unwrap_or(Lsn(u64::MAX)).min(y.unwrap_or(Lsn(u64::MAX)))),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn a_branch_is_the_history_postgresql_writes_for_the_promotion() {
        let two = History::parse(2, "1\t0/3000158\tno recovery target specified\n").unwrap();
        let written = History::parse(
            5,
            "1\t0/3000158\tno recovery target specified\n2\t0/5000000\tbefore 2026-12-06 19:00:00+00\n",
        )
        .unwrap();
        assert_eq!(two.branch(5, "0/5000000".parse().unwrap()), Ok(written));
        assert_eq!(
            History::first().branch(2, "0/3000158".parse().unwrap()),
            Ok(two.clone())
        );
        // Not before the last stretch began, nor to an older timeline.
        assert!(two.branch(5, "0/3000000".parse().unwrap()).is_err());
        assert!(two.branch(2, "0/5000000".parse().unwrap()).is_err());
    }

    #[test]
    fn a_history_file_gives_the_stretches_replay_follows() {
        // Timeline 4: from 1 up to 0/3000158, then 2 up to 0/5000000, then itself.
        let h = History::parse(
            4,
            "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tafter LSN 0/4FFFFF0\n",
        )
        .unwrap();
        assert_eq!(h.timeline(), 4);
        assert_eq!(h.spans().iter().map(|s| s.timeline).collect::<Vec<_>>(), [1, 2, 4]);
        assert_eq!(h.timeline_at(Lsn(0x300_0000)), 1);
        assert_eq!(h.timeline_at(Lsn(0x300_0157)), 1);
        assert_eq!(
            h.timeline_at(Lsn(0x300_0158)),
            2,
            "at its switch point replay is on the new timeline"
        );
        assert!(
            h.holds(1, Lsn(0x300_0158)),
            "yet the parent holds it: a base backup may end there"
        );
        assert_eq!(h.timeline_at(Lsn(0x300_0159)), 2);
        assert_eq!(h.timeline_at(Lsn(0x900_0000)), 4);
        assert!(
            h.holds(1, Lsn(0x300_0000)) && !h.holds(1, Lsn(0x400_0000)),
            "1 is abandoned past its switch"
        );
        // Segment 3 holds the switch to 2: timeline 2's copy of it is read.
        assert_eq!(h.segment_timeline(2, SEG), 1);
        assert_eq!(h.segment_timeline(3, SEG), 2);
        assert_eq!(h.segment_timeline(4, SEG), 2);
        assert_eq!(h.segment_timeline(5, SEG), 4, "a switch at a segment boundary");
        assert!(History::parse(2, "").is_err());
        assert!(History::parse(2, "3\t0/1\tx").is_err(), "a parent newer than its child");
        assert!(History::parse(3, "2\t0/5\tx\n1\t0/4\ty").is_err(), "timelines increase");
        assert_eq!(History::parse(1, "").unwrap(), History::first());
    }

    #[test]
    fn a_recovery_that_stopped_on_an_ancestor_of_its_target_branches_from_that_ancestor() {
        // Timeline 10 (from 9 at 0/5000000, 9 from 5 at 0/40001F0) recovered
        // to 0/40001F0: PostgreSQL names 10 the parent, at a point before 10
        // (and 9) began. What replay reads there is timeline 5's.
        let h = History::parse(
            11,
            "1\t0/2000100\ta\n5\t0/40001F0\tb\n9\t0/5000000\tc\n10\t0/40001F0\td\n",
        )
        .unwrap();
        assert_eq!(h.spans().iter().map(|s| s.timeline).collect::<Vec<_>>(), [1, 5, 11]);
        assert_eq!(h.span(5).unwrap().end, Some(Lsn(0x400_01F0)));
        assert!(h.holds(5, Lsn(0x400_01F0)) && !h.holds(9, Lsn(0x400_0500)));
        assert_eq!(h.segment_timeline(4, SEG), 11);
    }

    #[test]
    fn histories_part_where_their_timelines_do() {
        let h2 = History::parse(2, "1\t0/3000000\tx").unwrap();
        let h3 = History::parse(3, "1\t0/2000000\tx").unwrap();
        let h4 = History::parse(4, "1\t0/3000000\tx\n2\t0/5000000\tx").unwrap();
        assert_eq!(h2.divergence(&h3), Some(Lsn(0x200_0000)));
        assert_eq!(h3.divergence(&h2), Some(Lsn(0x200_0000)));
        assert_eq!(h2.divergence(&h4), Some(Lsn(0x500_0000)));
        assert_eq!(History::first().divergence(&h2), Some(Lsn(0x300_0000)));
        assert_eq!(h4.divergence(&h4.clone()), None);
    }
}
