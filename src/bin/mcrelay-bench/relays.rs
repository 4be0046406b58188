//! The relays under test, each started on the recorder host and fed by the
//! same RTSP camera: mcrelay (multicast or TCP fan-out), the ffmpeg and
//! GStreamer multicast relays, GStreamer's RTSP server as a shared TCP relay,
//! and the floor: a minimal sender that issues the same datagrams or TCP
//! writes from packets prepared in advance.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netns::{Netns, Proc};
use crate::topology::{CAMERA_ADDR, Lan, RECORDER_ADDR};

pub const PORT: u16 = 5000;
pub const RTSP_PORT: u16 = 8554;
/// RTP packet size for every relay: mcrelay's default 1400-byte payload.
pub const PACKET_SIZE: usize = 1412;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Multicast,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relay {
    McrelayMulticast,
    /// Multicast and every channel recorded to two material disks.
    McrelayRecord,
    McrelayTcp,
    Ffmpeg,
    Gstreamer,
    GstreamerRtspServer,
    /// One `send` per packet, to the same groups.
    FloorPerPacket,
    /// The same datagrams with UDP GSO.
    FloorGso,
    /// Frame-sized writes to every TCP client.
    FloorTcp,
}

impl Relay {
    pub fn label(self) -> &'static str {
        match self {
            Relay::McrelayMulticast => "mcrelay, multicast",
            Relay::McrelayRecord => "mcrelay, multicast + recording",
            Relay::McrelayTcp => "mcrelay, RTSP/TCP fan-out",
            Relay::Ffmpeg => "ffmpeg relay (-c copy -f rtp), multicast",
            Relay::Gstreamer => "GStreamer relay (rtspsrc ! rtph264pay ! udpsink), multicast",
            Relay::GstreamerRtspServer => "GStreamer RTSP server (shared), TCP fan-out",
            Relay::FloorPerPacket => "floor: one send per packet, multicast",
            Relay::FloorGso => "floor: UDP GSO, multicast",
            Relay::FloorTcp => "floor: frame-sized TCP writes",
        }
    }

    /// The name `--relays` takes.
    pub fn key(self) -> &'static str {
        match self {
            Relay::McrelayMulticast => "mcrelay-multicast",
            Relay::McrelayRecord => "mcrelay-record",
            Relay::McrelayTcp => "mcrelay-tcp",
            Relay::Ffmpeg => "ffmpeg",
            Relay::Gstreamer => "gstreamer",
            Relay::GstreamerRtspServer => "gstreamer-rtsp",
            Relay::FloorPerPacket => "floor-per-packet",
            Relay::FloorGso => "floor-gso",
            Relay::FloorTcp => "floor-tcp",
        }
    }

    pub fn mode(self) -> Mode {
        match self {
            Relay::McrelayTcp | Relay::GstreamerRtspServer | Relay::FloorTcp => Mode::Tcp,
            _ => Mode::Multicast,
        }
    }

    /// Whether this relay is something other than mcrelay or the floor.
    pub fn is_alternative(self) -> bool {
        matches!(
            self,
            Relay::Ffmpeg | Relay::Gstreamer | Relay::GstreamerRtspServer
        )
    }

    /// Whether the tools it needs are installed.
    pub fn available(self) -> bool {
        let has = |p: &str| Path::new(p).exists();
        match self {
            Relay::Ffmpeg => has("/usr/bin/ffmpeg"),
            Relay::Gstreamer => has("/usr/bin/gst-launch-1.0"),
            Relay::GstreamerRtspServer => has("/usr/bin/python3") && gst_rtsp_server_importable(),
            _ => true,
        }
    }
}

