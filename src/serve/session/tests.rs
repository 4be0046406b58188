use std::net::Ipv4Addr;

use md5::{Digest, Md5};
use rtsp_types::Message;

use super::*;
use crate::config::Secret;

const NOW_UNIX: u64 = 1_800_000_000;
const PEER: std::net::IpAddr = std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9));

struct Cat {
    full: Option<Refusal>,
}

fn group() -> Destination {
    Destination {
        group: Ipv4Addr::new(239, 255, 77, 1),
        port: 5002,
        ttl: 4,
    }
}

fn audio_group() -> Destination {
    Destination {
        port: 7002,
        ..group()
    }
}

impl Catalog for Cat {
    fn find(&self, key: &str) -> Option<ChannelEntry> {
        match key {
            "1" | "Front door" => Some(ChannelEntry {
                id: 1,
                sdp: Some("v=0\r\n".into()),
                multicast: Some(group()),
                tracks: vec![Some(audio_group()), None],
            }),
            "2" => Some(ChannelEntry {
                id: 2,
                sdp: None,
                multicast: None,
                tracks: Vec::new(),
            }),
            _ => None,
        }
    }
    fn admit(&self, _: u32) -> Result<(), Refusal> {
        self.full.map_or(Ok(()), Err)
    }
}

fn parse(text: &str) -> Request<Vec<u8>> {
    match Message::parse(text.as_bytes()).unwrap().0 {
        Message::Request(r) => r,
        _ => panic!("not a request"),
    }
}

