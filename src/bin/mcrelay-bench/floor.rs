//! The floor: a minimal sender that issues what a relay must issue (the same
//! RTP datagrams to the same groups, or frame-sized TCP writes), from packets
//! prepared before it starts: no camera, no parsing, no packetizing. Its cost
//! is the kernel's, plus a paced loop.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcrelay::camera::Clip;
use mcrelay::config::Destination;
use mcrelay::emit::{MulticastSender, SendMode};
use mcrelay::rtp::{Packetizer, PacketizerConfig, RtpPacket};

use crate::relays::{PORT, RTSP_PORT, group};
use crate::topology::RECORDER_ADDR;

fn frames(clip: &Path) -> anyhow::Result<(Vec<Vec<RtpPacket>>, f64)> {
    let clip = Clip::load(clip, None, None)?;
    let mut p = Packetizer::new(
        clip.codec,
        PacketizerConfig {
            payload_type: 96,
            ssrc: 0x0f10_0f10,
            max_payload: 1400,
            aggregate: true,
        },
        0,
    );
    let step = 90_000.0 / clip.fps;
    let frames = clip
        .access_units
        .iter()
        .enumerate()
        .map(|(i, au)| p.packetize(au, (i as f64 * step) as u32).0)
        .collect();
    Ok((frames, clip.fps))
}

/// Runs until killed.
pub fn run(clip: &Path, mode: &str, channels: usize) -> anyhow::Result<()> {
    let (frames, fps) = frames(clip)?;
    let period = Duration::from_secs_f64(1.0 / fps);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let interface: Ipv4Addr = RECORDER_ADDR.parse()?;
    rt.block_on(async move {
        let start = Instant::now();
        let due = |i: usize| start + period.mul_f64(i as f64);
        match mode {
            "per-packet" => {
                let datagrams: Vec<Vec<Vec<u8>>> = frames
                    .iter()
                    .map(|f| f.iter().map(RtpPacket::to_vec).collect())
                    .collect();
                let socks = (1..=channels)
                    .map(|ch| {
                        let s = socket2::Socket::new(
                            socket2::Domain::IPV4,
                            socket2::Type::DGRAM,
                            None,
                        )?;
                        s.set_multicast_if_v4(&interface)?;
                        s.set_multicast_ttl_v4(1)?;
                        s.bind(&SocketAddrV4::new(interface, 0).into())?;
                        s.connect(&SocketAddrV4::new(group(ch, channels), PORT).into())?;
                        Ok(std::net::UdpSocket::from(s))
                    })
                    .collect::<std::io::Result<Vec<_>>>()?;
                for i in 0.. {
                    tokio::time::sleep_until(due(i).into()).await;
                    for s in &socks {
                        for d in &datagrams[i % datagrams.len()] {
                            let _ = s.send(d);
                        }
                    }
                }
            }
            "gso" => {
                let mut senders = (1..=channels)
                    .map(|ch| {
                        let dest = Destination {
                            group: group(ch, channels),
                            port: PORT,
                            ttl: 1,
                        };
                        MulticastSender::open(dest, interface, false, SendMode::Gso)
                    })
                    .collect::<std::io::Result<Vec<_>>>()?;
                for i in 0.. {
                    tokio::time::sleep_until(due(i).into()).await;
                    for s in &mut senders {
                        let _ = s.send(&frames[i % frames.len()]).await;
                    }
                }
            }
            "tcp" => {
                // Each frame as the bytes an RTSP/TCP client receives.
                let wire: Vec<Bytes> = frames
                    .iter()
                    .map(|f| {
                        let mut v = Vec::new();
                        for p in f {
                            v.extend_from_slice(&[b'$', 0, (p.len() >> 8) as u8, p.len() as u8]);
                            v.extend_from_slice(&p.to_vec());
                        }
                        Bytes::from(v)
                    })
                    .collect();
                // One thread: every frame, one blocking write per client.
                let listener = std::net::TcpListener::bind((RECORDER_ADDR, RTSP_PORT))?;
                let clients: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Arc::default();
                let c = clients.clone();
                std::thread::spawn(move || {
                    for sock in listener.incoming().flatten() {
                        let _ = sock.set_nodelay(true);
                        c.lock().unwrap_or_else(|e| e.into_inner()).push(sock);
                    }
                });
                for i in 0.. {
                    tokio::time::sleep_until(due(i).into()).await;
                    let frame = &wire[i % wire.len()];
                    let mut list = clients.lock().unwrap_or_else(|e| e.into_inner());
                    list.retain_mut(|s| std::io::Write::write_all(s, frame).is_ok());
                }
            }
            other => anyhow::bail!("unknown floor mode {other:?}"),
        }
        Ok(())
    })
}
