//! Selective material copy between two servers: compare the inventories,
//! move only the segments the target is missing, let the target verify each
//! one's checksum before it lists it. Idempotent (a second run finds nothing
//! missing) and resumable (an interrupted run leaves no listed partial
//! segment; the next run copies what is still missing). On the server's
//! HTTP client ([`crate::runtime::client`]): a segment streams from the
//! source's answer into the upload to the target, checked on its way (size
//! and checksum against the source's inventory), never held whole.
//!
//! A segment of the source is missing at the target when the target has no
//! segment of that name and the target's own material does not cover the
//! segment's time span (a restored server keeps what it recorded itself).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response};
use xxhash_rust::xxh3::Xxh3;

use super::index::{Entry, checksum_string, coverage, rfc3339};
use crate::config::Secret;
use crate::runtime::client::{self, BoxError, ClientError, DigestSession, HttpClient};

/// Spans shorter than this are not worth a segment (rounding at joins).
const TOLERANCE_MS: i64 = 100;
/// Every answer comes within this of its request (of an upload's last
/// byte), and a segment's transfer never stands still this long.
const IO_TIMEOUT: Duration = Duration::from_secs(if cfg!(test) { 2 } else { 30 });
/// The largest inventory read (a day of one-minute segments is ~400 KB).
const MAX_JSON: usize = 64 << 20;
/// The part of an error answer's text kept in the error.
const MAX_ERROR_TEXT: usize = 4096;

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
    Request {
        server: String,
        addr: SocketAddr,
        what: String,
        source: ClientError,
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

/// One server of a copy: its endpoint and its Digest session (the
/// challenge answered again for each request).
struct Peer<'a> {
    ep: &'a Endpoint,
    client: &'a HttpClient,
    digest: DigestSession,
}

impl<'a> Peer<'a> {
    fn new(client: &'a HttpClient, ep: &'a Endpoint) -> Self {
        Peer {
            ep,
            client,
            digest: DigestSession::new(ep.user.clone(), ep.password.clone()),
        }
    }

    fn bad(&self, what: &str, detail: String) -> CopyError {
        CopyError::Bad {
            server: self.ep.name.clone(),
            what: what.to_string(),
            detail,
        }
    }

    fn request_err(&self, what: &str, source: ClientError) -> CopyError {
        CopyError::Request {
            server: self.ep.name.clone(),
            addr: self.ep.addr,
            what: what.to_string(),
            source,
        }
    }

    /// An answer that is not the one expected, with the start of its text.
    async fn http_err(&self, what: &str, r: Response<Incoming>) -> CopyError {
        let status = r.status().as_u16();
        let body = client::read_body(r.into_body(), client::MAX_ANSWER, IO_TIMEOUT)
            .await
            .map(|b| {
                let text = String::from_utf8_lossy(&b);
                text.trim().chars().take(MAX_ERROR_TEXT).collect()
            })
            .unwrap_or_default();
        let what = if status == 401 {
            format!("{what} (check the server password)")
        } else {
            what.to_string()
        };
        CopyError::Http {
            server: self.ep.name.clone(),
            addr: self.ep.addr,
            what,
            status,
            body,
        }
    }

    async fn send(
        &self,
        what: &str,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<client::RequestBody>,
    ) -> Result<Response<Incoming>, CopyError> {
        self.client
            .send(
                self.ep.addr,
                method,
                path,
                headers,
                body,
                Some(&self.digest),
                IO_TIMEOUT,
            )
            .await
            .map_err(|e| self.request_err(what, e))
    }

    async fn inventory(
        &self,
        channel: u32,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Entry>, CopyError> {
        const WHAT: &str = "material inventory";
        let path = format!(
            "/channels/{channel}/material?from={}&to={}",
            rfc3339(from_ms),
            rfc3339(to_ms)
        );
        let r = self
            .send(WHAT, Method::GET, &path, HeaderMap::new(), None)
            .await?;
        if r.status() != 200 {
            return Err(self.http_err(WHAT, r).await);
        }
        let text = client::read_body(r.into_body(), MAX_JSON, IO_TIMEOUT)
            .await
            .map_err(|e| self.request_err(WHAT, e))?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| self.bad(WHAT, format!("not JSON: {e}")))?;
        let segs = v["segments"]
            .as_array()
            .ok_or_else(|| self.bad(WHAT, "no segments list".into()))?;
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
                serde_json::from_value::<Entry>(s)
                    .map_err(|e| self.bad(WHAT, format!("bad segment: {e}")))
            })
            .collect()
    }
}

