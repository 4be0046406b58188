//! A camera dies and comes back: the multicast stream resumes on the same
//! group with the same SSRC, sequence numbers continue without a gap and
//! timestamps continue by the real time that passed. RTCP sender reports
//! describe the same stream. The log says what the session delivered and
//! how long the camera was gone.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Netns;

const SITE: &str = r#"
[[server]]
name = "rec"
password = "test"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.30.1"
port = 7000
interface = "127.0.0.1"
ttl = 1
[server.ingest]
stall_timeout = "2s"
reconnect_min = "100ms"
reconnect_max = "300ms"
[[server.channel]]
id = 1
source = "tcp://127.0.0.1:9001"
codec = "h264"
"#;

#[derive(Debug, Clone, Copy)]
struct Rx {
    seq: u16,
    ts: u32,
    ssrc: u32,
    at: Instant,
}

#[test]
fn camera_restart_continues_sequence_and_timestamps() {
    let ns = Netns::new("restart");
    let dir = common::tempdir();
    let site = common::write_site(dir.path(), SITE);
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    let group = Ipv4Addr::new(239, 255, 30, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let stop_rx = stop.clone();
    // Channel 1: RTP on 7002, RTCP on 7003.
    let rtp_rx = ns.spawn(move || {
        let sock = common::join(group, 7002);
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop_rx.load(Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                assert!(n >= 12 && buf[0] >> 6 == 2, "not RTP");
                got.push(Rx {
                    seq: u16::from_be_bytes([buf[2], buf[3]]),
                    ts: u32::from_be_bytes(buf[4..8].try_into().unwrap()),
                    ssrc: u32::from_be_bytes(buf[8..12].try_into().unwrap()),
                    at: Instant::now(),
                });
            }
        }
        got
    });
    let stop_rtcp = stop.clone();
    let rtcp_rx = ns.spawn(move || {
        let sock = common::join(group, 7003);
        let mut srs = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop_rtcp.load(Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                srs.push(buf[..n].to_vec());
            }
        }
        srs
    });

    let mut camera = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    common::wait_camera_state(&ns, 1, "streaming", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    camera.kill();
    let down_at = Instant::now();
    common::wait_for(Duration::from_secs(10), || {
        let st = common::get_json(&ns, "/status");
        (st["channels"][0]["camera"]["state"] != "streaming").then_some(())
    })
    .expect("the relay notices the camera is gone");
    std::thread::sleep(Duration::from_secs(2));
    let _camera = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    let ch = common::wait_camera_state(&ns, 1, "streaming", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let got = rtp_rx.join().unwrap();
    let srs = rtcp_rx.join().unwrap();

    assert!(ch["camera"]["reconnects"].as_u64().unwrap() >= 1, "{ch}");
    let detail = common::status_detail(&ns, "test");
    let err = detail["channels"][0]["camera"]["last_error"]
        .as_str()
        .unwrap();
    assert!(
        err.contains("closed the connection") || err.contains("Connection refused"),
        "{ch}"
    );

    // The clip is about 25 packets per second; 6 s of streaming.
    assert!(got.len() > 120, "only {} packets received", got.len());
    let ssrc = got[0].ssrc;
    assert!(got.iter().all(|p| p.ssrc == ssrc), "SSRC changed");
    // Every packet follows the previous one: no gap, no reset, across the outage.
    for w in got.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "sequence gap {} -> {}",
            w[0].seq,
            w[1].seq
        );
    }
    // The outage: the longest silence, and the timestamp jump across it.
    let (i, gap) = got
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1].at - w[0].at))
        .max_by_key(|(_, g)| *g)
        .unwrap();
    assert!(
        gap >= Duration::from_secs(2),
        "no outage seen (longest gap {gap:?})"
    );
    assert!(got[i].at <= down_at + Duration::from_millis(200));
    let ts_jump = got[i + 1].ts.wrapping_sub(got[i].ts) as f64 / 90_000.0;
    let real = gap.as_secs_f64();
    assert!(
        (ts_jump - real).abs() < 0.5,
        "timestamps moved {ts_jump:.3} s across a {real:.3} s outage"
    );
    // Timestamps never go backwards (modulo 2^32) anywhere.
    for w in got.windows(2) {
        assert!(
            (w[1].ts.wrapping_sub(w[0].ts) as i32) >= 0,
            "timestamp went back"
        );
    }

    // RTCP: sender reports for the same SSRC, the first at stream start.
    let reports: Vec<&Vec<u8>> = srs
        .iter()
        .filter(|p| p.len() >= 28 && p[1] == 200)
        .collect();
    assert!(reports.len() >= 2, "{} sender reports", reports.len());
    for r in &reports {
        assert_eq!(u32::from_be_bytes(r[4..8].try_into().unwrap()), ssrc);
        let packets = u32::from_be_bytes(r[20..24].try_into().unwrap());
        assert!(packets > 0 && packets as usize <= got.len() + 100);
    }
}

/// The log of an RTSP camera's restart: the end of the session says what it
/// delivered (the RTSP client counts no connection bytes, so not "after 0
/// bytes"), and the first picture after it says how long the pictures
/// stopped.
#[test]
fn an_rtsp_camera_restart_is_logged_with_what_it_sent_and_the_outage() {
    let ns = Netns::new("rtsprestart");
    let dir = common::tempdir();
    let site = common::write_site(
        dir.path(),
        &SITE.replace("tcp://127.0.0.1:9001", "rtsp://127.0.0.1:9001/stream"),
    );
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    let clip = common::clip("camera-h264.h264");
    let mut camera = common::start_rtsp_camera(&ns, &clip, "127.0.0.1:9001");
    common::wait_camera_state(&ns, 1, "streaming", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    camera.kill();
    let down_at = Instant::now();
    common::wait_for(Duration::from_secs(10), || {
        let st = common::get_json(&ns, "/status");
        (st["channels"][0]["camera"]["state"] != "streaming").then_some(())
    })
    .expect("the relay notices the camera is gone");
    std::thread::sleep(Duration::from_secs(2));
    let _camera = common::start_rtsp_camera(&ns, &clip, "127.0.0.1:9001");
    common::wait_camera_state(&ns, 1, "streaming", Duration::from_secs(10));
    let back_at = Instant::now();
    std::thread::sleep(Duration::from_millis(300));

    let log = common::plain_log(&dir.path().join("mcrelay-rec.log"));
    assert!(!log.contains("after 0 bytes"), "{log}");
    let ended = log
        .lines()
        .find(|l| l.contains("camera session ended") && l.contains("closed the RTSP session"))
        .unwrap_or_else(|| panic!("no session end logged:\n{log}"));
    // "... the camera closed the RTSP session after 78 pictures (97 kB of video) in 3.0 s ..."
    let pictures: u64 = ended
        .split("session after ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no picture count in: {ended}"));
    assert!(
        (50..=150).contains(&pictures),
        "about 3 s at 25 fps, logged {pictures}: {ended}"
    );
    let back = log
        .lines()
        .find(|l| l.contains("camera back after"))
        .unwrap_or_else(|| panic!("no reconnect logged:\n{log}"));
    let secs: f64 = back
        .split("camera back after ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no outage length in: {back}"));
    let outage = (back_at - down_at).as_secs_f64();
    assert!(
        secs >= 2.0 && secs <= outage + 0.5,
        "logged an outage of {secs} s; the camera was down about {outage:.1} s: {back}"
    );
}
