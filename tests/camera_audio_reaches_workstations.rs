//! A camera's audio goes with its video: GStreamer's RTSP server sends
//! H.264 with AAC or with G.711 mu-law over one interleaved TCP connection;
//! mcrelay sends each track to its own port of the channel's group, lists
//! both in the channel's SDP and in its RTSP DESCRIBE, and serves both over
//! RTSP (TCP interleaved, and multicast). Debian's ffmpeg, joined each of
//! the three ways, decodes the sound without a gap and in sync with the
//! pictures.

mod common;

use std::time::{Duration, Instant};

use common::Netns;

fn site(source: &str, disk: &std::path::Path) -> String {
    format!(
        r#"
[[server]]
name = "rec"
password = "test"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.rtsp]
listen = "127.0.0.1:8555"
user = "admin"
[server.multicast]
address = "239.255.21.1"
port = 6000
interface = "127.0.0.1"
ttl = 1
[server.storage]
disks = ["{disk}"]
segment = "2s"
[server.ingest]
reconnect_min = "100ms"
reconnect_max = "500ms"
[[server.channel]]
id = 3
name = "door with intercom"
source = "{source}"
"#,
        disk = disk.display()
    )
}

const INPUT: &[&str] = &["-protocol_whitelist", "file,udp,rtp"];

/// What ffmpeg's framecrc says of each stream: frames, decoded seconds,
/// and the span of presentation times.
#[derive(Debug, Default)]
struct Decoded {
    frames: u64,
    seconds: f64,
    first: Option<f64>,
    last: f64,
}

fn framecrc(out: &str) -> Vec<Decoded> {
    let mut base = Vec::new();
    for l in out.lines().filter_map(|l| l.strip_prefix("#tb ")) {
        // "#tb 1: 1/48000"
        let (_, tb) = l.split_once(": ").expect("time base line");
        let (n, d) = tb.trim().split_once('/').expect("n/d");
        base.push(n.parse::<f64>().unwrap() / d.parse::<f64>().unwrap());
    }
    let mut streams: Vec<Decoded> = base.iter().map(|_| Decoded::default()).collect();
    for l in out.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        // ffmpeg's messages share the file.
        if f.len() < 5 || f[..5].iter().any(|x| x.parse::<i64>().is_err()) {
            continue;
        }
        let i: usize = f[0].parse().unwrap();
        let pts: f64 = f[2].parse::<f64>().unwrap() * base[i];
        let dur: f64 = f[3].parse::<f64>().unwrap() * base[i];
        let s = &mut streams[i];
        s.frames += 1;
        s.seconds += dur;
        s.first.get_or_insert(pts);
        s.last = pts + dur;
    }
    streams
}

/// The mean distance between each picture's time and the sound's time
/// around it, in the order packets arrived, after ffmpeg had the sender
/// reports that align the two (its first 1.5 s are left out).
fn av_offset(packets: &str) -> (f64, usize) {
    let mut last_audio: Option<f64> = None;
    let mut sum = 0.0;
    let mut n = 0;
    let mut first: Option<f64> = None;
    for l in packets.lines() {
        let f: Vec<&str> = l.split(',').collect();
        let (Some(stream), Some(Ok(pts))) = (f.get(1), f.get(2).map(|p| p.parse::<f64>())) else {
            continue;
        };
        let start = *first.get_or_insert(pts);
        match *stream {
            "1" => last_audio = Some(pts),
            "0" if pts - start > 1.5 => {
                if let Some(a) = last_audio {
                    sum += (pts - a).abs();
                    n += 1;
                }
            }
            _ => {}
        }
    }
    (if n == 0 { f64::MAX } else { sum / n as f64 }, n)
}

