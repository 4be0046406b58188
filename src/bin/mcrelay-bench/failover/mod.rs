//! The failover scenario: the LAN of the failover tests (a camera,
//! recorder-1 protected, failover-1 its standby, a workstation), broken
//! once by `kill -9` of recorder-1 and once by cutting its link at the
//! switch, each on a LAN of its own, under each failover controller asked
//! for: the embedded one (the servers watch each other), and etcd (leases
//! on a 3-member etcd cluster on the same LAN; built with the `etcd`
//! feature only, [`etcd`]). For each: how long until failover-1
//! emits on recorder-1's group, what a decoding viewer lost, and, once
//! recorder-1 is back (restarted, or its link healed) and takes its role
//! back after `failback_delay` (`automatic_failback`, the missing material
//! copied first with `delay_failover`), the gap of the hand-back and what
//! the viewer lost across it.
//!
//! Two independent witnesses on the workstation: a packet log on the group
//! (source, SSRC, sequence, timestamp and arrival of every packet) and
//! ffmpeg decoding recorder-1's SDP, each picture stamped as it comes out.

mod analysis;
#[cfg(feature = "etcd")]
mod etcd;
mod report;

/// Without the `etcd` feature there is no cluster to start:
/// [`check_controllers`] refuses `--controller etcd` before any run.
#[cfg(not(feature = "etcd"))]
mod etcd {
    pub struct Cluster;

    impl Cluster {
        pub fn start(_: &crate::topology::FailoverLan) -> anyhow::Result<Cluster> {
            anyhow::bail!(super::NO_ETCD)
        }

        pub fn pids(&self) -> Vec<u32> {
            Vec::new()
        }
    }

    pub fn endpoints() -> Vec<String> {
        Vec::new()
    }
}

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::netns::{Netns, Proc};
use crate::relays::http_get;
use crate::topology::{
    FAILOVER_CAMERA_ADDR, FAILOVER_RECORDER_ADDR, FAILOVER_STANDBY_ADDR, FAILOVER_WORKSTATION_ADDR,
    FailoverLan,
};
use crate::viewers::{FrameClock, Packet, PacketLog, Picture};
use analysis::{Frames, Switch};
pub use report::section;

/// The failover controller the site runs (`[site.failover] controller`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Controller {
    /// The servers watch each other (health polls and the groups).
    Embedded,
    /// Leases and transactions on a 3-member etcd cluster on the LAN
    /// (`lease_ttl` 2 s); needs the `etcd` feature.
    Etcd,
}

impl Controller {
    pub fn label(self) -> &'static str {
        match self {
            Controller::Embedded => "embedded",
            Controller::Etcd => "etcd",
        }
    }

    /// The second letter of a run's namespace tag (`fok`, `fek`, ...).
    fn letter(self) -> char {
        match self {
            Controller::Embedded => 'o',
            Controller::Etcd => 'e',
        }
    }
}

/// `--controller`'s default: every controller this binary has.
pub const DEFAULT_CONTROLLERS: &[&str] = if cfg!(feature = "etcd") {
    &["embedded", "etcd"]
} else {
    &["embedded"]
};

/// [`DEFAULT_CONTROLLERS`], parsed.
pub fn default_controllers() -> Vec<Controller> {
    if cfg!(feature = "etcd") {
        vec![Controller::Embedded, Controller::Etcd]
    } else {
        vec![Controller::Embedded]
    }
}

const NO_ETCD: &str = "the etcd controller is not in this mcrelay-bench: build with --features etcd; needs protoc: Debian protobuf-compiler (cargo build --release --features etcd --bins)";

/// Refuses, before anything runs, a controller this binary was built
/// without.
pub fn check_controllers(controllers: &[Controller]) -> anyhow::Result<()> {
    anyhow::ensure!(!controllers.is_empty(), "--controller: name at least one");
    if !cfg!(feature = "etcd") && controllers.contains(&Controller::Etcd) {
        anyhow::bail!("--controller etcd: {NO_ETCD}");
    }
    Ok(())
}

/// How recorder-1 is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL to recorder-1's process; restarted for the failback.
    Kill,
    /// recorder-1's port on the switch set down; set up again for the
    /// failback (the process runs throughout).
    Cut,
}

