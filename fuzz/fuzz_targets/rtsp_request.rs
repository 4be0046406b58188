//! Arbitrary bytes from a workstation, in arbitrary pieces, through the
//! request reader and the connection state machine (with Digest
//! authentication on). Whatever arrives: an error or a response, never a
//! panic; every response is well formed and echoes the CSeq it was given.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mcrelay::config::{Destination, Secret};
use mcrelay::serve::auth::Authenticator;
use mcrelay::serve::request::{Incoming, RequestReader};
use mcrelay::serve::session::{Catalog, ChannelEntry, Connection, Refusal};

struct Cat;

impl Catalog for Cat {
    fn find(&self, key: &str) -> Option<ChannelEntry> {
        (key == "1" || key == "cam").then(|| ChannelEntry {
            id: 1,
            sdp: Some("v=0\r\n".into()),
            multicast: Some(Destination {
                group: Ipv4Addr::new(239, 1, 1, 1),
                port: 5000,
                ttl: 1,
            }),
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