fn auth() -> Arc<Authenticator> {
    Arc::new(Authenticator::new(
        "admin".into(),
        Secret::new("demo".into()),
        false,
        [9; 32],
    ))
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An Authorization header for `method` on `uri`, from a 401's challenge.
fn authorization(challenge: &str, method: &str, uri: &str, password: &str) -> String {
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let ha1 = md5_hex(&format!("admin:mcrelay:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let r = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
    format!(
        "Digest username=\"admin\", realm=\"mcrelay\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{r}\""
    )
}

struct Client {
    conn: Connection,
    cseq: u32,
    authz_for: Option<String>,
    now: Instant,
}

impl Client {
    fn new(multicast: bool, with_auth: bool) -> Self {
        let now = Instant::now();
        Client {
            conn: Connection::new(
                with_auth.then(auth),
                multicast,
                Duration::from_secs(60),
                now,
                PEER,
                7,
            ),
            cseq: 0,
            authz_for: None,
            now,
        }
    }

    /// Sends `method uri` with extra header lines; authenticates on a 401.
    fn send(&mut self, method: &str, uri: &str, extra: &str, cat: &Cat) -> Outcome {
        self.cseq += 1;
        let authz = self
            .authz_for
            .as_ref()
            .map(|ch| {
                format!(
                    "Authorization: {}\r\n",
                    authorization(ch, method, uri, "demo")
                )
            })
            .unwrap_or_default();
        let text = format!(
            "{method} {uri} RTSP/1.0\r\nCSeq: {}\r\n{authz}{extra}\r\n",
            self.cseq
        );
        let out = self
            .conn
            .handle(&parse(&text), self.now, NOW_UNIX, 0xabc, cat);
        if out.response.status() == StatusCode::Unauthorized && self.authz_for.is_none() {
            let ch = out
                .response
                .header(&headers::WWW_AUTHENTICATE)
                .unwrap()
                .as_str()
                .to_string();
            self.authz_for = Some(ch);
            self.cseq -= 1;
            return self.send(method, uri, extra, cat);
        }
        out
    }
}

fn status(o: &Outcome) -> u16 {
    o.response.status().into()
}

fn header<'a>(o: &'a Outcome, name: &rtsp_types::HeaderName) -> &'a str {
    o.response
        .header(name)
        .map(|v| v.as_str())
        .unwrap_or_default()
}

#[test]
fn tcp_session_lifecycle_with_digest() {
    let cat = Cat { full: None };
    let mut c = Client::new(false, true);
    let o = c.send("OPTIONS", "rtsp://h:8554/1", "", &cat);
    assert_eq!(status(&o), 200);
    assert!(header(&o, &headers::PUBLIC).contains("SETUP"));
    assert!(c.authz_for.is_none(), "OPTIONS needs no credentials");

    let o = c.send(
        "DESCRIBE",
        "rtsp://h:8554/1",
        "Accept: application/sdp\r\n",
        &cat,
    );
    assert!(c.authz_for.is_some(), "DESCRIBE was challenged");
    assert_eq!(status(&o), 200);
    assert_eq!(header(&o, &headers::CONTENT_BASE), "rtsp://h:8554/1/");
    assert_eq!(o.response.body(), b"v=0\r\n");
    assert_eq!(header(&o, &headers::CSEQ), "2", "OPTIONS was 1");

    let o = c.send(
        "SETUP",
        "rtsp://h:8554/1/trackID=0",
        "Transport: RTP/AVP/TCP;unicast;interleaved=2-3\r\n",
        &cat,
    );
    assert_eq!(status(&o), 200);
    assert_eq!(
        header(&o, &headers::TRANSPORT),
        "RTP/AVP/TCP;unicast;interleaved=2-3"
    );
    assert_eq!(header(&o, &headers::SESSION), "0000000000000ABC;timeout=60");

    let o = c.send(
        "PLAY",
        "rtsp://h:8554/1/",
        "Session: 0000000000000ABC\r\nRange: npt=0.000-\r\n",
        &cat,
    );
    assert_eq!(status(&o), 200);
    assert_eq!(
        o.action,
        Action::Play {
            channel: 1,
            transport: SessionTransport::Tcp { rtp: 2, rtcp: 3 },
            tracks: Vec::new(),
        }
    );
    assert_eq!(
        c.conn.expiry(),
        None,
        "a playing TCP session lives with its connection"
    );

    let o = c.send(
        "GET_PARAMETER",
        "rtsp://h:8554/1/",
        "Session: 0000000000000ABC\r\n",
        &cat,
    );
    assert_eq!((status(&o), &o.action), (200, &Action::None));
    let o = c.send(
        "TEARDOWN",
        "rtsp://h:8554/1/",
        "Session: 0000000000000ABC\r\n",
        &cat,
    );
    assert_eq!((status(&o), &o.action), (200, &Action::Stop));
    assert!(c.conn.session().is_none());
}

#[test]
fn wrong_or_missing_credentials_get_401_with_a_challenge() {
    let cat = Cat { full: None };
    let mut conn = Connection::new(
        Some(auth()),
        false,
        Duration::from_secs(60),
        Instant::now(),
        PEER,
        7,
    );
    let o = conn.handle(
        &parse("DESCRIBE rtsp://h/1 RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
        Instant::now(),
        NOW_UNIX,
        1,
        &cat,
    );
    assert_eq!(status(&o), 401);
    let ch = header(&o, &headers::WWW_AUTHENTICATE).to_string();
    assert!(ch.starts_with("Digest realm=\"mcrelay\", nonce=\""), "{ch}");
    let bad = authorization(&ch, "DESCRIBE", "rtsp://h/1", "wrong");
    let o = conn.handle(
        &parse(&format!(
            "DESCRIBE rtsp://h/1 RTSP/1.0\r\nCSeq: 2\r\nAuthorization: {bad}\r\n\r\n"
        )),
        Instant::now(),
        NOW_UNIX,
        1,
        &cat,
    );
    assert_eq!(status(&o), 401);
    assert!(o.response.body().is_empty());
}

#[test]
fn multicast_setup_uses_the_servers_group_never_the_clients() {
    let cat = Cat { full: None };
    let mut c = Client::new(true, false);
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=0",
        "Transport: RTP/AVP;multicast;destination=198.18.99.1;port=7000-7001;ttl=127\r\n",
        &cat,
    );
    assert_eq!(status(&o), 200);
    assert_eq!(
        header(&o, &headers::TRANSPORT),
        "RTP/AVP;multicast;destination=239.255.77.1;port=5002-5003;ttl=4"
    );
    let o = c.send("PLAY", "rtsp://h/1", "Session: 0000000000000ABC\r\n", &cat);
    assert_eq!(
        o.action,
        Action::Play {
            channel: 1,
            transport: SessionTransport::Multicast(group()),
            tracks: Vec::new(),
        }
    );
    // A multicast session expires without keep-alives; OPTIONS is one.
    assert_eq!(c.conn.expiry(), Some(c.now + Duration::from_secs(60)));
    c.now += Duration::from_secs(50);
    let o = c.send(
        "OPTIONS",
        "rtsp://h/1",
        "Session: 0000000000000ABC\r\n",
        &cat,
    );
    assert_eq!(status(&o), 200);
    assert_eq!(c.conn.expiry(), Some(c.now + Duration::from_secs(60)));
}

#[test]
fn multicast_on_a_tcp_server_is_461_with_tcp_offered() {
    let cat = Cat { full: None };
    let mut c = Client::new(false, false);
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=0",
        "Transport: RTP/AVP;multicast\r\n",
        &cat,
    );
    assert_eq!(status(&o), 461);
    assert_eq!(
        header(&o, &headers::TRANSPORT),
        "RTP/AVP/TCP;unicast;interleaved=0-1"
    );
    // Plain UDP unicast is not offered either; a list with TCP later is fine.
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=0",
        "Transport: RTP/AVP;unicast;client_port=5000-5001\r\n",
        &cat,
    );
    assert_eq!(status(&o), 461);
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=0",
        "Transport: RTP/AVP;multicast,RTP/AVP/TCP;unicast;interleaved=0-1\r\n",
        &cat,
    );
    assert_eq!(status(&o), 200);
}

