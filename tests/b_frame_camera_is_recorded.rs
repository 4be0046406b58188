//! A camera that sends B-frames (GStreamer's RTSP server, x264 with two
//! B-frames between references): RTP carries presentation times only, in
//! decode order, and they go back. mcrelay's segments give each picture a
//! decode time too, strictly increasing and never after its presentation,
//! so the material plays smoothly; the live multicast decodes as well.

mod common;

use std::time::Duration;

use common::{Decoder, Netns};

fn site(disk: &std::path::Path) -> String {
    format!(
        r#"
[[server]]
name = "rec"
password = "test"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.22.1"
port = 6000
interface = "127.0.0.1"
ttl = 1
[server.storage]
disks = ["{}"]
segment = "2s"
[[server.channel]]
id = 4
name = "B-frame camera"
source = "rtsp://127.0.0.1:8554/cam"
codec = "h264"
"#,
        disk.display()
    )
}

#[test]
fn b_frame_segments_have_increasing_decode_times_and_decode_cleanly() {
    let ns = Netns::new("bframes");
    let dir = common::tempdir();
    let disk = common::disk(dir.path());
    let site = common::write_site(dir.path(), &site(&disk));
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    // Live: the multicast decodes without errors. The workstation joins
    // before the camera comes up (the codec is in the site file): a viewer
    // that joins a B-frame stream mid-GOP gets decoder errors from the
    // pictures before its first key frame, from any sender.
    let live = Decoder::start(
        &ns,
        dir.path(),
        "live",
        &["-protocol_whitelist", "file,http,tcp,udp,rtp", "-f", "sdp"],
        "http://127.0.0.1:8080/channels/4.sdp",
        8,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let _camera = common::start_gst_camera(&ns, 8554, "cam", "h264b", None);
    common::wait_camera_state(&ns, 4, "streaming", Duration::from_secs(20));
    let (frames, errors) = live.finish(Duration::from_secs(30));
    assert!(frames >= 150, "live: {frames} frames");
    assert!(errors.is_empty(), "live: {errors:?}");

    let segs = common::segments(&disk.join("mcrelay/ch4"));
    assert!(segs.len() >= 3, "{segs:?}");
    let mut reordered = 0;
    // The first segment may start before the camera's reordering was
    // measured; it must be right too.
    for seg in &segs[..segs.len() - 1] {
        let o = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0"])
            .args(["-show_entries", "packet=pts,dts", "-of", "csv=p=0"])
            .arg(seg)
            .output()
            .unwrap();
        assert!(
            o.stderr.is_empty(),
            "{}: {}",
            seg.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        let times: Vec<(i64, i64)> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut f = l.split(',');
                let mut next = || f.next().and_then(|v| v.parse().ok());
                let (Some(p), Some(d)) = (next(), next()) else {
                    panic!("no PTS and DTS: {l}");
                };
                (p, d)
            })
            .collect();
        assert!(
            times.len() >= 40,
            "{}: {} packets",
            seg.display(),
            times.len()
        );
        for w in times.windows(2) {
            assert!(
                w[1].1 > w[0].1,
                "{}: DTS {} after {}",
                seg.display(),
                w[1].1,
                w[0].1
            );
        }
        for (pts, dts) in &times {
            assert!(pts >= dts, "{}: PTS {pts} before DTS {dts}", seg.display());
        }
        reordered += times.windows(2).filter(|w| w[1].0 < w[0].0).count();
        let dec = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(seg)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        assert!(
            dec.status.success() && dec.stderr.is_empty(),
            "{}: {}",
            seg.display(),
            String::from_utf8_lossy(&dec.stderr)
        );
    }
    assert!(
        reordered > 20,
        "the camera sent B-frames: {reordered} reorderings"
    );
}
