//! The material index: which complete segments a disk holds. Sans-IO: the
//! names of segments, the index's line format and its replay.
//!
//! Each disk keeps its own index (`mcrelay/index.jsonl`), so the material
//! and its index fail together. The file is append-only: one JSON object per
//! line, `{"add": ENTRY}` when a segment is complete on disk (written, synced
//! and renamed before the line is appended), `{"remove": {...}}` when
//! retention deletes it. Replaying the lines gives the inventory; a torn last
//! line (a crash during the append) is ignored, a bad line elsewhere is
//! reported and skipped, so one damaged line never hides the rest.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Segment file extension.
pub const EXTENSION: &str = "ts";

/// A segment's name: `{start_ms}-{recorder}.ts`, the start in milliseconds
/// since the Unix epoch and the server that recorded it. Two servers that
/// recorded the same channel at once (a failover and the restored server)
/// thus never collide.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub start_ms: i64,
    pub recorder: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name:?} is not a segment name ({why}); segments are named START_MS-SERVER.ts")]
pub struct NameError {
    pub name: String,
    pub why: &'static str,
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
/// Every time in an index, a segment name or a request lies in
/// `0..=MAX_TIME_MS`, so formatting one can never fail.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// The longest span one entry may claim. Segments are at most an hour
/// (`storage.segment`) plus one GOP; a day leaves room for any camera and
/// still refuses an entry that would claim years of material.
pub const MAX_SEGMENT_MS: i64 = 24 * 3600 * 1000;

impl SegmentName {
    pub fn new(start_ms: i64, recorder: &str) -> Self {
        SegmentName {
            start_ms,
            recorder: recorder.to_string(),
        }
    }

    /// Parses a name from a URL or a directory listing. Only names this
    /// module makes pass: digits, a dash, a server name (the grammar of
    /// [`crate::config::check_server_name`], the same one the site
    /// validator applies), `.ts`. Nothing that parses can climb out of a
    /// directory.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let err = |why| NameError {
            name: name.chars().take(100).collect(),
            why,
        };
        let stem = name
            .strip_suffix(".ts")
            .ok_or_else(|| err("it does not end in .ts"))?;
        let (start, recorder) = stem
            .split_once('-')
            .ok_or_else(|| err("no dash after the start time"))?;
        if start.is_empty() || start.len() > 15 || !start.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("the start time is not 1-15 digits"));
        }
        if start.len() > 1 && start.starts_with('0') {
            return Err(err("the start time has a leading zero"));
        }
        let start_ms: i64 = start
            .parse()
            .map_err(|_| err("the start time is out of range"))?;
        if start_ms > MAX_TIME_MS {
            return Err(err("the start time is after the year 9999"));
        }
        crate::config::check_server_name(recorder).map_err(err)?;
        Ok(SegmentName {
            start_ms,
            recorder: recorder.to_string(),
        })
    }
}

/// A time in ms since the Unix epoch as RFC 3339 with milliseconds. Never
/// fails: times outside `0..=MAX_TIME_MS` (which validation keeps out of
/// every index and request) are clamped to that range.
pub fn rfc3339(ms: i64) -> String {
    let ms = ms.clamp(0, MAX_TIME_MS) as u64;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses an RFC 3339 time (`2026-11-25T10:00:00Z`, fractions allowed) into
/// ms since the Unix epoch; times before 1970 are refused.
pub fn parse_rfc3339(v: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(v)
        .map_err(|e| format!("{v:?} is not an RFC 3339 time ({e}), e.g. 2026-11-25T10:00:00Z"))?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{v:?} is before 1970"))?;
    i64::try_from(d.as_millis())
        .ok()
        .filter(|ms| *ms <= MAX_TIME_MS)
        .ok_or_else(|| format!("{v:?} is after the year 9999"))
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}.{EXTENSION}", self.start_ms, self.recorder)
    }
}

/// One complete segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub channel: u32,
    /// The file name (a [`SegmentName`]).
    pub segment: String,
    /// First frame's presentation time, ms since the Unix epoch.
    pub start_ms: i64,
    /// Last frame's presentation time plus one frame interval.
    pub end_ms: i64,
    pub bytes: u64,
    /// `xxh3:` and 16 hex digits, of the whole file.
    pub checksum: String,
    /// The server that recorded it.
    pub recorder: String,
}

impl Entry {
    pub fn duration_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }
}

/// One line of the index file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Line {
    Add(Entry),
    Remove { channel: u32, segment: String },
}

impl Line {
    /// The line as written, with its newline.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// A problem found replaying an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub what: String,
}

/// The segments of one disk by (channel, segment name).
pub type Inventory = BTreeMap<(u32, String), Entry>;