impl Fault {
    pub fn label(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Cut => "link cut",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Cut => "cut",
        }
    }

    fn letter(self) -> char {
        match self {
            Fault::Kill => 'k',
            Fault::Cut => 'c',
        }
    }

    /// What brings recorder-1 back.
    pub fn recovery(self) -> &'static str {
        match self {
            Fault::Kill => "restart",
            Fault::Cut => "heal",
        }
    }
}

/// One run: a fault under a controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub controller: Controller,
    pub fault: Fault,
}

impl Case {
    /// The namespaces' tag: `fok`, `foc` (embedded), `fek`, `fec` (etcd).
    fn tag(self) -> String {
        format!("f{}{}", self.controller.letter(), self.fault.letter())
    }

    /// Its directory under the logs: `embedded-kill`, `etcd-cut`, ...
    fn dir(self) -> String {
        format!("{}-{}", self.controller.label(), self.fault.key())
    }

    /// `kill -9 (etcd)`.
    pub fn label(self) -> String {
        format!("{} ({})", self.fault.label(), self.controller.label())
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// recorder-1's `inaccessible_period`.
    pub period: Duration,
    /// The site's `failback_delay`.
    pub failback_delay: Duration,
    pub faults: Vec<Fault>,
    /// Each fault runs under each of these, in this order.
    pub controllers: Vec<Controller>,
}

impl Config {
    /// The runs: every fault under the first controller, then under the
    /// next.
    pub fn cases(&self) -> Vec<Case> {
        self.controllers
            .iter()
            .flat_map(|&controller| {
                self.faults
                    .iter()
                    .map(move |&fault| Case { controller, fault })
            })
            .collect()
    }

    /// The viewer's window around the fault: from [`BEFORE`] before it to
    /// this long after (the period, a poll, the takeover and a key frame
    /// fit with room to spare).
    pub fn after_fault(&self) -> Duration {
        self.period + Duration::from_secs(7)
    }
}

/// Each window starts this long before its event: the viewer's steady
/// state is in it, and a decoder's constant delay moves no picture out.
pub const BEFORE: Duration = Duration::from_secs(2);
/// The viewer's window after the hand-back (failover-1's last packet).
pub const AFTER_FAILBACK: Duration = Duration::from_secs(6);
/// The decoder's pictures come out after the packets; the windows close
/// this much later in wall-clock time before the decoder stops.
const DECODER_MARGIN: Duration = Duration::from_secs(1);
/// The site's poll interval, as in the LAN tests.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The etcd site's `lease_ttl`, as in `tests/failover_on_etcd.rs`: the
/// shortest etcd's whole-second leases allow beside a 500 ms poll.
pub const LEASE_TTL: Duration = Duration::from_secs(2);

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 50, 1);
/// Channel 1's video: the server's base port + 2.
const VIDEO_PORT: u16 = 7202;
const OWNER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const STANDBY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// A takeover or a failback as measured.
#[derive(Clone, Debug)]
pub struct Phase {
    /// The switch of emitters on the group.
    pub switch: Option<Switch>,
    /// Takeover: the fault to failover-1's first packet. Failback: the
    /// recovery (restart or heal) to failover-1's last packet.
    pub after_event: Option<Duration>,
    /// What the server exported on /metrics: failover-1's
    /// `mcrelay_failover_takeover_seconds`, recorder-1's
    /// `mcrelay_failover_failback_gap_seconds`.
    pub exported: Option<f64>,
    /// Frames the new emitter sent in its first 100 ms
    /// ([`analysis::burst`]).
    pub burst: Option<usize>,
    /// The viewer over the phase's window.
    pub frames: Frames,
    /// The longest silence on the group over the window.
    pub longest_gap: Duration,
}

/// One fault's figures.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub fault: Fault,
    pub takeover: Phase,
    pub failback: Phase,
    /// recorder-1's packets while failover-1 covered, and their span.
    pub overlap: (usize, Duration),
    /// Packets of either server while the other's stream was under way
    /// ([`analysis::second_emitter`]), over the whole run.
    pub second_emitter: usize,
    /// recorder-1's `mcrelay_failover_copied_segments_total` and
    /// `_bytes_total` after the failback.
    pub copied: Option<(f64, f64)>,
    /// ffmpeg's error lines before the fault (joining mid-GOP: the SDP
    /// carries no parameter sets) and after it.
    pub decoder_errors: (usize, usize),
    pub seconds: f64,
}

