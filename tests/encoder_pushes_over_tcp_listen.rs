//! An encoder pushes a raw Annex-B stream into mcrelay (`tcp-listen://`), as
//! `ffmpeg ... -f h264 tcp://recorder:port` does; a second encoder that
//! connects replaces the first, and the channel keeps streaming.

mod common;

use std::time::Duration;

use common::{Decoder, Netns, Proc};

const SITE: &str = r#"
[[server]]
name = "rec"
password = "test"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.50.1"
port = 5000
interface = "127.0.0.1"
ttl = 1
[[server.channel]]
id = 3
name = "pushed"
source = "tcp-listen://127.0.0.1:9003"
codec = "h264"
"#;

/// Debian's ffmpeg as the encoder: reads the clip at its frame rate, loops,
/// and pushes raw H.264 to the relay.
fn push(ns: &Netns) -> Proc {
    let mut cmd = ns.command("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
    ])
    .arg(common::clip("demo-h264.h264"))
    .args(["-c", "copy", "-f", "h264", "tcp://127.0.0.1:9003"])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    Proc::spawn(cmd, "ffmpeg push")
}

#[test]
fn pushed_stream_is_relayed_and_a_new_encoder_takes_over() {
    let ns = Netns::new("push");
    let dir = common::tempdir();
    let site = common::write_site(dir.path(), SITE);
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    let ch = common::wait_camera_state(&ns, 3, "connecting", Duration::from_secs(5));
    assert_eq!(ch["frames"], 0);

    let mut first = push(&ns);
    common::wait_camera_state(&ns, 3, "streaming", Duration::from_secs(10));
    let decoder = Decoder::start(
        &ns,
        dir.path(),
        "push",
        &["-protocol_whitelist", "file,http,tcp,udp,rtp", "-f", "sdp"],
        "http://127.0.0.1:8080/channels/3.sdp",
        10,
    );
    std::thread::sleep(Duration::from_secs(4));
    // A second encoder connects: it replaces the first at once.
    let _second = push(&ns);
    let replaced = common::wait_for(Duration::from_secs(10), || {
        let st = common::status_detail(&ns, "test");
        let c = st["channels"][0].clone();
        c["camera"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("replaced"))
            .then_some(c)
    })
    .expect("the second encoder replaces the first");
    assert!(
        replaced["camera"]["last_error"]
            .as_str()
            .unwrap()
            .contains("new encoder connected from 127.0.0.1")
    );
    // The first encoder's connection was closed by the relay.
    assert!(
        common::wait_for(Duration::from_secs(10), || (!first.is_running())
            .then_some(()))
        .is_some()
    );

    // The workstation joined the group mid-GOP: what ffmpeg says of the
    // pictures before its first key frame is the join. Across the takeover
    // the picture restarts at the new encoder's first key frame: a few
    // frames may be lost there, no decoder errors.
    let (frames, errors) = decoder.finish_joined_mid_gop(Duration::from_secs(40));
    assert!(frames >= 225, "{frames} frames; stderr {errors:?}");
    assert!(errors.is_empty(), "{errors:?}");
    let c = common::wait_camera_state(&ns, 3, "streaming", Duration::from_secs(5));
    assert_eq!(c["camera"]["reconnects"], 1, "{c}");
}

/// A port scan, a connection that sends junk and a host not on the allow
/// list never cut the encoder; only a connection that sends a picture
/// replaces it.
#[test]
fn only_an_allowed_encoder_that_sends_a_picture_replaces_the_current_one() {
    use std::io::Write as _;
    let ns = Netns::new("pushallow");
    let dir = common::tempdir();
    let text = SITE.replace(
        "codec = \"h264\"",
        "codec = \"h264\"\nallow = [\"127.0.0.1\"]",
    );
    let site = common::write_site(dir.path(), &text);
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    let mut first = push(&ns);
    common::wait_camera_state(&ns, 3, "streaming", Duration::from_secs(10));
    let frames_before = common::get_json(&ns, "/status")["channels"][0]["frames"]
        .as_u64()
        .unwrap();
    ns.run(|| {
        let connect_from = |from: &str| common::connect_from(from, "127.0.0.1:9003").unwrap();
        // A port scan: connect, close.
        for _ in 0..5 {
            drop(connect_from("127.0.0.1"));
        }
        // Junk with start codes, from an allowed address.
        let mut junk = connect_from("127.0.0.1");
        let mut bytes = Vec::new();
        for i in 0..2000u32 {
            bytes.extend_from_slice(&[0, 0, 1, 0x80 | (i as u8 & 0x7f), 0xff, 0x13]);
        }
        let _ = junk.write_all(&bytes);
        // A real stream from an address that is not allowed.
        let mut stranger = connect_from("127.0.0.2");
        let clip = std::fs::read(common::clip("demo-h264.h264")).unwrap();
        let _ = stranger.write_all(&clip[..clip.len() / 2]);
        std::thread::sleep(Duration::from_secs(3));
    });
    let st = common::get_json(&ns, "/status");
    let c = &st["channels"][0];
    assert_eq!(c["camera"]["reconnects"], 0, "the encoder was cut: {c}");
    assert_eq!(c["camera"]["state"], "streaming", "{c}");
    assert!(c["frames"].as_u64().unwrap() >= frames_before + 50, "{c}");
    assert!(
        first.is_running(),
        "the first encoder's connection was closed"
    );
    // A real encoder from an allowed address replaces it.
    let _second = push(&ns);
    let replaced = common::wait_for(Duration::from_secs(10), || {
        let c = common::get_json(&ns, "/status")["channels"][0].clone();
        (c["camera"]["reconnects"] == 1).then_some(c)
    });
    assert!(replaced.is_some(), "the second encoder did not take over");
    assert!(
        common::wait_for(Duration::from_secs(10), || (!first.is_running())
            .then_some(()))
        .is_some()
    );
}
