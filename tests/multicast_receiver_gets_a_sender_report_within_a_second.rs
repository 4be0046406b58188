//! A workstation that joins a channel's group mid-stream needs an RTCP
//! sender report to map RTP time to wall-clock time: it gets one within a
//! second of joining the RTCP port, whenever it joins, for the channel's
//! SSRC and with the current time.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Netns;

const SITE: &str = r#"
[[server]]
name = "rec"
password = "test"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.31.1"
port = 7000
interface = "127.0.0.1"
ttl = 1
[[server.channel]]
id = 1
source = "tcp://127.0.0.1:9001"
codec = "h264"
"#;

/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX: u64 = 2_208_988_800;

#[test]
fn a_receiver_joining_mid_stream_gets_a_sender_report_within_a_second() {
    let ns = Netns::new("srjoin");
    let dir = common::tempdir();
    let site = common::write_site(dir.path(), SITE);
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec");
    let _camera = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    common::wait_camera_state(&ns, 1, "streaming", Duration::from_secs(10));
    let group = Ipv4Addr::new(239, 255, 31, 1);
    let ssrc = ns.run(move || {
        let rtp = common::join(group, 7002);
        let mut buf = [0u8; 2048];
        let n = rtp.recv(&mut buf).expect("RTP on the group");
        assert!(n >= 12, "not RTP");
        u32::from_be_bytes(buf[8..12].try_into().unwrap())
    });
    // Joins at different points of the report cycle, one after the other.
    let mut waits = Vec::new();
    for pause_ms in [0u64, 130, 290, 410, 70, 230] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        let (wait, sr) = ns.run(move || {
            let rtcp = common::join(group, 7003);
            let joined = Instant::now();
            let mut buf = [0u8; 2048];
            while joined.elapsed() < Duration::from_secs(6) {
                if let Ok(n) = rtcp.recv(&mut buf)
                    && n >= 28
                    && buf[1] == 200
                {
                    return (joined.elapsed(), buf[..n].to_vec());
                }
            }
            panic!("no sender report within 6 s of joining");
        });
        assert_eq!(u32::from_be_bytes(sr[4..8].try_into().unwrap()), ssrc);
        let ntp_secs = u64::from(u32::from_be_bytes(sr[8..12].try_into().unwrap()));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            (ntp_secs - NTP_UNIX).abs_diff(now) <= 2,
            "SR wall clock {} vs now {now}",
            ntp_secs - NTP_UNIX
        );
        waits.push(wait);
    }
    let longest = *waits.iter().max().unwrap();
    eprintln!("waits for a sender report: {waits:?}");
    assert!(
        longest < Duration::from_secs(1),
        "a receiver waited {longest:?} for a sender report (all: {waits:?})"
    );
}
