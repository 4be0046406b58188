//! Cameras that send bad input: garbage, a NAL unit cut in the middle,
//! interleaved frames with wrong lengths, an RTSP camera without video. Each
//! ends its session with an error that says what was wrong, the relay
//! reconnects, nothing panics, and a camera that recovers streams again.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::Netns;

const SITE: &str = r#"
[[server]]
name = "rec"
password = "test"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.40.1"
port = 8000
interface = "127.0.0.1"
ttl = 1
[server.ingest]
stall_timeout = "2s"
reconnect_min = "100ms"
reconnect_max = "300ms"
[[server.channel]]
id = 1
name = "garbage"
source = "tcp://127.0.0.1:9101"
codec = "h264"
[[server.channel]]
id = 2
name = "truncated, then good"
source = "tcp://127.0.0.1:9102"
codec = "h264"
[[server.channel]]
id = 3
name = "bad interleaved lengths"
source = "rtsp://127.0.0.1:9103/cam"
[[server.channel]]
id = 4
name = "no video"
source = "rtsp://127.0.0.1:9104/cam"
[[server.channel]]
id = 5
name = "not RTSP at all"
source = "rtsp://127.0.0.1:9105/cam"
"#;

/// Serves each connection on `port` with `f(connection number, stream)`
/// until `stop`.
fn serve(
    ns: &Netns,
    port: u16,
    stop: Arc<AtomicBool>,
    f: impl Fn(u32, TcpStream) + Send + Sync + 'static,
) -> Arc<AtomicU32> {
    let count = Arc::new(AtomicU32::new(0));
    let c = count.clone();
    let f = Arc::new(f);
    ns.spawn(move || {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let n = c.fetch_add(1, Ordering::Relaxed) + 1;
                    let f = f.clone();
                    std::thread::spawn(move || f(n, s));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    count
}

fn xorshift(seed: &mut u32) -> u8 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 17;
    *seed ^= *seed << 5;
    *seed as u8
}

/// Start codes followed by random bytes.
fn garbage(_: u32, mut s: TcpStream) {
    let mut seed = 0x2545_f491;
    let mut buf = Vec::new();
    for _ in 0..2000 {
        buf.extend_from_slice(&[0, 0, 1]);
        buf.extend((0..40).map(|_| xorshift(&mut seed)));
    }
    let _ = s.write_all(&buf);
    std::thread::sleep(Duration::from_secs(1));
}

/// The first two connections send the clip's start and close inside a NAL
/// unit; later ones send the clip paced, as a camera that recovered.
fn truncated_then_good(n: u32, mut s: TcpStream) {
    let clip = std::fs::read(common::clip("camera-h264.h264")).unwrap();
    if n <= 2 {
        let _ = s.write_all(&clip[..clip.len() / 7 + 13]);
        return;
    }
    let start = Instant::now();
    for (i, chunk) in clip.chunks(clip.len() / 250).enumerate() {
        let due = start + Duration::from_millis(40 * i as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if s.write_all(chunk).is_err() {
            return;
        }
    }
    std::thread::sleep(Duration::from_secs(5));
}

/// Reads one RTSP request; returns (method, CSeq).
fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let mut method = String::new();
    let mut cseq = String::new();
    let mut first = true;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Some((method, cseq));
        }
        if first {
            method = line.split(' ').next().unwrap_or_default().to_string();
            first = false;
        } else if let Some(v) = line.strip_prefix("CSeq:") {
            cseq = v.trim().to_string();
        }
    }
}

const H264_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=fake\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\na=control:trackID=0\r\n";
const AUDIO_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=fake\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:trackID=0\r\n";

