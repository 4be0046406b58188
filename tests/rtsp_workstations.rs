//! Workstations over RTSP: ffmpeg over TCP interleaved and multicast,
//! fifty TCP clients, a client that stops reading, authentication, transport
//! rules and malformed requests.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::rtsp::{Client, Packet};
use common::{Decoder, Netns};

const URL: &str = "rtsp://127.0.0.1:8554/1";

fn site(protocol: &str, rtsp_extra: &str) -> String {
    format!(
        r#"
[[server]]
name = "rec"
password = "pw"
protocol = "{protocol}"
control = "127.0.0.1:8080"
[server.rtsp]
listen = "127.0.0.1:8554"
user = "admin"
{rtsp_extra}
[server.multicast]
address = "239.255.60.1"
port = 5000
interface = "127.0.0.1"
ttl = 1
[server.ingest]
reconnect_min = "100ms"
reconnect_max = "500ms"
[[server.channel]]
id = 1
name = "lobby"
source = "rtsp://127.0.0.1:9001/stream"
"#
    )
}

/// A relay on `site` fed by an RTSP camera playing `clip`, streaming.
fn relay(
    ns: &Netns,
    dir: &std::path::Path,
    site_text: &str,
    clip: &std::path::Path,
) -> (common::Proc, common::Proc) {
    let camera = common::start_rtsp_camera(ns, clip, "127.0.0.1:9001");
    let site = common::write_site(dir, site_text);
    let relay = common::start_mcrelay(ns, dir, &site, "rec");
    common::wait_camera_state(ns, 1, "streaming", Duration::from_secs(15));
    (relay, camera)
}

fn creds() -> Option<(&'static str, &'static str)> {
    Some(("admin", "pw"))
}

/// The README's check: `mcrelay demo` running, ffmpeg plays channel 1 over
/// RTSP with TCP interleaved and with multicast; no credentials, no picture.
#[test]
fn demo_plays_over_rtsp_tcp_and_multicast() {
    let ns = Netns::new("rtspdemo");
    let dir = common::tempdir();
    let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let mut cmd = ns.command(common::mcrelay());
    cmd.arg("demo")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let mut demo = common::Proc::spawn(cmd, "mcrelay demo");
    common::wait_http(&ns, "127.0.0.1:8080", &mut demo, dir.path());
    common::wait_camera_state(&ns, 1, "streaming", Duration::from_secs(15));

    let url = "rtsp://admin:demo@127.0.0.1:8554/1";
    // The pictures: channel 1's sound is checked with real cameras in
    // camera_audio_reaches_workstations.
    let video = ["-map", "0:v"];
    let tcp = Decoder::start_with(
        &ns,
        dir.path(),
        "tcp",
        &["-rtsp_transport", "tcp"],
        url,
        &video,
        10,
    );
    let mc = Decoder::start_with(
        &ns,
        dir.path(),
        "mc",
        &["-rtsp_transport", "udp_multicast"],
        url,
        &video,
        10,
    );
    let st = common::wait_for(Duration::from_secs(10), || {
        let s = common::status_detail(&ns, "demo");
        let c = &s["channels"][0]["clients"];
        (c["tcp"] == 1 && c["multicast"] == 1).then_some(s)
    })
    .expect("one TCP and one multicast workstation in /status");
    let list = st["channels"][0]["clients"]["list"].as_array().unwrap();
    assert!(list.iter().any(
        |c| c["transport"] == "tcp" && c["address"].as_str().unwrap().starts_with("127.0.0.1:")
    ));
    for (what, d) in [("tcp", tcp), ("udp_multicast", mc)] {
        // The multicast viewer joins the group mid-GOP; the TCP one starts
        // at the cached key frame.
        let (frames, errors) = if what == "tcp" {
            d.finish(Duration::from_secs(40))
        } else {
            d.finish_joined_mid_gop(Duration::from_secs(40))
        };
        assert!(frames >= 240, "{what}: {frames} frames; {errors:?}");
        assert!(errors.is_empty(), "{what}: {errors:?}");
    }

    let unauth = ns.run(|| {
        Client::connect("127.0.0.1:8554", None)
            .unwrap()
            .request("DESCRIBE", URL, &[])
            .unwrap()
    });
    assert_eq!(unauth.status, 401);
    assert!(
        unauth
            .header("WWW-Authenticate")
            .unwrap()
            .starts_with("Digest realm=\"mcrelay\"")
    );
    let wrong = ns.run(|| {
        Client::connect("127.0.0.1:8554", Some(("admin", "nope")))
            .unwrap()
            .request("DESCRIBE", URL, &[])
            .unwrap()
    });
    assert_eq!(wrong.status, 401);
    let (_, metrics) = ns
        .run(|| common::http_get("127.0.0.1:8080", "/metrics"))
        .unwrap();
    assert!(common::metric(&metrics, "mcrelay_rtsp_unauthorized_total") >= 2.0);
    assert!(common::metric(&metrics, "mcrelay_tcp_bytes_total") > 100_000.0);
}