/// Where things are.
pub struct Env {
    pub mcrelay: PathBuf,
    /// The camera's clip: the tests' 640x360 25 fps H.264, 1 s GOP.
    pub clip: PathBuf,
}

/// Runs each case (fault and controller) on a LAN of its own, one after
/// the other; a case that fails is reported as such and the next one still
/// runs. Logs go to `logs/<controller>-<fault>/`.
pub fn run(env: &Env, cfg: &Config, logs: &Path) -> Vec<(Case, anyhow::Result<Outcome>)> {
    cfg.cases()
        .into_iter()
        .map(|case| {
            let dir = logs.join(case.dir());
            eprintln!(
                "failover, {}: inaccessible_period {:?}, failback_delay {:?}; logs in {}",
                case.label(),
                cfg.period,
                cfg.failback_delay,
                dir.display()
            );
            let r = std::fs::create_dir_all(&dir)
                .map_err(anyhow::Error::from)
                .and_then(|()| run_fault(env, cfg, case, &dir));
            match &r {
                Ok(o) => eprintln!("    {}", report::summary(o)),
                Err(e) => eprintln!("    failed: {e:#}"),
            }
            (case, r)
        })
        .collect()
}

/// The bench site's key: its LAN is namespaces of this machine.
const SITE_KEY: &str = "9c1e5a7b3f0d2c8e6a4b1d9f7e5c3a18";

/// `[site.failover]` for `controller`: the embedded one, or etcd with the
/// LAN's cluster and a 2 s lease; the rest of the site is the same.
fn site_failover(controller: Controller, failback_delay: Duration) -> String {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let common = format!(
        "poll_interval = \"{}\"\nfailback_delay = \"{}\"\n",
        ms(POLL_INTERVAL),
        ms(failback_delay)
    );
    match controller {
        Controller::Embedded => format!("[site.failover]\n{common}"),
        Controller::Etcd => format!(
            "[site.failover]\ncontroller = \"etcd\"\n{common}endpoints = {:?}\nlease_ttl = \"{}s\"\n",
            etcd::endpoints(),
            LEASE_TTL.as_secs()
        ),
    }
}

fn site(
    controller: Controller,
    period: Duration,
    failback_delay: Duration,
    disks: &Path,
) -> String {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let disk = |s: &str| format!("{:?}", disks.join(s).display().to_string());
    format!(
        r#"[site]
key = "{key}"

{failover}

[[server]]
name = "recorder-1"
password = "bench"
protocol = "rtp-multicast"
control = "{FAILOVER_RECORDER_ADDR}:8080"
[server.multicast]
address = "{GROUP}"
port = 7200
interface = "{FAILOVER_RECORDER_ADDR}"
ttl = 1
[server.failover]
failover_enabled = true
inaccessible_period = "{period}"
automatic_failback = true
automatic_material_copying = true
delay_failover = true
[server.storage]
disks = [{rec1}]
segment = "2s"
[server.ingest]
reconnect_min = "100ms"
reconnect_max = "300ms"
[[server.channel]]
id = 1
source = "rtsp://{FAILOVER_CAMERA_ADDR}:8554/stream"
codec = "h264"

[[server]]
name = "failover-1"
password = "bench"
protocol = "rtp-multicast"
control = "{FAILOVER_STANDBY_ADDR}:8080"
[server.multicast]
address = "239.255.50.100"
port = 7200
interface = "{FAILOVER_STANDBY_ADDR}"
ttl = 1
[server.failover]
use_as_failover_server = true
[server.storage]
disks = [{fo1}]
segment = "2s"
[server.ingest]
reconnect_min = "100ms"
reconnect_max = "300ms"
"#,
        key = SITE_KEY,
        failover = site_failover(controller, failback_delay),
        period = ms(period),
        // The same disk names on both: a standby takes over only a server
        // with its own disk layout.
        rec1 = disk("rec1/disk1"),
        fo1 = disk("fo1/disk1"),
    )
}

