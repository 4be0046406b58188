//! One workstation connection's RTSP state machine (RFC 2326), sans-IO:
//! a request, the time and the channel catalog in; a response and an action
//! for the runtime out.
//!
//! - SETUP with `RTP/AVP/TCP;interleaved` sets up unicast TCP fan-out.
//! - SETUP with `RTP/AVP;multicast` answers with the server's group, port and
//!   TTL from the address plan; a destination the client names is ignored.
//!   When the server's protocol is `tcp`, multicast is refused with 461 and
//!   TCP offered.
//! - Errors: 400 malformed or no CSeq, 401 unauthenticated, 404 unknown
//!   channel, 454 unknown session, 461 unsupported transport, 503 over a
//!   client limit or codec not known yet.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtsp_types::headers::{self, Transport, Transports};
use rtsp_types::{Method, Request, Response, StatusCode, Version};

use super::auth::{Attempt, Authenticator, Verdict};
use crate::config::Destination;

pub const SERVER: &str = concat!("mcrelay/", env!("CARGO_PKG_VERSION"));
const PUBLIC: &str = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER";

/// What the server knows about a channel, for one request.
#[derive(Clone, Debug)]
pub struct ChannelEntry {
    pub id: u32,
    /// The DESCRIBE body; `None` while the codec is not known yet.
    pub sdp: Option<String>,
    /// The channel's group, when its server sends it by multicast.
    pub multicast: Option<Destination>,
    /// The tracks besides video the DESCRIBE lists (`trackID=1`...), with
    /// their multicast destinations.
    pub tracks: Vec<Option<Destination>>,
}

/// Why a client is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    ServerFull(usize),
    ChannelFull(usize),
}

/// The channels a server offers, and its client limits.
pub trait Catalog {
    /// The channel a URL path names (its id, or its name).
    fn find(&self, key: &str) -> Option<ChannelEntry>;
    /// Whether one more TCP client may play channel `id`.
    fn admit(&self, id: u32) -> Result<(), Refusal>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionTransport {
    /// RTP and RTCP interleaved on the RTSP connection, on these channels.
    Tcp {
        rtp: u8,
        rtcp: u8,
    },
    Multicast(Destination),
}

#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub channel: u32,
    /// The video's transport (track 0, set up first).
    pub transport: SessionTransport,
    /// The tracks besides video set up, by track number (1...).
    pub tracks: Vec<(usize, SessionTransport)>,
    pub playing: bool,
    pub last_request: Instant,
}

/// What the runtime does after sending the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Start sending channel `channel` (TCP), or record a multicast viewer.
    /// The runtime adds the `RTP-Info` header to the response first.
    Play {
        channel: u32,
        transport: SessionTransport,
        /// Tracks besides video, by track number.
        tracks: Vec<(usize, SessionTransport)>,
    },
    /// The session ended (TEARDOWN).
    Stop,
    /// Close the connection after the response.
    Close,
}

pub struct Outcome {
    pub response: Response<Vec<u8>>,
    pub action: Action,
}

pub struct Connection {
    auth: Option<Arc<Authenticator>>,
    multicast_allowed: bool,
    session_timeout: Duration,
    session: Option<Session>,
    /// The last request that passed authentication (a connection that only
    /// gets 401s does not stay alive by sending them).
    last_request: Instant,
    peer: IpAddr,
    /// The connection's own nonce binding (see [`Authenticator`]).
    binding: u64,
    /// Credentials were accepted here (from the start without a password).
    authenticated: bool,
}

impl Connection {
    /// `multicast_allowed`: the server's protocol is `rtp-multicast`;
    /// `binding`: a random id of this connection, to bind its nonces.
    pub fn new(
        auth: Option<Arc<Authenticator>>,
        multicast_allowed: bool,
        session_timeout: Duration,
        now: Instant,
        peer: IpAddr,
        binding: u64,
    ) -> Self {
        Connection {
            authenticated: auth.is_none(),
            auth,
            multicast_allowed,
            session_timeout,
            session: None,
            last_request: now,
            peer,
            binding,
        }
    }

    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    pub fn last_request(&self) -> Instant {
        self.last_request
    }

    /// Whether the client has authenticated (always true without a
    /// password). Until it has, the runtime gives it a short deadline and a
    /// slot of the small unauthenticated pool.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// A session that is not streaming over this connection expires when no
    /// request came for the session timeout. (A TCP session lives while its
    /// connection does; the writer's stall timer guards it.)
    pub fn expiry(&self) -> Option<Instant> {
        match &self.session {
            Some(s) if !(s.playing && matches!(s.transport, SessionTransport::Tcp { .. })) => {
                Some(s.last_request + self.session_timeout)
            }
            _ => None,
        }
    }

