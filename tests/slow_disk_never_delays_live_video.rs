//! A material disk whose writes and syncs take a second each (a FUSE
//! passthrough, tests/common/slowfs.rs) never delays live video: a
//! multicast receiver sees every frame at the camera's rate, with no gap
//! over 100 ms, while the recorder drops (and counts) what the disk cannot
//! take.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Netns;
use common::slowfs::SlowFs;

const GROUP: &str = "239.255.44.1";

#[test]
fn a_slow_disk_never_delays_multicast() {
    let ns = Netns::new("slowdisk");
    let dir = common::tempdir();
    let backing = dir.path().join("backing");
    let disk = dir.path().join("disk1");
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&disk).unwrap();
    let fs = SlowFs::mount(&backing, &disk);
    // A 4 Mbit/s camera: the disk below takes ~256 KiB/s when slow, so a
    // 1 MiB write buffer overflows within seconds.
    let clip = common::make_clip(dir.path(), "1280x720", "4M", 10);
    let text = format!(
        r#"
[[server]]
name = "rec-1"
password = "s3cret"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "{GROUP}"
port = 7000
interface = "127.0.0.1"
ttl = 1
[server.storage]
disks = ["{}"]
segment = "2s"
write_buffer_mb = 1
[[server.channel]]
id = 1
source = "tcp://127.0.0.1:9001"
codec = "h264"
"#,
        disk.display()
    );
    let site = common::write_site(dir.path(), &text);
    let mut cam = ns.command(common::mcrelay());
    cam.args(["camera", "--format", "annexb", "--clip"])
        .arg(&clip)
        .args(["--listen", "127.0.0.1:9001"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _cam = common::Proc::spawn(cam, "mcrelay camera");
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec-1");

    // Channel 1 goes to port 7000 + 2.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_rx = stop.clone();
    let receiver = ns.spawn(move || {
        let s = common::join(GROUP.parse().unwrap(), 7002);
        let mut frames: Vec<Instant> = Vec::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop_rx.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok(n) = s.recv(&mut buf)
                && n >= 12
                && buf[1] & 0x80 != 0
            {
                frames.push(Instant::now());
            }
        }
        frames
    });

    // Recording works while the disk is fast.
    let recorded = common::wait_for(Duration::from_secs(20), || {
        let m = metrics(&ns);
        (common::metric(&m, "mcrelay_recorded_segments_total") >= 1.0).then_some(())
    });
    assert!(recorded.is_some(), "no segment on the fast disk");

    fs.set_delay(Duration::from_secs(1));
    let slow_from = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let slow_until = Instant::now();
    let during = metrics(&ns);
    fs.set_delay(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let frames = receiver.join().unwrap();

    let slow: Vec<Instant> = frames
        .iter()
        .copied()
        .filter(|t| *t >= slow_from && *t <= slow_until)
        .collect();
    let seconds = (slow_until - slow_from).as_secs_f64();
    let max_gap = slow
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(Duration::MAX);
    eprintln!(
        "slow disk: {} frames in {seconds:.1} s, largest gap {max_gap:?}, {} slow ops, dropped {}",
        slow.len(),
        fs.ops_delayed(),
        common::metric(&during, "mcrelay_record_dropped_frames_total")
    );
    assert!(
        slow.len() as f64 >= 0.95 * 25.0 * seconds,
        "{} frames in {seconds:.1} s while the disk was slow",
        slow.len()
    );
    assert!(max_gap <= Duration::from_millis(100), "gap of {max_gap:?}");
    assert!(
        fs.delayed_by_kind().get("write").copied().unwrap_or(0) > 0,
        "the disk was never slow: {:?}",
        fs.delayed_by_kind()
    );
    assert!(
        common::metric(&during, "mcrelay_record_dropped_frames_total") > 0.0,
        "the recorder counted no dropped material"
    );
    // Live video was relayed throughout.
    assert!(
        common::metric(&during, "mcrelay_channel_frames_total") >= 25.0 * 8.0,
        "{during}"
    );
}

fn metrics(ns: &Netns) -> String {
    ns.run(|| common::http_get("127.0.0.1:8080", "/metrics"))
        .map(|(_, b)| b)
        .unwrap_or_default()
}
