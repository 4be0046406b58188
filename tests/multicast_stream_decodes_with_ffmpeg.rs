//! The stream path end to end, with Debian's ffmpeg as the workstation:
//! cameras over TCP -> mcrelay -> multicast on a namespace's lo -> ffmpeg
//! decoding from the SDP the control API serves.

mod common;

use std::time::Duration;

use common::{Decoder, Netns};

const SITE: &str = r#"
[[server]]
name = "rec"
password = "test"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.10.1"
port = 5000
interface = "127.0.0.1"
ttl = 1
[server.ingest]
reconnect_min = "100ms"
reconnect_max = "500ms"
[[server.channel]]
id = 1
name = "h264 camera"
source = "tcp://127.0.0.1:9001"
codec = "h264"
[[server.channel]]
id = 2
name = "h265 camera"
source = "tcp://127.0.0.1:9002"
codec = "h265"
"#;

const WHITELIST: &[&str] = &["-protocol_whitelist", "file,http,tcp,udp,rtp", "-f", "sdp"];

/// 10 s at 25 fps, less 5%.
const MIN_FRAMES: u64 = 238;

/// Workstations that joined before the cameras started decode every
/// picture of both codecs without a single decoder message.
#[test]
fn raw_annexb_cameras_decode_from_served_sdp() {
    let ns = Netns::new("annexb");
    let dir = common::tempdir();
    let site = common::write_site(dir.path(), SITE);
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");

    let sdp = ns
        .run(|| common::http_get("127.0.0.1:8080", "/channels/2.sdp"))
        .unwrap();
    assert_eq!(sdp.0, 200, "{}", sdp.1);
    assert!(sdp.1.contains("c=IN IP4 239.255.10.1/1"), "{}", sdp.1);
    assert!(sdp.1.contains("m=video 5004 RTP/AVP 96"), "{}", sdp.1);
    assert!(sdp.1.contains("a=rtpmap:96 H265/90000"), "{}", sdp.1);

    let decoders: Vec<(u32, Decoder)> = [1, 2]
        .into_iter()
        .map(|ch| {
            let url = format!("http://127.0.0.1:8080/channels/{ch}.sdp");
            (
                ch,
                Decoder::start(&ns, dir.path(), &format!("ch{ch}"), WHITELIST, &url, 10),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let _cam1 = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    let _cam2 = common::start_camera(&ns, "camera-h265.h265", "127.0.0.1:9002");

    for (ch, d) in decoders {
        let (frames, errors) = d.finish(Duration::from_secs(40));
        assert!(
            frames >= MIN_FRAMES,
            "channel {ch}: {frames} frames decoded, want >= {MIN_FRAMES}; stderr: {errors:?}"
        );
        assert!(
            errors.is_empty(),
            "channel {ch}: decoder reported {errors:?}"
        );
    }

    // What the relay says about it.
    let status = common::get_json(&ns, "/status");
    for c in status["channels"].as_array().unwrap() {
        assert_eq!(c["camera"]["state"], "streaming", "{c}");
        assert_eq!(c["video"]["width"], 640, "{c}");
        assert_eq!(c["video"]["fps"], 25.0, "{c}");
        assert!(c["multicast_packets"].as_u64().unwrap() > 250, "{c}");
        assert_eq!(
            c["multicast_packets"], c["packets"],
            "every packet built was sent: {c}"
        );
    }
    let (_, metrics) = ns
        .run(|| common::http_get("127.0.0.1:8080", "/metrics"))
        .unwrap();
    for needle in [
        "mcrelay_channel_frames_total{channel=\"1\"}",
        "mcrelay_multicast_bytes_total{channel=\"2\"}",
        "mcrelay_camera_state{channel=\"1\",state=\"streaming\"} 1",
        "mcrelay_rtcp_sender_reports_total{channel=\"1\"}",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from /metrics:\n{metrics}"
        );
    }
}

/// The README's check: `mcrelay demo` is running; a workstation opens each
/// channel's SDP mid-stream and decodes for 10 s. The demo cameras use
/// fast-join GOPs (assets/clips/README.md), so any join point works.
#[test]
fn demo_channels_decode_mid_stream() {
    let ns = Netns::new("demo");
    let dir = common::tempdir();
    let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let mut cmd = ns.command(common::mcrelay());
    cmd.arg("demo")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let mut demo = common::Proc::spawn(cmd, "mcrelay demo");
    common::wait_http(&ns, "127.0.0.1:8080", &mut demo, dir.path());
    std::thread::sleep(Duration::from_millis(2300)); // Join in the middle of a GOP.

    let decoders: Vec<(u32, Decoder)> = [1, 2]
        .into_iter()
        .map(|ch| {
            let url = format!("http://127.0.0.1:8080/channels/{ch}.sdp");
            (
                ch,
                // The pictures: channel 1's sound is checked with real
                // cameras in camera_audio_reaches_workstations.
                Decoder::start_with(
                    &ns,
                    dir.path(),
                    &format!("demo{ch}"),
                    WHITELIST,
                    &url,
                    &["-map", "0:v"],
                    10,
                ),
            )
        })
        .collect();
    for (ch, d) in decoders {
        let (frames, errors) = d.finish_joined_mid_gop(Duration::from_secs(40));
        assert!(
            frames >= 240,
            "demo channel {ch}: {frames} frames; stderr: {errors:?}"
        );
        assert!(
            errors.is_empty(),
            "demo channel {ch}: decoder reported {errors:?}"
        );
    }
    assert!(demo.is_running());
    let status = demo
        .interrupt(Duration::from_secs(10))
        .expect("demo stops on Ctrl-C");
    assert!(status.success(), "demo exit status {status:?}");
}