/// Reads `secs` seconds of packets from a TCP client.
fn read_for(c: &mut Client, secs: u64) -> Vec<Packet> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut v = Vec::new();
    while Instant::now() < end {
        v.push(c.read_packet().expect("packet"));
    }
    v
}

fn assert_contiguous(who: &str, p: &[Packet]) {
    for w in p.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "{who}: gap {} -> {}",
            w[0].seq,
            w[1].seq
        );
    }
}

#[test]
fn fifty_tcp_clients_receive_identical_packets() {
    let ns = Netns::new("fifty");
    let dir = common::tempdir();
    let (_relay, _camera) = relay(
        &ns,
        dir.path(),
        &site("tcp", ""),
        &common::clip("camera-h264.h264"),
    );
    let go = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let go = go.clone();
            ns.spawn(move || {
                let mut c = Client::connect("127.0.0.1:8554", creds()).unwrap();
                let play = c.play_tcp(URL).unwrap();
                assert_eq!(play.status, 200, "{play:?}");
                while !go.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let packets = read_for(&mut c, 5);
                (play, packets, c)
            })
        })
        .collect();
    let st = common::wait_for(Duration::from_secs(20), || {
        let s = common::status_detail(&ns, "pw");
        (s["channels"][0]["clients"]["tcp"] == 50).then_some(s)
    })
    .expect("50 TCP clients playing");
    assert_eq!(
        st["channels"][0]["clients"]["list"]
            .as_array()
            .unwrap()
            .len(),
        50
    );
    go.store(true, Ordering::Relaxed);
    let results: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();

    let reference: std::collections::HashMap<u16, &Vec<u8>> =
        results[0].1.iter().map(|p| (p.seq, &p.bytes)).collect();
    for (i, (play, packets, _)) in results.iter().enumerate() {
        assert!(packets.len() > 100, "client {i}: {} packets", packets.len());
        assert_contiguous(&format!("client {i}"), packets);
        // It started at a key frame, with the packet RTP-Info named.
        let info = play.header("RTP-Info").expect("RTP-Info");
        assert!(
            info.contains(&format!("seq={};", packets[0].seq)),
            "client {i}: {info} vs first seq {}",
            packets[0].seq
        );
        assert_eq!(
            packets[0].bytes[12] & 0x1f,
            24,
            "client {i} starts with the key frame's STAP-A"
        );
        let mut common_packets = 0;
        for p in packets {
            if let Some(r) = reference.get(&p.seq) {
                assert_eq!(
                    *r, &p.bytes,
                    "client {i}: packet {} differs from client 0's",
                    p.seq
                );
                common_packets += 1;
            }
        }
        assert!(
            common_packets > 100,
            "client {i} overlaps client 0 by only {common_packets} packets"
        );
    }
}

