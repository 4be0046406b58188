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