#[test]
fn status_codes() {
    let cat = Cat { full: None };
    let mut c = Client::new(true, false);
    assert_eq!(status(&c.send("DESCRIBE", "rtsp://h/9", "", &cat)), 404);
    assert_eq!(status(&c.send("DESCRIBE", "rtsp://h/", "", &cat)), 404);
    assert_eq!(
        status(&c.send("DESCRIBE", "rtsp://h/Front%20door", "", &cat)),
        200,
        "by name"
    );
    assert_eq!(
        status(&c.send("DESCRIBE", "rtsp://h/2", "", &cat)),
        503,
        "codec not known yet"
    );
    assert_eq!(
        status(&c.send("PLAY", "rtsp://h/1", "", &cat)),
        454,
        "no session"
    );
    assert_eq!(
        status(&c.send("PLAY", "rtsp://h/1", "Session: 1234\r\n", &cat)),
        454,
        "unknown session"
    );
    assert_eq!(
        status(&c.send("SETUP", "rtsp://h/1", "", &cat)),
        400,
        "no Transport"
    );
    assert_eq!(status(&c.send("RECORD", "rtsp://h/1", "", &cat)), 405);
    assert_eq!(
        status(&c.send(
            "SETUP",
            "rtsp://h/1",
            "Transport: RTP/AVP/TCP;interleaved=0-1\r\n",
            &cat
        )),
        200
    );
    assert_eq!(
        status(&c.send(
            "SETUP",
            "rtsp://h/Front%20door",
            "Transport: RTP/AVP/TCP;interleaved=0-1\r\n",
            &cat
        )),
        200
    );
    let full = Cat {
        full: Some(Refusal::ChannelFull(50)),
    };
    let mut d = Client::new(false, false);
    let o = d.send(
        "SETUP",
        "rtsp://h/1",
        "Transport: RTP/AVP/TCP;interleaved=0-1\r\n",
        &full,
    );
    assert_eq!(status(&o), 503);
    assert!(String::from_utf8_lossy(o.response.body()).contains("50 TCP clients"));
    let mut conn = Connection::new(
        None,
        false,
        Duration::from_secs(60),
        Instant::now(),
        PEER,
        7,
    );
    let o = conn.handle(
        &parse("OPTIONS rtsp://h/1 RTSP/1.0\r\n\r\n"),
        Instant::now(),
        NOW_UNIX,
        1,
        &cat,
    );
    assert_eq!(status(&o), 400, "missing CSeq");
    assert!(o.response.header(&headers::CSEQ).is_none());
}

