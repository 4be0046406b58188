//! Selective material copy between two servers: compare the inventories,
//! move only the segments the target is missing, let the target verify each
//! one's checksum before it lists it. Idempotent (a second run finds nothing
//! missing) and resumable (an interrupted run leaves no listed partial
//! segment; the next run copies what is still missing). Blocking: the CLI
//! calls it directly, the failover controller from a blocking task.
//!
//! A segment of the source is missing at the target when the target has no
//! segment of that name and the target's own material does not cover the
//! segment's time span (a restored server keeps what it recorded itself).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::index::{Entry, coverage, rfc3339};
use crate::config::Secret;

/// Spans shorter than this are not worth a segment (rounding at joins).
const TOLERANCE_MS: i64 = 100;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 16 * 1024;
const MAX_JSON: u64 = 64 << 20;

/// A server's control API and the password it takes.
#[derive(Clone)]
pub struct Endpoint {
    pub name: String,
    pub addr: SocketAddr,
    pub user: String,
    pub password: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{server} ({addr}): {what}: {source}")]
    Io {
        server: String,
        addr: SocketAddr,
        what: String,
        source: io::Error,
    },
    #[error("{server} ({addr}): {what}: HTTP {status}: {body}")]
    Http {
        server: String,
        addr: SocketAddr,
        what: String,
        status: u16,
        body: String,
    },
    #[error("{server}: {what}: {detail}")]
    Bad {
        server: String,
        what: String,
        detail: String,
    },
}

/// What a copy did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    pub copied: usize,
    pub copied_bytes: u64,
    /// Already at the target under the same name.
    pub skipped_present: usize,
    /// The target's own material covers their span.
    pub skipped_covered: usize,
    pub skipped_bytes: u64,
    /// Left for a later run (`max_segments` reached).
    pub remaining: usize,
    /// Segments that could not be copied (gone at the source, a checksum
    /// that did not match, a server error): reported and skipped, the rest
    /// copied; still missing, a later run retries them.
    pub failed: Vec<FailedSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedSegment {
    pub segment: String,
    pub error: String,
}

/// One response: status, headers, and the body still to be read.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: io::Take<BufReader<TcpStream>>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(mut self) -> String {
        let mut s = String::new();
        let _ = (&mut self.body).take(4096).read_to_string(&mut s);
        s.trim().to_string()
    }
}

/// A minimal HTTP/1.1 client for the control API: one request per
/// connection, bodies by Content-Length, Digest with a cached challenge.
struct Client<'a> {
    ep: &'a Endpoint,
    challenge: Option<String>,
    /// Requests answered with the current challenge's nonce (qop's `nc`,
    /// which must grow: the server refuses a count it has seen).
    nc: std::cell::Cell<u32>,
}

impl<'a> Client<'a> {
    fn new(ep: &'a Endpoint) -> Self {
        Client {
            ep,
            challenge: None,
            nc: std::cell::Cell::new(0),
        }
    }

    fn set_challenge(&mut self, c: Option<String>) {
        self.challenge = c;
        self.nc.set(0);
    }

    fn io_err(&self, what: &str, source: io::Error) -> CopyError {
        CopyError::Io {
            server: self.ep.name.clone(),
            addr: self.ep.addr,
            what: what.to_string(),
            source,
        }
    }

