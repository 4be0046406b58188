//! RTSP ingest from a camera that is not ours: GStreamer's RTSP server, with
//! RTP interleaved on the TCP connection, Digest authentication, H.264 and
//! H.265. Debian's ffmpeg decodes what mcrelay sends to the group.

mod common;

use std::time::Duration;

use common::{Decoder, Netns};

fn site(source: &str, codec: &str) -> String {
    format!(
        r#"
[[server]]
name = "rec"
password = "test"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.20.1"
port = 6000
interface = "127.0.0.1"
ttl = 1
[server.ingest]
reconnect_min = "100ms"
reconnect_max = "500ms"
[[server.channel]]
id = 7
name = "gstreamer camera"
source = "{source}"
{codec}
"#
    )
}

const WHITELIST: &[&str] = &["-protocol_whitelist", "file,http,tcp,udp,rtp", "-f", "sdp"];

/// The workstation joins first (the codec is in the site file, so the SDP is
/// served before the camera connects); the camera comes up; every picture
/// decodes.
fn relay_and_decode(codec: &str) {
    let ns = Netns::new(&format!("rtsp{codec}"));
    let dir = common::tempdir();
    let source = "rtsp://viewer:s3cret@127.0.0.1:8554/cam";
    let site = common::write_site(dir.path(), &site(source, &format!("codec = \"{codec}\"")));
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    let decoder = Decoder::start(
        &ns,
        dir.path(),
        codec,
        WHITELIST,
        "http://127.0.0.1:8080/channels/7.sdp",
        10,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let _camera = common::start_gst_camera(&ns, 8554, "cam", codec, Some(("viewer", "s3cret")));

    common::wait_camera_state(&ns, 7, "streaming", Duration::from_secs(20));
    let ch = common::status_detail(&ns, "test")["channels"][0].clone();
    assert!(
        !ch["source"].as_str().unwrap().contains("s3cret"),
        "password leaked into status: {ch}"
    );
    let (frames, errors) = decoder.finish(Duration::from_secs(40));
    assert!(
        frames >= 238,
        "{codec}: {frames} frames, want >= 238 (95% of 250); stderr {errors:?}"
    );
    assert!(errors.is_empty(), "{codec}: decoder reported {errors:?}");

    // The SDP now carries the parameter sets learned from the camera.
    let (_, sdp) = ns
        .run(|| common::http_get("127.0.0.1:8080", "/channels/7.sdp"))
        .unwrap();
    let want = if codec == "h264" {
        "sprop-parameter-sets="
    } else {
        "sprop-sps="
    };
    assert!(sdp.contains(want), "{sdp}");
    let log = std::fs::read_to_string(dir.path().join("mcrelay-rec.log")).unwrap();
    assert!(!log.contains("s3cret"), "password leaked into the log");
}

#[test]
fn gstreamer_h264_camera_with_digest_auth() {
    relay_and_decode("h264");
}

#[test]
fn gstreamer_h265_camera_with_digest_auth() {
    relay_and_decode("h265");
}

/// Wrong credentials: a clear error in /status, reconnect attempts, no panic.
#[test]
fn wrong_camera_password_is_reported() {
    let ns = Netns::new("rtspauth");
    let dir = common::tempdir();
    let _camera = common::start_gst_camera(&ns, 8554, "cam", "h264", Some(("viewer", "right")));
    let site = common::write_site(
        dir.path(),
        &site("rtsp://viewer:wrong@127.0.0.1:8554/cam", ""),
    );
    let mut relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    let ch = common::wait_for(Duration::from_secs(15), || {
        let st = common::status_detail(&ns, "test");
        let ch = st["channels"][0].clone();
        (ch["camera"]["reconnects"].as_u64() >= Some(2)).then_some(ch)
    })
    .expect("reconnect attempts");
    let err = ch["camera"]["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("401"), "last_error should name the 401: {ch}");
    assert_ne!(ch["camera"]["state"], "streaming");
    assert!(relay.is_running());
    // Without a codec in the site file and no camera, the SDP is not yet known.
    let (code, body) = ns
        .run(|| common::http_get("127.0.0.1:8080", "/channels/7.sdp"))
        .unwrap();
    assert_eq!(code, 503, "{body}");
}
