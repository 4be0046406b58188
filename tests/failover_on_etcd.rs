//! The etcd failover controller on a LAN of namespaces: a camera host,
//! recorder-1, failover-1, a workstation and a 3-member etcd cluster
//! (e1, e2, e3) on one switch; `[site.failover] controller = "etcd"` with
//! a lease of 2 s. An independent receiver on the workstation logs the
//! source, SSRC, sequence number and arrival time of every packet on each
//! of recorder-1's groups (video and sound of its channel), and ffmpeg
//! plays the channel from its SDP, never restarted.
//!
//! Faults, one test each: recorder-1 killed (kill -9); recorder-1 cut off
//! from etcd only (its viewers still reach it), then healed; failover-1
//! cut off from etcd when recorder-1 dies; recorder-1 stopped (SIGSTOP)
//! for longer than its lease, and for shorter; the etcd leader killed; a
//! minority of etcd partitioned from the rest; every etcd member's
//! packets half lost and delayed 75 ± 50 ms (netem's `loss 50% delay 75ms
//! 50ms`, done in userspace by [`common::etcd::Impairment`]). Each run proves that at most
//! one server emits on a group at every instant (the second-emitter
//! packets, [`second_emitter_packets`], are 0), and prints the takeover
//! time (the fault to failover-1's first packet on recorder-1's group)
//! and the second-emitter counts: run with `--nocapture` to read them.
//!
//! What each fault must give: a dead recorder is covered within its
//! inaccessible period and a second; a recorder that cannot renew its
//! lease stops sending within half the lease (self-fencing), before
//! anyone may take its role, and stays off its group once healed; a
//! standby that cannot reach etcd takes nothing over; a recorder that
//! resumes after its lease expired sends not one stale packet; losing the
//! etcd leader or a minority moves no role and leaves no gap over a
//! second on the group.
//!
//! Needs root (namespaces), Debian's etcd-server, ffmpeg and tc; built
//! with `--features etcd`.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd::{Cluster, blackhole, reachable, unblackhole};
use common::lan::Lan;
use common::{Decoder, Netns, Packet, Proc};
use mcrelay::failover::etcd_store::testing::{CLIENT_PORT, RaftTiming};

const SITE: &str = r#"
[site]
key = "5a17e0c3b9f84d21a6c0e7b3d9f2418c"

[site.failover]
controller = "etcd"
poll_interval = "500ms"
endpoints = ["http://198.18.0.21:2379", "http://198.18.0.22:2379", "http://198.18.0.23:2379"]
lease_ttl = "2s"
failback_delay = "300s"

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
automatic_failback = false
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

/// recorder-1's inaccessible_period.
const PERIOD: Duration = Duration::from_secs(3);
/// The site's lease_ttl.
const TTL: Duration = Duration::from_secs(2);
/// The lossy, slow etcd links: what each member sends is lost with this
/// probability, and delayed DELAY ± JITTER (netem's `loss 50% delay 75ms
/// 50ms`).
const LOSS: f64 = 0.5;
const DELAY: Duration = Duration::from_millis(75);
const JITTER: Duration = Duration::from_millis(50);

const HOSTS: [(&str, &str); 7] = [
    ("cam", "198.18.0.10"),
    ("rec1", "198.18.0.1"),
    ("fo1", "198.18.0.2"),
    ("ws", "198.18.1.1"),
    ("e1", "198.18.0.21"),
    ("e2", "198.18.0.22"),
    ("e3", "198.18.0.23"),
];
const ETCD: [(&str, &str); 3] = [
    ("e1", "198.18.0.21"),
    ("e2", "198.18.0.22"),
    ("e3", "198.18.0.23"),
];
const ETCD_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 0, 21),
    Ipv4Addr::new(198, 18, 0, 22),
    Ipv4Addr::new(198, 18, 0, 23),
];

const REC1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const FO1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const WS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// recorder-1's group; channel 1's video on 7200 + 2, sound on 7200 +
/// 2000 + 2.
const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 50, 1);

// ---------------------------------------------------------------------
// The checker.

/// Two packets of one source further apart than this belong to two
/// stretches of emission (tenures). A sending server's packets come every
/// frame (40 ms at 25 fps); a role moves only after a lease expired, over
/// a second of silence.
const TENURE_GAP: Duration = Duration::from_millis(500);

/// One source's stretch of emission on a group: its packets with no gap
/// over [`TENURE_GAP`].
#[derive(Debug, Clone, Copy)]
struct Tenure {
    from: Ipv4Addr,
    first: Instant,
    last: Instant,
    packets: usize,
}

/// The tenures in `got`, by their first packet.
fn tenures(got: &[Packet]) -> Vec<Tenure> {
    let mut sorted = got.to_vec();
    sorted.sort_by_key(|p| p.at);
    let mut open: Vec<Tenure> = Vec::new();
    let mut done: Vec<Tenure> = Vec::new();
    for p in &sorted {
        match open.iter_mut().find(|t| t.from == p.from) {
            Some(t) if p.at.duration_since(t.last) <= TENURE_GAP => {
                t.last = p.at;
                t.packets += 1;
            }
            Some(t) => {
                done.push(*t);
                *t = Tenure {
                    from: p.from,
                    first: p.at,
                    last: p.at,
                    packets: 1,
                };
            }
            None => open.push(Tenure {
                from: p.from,
                first: p.at,
                last: p.at,
                packets: 1,
            }),
        }
    }
    done.extend(open);
    done.sort_by_key(|t| t.first);
    done
}

/// The packets on a group that arrived from one source while another was
/// still emitting there. Sorted by arrival, each source's packets form
/// tenures ([`tenures`]); a switch from A to B is clean if A sends nothing
/// after B's first packet. Where a tenure of A and one of B overlap, every
/// packet of A that arrives after B's first packet (and before B's last)
/// and every packet of B that arrives before A's last (and after A's
/// first) is a second-emitter packet. A stale packet of A in the middle of
/// B's tenure is one; so is a stray packet of B in the middle of A's.
fn second_emitter_packets(got: &[Packet]) -> usize {
    let ts = tenures(got);
    got.iter()
        .filter(|p| {
            ts.iter()
                .any(|t| t.from != p.from && t.first <= p.at && p.at <= t.last)
        })
        .count()
}

