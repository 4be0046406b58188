//! The one HTTP client of a server (hyper-util's): the failover controller
//! polls its peers' `/health` and asks them to release or hand back with
//! it, and a material copy moves segments with it. Every request has a
//! deadline: its answer comes within the timeout of the request's start or,
//! for a body that streams, of the last chunk that moved. Every answer read
//! whole has a cap.
//!
//! Digest with the server password: a [`DigestSession`] keeps the last
//! challenge of a server and answers it directly, so a request costs one
//! round trip, not two; a nonce the server calls stale is renewed and the
//! request sent again (a body that streams, which can be sent only once,
//! gets a fresh challenge first when the one it has is old).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{AUTHORIZATION, HOST, HeaderMap, WWW_AUTHENTICATE};
use hyper::{Method, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::config::Secret;

/// The largest answer [`HttpClient::get`] and [`HttpClient::post_digest`]
/// read (a health report is a few hundred bytes).
pub const MAX_ANSWER: usize = 256 * 1024;
/// A challenge is answered for this long; a body that can be sent only
/// once then gets a fresh one first (nonces live
/// `NONCE_LIFETIME_SECS`: half of it leaves a long upload room).
const REUSE_CHALLENGE: Duration = Duration::from_secs(crate::serve::auth::NONCE_LIFETIME_SECS / 2);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body: streamed, sent once.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the transfer stalled: nothing moved for {0:?}")]
    Stalled(Duration),
    #[error("{0}")]
    Http(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer broke off: {0}")]
    Body(String),
}

/// An error with its causes, `a: b: c` (hyper's own text is terse:
/// "client error (Connect)").
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}

/// A server's credentials and the last challenge it sent. Requests of one
/// session go one after another: the nonce count grows with each, and the
/// server refuses a count that does not.
pub struct DigestSession {
    user: String,
    password: Secret,
    challenge: Mutex<Option<Challenge>>,
}

struct Challenge {
    header: String,
    /// Requests answered with this challenge's nonce (qop's `nc`).
    nc: u32,
    at: Instant,
}

impl DigestSession {
    pub fn new(user: impl Into<String>, password: Secret) -> Self {
        DigestSession {
            user: user.into(),
            password,
            challenge: Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Option<Challenge>> {
        self.challenge.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `Authorization` of a request, if a challenge is known.
    fn authorization(&self, method: &Method, uri: &str) -> Option<String> {
        let mut state = self.state();
        let c = state.as_mut()?;
        c.nc += 1;
        let cnonce = format!("{:016x}", rand::random::<u64>());
        crate::serve::auth::digest_answer(
            &c.header,
            &self.user,
            self.password.expose(),
            method.as_str(),
            uri,
            &cnonce,
            c.nc,
        )
    }

    /// Keeps `header` as the challenge to answer; false when it cannot be
    /// answered (not Digest, or another algorithm).
    fn learn(&self, header: String) -> bool {
        let usable =
            crate::serve::auth::digest_answer(&header, "u", "p", "GET", "/", "c", 1).is_some();
        *self.state() = usable.then(|| Challenge {
            header,
            nc: 0,
            at: Instant::now(),
        });
        usable
    }

    fn fresh(&self) -> bool {
        self.state()
            .as_ref()
            .is_some_and(|c| c.at.elapsed() < REUSE_CHALLENGE)
    }
}

/// The Digest challenge of a 401.
fn digest_challenge(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| {
            v.trim_start()
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("digest "))
        })
        .map(str::to_string)
}

/// Whether a 401's Digest challenge says the nonce answered was stale
/// (the password was right: sending again with the new one will do).
pub fn stale(headers: &HeaderMap) -> bool {
    digest_challenge(headers).is_some_and(|c| {
        crate::serve::auth::parse_params(c.trim_start().get(7..).unwrap_or(""))
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("stale") && v.eq_ignore_ascii_case("true"))
    })
}

/// When a body last moved.
#[derive(Clone)]
struct Activity(Arc<Mutex<Instant>>);