/// Polls `f` every 50 ms until it gives a value or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// `mcrelay run` for `server` in `ns`, its log appended to `dir`; waits
/// until its control API answers at `addr`.
fn start_server(
    env: &Env,
    ns: &Netns,
    site: &Path,
    server: &str,
    addr: &str,
    dir: &Path,
) -> anyhow::Result<Proc> {
    let log_path = dir.join(format!("mcrelay-{server}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut cmd = ns.command(&env.mcrelay);
    cmd.args(["run", "--site"])
        .arg(site)
        .args(["--server", server])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut p = Proc::spawn_as_set(cmd)?;
    let up = wait_for(Duration::from_secs(20), || {
        if !p.running() {
            return Some(false);
        }
        http_get(ns, addr, "/health").map(|_| true)
    });
    anyhow::ensure!(
        up == Some(true),
        "{server} did not come up on {addr} (see {})",
        log_path.display()
    );
    Ok(p)
}

/// Non-empty lines of a file by now.
fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// The value of one series in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The two witnesses' logs, in ms from the fault, for a reader who wants
/// to check the figures: `packets.csv` and `pictures.csv`.
fn write_logs(
    dir: &Path,
    fault: Instant,
    packets: &[Packet],
    pictures: &[Picture],
) -> anyhow::Result<()> {
    let ms = |t: Instant| {
        if t >= fault {
            t.duration_since(fault).as_secs_f64() * 1e3
        } else {
            -(fault.duration_since(t).as_secs_f64() * 1e3)
        }
    };
    let mut p = String::from("ms,source,ssrc,seq,ts\n");
    for x in packets {
        p.push_str(&format!(
            "{:.1},{},{:08x},{},{}\n",
            ms(x.at),
            x.from,
            x.ssrc,
            x.seq,
            x.ts
        ));
    }
    std::fs::write(dir.join("packets.csv"), p)?;
    let mut f = String::from("ms,pts,crc\n");
    for x in pictures {
        f.push_str(&format!("{:.1},{},{:08x}\n", ms(x.at), x.pts, x.crc));
    }
    std::fs::write(dir.join("pictures.csv"), f)?;
    Ok(())
}

/// `mcrelay check --site`, in `ns` (it reads files only): an mcrelay
/// built without the etcd controller says so here, before a run.
fn check_site(env: &Env, ns: &Netns, site: &Path) -> anyhow::Result<()> {
    let out = ns
        .command(&env.mcrelay)
        .args(["check", "--site"])
        .arg(site)
        .output()
        .context("run mcrelay check")?;
    anyhow::ensure!(
        out.status.success(),
        "mcrelay check --site {}: {}",
        site.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn run_fault(env: &Env, cfg: &Config, case: Case, dir: &Path) -> anyhow::Result<Outcome> {
    let Case { controller, fault } = case;
    let started = Instant::now();
    // Declared first, dropped last: every process below is killed (by its
    // PID) before the namespaces go, on every path out of here.
    let lan = FailoverLan::new(&case.tag(), controller == Controller::Etcd)?;
    let disks = tempfile::tempdir()?;
    for d in ["rec1/disk1", "fo1/disk1"] {
        std::fs::create_dir_all(disks.path().join(d))?;
    }
    let site_path = dir.join("site.toml");
    std::fs::write(
        &site_path,
        site(controller, cfg.period, cfg.failback_delay, disks.path()),
    )?;
    check_site(env, &lan.workstation.ns, &site_path)?;
    // The cluster before the servers, which connect at start. Its members
    // die with this thread at the latest.
    let _etcd = match controller {
        Controller::Embedded => None,
        Controller::Etcd => {
            let c = etcd::Cluster::start(&lan)?;
            eprintln!("    etcd: 3 members healthy (PIDs {:?})", c.pids());
            Some(c)
        }
    };
    let mut cam = lan.camera.ns.command(&env.mcrelay);
    cam.args(["camera", "--clip"]).arg(&env.clip).args([
        "--listen",
        &format!("{FAILOVER_CAMERA_ADDR}:8554"),
        "--audio",
    ]);
    let _camera = Proc::spawn(cam).context("start the camera")?;
    let rec1_addr = format!("{FAILOVER_RECORDER_ADDR}:8080");
    let fo1_addr = format!("{FAILOVER_STANDBY_ADDR}:8080");
    let start_rec1 = || {
        start_server(
            env,
            &lan.recorder.ns,
            &site_path,
            "recorder-1",
            &rec1_addr,
            dir,
        )
    };
    let mut rec1 = start_rec1()?;
    let _fo1 = start_server(
        env,
        &lan.failover.ns,
        &site_path,
        "failover-1",
        &fo1_addr,
        dir,
    )?;
    let ws = &lan.workstation.ns;
    // recorder-1 listens and asks the standby before it emits; then its
    // SDP, once it describes the stream as a workstation opening the
    // channel later would get it: the parameter sets (else the viewer
    // waits for a key frame's) and the sound track.
    let mut sdp = None;
    wait_for(Duration::from_secs(20), || {
        let (code, body) = http_get(ws, &rec1_addr, "/channels/1.sdp")?;
        if code != 200 || !body.contains("m=video") {
            return None;
        }
        let full = body.contains("sprop-parameter-sets") && body.contains("m=audio");
        sdp = Some(body);
        full.then_some(())
    });
    let sdp = sdp.context("recorder-1 served no SDP for channel 1 within 20 s")?;
    let sdp_path = dir.join("ch1.sdp");
    std::fs::write(&sdp_path, &sdp)?;
    let local: Ipv4Addr = FAILOVER_WORKSTATION_ADDR.parse()?;
    let log = PacketLog::start(ws, local, GROUP, VIDEO_PORT)?;
    let mut viewer = FrameClock::start(ws, &sdp_path, &dir.join("ffmpeg.err"))?;
    let warm = wait_for(Duration::from_secs(20), || {
        (viewer.count() >= 50).then_some(())
    });
    anyhow::ensure!(
        warm.is_some() && viewer.running(),
        "the viewer decoded {} pictures in 20 s (see {})",
        viewer.count(),
        dir.join("ffmpeg.err").display()
    );
    std::thread::sleep(BEFORE);

    // The fault.
    let errors_before = lines(&dir.join("ffmpeg.err"));
    let fault_at = Instant::now();
    match fault {
        Fault::Kill => rec1.kill(),
        Fault::Cut => lan.set_recorder_link(false)?,
    }
    let took = wait_for(cfg.period + Duration::from_secs(15), || {
        analysis::takeover(&log.snapshot(), fault_at, OWNER, STANDBY)
    });
    anyhow::ensure!(
        took.is_some(),
        "no packet of failover-1 on recorder-1's group within {:?} of the {} (see {})",
        cfg.period + Duration::from_secs(15),
        fault.label(),
        dir.join("mcrelay-failover-1.log").display()
    );
    let fault_window = (fault_at - BEFORE, fault_at + cfg.after_fault());
    sleep_until(fault_window.1 + DECODER_MARGIN);
    let fo1_metrics = http_get(ws, &fo1_addr, "/metrics")
        .map(|r| r.1)
        .unwrap_or_default();

    // recorder-1 comes back, and takes its role back after failback_delay.
    let recovered_at = Instant::now();
    // Held to the end, like the first: killed by its PID on the way out.
    let _restarted = match fault {
        Fault::Kill => Some(start_rec1()?),
        Fault::Cut => {
            lan.set_recorder_link(true)?;
            None
        }
    };
    // Handed back: recorder-1 on the group after failover-1's last packet,
    // and failover-1 silent for a second since (a healed recorder-1 may
    // get a frame out before it hears failover-1, which goes on).
    let back_within = cfg.failback_delay + Duration::from_secs(60);
    let back = wait_for(back_within, || {
        analysis::hand_back(&log.snapshot(), OWNER, STANDBY)
            .filter(|s| s.first.at >= recovered_at && s.last.at.elapsed() >= Duration::from_secs(1))
    })
    .with_context(|| {
        format!(
            "recorder-1 did not take its role back within {back_within:?} of its {} (see {})",
            fault.recovery(),
            dir.join("mcrelay-recorder-1.log").display()
        )
    })?;
    let back_window = (back.last.at - BEFORE, back.last.at + AFTER_FAILBACK);
    sleep_until(back_window.1 + DECODER_MARGIN);
    let rec1_metrics = http_get(ws, &rec1_addr, "/metrics")
        .map(|r| r.1)
        .unwrap_or_default();
    let (frames, errors) = viewer.finish();
    let packets = log.finish();
    for (what, text) in [("failover-1", &fo1_metrics), ("recorder-1", &rec1_metrics)] {
        std::fs::write(dir.join(format!("metrics-{what}.txt")), text)?;
    }
    write_logs(dir, fault_at, &packets, &frames)?;

    let arrivals = || packets.iter().map(|p| p.at);
    let takeover = analysis::takeover(&packets, fault_at, OWNER, STANDBY);
    let failback = analysis::hand_back(&packets, OWNER, STANDBY);
    let rec1_metric = |name: &str| metric(&rec1_metrics, name);
    Ok(Outcome {
        fault,
        takeover: Phase {
            switch: takeover,
            after_event: takeover.map(|s| s.first.at.saturating_duration_since(fault_at)),
            burst: takeover.map(|s| analysis::burst(&packets, &s)),
            exported: metric(
                &fo1_metrics,
                "mcrelay_failover_takeover_seconds{server=\"recorder-1\"}",
            ),
            frames: Frames::over(&frames, fault_window.0, fault_window.1),
            longest_gap: analysis::longest_silence(arrivals(), fault_window.0, fault_window.1),
        },
        failback: Phase {
            switch: failback,
            after_event: failback.map(|s| s.last.at.saturating_duration_since(recovered_at)),
            burst: failback.map(|s| analysis::burst(&packets, &s)),
            exported: rec1_metric("mcrelay_failover_failback_gap_seconds"),
            frames: Frames::over(&frames, back_window.0, back_window.1),
            longest_gap: analysis::longest_silence(arrivals(), back_window.0, back_window.1),
        },
        overlap: analysis::overlap(&packets, OWNER, STANDBY),
        second_emitter: analysis::second_emitter(&packets),
        copied: rec1_metric("mcrelay_failover_copied_segments_total")
            .zip(rec1_metric("mcrelay_failover_copied_bytes_total")),
        decoder_errors: (errors_before, errors.len().saturating_sub(errors_before)),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_controllers_are_those_built_in() {
        let parsed: Vec<Controller> = DEFAULT_CONTROLLERS
            .iter()
            .map(|c| <Controller as clap::ValueEnum>::from_str(c, false).unwrap())
            .collect();
        assert_eq!(parsed, default_controllers());
        assert!(check_controllers(&default_controllers()).is_ok());
        assert!(check_controllers(&[]).is_err());
        let etcd = check_controllers(&[Controller::Etcd]);
        assert_eq!(etcd.is_ok(), cfg!(feature = "etcd"));
        if let Err(e) = etcd {
            assert!(
                e.to_string()
                    .contains("build with --features etcd; needs protoc: Debian protobuf-compiler"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_etcd_site_differs_from_the_embedded_one_only_in_its_controller() {
        let disks = Path::new("/tmp/disks");
        let (p, d) = (Duration::from_secs(3), Duration::from_secs(3));
        let embedded = site(Controller::Embedded, p, d, disks);
        let etcd = site(Controller::Etcd, p, d, disks);
        let key = format!("[site]\nkey = \"{SITE_KEY}\"\n\n");
        assert!(
            embedded.starts_with(&format!(
                "{key}[site.failover]\npoll_interval = \"500ms\"\nfailback_delay = \"3000ms\"\n"
            )),
            "{embedded}"
        );
        assert!(!embedded.contains("etcd"), "{embedded}");
        if cfg!(feature = "etcd") {
            assert!(etcd.starts_with(&format!("{key}[site.failover]\ncontroller = \"etcd\"\npoll_interval = \"500ms\"\nfailback_delay = \"3000ms\"\nendpoints = [\"http://198.18.0.21:2379\", \"http://198.18.0.22:2379\", \"http://198.18.0.23:2379\"]\nlease_ttl = \"2s\"\n")), "{etcd}");
        }
        let servers = |s: &str| s[s.find("[[server]]").unwrap()..].to_string();
        assert_eq!(servers(&embedded), servers(&etcd));
    }
}