#[test]
fn a_stalled_client_does_not_hurt_the_others_or_multicast() {
    let ns = Netns::new("stall");
    let dir = common::tempdir();
    // 2 Mbit/s: a stalled client fills its buffers within a second.
    let clip = common::make_clip(dir.path(), "1280x720", "2M", 10);
    let (relay, _camera) = relay(
        &ns,
        dir.path(),
        &site(
            "rtp-multicast",
            "stall_timeout = \"2s\"\nsend_buffer = 65536",
        ),
        &clip,
    );
    let pid = relay.pid();
    let base_rss = common::rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));

    let s = stop.clone();
    let multicast = ns.spawn(move || {
        let sock = common::join(Ipv4Addr::new(239, 255, 60, 1), 5002);
        let mut seqs = Vec::new();
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf)
                && n >= 12
            {
                seqs.push(u16::from_be_bytes([buf[2], buf[3]]));
            }
        }
        seqs
    });
    let readers: Vec<_> = (0..10)
        .map(|_| {
            ns.spawn(|| {
                let mut c = Client::connect("127.0.0.1:8554", creds()).unwrap();
                assert_eq!(c.play_tcp(URL).unwrap().status, 200);
                let packets = read_for(&mut c, 8);
                (packets, c)
            })
        })
        .collect();
    // The client that never reads: a tiny receive buffer, PLAY, then nothing.
    let stalled = ns.run(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(
            &"127.0.0.1:8554"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        let mut c = Client::from_stream(s.into(), creds()).unwrap();
        assert_eq!(c.play_tcp(URL).unwrap().status, 200);
        c
    });
    let mut max_rss = base_rss;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(9) {
        max_rss = max_rss.max(common::rss_kib(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    let results: Vec<_> = readers.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let mc = multicast.join().unwrap();

    let (_, metrics) = ns
        .run(|| common::http_get("127.0.0.1:8080", "/metrics"))
        .unwrap();
    let st = common::get_json(&ns, "/status");
    for (i, (packets, _)) in results.iter().enumerate() {
        assert!(packets.len() > 500, "reader {i}: {} packets", packets.len());
        assert_contiguous(&format!("reader {i}"), packets);
    }
    assert!(
        mc.len() > 1000,
        "multicast receiver got {} packets",
        mc.len()
    );
    for w in mc.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "multicast gap");
    }
    assert_eq!(
        common::metric(&metrics, "mcrelay_multicast_skipped_frames_total"),
        0.0
    );
    assert_eq!(
        common::metric(&metrics, "mcrelay_tcp_stall_disconnects_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        st["channels"][0]["clients"]["tcp"], 10,
        "the stalled client was dropped"
    );
    assert!(
        max_rss < base_rss + 32 * 1024,
        "RSS grew from {base_rss} KiB to {max_rss} KiB"
    );
    drop(stalled);
}

#[test]
fn multicast_setup_uses_the_servers_group_and_tcp_servers_refuse_it() {
    let ns = Netns::new("rtspmc");
    let dir = common::tempdir();
    let (_relay, _camera) = relay(
        &ns,
        dir.path(),
        &site("rtp-multicast", ""),
        &common::clip("camera-h264.h264"),
    );
    let r = ns.run(|| {
        let mut c = Client::connect("127.0.0.1:8554", creds()).unwrap();
        c.request(
            "SETUP",
            &format!("{URL}/trackID=0"),
            &[(
                "Transport",
                "RTP/AVP;multicast;destination=239.9.9.9;port=7000-7001;ttl=99",
            )],
        )
        .unwrap()
    });
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("Transport"),
        Some("RTP/AVP;multicast;destination=239.255.60.1;port=5002-5003;ttl=1")
    );

    let ns2 = Netns::new("rtsptcp");
    let dir2 = common::tempdir();
    let (_relay2, _camera2) = relay(
        &ns2,
        dir2.path(),
        &site("tcp", ""),
        &common::clip("camera-h264.h264"),
    );
    let r = ns2.run(|| {
        let mut c = Client::connect("127.0.0.1:8554", creds()).unwrap();
        c.request(
            "SETUP",
            &format!("{URL}/trackID=0"),
            &[("Transport", "RTP/AVP;multicast")],
        )
        .unwrap()
    });
    assert_eq!(r.status, 461);
    assert_eq!(
        r.header("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=0-1")
    );
}