    /// Handles one request. `fresh_id` names a session if one is created.
    pub fn handle(
        &mut self,
        req: &Request<Vec<u8>>,
        now: Instant,
        now_unix: u64,
        fresh_id: u64,
        catalog: &impl Catalog,
    ) -> Outcome {
        let Some(cseq) = req
            .header(&headers::CSEQ)
            .map(|v| v.as_str().trim().to_string())
        else {
            return reply(None, StatusCode::BadRequest, Action::None).text("missing CSeq header");
        };
        let cseq = Some(cseq.as_str());
        if req.version() != Version::V1_0 {
            return reply(cseq, StatusCode::RTSPVersionNotSupported, Action::None).finish();
        }
        let method = req.method();
        let known = matches!(
            method,
            Method::Options
                | Method::Describe
                | Method::Setup
                | Method::Play
                | Method::Teardown
                | Method::GetParameter
        );
        if !known {
            let status = match method {
                Method::Extension(_) => StatusCode::NotImplemented,
                _ => StatusCode::MethodNotAllowed,
            };
            return reply(cseq, status, Action::None)
                .header(headers::ALLOW, PUBLIC)
                .finish();
        }

        // Session header: must name this connection's session if present.
        let session_hdr = req.header(&headers::SESSION).map(|v| {
            v.as_str()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        });
        let session_ok = match (&session_hdr, &self.session) {
            (Some(h), Some(s)) => *h == s.id,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if *method == Method::Options {
            // OPTIONS needs no credentials, and is a keep-alive for its
            // session, and for the connection once it authenticated.
            if self.authenticated {
                self.last_request = now;
            }
            if session_hdr.is_some()
                && session_ok
                && let Some(s) = &mut self.session
            {
                s.last_request = now;
            }
            return reply(cseq, StatusCode::Ok, Action::None)
                .header(headers::PUBLIC, PUBLIC)
                .finish();
        }

        if let Some(auth) = &self.auth {
            let uri = req
                .request_uri()
                .map(|u| u.as_str().to_string())
                .unwrap_or_default();
            let attempt = Attempt {
                method: method_name(method),
                uri: &uri,
                authorization: req.header(&headers::AUTHORIZATION).map(|v| v.as_str()),
                peer: self.peer,
                binding: self.binding,
            };
            match auth.check(&attempt, now_unix) {
                Verdict::Allowed => self.authenticated = true,
                // A live session was authenticated at SETUP; its keep-alives
                // may ride an old nonce.
                Verdict::Denied { stale: true }
                    if session_ok && session_hdr.is_some() && self.session.is_some() => {}
                Verdict::Denied { stale } => {
                    let mut r = reply(cseq, StatusCode::Unauthorized, Action::None);
                    for c in auth.challenges(now_unix, stale, self.peer, self.binding) {
                        r = r.append(headers::WWW_AUTHENTICATE, c);
                    }
                    return r.finish();
                }
                Verdict::Throttled { retry_after_secs } => {
                    return reply(cseq, StatusCode::ServiceUnavailable, Action::Close)
                        .header(headers::RETRY_AFTER, retry_after_secs.to_string())
                        .text("too many failed authentications from this address; retry later");
                }
            }
        }
        self.last_request = now;
        if !session_ok {
            return reply(cseq, StatusCode::SessionNotFound, Action::None).finish();
        }
        if let Some(s) = &mut self.session {
            s.last_request = now;
        }

        match method {
            Method::Describe => self.describe(req, cseq, catalog),
            Method::Setup => self.setup(req, cseq, now, fresh_id, catalog),
            Method::Play => self.play(req, cseq, catalog),
            Method::Teardown => {
                let had = self.session.take().is_some();
                reply(
                    cseq,
                    StatusCode::Ok,
                    if had { Action::Stop } else { Action::None },
                )
                .finish()
            }
            // GET_PARAMETER: a keep-alive.
            _ => self
                .with_session(reply(cseq, StatusCode::Ok, Action::None))
                .finish(),
        }
    }

    fn with_session(&self, r: Reply) -> Reply {
        match &self.session {
            Some(s) => r.header(
                headers::SESSION,
                format!("{};timeout={}", s.id, self.session_timeout.as_secs()),
            ),
            None => r,
        }
    }

    fn describe(
        &self,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        catalog: &impl Catalog,
    ) -> Outcome {
        let Some((key, _)) = path_key(req) else {
            return reply(cseq, StatusCode::NotFound, Action::None)
                .text("no channel in the URL: use rtsp://host:port/{channel id or name}");
        };
        let Some(ch) = catalog.find(&key) else {
            return reply(cseq, StatusCode::NotFound, Action::None)
                .text(&format!("no channel {key:?}"));
        };
        let Some(sdp) = ch.sdp else {
            return reply(cseq, StatusCode::ServiceUnavailable, Action::None)
                .header(headers::RETRY_AFTER, "2")
                .text("the camera has not connected yet; retry shortly");
        };
        let base = content_base(req);
        reply(cseq, StatusCode::Ok, Action::None)
            .header(headers::CONTENT_BASE, base)
            .header(headers::CONTENT_TYPE, "application/sdp")
            .body(sdp.into_bytes())
    }

    fn setup(
        &mut self,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        now: Instant,
        fresh_id: u64,
        catalog: &impl Catalog,
    ) -> Outcome {
        let Some((key, rest)) = path_key(req) else {
            return reply(cseq, StatusCode::NotFound, Action::None).text("no channel in the URL");
        };
        let Some(ch) = catalog.find(&key) else {
            return reply(cseq, StatusCode::NotFound, Action::None)
                .text(&format!("no channel {key:?}"));
        };
        if let Some(s) = &self.session
            && s.channel != ch.id
        {
            return reply(cseq, StatusCode::AggregateOperationNotAllowed, Action::None)
                .text("one channel per session: TEARDOWN first or use another connection");
        }
        // The track: the channel's URL or trackID=0 is the video.
        let track = match rest.trim_end_matches('/') {
            "" => 0,
            t => match t
                .strip_prefix("trackID=")
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) if n <= ch.tracks.len() => n,
                _ => {
                    return reply(cseq, StatusCode::NotFound, Action::None)
                        .text(&format!("channel {key:?} has no track {t:?}"));
                }
            },
        };
        if track > 0 {
            return self.setup_track(req, cseq, track, &ch);
        }
        let offers = match self.offers(req, cseq) {
            Ok(o) => o,
            Err(refusal) => return *refusal,
        };
        let mut chosen = None;
        for offer in offers {
            if offer.tcp {
                let (a, b) = offer.interleaved.unwrap_or((0, 1));
                chosen = Some(SessionTransport::Tcp { rtp: a, rtcp: b });
                break;
            }
            if offer.multicast
                && self.multicast_allowed
                && let Some(dest) = ch.multicast
            {
                // The server's group, never one the client names.
                chosen = Some(SessionTransport::Multicast(dest));
                break;
            }
        }
        let Some(transport) = chosen else {
            let why = if self.multicast_allowed {
                "use RTP/AVP/TCP;interleaved or RTP/AVP;multicast"
            } else {
                "this server sends no multicast (protocol \"tcp\"): use RTP/AVP/TCP;interleaved"
            };
            return self.unsupported(cseq, why);
        };
        if matches!(transport, SessionTransport::Tcp { .. })
            && let Err(r) = catalog.admit(ch.id)
        {
            return refused(cseq, r);
        }
        let session = self.session.get_or_insert_with(|| Session {
            id: format!("{fresh_id:016X}"),
            channel: ch.id,
            transport,
            tracks: Vec::new(),
            playing: false,
            last_request: now,
        });
        session.transport = transport;
        // A video set up again on another transport, or on channels a track
        // uses, leaves no track behind there.
        session.tracks.retain(|(_, t)| match (t, transport) {
            (SessionTransport::Tcp { rtp, rtcp }, SessionTransport::Tcp { rtp: a, rtcp: b }) => {
                ![a, b].contains(rtp) && ![a, b].contains(rtcp)
            }
            (SessionTransport::Multicast(_), SessionTransport::Multicast(_)) => true,
            _ => false,
        });
        self.with_session(reply(cseq, StatusCode::Ok, Action::None))
            .header(headers::TRANSPORT, transport_header(transport))
            .finish()
    }

    /// SETUP of track `track` (1...) besides video: after the video's, on
    /// the same kind of transport; TCP on its own interleaved channels.
    fn setup_track(
        &mut self,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        track: usize,
        ch: &ChannelEntry,
    ) -> Outcome {
        let Some(session) = &self.session else {
            return reply(cseq, StatusCode::MethodNotValidInThisState, Action::None)
                .text("SETUP the video track (trackID=0) first");
        };
        if session.playing {
            return reply(cseq, StatusCode::MethodNotValidInThisState, Action::None)
                .text("the session is playing: SETUP its tracks before PLAY");
        }
        let offers = match self.offers(req, cseq) {
            Ok(o) => o,
            Err(refusal) => return *refusal,
        };
        let mut chosen = None;
        for offer in offers {
            match session.transport {
                SessionTransport::Tcp { .. } if offer.tcp => {
                    // The client's channels, unless the session uses them:
                    // then the next free pair.
                    let used = |c: u8| {
                        std::iter::once(session.transport)
                            .chain(
                                session
                                    .tracks
                                    .iter()
                                    .filter(|(n, _)| *n != track)
                                    .map(|(_, t)| *t),
                            )
                            .any(|t| matches!(t, SessionTransport::Tcp { rtp, rtcp } if rtp == c || rtcp == c))
                    };
                    let pair = offer
                        .interleaved
                        .filter(|&(a, b)| a != b && !used(a) && !used(b))
                        .or_else(|| {
                            (0..=127u8)
                                .map(|i| (2 * i, 2 * i + 1))
                                .find(|&(a, b)| !used(a) && !used(b))
                        });
                    if let Some((a, b)) = pair {
                        chosen = Some(SessionTransport::Tcp { rtp: a, rtcp: b });
                    }
                    break;
                }
                SessionTransport::Multicast(_) if offer.multicast && !offer.tcp => {
                    if let Some(dest) = ch.tracks.get(track - 1).copied().flatten() {
                        chosen = Some(SessionTransport::Multicast(dest));
                    }
                    break;
                }
                _ => {}
            }
        }
        let Some(transport) = chosen else {
            let why = match session.transport {
                SessionTransport::Tcp { .. } => {
                    "the video is on RTP/AVP/TCP: set up this track the same way, on free interleaved channels"
                }
                SessionTransport::Multicast(_) => {
                    "the video is on multicast: set up this track with RTP/AVP;multicast (or the track is not sent by multicast)"
                }
            };
            return self.unsupported(cseq, why);
        };
        if let Some(s) = &mut self.session {
            s.tracks.retain(|(n, _)| *n != track);
            s.tracks.push((track, transport));
            s.tracks.sort_by_key(|(n, _)| *n);
        }
        self.with_session(reply(cseq, StatusCode::Ok, Action::None))
            .header(headers::TRANSPORT, transport_header(transport))
            .finish()
    }

    /// The RTP transports a SETUP's `Transport` header offers, in the
    /// client's order of preference.
    fn offers(
        &self,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
    ) -> Result<Vec<Offer>, Box<Outcome>> {
        let transports = match req.typed_header::<Transports>() {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(Box::new(
                    reply(cseq, StatusCode::BadRequest, Action::None)
                        .text("missing Transport header"),
                ));
            }
            Err(_) => {
                return Err(Box::new(
                    self.unsupported(cseq, "malformed Transport header"),
                ));
            }
        };
        Ok(transports
            .iter()
            .filter_map(|t| match t {
                Transport::Rtp(rtp) => Some(Offer {
                    tcp: rtp.lower_transport == Some(headers::transport::RtpLowerTransport::Tcp),
                    multicast: rtp.params.multicast,
                    interleaved: rtp
                        .params
                        .interleaved
                        .map(|(a, b)| (a, b.unwrap_or(a.wrapping_add(1)))),
                }),
                _ => None,
            })
            .collect())
    }

    fn unsupported(&self, cseq: Option<&str>, why: &str) -> Outcome {
        reply(cseq, StatusCode::UnsupportedTransport, Action::None)
            .header(headers::TRANSPORT, "RTP/AVP/TCP;unicast;interleaved=0-1")
            .text(why)
    }

    fn play(
        &mut self,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        catalog: &impl Catalog,
    ) -> Outcome {
        let Some(s) = &self.session else {
            return reply(cseq, StatusCode::SessionNotFound, Action::None).text("SETUP first");
        };
        if req.header(&headers::SESSION).is_none() {
            return reply(cseq, StatusCode::SessionNotFound, Action::None)
                .text("PLAY needs the Session header");
        }
        let (channel, transport, was_playing) = (s.channel, s.transport, s.playing);
        let tracks = s.tracks.clone();
        if !was_playing
            && matches!(transport, SessionTransport::Tcp { .. })
            && let Err(r) = catalog.admit(channel)
        {
            return refused(cseq, r);
        }
        if let Some(s) = &mut self.session {
            s.playing = true;
        }
        let action = if was_playing {
            Action::None
        } else {
            Action::Play {
                channel,
                transport,
                tracks,
            }
        };
        self.with_session(reply(cseq, StatusCode::Ok, action))
            .header(headers::RANGE, "npt=now-")
            .finish()
    }
}