#[test]
fn keep_alive_with_a_stale_nonce_is_accepted_in_a_live_session() {
    let cat = Cat { full: None };
    let mut c = Client::new(false, true);
    c.send(
        "SETUP",
        "rtsp://h/1",
        "Transport: RTP/AVP/TCP;interleaved=0-1\r\n",
        &cat,
    );
    c.send("PLAY", "rtsp://h/1", "Session: 0000000000000ABC\r\n", &cat);
    let authz = authorization(
        c.authz_for.as_ref().unwrap(),
        "GET_PARAMETER",
        "rtsp://h/1",
        "demo",
    );
    let req = parse(&format!(
        "GET_PARAMETER rtsp://h/1 RTSP/1.0\r\nCSeq: 9\r\nSession: 0000000000000ABC\r\nAuthorization: {authz}\r\n\r\n"
    ));
    let later = NOW_UNIX + 3600;
    assert_eq!(status(&c.conn.handle(&req, c.now, later, 1, &cat)), 200);
    // Without the session it is stale: 401 with stale=true.
    let req = parse(&format!(
        "DESCRIBE rtsp://h/1 RTSP/1.0\r\nCSeq: 10\r\nAuthorization: {}\r\n\r\n",
        authorization(
            c.authz_for.as_ref().unwrap(),
            "DESCRIBE",
            "rtsp://h/1",
            "demo"
        )
    ));
    let o = c.conn.handle(&req, c.now, later, 1, &cat);
    assert_eq!(status(&o), 401);
    assert!(header(&o, &headers::WWW_AUTHENTICATE).contains("stale=true"));
}

fn challenge_of(o: &Outcome) -> String {
    header(o, &headers::WWW_AUTHENTICATE).to_string()
}