fn relay_audio(audio: &str, rtpmap: &str) {
    let ns = Netns::new(&format!("aud{audio}"));
    let dir = common::tempdir();
    let disk = common::disk(dir.path());
    let site = common::write_site(dir.path(), &site("rtsp://127.0.0.1:8554/cam", &disk));
    let _camera = common::start_gst_camera(&ns, 8554, "cam", &format!("h264+{audio}"), None);
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    common::wait_camera_state(&ns, 3, "streaming", Duration::from_secs(20));

    // The SDP lists the sound on the audio port of channel 3: 6000 + 2000 + 2 x 3.
    let sdp = common::wait_sdp(&ns, 3, "m=audio");
    assert!(sdp.contains("m=video 6006 RTP/AVP 96\r\n"), "{sdp}");
    assert!(sdp.contains("a=rtcp:8007 IN IP4 239.255.21.1\r\n"), "{sdp}");
    assert!(sdp.contains(rtpmap), "{sdp}");
    let sdp_file = dir.path().join("ch3.sdp");
    std::fs::write(&sdp_file, &sdp).unwrap();

    // 10 s of both tracks decoded, joined three ways at once.
    let rtsp = "rtsp://admin:test@127.0.0.1:8555/3";
    let sdp_arg = sdp_file.to_str().unwrap().to_string();
    let ways: [(&str, Vec<&str>); 3] = [
        ("multicast SDP", [INPUT, &["-i", &sdp_arg]].concat()),
        ("RTSP over TCP", vec!["-rtsp_transport", "tcp", "-i", rtsp]),
        (
            "RTSP multicast",
            vec!["-rtsp_transport", "udp_multicast", "-i", rtsp],
        ),
    ];
    let started = Instant::now();
    let runs: Vec<_> = ways
        .iter()
        .enumerate()
        .map(|(i, (_, input))| {
            // Its frames and its messages in one file, in order.
            let out = dir.path().join(format!("decoded-{i}.crc"));
            let file = std::fs::File::create(&out).unwrap();
            let child = ns
                .command("ffmpeg")
                .args(["-hide_banner", "-nostdin", "-v", "error"])
                .args(input)
                .args(["-t", "10", "-map", "0:v", "-map", "0:a"])
                .args(["-f", "framecrc", "-flush_packets", "1", "-"])
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .expect("ffmpeg");
            (child, out)
        })
        .collect();
    for ((mut child, out), (way, _)) in runs.into_iter().zip(&ways) {
        let status = child.wait().unwrap();
        let took = started.elapsed();
        let text = std::fs::read_to_string(&out).unwrap();
        let log = common::FfmpegLog::parse(&text);
        assert!(
            status.success(),
            "{way}: ffmpeg failed: {:?}",
            log.messages()
        );
        // Over TCP the client starts at a key frame: not a message. A
        // multicast viewer joins the group in the middle of a GOP: what
        // ffmpeg says of the pictures before its first key frame, which it
        // drops, is the join, not the stream; nothing after.
        let errors = if *way == "RTSP over TCP" {
            log.messages()
        } else {
            if !log.before_first_picture.is_empty() {
                eprintln!(
                    "{audio} {way}: joined mid-GOP: {:?}",
                    log.before_first_picture
                );
            }
            log.after_first_picture
        };
        assert!(errors.is_empty(), "{way}: decoder errors: {errors:?}");
        let streams = framecrc(&text);
        eprintln!("{audio} {way}: {streams:?} in {took:?}");
        let [video, sound] = &streams[..] else {
            panic!("{way}: two streams expected: {streams:?}");
        };
        // The pictures are there (a viewer starts at a key frame: up to 1 s).
        assert!(video.frames >= 200, "{way}: video frames: {video:?}");
        // At least 95% of the sound in the 10 s, with no gap: the decoded
        // durations cover the span of its times.
        assert!(sound.seconds >= 9.5, "{way}: audio decoded: {sound:?}");
        let span = sound.last - sound.first.unwrap();
        assert!(
            sound.seconds >= 0.95 * span,
            "{way}: audio has gaps: {:.2} s decoded over {span:.2} s",
            sound.seconds
        );
        // Over TCP the client starts at the channel's cached key frame, up
        // to a GOP in the past, and its sound starts at that picture's
        // instant: within one picture (40 ms), not silent until live.
        if *way == "RTSP over TCP" {
            let gap = sound.first.unwrap() - video.first.unwrap();
            assert!(
                gap.abs() <= 0.04,
                "{way}: the sound starts {gap:.3} s after the first picture"
            );
        }
        // The sound plays at real time, not faster (wrong clock rate).
        assert!(
            took >= Duration::from_secs(9),
            "{way}: 10 s decoded in {took:?}"
        );
    }

    // Sync: with the sender reports (multicast) or RTP-Info (TCP), every
    // picture's time is within 100 ms of the sound that arrived with it.
    let probes: Vec<_> = ways
        .iter()
        .map(|(_, input)| {
            ns.command("ffprobe")
                .args(["-hide_banner", "-v", "error"])
                .args(input)
                .args([
                    "-read_intervals",
                    "%+5",
                    "-show_entries",
                    "packet=stream_index,pts_time",
                    "-of",
                    "csv",
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("ffprobe")
        })
        .collect();
    for (probe, (way, _)) in probes.into_iter().zip(&ways) {
        let packets = probe.wait_with_output().unwrap();
        let (offset, n) = av_offset(&String::from_utf8_lossy(&packets.stdout));
        eprintln!(
            "{audio} {way}: mean A/V offset {:.1} ms over {n} pictures",
            offset * 1000.0
        );
        assert!(n >= 50, "{way}: only {n} pictures to compare");
        assert!(
            offset < 0.1,
            "{way}: pictures are {:.0} ms from their sound",
            offset * 1000.0
        );
    }

    // The recording: AAC is in the segments beside the video, starting with
    // it; G.711, which has no MPEG-TS stream type ffmpeg reads, beside it as
    // private data.
    let segs = common::segments(&disk.join("mcrelay/ch3"));
    assert!(segs.len() >= 3, "{segs:?}");
    for seg in &segs[1..segs.len() - 1] {
        let o = ns
            .command("ffprobe")
            .args(["-v", "error", "-count_packets"])
            .args([
                "-show_entries",
                "stream=codec_name,start_time,nb_read_packets",
                "-of",
                "csv=p=0",
            ])
            .arg(seg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.stderr.is_empty(),
            "{}: {}",
            seg.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        // The program lists its streams again after a blank line.
        let streams: Vec<Vec<String>> = text
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect();
        eprintln!("{audio} {}: {streams:?}", seg.display());
        assert_eq!(streams[0][0], "h264", "{text}");
        if audio == "aac" {
            assert_eq!(streams.len(), 2, "{text}");
            assert_eq!(streams[1][0], "aac", "{text}");
            let (v0, a0): (f64, f64) = (
                streams[0][1].parse().unwrap(),
                streams[1][1].parse().unwrap(),
            );
            assert!(
                (v0 - a0).abs() <= 0.04,
                "video starts at {v0}, audio at {a0}"
            );
            let (vp, ap): (f64, f64) = (
                streams[0][2].parse().unwrap(),
                streams[1][2].parse().unwrap(),
            );
            // 2 s segments: 25 fps and 46.9 AAC frames a second.
            assert!(
                ap >= 0.9 * vp * 46.875 / 25.0,
                "{vp} pictures, {ap} AAC frames"
            );
            let dec = ns
                .command("ffmpeg")
                .args(["-v", "error", "-i"])
                .arg(seg)
                .args(["-map", "0:a", "-f", "null", "-"])
                .output()
                .unwrap();
            assert!(
                dec.status.success() && dec.stderr.is_empty(),
                "{}",
                String::from_utf8_lossy(&dec.stderr)
            );
        } else {
            // G.711 has no MPEG-TS stream type players read: it is kept as
            // private data, each frame at its time, as the camera sent it;
            // extracted, it is the segment's sound.
            assert_eq!(streams.len(), 2, "{text}");
            let raw = dir.path().join("sound.ulaw");
            let x = ns
                .command("ffmpeg")
                .args(["-v", "error", "-y", "-i"])
                .arg(seg)
                .args(["-map", "0:d", "-c", "copy", "-f", "data"])
                .arg(&raw)
                .output()
                .unwrap();
            assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
            let bytes = std::fs::metadata(&raw).unwrap().len() as f64;
            let pictures: f64 = streams[0][2].parse().unwrap();
            // 8000 mu-law bytes a second, the segment's pictures at 25 fps,
            // give or take a 128 ms packet at each end.
            let seconds = bytes / 8000.0;
            assert!(
                (seconds - pictures / 25.0).abs() <= 0.3,
                "{seconds:.2} s of sound for {pictures} pictures"
            );
            let dec = ns
                .command("ffmpeg")
                .args([
                    "-v", "error", "-f", "mulaw", "-ar", "8000", "-ac", "1", "-i",
                ])
                .arg(&raw)
                .args(["-f", "null", "-"])
                .output()
                .unwrap();
            assert!(
                dec.status.success() && dec.stderr.is_empty(),
                "{}",
                String::from_utf8_lossy(&dec.stderr)
            );
        }
    }

    // Status names the track; metrics count its frames.
    let ch = common::status_detail(&ns, "test")["channels"][0].clone();
    let tracks = ch["tracks"].as_array().unwrap_or_else(|| panic!("{ch}"));
    assert_eq!(tracks.len(), 1, "{ch}");
    assert_eq!(tracks[0]["kind"], "audio", "{ch}");
    let (_, metrics) = ns
        .run(|| common::http_get("127.0.0.1:8080", "/metrics"))
        .unwrap();
    // 10 s of sound: 78 G.711 packets of 128 ms, 469 AAC frames.
    assert!(
        common::metric(&metrics, "mcrelay_track_frames_total") > 70.0,
        "{metrics}"
    );
}

#[test]
fn aac_audio_reaches_multicast_and_rtsp_workstations_in_sync() {
    relay_audio("aac", "a=rtpmap:97 MPEG4-GENERIC/48000/1\r\n");
}

#[test]
fn g711_audio_reaches_multicast_and_rtsp_workstations_in_sync() {
    relay_audio("pcmu", "a=rtpmap:0 PCMU/8000");
}
