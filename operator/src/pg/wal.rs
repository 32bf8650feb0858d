//! Where the valid WAL of a stopped data directory ends, read with
//! pg_waldump: from the latest checkpoint's REDO location, on the newest
//! timeline in pg_wal, to the first record that is not valid. After a stop
//! that was not clean this is the last WAL the server wrote (every commit it
//! acknowledged lies before it). Parsing is pure; [`end_of_wal`] does I/O.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::api::Lsn;

use super::control::ControlData;
use super::{Error, Runner, Tool};

/// How long pg_waldump may read (it reads at most a few checkpoints' worth of WAL).
const WALDUMP_TIMEOUT: Duration = Duration::from_secs(300);

/// A WAL segment file name: its timeline and segment number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    pub timeline: u32,
    pub segno: u64,
}

/// Segments per 4 GiB "xlogid" for a segment size.
fn segments_per_id(segment_size: u64) -> u64 {
    (1u64 << 32) / segment_size.max(1)
}

/// Parse a segment file name (`TTTTTTTTXXXXXXXXYYYYYYYY`); None for anything else
/// (history files, `.partial`, `.backup`, archive_status).
pub fn parse_segment(name: &str, segment_size: u64) -> Option<Segment> {
    if name.len() != 24 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
    let id = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some(Segment {
        timeline,
        segno: id * segments_per_id(segment_size) + seg,
    })
}

/// The LSN where segment `segno` starts.
pub fn segment_start(segno: u64, segment_size: u64) -> Lsn {
    Lsn(segno.saturating_mul(segment_size))
}

/// Where to read from: the newest timeline with a segment at or after the
/// REDO location's, starting at the REDO location or, when that timeline
/// begins later, at its first segment there (a promotion copies the old
/// timeline's last segment under the new timeline, so nothing is skipped).
pub fn read_start(segments: &[Segment], redo: Lsn, segment_size: u64) -> Option<(u32, Lsn)> {
    let redo_segno = redo.0 / segment_size.max(1);
    let newest = segments
        .iter()
        .filter(|s| s.segno >= redo_segno)
        .map(|s| s.timeline)
        .max()?;
    let first = segments
        .iter()
        .filter(|s| s.timeline == newest && s.segno >= redo_segno)
        .map(|s| s.segno)
        .min()?;
    Some((newest, redo.max(segment_start(first, segment_size))))
}

/// The first `X/Y` LSN in `text` that follows `marker`.
fn lsn_after(text: &str, marker: &str) -> Option<Lsn> {
    text.match_indices(marker).find_map(|(i, _)| {
        let rest = &text[i + marker.len()..];
        let token: String = rest
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || *c == '/')
            .collect();
        token.parse().ok()
    })
}

/// `log segment NAME, offset N` (or `WAL segment`): the page's LSN.
fn segment_offset(text: &str, segment_size: u64) -> Option<Lsn> {
    let i = text.find(" segment ")?;
    let rest = &text[i + " segment ".len()..];
    let name: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    let seg = parse_segment(&name, segment_size)?;
    let j = rest.find("offset ")?;
    let offset: String = rest[j + "offset ".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let offset: u64 = offset.parse().ok()?;
    Some(Lsn(segment_start(seg.segno, segment_size).0 + offset))
}

/// Where valid WAL ends, from pg_waldump's last error: the position of the
/// first record that could not be read. pg_waldump reports it as
/// `error in WAL record at <last valid record>: <why> at <position>`
/// (`invalid record length at`, `record with incorrect prev-link … at`,
/// `invalid record offset at`, …); a bad page header names its segment and
/// offset instead (the end then is that page's start, at most one page past
/// the last record); a missing next segment gives that segment's start.
pub fn parse_waldump_end(output: &str, segment_size: u64) -> Option<Lsn> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains("error in WAL record at") || l.contains("could not find"))?;
    if let Some(i) = line.find("error in WAL record at ") {
        let rest = &line[i + "error in WAL record at ".len()..];
        let why = rest.split_once(": ").map(|(_, w)| w).unwrap_or("");
        return lsn_after(why, " at ")
            .or_else(|| lsn_after(why, "LSN "))
            .or_else(|| segment_offset(why, segment_size));
    }
    if let Some(start) = lsn_after(line, "could not find a valid record after ") {
        return Some(start);
    }
    // `could not find file "NAME"`: the WAL runs up to that segment's start.
    let name = line.split('"').nth(1)?;
    parse_segment(name, segment_size).map(|s| segment_start(s.segno, segment_size))
}

/// The WAL segments in `<data_dir>/pg_wal`.
fn segments(data_dir: &Path, segment_size: u64) -> Result<Vec<Segment>, Error> {
    let dir = data_dir.join("pg_wal");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(Error::io(&dir))? {
        let e = e.map_err(Error::io(&dir))?;
        if let Some(s) = parse_segment(&e.file_name().to_string_lossy(), segment_size) {
            out.push(s);
        }
    }
    Ok(out)
}