impl Activity {
    fn new() -> Self {
        Activity(Arc::new(Mutex::new(Instant::now())))
    }
    fn note(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
    fn last(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request body that notes when each chunk is taken: one the peer stops
/// reading, or whose source stops giving, is not taken.
struct Noted {
    inner: RequestBody,
    activity: Activity,
}

impl Body for Noted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let p = Pin::new(&mut self.inner).poll_frame(cx);
        if p.is_ready() {
            self.activity.note();
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `fut`, unless `idle` passes after the last activity first.
async fn within<T>(fut: impl Future<Output = T>, activity: &Activity, idle: Duration) -> Option<T> {
    tokio::pin!(fut);
    loop {
        let until = activity.last() + idle;
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = tokio::time::sleep_until(until) => {
                if activity.last() + idle <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

/// Reads a body whole: at most `cap` bytes, within `timeout`.
pub async fn read_body(
    body: Incoming,
    cap: usize,
    timeout: Duration,
) -> Result<Bytes, ClientError> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, cap).collect())
        .await
        .map_err(|_| ClientError::Timeout(timeout))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ClientError::TooLarge(cap)),
        Err(e) => Err(ClientError::Body(chain(&*e))),
    }
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, RequestBody>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        HttpClient { inner }
    }

    /// Sends `method path` to `addr`, with `headers` and `body` (none:
    /// empty), answering `digest`'s challenge when given: the last one it
    /// knows; a new one when the server asks for credentials or calls the
    /// nonce stale, sending again (a body is sent once: it gets a fresh
    /// challenge first, with a `HEAD` of `path`, when the one known is old
    /// or none, and a 401 to it is the caller's). The answer's head comes
    /// within `timeout` of the request's start, or of the last chunk of
    /// `body` that moved; its body is the caller's to read (see
    /// [`read_body`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<RequestBody>,
        digest: Option<&DigestSession>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, ClientError> {
        let one_shot = body.is_some();
        if let Some(d) = digest
            && one_shot
            && !d.fresh()
        {
            let probe = self
                .once(
                    addr,
                    Method::HEAD,
                    path,
                    HeaderMap::new(),
                    None,
                    None,
                    timeout,
                )
                .await?;
            if let Some(c) = digest_challenge(probe.headers()) {
                d.learn(c);
            }
            drain(probe, timeout).await;
        }
        let mut body = body;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let auth = digest.and_then(|d| d.authorization(&method, path));
            let resp = self
                .once(
                    addr,
                    method.clone(),
                    path,
                    headers.clone(),
                    auth.as_deref(),
                    body.take(),
                    timeout,
                )
                .await?;
            if resp.status() != hyper::StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let (Some(d), Some(c)) = (digest, digest_challenge(resp.headers())) else {
                return Ok(resp);
            };
            let again = auth.is_none() || stale(resp.headers());
            if !d.learn(c) || !again || one_shot || attempt >= 3 {
                return Ok(resp);
            }
            drain(resp, timeout).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn once(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: HeaderMap,
        auth: Option<&str>,
        body: Option<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, ClientError> {
        let activity = Activity::new();
        let streams = body.is_some();
        let body = match body {
            Some(inner) => UnsyncBoxBody::new(Noted {
                inner,
                activity: activity.clone(),
            }),
            None => UnsyncBoxBody::new(Empty::new().map_err(|never| match never {})),
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(HOST, addr.to_string());
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let mut req = req
            .body(body)
            .map_err(|e| ClientError::Http(e.to_string()))?;
        req.headers_mut().extend(headers);
        match within(self.inner.request(req), &activity, timeout).await {
            Some(r) => r.map_err(|e| ClientError::Http(chain(&e))),
            None if streams => Err(ClientError::Stalled(timeout)),
            None => Err(ClientError::Timeout(timeout)),
        }
    }

    /// POST `path` of `addr` as `user` with Digest (answering the server's
    /// challenge, once more if it says the nonce went stale), within
    /// `timeout` in all.
    pub async fn post_digest(
        &self,
        addr: SocketAddr,
        path: &str,
        user: &str,
        password: &Secret,
        timeout: Duration,
    ) -> Result<(u16, Bytes), ClientError> {
        let digest = DigestSession::new(user, password.clone());
        let run = async {
            let resp = self
                .send(
                    addr,
                    Method::POST,
                    path,
                    HeaderMap::new(),
                    None,
                    Some(&digest),
                    timeout,
                )
                .await?;
            let status = resp.status().as_u16();
            Ok((
                status,
                read_body(resp.into_body(), MAX_ANSWER, timeout).await?,
            ))
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// GET `path` of `addr`; the status and the body, within `timeout`.
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, Bytes), ClientError> {
        let run = async {
            let resp = self
                .send(
                    addr,
                    Method::GET,
                    path,
                    HeaderMap::new(),
                    None,
                    None,
                    timeout,
                )
                .await?;
            let status = resp.status().as_u16();
            Ok((
                status,
                read_body(resp.into_body(), MAX_ANSWER, timeout).await?,
            ))
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}

/// Reads a short answer to its end, so that its connection can serve the
/// next request.
pub async fn drain(resp: Response<Incoming>, timeout: Duration) {
    let _ = read_body(resp.into_body(), MAX_ANSWER, timeout).await;
}
