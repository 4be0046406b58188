//! Workstations: receiver threads inside the workstation namespaces, and a
//! real decoder (Debian's ffmpeg) for one viewer per run.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::netns::Netns;

/// What all viewers of a run received (UDP payload / RTP packet bytes).
#[derive(Default)]
pub struct Counters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets missing from the sequence numbers seen.
    pub lost: AtomicU64,
    /// Viewers that failed to connect or were cut off.
    pub failed: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub failed: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, o: Snapshot) -> Snapshot {
        Snapshot {
            packets: self.packets - o.packets,
            bytes: self.bytes - o.bytes,
            lost: self.lost - o.lost,
            failed: self.failed - o.failed,
        }
    }
}

/// Counts packets and sequence gaps per RTP source.
struct Seqs(HashMap<u32, u16>);

impl Seqs {
    fn new() -> Self {
        Seqs(HashMap::new())
    }

    fn record(&mut self, rtp: &[u8], c: &Counters) {
        if rtp.len() < 12 || rtp[0] >> 6 != 2 || (200..=204).contains(&rtp[1]) {
            return; // Not RTP (RTCP shares some ports).
        }
        let seq = u16::from_be_bytes([rtp[2], rtp[3]]);
        let ssrc = u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]);
        if let Some(prev) = self.0.insert(ssrc, seq) {
            let gap = seq.wrapping_sub(prev).wrapping_sub(1);
            // Small forward gaps are loss; anything else is a reordering or
            // a new stream, not counted.
            if gap < 1000 {
                c.lost.fetch_add(u64::from(gap), Ordering::Relaxed);
            }
        }
        c.packets.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(rtp.len() as u64, Ordering::Relaxed);
    }
}

/// A viewer joining `groups` (each on `port`) from the host `ns` at `local`.
pub fn multicast(
    ns: &Netns,
    local: Ipv4Addr,
    groups: Vec<Ipv4Addr>,
    port: u16,
    c: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    ns.spawn(move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .expect("socket");
        let _ = s.set_reuse_address(true);
        let _ = s.set_recv_buffer_size(4 << 20);
        let bind = if groups.len() == 1 {
            groups[0]
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        if s.bind(&SocketAddrV4::new(bind, port).into()).is_err() {
            c.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        for g in &groups {
            if s.join_multicast_v4(g, &local).is_err() {
                c.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let sock: UdpSocket = s.into();
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut seqs = Seqs::new();
        let mut buf = [0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                seqs.record(&buf[..n], &c);
            }
        }
    })
}

/// How a TCP viewer reaches the stream.
#[derive(Clone, Debug)]
pub enum TcpSource {
    /// DESCRIBE, SETUP (interleaved), PLAY at this URL.
    Rtsp { addr: String, url: String },
    /// Plain TCP carrying interleaved frames (the floor sender).
    Raw { addr: String },
}

/// Reads one RTSP response: its head and body. Fails on a non-200 status.
fn read_response(s: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
        if head.len() > 65536 {
            return Err(std::io::Error::other("response too large"));
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    if !head.starts_with("RTSP/1.0 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or_default().to_string(),
        ));
    }
    Ok((head, String::from_utf8_lossy(&body).to_string()))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    })
}

/// The video track's control URL: the SDP's media-level `a=control`,
/// resolved against Content-Base (RFC 2326 C.1.1).
fn track_url(url: &str, head: &str, sdp: &str) -> String {
    let base = header(head, "Content-Base").unwrap_or(url).to_string();
    let control = sdp
        .split("m=video")
        .nth(1)
        .and_then(|m| m.lines().find_map(|l| l.trim().strip_prefix("a=control:")))
        .map(str::trim)
        .unwrap_or("*");
    if control.starts_with("rtsp://") {
        control.to_string()
    } else if control == "*" {
        base
    } else {
        format!("{}/{control}", base.trim_end_matches('/'))
    }
}