/// One RTP transport of a SETUP's `Transport` header.
struct Offer {
    tcp: bool,
    multicast: bool,
    /// The interleaved channels asked for (RTP, RTCP).
    interleaved: Option<(u8, u8)>,
}

fn transport_header(t: SessionTransport) -> String {
    match t {
        SessionTransport::Tcp { rtp, rtcp } => {
            format!("RTP/AVP/TCP;unicast;interleaved={rtp}-{rtcp}")
        }
        SessionTransport::Multicast(d) => format!(
            "RTP/AVP;multicast;destination={};port={}-{};ttl={}",
            d.group,
            d.port,
            d.rtcp().port(),
            d.ttl
        ),
    }
}

/// The 503 for a client over a limit, answering `req` (the runtime sends it
/// when the reservation at PLAY fails).
pub fn refusal_response(req: &Request<Vec<u8>>, r: Refusal) -> Response<Vec<u8>> {
    let cseq = req
        .header(&headers::CSEQ)
        .map(|v| v.as_str().trim().to_string());
    refused(cseq.as_deref(), r).response
}

fn refused(cseq: Option<&str>, r: Refusal) -> Outcome {
    let msg = match r {
        Refusal::ServerFull(n) => format!("this server already serves {n} TCP clients, its limit"),
        Refusal::ChannelFull(n) => format!("this channel already has {n} TCP clients, its limit"),
    };
    reply(cseq, StatusCode::ServiceUnavailable, Action::None).text(&msg)
}