/// What [`replay`] found.
#[derive(Debug, Default)]
pub struct Replayed {
    pub entries: Inventory,
    pub problems: Vec<Problem>,
    /// Bytes of the file that hold whole lines; anything after is a torn
    /// append to cut off.
    pub valid_len: usize,
    /// Lines replayed (adds and removes); much more than the entries means
    /// the file is worth compacting.
    pub lines: usize,
}

/// Replays an index file's contents.
pub fn replay(data: &[u8]) -> Replayed {
    let mut r = Replayed::default();
    let mut pos = 0;
    let mut line_no = 0;
    while pos < data.len() {
        line_no += 1;
        let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') else {
            // No newline: the last append was cut short.
            r.problems.push(Problem {
                line: line_no,
                what: format!(
                    "{} bytes without a newline at the end (an append cut short); ignored",
                    data.len() - pos
                ),
            });
            break;
        };
        let text = &data[pos..pos + nl];
        pos += nl + 1;
        r.valid_len = pos;
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (parsed, skipped) = parse_line(text);
        if skipped > 0 {
            r.problems.push(Problem {
                line: line_no,
                what: format!(
                    "{skipped} bytes of a cut-short append before this line's entry; skipped"
                ),
            });
        }
        match parsed {
            Ok(Line::Add(e)) => match check(&e) {
                Ok(()) => {
                    r.lines += 1;
                    r.entries.insert((e.channel, e.segment.clone()), e);
                }
                Err(what) => r.problems.push(Problem {
                    line: line_no,
                    what,
                }),
            },
            Ok(Line::Remove { channel, segment }) => {
                r.lines += 1;
                r.entries.remove(&(channel, segment));
            }
            Err(e) => r.problems.push(Problem {
                line: line_no,
                what: format!("not an index line ({e}); skipped"),
            }),
        }
    }
    r
}

/// Parses one line. An append that failed half-way leaves a fragment with
/// no newline, and the next append continues on the same line: when the
/// whole line is not a line, the last place where one starts is tried, so
/// the entry behind the fragment is kept. Returns the line and the bytes
/// skipped before it.
fn parse_line(text: &[u8]) -> (Result<Line, serde_json::Error>, usize) {
    let whole = serde_json::from_slice::<Line>(text);
    if whole.is_ok() {
        return (whole, 0);
    }
    for pat in [&b"{\"add\":"[..], &b"{\"remove\":"[..]] {
        if let Some(at) = memchr::memmem::rfind(text, pat).filter(|&at| at > 0)
            && let Ok(l) = serde_json::from_slice::<Line>(&text[at..])
        {
            return (Ok(l), at);
        }
    }
    (whole, 0)
}

/// An entry must name its segment properly and make sense: its name, start
/// and recorder agree, its times are in `0..=MAX_TIME_MS` and in order, and
/// it claims at most [`MAX_SEGMENT_MS`].
pub fn check(e: &Entry) -> Result<(), String> {
    let name = SegmentName::parse(&e.segment).map_err(|err| err.to_string())?;
    if name.recorder != e.recorder || name.start_ms != e.start_ms {
        return Err(format!(
            "segment {:?} does not match its start {} and recorder {:?}",
            e.segment, e.start_ms, e.recorder
        ));
    }
    if e.end_ms < e.start_ms {
        return Err(format!("segment {:?} ends before it starts", e.segment));
    }
    if e.end_ms > MAX_TIME_MS {
        return Err(format!("segment {:?} ends after the year 9999", e.segment));
    }
    if e.end_ms - e.start_ms > MAX_SEGMENT_MS {
        return Err(format!(
            "segment {:?} claims {} s, more than a segment can hold",
            e.segment,
            (e.end_ms - e.start_ms) / 1000
        ));
    }
    if !e.checksum.starts_with("xxh3:") {
        return Err(format!("segment {:?} has no xxh3 checksum", e.segment));
    }
    Ok(())
}

/// `xxh3:` and the hash in hex.
pub fn checksum_string(hash: u64) -> String {
    format!("xxh3:{hash:016x}")
}