    fn http_err(&self, what: &str, r: Response) -> CopyError {
        CopyError::Http {
            server: self.ep.name.clone(),
            addr: self.ep.addr,
            what: what.to_string(),
            status: r.status,
            body: r.text(),
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, String)],
        body: Option<(&mut dyn Read, u64)>,
    ) -> io::Result<Response> {
        let s = TcpStream::connect_timeout(&self.ep.addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.ep.addr
        );
        if let Some(c) = &self.challenge {
            let cnonce = format!("{:016x}", rand::random::<u64>());
            self.nc.set(self.nc.get() + 1);
            if let Some(a) = crate::serve::auth::digest_answer(
                c,
                &self.ep.user,
                self.ep.password.expose(),
                method,
                path,
                &cnonce,
                self.nc.get(),
            ) {
                head.push_str(&format!("Authorization: {a}\r\n"));
            }
        }
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some((_, len)) = &body {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        head.push_str("\r\n");
        let mut w = io::BufWriter::with_capacity(256 * 1024, &s);
        w.write_all(head.as_bytes())?;
        if let Some((r, len)) = body {
            let n = io::copy(&mut r.take(len), &mut w)?;
            if n != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the body ended after {n} of {len} bytes"),
                ));
            }
        }
        w.flush()?;
        drop(w);
        read_response(BufReader::with_capacity(256 * 1024, s))
    }

    /// Sends, answering a Digest challenge once; 401 after that is an error.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, String)],
        mut body: Option<(&mut dyn Read, u64)>,
    ) -> Result<Response, CopyError> {
        let what = format!("{method} {path}");
        // A body can be sent once: get a challenge first with a GET.
        if body.is_some() && self.challenge.is_none() {
            let probe = self
                .send("GET", path, &[], None)
                .map_err(|e| self.io_err(&what, e))?;
            self.set_challenge(probe.header("WWW-Authenticate").map(str::to_string));
        }
        let reborrow = body.as_mut().map(|(r, n)| (&mut **r as &mut dyn Read, *n));
        let r = self
            .send(method, path, extra, reborrow)
            .map_err(|e| self.io_err(&what, e))?;
        if r.status != 401 || body.is_some() {
            return Ok(r);
        }
        let fresh = r.header("WWW-Authenticate").map(str::to_string);
        if fresh.is_none() || fresh == self.challenge {
            return Err(self.http_err(&format!("{what} (check the server password)"), r));
        }
        self.set_challenge(fresh);
        self.send(method, path, extra, None)
            .map_err(|e| self.io_err(&what, e))
    }

    fn inventory(
        &mut self,
        channel: u32,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Entry>, CopyError> {
        let path = format!(
            "/channels/{channel}/material?from={}&to={}",
            rfc3339(from_ms),
            rfc3339(to_ms)
        );
        let r = self.call("GET", &path, &[], None)?;
        if r.status != 200 {
            return Err(self.http_err("material inventory", r));
        }
        let mut body = r.body;
        let mut text = Vec::new();
        (&mut body)
            .take(MAX_JSON)
            .read_to_end(&mut text)
            .map_err(|e| self.io_err("material inventory", e))?;
        let bad = |detail: String| CopyError::Bad {
            server: self.ep.name.clone(),
            what: "material inventory".into(),
            detail,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let segs = v["segments"]
            .as_array()
            .ok_or_else(|| bad("no segments list".into()))?;
        segs.iter()
            .map(|s| {
                let mut s = s.clone();
                s["channel"] = channel.into();
                // The listing adds presentation fields the index lacks.
                if let Some(o) = s.as_object_mut() {
                    for k in ["start", "end", "duration_seconds"] {
                        o.remove(k);
                    }
                }
                serde_json::from_value::<Entry>(s).map_err(|e| bad(format!("bad segment: {e}")))
            })
            .collect()
    }
}

fn read_response(mut r: BufReader<TcpStream>) -> io::Result<Response> {
    let mut head = Vec::new();
    loop {
        let n = r
            .by_ref()
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            break;
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too long",
            ));
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(u64::MAX);
    Ok(Response {
        status,
        headers,
        body: r.take(len),
    })
}

/// Which source segments the target is missing; the rest counted in
/// `report` as skipped.
pub fn plan(
    source: &[Entry],
    target: &[Entry],
    from_ms: i64,
    to_ms: i64,
    report: &mut CopyReport,
) -> Vec<Entry> {
    let (_, gaps) = coverage(target, from_ms, to_ms, TOLERANCE_MS);
    let mut out = Vec::new();
    for s in source {
        if target.iter().any(|t| t.segment == s.segment) {
            report.skipped_present += 1;
            report.skipped_bytes += s.bytes;
            continue;
        }
        let uncovered: i64 = gaps
            .iter()
            .map(|&(a, b)| (b.min(s.end_ms) - a.max(s.start_ms)).max(0))
            .sum();
        if uncovered <= TOLERANCE_MS {
            report.skipped_covered += 1;
            report.skipped_bytes += s.bytes;
            continue;
        }
        out.push(s.clone());
    }
    out
}