/// The end of the last valid WAL record of the stopped server in `data_dir`,
/// read with pg_waldump from the REDO location pg_controldata gave.
pub async fn end_of_wal(
    runner: &Runner,
    data_dir: &Path,
    control: &ControlData,
) -> Result<Lsn, Error> {
    let unreadable = |output: String| Error::ToolFailed {
        tool: Tool::PgWaldump.name().into(),
        status: "no end of WAL found".into(),
        output,
    };
    let (Some(redo), Some(size)) = (control.redo_lsn, control.wal_segment_size) else {
        return Err(unreadable(
            "pg_controldata gave no REDO location or segment size".into(),
        ));
    };
    let segs = segments(data_dir, size)?;
    let Some((timeline, start)) = read_start(&segs, redo, size) else {
        return Err(unreadable(format!("no WAL segment at or after {redo}")));
    };
    let args: Vec<OsString> = vec![
        "--quiet".into(),
        "--path".into(),
        data_dir.join("pg_wal").into(),
        "--timeline".into(),
        timeline.to_string().into(),
        "--start".into(),
        start.to_string().into(),
    ];
    let (_, out) = runner
        .run_any(Tool::PgWaldump, &args, None, WALDUMP_TIMEOUT)
        .await?;
    parse_waldump_end(&out, size).ok_or_else(|| unreadable(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn segment_names_give_timeline_and_number() {
        assert_eq!(
            parse_segment("000000010000000000000003", SEG),
            Some(Segment {
                timeline: 1,
                segno: 3
            })
        );
        let s = parse_segment("0000000A00000002000000FF", SEG).unwrap();
        assert_eq!(s.timeline, 10);
        assert_eq!(segment_start(s.segno, SEG), Lsn(0x2_FF00_0000));
        assert_eq!(parse_segment("00000002.history", SEG), None);
        assert_eq!(parse_segment("000000010000000000000003.partial", SEG), None);
        assert_eq!(parse_segment("archive_status", SEG), None);
    }

    #[test]
    fn reading_starts_on_the_newest_timeline_at_or_after_redo() {
        let seg = |t, n| Segment {
            timeline: t,
            segno: n,
        };
        let redo = Lsn(3 * SEG + 0x100);
        // One timeline: from REDO.
        assert_eq!(
            read_start(&[seg(1, 2), seg(1, 3), seg(1, 4)], redo, SEG),
            Some((1, redo))
        );
        // Promoted in segment 4 after the checkpoint: timeline 2 from its first segment.
        assert_eq!(
            read_start(&[seg(1, 3), seg(1, 4), seg(2, 4), seg(2, 5)], redo, SEG),
            Some((2, Lsn(4 * SEG)))
        );
        // Promoted in REDO's own segment: from REDO on timeline 2.
        assert_eq!(
            read_start(&[seg(1, 3), seg(2, 3)], redo, SEG),
            Some((2, redo))
        );
        // Old segments of a newer timeline before REDO do not count.
        assert_eq!(
            read_start(&[seg(3, 1), seg(1, 3)], redo, SEG),
            Some((1, redo))
        );
        assert_eq!(read_start(&[seg(1, 1)], redo, SEG), None);
    }

    #[test]
    fn waldump_end_is_where_the_first_invalid_record_starts() {
        // PostgreSQL 15 after an immediate stop (the commit record at 0/15272A0, 34 bytes).
        let out = "pg_waldump: error: error in WAL record at 0/15272A0: invalid record length at 0/15272C8: wanted 24, got 0";
        assert_eq!(parse_waldump_end(out, SEG), Some(Lsn(0x15272C8)));
        // Newer wording.
        let out = "pg_waldump: error: error in WAL record at 0/15272A0: invalid record length at 0/15272C8: expected at least 24, got 0";
        assert_eq!(parse_waldump_end(out, SEG), Some(Lsn(0x15272C8)));
        // A recycled segment: an old record, found by its link.
        let out = "pg_waldump: error: error in WAL record at 0/3000F28: record with incorrect prev-link 0/1FFF0A0 at 0/3000F60";
        assert_eq!(parse_waldump_end(out, SEG), Some(Lsn(0x3000F60)));
        // A bad page header: the page's start.
        let out = "pg_waldump: error: error in WAL record at 0/3001FB0: unexpected pageaddr 0/1002000 in log segment 000000010000000000000003, offset 8192";
        assert_eq!(parse_waldump_end(out, SEG), Some(Lsn(0x3002000)));
        let out = "pg_waldump: error: error in WAL record at 0/3001FB0: invalid magic number 0000 in WAL segment 000000010000000000000003, LSN 0/3002000, offset 8192";
        assert_eq!(parse_waldump_end(out, SEG), Some(Lsn(0x3002000)));
        // The next segment is not there: its start.
        let out = "pg_waldump: error: could not find file \"000000010000000000000004\": No such file or directory";
        assert_eq!(parse_waldump_end(out, SEG), Some(Lsn(0x4000000)));
        let out = "pg_waldump: error: could not find a valid record after 0/3000028";
        assert_eq!(parse_waldump_end(out, SEG), Some(Lsn(0x3000028)));
        // Nothing that says where.
        assert_eq!(parse_waldump_end("", SEG), None);
        assert_eq!(
            parse_waldump_end(
                "pg_waldump: error: error in WAL record at 0/3000F28: out of memory while trying to decode a record of length 12",
                SEG
            ),
            None
        );
    }
}
