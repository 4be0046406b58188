//! A LAN of namespaces (a camera host, recorder-1, failover-1 and a
//! workstation on a switch). recorder-1 is killed (kill -9), or its link
//! is cut, while the workstation's ffmpeg plays its channel from the SDP. failover-1 sees it
//! inaccessible for longer than its period with its group silent, takes
//! its channel and emits it on recorder-1's own group and port, continuing
//! its RTP stream: the same SSRC, sequence numbers and timestamps ahead of
//! the last ones heard. ffmpeg, never restarted, keeps decoding; a receiver
//! that logs the source of every packet sees one source at a time. A
//! healed recorder-1 hears failover-1 on its group and stays off it; a
//! recorder-1 whose control API is out of reach while its streams flow is
//! not taken over. failover-1's status page, in a headless chromium on the
//! workstation, shows recorder-1 move from the VMS servers to the broken
//! ones and failover-1 from standby to covering it.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::lan::Lan;
use common::{Decoder, Netns, Packet, PacketLog, Proc};

const SITE: &str = r#"
[site]
key = "5a17e0c3b9f84d21a6c0e7b3d9f2418c"

[site.failover]
poll_interval = "500ms"

[[server]]
name = "recorder-1"
password = "test"
protocol = "rtp-multicast"
control = "198.18.0.1:8080"
[server.multicast]
address = "239.255.50.1"
port = 7200
interface = "198.18.0.1"
ttl = 1
[server.failover]
failover_enabled = true
inaccessible_period = "3s"
[server.storage]
disks = ["DIR/rec1/disk1"]
segment = "2s"
[server.ingest]
reconnect_min = "100ms"
reconnect_max = "300ms"
[[server.channel]]
id = 1
source = "rtsp://198.18.0.10:8554/stream"
codec = "h264"

[[server]]
name = "failover-1"
password = "test"
protocol = "rtp-multicast"
control = "198.18.0.2:8080"
[server.multicast]
address = "239.255.50.100"
port = 7200
interface = "198.18.0.2"
ttl = 1
[server.failover]
use_as_failover_server = true
[server.storage]
disks = ["DIR/fo1/disk1"]
segment = "2s"
[server.ingest]
reconnect_min = "100ms"
reconnect_max = "300ms"
"#;

const PERIOD: Duration = Duration::from_secs(3);

fn start(
    ns: &Netns,
    dir: &std::path::Path,
    site: &std::path::Path,
    server: &str,
    addr: &str,
) -> Proc {
    let log = std::fs::File::create(dir.join(format!("mcrelay-{server}.log"))).unwrap();
    let mut cmd = ns.command(common::mcrelay());
    cmd.args(["run", "--site"])
        .arg(site)
        .args(["--server", server])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let mut p = Proc::spawn(cmd, server);
    common::wait_http(ns, addr, &mut p, dir);
    p
}

fn get(ns: &Netns, addr: &'static str, path: &'static str) -> Option<(u16, String)> {
    ns.run(move || common::http_get(addr, path).ok())
}

/// The LAN, its servers, a packet log and ffmpeg on the workstation,
/// recorder-1 emitting.
struct Site {
    lan: Lan,
    dir: tempfile::TempDir,
    rec1: Proc,
    _fo1: Proc,
    _camera: Proc,
    log: PacketLog,
    audio: PacketLog,
    decoder: Decoder,
}

const HOSTS: [(&str, &str); 4] = [
    ("cam", "198.18.0.10"),
    ("rec1", "198.18.0.1"),
    ("fo1", "198.18.0.2"),
    ("ws", "198.18.1.1"),
];

const REC1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const FO1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

impl Site {
    fn start(tag: &str) -> Site {
        Site::start_with(tag, SITE)
    }

    fn start_with(tag: &str, site_text: &str) -> Site {
        Site::start_on(Lan::new(tag, &HOSTS), site_text)
    }