#[test]
fn a_header_works_only_for_its_channel_and_its_connection() {
    let cat = Cat { full: None };
    let t0 = Instant::now();
    let new_conn = |binding| {
        Connection::new(
            Some(auth()),
            false,
            Duration::from_secs(60),
            t0,
            PEER,
            binding,
        )
    };
    let mut a = new_conn(1);
    let o = a.handle(
        &parse("DESCRIBE rtsp://h/1 RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
        t0,
        NOW_UNIX,
        1,
        &cat,
    );
    let h = authorization(&challenge_of(&o), "DESCRIBE", "rtsp://h/1", "demo");
    let req = |uri: &str, h: &str| {
        parse(&format!(
            "DESCRIBE {uri} RTSP/1.0\r\nCSeq: 2\r\nAuthorization: {h}\r\n\r\n"
        ))
    };
    // For another channel on the same connection: refused.
    let o = a.handle(&req("rtsp://h/Front%20door", &h), t0, NOW_UNIX, 1, &cat);
    assert_eq!(status(&o), 401);
    assert!(!a.authenticated());
    assert_eq!(
        status(&a.handle(&req("rtsp://h/1", &h), t0, NOW_UNIX, 1, &cat)),
        200
    );
    assert!(a.authenticated());
    // Replayed on another connection: refused, stale (a client with the
    // password retries at once).
    let mut b = new_conn(2);
    let o = b.handle(&req("rtsp://h/1", &h), t0, NOW_UNIX, 1, &cat);
    assert_eq!(status(&o), 401);
    assert!(
        challenge_of(&o).contains("stale=true"),
        "{}",
        challenge_of(&o)
    );
    assert!(!b.authenticated());
}

#[test]
fn requests_answered_401_buy_no_time() {
    let cat = Cat { full: None };
    let t0 = Instant::now();
    let mut c = Connection::new(Some(auth()), false, Duration::from_secs(60), t0, PEER, 3);
    for i in 1..5u64 {
        let now = t0 + Duration::from_secs(5 * i);
        for m in ["OPTIONS", "DESCRIBE"] {
            c.handle(
                &parse(&format!("{m} rtsp://h/1 RTSP/1.0\r\nCSeq: {i}\r\n\r\n")),
                now,
                NOW_UNIX,
                1,
                &cat,
            );
        }
    }
    assert!(!c.authenticated());
    assert_eq!(
        c.last_request(),
        t0,
        "401s and OPTIONS refreshed the idle timer"
    );
}

#[test]
fn each_track_is_set_up_on_its_own_channels_or_group() {
    let cat = Cat { full: None };
    // TCP: the audio asks for the video's channels and gets the next pair.
    let mut c = Client::new(true, false);
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=1",
        "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n",
        &cat,
    );
    assert_eq!(status(&o), 455, "the video first");
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=0",
        "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n",
        &cat,
    );
    assert_eq!(status(&o), 200);
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=1",
        "Session: 0000000000000ABC\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n",
        &cat,
    );
    assert_eq!(status(&o), 200);
    assert_eq!(
        header(&o, &headers::TRANSPORT),
        "RTP/AVP/TCP;unicast;interleaved=2-3"
    );
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=3",
        "Session: 0000000000000ABC\r\nTransport: RTP/AVP/TCP;unicast\r\n",
        &cat,
    );
    assert_eq!(status(&o), 404, "channel 1 has two tracks besides video");
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=2",
        "Session: 0000000000000ABC\r\nTransport: RTP/AVP;multicast\r\n",
        &cat,
    );
    assert_eq!(status(&o), 461, "the video is on TCP");
    let o = c.send("PLAY", "rtsp://h/1", "Session: 0000000000000ABC\r\n", &cat);
    assert_eq!(
        o.action,
        Action::Play {
            channel: 1,
            transport: SessionTransport::Tcp { rtp: 0, rtcp: 1 },
            tracks: vec![(1, SessionTransport::Tcp { rtp: 2, rtcp: 3 })],
        }
    );
    // The video set up again on the audio's channels: the audio is gone.
    let mut c2 = Client::new(true, false);
    for (i, (url, ch)) in [
        ("trackID=0", "0-1"),
        ("trackID=1", "2-3"),
        ("trackID=0", "2-3"),
    ]
    .into_iter()
    .enumerate()
    {
        let session = if i == 0 {
            ""
        } else {
            "Session: 0000000000000ABC\r\n"
        };
        let o = c2.send(
            "SETUP",
            &format!("rtsp://h/1/{url}"),
            &format!("{session}Transport: RTP/AVP/TCP;unicast;interleaved={ch}\r\n"),
            &cat,
        );
        assert_eq!(status(&o), 200);
    }
    assert!(c2.conn.session().unwrap().tracks.is_empty());

    // Multicast: the track's own group and port; a track with no multicast
    // destination cannot be set up that way.
    let mut c = Client::new(true, false);
    c.send(
        "SETUP",
        "rtsp://h/1/trackID=0",
        "Transport: RTP/AVP;multicast\r\n",
        &cat,
    );
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=1",
        "Session: 0000000000000ABC\r\nTransport: RTP/AVP;multicast;destination=198.18.9.9\r\n",
        &cat,
    );
    assert_eq!(
        header(&o, &headers::TRANSPORT),
        "RTP/AVP;multicast;destination=239.255.77.1;port=7002-7003;ttl=4"
    );
    let o = c.send(
        "SETUP",
        "rtsp://h/1/trackID=2",
        "Session: 0000000000000ABC\r\nTransport: RTP/AVP;multicast\r\n",
        &cat,
    );
    assert_eq!(status(&o), 461);
    let o = c.send("PLAY", "rtsp://h/1", "Session: 0000000000000ABC\r\n", &cat);
    assert_eq!(
        o.action,
        Action::Play {
            channel: 1,
            transport: SessionTransport::Multicast(group()),
            tracks: vec![(1, SessionTransport::Multicast(audio_group()))],
        }
    );
}