/// A minimal RTSP server: answers the handshake with `sdp`, then after PLAY
/// sends `after_play` on the connection.
fn fake_rtsp(
    port: u16,
    sdp: &'static str,
    after_play: &'static [&'static [u8]],
) -> impl Fn(u32, TcpStream) + Send + Sync {
    move |_, s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while let Some((method, cseq)) = read_request(&mut r) {
            let extra = match method.as_str() {
                "OPTIONS" => "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n".to_string(),
                "DESCRIBE" => format!(
                    "Content-Base: rtsp://127.0.0.1:{port}/cam/\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n",
                    sdp.len()
                ),
                "SETUP" => "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 12345678;timeout=60\r\n".to_string(),
                "PLAY" => "Session: 12345678\r\n".to_string(),
                _ => "Session: 12345678\r\n".to_string(),
            };
            let body = if method == "DESCRIBE" { sdp } else { "" };
            if write!(w, "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{extra}\r\n{body}").is_err() {
                return;
            }
            if method == "PLAY" {
                for chunk in after_play {
                    let _ = w.write_all(chunk);
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::thread::sleep(Duration::from_secs(1));
                return;
            }
        }
    }
}

/// An RTP packet of `len` bytes on interleaved channel 0.
const VALID_RTP: &[u8] = &[
    b'$', 0, 0, 16, 0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x41, 0x9a, 0x01, 0x02,
];
/// Interleaved frames whose lengths are wrong: 4 bytes cannot hold an RTP
/// header; the last claims 65535 bytes and the connection ends first.
const BAD_LENGTHS: &[&[u8]] = &[
    VALID_RTP,
    &[b'$', 0, 0, 4, 0x80, 96, 0, 2],
    &[b'$', 0, 0xff, 0xff, 1, 2, 3],
];

#[test]
fn malformed_camera_input_is_an_error_then_a_reconnect() {
    let ns = Netns::new("malformed");
    let dir = common::tempdir();
    let stop = Arc::new(AtomicBool::new(false));
    let garbage_conns = serve(&ns, 9101, stop.clone(), garbage);
    let truncated_conns = serve(&ns, 9102, stop.clone(), truncated_then_good);
    let bad_rtsp_conns = serve(
        &ns,
        9103,
        stop.clone(),
        fake_rtsp(9103, H264_SDP, BAD_LENGTHS),
    );
    let _ = serve(&ns, 9104, stop.clone(), fake_rtsp(9104, AUDIO_SDP, &[]));
    let _ = serve(&ns, 9105, stop.clone(), |_, mut s: TcpStream| {
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        let _ =
            s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n\x00\xff garbage");
    });
    let site = common::write_site(dir.path(), SITE);
    let mut relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");

    // The camera that recovers streams.
    let ch2 = common::wait_camera_state(&ns, 2, "streaming", Duration::from_secs(20));
    assert!(ch2["camera"]["reconnects"].as_u64().unwrap() >= 2, "{ch2}");
    std::thread::sleep(Duration::from_secs(3));
    let status = common::status_detail(&ns, "test");
    stop.store(true, Ordering::Relaxed);
    assert!(relay.is_running(), "the relay died");

    let by_id = |id: u64| {
        status["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()
            .clone()
    };
    let expect = [
        (1, "malformed"),
        (3, "RTSP"),
        (4, "no H.264 or H.265 video stream (it offers: audio/pcmu)"),
        (5, "RTSP"),
    ];
    for (id, needle) in expect {
        let c = by_id(id);
        assert_ne!(c["camera"]["state"], "streaming", "{c}");
        assert!(
            c["camera"]["reconnects"].as_u64().unwrap() >= 2,
            "channel {id} did not retry: {c}"
        );
        let err = c["camera"]["last_error"].as_str().unwrap_or_default();
        assert!(
            err.contains(needle),
            "channel {id}: {err:?} should mention {needle:?}"
        );
    }
    for c in status["channels"].as_array().unwrap() {
        eprintln!("channel {}: {}", c["id"], c["camera"]["last_error"]);
    }
    assert!(garbage_conns.load(Ordering::Relaxed) >= 2);
    assert!(truncated_conns.load(Ordering::Relaxed) >= 3);
    assert!(bad_rtsp_conns.load(Ordering::Relaxed) >= 2);
    // The recovered channel produced pictures; the others none.
    assert!(by_id(2)["frames"].as_u64().unwrap() > 25);
    assert_eq!(by_id(4)["frames"], 0);
    let log = std::fs::read_to_string(dir.path().join("mcrelay-rec.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}