/// The tenures as text, in seconds relative to `t0`.
fn timeline(got: &[Packet], t0: Instant) -> String {
    tenures(got)
        .iter()
        .map(|t| {
            format!(
                "    {} {:+.3} s .. {:+.3} s, {} packets",
                t.from,
                secs(t.first, t0),
                secs(t.last, t0),
                t.packets
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `at - t0` in seconds, negative before.
fn secs(at: Instant, t0: Instant) -> f64 {
    if at >= t0 {
        at.duration_since(t0).as_secs_f64()
    } else {
        -t0.duration_since(at).as_secs_f64()
    }
}

/// The longest time between packets of `got` (any source) in
/// `[from, to]`, the window's ends included.
fn max_gap(got: &[Packet], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = got
        .iter()
        .map(|p| p.at)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    times.insert(0, from);
    times.push(to);
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

#[test]
fn the_second_emitter_checker_counts_overlaps_only() {
    let t0 = Instant::now();
    let a = Ipv4Addr::new(198, 18, 9, 1);
    let b = Ipv4Addr::new(198, 18, 9, 2);
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let pk = |from, ms| Packet {
        from,
        seq: 0,
        ts: 0,
        ssrc: 1,
        at: at(ms),
    };
    // `from` sending every 40 ms in [start, end).
    let flow = |from, start: u64, end: u64| {
        (start..end)
            .step_by(40)
            .map(|ms| pk(from, ms))
            .collect::<Vec<_>>()
    };
    let cat = |parts: &[Vec<Packet>]| parts.concat();

    assert_eq!(second_emitter_packets(&[]), 0);
    assert_eq!(second_emitter_packets(&flow(a, 0, 5000)), 0, "one source");
    // A stops, B starts 3 s later: clean.
    let clean = cat(&[flow(a, 0, 5000), flow(b, 8000, 12000)]);
    assert_eq!(second_emitter_packets(&clean), 0, "clean takeover");
    // A, B, A again, each after a silence: clean each time.
    let back = cat(&[flow(a, 0, 5000), flow(b, 7000, 9000), flow(a, 11000, 14000)]);
    assert_eq!(second_emitter_packets(&back), 0, "clean takeover and back");
    // The same, unsorted.
    let mut shuffled = back.clone();
    shuffled.reverse();
    assert_eq!(second_emitter_packets(&shuffled), 0, "order of the input");
    // A hand-over within a frame time, A's last packet before B's first.
    let tight = cat(&[flow(a, 0, 5000), flow(b, 5010, 9000)]);
    assert_eq!(second_emitter_packets(&tight), 0, "tight hand-over");

    // B starts at 5000 while A sends until 5200: A's packets at 5000,
    // 5040, .. 5160 (5) after B's first, B's 5000 .. 5160 (5) before A's
    // last.
    let overlap = cat(&[flow(a, 0, 5200), flow(b, 5000, 9000)]);
    assert_eq!(second_emitter_packets(&overlap), 10, "overlapping tenures");
    // One stale packet of A 2 s into B's tenure (after 3 s of silence).
    let stale = cat(&[flow(a, 0, 5000), flow(b, 8000, 12000), vec![pk(a, 10010)]]);
    assert_eq!(second_emitter_packets(&stale), 1, "a stale packet");
    // One stray packet of B in the middle of A's flow.
    let stray = cat(&[flow(a, 0, 5000), vec![pk(b, 2010)]]);
    assert_eq!(second_emitter_packets(&stray), 1, "a stray packet");
    // Both sending all along: every packet counts but the first and the
    // last of the pair.
    let both = cat(&[flow(a, 0, 2000), flow(b, 20, 2020)]);
    assert_eq!(
        second_emitter_packets(&both),
        both.len() - 2,
        "two emitters all along"
    );
    // A third source at once.
    let three = cat(&[
        flow(a, 0, 2000),
        vec![pk(b, 1010), pk(Ipv4Addr::new(198, 18, 9, 3), 1030)],
    ]);
    assert_eq!(second_emitter_packets(&three), 2, "third source");

    // The helpers the reports use.
    assert_eq!(tenures(&back).len(), 3);
    assert_eq!(tenures(&stale).len(), 3);
    assert_eq!(
        max_gap(&clean, at(0), at(12000)),
        Duration::from_millis(8000 - 4960)
    );
    assert!(timeline(&clean, at(5000)).contains("198.18.9.2 +3.000 s .. +6.960 s, 100 packets"));
}

// ---------------------------------------------------------------------
// The harness.

/// A receiver on the workstation that logs every packet on a group's port
/// (the independent witness of who sends what), readable while it runs.
struct LiveLog {
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Packet>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LiveLog {
    fn start(ns: &Netns, group: Ipv4Addr, port: u16, iface: Ipv4Addr) -> LiveLog {
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (stop_rx, log) = (stop.clone(), got.clone());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let sock = common::join_on(group, port, iface);
            let _ = ready_tx.send(());
            let mut buf = [0u8; 2048];
            while !stop_rx.load(Ordering::Relaxed) {
                if let Ok((n, std::net::SocketAddr::V4(from))) = sock.recv_from(&mut buf)
                    && n >= 12
                {
                    let p = Packet {
                        from: *from.ip(),
                        seq: u16::from_be_bytes([buf[2], buf[3]]),
                        ts: u32::from_be_bytes(buf[4..8].try_into().unwrap()),
                        ssrc: u32::from_be_bytes(buf[8..12].try_into().unwrap()),
                        at: Instant::now(),
                    };
                    log.lock().unwrap().push(p);
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(5))
            .expect("the packet log did not join its group");
        LiveLog {
            stop,
            got,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<Packet> {
        self.got.lock().unwrap().clone()
    }

    /// The first packet from `from` that arrived after `after`.
    fn first_from(&self, from: Ipv4Addr, after: Instant) -> Option<Packet> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.from == from && p.at > after)
            .copied()
    }

    /// Waits (at most `timeout`) for [`LiveLog::first_from`].
    fn wait_first_from(&self, from: Ipv4Addr, after: Instant, timeout: Duration) -> Option<Packet> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(p) = self.first_from(from, after) {
                return Some(p);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(mut self) -> Vec<Packet> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("packet log");
        }
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

impl Drop for LiveLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Debian's libfaketime: a process under it reads its wall clock (and
/// only that: `FAKETIME_DONT_FAKE_MONOTONIC`) offset by what a file says,
/// read again every second, so a test steps one host's clock while it
/// runs.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The file that offsets `server`'s wall clock ([`LIBFAKETIME`]): `+0`,
/// `-3600` (seconds).
fn clock_file(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    dir.join(format!("clock-{server}"))
}

fn start_server(
    ns: &Netns,
    dir: &std::path::Path,
    site: &std::path::Path,
    server: &str,
    addr: &str,
    faketime: bool,
) -> Proc {
    let log = std::fs::File::create(dir.join(format!("mcrelay-{server}.log"))).unwrap();
    let mut cmd = ns.command(common::mcrelay());
    cmd.args(["run", "--site"])
        .arg(site)
        .args(["--server", server])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    if faketime {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} missing (Debian package libfaketime)"
        );
        let clock = clock_file(dir, server);
        std::fs::write(&clock, "+0\n").unwrap();
        cmd.env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_CACHE_DURATION", "1");
    }
    let mut p = Proc::spawn(cmd, server);
    common::wait_http(ns, addr, &mut p, dir);
    p
}

fn get(ns: &Netns, addr: &'static str, path: &'static str) -> Option<(u16, String)> {
    ns.run(move || common::http_get(addr, path).ok())
}

/// The last `n` lines of each server's log and of ffmpeg's errors, for an
/// assert message.
fn logs(dir: &std::path::Path) -> String {
    let tail = |name: &str, n: usize| {
        let mut text = common::plain_log(&dir.join(name));
        if name.starts_with("ffmpeg") {
            // Its messages, not its frames.
            text = common::FfmpegLog::parse(&text).messages().join("\n");
        }
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "== {name} (last {} of {} lines)\n{}",
            n.min(lines.len()),
            lines.len(),
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    };
    [
        tail("mcrelay-recorder-1.log", 150),
        tail("mcrelay-failover-1.log", 150),
        tail("ffmpeg-etcd.log", 20),
    ]
    .join("\n")
}

/// The LAN, the etcd cluster, the servers, the packet logs and ffmpeg on
/// the workstation, recorder-1 emitting. Fields drop in order: the
/// processes first, the namespaces last.
struct Site {
    rec1: Proc,
    fo1: Proc,
    _camera: Proc,
    video: LiveLog,
    audio: LiveLog,
    decoder: Decoder,
    etcd: Cluster,
    dir: tempfile::TempDir,
    lan: Lan,
}

impl Site {
    fn start(tag: &str) -> Site {
        Site::start_with(tag, SITE, false, RaftTiming::LAN)
    }

    /// `faketime`: the servers' wall clocks can be stepped
    /// ([`clock_file`]); `timing`: etcd's raft timing.
    fn start_with(tag: &str, site_text: &str, faketime: bool, timing: RaftTiming) -> Site {
        let lan = Lan::new(tag, &HOSTS);
        let etcd = Cluster::start_with(&lan, &ETCD, timing);
        assert_eq!(
            etcd.endpoints(),
            [
                "http://198.18.0.21:2379",
                "http://198.18.0.22:2379",
                "http://198.18.0.23:2379"
            ]
        );
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
        let rec1 = start_server(
            lan.host("rec1"),
            dir.path(),
            &site,
            "recorder-1",
            "198.18.0.1:8080",
            faketime,
        );
        let fo1 = start_server(
            lan.host("fo1"),
            dir.path(),
            &site,
            "failover-1",
            "198.18.0.2:8080",
            faketime,
        );
        let ws = lan.host("ws");
        // The complete SDP (parameter sets and sound), as a workstation
        // that opens the channel later gets it.
        let sdp = common::wait_for(Duration::from_secs(20), || {
            let (code, body) = get(ws, "198.18.0.1:8080", "/channels/1.sdp")?;
            (code == 200
                && body.contains("m=video")
                && body.contains("sprop-parameter-sets")
                && body.contains("m=audio"))
            .then_some(body)
        })
        .unwrap_or_else(|| panic!("recorder-1 never served its SDP\n{}", logs(dir.path())));
        assert!(sdp.contains(&format!("c=IN IP4 {GROUP}/1")), "{sdp}");
        let sdp_file = dir.path().join("ch1.sdp");
        std::fs::write(&sdp_file, &sdp).unwrap();
        let video = LiveLog::start(ws, GROUP, 7202, WS);
        let audio = LiveLog::start(ws, GROUP, 9202, WS);
        let decoder = Decoder::start_with(
            ws,
            dir.path(),
            "etcd",
            &["-protocol_whitelist", "file,udp,rtp", "-f", "sdp"],
            sdp_file.to_str().unwrap(),
            &["-map", "0:v", "-fps_mode", "passthrough"],
            120,
        );
        let t0 = Instant::now() - Duration::from_secs(1);
        // recorder-1 takes its own role on etcd, then emits.
        let first = video.wait_first_from(REC1, t0, Duration::from_secs(20));
        assert!(
            first.is_some(),
            "recorder-1 never emitted on its group\n{}",
            logs(dir.path())
        );
        std::thread::sleep(Duration::from_secs(5));
        let before = decoder.frames_so_far();
        let got = video.snapshot();
        assert!(
            before >= 60,
            "ffmpeg decoded {before} frames before the fault\n{}",
            logs(dir.path())
        );
        assert!(
            got.iter().all(|p| p.from == REC1),
            "a source other than recorder-1 on its group before the fault:\n{}\n{}",
            timeline(&got, t0),
            logs(dir.path())
        );
        Site {
            rec1,
            fo1,
            _camera: camera,
            video,
            audio,
            decoder,
            etcd,
            dir,
            lan,
        }
    }

    fn ws(&self) -> &Netns {
        self.lan.host("ws")
    }

    /// Stops the logs and ffmpeg.
    fn finish(mut self) -> Finished {
        let (frames, errors) = self.decoder.finish(Duration::from_secs(1));
        let logs = logs(self.dir.path());
        // The servers' last words before they are killed with the LAN.
        self.rec1.kill();
        self.fo1.kill();
        Finished {
            video: self.video.finish(),
            audio: self.audio.finish(),
            frames,
            errors,
            logs,
        }
    }
}

/// What a run leaves: both groups' packets, ffmpeg's frames and error
/// lines, the servers' logs.
struct Finished {
    video: Vec<Packet>,
    audio: Vec<Packet>,
    frames: u64,
    errors: Vec<String>,
    logs: String,
}

impl Finished {
    /// Counts the second-emitter packets on both groups, prints them, the
    /// takeover time (the fault at `t0` to failover-1's first packet on
    /// the group, if any) and the timeline, and asserts 0.
    fn assert_one_emitter(&self, what: &str, t0: Instant) -> (usize, usize) {
        let (v, a) = (
            second_emitter_packets(&self.video),
            second_emitter_packets(&self.audio),
        );
        let takeover = self
            .from(FO1)
            .find(|p| p.at > t0)
            .map_or("none".to_string(), |p| format!("{:.3} s", secs(p.at, t0)));
        println!(
            "  RESULT {what}: takeover {takeover}; second-emitter packets: video {v}, audio {a}\n  \
             video tenures (s from the fault):\n{}",
            timeline(&self.video, t0)
        );
        assert!(
            v == 0 && a == 0,
            "{what}: {v} video and {a} sound packets from a second emitter\nvideo:\n{}\nsound:\n{}\n{}",
            timeline(&self.video, t0),
            timeline(&self.audio, t0),
            self.logs
        );
        (v, a)
    }

    /// recorder-1, cut off at `cut` from etcd's majority, stopped sending
    /// within half its lease, failover-1 took over (`first`: its first
    /// packet) once recorder-1's lease could have expired and within the
    /// period, and after the heal at `healed` recorder-1 stayed off its
    /// group while failover-1 went on. Prints the figures, and asserts one
    /// emitter at every instant.
    fn assert_yielded_and_stayed_off(
        &self,
        what: &str,
        first: Option<Packet>,
        cut: Instant,
        healed: Instant,
    ) {
        let Some(first) = first else {
            panic!(
                "{what}: failover-1 never took over\n{}\n{}",
                timeline(&self.video, cut),
                self.logs
            );
        };
        let last_rec1 = self
            .last_before(REC1, first.at)
            .expect("no packet of recorder-1");
        let stopped = secs(last_rec1.at, cut);
        let took = first.at.duration_since(cut);
        let after_heal = self.count_after(REC1, healed);
        let fo1_to_the_end = self
            .from(FO1)
            .last()
            .map(|p| secs(p.at, healed))
            .unwrap_or_default();
        println!(
            "{what}: its last packet {stopped:+.3} s after the cut (lease_ttl/2 = {:?}), \
             takeover {:.3} s after the cut; {}; after the heal recorder-1 sent {after_heal} packets, \
             failover-1 sent until {fo1_to_the_end:+.2} s; ffmpeg {} frames in all, {} error lines",
            TTL / 2,
            took.as_secs_f64(),
            self.continuity(),
            self.frames,
            self.errors.len()
        );
        self.assert_one_emitter(what, cut);
        assert!(
            stopped <= (TTL / 2).as_secs_f64() + 0.5,
            "{what}: recorder-1 went on sending {stopped:.3} s after the cut (lease_ttl/2 = {:?})\n{}",
            TTL / 2,
            self.logs
        );
        // Not before recorder-1's lease could have expired: its last
        // keep-alive reached etcd at most 250 ms (lease_ttl/8) before the
        // cut.
        assert!(
            took >= TTL - TTL / 8,
            "{what}: failover-1 emitted {took:?} after the cut, before recorder-1's lease could expire\n{}",
            self.logs
        );
        assert!(
            took <= PERIOD + Duration::from_secs(2),
            "{what}: failover-1 emitted {took:?} after the cut\n{}",
            self.logs
        );
        assert_eq!(
            after_heal,
            0,
            "{what}: the healed recorder-1 emitted on its group (covered by failover-1)\n{}\n{}",
            timeline(&self.video, cut),
            self.logs
        );
        assert!(
            fo1_to_the_end >= 4.0,
            "{what}: failover-1 stopped covering {fo1_to_the_end:.2} s after the heal\n{}\n{}",
            timeline(&self.video, cut),
            self.logs
        );
    }

    fn from(&self, src: Ipv4Addr) -> impl Iterator<Item = &Packet> {
        self.video.iter().filter(move |p| p.from == src)
    }

    /// Packets from `src` on the video group that arrived after `t`.
    fn count_after(&self, src: Ipv4Addr, t: Instant) -> usize {
        self.from(src).filter(|p| p.at > t).count()
    }

    fn last_before(&self, src: Ipv4Addr, t: Instant) -> Option<Packet> {
        self.from(src).filter(|p| p.at < t).last().copied()
    }

    /// SSRC and sequence of failover-1's first packet against recorder-1's
    /// last before it (printed, not asserted: the continuity of the
    /// stream is failover_on_a_lan.rs's subject).
    fn continuity(&self) -> String {
        let Some(first) = self.from(FO1).next().copied() else {
            return "no packet of failover-1".into();
        };
        let Some(last) = self.last_before(REC1, first.at) else {
            return "no packet of recorder-1 before failover-1's".into();
        };
        format!(
            "SSRC {:08x} -> {:08x}, sequence +{}, gap on the group {:.3} s",
            last.ssrc,
            first.ssrc,
            first.seq.wrapping_sub(last.seq),
            first.at.duration_since(last.at).as_secs_f64()
        )
    }
}

fn sigstop(pid: u32) {
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
}

fn sigcont(pid: u32) {
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGCONT) }, 0);
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

// ---------------------------------------------------------------------
// The harness on its own: the cluster, its leader, its faults.

#[test]
fn the_etcd_cluster_in_namespaces_elects_partitions_and_survives_its_leader() {
    let lan = Lan::new(
        "eh",
        &[
            ETCD[0],
            ETCD[1],
            ETCD[2],
            ("ws", "198.18.1.1"),
            ("rec1", "198.18.0.1"),
        ],
    );
    let mut etcd = Cluster::start(&lan, &ETCD);
    let ws = lan.host("ws");
    let t = Instant::now();
    let leader = etcd.wait_leader(ws, Duration::from_secs(5));
    println!(
        "harness: 3 members healthy, leader {} (found in {:.2} s)",
        etcd.members[leader].name,
        t.elapsed().as_secs_f64()
    );
    // Every member names the same leader.
    let id = |st: &serde_json::Value, k: &str| st[k].as_str().map(str::to_string);
    let statuses: Vec<_> = (0..3).map(|i| etcd.status(ws, i).unwrap()).collect();
    let leader_id = id(&statuses[leader]["header"], "member_id").unwrap();
    assert!(
        statuses
            .iter()
            .all(|s| id(s, "leader").as_deref() == Some(&leader_id)),
        "{statuses:?}"
    );

    // A host blackholed from the members reaches none; the others do.
    let rec1 = lan.host("rec1");
    let reach = |ns: &Netns| {
        ETCD_IPS
            .iter()
            .map(|ip| {
                let a = (*ip, CLIENT_PORT).into();
                ns.run(move || reachable(a))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(reach(rec1), [true; 3]);
    blackhole(rec1, &ETCD_IPS);
    assert_eq!(reach(rec1), [false; 3]);
    assert_eq!(reach(ws), [true; 3]);
    unblackhole(rec1, &ETCD_IPS);
    assert_eq!(reach(rec1), [true; 3]);

    // A follower cut off from the other two loses its health (no leader,
    // no quorum read); the majority keeps its leader.
    let follower = (0..3).find(|&i| i != leader).unwrap();
    etcd.isolate(follower);
    let t = Instant::now();
    let lost = common::wait_for(Duration::from_secs(10), || {
        (!etcd.healthy(ws, follower)).then(|| t.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "{} still healthy when partitioned",
            etcd.members[follower].name
        )
    });
    assert!(
        (0..3)
            .filter(|&i| i != follower)
            .all(|i| etcd.healthy(ws, i))
    );
    assert_eq!(etcd.leader(ws), Some(leader));
    etcd.rejoin(follower);
    let t = Instant::now();
    let back = common::wait_for(Duration::from_secs(15), || {
        etcd.healthy(ws, follower).then(|| t.elapsed())
    })
    .unwrap_or_else(|| panic!("{} not healthy after the heal", etcd.members[follower].name));
    println!(
        "harness: {} partitioned: unhealthy after {:.2} s; healthy again {:.2} s after the heal",
        etcd.members[follower].name,
        lost.as_secs_f64(),
        back.as_secs_f64()
    );

    // Lossy, slow links (what the members send): a connection to a
    // member opens only when its SYN-ACK gets through, 75 ± 50 ms late.
    let connects = |n: usize| {
        let a = etcd.members[0].client();
        ws.run(move || {
            (0..n)
                .map(|_| {
                    let t = Instant::now();
                    std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500))
                        .ok()
                        .map(|_| t.elapsed())
                })
                .collect::<Vec<_>>()
        })
    };
    let clear = connects(20);
    assert!(
        clear
            .iter()
            .all(|c| c.is_some_and(|t| t < Duration::from_millis(20))),
        "{clear:?}"
    );
    let slow = etcd.impair(&lan, LOSS, DELAY, JITTER);
    let lossy = connects(40);
    let ok: Vec<Duration> = lossy.iter().flatten().copied().collect();
    let (relayed, lost) = *slow.counts.lock().unwrap();
    drop(slow);
    let healed = connects(20);
    println!(
        "harness: lossy links: {} of 40 connections to e1 opened, in {:.0} .. {:.0} ms; \
         the relays passed {relayed} frames of the members and lost {lost}",
        ok.len(),
        ok.iter().min().unwrap_or(&Duration::ZERO).as_secs_f64() * 1e3,
        ok.iter().max().unwrap_or(&Duration::ZERO).as_secs_f64() * 1e3,
    );
    assert!((5..=35).contains(&ok.len()), "{lossy:?}");
    assert!(
        ok.iter()
            .all(|t| *t >= DELAY - JITTER - Duration::from_millis(5)),
        "{lossy:?}"
    );
    assert!(
        healed.iter().all(Option::is_some),
        "after the heal: {healed:?}"
    );
    // And the cluster stands again.
    let t = Instant::now();
    let whole = common::wait_for(Duration::from_secs(15), || {
        (0..3).all(|i| etcd.healthy(ws, i)).then(|| t.elapsed())
    })
    .expect("not every member healthy 15 s after the heal");
    println!(
        "harness: every member healthy {:.2} s after the heal",
        whole.as_secs_f64()
    );

    // The leader killed: the other two elect one of them.
    let leader = etcd.wait_leader(ws, Duration::from_secs(10));
    let pid = etcd.members[leader].pid().unwrap();
    let t = Instant::now();
    etcd.kill(leader);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/status")).exists()
            || !std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .contains("etcd"),
        "etcd {pid} still runs"
    );
    let new = etcd.wait_leader(ws, Duration::from_secs(10));
    assert_ne!(new, leader);
    println!(
        "harness: leader {} killed, {} elected {:.2} s later",
        etcd.members[leader].name,
        etcd.members[new].name,
        t.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------
// The faults.

#[test]
fn a_killed_recorder_is_covered_within_its_period_by_one_emitter_at_a_time() {
    let mut s = Site::start("ek");
    let before = s.decoder.frames_so_far();
    let killed = Instant::now();
    s.rec1.kill();
    let first = s
        .video
        .wait_first_from(FO1, killed, PERIOD + Duration::from_secs(10));
    let at_takeover = s.decoder.frames_so_far();
    std::thread::sleep(Duration::from_secs(10));
    let after = s.decoder.frames_so_far() - at_takeover;
    let out = s.finish();
    let first = first.unwrap_or_else(|| {
        panic!(
            "failover-1 never emitted on recorder-1's group after the kill\n{}\n{}",
            timeline(&out.video, killed),
            out.logs
        )
    });
    let took = first.at.duration_since(killed);
    println!(
        "kill -9 of recorder-1: takeover {:.3} s (first packet of failover-1 on the group); {}; \
         ffmpeg {before} frames before, {after} in the 10 s after the takeover, {} error lines",
        took.as_secs_f64(),
        out.continuity(),
        out.errors.len()
    );
    out.assert_one_emitter("kill -9", killed);
    assert!(
        took <= PERIOD + Duration::from_secs(2),
        "failover-1 emitted {took:?} after the kill (inaccessible_period {PERIOD:?})\n{}",
        out.logs
    );
    assert!(
        after >= 225,
        "ffmpeg decoded {after} frames in the 10 s after the takeover: {:?}\n{}",
        out.errors,
        out.logs
    );
}

#[test]
fn a_recorder_cut_off_from_etcd_fences_itself_before_its_lease_expires() {
    let s = Site::start("ec");
    let rec1 = s.lan.host("rec1");
    let cut = Instant::now();
    blackhole(rec1, &ETCD_IPS);
    // The cut is real; the workstation still reaches recorder-1.
    let e1 = (ETCD_IPS[0], CLIENT_PORT).into();
    assert!(
        !rec1.run(move || reachable(e1)),
        "recorder-1 still reaches e1"
    );
    assert!(
        get(s.ws(), "198.18.0.1:8080", "/health").is_some(),
        "the workstation lost recorder-1"
    );
    let first = s
        .video
        .wait_first_from(FO1, cut, PERIOD + Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    let healed = Instant::now();
    unblackhole(rec1, &ETCD_IPS);
    std::thread::sleep(Duration::from_secs(5));
    let out = s.finish();
    out.assert_yielded_and_stayed_off("recorder-1 cut off from etcd", first, cut, healed);
}

#[test]
fn a_standby_cut_off_from_etcd_takes_nothing_over() {
    let mut s = Site::start("es");
    let fo1 = s.lan.host("fo1");
    let cut = Instant::now();
    blackhole(fo1, &ETCD_IPS);
    let e1 = (ETCD_IPS[0], CLIENT_PORT).into();
    assert!(
        !fo1.run(move || reachable(e1)),
        "failover-1 still reaches e1"
    );
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    s.rec1.kill();
    std::thread::sleep(Duration::from_secs(10));
    let during = s.video.first_from(FO1, cut);
    // Healed, failover-1 covers the dead recorder-1: it is the cut alone
    // that held it back.
    let healed = Instant::now();
    unblackhole(s.lan.host("fo1"), &ETCD_IPS);
    let later = s
        .video
        .wait_first_from(FO1, healed, PERIOD + Duration::from_secs(12));
    let out = s.finish();
    let fo1_during = out
        .from(FO1)
        .filter(|p| p.at > cut && p.at < healed)
        .count();
    println!(
        "failover-1 cut off from etcd, recorder-1 killed: failover-1 sent {fo1_during} packets in the {:.1} s after the kill; \
         after the heal it took over in {}",
        healed.duration_since(killed).as_secs_f64(),
        later.map_or("never".to_string(), |p| format!(
            "{:.3} s",
            p.at.duration_since(healed).as_secs_f64()
        ))
    );
    out.assert_one_emitter("standby cut from etcd", killed);
    assert!(
        during.is_none() && fo1_during == 0,
        "failover-1 emitted {fo1_during} packets without etcd, the first {:?} s after the kill\n{}\n{}",
        during.map(|p| secs(p.at, killed)),
        timeline(&out.video, killed),
        out.logs
    );
    assert!(
        later.is_some(),
        "failover-1, healed, never covered the dead recorder-1\n{}\n{}",
        timeline(&out.video, killed),
        out.logs
    );
}

#[test]
fn a_recorder_stopped_past_its_lease_sends_nothing_stale_when_it_resumes() {
    let s = Site::start("ep");
    let pid = s.rec1.pid();
    let stopped = Instant::now();
    sigstop(pid);
    let first = s
        .video
        .wait_first_from(FO1, stopped, Duration::from_secs(6));
    sleep_until(stopped + Duration::from_secs(6));
    let cont = Instant::now();
    sigcont(pid);
    std::thread::sleep(Duration::from_secs(5));
    let out = s.finish();
    let stale = out.count_after(REC1, cont);
    let took = first.map(|p| p.at.duration_since(stopped));
    println!(
        "SIGSTOP of recorder-1 for 6 s: takeover {} after the stop; {}; recorder-1 sent {stale} packets after the SIGCONT",
        took.map_or("none".into(), |t| format!("{:.3} s", t.as_secs_f64())),
        out.continuity()
    );
    out.assert_one_emitter("SIGSTOP 6 s", stopped);
    assert!(
        first.is_some_and(|p| p.at < cont),
        "failover-1 did not take over during the 6 s stop\n{}\n{}",
        timeline(&out.video, stopped),
        out.logs
    );
    assert_eq!(
        stale,
        0,
        "recorder-1 sent {stale} packets after it resumed, the first {:?} s after the SIGCONT\n{}\n{}",
        out.from(REC1)
            .find(|p| p.at > cont)
            .map(|p| secs(p.at, cont)),
        timeline(&out.video, stopped),
        out.logs
    );
}

#[test]
fn a_recorder_stopped_shorter_than_its_lease_keeps_its_role() {
    let s = Site::start("eq");
    let pid = s.rec1.pid();
    let stopped = Instant::now();
    sigstop(pid);
    std::thread::sleep(Duration::from_secs(1));
    sigcont(pid);
    std::thread::sleep(Duration::from_secs(8));
    let end = Instant::now();
    let out = s.finish();
    let fo1 = out.from(FO1).count();
    let gap = max_gap(&out.video, stopped - Duration::from_millis(500), end);
    let tail = out
        .from(REC1)
        .filter(|p| p.at > end - Duration::from_secs(2))
        .count();
    println!(
        "SIGSTOP of recorder-1 for 1 s: failover-1 sent {fo1} packets; longest gap on the group {:.3} s; \
         recorder-1 sent {tail} packets in the last 2 s",
        gap.as_secs_f64()
    );
    out.assert_one_emitter("SIGSTOP 1 s", stopped);
    assert_eq!(
        fo1,
        0,
        "failover-1 took over from a recorder stopped for 1 s\n{}\n{}",
        timeline(&out.video, stopped),
        out.logs
    );
    assert!(
        tail > 0,
        "recorder-1 did not continue after a 1 s stop\n{}\n{}",
        timeline(&out.video, stopped),
        out.logs
    );
}

/// recorder-1 alone on its group through an etcd fault at `t0`, until
/// `end`: no packet of failover-1, no gap over `gap_max`, and packets of
/// recorder-1 in the last second.
fn assert_rec1_kept_emitting(
    what: &str,
    out: &Finished,
    t0: Instant,
    end: Instant,
    gap_max: Duration,
) {
    let fo1 = out.from(FO1).count();
    let gap = max_gap(&out.video, t0, end);
    println!(
        "{what}: failover-1 sent {fo1} packets; longest gap on the group {:.3} s; ffmpeg {} frames, {} error lines",
        gap.as_secs_f64(),
        out.frames,
        out.errors.len()
    );
    out.assert_one_emitter(what, t0);
    assert_eq!(
        fo1,
        0,
        "{what}: failover-1 emitted on recorder-1's group\n{}\n{}",
        timeline(&out.video, t0),
        out.logs
    );
    assert!(
        gap <= gap_max,
        "{what}: a gap of {gap:?} on the group (at most {gap_max:?})\n{}\n{}",
        timeline(&out.video, t0),
        out.logs
    );
    let tail = out
        .from(REC1)
        .filter(|p| p.at > end - Duration::from_secs(1))
        .count();
    assert!(
        tail > 0,
        "{what}: recorder-1 no longer emitting at the end\n{}\n{}",
        timeline(&out.video, t0),
        out.logs
    );
}

#[test]
fn killing_the_etcd_leader_moves_no_role() {
    let mut s = Site::start("el");
    let leader = s.etcd.wait_leader(s.ws(), Duration::from_secs(5));
    let name = s.etcd.members[leader].name.clone();
    let killed = Instant::now();
    s.etcd.kill(leader);
    let new = s.etcd.wait_leader(s.ws(), Duration::from_secs(10));
    let elected = killed.elapsed();
    std::thread::sleep(Duration::from_secs(15).saturating_sub(elected));
    let end = Instant::now();
    let new_name = s.etcd.members[new].name.clone();
    let out = s.finish();
    println!(
        "etcd leader {name} killed (kill -9): {new_name} leader {:.2} s later",
        elected.as_secs_f64()
    );
    // Without a leader no keep-alive is confirmed: recorder-1 fences itself
    // lease_ttl/2 after its last one (it cannot tell an election from its
    // own partition), and sends again once the new leader confirms one.
    // The gap is the election less what was left of its fence, so shorter
    // than the election (and none with the default lease_ttl of 10 s: 5 s
    // of fence outlast an election).
    assert_rec1_kept_emitting(
        "etcd leader killed",
        &out,
        killed,
        end,
        elected.max(Duration::from_secs(1)),
    );
}

#[test]
fn a_minority_partition_of_etcd_moves_no_role() {
    let s = Site::start("em");
    let leader = s.etcd.wait_leader(s.ws(), Duration::from_secs(5));
    // e3 unless it leads: a follower cut off from the other two.
    let cut_off = (0..3).rev().find(|&i| i != leader).unwrap();
    let t0 = Instant::now();
    s.etcd.isolate(cut_off);
    std::thread::sleep(Duration::from_secs(15));
    let end = Instant::now();
    let unhealthy = !s.etcd.healthy(s.ws(), cut_off);
    let still = s
        .etcd
        .leader(s.ws())
        .map(|l| s.etcd.members[l].name.clone());
    let name = s.etcd.members[cut_off].name.clone();
    let leader_name = s.etcd.members[leader].name.clone();
    let out = s.finish();
    println!(
        "etcd member {name} cut off from the others (leader {leader_name}): it says unhealthy: {unhealthy}; \
         leader at the end: {still:?}"
    );
    assert_rec1_kept_emitting("minority partition", &out, t0, end, Duration::from_secs(1));
}

/// Every etcd member's packets lost with probability `loss` and delayed
/// DELAY ± JITTER for 20 s, then healed, on the site `site` and etcd's
/// raft `timing`: the run, and what recorder-1 and failover-1 sent under
/// the fault (printed).
fn lossy_etcd(
    tag: &str,
    loss: f64,
    site: &str,
    timing: RaftTiming,
) -> (Finished, Instant, Instant) {
    let s = Site::start_with(tag, site, false, timing);
    let t0 = Instant::now();
    let slow = s.etcd.impair(&s.lan, loss, DELAY, JITTER);
    std::thread::sleep(Duration::from_secs(20));
    let healed = Instant::now();
    let (relayed, lost) = *slow.counts.lock().unwrap();
    slow.heal();
    std::thread::sleep(Duration::from_secs(5));
    let end = Instant::now();
    let out = s.finish();
    let fo1 = out.from(FO1).count();
    let rec1_during = out
        .from(REC1)
        .filter(|p| p.at > t0 && p.at < healed)
        .count();
    let rec1_before = out.from(REC1).filter(|p| p.at < t0).count();
    println!(
        "etcd links {:.0}% loss, 75 ± 50 ms for 20 s ({relayed} frames of the members passed, {lost} lost): {}; \
         recorder-1 sent {rec1_during} packets under the fault ({rec1_before} in the ~5 s before), failover-1 {fo1} in all{}; \
         longest gap on the group {:.3} s; {} tenures",
        loss * 100.0,
        if fo1 > 0 {
            "failed over"
        } else {
            "no takeover"
        },
        if fo1 > 0 {
            format!(" ({})", out.continuity())
        } else {
            String::new()
        },
        max_gap(&out.video, t0, end).as_secs_f64(),
        tenures(&out.video).len()
    );
    (out, t0, end)
}

/// Half of what the members send lost: the cluster keeps losing its
/// leader (on etcd's LAN timing, on purpose), no holder can confirm its
/// lease; nothing is sent twice.
#[test]
fn a_lossy_slow_etcd_never_makes_two_emitters() {
    let (out, t0, _) = lossy_etcd("en", LOSS, SITE, RaftTiming::LAN);
    out.assert_one_emitter("lossy etcd", t0);
}

/// A tenth lost: the cluster stands, and keep-alives sent to every member,
/// each given half the lease, keep recorder-1's fence open throughout.
/// The site and etcd are set up for such a link, as an operator would:
/// etcd's timing to the round trip (its tuning guide), and the default
/// lease of 10 s, whose fence (5 s) outlasts TCP's retransmission stalls
/// on the link. On etcd's LAN timing and a 2 s lease, elections and 1 s
/// stalls come often enough here to open gaps on the group.
#[test]
fn a_slightly_lossy_slow_etcd_keeps_the_recorder_emitting() {
    let site = SITE
        .replace("lease_ttl = \"2s\"", "lease_ttl = \"10s\"")
        .replace(
            "inaccessible_period = \"3s\"",
            "inaccessible_period = \"10s\"",
        );
    assert!(site.contains("lease_ttl = \"10s\"") && site.contains("inaccessible_period = \"10s\""));
    let (out, t0, end) = lossy_etcd("eo", 0.1, &site, RaftTiming::SLOW_LINK);
    assert_rec1_kept_emitting("slightly lossy etcd", &out, t0, end, Duration::from_secs(1));
}

#[test]
fn a_recorder_stopped_about_its_lease_never_overlaps_the_standby() {
    let s = Site::start("ea");
    let pid = s.rec1.pid();
    let stopped = Instant::now();
    sigstop(pid);
    // About the lease: its last keep-alive's lease ends around the resume.
    sleep_until(stopped + TTL);
    let cont = Instant::now();
    sigcont(pid);
    std::thread::sleep(Duration::from_secs(8));
    let end = Instant::now();
    let out = s.finish();
    let fo1 = out.from(FO1).count();
    let rec1_after = out.count_after(REC1, cont);
    let tail = |src| {
        out.from(src)
            .filter(|p| p.at > end - Duration::from_secs(2))
            .count()
    };
    let (rec1_tail, fo1_tail) = (tail(REC1), tail(FO1));
    let gap = max_gap(&out.video, stopped - Duration::from_millis(500), end);
    println!(
        "SIGSTOP of recorder-1 for {:?} (lease_ttl): {}; recorder-1 sent {rec1_after} packets after the SIGCONT; \
         longest gap on the group {:.3} s; in the last 2 s: recorder-1 {rec1_tail}, failover-1 {fo1_tail} packets",
        TTL,
        if fo1 > 0 {
            format!("failover-1 took over ({})", out.continuity())
        } else {
            "no takeover".to_string()
        },
        gap.as_secs_f64()
    );
    out.assert_one_emitter("SIGSTOP about the lease", stopped);
    // Whichever way it went, one server carries the channel at the end.
    assert!(
        (rec1_tail > 0) != (fo1_tail > 0),
        "at the end recorder-1 sent {rec1_tail} and failover-1 {fo1_tail} packets\n{}\n{}",
        timeline(&out.video, stopped),
        out.logs
    );
}

#[test]
fn a_recorder_partitioned_from_the_standby_and_the_etcd_majority_yields_and_stays_off() {
    let s = Site::start("ey");
    let leader = s.etcd.wait_leader(s.ws(), Duration::from_secs(5));
    // recorder-1 with one etcd member (a follower, so that the majority
    // keeps its leader) on one side; failover-1 and the two others on the
    // other. The workstation sees both sides.
    let minority = (0..3).rev().find(|&i| i != leader).unwrap();
    let majority: Vec<Ipv4Addr> = (0..3)
        .filter(|&i| i != minority)
        .map(|i| s.etcd.members[i].ip)
        .collect();
    let m_ip = s.etcd.members[minority].ip;
    let (rec1, fo1) = (s.lan.host("rec1"), s.lan.host("fo1"));
    let mut with_fo1 = majority.clone();
    with_fo1.push(FO1);
    let cut = Instant::now();
    blackhole(rec1, &with_fo1);
    blackhole(fo1, &[REC1, m_ip]);
    s.etcd.isolate(minority);
    for ip in &majority {
        let e: std::net::SocketAddr = (*ip, CLIENT_PORT).into();
        assert!(!rec1.run(move || reachable(e)), "recorder-1 reaches {ip}");
    }
    let e: std::net::SocketAddr = (m_ip, CLIENT_PORT).into();
    assert!(
        rec1.run(move || reachable(e)),
        "recorder-1 lost its side's member"
    );
    let first = s
        .video
        .wait_first_from(FO1, cut, PERIOD + Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    let healed = Instant::now();
    unblackhole(rec1, &with_fo1);
    unblackhole(fo1, &[REC1, m_ip]);
    s.etcd.rejoin(minority);
    std::thread::sleep(Duration::from_secs(5));
    let out = s.finish();
    out.assert_yielded_and_stayed_off(
        "recorder-1 | failover-1 + etcd majority",
        first,
        cut,
        healed,
    );
}

#[test]
fn a_wall_clock_step_on_either_server_moves_no_role() {
    let s = Site::start_with("et", SITE, true, RaftTiming::LAN);
    let dir = s.dir.path().to_path_buf();
    let t0 = Instant::now();
    let frames_before = s.decoder.frames_so_far();
    // An NTP step: recorder-1's wall clock an hour back, then failover-1's
    // an hour ahead. Leases, fences and the inaccessible period count
    // monotonic time; sender reports count it too, so the viewer decodes
    // on.
    std::fs::write(clock_file(&dir, "recorder-1"), "-3600\n").unwrap();
    std::thread::sleep(Duration::from_secs(5));
    std::fs::write(clock_file(&dir, "failover-1"), "+3600\n").unwrap();
    std::thread::sleep(Duration::from_secs(7));
    let end = Instant::now();
    let frames_during = s.decoder.frames_so_far() - frames_before;
    // recorder-1's sender reports after the step: the report's NTP time
    // against the host's clock at its arrival, in seconds.
    let rec1_reports = s.ws().run(|| {
        let sock = common::join_on(GROUP, 7203, WS);
        let end = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 1500];
        let mut offsets = Vec::new();
        while Instant::now() < end {
            if let Ok((n, std::net::SocketAddr::V4(from))) = sock.recv_from(&mut buf)
                && *from.ip() == REC1
                && n >= 16
                && buf[1] == 200
            {
                let host = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64();
                let ntp = u64::from_be_bytes(buf[8..16].try_into().unwrap());
                let unix = (ntp >> 32) as f64 - 2_208_988_800.0
                    + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0;
                offsets.push(unix - host);
            }
        }
        offsets
    });
    // failover-1, which sends no reports, says its clock in its HTTP Date
    // header (which hyper caches until the clock passes the next second:
    // good for a step ahead).
    let fo1_date = s.ws().run(|| {
        let mut c = std::net::TcpStream::connect("198.18.0.2:8080").ok()?;
        use std::io::{Read, Write};
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(c, "GET /health HTTP/1.0\r\n\r\n").ok()?;
        let mut r = String::new();
        c.read_to_string(&mut r).ok()?;
        r.lines()
            .find_map(|l| l.strip_prefix("date: ").or(l.strip_prefix("Date: ")))
            .and_then(httpdate_secs)
    });
    let rec1_log = common::plain_log(&dir.join("mcrelay-recorder-1.log"));
    let step_logged = rec1_log
        .lines()
        .find(|l| l.contains("the wall clock stepped -3"))
        .map(str::to_string);
    let out = s.finish();
    // Frames recorder-1 sent while the clocks stepped (one RTP time each).
    let sent_during = out
        .from(REC1)
        .filter(|p| p.at > t0 && p.at < end)
        .map(|p| p.ts)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let f = fo1_date.map(|t| t - now_unix);
    let worst = rec1_reports
        .iter()
        .copied()
        .fold(0.0f64, |w, o| if o.abs() > w.abs() { o } else { w });
    println!(
        "wall clocks stepped: recorder-1 logged {step_logged:?}; its {} sender reports after the step at most {worst:+.3} s \
         from the host's clock; failover-1's Date {f:?} s; ffmpeg decoded {frames_during} frames of the {sent_during} sent across the steps",
        rec1_reports.len()
    );
    assert!(
        step_logged.is_some() && f.is_some_and(|f| (3500..=3700).contains(&f)),
        "the clocks did not step: recorder-1 logged {step_logged:?}, failover-1 {f:?} s\n{}",
        out.logs
    );
    assert!(
        !rec1_reports.is_empty() && worst.abs() < 1.0,
        "recorder-1's sender reports followed its stepped clock: {rec1_reports:?}\n{}",
        out.logs
    );
    assert!(
        sent_during >= 200 && frames_during * 4 >= sent_during * 3,
        "ffmpeg decoded {frames_during} of the {sent_during} frames sent across the steps\n{}",
        out.logs
    );
    assert_rec1_kept_emitting("wall clock steps", &out, t0, end, Duration::from_secs(1));
}

/// Seconds since the epoch of an HTTP date (`Mon, 07 Dec 2026 03:22:41
/// GMT`).
fn httpdate_secs(d: &str) -> Option<i64> {
    let p: Vec<&str> = d.split_whitespace().collect();
    let [_, day, mon, year, hms, _] = p[..] else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| *x == mon)? as i64 + 1;
    let (y, d): (i64, i64) = (year.parse().ok()?, day.parse().ok()?);
    let t: Vec<i64> = hms.split(':').filter_map(|x| x.parse().ok()).collect();
    let [h, mi, s] = t[..] else { return None };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + s)
}

#[test]
fn a_restored_recorder_copies_first_then_takes_its_role_back_through_etcd() {
    // automatic_failback after 3 s, the missing material copied first.
    let site = SITE
        .replace(
            "automatic_failback = false",
            "automatic_failback = true\nautomatic_material_copying = true\ndelay_failover = true",
        )
        .replace("failback_delay = \"300s\"", "failback_delay = \"3s\"");
    let mut s = Site::start_with("eb", &site, false, RaftTiming::LAN);
    let killed = Instant::now();
    s.rec1.kill();
    let took = s
        .video
        .wait_first_from(FO1, killed, PERIOD + Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(4));
    let restarted = Instant::now();
    s.rec1 = start_server(
        s.lan.host("rec1"),
        s.dir.path(),
        &s.dir.path().join("site.toml"),
        "recorder-1",
        "198.18.0.1:8080",
        false,
    );
    let back = s
        .video
        .wait_first_from(REC1, restarted, Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(4));
    let metrics = get(s.ws(), "198.18.0.1:8080", "/metrics").map(|(_, b)| b);
    let out = s.finish();
    let metric = |name: &str| {
        metrics.as_deref().and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        })
    };
    let copied = metric("mcrelay_failover_copied_segments_total");
    let (Some(took), Some(back)) = (took, back) else {
        panic!(
            "takeover {took:?}, role back {back:?}\n{}\n{}",
            timeline(&out.video, killed),
            out.logs
        );
    };
    let fo1_last = out
        .from(FO1)
        .filter(|p| p.at < back.at)
        .last()
        .copied()
        .expect("failover-1 sent nothing before the hand-back");
    let gap = back.at.duration_since(fo1_last.at);
    let fo1_after = out.count_after(FO1, back.at);
    println!(
        "failback on etcd: takeover {:.3} s after the kill; recorder-1 restarted, its role back {:.3} s later \
         (failback_delay 3 s, copy first): gap {:.3} s, SSRC {:08x} -> {:08x}, sequence +{}; \
         {copied:?} segments copied back; failover-1 sent {fo1_after} packets after the hand-back",
        took.at.duration_since(killed).as_secs_f64(),
        back.at.duration_since(restarted).as_secs_f64(),
        gap.as_secs_f64(),
        fo1_last.ssrc,
        back.ssrc,
        back.seq.wrapping_sub(fo1_last.seq),
    );
    out.assert_one_emitter("failback on etcd", killed);
    assert_eq!(
        fo1_after, 0,
        "failover-1 sent after the hand-back\n{}",
        out.logs
    );
    assert_eq!(back.ssrc, fo1_last.ssrc, "a new stream after the hand-back");
    assert!(
        (1..1000).contains(&back.seq.wrapping_sub(fo1_last.seq)),
        "the sequence did not continue: {} -> {}",
        fo1_last.seq,
        back.seq
    );
    assert!(
        gap < Duration::from_secs(2),
        "a gap of {gap:?} at the hand-back\n{}",
        out.logs
    );
    assert!(
        copied.is_some_and(|c| c >= 1.0),
        "recorder-1 copied {copied:?} segments back\n{}",
        out.logs
    );
}