/// Copies what `to` is missing of `channel` in `[from_ms, to_ms)` from
/// `from`, at most `max_segments` of them (the rest are left for a later
/// run). `progress` hears of each segment copied.
pub fn copy_missing(
    from: &Endpoint,
    to: &Endpoint,
    channel: u32,
    from_ms: i64,
    to_ms: i64,
    max_segments: Option<usize>,
    mut progress: impl FnMut(&Entry),
) -> Result<CopyReport, CopyError> {
    let mut src = Client::new(from);
    let mut dst = Client::new(to);
    let source = src.inventory(channel, from_ms, to_ms)?;
    let target = dst.inventory(channel, from_ms, to_ms)?;
    let mut report = CopyReport::default();
    let missing = plan(&source, &target, from_ms, to_ms, &mut report);
    let limit = max_segments.unwrap_or(usize::MAX);
    report.remaining = missing.len().saturating_sub(limit);
    for e in missing.into_iter().take(limit) {
        match copy_one(&mut src, &mut dst, channel, &e) {
            Ok(()) => {
                report.copied += 1;
                report.copied_bytes += e.bytes;
                progress(&e);
            }
            // Refused credentials fail every segment alike: stop.
            Err(err @ CopyError::Http { status: 401, .. }) => return Err(err),
            Err(err) => {
                tracing::warn!(channel, segment = %e.segment, error = %err, "segment not copied; skipped, a later run retries it");
                report.failed.push(FailedSegment {
                    segment: e.segment.clone(),
                    error: err.to_string(),
                });
            }
        }
    }
    Ok(report)
}

/// Downloads one segment from `src` and uploads it to `dst`.
fn copy_one(
    src: &mut Client<'_>,
    dst: &mut Client<'_>,
    channel: u32,
    e: &Entry,
) -> Result<(), CopyError> {
    let path = format!("/channels/{channel}/material/{}", e.segment);
    let entry = serde_json::to_string(e).unwrap_or_default();
    // Twice at most: a nonce that went stale during a long copy is answered
    // with 401 and a fresh challenge.
    for attempt in 0..2 {
        let r = src.call("GET", &path, &[], None)?;
        if r.status != 200 {
            return Err(src.http_err("segment download", r));
        }
        let mut body = r.body;
        let put = dst.call(
            "PUT",
            &path,
            &[("X-Mcrelay-Entry", entry.clone())],
            Some((&mut body, e.bytes)),
        )?;
        match put.status {
            200 | 201 => return Ok(()),
            401 if attempt == 0 => {
                dst.set_challenge(put.header("WWW-Authenticate").map(str::to_string));
            }
            _ => return Err(dst.http_err(&format!("upload of {}", e.segment), put)),
        }
    }
    Err(CopyError::Bad {
        server: dst.ep.name.clone(),
        what: format!("upload of {}", e.segment),
        detail: "refused twice for authentication".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::index::{SegmentName, checksum_string};

    fn e(start: i64, end: i64, rec: &str) -> Entry {
        Entry {
            channel: 1,
            segment: SegmentName::new(start, rec).to_string(),
            start_ms: start,
            end_ms: end,
            bytes: 10,
            checksum: checksum_string(1),
            recorder: rec.into(),
        }
    }

    #[test]
    fn only_segments_over_the_targets_gaps_are_copied() {
        // The restored server recorded 0-60 s and 180-240 s itself; the
        // failover server covered 30-240 s.
        let target = [e(0, 60_000, "rec-1"), e(180_000, 240_000, "rec-1")];
        let source = [
            e(30_000, 90_000, "fo"),
            e(90_000, 150_000, "fo"),
            e(150_000, 210_000, "fo"),
            e(210_000, 240_000, "fo"),
        ];
        let mut r = CopyReport::default();
        let copy = plan(&source, &target, 0, 240_000, &mut r);
        let names: Vec<i64> = copy.iter().map(|c| c.start_ms).collect();
        assert_eq!(names, vec![30_000, 90_000, 150_000]);
        assert_eq!(r.skipped_covered, 1);
        // After the copy the target has them: nothing left.
        let mut after = target.to_vec();
        after.extend(copy);
        let mut r2 = CopyReport::default();
        assert!(plan(&source, &after, 0, 240_000, &mut r2).is_empty());
        assert_eq!(r2.skipped_present, 3);
    }
}