/// A segment on its way from the source's answer to the target's upload,
/// checked as it passes against the source's inventory: no more bytes than
/// it lists, and its checksum over all of them before the last chunk is let
/// through. A segment that fails is cut short, so the target never receives
/// the whole of one that does not match (and checks it too).
struct Verified {
    inner: Incoming,
    bytes: u64,
    checksum: String,
    seen: u64,
    hash: Xxh3,
    failed: bool,
    passage: Arc<Mutex<Passage>>,
}

/// What the copy learns of a segment's passage.
#[derive(Default)]
struct Passage {
    /// Why it was cut short.
    failed: Option<String>,
    /// Waiting for the source (not for the target to take more).
    waiting_for_source: bool,
}

impl Verified {
    fn new(inner: Incoming, e: &Entry, passage: Arc<Mutex<Passage>>) -> Self {
        Verified {
            inner,
            bytes: e.bytes,
            checksum: e.checksum.clone(),
            seen: 0,
            hash: Xxh3::new(),
            failed: false,
            passage,
        }
    }

    fn passage(&self) -> std::sync::MutexGuard<'_, Passage> {
        self.passage.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        self.passage().failed = Some(why.clone());
        Poll::Ready(Some(Err(why.into())))
    }
}

impl Body for Verified {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(Some(Err("the segment failed its check".into())));
        }
        loop {
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            this.passage().waiting_for_source = polled.is_pending();
            let frame = match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) if this.seen == this.bytes => return Poll::Ready(None),
                Poll::Ready(None) => {
                    let why = format!(
                        "the download ended after {} of its {} bytes",
                        this.seen, this.bytes
                    );
                    return this.fail(why);
                }
                Poll::Ready(Some(Err(e))) => {
                    let why = format!(
                        "the download broke off after {} of its {} bytes: {}",
                        this.seen,
                        this.bytes,
                        client::chain(&e)
                    );
                    return this.fail(why);
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            // Trailers are not part of the segment.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            this.seen += data.len() as u64;
            if this.seen > this.bytes {
                let why = format!("more than the {} bytes the inventory lists", this.bytes);
                return this.fail(why);
            }
            this.hash.update(&data);
            if this.seen == this.bytes {
                let sum = checksum_string(this.hash.digest());
                if sum != this.checksum {
                    let why = format!(
                        "checksum {sum} does not match the inventory's {}",
                        this.checksum
                    );
                    return this.fail(why);
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && self.seen == self.bytes
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.bytes.saturating_sub(self.seen))
    }
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
/// run), with `client`. `progress` hears of each segment copied.
#[allow(clippy::too_many_arguments)]
pub async fn copy_missing(
    client: &HttpClient,
    from: &Endpoint,
    to: &Endpoint,
    channel: u32,
    from_ms: i64,
    to_ms: i64,
    max_segments: Option<usize>,
    mut progress: impl FnMut(&Entry),
) -> Result<CopyReport, CopyError> {
    let src = Peer::new(client, from);
    let dst = Peer::new(client, to);
    let source = src.inventory(channel, from_ms, to_ms).await?;
    let target = dst.inventory(channel, from_ms, to_ms).await?;
    let mut report = CopyReport::default();
    let missing = plan(&source, &target, from_ms, to_ms, &mut report);
    let limit = max_segments.unwrap_or(usize::MAX);
    report.remaining = missing.len().saturating_sub(limit);
    for e in missing.into_iter().take(limit) {
        match copy_one(&src, &dst, channel, &e).await {
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

/// Streams one segment from `src` into an upload to `dst`.
async fn copy_one(
    src: &Peer<'_>,
    dst: &Peer<'_>,
    channel: u32,
    e: &Entry,
) -> Result<(), CopyError> {
    let path = format!("/channels/{channel}/material/{}", e.segment);
    let download = format!("download of {}", e.segment);
    let upload = format!("upload of {}", e.segment);
    let entry = serde_json::to_string(e).unwrap_or_default();
    let entry = HeaderValue::from_bytes(entry.as_bytes())
        .map_err(|err| dst.bad(&upload, format!("its entry cannot be a header: {err}")))?;
    // Twice at most: a nonce that went stale during a long copy is answered
    // with 401 and a fresh challenge.
    for attempt in 0..2 {
        let r = src
            .send(&download, Method::GET, &path, HeaderMap::new(), None)
            .await?;
        if r.status() != 200 {
            return Err(src.http_err(&download, r).await);
        }
        let offered = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(len) = offered("content-length").and_then(|v| v.parse::<u64>().ok())
            && len != e.bytes
        {
            let why = format!("{len} bytes offered, the inventory lists {}", e.bytes);
            return Err(src.bad(&download, why));
        }
        if let Some(sum) = offered("x-mcrelay-checksum")
            && sum != e.checksum
        {
            let why = format!("checksum {sum} offered, the inventory lists {}", e.checksum);
            return Err(src.bad(&download, why));
        }
        let passage = Arc::new(Mutex::new(Passage::default()));
        let body = Verified::new(r.into_body(), e, passage.clone());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(e.bytes));
        headers.insert(HeaderName::from_static("x-mcrelay-entry"), entry.clone());
        let put = dst
            .send(
                &upload,
                Method::PUT,
                &path,
                headers,
                Some(UnsyncBoxBody::new(body)),
            )
            .await;
        let passage = std::mem::take(&mut *passage.lock().unwrap_or_else(|e| e.into_inner()));
        // What the check found comes first: the target saw the upload
        // break off, and says only that.
        if let Some(why) = passage.failed {
            return Err(src.bad(&download, format!("{why}; not uploaded")));
        }
        let put = match put {
            // The transfer stood still: name the side it waited for.
            Err(CopyError::Request {
                source: stalled @ ClientError::Stalled(_),
                ..
            }) if passage.waiting_for_source => return Err(src.request_err(&download, stalled)),
            put => put?,
        };
        match put.status().as_u16() {
            200 | 201 => {
                client::drain(put, IO_TIMEOUT).await;
                return Ok(());
            }
            401 if attempt == 0 && client::stale(put.headers()) => {
                client::drain(put, IO_TIMEOUT).await;
            }
            _ => return Err(dst.http_err(&upload, put).await),
        }
    }
    Err(dst.bad(&upload, "refused twice for authentication".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::index::SegmentName;
    use crate::serve::auth::{Attempt, Authenticator, Verdict};
    use axum::extract::{Request, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    use hyper::header::{AUTHORIZATION, WWW_AUTHENTICATE};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
    use std::time::{SystemTime, UNIX_EPOCH};

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

    /// The material routes of a control API as a copy uses them, with the
    /// server password (Digest, qop, as the real one). It lists and serves
    /// `listed`, each with the bytes it serves (which may not be the ones
    /// its entry describes), and takes any upload that arrives whole into
    /// `stored` without checking it: what the copy itself lets through is
    /// what is tested.
    struct Fake {
        name: &'static str,
        password: &'static str,
        auth: Authenticator,
        /// Seconds the server's clock is ahead (its nonces go stale).
        ahead: AtomicU64,
        listed: Mutex<Vec<(Entry, Vec<u8>)>>,
        stored: Mutex<Vec<(Entry, Vec<u8>)>>,
        /// 401s answered.
        challenges: AtomicUsize,
        /// Serves half a segment, then nothing; takes no upload and never
        /// answers one.
        stall: std::sync::atomic::AtomicBool,
    }

    impl Fake {
        async fn start(name: &'static str, password: &'static str) -> (Arc<Fake>, Endpoint) {
            let fake = Arc::new(Fake {
                name,
                password,
                auth: Authenticator::new(
                    "admin".into(),
                    Secret::new(password.into()),
                    false,
                    rand::random(),
                )
                .with_qop(),
                ahead: AtomicU64::new(0),
                listed: Mutex::default(),
                stored: Mutex::default(),
                challenges: AtomicUsize::new(0),
                stall: Default::default(),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = axum::Router::new()
                .fallback(handle)
                .with_state(fake.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            let ep = fake.endpoint(addr, password);
            (fake, ep)
        }

        fn endpoint(&self, addr: SocketAddr, password: &str) -> Endpoint {
            Endpoint {
                name: self.name.into(),
                addr,
                user: "admin".into(),
                password: Secret::new(password.into()),
            }
        }

        fn stored(&self) -> Vec<(Entry, Vec<u8>)> {
            self.stored.lock().unwrap().clone()
        }
    }

    async fn handle(State(f): State<Arc<Fake>>, req: Request) -> axum::response::Response {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + f.ahead.load(Relaxed);
        let peer = std::net::IpAddr::from([127, 0, 0, 1]);
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let attempt = Attempt {
            method: method.as_str(),
            uri: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
            authorization,
            peer,
            binding: 0,
        };
        match f.auth.check(&attempt, now) {
            Verdict::Allowed => {}
            Verdict::Denied { stale } => {
                f.challenges.fetch_add(1, Relaxed);
                let mut r =
                    (StatusCode::UNAUTHORIZED, "the server password is needed\n").into_response();
                for c in f.auth.challenges(now, stale, peer, 0) {
                    r.headers_mut().append(WWW_AUTHENTICATE, c.parse().unwrap());
                }
                return r;
            }
            Verdict::Throttled { .. } => return StatusCode::TOO_MANY_REQUESTS.into_response(),
        }
        if uri.path() == "/channels/1/material" {
            let listed = f.listed.lock().unwrap().clone();
            let segments: Vec<_> = listed
                .iter()
                .chain(f.stored.lock().unwrap().iter())
                .map(|(e, _)| {
                    let mut v = serde_json::to_value(e).unwrap();
                    v["start"] = rfc3339(e.start_ms).into();
                    v
                })
                .collect();
            return serde_json::json!({ "segments": segments })
                .to_string()
                .into_response();
        }
        let Some(name) = uri.path().strip_prefix("/channels/1/material/") else {
            return StatusCode::NOT_FOUND.into_response();
        };
        if method == Method::PUT && f.stall.load(Relaxed) {
            return std::future::pending().await;
        }
        if method == Method::PUT {
            let entry: Entry =
                serde_json::from_str(req.headers()["x-mcrelay-entry"].to_str().unwrap()).unwrap();
            return match axum::body::to_bytes(req.into_body(), usize::MAX).await {
                Ok(b) if b.len() as u64 == entry.bytes => {
                    f.stored.lock().unwrap().push((entry, b.to_vec()));
                    (StatusCode::CREATED, "stored\n").into_response()
                }
                _ => (StatusCode::BAD_REQUEST, "upload broke off\n").into_response(),
            };
        }
        let found = f
            .listed
            .lock()
            .unwrap()
            .iter()
            .find(|(e, _)| e.segment == name)
            .cloned();
        match found {
            Some((_, bytes)) if f.stall.load(Relaxed) => {
                let len = bytes.len();
                let half = Bytes::from(bytes).slice(..len / 2);
                let body = futures::StreamExt::chain(
                    futures::stream::iter([Ok::<_, std::io::Error>(half)]),
                    futures::stream::pending(),
                );
                (
                    [(CONTENT_LENGTH, len.to_string())],
                    axum::body::Body::from_stream(body),
                )
                    .into_response()
            }
            Some((e, bytes)) => {
                ([("x-mcrelay-checksum", e.checksum.clone())], bytes).into_response()
            }
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }

    /// A segment of `len` random bytes starting at `start` s, and its bytes.
    fn segment(start: i64, len: usize) -> (Entry, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        let mut h = Xxh3::new();
        h.update(&bytes);
        let start = 1_800_000_000_000 + start * 1000;
        let entry = Entry {
            channel: 1,
            segment: SegmentName::new(start, "fo").to_string(),
            start_ms: start,
            end_ms: start + 60_000,
            bytes: len as u64,
            checksum: checksum_string(h.digest()),
            recorder: "fo".into(),
        };
        (entry, bytes)
    }

    const FROM: i64 = 1_800_000_000_000;
    const TO: i64 = FROM + 3_600_000;

    #[tokio::test]
    async fn copies_what_is_missing_answering_each_challenge_once() {
        let (src, from) = Fake::start("failover-1", "one").await;
        let (dst, to) = Fake::start("recorder-1", "two").await;
        let segs = vec![segment(0, 300_000), segment(60, 1_500_000), segment(120, 1)];
        *src.listed.lock().unwrap() = segs.clone();
        let client = HttpClient::new();
        let mut heard = Vec::new();
        let r = copy_missing(&client, &from, &to, 1, FROM, TO, None, |e| {
            heard.push(e.segment.clone())
        })
        .await
        .unwrap();
        assert_eq!(
            (r.copied, r.copied_bytes, r.failed.len()),
            (3, 1_800_001, 0),
            "{r:?}"
        );
        assert_eq!(dst.stored(), segs);
        assert_eq!(heard.len(), 3);
        // One challenge each: every later request answered the first.
        assert_eq!(src.challenges.load(Relaxed), 1);
        assert_eq!(dst.challenges.load(Relaxed), 1);
        // Again: nothing to do.
        let r = copy_missing(&client, &from, &to, 1, FROM, TO, None, |_| {})
            .await
            .unwrap();
        assert_eq!((r.copied, r.skipped_present), (0, 3), "{r:?}");
        // At most one, the rest left.
        *src.listed.lock().unwrap() = vec![segment(180, 10), segment(240, 10)];
        let r = copy_missing(&client, &from, &to, 1, FROM, TO, Some(1), |_| {})
            .await
            .unwrap();
        assert_eq!((r.copied, r.remaining), (1, 1), "{r:?}");
    }

    #[tokio::test]
    async fn a_segment_that_does_not_match_the_inventory_is_not_copied() {
        let (src, from) = Fake::start("failover-1", "one").await;
        let (dst, to) = Fake::start("recorder-1", "two").await;
        let good = segment(0, 200_000);
        // Damaged at the source after it was indexed: the bytes no longer
        // match the checksum listed (and offered).
        let mut damaged = segment(60, 200_000);
        damaged.1[150_000] ^= 0xff;
        // The last byte alone differs: the check must come before it goes.
        let mut last = segment(120, 200_000);
        last.1[199_999] ^= 1;
        // Served longer or shorter than listed.
        let mut longer = segment(180, 1000);
        longer.1.push(0);
        let mut shorter = segment(240, 1000);
        shorter.1.pop();
        // Listed with another checksum than its bytes have.
        let mut wrong_sum = segment(300, 1000);
        wrong_sum.0.checksum = checksum_string(7);
        *src.listed.lock().unwrap() = vec![
            good.clone(),
            damaged.clone(),
            last.clone(),
            longer.clone(),
            shorter.clone(),
            wrong_sum.clone(),
        ];
        let client = HttpClient::new();
        let r = copy_missing(&client, &from, &to, 1, FROM, TO, None, |_| {})
            .await
            .unwrap();
        assert_eq!((r.copied, r.copied_bytes), (1, 200_000), "{r:?}");
        assert_eq!(
            dst.stored(),
            vec![good],
            "only the good segment arrived whole"
        );
        let failed: Vec<&str> = r.failed.iter().map(|f| f.segment.as_str()).collect();
        let bad = [&damaged, &last, &longer, &shorter, &wrong_sum];
        assert_eq!(failed, bad.map(|s| s.0.segment.as_str()));
        for f in &r.failed[..2] {
            assert!(
                f.error.starts_with("failover-1: download of ")
                    && f.error.contains(&f.segment)
                    && f.error.contains("does not match the inventory's"),
                "{f:?}"
            );
        }
        assert!(
            r.failed[2].error.contains("1001 bytes offered"),
            "{:?}",
            r.failed[2]
        );
        assert!(
            r.failed[3].error.contains("999 bytes offered"),
            "{:?}",
            r.failed[3]
        );
        assert!(r.failed[4].error.contains("checksum"), "{:?}", r.failed[4]);
        // The source heals: the next run copies what is still missing.
        *src.listed.lock().unwrap() = vec![segment(60, 10), segment(120, 10)];
        let r = copy_missing(&client, &from, &to, 1, FROM, TO, None, |_| {})
            .await
            .unwrap();
        assert_eq!(r.copied, 2, "{r:?}");
    }

    #[tokio::test]
    async fn a_wrong_password_stops_the_copy_and_is_never_in_the_error() {
        let (src, from) = Fake::start("failover-1", "one").await;
        let (dst, to) = Fake::start("recorder-1", "two").await;
        *src.listed.lock().unwrap() = vec![segment(0, 10)];
        let to = dst.endpoint(to.addr, "not-the-password-42");
        let err = copy_missing(&HttpClient::new(), &from, &to, 1, FROM, TO, None, |_| {})
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, CopyError::Http { status: 401, .. }),
            "{err:?}"
        );
        assert!(
            text.starts_with("recorder-1 (") && text.contains("check the server password"),
            "{text}"
        );
        for secret in ["not-the-password-42", src.password, dst.password] {
            assert!(!text.contains(secret) && !format!("{err:?}").contains(secret));
        }
        // Asked without credentials, then once with them: one failure
        // counted against the address, not two.
        assert_eq!(dst.challenges.load(Relaxed), 2);
        assert!(dst.stored().is_empty());
    }

    #[tokio::test]
    async fn a_nonce_gone_stale_mid_copy_is_renewed() {
        let (src, from) = Fake::start("failover-1", "one").await;
        let (dst, to) = Fake::start("recorder-1", "two").await;
        let segs = vec![segment(0, 2000), segment(60, 2000), segment(120, 2000)];
        *src.listed.lock().unwrap() = segs.clone();
        let (s, d) = (src.clone(), dst.clone());
        let r = copy_missing(&HttpClient::new(), &from, &to, 1, FROM, TO, None, |_| {
            // Both servers' nonces expire after the first segment.
            s.ahead.store(700, Relaxed);
            d.ahead.store(700, Relaxed);
        })
        .await
        .unwrap();
        assert_eq!((r.copied, r.failed.len()), (3, 0), "{r:?}");
        assert_eq!(dst.stored(), segs);
        // The first request's challenge, and a stale one each.
        assert_eq!(src.challenges.load(Relaxed), 2);
        assert_eq!(dst.challenges.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_in_the_error() {
        let (_src, from) = Fake::start("failover-1", "one").await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let to = Endpoint {
            name: "recorder-1".into(),
            addr,
            user: "admin".into(),
            password: Secret::new("two".into()),
        };
        let err = copy_missing(&HttpClient::new(), &from, &to, 1, FROM, TO, None, |_| {})
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("recorder-1 ({addr}): material inventory: ")),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }

    #[tokio::test]
    async fn a_transfer_that_stands_still_fails_naming_the_side_it_waited_for() {
        let (src, from) = Fake::start("failover-1", "one").await;
        let (dst, to) = Fake::start("recorder-1", "two").await;
        *src.listed.lock().unwrap() = vec![segment(0, 100_000), segment(60, 100_000)];
        let client = HttpClient::new();
        // The source stops half-way through each segment.
        src.stall.store(true, Relaxed);
        let started = std::time::Instant::now();
        let r = copy_missing(&client, &from, &to, 1, FROM, TO, None, |_| {})
            .await
            .unwrap();
        assert_eq!((r.copied, r.failed.len()), (0, 2), "{r:?}");
        for f in &r.failed {
            assert!(
                f.error.starts_with("failover-1 (")
                    && f.error.contains("download of")
                    && f.error.contains("stalled"),
                "{f:?}"
            );
        }
        assert!(started.elapsed() < IO_TIMEOUT * 2 + Duration::from_secs(2));
        assert!(dst.stored().is_empty());
        // The target takes nothing and never answers.
        src.stall.store(false, Relaxed);
        dst.stall.store(true, Relaxed);
        let r = copy_missing(&client, &from, &to, 1, FROM, TO, Some(1), |_| {})
            .await
            .unwrap();
        assert_eq!((r.copied, r.failed.len()), (0, 1), "{r:?}");
        let f = &r.failed[0];
        assert!(
            f.error.starts_with("recorder-1 (")
                && f.error.contains("upload of")
                && f.error.contains("stalled"),
            "{f:?}"
        );
    }
}