fn gst_rtsp_server_importable() -> bool {
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import gi; gi.require_version('GstRtspServer','1.0'); from gi.repository import GstRtspServer"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Where things are.
pub struct Env {
    pub mcrelay: PathBuf,
    pub bench: PathBuf,
    pub clip: PathBuf,
    pub gst_rtsp_relay: PathBuf,
    /// The camera's `a=fmtp` parameters (with its parameter sets), for the
    /// SDPs of relays that serve none.
    pub fmtp: String,
    /// `mcrelay run --threads`.
    pub mcrelay_threads: usize,
    /// The camera sends a G.711 track too.
    pub audio: bool,
}

/// Channel `ch`'s group (1-based channels, one group per channel): the
/// address plan mcrelay uses with `groups = channels`.
pub fn group(ch: usize, channels: usize) -> Ipv4Addr {
    let mc = mcrelay::config::MulticastConfig {
        address: Ipv4Addr::new(239, 255, 100, 0),
        port: PORT,
        interface: Ipv4Addr::UNSPECIFIED,
        ttl: 1,
        loopback: false,
        groups: channels.max(2) as u32,
        audio_port: None,
        metadata_port: None,
    };
    mcrelay::config::plan::destination(&mc, ch as u32)
        .expect("the bench's plan is valid")
        .group
}

pub const CAMERA_URL: &str = "rtsp://198.18.0.2:8554/stream";

/// A relay running on the recorder host.
pub struct Running {
    procs: Vec<Proc>,
    pub pids: Vec<u32>,
}

impl Running {
    /// The RTSP URL of channel `ch` on the recorder (TCP relays).
    pub fn url(&self, ch: usize) -> String {
        format!("rtsp://{RECORDER_ADDR}:{RTSP_PORT}/{ch}")
    }
}

fn mcrelay_site(dir: &Path, channels: usize, mode: Mode, record: bool) -> anyhow::Result<PathBuf> {
    let protocol = match mode {
        Mode::Multicast => "rtp-multicast",
        Mode::Tcp => "tcp",
    };
    let mut s = format!(
        r#"
[[server]]
name = "bench"
protocol = "{protocol}"
control = "{RECORDER_ADDR}:8080"
[server.rtsp]
listen = "{RECORDER_ADDR}:{RTSP_PORT}"
max_clients = 1000
max_clients_per_channel = 1000
[server.multicast]
address = "239.255.100.0"
port = {PORT}
interface = "{RECORDER_ADDR}"
ttl = 1
loop = false
groups = {}
"#,
        channels.max(2)
    );
    if record {
        let disks: Vec<PathBuf> = ["disk1", "disk2"].iter().map(|d| dir.join(d)).collect();
        for d in &disks {
            std::fs::create_dir_all(d)?;
        }
        s.push_str(&format!(
            "[server.storage]\ndisks = [{}]\n",
            disks
                .iter()
                .map(|d| format!("{:?}", d.display().to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for ch in 1..=channels {
        s.push_str(&format!(
            "[[server.channel]]\nid = {ch}\nsource = \"{CAMERA_URL}\"\n"
        ));
    }
    let p = dir.join("bench-site.toml");
    std::fs::write(&p, s)?;
    Ok(p)
}

/// GET from the recorder's control API (from inside its namespace).
pub fn control_get(lan: &Lan, path: &str) -> String {
    http_get(&lan.recorder.ns, &format!("{RECORDER_ADDR}:8080"), path)
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// GET `path` from `addr` over HTTP/1.0, from inside `ns`: the status code
/// and the body, or `None` when nothing answered within 10 s.
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    ns.spawn(move || -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        let sock: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })
    .join()
    .ok()
    .and_then(Result::ok)
}

/// A command on the recorder host, pinned to the relay's CPU.
fn pinned(lan: &Lan, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = lan.recorder.ns.command("taskset");
    c.args(["-c", &crate::topology::RELAY_CPU.to_string()])
        .arg(program);
    c
}

/// Starts `relay` for `channels` channels and waits until it relays.
pub fn start(
    relay: Relay,
    lan: &Lan,
    env: &Env,
    channels: usize,
    dir: &Path,
) -> anyhow::Result<Running> {
    let mut procs = Vec::new();
    match relay {
        Relay::McrelayMulticast | Relay::McrelayTcp | Relay::McrelayRecord => {
            let site = mcrelay_site(dir, channels, relay.mode(), relay == Relay::McrelayRecord)?;
            let mut c = pinned(lan, &env.mcrelay);
            c.args(["run", "--site"]).arg(site).args([
                "--server",
                "bench",
                "--threads",
                &env.mcrelay_threads.to_string(),
            ]);
            procs.push(Proc::spawn(c)?);
            let deadline = Instant::now() + Duration::from_secs(60 + channels as u64 / 5);
            loop {
                let st = control_get(lan, "/status");
                let streaming = st.matches("\"state\":\"streaming\"").count();
                if streaming == channels {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "mcrelay: only {streaming} of {channels} channels streaming after the deadline"
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        Relay::Ffmpeg => {
            for ch in 1..=channels {
                let mut c = pinned(lan, "ffmpeg");
                c.args([
                    "-hide_banner",
                    "-nostdin",
                    "-v",
                    "error",
                    "-rtsp_transport",
                    "tcp",
                    "-i",
                    CAMERA_URL,
                ])
                .args(["-map", "0:v", "-c", "copy", "-f", "rtp"])
                .arg(format!(
                    "rtp://{}:{PORT}?ttl=1&pkt_size={PACKET_SIZE}&localaddr={RECORDER_ADDR}",
                    group(ch, channels)
                ));
                procs.push(Proc::spawn(c)?);
            }
        }
        Relay::Gstreamer => {
            for ch in 1..=channels {
                let mut c = pinned(lan, "gst-launch-1.0");
                c.arg("-q")
                    .args([
                        "rtspsrc",
                        &format!("location={CAMERA_URL}"),
                        "protocols=tcp",
                        "latency=100",
                        "!",
                    ])
                    .args(["rtph264depay", "!", "h264parse", "!"])
                    .args([
                        "rtph264pay",
                        "config-interval=-1",
                        &format!("mtu={PACKET_SIZE}"),
                        "pt=96",
                        "!",
                    ])
                    .args([
                        "udpsink",
                        &format!("host={}", group(ch, channels)),
                        &format!("port={PORT}"),
                    ])
                    .args([
                        "auto-multicast=true",
                        "ttl-mc=1",
                        &format!("multicast-iface={}", crate::topology::LAN_IF),
                        "sync=false",
                        "async=false",
                    ]);
                procs.push(Proc::spawn(c)?);
            }
        }
        Relay::GstreamerRtspServer => {
            let mut c = pinned(lan, "/usr/bin/python3");
            c.arg(&env.gst_rtsp_relay).args([
                RECORDER_ADDR,
                &RTSP_PORT.to_string(),
                CAMERA_URL,
                &channels.to_string(),
            ]);
            procs.push(Proc::spawn(c)?);
        }
        Relay::FloorPerPacket | Relay::FloorGso | Relay::FloorTcp => {
            let mode = match relay {
                Relay::FloorPerPacket => "per-packet",
                Relay::FloorGso => "gso",
                _ => "tcp",
            };
            let mut c = pinned(lan, &env.bench);
            c.args(["floor", "--clip"]).arg(&env.clip).args([
                "--mode",
                mode,
                "--channels",
                &channels.to_string(),
            ]);
            procs.push(Proc::spawn(c)?);
        }
    }
    if !matches!(
        relay,
        Relay::McrelayMulticast | Relay::McrelayTcp | Relay::McrelayRecord
    ) {
        // No readiness API: give the relays time to connect to the camera
        // and start sending (bounded).
        std::thread::sleep(Duration::from_secs(4 + channels as u64 / 8));
    }
    for p in &mut procs {
        anyhow::ensure!(
            p.0.try_wait()?.is_none(),
            "{} exited at start",
            relay.label()
        );
    }
    let pids = procs.iter().map(Proc::pid).collect();
    Ok(Running { procs, pids })
}

impl Running {
    /// Whether every process is still running.
    pub fn alive(&mut self) -> bool {
        self.procs
            .iter_mut()
            .all(|p| matches!(p.0.try_wait(), Ok(None)))
    }
}

/// An SDP for players of a multicast relay that serves none (ffmpeg,
/// GStreamer, the floor), with the camera's parameter sets as mcrelay's has.
pub fn plain_sdp(ch: usize, channels: usize, fmtp: &str) -> String {
    format!(
        "v=0\r\no=- 0 0 IN IP4 {RECORDER_ADDR}\r\ns=bench\r\nc=IN IP4 {}/1\r\nt=0 0\r\nm=video {PORT} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 {fmtp}\r\n",
        group(ch, channels)
    )
}

pub fn camera(lan: &Lan, env: &Env) -> anyhow::Result<Proc> {
    let mut c = lan.camera.ns.command(&env.mcrelay);
    c.args(["camera", "--clip"]).arg(&env.clip).args([
        "--listen",
        &format!("{CAMERA_ADDR}:{RTSP_PORT}"),
        "--path",
        "stream",
    ]);
    if env.audio {
        c.arg("--audio");
    }
    Proc::spawn(c)
}