fn method_name(m: &Method) -> &str {
    match m {
        Method::Describe => "DESCRIBE",
        Method::Setup => "SETUP",
        Method::Play => "PLAY",
        Method::Teardown => "TEARDOWN",
        Method::GetParameter => "GET_PARAMETER",
        Method::Options => "OPTIONS",
        _ => "",
    }
}

/// The channel key (first path segment, percent-decoded) and the rest.
fn path_key(req: &Request<Vec<u8>>) -> Option<(String, String)> {
    let url = req.request_uri()?;
    let mut segs = url.path().trim_start_matches('/').splitn(2, '/');
    let first = segs.next().filter(|s| !s.is_empty())?;
    let key = percent_encoding::percent_decode_str(first)
        .decode_utf8()
        .ok()?
        .into_owned();
    Some((key, segs.next().unwrap_or_default().to_string()))
}

/// The request URL with a trailing slash: relative `a=control` URLs resolve
/// against it.
fn content_base(req: &Request<Vec<u8>>) -> String {
    let mut u = req.request_uri().map(|u| u.to_string()).unwrap_or_default();
    if !u.ends_with('/') {
        u.push('/');
    }
    u
}

/// A response being built.
struct Reply {
    response: Response<Vec<u8>>,
    action: Action,
}

fn reply(cseq: Option<&str>, status: StatusCode, action: Action) -> Reply {
    let mut response = Response::builder(Version::V1_0, status)
        .header(headers::SERVER, SERVER)
        .build(Vec::new());
    if let Some(c) = cseq {
        response.insert_header(headers::CSEQ, c);
    }
    Reply { response, action }
}

impl Reply {
    fn header(mut self, name: rtsp_types::HeaderName, value: impl Into<String>) -> Self {
        self.response.insert_header(name, value.into());
        self
    }

    /// Adds a value to a header (comma-separated, RFC 7235 4.1 for challenges).
    fn append(mut self, name: rtsp_types::HeaderName, value: impl Into<String>) -> Self {
        self.response.append_header(name, value.into());
        self
    }

    fn text(self, msg: &str) -> Outcome {
        self.header(headers::CONTENT_TYPE, "text/plain")
            .body(format!("{msg}\r\n").into_bytes())
    }

    fn body(self, body: Vec<u8>) -> Outcome {
        Outcome {
            response: self.response.replace_body(body),
            action: self.action,
        }
    }

    fn finish(self) -> Outcome {
        Outcome {
            response: self.response,
            action: self.action,
        }
    }
}

#[cfg(test)]
mod tests;