/// The material of one channel in `[from, to)`: its segments, and the spans
/// no segment covers (gaps shorter than `tolerance_ms` are not gaps: one
/// segment ends where the next begins, give or take rounding).
pub fn coverage<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    from_ms: i64,
    to_ms: i64,
    tolerance_ms: i64,
) -> (Vec<&'a Entry>, Vec<(i64, i64)>) {
    let mut segs: Vec<&Entry> = entries
        .into_iter()
        .filter(|e| e.end_ms > from_ms && e.start_ms < to_ms)
        .collect();
    segs.sort_by(|a, b| (a.start_ms, &a.segment).cmp(&(b.start_ms, &b.segment)));
    let mut gaps = Vec::new();
    let mut covered = from_ms;
    for e in &segs {
        if e.start_ms - covered > tolerance_ms {
            gaps.push((covered, e.start_ms));
        }
        covered = covered.max(e.end_ms);
    }
    if to_ms - covered > tolerance_ms {
        gaps.push((covered, to_ms));
    }
    (segs, gaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(channel: u32, start: i64, end: i64) -> Entry {
        Entry {
            channel,
            segment: SegmentName::new(start, "rec-1").to_string(),
            start_ms: start,
            end_ms: end,
            bytes: 100,
            checksum: checksum_string(7),
            recorder: "rec-1".into(),
        }
    }

    #[test]
    fn names_round_trip_and_reject_traversal() {
        let n = SegmentName::new(1_764_067_200_123, "recorder-1");
        assert_eq!(n.to_string(), "1764067200123-recorder-1.ts");
        assert_eq!(SegmentName::parse(&n.to_string()), Ok(n));
        for bad in [
            "../1-a.ts",
            "1-../../etc/passwd.ts",
            "1-a/b.ts",
            "1-.hidden.ts",
            "1-a.ts.part",
            "01-a.ts",
            "-a.ts",
            "1-.ts",
            "1-a b.ts",
            "1234567890123456-a.ts",
            "1-a%2f.ts",
            "",
        ] {
            assert!(SegmentName::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn segment_names_take_exactly_the_server_names_the_site_takes() {
        for name in ["rec-1", "a", "R.2_x", "9", &"x".repeat(64)] {
            assert!(crate::config::check_server_name(name).is_ok(), "{name}");
            let seg = SegmentName::new(1, name).to_string();
            assert!(SegmentName::parse(&seg).is_ok(), "{seg}");
        }
        for name in [
            "",
            "_rec1",
            ".rec",
            "-a",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(65),
        ] {
            assert!(crate::config::check_server_name(name).is_err(), "{name:?}");
            let seg = SegmentName::new(1, name).to_string();
            assert!(SegmentName::parse(&seg).is_err(), "{seg}");
        }
    }

    #[test]
    fn times_past_the_year_9999_are_refused_and_never_break_formatting() {
        let mut e = entry(1, 1_000, 2_000);
        e.end_ms = i64::MAX;
        assert!(check(&e).is_err());
        let r = replay(Line::Add(e).to_line().as_bytes());
        assert!(r.entries.is_empty());
        assert!(SegmentName::parse("999999999999999-rec-1.ts").is_err());
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59.999Z"), Ok(MAX_TIME_MS));
        assert!(parse_rfc3339("1969-12-31T23:59:59Z").is_err());
        // An entry that claims more than a segment can hold.
        assert!(check(&entry(1, 0, MAX_SEGMENT_MS + 1)).is_err());
    }

    #[test]
    fn replay_applies_adds_and_removes_and_skips_damage() {
        let mut text = String::new();
        text.push_str(&Line::Add(entry(1, 0, 60_000)).to_line());
        text.push_str(&Line::Add(entry(1, 60_000, 120_000)).to_line());
        text.push_str("{not json}\n");
        text.push_str(&Line::Add(entry(2, 0, 60_000)).to_line());
        text.push_str(
            &Line::Remove {
                channel: 1,
                segment: entry(1, 0, 0).segment,
            }
            .to_line(),
        );
        let whole = text.len();
        text.push_str("{\"add\":{\"chan"); // torn append
        let r = replay(text.as_bytes());
        let keys: Vec<_> = r.entries.keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                (1, "60000-rec-1.ts".to_string()),
                (2, "0-rec-1.ts".to_string())
            ]
        );
        assert_eq!(r.valid_len, whole);
        assert_eq!(r.problems.len(), 2);
        assert_eq!(r.problems[0].line, 3);
    }

    #[test]
    fn an_entry_whose_name_disagrees_is_refused() {
        let mut e = entry(1, 0, 10);
        e.start_ms = 5;
        let r = replay(Line::Add(e).to_line().as_bytes());
        assert!(r.entries.is_empty());
        assert_eq!(r.problems.len(), 1);
    }

    #[test]
    fn coverage_finds_gaps() {
        let es = [
            entry(1, 0, 60_000),
            entry(1, 60_020, 120_000),
            entry(1, 180_000, 240_000),
        ];
        let (segs, gaps) = coverage(&es, 30_000, 300_000, 100);
        assert_eq!(segs.len(), 3);
        assert_eq!(gaps, vec![(120_000, 180_000), (240_000, 300_000)]);
        let (segs, gaps) = coverage(&es, 130_000, 170_000, 100);
        assert!(segs.is_empty());
        assert_eq!(gaps, vec![(130_000, 170_000)]);
    }
}