    /// On `lan`, whose hosts are [`HOSTS`].
    fn start_on(lan: Lan, site_text: &str) -> Site {
        let dir = common::tempdir();
        for d in ["rec1/disk1", "fo1/disk1"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let site = common::write_site(
            dir.path(),
            &site_text.replace("DIR", &dir.path().display().to_string()),
        );
        let mut cmd = lan.host("cam").command(common::mcrelay());
        cmd.args(["camera", "--clip"])
            .arg(common::clip("camera-h264.h264"))
            .args(["--listen", "198.18.0.10:8554", "--audio"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let camera = Proc::spawn(cmd, "mcrelay camera");
        let rec1 = start(
            lan.host("rec1"),
            dir.path(),
            &site,
            "recorder-1",
            "198.18.0.1:8080",
        );
        let fo1 = start(
            lan.host("fo1"),
            dir.path(),
            &site,
            "failover-1",
            "198.18.0.2:8080",
        );
        // recorder-1 listens and asks before it emits; then its SDP.
        let ws = lan.host("ws");
        let sdp = common::wait_for(Duration::from_secs(20), || {
            let (code, body) = get(ws, "198.18.0.1:8080", "/channels/1.sdp")?;
            // Complete, as a workstation that opens the channel later gets
            // it: the parameter sets and the sound (an SDP from before the
            // camera's first key frame has neither, and ffmpeg then misses
            // the PPS until one comes).
            (code == 200
                && body.contains("m=video")
                && body.contains("sprop-parameter-sets")
                && body.contains("m=audio"))
            .then_some(body)
        })
        .expect("recorder-1 never served its SDP");
        // recorder-1's group: the first address of the site.
        let group: Ipv4Addr = site_text
            .split("address = \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|a| a.parse().ok())
            .expect("no multicast address in the site");
        assert!(sdp.contains(&format!("c=IN IP4 {group}/1")), "{sdp}");
        let sdp_file = dir.path().join("ch1.sdp");
        std::fs::write(&sdp_file, &sdp).unwrap();
        // Channel 1: video on 7200 + 2, sound on 7200 + 2000 + 2.
        let log = PacketLog::start(ws, group, 7202, Ipv4Addr::new(198, 18, 1, 1));
        let audio = PacketLog::start(ws, group, 9202, Ipv4Addr::new(198, 18, 1, 1));
        let decoder = Decoder::start_with(
            ws,
            dir.path(),
            "takeover",
            &["-protocol_whitelist", "file,udp,rtp", "-f", "sdp"],
            sdp_file.to_str().unwrap(),
            &["-map", "0:v", "-fps_mode", "passthrough"],
            90,
        );
        std::thread::sleep(Duration::from_secs(5));
        let before = decoder.frames_so_far();
        if before < 60 {
            for f in ["mcrelay-recorder-1.log", "mcrelay-failover-1.log"] {
                eprintln!("== {f}\n{}", common::plain_log(&dir.path().join(f)));
            }
            let ffmpeg = common::plain_log(&dir.path().join("ffmpeg-takeover.log"));
            eprintln!(
                "== ffmpeg\n{:?}",
                common::FfmpegLog::parse(&ffmpeg).messages()
            );
        }
        assert!(
            before >= 60,
            "ffmpeg decoded {before} frames before the fault"
        );
        Site {
            lan,
            dir,
            rec1,
            _fo1: fo1,
            _camera: camera,
            log,
            audio,
            decoder,
        }
    }

    fn ws(&self) -> &Netns {
        self.lan.host("ws")
    }

    /// Waits until failover-1 says it covers recorder-1: how long it took.
    fn wait_covered(&self, since: Instant) -> Duration {
        common::wait_for(PERIOD + Duration::from_secs(10), || {
            let (code, body) = get(self.ws(), "198.18.0.2:8080", "/status")?;
            (code == 200 && body.contains("\"covering recorder-1\"")).then_some(since.elapsed())
        })
        .expect("failover-1 never covered recorder-1")
    }

    /// Stops the logs and ffmpeg: the video's packets, and ffmpeg's error
    /// lines; the sound's packets are in `Finished::audio`.
    fn finish(self) -> (Vec<Packet>, Vec<String>, Finished) {
        let (_, errors) = self.decoder.finish(Duration::from_secs(1));
        let audio = self.audio.finish();
        (
            self.log.finish(),
            errors,
            Finished {
                audio,
                dir: self.dir,
            },
        )
    }
}

/// What a test keeps after [`Site::finish`].
struct Finished {
    audio: Vec<Packet>,
    dir: tempfile::TempDir,
}

/// The packets from the first of failover-1 on: one stream with those
/// before (same SSRC, sequence number and timestamp ahead); returns the
/// first packet of failover-1 and the last one before it.
fn assert_one_stream(what: &str, got: &[Packet]) -> (Packet, Packet) {
    let first_fo1 = got
        .iter()
        .position(|p| p.from == FO1)
        .unwrap_or_else(|| panic!("{what}: no packet from failover-1 on recorder-1's group"));
    let (old, new) = got.split_at(first_fo1);
    assert!(
        old.len() > 100,
        "{what}: {} packets before the takeover",
        old.len()
    );
    assert!(
        old.iter().all(|p| p.from == REC1),
        "{what}: another source before the takeover"
    );
    let (last, first) = (old[old.len() - 1], new[0]);
    assert_continues(what, got, last, first);
    (first, last)
}

/// No sequence number goes back at the receiver (a second emitter's
/// stale packets would).
fn assert_seq_forward(what: &str, got: &[Packet]) {
    let back: Vec<(u16, u16)> = got
        .windows(2)
        .map(|w| (w[0].seq, w[1].seq))
        .filter(|(a, b)| b.wrapping_sub(*a) >= 32768)
        .collect();
    assert!(
        back.is_empty(),
        "{what}: sequence numbers went back: {back:?}"
    );
}

/// The whole log is one stream (one SSRC) and `first` continues `last`.
fn assert_continues(what: &str, got: &[Packet], last: Packet, first: Packet) {
    assert!(
        got.iter().all(|p| p.ssrc == last.ssrc),
        "{what}: the SSRC changed at the hand-over"
    );
    let seq_ahead = first.seq.wrapping_sub(last.seq);
    assert!(
        (1..32768).contains(&seq_ahead),
        "{what}: sequence {} after {} is not ahead",
        first.seq,
        last.seq
    );
    let ts_ahead = first.ts.wrapping_sub(last.ts);
    assert!(
        (1..1 << 31).contains(&ts_ahead),
        "{what}: timestamp {} after {} is not ahead",
        first.ts,
        last.ts
    );
    println!(
        "  {what}: SSRC {:08x} kept, sequence +{seq_ahead}, timestamp +{ts_ahead}, gap {:.3} s",
        last.ssrc,
        first.at.duration_since(last.at).as_secs_f64()
    );
}

/// The last switch from failover-1 back to recorder-1: one stream, and
/// recorder-1 alone after it; returns its first packet and the last of
/// failover-1.
fn assert_hand_back(what: &str, got: &[Packet]) -> (Packet, Packet) {
    let fo_end = got
        .iter()
        .rposition(|p| p.from == FO1)
        .unwrap_or_else(|| panic!("{what}: failover-1 never emitted"));
    let last = got[fo_end];
    let first = got[fo_end + 1..]
        .first()
        .copied()
        .unwrap_or_else(|| panic!("{what}: recorder-1 never emitted again"));
    assert!(
        got[fo_end + 1..].iter().all(|p| p.from == REC1),
        "{what}: failover-1 emitted after the hand-back"
    );
    assert_continues(what, got, last, first);
    (first, last)
}

#[test]
fn a_killed_recorder_is_covered_on_its_own_group_and_viewers_keep_decoding() {
    let mut s = Site::start("fok");
    let before = s.decoder.frames_so_far();
    s.rec1.kill();
    let killed = Instant::now();
    let took = s.wait_covered(killed);
    let at_takeover = s.decoder.frames_so_far();
    std::thread::sleep(Duration::from_secs(10));
    let after = s.decoder.frames_so_far() - at_takeover;
    let status = get(s.ws(), "198.18.0.2:8080", "/status").unwrap().1;
    let metrics = get(s.ws(), "198.18.0.2:8080", "/metrics").unwrap().1;
    // The operator's view from the workstation: the three folders from the
    // first server that answers (recorder-1 does not).
    let site_path = s.dir.path().join("site.toml");
    let tree = s
        .ws()
        .command(common::mcrelay())
        .args(["status", "--site"])
        .arg(&site_path)
        .output()
        .unwrap();
    let tree_text = String::from_utf8_lossy(&tree.stdout).into_owned();
    assert!(tree.status.success(), "{tree:?}");
    assert!(
        tree_text.contains("Broken VMS servers\n    recorder-1: inaccessible for")
            && tree_text.contains("(covered by failover-1)")
            && tree_text.contains("Failover servers\n    failover-1: covering recorder-1"),
        "{tree_text}"
    );
    // A failback for a server that is down says so.
    let fb = s
        .ws()
        .command(common::mcrelay())
        .args(["failback", "--site"])
        .arg(&site_path)
        .args(["--server", "recorder-1"])
        .output()
        .unwrap();
    assert!(!fb.status.success(), "{fb:?}");
    let (got, errors, fin) = s.finish();
    let (first, last) = assert_one_stream("video", &got);
    assert_one_stream("audio", &fin.audio);
    assert!(
        got.iter()
            .skip_while(|p| p.from != FO1)
            .all(|p| p.from == FO1),
        "recorder-1 and failover-1 both on the group"
    );
    let first_after = first.at.duration_since(killed);
    // failover-1's metrics: one takeover, its time (decided to the first
    // packet), the site's states as it sees them.
    let takeover_s = metric(
        &metrics,
        "mcrelay_failover_takeover_seconds{server=\"recorder-1\"}",
    );
    assert_eq!(
        metric(
            &metrics,
            "mcrelay_failover_takeovers_total{server=\"recorder-1\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        takeover_s.is_some_and(|t| t > 0.0 && t < first_after.as_secs_f64()),
        "takeover time {takeover_s:?} of {first_after:?}"
    );
    for (server, state) in [("recorder-1", "broken"), ("failover-1", "covering")] {
        let series =
            format!("mcrelay_failover_server_state{{server=\"{server}\",state=\"{state}\"}}");
        assert_eq!(metric(&metrics, &series), Some(1.0), "{series}\n{metrics}");
    }
    println!(
        "  failover-1's mcrelay_failover_takeover_seconds: {:.3}",
        takeover_s.unwrap_or_default()
    );
    println!(
        "kill -9: first packet of failover-1 {:.2} s after the kill (status said covering after {:.2} s); \
         gap on the group {:.2} s; ffmpeg {before} frames before the kill, {after} in the 10 s after; {} error lines",
        first_after.as_secs_f64(),
        took.as_secs_f64(),
        first.at.duration_since(last.at).as_secs_f64(),
        errors.len()
    );
    assert!(
        first_after <= PERIOD + Duration::from_secs(2),
        "failover-1 emitted {first_after:?} after the kill"
    );
    assert!(
        after >= 225,
        "ffmpeg decoded {after} frames in the 10 s after the takeover: {errors:?}"
    );
    // The site as failover-1 sees it: recorder-1 broken, covered by it.
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let broken = &v["site"]["broken"];
    assert_eq!(broken[0]["name"], "recorder-1", "{v}");
    assert_eq!(broken[0]["cover"], "covered by failover-1", "{v}");
}

#[test]
fn a_cut_link_is_covered_and_the_healed_recorder_stays_off_its_group() {
    let s = Site::start("fol");
    s.lan.set_link("rec1", false);
    let cut = Instant::now();
    let took = s.wait_covered(cut);
    let at_takeover = s.decoder.frames_so_far();
    std::thread::sleep(Duration::from_secs(5));
    s.lan.set_link("rec1", true);
    let healed = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let after = s.decoder.frames_so_far() - at_takeover;
    // recorder-1 knows it is covered: it says so, and has no channel.
    let rec1 = get(s.ws(), "198.18.0.1:8080", "/status").unwrap().1;
    let (got, errors, fin) = s.finish();
    let (first, _) = assert_one_stream("video", &got);
    assert_one_stream("audio", &fin.audio);
    let gap = got
        .iter()
        .filter(|p| p.from == FO1)
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap_or_default();
    // recorder-1 stopped at its fence while cut off (its carrier went) and,
    // healed, heard failover-1 cover it before its fence could open: not
    // one packet of it after failover-1's first.
    let late: Vec<&Packet> = got
        .iter()
        .filter(|p| p.from == REC1 && p.at > first.at)
        .collect();
    let overlap = late
        .last()
        .map_or(Duration::ZERO, |p| p.at.duration_since(healed));
    println!(
        "link cut: failover-1 covering {:.2} s after the cut, its first packet {:.2} s after, longest gap {:.2} s; \
         after the heal recorder-1 sent {} packets in {:.3} s; ffmpeg {after} frames in the 10 s after the takeover; {} error lines",
        took.as_secs_f64(),
        first.at.duration_since(cut).as_secs_f64(),
        gap.as_secs_f64(),
        late.len(),
        overlap.as_secs_f64(),
        errors.len()
    );
    assert!(
        took <= PERIOD + Duration::from_secs(2),
        "covered {took:?} after the cut"
    );
    assert!(
        late.is_empty(),
        "recorder-1 sent {} packets on a group failover-1 covered, the last {overlap:?} after the heal",
        late.len()
    );
    assert_seq_forward("video", &got);
    let v: serde_json::Value = serde_json::from_str(&rec1).unwrap();
    assert_eq!(v["channels"].as_array().map(Vec::len), Some(0), "{v}");
    assert!(
        v["site"]["recorders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "recorder-1" && r["state"] == "restored, covered"),
        "{v}"
    );
    assert!(
        after >= 225,
        "ffmpeg decoded {after} frames in the 10 s after the takeover: {errors:?}"
    );
}

#[test]
fn a_recorder_paused_past_its_period_sends_nothing_when_it_resumes() {
    let s = Site::start("fop");
    let signal = |sig: i32| {
        // SAFETY: a signal to the recorder process this test started.
        let r = unsafe { libc::kill(s.rec1.pid() as i32, sig) };
        assert_eq!(r, 0, "kill({sig})");
    };
    signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let took = s.wait_covered(stopped);
    let at_takeover = s.decoder.frames_so_far();
    std::thread::sleep(
        (stopped + PERIOD + Duration::from_secs(5)).saturating_duration_since(Instant::now()),
    );
    signal(libc::SIGCONT);
    let resumed = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let after = s.decoder.frames_so_far() - at_takeover;
    let rec1 = get(s.ws(), "198.18.0.1:8080", "/status").map(|r| r.1);
    let metrics = get(s.ws(), "198.18.0.1:8080", "/metrics").map(|r| r.1);
    let (got, errors, fin) = s.finish();
    let (first, _) = assert_one_stream("video", &got);
    assert_one_stream("audio", &fin.audio);
    let late: Vec<&Packet> = got
        .iter()
        .filter(|p| p.from == REC1 && p.at > first.at)
        .collect();
    let fenced = metrics
        .as_deref()
        .and_then(|m| metric(m, "mcrelay_failover_fenced_sends_total"))
        .unwrap_or_default();
    println!(
        "SIGSTOP for {:?}: failover-1 covering {:.2} s after the stop; after SIGCONT recorder-1 sent {} packets on the group ({fenced} sends refused by its fence); \
         ffmpeg {after} frames from the takeover to {:.1} s after SIGCONT; {} error lines",
        PERIOD + Duration::from_secs(5),
        took.as_secs_f64(),
        late.len(),
        resumed.elapsed().as_secs_f64(),
        errors.len()
    );
    assert!(
        late.is_empty(),
        "recorder-1 sent {} stale packets after SIGCONT on a group failover-1 covered",
        late.len()
    );
    assert_seq_forward("video", &got);
    let rec1 = rec1.expect("recorder-1 answers after SIGCONT");
    let v: serde_json::Value = serde_json::from_str(&rec1).unwrap();
    assert!(
        v["site"]["recorders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "recorder-1" && r["state"] == "restored, covered"),
        "{v}"
    );
    assert!(
        after >= 225,
        "ffmpeg decoded {after} frames after the takeover: {errors:?}"
    );
}

#[test]
fn forged_packets_and_beacons_change_nothing_and_a_killed_recorder_is_still_covered() {
    let s = Site::start("fof");
    // A workstation learns the channel's stream and captures one of
    // recorder-1's beacons, then sends as recorder-1 (a raw socket): RTP
    // of that stream ahead on its group, beacons with a forged tag, and
    // the captured beacon again, for the whole test.
    let forging = Duration::from_secs(3) + PERIOD + Duration::from_secs(4);
    let mut cmd = s.ws().command("/usr/bin/python3");
    cmd.arg(common::repo().join("tests/support/forge.py"))
        .args([
            "198.18.1.1",
            "198.18.0.1",
            "239.255.50.1",
            "7202",
            "239.255.77.77",
            "7777",
        ])
        .arg(forging.as_secs_f64().to_string());
    let forger = std::thread::spawn(move || cmd.output().expect("python3"));
    // recorder-1, healthy, keeps its group while the forgery runs.
    std::thread::sleep(Duration::from_secs(3));
    let mut s = s;
    s.rec1.kill();
    let killed = Instant::now();
    let took = s.wait_covered(killed);
    let out = forger.join().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "forger: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = get(s.ws(), "198.18.0.2:8080", "/metrics").unwrap().1;
    let detail = get(s.ws(), "198.18.0.2:8080", "/status").unwrap().1;
    let rejected = |reason: &str| {
        metric(
            &metrics,
            &format!("mcrelay_failover_beacons_rejected_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let (forged, replayed) = (rejected("forged"), rejected("replayed") + rejected("stale"));
    let (got, _, _fin) = s.finish();
    let first = got
        .iter()
        .find(|p| p.from == FO1)
        .copied()
        .expect("failover-1 never emitted");
    let real: Vec<&common::Packet> = got
        .iter()
        .filter(|p| p.from == REC1 && p.at < killed)
        .collect();
    let gap = real
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap_or_default();
    println!(
        "forger sent {said}; failover-1 refused {forged} forged and {replayed} replayed beacons; \
         covered {:.2} s after the kill, first packet {:.2} s after it; recorder-1's longest gap while forged at {:.3} s",
        took.as_secs_f64(),
        first.at.duration_since(killed).as_secs_f64(),
        gap.as_secs_f64()
    );
    assert!(forged >= 10.0 && replayed >= 10.0, "{metrics}");
    assert!(
        detail.contains("\"forged\""),
        "the status does not say forged beacons are heard: {detail}"
    );
    assert!(
        first.at.duration_since(killed) <= PERIOD + Duration::from_secs(2),
        "failover-1 emitted {:?} after the kill",
        first.at.duration_since(killed)
    );
    assert!(
        gap < Duration::from_millis(100),
        "recorder-1 stopped for {gap:?} while forged at"
    );
}

#[test]
fn an_unreachable_control_api_with_the_streams_flowing_is_not_taken_over() {
    let s = Site::start("fob");
    // failover-1 can no longer reach recorder-1's control API (its address
    // routed nowhere on failover-1); recorder-1's packets still arrive.
    s.lan
        .host("fo1")
        .ip(&["route", "add", "blackhole", "198.18.0.1/32"]);
    std::thread::sleep(PERIOD * 4);
    let status = get(s.ws(), "198.18.0.2:8080", "/status").unwrap().1;
    let (got, _, _fin) = s.finish();
    assert!(
        got.iter().all(|p| p.from == REC1),
        "failover-1 emitted on the group of a recorder whose streams flow"
    );
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let r = v["site"]["broken"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["site"]["recorders"].as_array().unwrap())
        .find(|r| r["name"] == "recorder-1")
        .cloned()
        .unwrap();
    assert!(
        r["state"] == "inaccessible, still streaming"
            || r["cover"] == "still streaming: not taken over",
        "{v}"
    );
    println!(
        "control API out of reach for {:?}: recorder-1 shown as {r}",
        PERIOD * 4
    );
}

#[test]
fn a_recorder_whose_disks_all_break_hands_its_group_over_cleanly() {
    let s = Site::start("fod");
    // recorder-1's only material disk goes away while it runs.
    std::fs::remove_dir_all(s.dir.path().join("rec1/disk1")).unwrap();
    let broke = Instant::now();
    // The disk check runs every 5 s, then a poll.
    let took = s.wait_covered(broke);
    let at_takeover = s.decoder.frames_so_far();
    std::thread::sleep(Duration::from_secs(10));
    let after = s.decoder.frames_so_far() - at_takeover;
    let rec1 = get(s.ws(), "198.18.0.1:8080", "/status").unwrap().1;
    let fo1_log = common::plain_log(&s.dir.path().join("mcrelay-failover-1.log"));
    let (got, errors, fin) = s.finish();
    let (first, last) = assert_one_stream("video", &got);
    assert_one_stream("audio", &fin.audio);
    assert!(
        got.iter()
            .skip_while(|p| p.from != FO1)
            .all(|p| p.from == FO1),
        "recorder-1 went on emitting after the hand-over"
    );
    println!(
        "disks broken: failover-1 covering {:.2} s after the disk went; gap on the group {:.3} s; \
         ffmpeg {after} frames in the 10 s after; {} error lines",
        took.as_secs_f64(),
        first.at.duration_since(last.at).as_secs_f64(),
        errors.len()
    );
    for e in errors.iter().take(4) {
        println!("  ffmpeg: {e}");
    }
    // Released on request (not after waiting for silence): the gap is the
    // hand-over, well under the silence window.
    assert!(fo1_log.contains("AskRelease"), "{fo1_log}");
    assert!(
        first.at.duration_since(last.at) < Duration::from_secs(1),
        "a gap of {:?}",
        first.at.duration_since(last.at)
    );
    let v: serde_json::Value = serde_json::from_str(&rec1).unwrap();
    assert_eq!(v["channels"].as_array().map(Vec::len), Some(0), "{v}");
    assert!(
        after >= 225,
        "ffmpeg decoded {after} frames in the 10 s after the hand-over: {errors:?}"
    );
}

/// Complete segments of channel 1 on a disk: name -> bytes.
fn segments_of(disk: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(disk.join("mcrelay/ch1"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ts"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn failback_with_delay_failover_copies_the_missing_material_then_takes_the_role_back() {
    let text = SITE
        .replace(
            "inaccessible_period = \"3s\"",
            "inaccessible_period = \"3s\"\nautomatic_failback = true\nautomatic_material_copying = true\ndelay_failover = true",
        )
        .replace(
            "poll_interval = \"500ms\"",
            "poll_interval = \"500ms\"\nfailback_delay = \"5s\"",
        );
    let mut s = Site::start_with("fofb", &text);
    s.rec1.kill();
    let killed = Instant::now();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    s.wait_covered(killed);
    // failover-1 records recorder-1's channel for a while.
    std::thread::sleep(Duration::from_secs(8));
    let fo1_ch = s.dir.path().join("fo1/disk1");
    let site_path = s.dir.path().join("site.toml");
    s.rec1 = start(
        s.lan.host("rec1"),
        s.dir.path(),
        &site_path,
        "recorder-1",
        "198.18.0.1:8080",
    );
    let restarted = Instant::now();
    // failback_delay, the copy, the hand-back.
    let back = common::wait_for(Duration::from_secs(60), || {
        let (code, body) = get(s.ws(), "198.18.0.1:8080", "/status")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200
            && v["channels"].as_array().is_some_and(|c| !c.is_empty())
            && v["site"]["recorders"]
                .as_array()?
                .iter()
                .any(|r| r["name"] == "recorder-1" && r["state"] == "ok"))
        .then_some(restarted.elapsed())
    })
    .unwrap_or_else(|| {
        eprintln!("{:?}", get(s.ws(), "198.18.0.1:8080", "/status"));
        eprintln!(
            "{}",
            common::plain_log(&s.dir.path().join("mcrelay-recorder-1.log"))
        );
        panic!("recorder-1 never took its role back")
    });
    let at_back = s.decoder.frames_so_far();
    std::thread::sleep(Duration::from_secs(8));
    let after = s.decoder.frames_so_far() - at_back;
    let rec1_log = common::plain_log(&s.dir.path().join("mcrelay-recorder-1.log"));
    let rec1_metrics = get(s.ws(), "198.18.0.1:8080", "/metrics").unwrap().1;
    let (got, errors, fin) = s.finish();
    let dir = &fin.dir;

    // Every segment failover-1 recorded while recorder-1 recorded nothing
    // is on recorder-1, byte for byte. From the moment recorder-1 records
    // again (its cameras warm before the role comes back), its own
    // material covers that time: failover-1's segments of it stay there.
    let theirs = segments_of(&fo1_ch);
    let ours = segments_of(&dir.path().join("rec1/disk1"));
    let start_ms = |n: &str| {
        n.split('-')
            .next()
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap()
    };
    let own_again = ours
        .keys()
        .filter(|n| n.ends_with("-recorder-1.ts") && start_ms(n) > killed_ms)
        .map(|n| start_ms(n))
        .min()
        .expect("recorder-1 recorded nothing after its restart");
    // Segments of 2 s that ended before recorder-1 recorded again.
    let covered: Vec<&String> = theirs
        .keys()
        .filter(|n| n.ends_with("-failover-1.ts") && start_ms(n) + 2_500 <= own_again)
        .collect();
    assert!(covered.len() >= 3, "failover-1 recorded {covered:?}");
    let mut bytes = 0;
    for name in &covered {
        assert_eq!(
            ours.get(*name).map(|b| xxh(b)),
            Some(xxh(&theirs[*name])),
            "{name} not copied whole to recorder-1 ({} of failover-1's, {} on recorder-1)\n{rec1_log}",
            theirs.len(),
            ours.len()
        );
        bytes += theirs[*name].len();
    }
    // Nothing of failover-1's for a time recorder-1 has itself.
    assert!(
        ours.keys()
            .filter(|n| n.ends_with("-failover-1.ts"))
            .all(|n| start_ms(n) < own_again),
        "copied what recorder-1 has itself"
    );
    // The copy came before the role (delay_failover).
    let copied_at = rec1_log.find("material copied back").expect("no copy");
    let asked_at = rec1_log.find("AskHandBack").expect("no hand-back");
    assert!(copied_at < asked_at, "{rec1_log}");

    // The group: failover-1, then recorder-1 again, one stream.
    let (first, last) = assert_hand_back("video", &got);
    assert_hand_back("audio", &fin.audio);
    let gap = first.at.duration_since(last.at);
    println!(
        "failback: role back {:.1} s after the restart (failback_delay 5 s); copied {} segments, {} bytes; \
         failback gap on the group {:.3} s; ffmpeg {after} frames in the 8 s after; {} error lines",
        back.as_secs_f64(),
        covered.len(),
        bytes,
        gap.as_secs_f64(),
        errors.len()
    );
    assert!(gap < Duration::from_secs(2), "failback gap {gap:?}");
    // recorder-1's metrics: the failback, its gap, the copy.
    let m = |series: &str| metric(&rec1_metrics, series).unwrap_or(-1.0);
    let exported_gap = m("mcrelay_failover_failback_gap_seconds");
    println!(
        "  recorder-1's metrics: failback gap {exported_gap:.3} s, {} segments and {} bytes copied",
        m("mcrelay_failover_copied_segments_total"),
        m("mcrelay_failover_copied_bytes_total")
    );
    assert_eq!(m("mcrelay_failover_failbacks_total"), 1.0, "{rec1_metrics}");
    assert!(
        exported_gap > 0.0 && exported_gap < 2.0,
        "exported gap {exported_gap}"
    );
    assert!(
        m("mcrelay_failover_copied_segments_total") >= covered.len() as f64
            && m("mcrelay_failover_copied_bytes_total") >= bytes as f64,
        "{rec1_metrics}"
    );
    assert!(
        after >= 180,
        "ffmpeg decoded {after} frames in the 8 s after the failback: {errors:?}"
    );
}

/// The value of one series in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn xxh(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

#[test]
fn a_takeover_on_a_source_specific_group_reaches_workstations_joined_by_source() {
    // recorder-1 on 232.1.50.1; a switch with IGMPv3 snooping.
    let text = SITE.replace("239.255.50.1", "232.1.50.1");
    let mut s = Site::start_on(Lan::snooping("fos", &HOSTS), &text);
    let sdp = get(s.ws(), "198.18.0.1:8080", "/channels/1.sdp").unwrap().1;
    // Its own interface and failover-1's: ffmpeg joins by both.
    assert!(
        sdp.contains("a=source-filter: incl IN IP4 232.1.50.1 198.18.0.1 198.18.0.2\r\n"),
        "{sdp}"
    );
    let before = s.decoder.frames_so_far();
    s.rec1.kill();
    s.wait_covered(Instant::now());
    let at_takeover = s.decoder.frames_so_far();
    std::thread::sleep(Duration::from_secs(10));
    let after = s.decoder.frames_so_far() - at_takeover;
    let (got, errors, _fin) = s.finish();
    let (first, last) = assert_one_stream("video", &got);
    println!(
        "SSM: gap on the group {:.2} s; ffmpeg (joined by source) {before} frames before, {after} in the 10 s after the takeover; {} error lines",
        first.at.duration_since(last.at).as_secs_f64(),
        errors.len()
    );
    assert!(
        after >= 225,
        "ffmpeg decoded {after} frames in the 10 s after the takeover: {errors:?}"
    );
}

/// A password that must appear nowhere on the status page or in `/status`.
const SECRET: &str = "pw-Fop-7c1e9";

/// In a dumped status page: the state (`data-state`) of server `name` in
/// the folder (section) `folder`, and the markup of its entry.
fn page_server<'a>(dom: &'a str, folder: &str, name: &str) -> Option<(&'a str, &'a str)> {
    let f = common::browser::element(dom, "section", folder);
    let at = f.find(&format!("data-server=\"{name}\""))?;
    let start = f[..at].rfind("<li")?;
    let li = &f[start..start + f[start..].find("</li>")?];
    let state = li.split("data-state=\"").nth(1)?.split('"').next()?;
    Some((state, li))
}

/// The page's script ran: it fetched `/status` and refreshed (at least
/// twice), and replaced every "loading" placeholder.
fn assert_fetched(dom: &str) -> u32 {
    let updated = common::browser::element(dom, "p", "updated");
    let fetches = updated
        .split("data-fetches=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        updated.contains("data-state=\"ok\"") && fetches >= 2,
        "the page did not fetch /status (twice): {updated}\n{dom}"
    );
    assert!(!dom.contains("loading…"), "{dom}");
    assert!(
        common::browser::element(dom, "p", "unreachable").contains("hidden"),
        "{dom}"
    );
    fetches
}

#[test]
fn the_status_page_in_a_browser_shows_the_folders_change_at_a_takeover() {
    let text = SITE
        .replace("password = \"test\"", &format!("password = \"{SECRET}\""))
        .replace(
            "name = \"failover-1\"",
            "name = \"failover-1\"\ndescription = \"<img src=x onerror=alert(1)> standby & co\"",
        );
    let mut s = Site::start_with("fop", &text);
    let url = "http://198.18.0.2:8080/";
    let t = Instant::now();
    let before = common::browser::dump_dom(s.ws(), url);
    let dump = t.elapsed();
    let fetches = assert_fetched(&before);
    assert_eq!(
        page_server(&before, "folder-vms", "recorder-1").map(|v| v.0),
        Some("ok"),
        "{before}"
    );
    assert_eq!(
        page_server(&before, "folder-failover", "failover-1").map(|v| v.0),
        Some("standby"),
        "{before}"
    );
    let broken = common::browser::element(&before, "section", "folder-broken");
    assert!(
        !broken.contains("data-server=") && broken.contains("class=\"empty\""),
        "{broken}"
    );
    // failover-1 runs no channel in standby.
    let rows = common::browser::element(&before, "tbody", "channel-rows");
    assert!(!rows.contains("data-channel="), "{rows}");
    // The description is text on the page, never markup.
    assert!(
        before.contains("&lt;img src=x onerror=alert(1)&gt; standby &amp; co")
            && !before.contains("<img"),
        "{before}"
    );

    s.rec1.kill();
    let killed = Instant::now();
    let took = s.wait_covered(killed);
    let after = common::browser::dump_dom(s.ws(), url);
    assert_fetched(&after);
    let (state, entry) = page_server(&after, "folder-broken", "recorder-1")
        .unwrap_or_else(|| panic!("recorder-1 not under Broken VMS servers:\n{after}"));
    assert!(state.starts_with("inaccessible for"), "{entry}");
    assert!(entry.contains("covered by failover-1"), "{entry}");
    assert!(
        page_server(&after, "folder-vms", "recorder-1").is_none(),
        "{after}"
    );
    assert_eq!(
        page_server(&after, "folder-failover", "failover-1").map(|v| v.0),
        Some("covering recorder-1"),
        "{after}"
    );
    // Now failover-1 runs recorder-1's channel; the workstation's ffmpeg
    // joined the group from the SDP, which no server counts.
    let rows = common::browser::element(&after, "tbody", "channel-rows");
    assert!(
        rows.contains("data-channel=\"1\" data-owner=\"recorder-1\"")
            && rows.contains("data-viewers=\"0\""),
        "{rows}"
    );
    // Neither the page nor what it reads has the password.
    let status = get(s.ws(), "198.18.0.2:8080", "/status").unwrap().1;
    for (what, text) in [
        ("page before", &before),
        ("page after", &after),
        ("/status", &status),
    ] {
        assert!(!text.contains(SECRET), "{what} shows the password: {text}");
    }
    println!(
        "status page: chromium dumped it in {:.2} s ({fetches} fetches of /status); \
         failover-1 covering {:.2} s after the kill",
        dump.as_secs_f64(),
        took.as_secs_f64()
    );
}
