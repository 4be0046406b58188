//! A recorder killed (kill -9) and started again comes back on its groups
//! as the same RTP streams: the site's SSRC for each track, sequence
//! numbers ahead of any it sent before, timestamps moved on by the time it
//! was gone. Debian's ffmpeg, playing the channel from its SDP since
//! before the kill and never restarted, goes on decoding (with a new random
//! SSRC and sequence number it decodes nothing more until restarted by hand).

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{Decoder, Netns, Packet, PacketLog};

const SITE: &str = r#"
[[server]]
name = "rec"
password = "test"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.31.1"
port = 7100
interface = "127.0.0.1"
ttl = 1
[server.ingest]
reconnect_min = "100ms"
reconnect_max = "300ms"
[[server.channel]]
id = 1
source = "rtsp://127.0.0.1:8620/stream"
codec = "h264"
"#;

/// One stream across the restart at `killed`: the same SSRC throughout,
/// and the first packet after it ahead of the last one before in sequence
/// number and timestamp.
fn assert_continues(what: &str, got: &[Packet], killed: Instant) {
    let before: Vec<&Packet> = got.iter().filter(|p| p.at < killed).collect();
    let after: Vec<&Packet> = got.iter().filter(|p| p.at > killed).collect();
    assert!(
        before.len() > 20 && after.len() > 20,
        "{what}: {} packets before the kill, {} after",
        before.len(),
        after.len()
    );
    let ssrc = before[0].ssrc;
    assert!(
        got.iter().all(|p| p.ssrc == ssrc),
        "{what}: the SSRC changed across the restart"
    );
    let (last, first) = (before[before.len() - 1], after[0]);
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
        "{what}: SSRC {ssrc:08x} kept; sequence {} -> {} (+{seq_ahead}), timestamp +{ts_ahead}",
        last.seq, first.seq
    );
}

#[test]
fn ffmpeg_joined_by_sdp_keeps_decoding_across_a_kill_and_restart() {
    let ns = Netns::new("srvrestart");
    let dir = common::tempdir();
    let site = common::write_site(dir.path(), SITE);
    let mut cmd = ns.command(common::mcrelay());
    cmd.args(["camera", "--clip"])
        .arg(common::clip("camera-h264.h264"))
        .args(["--listen", "127.0.0.1:8620", "--audio"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _camera = common::Proc::spawn(cmd, "mcrelay camera with sound");
    let mut relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    common::wait_camera_state(&ns, 1, "streaming", Duration::from_secs(20));
    let sdp = common::wait_sdp(&ns, 1, "m=audio");
    let sdp_file = dir.path().join("ch1.sdp");
    std::fs::write(&sdp_file, &sdp).unwrap();

    // Channel 1: video on 7102, sound on 7100 + 2000 + 2.
    let group = Ipv4Addr::new(239, 255, 31, 1);
    let video_rx = PacketLog::start(&ns, group, 7102, Ipv4Addr::LOCALHOST);
    let audio_rx = PacketLog::start(&ns, group, 9102, Ipv4Addr::LOCALHOST);
    let decoder = Decoder::start_with(
        &ns,
        dir.path(),
        "restart",
        &["-protocol_whitelist", "file,udp,rtp", "-f", "sdp"],
        sdp_file.to_str().unwrap(),
        // Each decoded picture once: no frames made up across the gap.
        &["-map", "0:v", "-fps_mode", "passthrough"],
        60,
    );
    std::thread::sleep(Duration::from_secs(5));
    let before = decoder.frames_so_far();
    assert!(
        before >= 75,
        "ffmpeg decoded {before} frames in 5 s before the kill"
    );

    relay.kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    let restarted = Instant::now();
    let at_restart = decoder.frames_so_far();
    std::thread::sleep(Duration::from_secs(10));
    let after = decoder.frames_so_far() - at_restart;
    let (_, errors) = decoder.finish(Duration::from_secs(1));
    let video = video_rx.finish();
    let audio = audio_rx.finish();
    println!(
        "ffmpeg: {before} frames in the 5 s before the kill, {after} in the 10 s after the restart \
         ({:.1} s after the kill); {} error lines",
        (restarted - killed).as_secs_f64(),
        errors.len()
    );
    // 25 fps: 250 pictures in 10 s.
    assert!(
        after >= 225,
        "ffmpeg decoded {after} frames in the 10 s after the restart: {errors:?}"
    );
    assert_continues("video", &video, killed);
    assert_continues("audio", &audio, killed);
    // The state the restarted server continued from is beside the site.
    assert!(dir.path().join("mcrelay-state/rec/streams.json").exists());
}