fn rtsp_play(s: &mut TcpStream, url: &str) -> std::io::Result<()> {
    write!(
        s,
        "DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
    )?;
    let (head, sdp) = read_response(s)?;
    let track = track_url(url, &head, &sdp);
    write!(
        s,
        "SETUP {track} RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    )?;
    let (setup, _) = read_response(s)?;
    let session = header(&setup, "Session")
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    write!(
        s,
        "PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\nRange: npt=0.000-\r\n\r\n"
    )?;
    read_response(s)?;
    Ok(())
}

/// A TCP viewer: reads interleaved frames until `stop`.
pub fn tcp(
    ns: &Netns,
    src: TcpSource,
    c: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    ns.spawn(move || {
        let run = || -> std::io::Result<()> {
            let addr = match &src {
                TcpSource::Rtsp { addr, .. } | TcpSource::Raw { addr } => addr.clone(),
            };
            let mut s = TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            if let TcpSource::Rtsp { url, .. } = &src {
                rtsp_play(&mut s, url)?;
            }
            let mut seqs = Seqs::new();
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
            let mut tmp = vec![0u8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let n = s.read(&mut tmp)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&tmp[..n]);
                let mut pos = 0;
                while buf.len() >= pos + 4 {
                    if buf[pos] != b'$' {
                        // An RTSP message (a server request or reply): skip its head.
                        match buf[pos..].windows(4).position(|w| w == b"\r\n\r\n") {
                            Some(e) => {
                                pos += e + 4;
                                continue;
                            }
                            None => break,
                        }
                    }
                    let len = u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]) as usize;
                    if buf.len() < pos + 4 + len {
                        break;
                    }
                    if buf[pos + 1] == 0 {
                        seqs.record(&buf[pos + 4..pos + 4 + len], &c);
                    }
                    pos += 4 + len;
                }
                buf.drain(..pos);
            }
            Ok(())
        };
        if run().is_err() && !stop.load(Ordering::Relaxed) {
            c.failed.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// A real decoder: ffmpeg in `ns` decoding `input` for `seconds`.
pub struct Decoder {
    child: std::process::Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

#[derive(Clone, Debug, Default)]
pub struct Decoded {
    pub frames: u64,
    pub errors: Vec<String>,
}

impl Decoder {
    pub fn start(
        ns: &Netns,
        dir: &std::path::Path,
        pre_input: &[&str],
        input: &str,
        seconds: u64,
    ) -> anyhow::Result<Decoder> {
        let out = dir.join("decoder.out");
        let err = dir.join("decoder.err");
        let child = ns
            .command("ffmpeg")
            .args([
                "-hide_banner",
                "-nostdin",
                "-v",
                "error",
                "-progress",
                "pipe:1",
                "-nostats",
            ])
            .args(pre_input)
            .args(["-i", input, "-t", &seconds.to_string(), "-f", "null", "-"])
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()?;
        Ok(Decoder { child, out, err })
    }

    pub fn finish(mut self, timeout: Duration) -> Decoded {
        let deadline = std::time::Instant::now() + timeout;
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let frames = std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("frame="))
            .filter_map(|v| v.trim().parse().ok())
            .next_back()
            .unwrap_or(0);
        let errors = std::fs::read_to_string(&self.err)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        Decoded { frames, errors }
    }
}

/// One RTP packet as the packet log saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The sender's address (which server emitted it).
    pub from: Ipv4Addr,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub at: std::time::Instant,
}

/// Packets one log keeps at most: a 4 Mbit/s stream's for over 20 minutes
/// (the failover scenario's camera sends about 40 a second).
const MAX_LOGGED_PACKETS: usize = 1 << 20;

/// An independent receiver on a workstation that logs (source, SSRC,
/// sequence, timestamp, arrival) of every RTP packet on a group's port:
/// the witness of who sent what, and when.
pub struct PacketLog {
    packets: Arc<std::sync::Mutex<Vec<Packet>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PacketLog {
    /// Joins `group` on `port` at `local` in `ns` (the port is shared with
    /// other receivers there, such as ffmpeg); returns once joined.
    pub fn start(ns: &Netns, local: Ipv4Addr, group: Ipv4Addr, port: u16) -> anyhow::Result<Self> {
        let packets: Arc<std::sync::Mutex<Vec<Packet>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (joined_tx, joined) = std::sync::mpsc::channel();
        let (log, stop_rx) = (packets.clone(), stop.clone());
        let thread = ns.spawn(move || {
            let join = || -> std::io::Result<UdpSocket> {
                let s = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::DGRAM,
                    Some(socket2::Protocol::UDP),
                )?;
                s.set_reuse_address(true)?;
                let _ = s.set_recv_buffer_size(4 << 20);
                s.bind(&SocketAddrV4::new(group, port).into())?;
                s.join_multicast_v4(&group, &local)?;
                let sock: UdpSocket = s.into();
                sock.set_read_timeout(Some(Duration::from_millis(100)))?;
                Ok(sock)
            };
            let sock = match join() {
                Ok(s) => {
                    let _ = joined_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = joined_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 2048];
            while !stop_rx.load(Ordering::Relaxed) {
                let Ok((n, std::net::SocketAddr::V4(from))) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let rtp = &buf[..n];
                if n < 12 || rtp[0] >> 6 != 2 || (200..=204).contains(&rtp[1]) {
                    continue; // Not RTP.
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                if log.len() < MAX_LOGGED_PACKETS {
                    log.push(Packet {
                        from: *from.ip(),
                        seq: u16::from_be_bytes([rtp[2], rtp[3]]),
                        ts: u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]]),
                        ssrc: u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]),
                        at: std::time::Instant::now(),
                    });
                }
            }
        });
        let mut log = PacketLog {
            packets,
            stop,
            thread: Some(thread),
        };
        match joined.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(log),
            Ok(Err(e)) => Err(anyhow::anyhow!("packet log: join {group}:{port}: {e}")),
            Err(_) => {
                log.stop();
                anyhow::bail!("packet log: no answer from its thread")
            }
        }
    }

    /// The packets logged so far.
    pub fn snapshot(&self) -> Vec<Packet> {
        self.packets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops logging; every packet logged, in arrival order.
    pub fn finish(mut self) -> Vec<Packet> {
        self.stop();
        std::mem::take(&mut *self.packets.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for PacketLog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A decoded picture: when it came out of the decoder, its presentation
/// timestamp (in the decoder's time base) and a checksum of its content
/// (which pictures are the same picture).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picture {
    pub at: std::time::Instant,
    pub pts: i64,
    pub crc: u32,
}

/// Pictures a decoding viewer keeps at most: 25 fps for 10 minutes, which is
/// also the `-t` the decoder is started with.
const MAX_FRAMES: usize = 25 * 600;

/// A decoding viewer: Debian's ffmpeg playing an SDP, each decoded picture
/// stamped with the instant it came out of the decoder. ffmpeg writes one
/// `framecrc` line per picture (scaled down to 16x16 grey first: the
/// picture is counted, not looked at) to a pipe, flushed at once
/// (`-flush_packets 1`). Pictures pass through as decoded (`-fps_mode
/// passthrough`: none is repeated to fill a gap), with the stream's own
/// timestamps (`-enc_time_base -1`).
pub struct FrameClock {
    proc: crate::netns::Proc,
    frames: Arc<std::sync::Mutex<Vec<Picture>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    err: std::path::PathBuf,
}

/// The presentation timestamp and the checksum in a `framecrc` line
/// (`stream, dts, pts, duration, size, crc`); `None` for its header lines.
fn framecrc_line(line: &str) -> Option<(i64, u32)> {
    if line.starts_with('#') {
        return None;
    }
    let f: Vec<&str> = line.split(',').map(str::trim).collect();
    let pts = f.get(2)?.parse().ok()?;
    let crc = u32::from_str_radix(f.get(5)?.strip_prefix("0x")?, 16).ok()?;
    Some((pts, crc))
}

impl FrameClock {
    /// Plays `sdp` (a file) in `ns`; ffmpeg's error lines go to `err`.
    pub fn start(ns: &Netns, sdp: &std::path::Path, err: &std::path::Path) -> anyhow::Result<Self> {
        let mut cmd = ns.command("ffmpeg");
        cmd.args(["-hide_banner", "-nostdin", "-v", "error"])
            .args(["-protocol_whitelist", "file,udp,rtp", "-f", "sdp", "-i"])
            .arg(sdp)
            .args([
                "-map",
                "0:v",
                "-fps_mode",
                "passthrough",
                "-enc_time_base",
                "-1",
            ])
            .args(["-vf", "scale=16:16,format=gray", "-f", "framecrc"])
            .args(["-flush_packets", "1", "-t", &(MAX_FRAMES / 25).to_string()])
            .arg("pipe:1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(err)?);
        let mut proc = crate::netns::Proc::spawn_as_set(cmd)?;
        let out = proc
            .0
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("ffmpeg's stdout"))?;
        let frames: Arc<std::sync::Mutex<Vec<Picture>>> = Arc::default();
        let f = frames.clone();
        // Ends when ffmpeg does (end of its output), at most MAX_FRAMES on.
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Some((pts, crc)) = framecrc_line(&line) else {
                    continue;
                };
                let at = std::time::Instant::now();
                let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                if f.len() >= MAX_FRAMES {
                    break;
                }
                f.push(Picture { at, pts, crc });
            }
        });
        Ok(FrameClock {
            proc,
            frames,
            reader: Some(reader),
            err: err.to_path_buf(),
        })
    }

    /// Pictures decoded so far.
    pub fn count(&self) -> usize {
        self.frames.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether ffmpeg still runs.
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    /// Stops ffmpeg (by its PID): the pictures, and ffmpeg's error lines.
    pub fn finish(mut self) -> (Vec<Picture>, Vec<String>) {
        self.proc.kill();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let frames = std::mem::take(&mut *self.frames.lock().unwrap_or_else(|e| e.into_inner()));
        let errors = std::fs::read_to_string(&self.err)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        (frames, errors)
    }
}

impl Drop for FrameClock {
    fn drop(&mut self) {
        self.proc.kill();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::framecrc_line;

    #[test]
    fn framecrc_lines_give_the_pictures_timestamps_and_checksums() {
        assert_eq!(framecrc_line("#tb 0: 1/90000"), None);
        assert_eq!(
            framecrc_line("0,      48000,      51600,    3600,      256, 0xa6947f56"),
            Some((51600, 0xa694_7f56))
        );
        assert_eq!(
            framecrc_line("0,      -7200,      -3600,    3600,      256, 0x00000001"),
            Some((-3600, 1))
        );
        assert_eq!(framecrc_line("garbage"), None);
    }
}
