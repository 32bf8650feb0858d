//! Timeline histories and what a rejoin of a running server would do: the
//! comparison pg_rewind makes (the last timeline two histories share and
//! where the earlier of them left it), made from `*.history` files and WAL
//! positions so a running standby can be judged without stopping it. Pure.

use crate::api::Lsn;

/// One entry of a timeline's history: `timeline` ran up to `end`
/// (`None`: it is the newest, still running).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub timeline: i64,
    pub end: Option<Lsn>,
}

/// The full history of `timeline` from its `.history` file (empty for timeline 1):
/// every ancestor with the position where it was left, then `timeline` itself.
pub fn history(timeline: i64, file: &str) -> Vec<Span> {
    let mut spans: Vec<Span> = file
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut f = l.split_whitespace();
            let tli = f.next()?.parse().ok()?;
            let end = f.next()?.parse().ok()?;
            Some(Span {
                timeline: tli,
                end: Some(end),
            })
        })
        .filter(|s| s.timeline < timeline)
        .collect();
    spans.push(Span {
        timeline,
        end: None,
    });
    spans
}

/// What a server is on: its timeline's history and the newest WAL it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub history: Vec<Span>,
    pub lsn: Lsn,
}

impl Position {
    /// The timeline it is on.
    pub fn timeline(&self) -> i64 {
        self.history.last().map_or(0, |s| s.timeline)
    }
}

/// Where two histories part: the last timeline they share and the position
/// where the first of them left it (`None`: neither left it, same timeline).
/// `None` when they share no timeline at all.
pub fn divergence(target: &[Span], source: &[Span]) -> Option<(i64, Option<Lsn>)> {
    let mut common = None;
    for (t, s) in target.iter().zip(source) {
        if t.timeline != s.timeline {
            break;
        }
        let end = match (t.end, s.end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        common = Some((t.timeline, end));
    }
    common
}

/// What rewinding `target` onto `source` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The target's WAL ends at or before the point where its history leaves
    /// the source's: it can follow the source as it is.
    NoRewind { reason: String },
    /// The target holds WAL past the divergence point: pg_rewind needed.
    Rewind { diverged_at: Lsn, reason: String },
    /// The histories share no timeline: only a re-clone brings it back.
    Unrelated { reason: String },
}

/// Judge `target` against `source`, as pg_rewind would.
pub fn judge(target: &Position, source: &Position) -> Verdict {
    let (ttl, stl) = (target.timeline(), source.timeline());
    match divergence(&target.history, &source.history) {
        None => Verdict::Unrelated {
            reason: format!(
                "timeline {ttl} shares no timeline with the source's history (timeline {stl})"
            ),
        },
        Some((tl, None)) => Verdict::NoRewind {
            reason: format!("on the source's timeline {tl}"),
        },
        Some((tl, Some(at))) if target.lsn <= at => Verdict::NoRewind {
            reason: format!(
                "its WAL ends at {} on timeline {ttl}, not past {at} where the source left timeline {tl} (source on timeline {stl})",
                target.lsn
            ),
        },
        Some((tl, Some(at))) => Verdict::Rewind {
            diverged_at: at,
            reason: format!(
                "servers diverged at WAL location {at} on timeline {tl}; its WAL goes on to {} on timeline {ttl} ({} bytes past it; source on timeline {stl})",
                target.lsn,
                target.lsn.bytes_after(at)
            ),
        },
    }
}

/// The file name of timeline `tl`'s history in `pg_wal`.
pub fn history_file(tl: i64) -> String {
    format!("{tl:08X}.history")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn history_reads_entries_and_appends_the_timeline() {
        let h = history(
            3,
            "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tx\n",
        );
        assert_eq!(
            h,
            vec![
                Span {
                    timeline: 1,
                    end: Some(lsn("0/3000148"))
                },
                Span {
                    timeline: 2,
                    end: Some(lsn("0/5000000"))
                },
                Span {
                    timeline: 3,
                    end: None
                },
            ]
        );
        assert_eq!(
            history(1, ""),
            vec![Span {
                timeline: 1,
                end: None
            }]
        );
        assert_eq!(history_file(10), "0000000A.history");
    }

    #[test]
    fn judge_tells_follow_from_rewind_from_reclone() {
        let primary = Position {
            history: history(2, "1\t0/3000148\tpromoted"),
            lsn: lsn("0/4000000"),
        };
        // Same timeline as the source.
        let same = Position {
            history: history(2, "1\t0/3000148\tpromoted"),
            lsn: lsn("0/3500000"),
        };
        assert!(matches!(judge(&same, &primary), Verdict::NoRewind { .. }));
        // Old timeline, stopped before the switch: follows across it.
        let behind = Position {
            history: history(1, ""),
            lsn: lsn("0/3000100"),
        };
        assert!(matches!(judge(&behind, &primary), Verdict::NoRewind { .. }));
        // Old timeline, went on past the switch: rewind from the switch point.
        let past = Position {
            history: history(1, ""),
            lsn: lsn("0/3000200"),
        };
        match judge(&past, &primary) {
            Verdict::Rewind {
                diverged_at,
                reason,
            } => {
                assert_eq!(diverged_at, lsn("0/3000148"));
                assert!(reason.contains("184 bytes past it"), "{reason}");
            }
            v => panic!("{v:?}"),
        }
        // A sibling timeline (both promoted from timeline 1): the earlier switch point.
        let sibling = Position {
            history: history(3, "1\t0/3000100\tpromoted"),
            lsn: lsn("0/3000400"),
        };
        assert!(matches!(
            judge(&sibling, &primary),
            Verdict::Rewind { diverged_at, .. } if diverged_at == lsn("0/3000100")
        ));
        let foreign = Position {
            history: vec![Span {
                timeline: 7,
                end: None,
            }],
            lsn: lsn("0/1"),
        };
        assert!(matches!(
            judge(&foreign, &primary),
            Verdict::Unrelated { .. }
        ));
    }
}