#[test]
fn malformed_requests_get_an_error_or_a_disconnect() {
    let ns = Netns::new("rtspbad");
    let dir = common::tempdir();
    let (mut relay, _camera) = relay(
        &ns,
        dir.path(),
        &site("tcp", ""),
        &common::clip("camera-h264.h264"),
    );

    /// Sends raw bytes; returns the status of the reply, or None if the
    /// server closed the connection.
    fn raw(bytes: Vec<u8>) -> Option<u16> {
        let mut c = Client::connect("127.0.0.1:8554", None).unwrap();
        // Writing may fail once the server has answered and closed.
        let _ = c.send_raw(&bytes);
        c.read_response().ok().map(|r| r.status)
    }
    /// What is sent, and the replies allowed (None: the server closed).
    type Case = (&'static str, Vec<u8>, &'static [Option<u16>]);
    let cases: Vec<Case> = vec![
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\xff\xfe garbage\r\n\r\n".to_vec(),
            &[Some(400), None],
        ),
        (
            "HTTP",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[Some(400), None],
        ),
        (
            "1 MB header",
            {
                let mut v =
                    b"DESCRIBE rtsp://127.0.0.1:8554/1 RTSP/1.0\r\nCSeq: 1\r\nX-Big: ".to_vec();
                v.extend(std::iter::repeat_n(b'a', 1 << 20));
                v.extend_from_slice(b"\r\n\r\n");
                v
            },
            &[Some(413), None],
        ),
        (
            "many headers",
            {
                let mut v = b"OPTIONS rtsp://127.0.0.1:8554/1 RTSP/1.0\r\nCSeq: 1\r\n".to_vec();
                for i in 0..200 {
                    v.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
                }
                v.extend_from_slice(b"\r\n");
                v
            },
            &[Some(400), None],
        ),
        (
            "missing CSeq",
            b"OPTIONS rtsp://127.0.0.1:8554/1 RTSP/1.0\r\n\r\n".to_vec(),
            &[Some(400)],
        ),
        (
            "interleaved data first",
            b"$\x01\x00\x04abcdOPTIONS rtsp://127.0.0.1:8554/1 RTSP/1.0\r\nCSeq: 1\r\n\r\n"
                .to_vec(),
            &[Some(200)],
        ),
        (
            "no credentials",
            b"DESCRIBE rtsp://127.0.0.1:8554/1 RTSP/1.0\r\nCSeq: 1\r\n\r\n".to_vec(),
            &[Some(401)],
        ),
        (
            "unknown channel",
            b"OPTIONS rtsp://127.0.0.1:8554/nope RTSP/1.0\r\nCSeq: 1\r\n\r\n".to_vec(),
            &[Some(200)],
        ),
        (
            "bad version",
            b"OPTIONS rtsp://127.0.0.1:8554/1 RTSP/7.0\r\nCSeq: 1\r\n\r\n".to_vec(),
            &[Some(505), Some(400), None],
        ),
    ];
    for (what, bytes, allowed) in cases {
        let got = ns.run(move || raw(bytes));
        assert!(
            allowed.contains(&got),
            "{what}: got {got:?}, allowed {allowed:?}"
        );
    }
    // A request cut in the middle: the client goes away.
    ns.run(|| {
        let mut c = Client::connect("127.0.0.1:8554", None).unwrap();
        c.send_raw(b"DESCRIBE rtsp://127.0.0.1:8554/1 RTS").unwrap();
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(c.read_response().is_err(), "no reply to half a request");
    });
    // Interleaved RTCP from a playing client is read and dropped.
    let packets = ns.run(|| {
        let mut c = Client::connect("127.0.0.1:8554", creds()).unwrap();
        assert_eq!(c.play_tcp(URL).unwrap().status, 200);
        c.send_raw(b"$\x01\x00\x08\x81\xc9\x00\x01\x00\x00\x00\x01")
            .unwrap();
        read_for(&mut c, 2)
    });
    assert!(packets.len() > 20);
    assert!(relay.is_running());
    assert_eq!(common::get_json(&ns, "/health")["status"], "ok");
    let log = std::fs::read_to_string(dir.path().join("mcrelay-rec.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

/// A client that reads slower than the stream falls a ring behind: it skips
/// to the next key frame (counted) instead of stalling anyone, and is not
/// disconnected while it keeps reading.
#[test]
fn a_slow_client_skips_to_the_next_key_frame() {
    let ns = Netns::new("slow");
    let dir = common::tempdir();
    let clip = common::make_clip(dir.path(), "1280x720", "2M", 10);
    let (_relay, _camera) = relay(
        &ns,
        dir.path(),
        &site("tcp", "stall_timeout = \"3s\"\nsend_buffer = 65536"),
        &clip,
    );
    let received = ns.run(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(16384).unwrap();
        s.connect(
            &"127.0.0.1:8554"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        let mut c = Client::from_stream(s.into(), creds()).unwrap();
        assert_eq!(c.play_tcp(URL).unwrap().status, 200);
        // About 80 KB/s against a 250 KB/s stream, for 12 s...
        let end = Instant::now() + Duration::from_secs(12);
        let mut got = Vec::new();
        while Instant::now() < end {
            c.buffer_some(8192).unwrap();
            got.extend(c.buffered_packets());
            std::thread::sleep(Duration::from_millis(100));
        }
        // ...then at full speed for 3 s.
        got.extend(read_for(&mut c, 3));
        got
    });
    let (_, metrics) = ns
        .run(|| common::http_get("127.0.0.1:8080", "/metrics"))
        .unwrap();
    assert!(
        common::metric(&metrics, "mcrelay_tcp_key_frame_skips_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        common::metric(&metrics, "mcrelay_tcp_stall_disconnects_total"),
        0.0
    );
    // Wherever the sequence jumps, it resumes at a key frame (its STAP-A).
    let mut gaps = 0;
    for w in received.windows(2) {
        if w[1].seq != w[0].seq.wrapping_add(1) {
            gaps += 1;
            assert_eq!(
                w[1].bytes[12] & 0x1f,
                24,
                "resumed at seq {} which is not a key frame's first packet",
                w[1].seq
            );
        }
    }
    assert!(gaps >= 1, "the client never skipped");
    assert!(received.len() > 100);
    let st = common::get_json(&ns, "/status");
    assert_eq!(
        st["channels"][0]["clients"]["tcp"], 0,
        "the client has gone"
    );
}

/// Whether an RTP packet (H.264) starts a key frame: the parameter sets
/// (alone or in a STAP-A) or an IDR slice (alone or an FU-A's start).
fn starts_key_frame(p: &[u8]) -> bool {
    if p.len() < 14 {
        return false;
    }
    match p[12] & 0x1f {
        5 | 7 => true,
        24 => p.len() > 15 && p[15] & 0x1f == 7,
        28 => p[13] & 0x80 != 0 && p[13] & 0x1f == 5,
        _ => false,
    }
}

/// GStreamer's RTSP client over TCP joining in the middle of a 2 s GOP, as
/// a workstation built on GStreamer does: it gets the cached key frame at
/// once and decodes from it, and its decoder sees presentation times that
/// only increase. GStreamer's jitter buffer derives them from when packets
/// arrive: a burst of a second of cached frames made it stamp them alike,
/// and its decoder logged "decreasing timestamp" for most of them.
#[test]
fn gstreamer_joins_mid_gop_with_increasing_timestamps() {
    let ns = Netns::new("gstmid");
    let dir = common::tempdir();
    let clip = common::make_clip_with_gop(dir.path(), "640x360", "1M", 12, 50);
    let (_relay, _camera) = relay(&ns, dir.path(), &site("rtp-multicast", ""), &clip);
    let url = "rtsp://127.0.0.1:8554/1";
    for (i, wait_ms) in [800u64, 1100].into_iter().enumerate() {
        // Join the group to see where the GOP starts, then start GStreamer
        // about a second into it.
        ns.run(|| {
            let sock = common::join(Ipv4Addr::new(239, 255, 60, 1), 5002);
            let mut buf = [0u8; 2048];
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(n) = sock.recv(&mut buf)
                    && starts_key_frame(&buf[..n])
                {
                    return;
                }
            }
            panic!("no key frame on the group in 5 s");
        });
        std::thread::sleep(Duration::from_millis(wait_ms));
        let gst = common::GstClient::start(&ns, dir.path(), &i.to_string(), url, ("admin", "pw"));
        let report = gst.finish(6);
        let log = common::plain_log(&dir.path().join("mcrelay-rec.log"));
        let cached: usize = log
            .lines()
            .filter(|l| l.contains("TCP client playing"))
            .filter_map(|l| l.split("cached_frames=").nth(1)?.trim().parse().ok())
            .next_back()
            .expect("the relay logged the client");
        // GStreamer plays within about 50 ms: 21 and 29 frames in. (A
        // burst of 17 or more made it warn.)
        assert!(
            cached >= 18,
            "client {i} joined {cached} frames into the GOP: not the case under test"
        );
        assert_eq!(
            report.decreasing, 0,
            "client {i} ({cached} cached frames): {:#?}",
            report.warnings
        );
        // It decoded from the cached key frame on, at the stream's rate
        // (6 s, less GStreamer's start-up and its 2 s jitter buffer).
        assert!(
            report.pts.len() >= 75,
            "client {i} decoded {} frames; warnings: {:#?}",
            report.pts.len(),
            report.warnings
        );
        for w in report.pts.windows(2) {
            assert!(w[1] > w[0], "client {i}: pts {} then {}", w[0], w[1]);
        }
    }
}
