//! ONVIF metadata (the stream that carries motion and analytics events,
//! ANPR among them) goes with the video: mcrelay's simulated camera sends a
//! licence-plate document each second as `application/vnd.onvif.metadata`
//! beside H.264 and G.711; mcrelay ingests all three with retina over one
//! interleaved connection and sends the metadata to its own multicast port.
//! A receiver on that port joins the packets back into the documents, whole
//! and in order, under one SSRC of their own; the recorded segments hold
//! them too, as a data stream beside the video, each at its time.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Netns;

const SITE: &str = r#"
[[server]]
name = "rec"
password = "test"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.23.1"
port = 6000
interface = "127.0.0.1"
ttl = 1
[server.storage]
disks = ["DISK"]
segment = "2s"
[[server.channel]]
id = 5
name = "gate with ANPR"
source = "rtsp://127.0.0.1:8610/stream"
"#;

#[test]
fn licence_plate_documents_arrive_whole_on_the_metadata_port() {
    let ns = Netns::new("onvif");
    let dir = common::tempdir();
    let disk = common::disk(dir.path());
    let site = common::write_site(
        dir.path(),
        &SITE.replace("DISK", &disk.display().to_string()),
    );
    let mut cmd = ns.command(common::mcrelay());
    cmd.args(["camera", "--clip"])
        .arg(common::clip("camera-h264.h264"))
        .args(["--listen", "127.0.0.1:8610", "--audio", "--metadata"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _camera = common::Proc::spawn(cmd, "mcrelay camera with metadata");
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    common::wait_camera_state(&ns, 5, "streaming", Duration::from_secs(20));

    // The SDP lists it on the metadata base: 6000 + 4000 + 2 x 5.
    let sdp = common::wait_sdp(&ns, 5, "m=application");
    assert!(sdp.contains("m=application 10010 RTP/AVP 98\r\n"), "{sdp}");
    assert!(
        sdp.contains("a=rtpmap:98 vnd.onvif.metadata/90000\r\n"),
        "{sdp}"
    );
    assert!(sdp.contains("m=audio 8010 RTP/AVP 0\r\n"), "{sdp}");

    // 6 s of the metadata port, and the video's SSRC for comparison.
    let group = "239.255.23.1".parse().unwrap();
    let (packets, video_ssrc) = ns.run(move || {
        let meta = common::join(group, 10010);
        let video = common::join(group, 6010);
        let mut buf = vec![0u8; 65536];
        let mut packets = Vec::new();
        let end = Instant::now() + Duration::from_secs(6);
        while Instant::now() < end {
            if let Ok(n) = meta.recv(&mut buf) {
                packets.push(buf[..n].to_vec());
            }
        }
        video.recv(&mut buf).expect("video packets");
        (packets, u32::from_be_bytes(buf[8..12].try_into().unwrap()))
    });
    assert!(packets.len() >= 8, "{} metadata packets", packets.len());
    let ssrcs: BTreeSet<u32> = packets
        .iter()
        .map(|p| u32::from_be_bytes(p[8..12].try_into().unwrap()))
        .collect();
    assert_eq!(ssrcs.len(), 1, "one SSRC: {ssrcs:?}");
    assert!(
        !ssrcs.contains(&video_ssrc),
        "its own SSRC, not the video's"
    );
    for w in packets.windows(2) {
        let (a, b) = (
            u16::from_be_bytes([w[0][2], w[0][3]]),
            u16::from_be_bytes([w[1][2], w[1][3]]),
        );
        assert_eq!(b, a.wrapping_add(1), "no packet lost or reordered");
        assert_eq!(w[0][1] & 0x7f, 98, "payload type");
    }

    // Join by the marker bit: whole documents, plates counting up by one.
    let mut docs = Vec::new();
    let mut current = Vec::new();
    let mut started = false;
    for p in &packets {
        let marker = p[1] & 0x80 != 0;
        if started {
            current.extend_from_slice(&p[12..]);
        }
        if marker {
            if started {
                docs.push(String::from_utf8(std::mem::take(&mut current)).expect("UTF-8 XML"));
            }
            started = true;
        }
    }
    assert!(docs.len() >= 4, "{} whole documents in 6 s", docs.len());
    let mut plates = Vec::new();
    for d in &docs {
        assert!(d.starts_with("<?xml"), "{d}");
        assert!(d.ends_with("</tt:MetadataStream>"), "{d}");
        assert!(d.len() > 1400, "split across packets: {} bytes", d.len());
        let plate = d
            .split("<Plate>MCR-")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no plate in {d}"));
        plates.push(plate);
    }
    assert!(
        plates.windows(2).all(|w| w[1] == w[0] + 1),
        "plates in order, none lost: {plates:?}"
    );

    // The recording: a data stream beside the video, each document at the
    // time of the picture it came with.
    let segs = common::segments(&disk.join("mcrelay/ch5"));
    assert!(segs.len() >= 3, "{segs:?}");
    let packet_times = |seg: &std::path::Path, select: &str| -> Vec<f64> {
        let o = ns
            .command("ffprobe")
            .args(["-v", "error", "-select_streams", select])
            .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
            .arg(seg)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
            .collect()
    };
    // Every segment but the one being written: the documents, each within
    // its segment's pictures (the one sent with a segment's first picture
    // may arrive just before it and close the segment before), and over
    // all of them one a second, none lost.
    let mut all = Vec::new();
    for seg in &segs[..segs.len() - 1] {
        let o = ns
            .command("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_type",
                "-of",
                "csv=p=0",
            ])
            .arg(seg)
            .output()
            .unwrap();
        let types: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .take_while(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        // The camera's G.711 is kept as private data too: the first data stream.
        assert_eq!(types, ["video", "data", "data"], "{}", seg.display());
        let pictures = packet_times(seg, "v:0");
        let (first, last) = (pictures[0], pictures[pictures.len() - 1]);
        for t in packet_times(seg, "d:1") {
            assert!(
                t >= first - 0.05 && t <= last + 0.1,
                "{}: a document at {t} among pictures {first}..{last}",
                seg.display()
            );
            all.push(t);
        }
    }
    all.sort_by(f64::total_cmp);
    assert!(all.len() >= 3, "{all:?}");
    for w in all.windows(2) {
        assert!(
            (w[1] - w[0] - 1.0).abs() < 0.05,
            "one a second, none lost: {all:?}"
        );
    }
    let seg = &segs[1];
    let times = packet_times(seg, "d:1");
    let o = ns
        .command("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(seg)
        .args(["-map", "0:d:1", "-c", "copy", "-f", "data", "-"])
        .output()
        .unwrap();
    let xml = String::from_utf8_lossy(&o.stdout);
    assert_eq!(xml.matches("<?xml").count(), times.len(), "{xml}");
    assert_eq!(
        xml.matches("</tt:MetadataStream>").count(),
        times.len(),
        "{xml}"
    );
    assert_eq!(xml.matches("<Plate>MCR-").count(), times.len(), "{xml}");
}
