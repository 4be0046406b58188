//! Arbitrary bytes from a workstation, in arbitrary pieces, through the
//! request reader and the connection state machine (with Digest
//! authentication on). Whatever arrives: an error or a response, never a
//! panic; every response is well formed and echoes the CSeq it was given;
//! the tracks of a session (the channel has two besides video) never share
//! an interleaved channel, and multicast ones go to the catalog's groups.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mcrelay::config::{Destination, Secret};
use mcrelay::serve::auth::Authenticator;
use mcrelay::serve::request::{Incoming, RequestReader};
use mcrelay::serve::session::{Catalog, ChannelEntry, Connection, Refusal, SessionTransport};

struct Cat;

fn group(port: u16) -> Destination {
    Destination {
        group: Ipv4Addr::new(239, 1, 1, 1),
        port,
        ttl: 1,
    }
}

impl Catalog for Cat {
    fn find(&self, key: &str) -> Option<ChannelEntry> {
        (key == "1" || key == "cam").then(|| ChannelEntry {
            id: 1,
            sdp: Some("v=0\r\n".into()),
            multicast: Some(group(5000)),
            tracks: vec![Some(group(7000)), None],
        })
    }
    fn admit(&self, _: u32) -> Result<(), Refusal> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, bytes)) = data.split_first() else {
        return;
    };
    let auth = (ctl & 1 == 0).then(|| {
        Arc::new(Authenticator::new(
            "admin".into(),
            Secret::new("pw".into()),
            ctl & 2 == 0,
            [1; 32],
        ))
    });
    let peer = std::net::IpAddr::from([198, 18, 0, 1]);
    let mut conn = Connection::new(
        auth,
        ctl & 4 == 0,
        Duration::from_secs(60),
        Instant::now(),
        peer,
        9,
    );
    let mut reader = RequestReader::new(4096, 32);
    let chunk = 1 + (ctl as usize >> 3) * 3;
    for piece in bytes.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.next_message() {
                Ok(Some(Incoming::Request(req))) => {
                    let out = conn.handle(&req, Instant::now(), 1_800_000_000, 42, &Cat);
                    let mut buf = Vec::new();
                    out.response.write(&mut buf).expect("a response serializes");
                    if let Some(s) = conn.session() {
                        let all = std::iter::once((0, s.transport)).chain(s.tracks.iter().copied());
                        let mut channels = Vec::new();
                        for (n, t) in all {
                            match t {
                                SessionTransport::Tcp { rtp, rtcp } => {
                                    channels.extend([rtp, rtcp]);
                                }
                                SessionTransport::Multicast(d) => {
                                    let want = if n == 0 { group(5000) } else { group(7000) };
                                    assert_eq!(d, want, "track {n}");
                                }
                            }
                        }
                        // The video's own pair may name one channel twice
                        // (interleaved=5-5 is the client's business); no
                        // track's channel is anyone else's.
                        let (video, tracks) = channels.split_at(channels.len().min(2));
                        let video = if matches!(s.transport, SessionTransport::Tcp { .. }) {
                            video
                        } else {
                            &[][..]
                        };
                        let tracks = if video.is_empty() { &channels[..] } else { tracks };
                        for (i, c) in tracks.iter().enumerate() {
                            assert!(!video.contains(c), "{channels:?}");
                            assert!(!tracks[i + 1..].contains(c), "{channels:?}");
                        }
                    }
                    if let Some(c) = req.header(&rtsp_types::headers::CSEQ) {
                        assert_eq!(
                            out.response
                                .header(&rtsp_types::headers::CSEQ)
                                .map(|v| v.as_str()),
                            Some(c.as_str().trim())
                        );
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
