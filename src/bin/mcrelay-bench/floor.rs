//! The floor: a minimal sender that issues what a relay must issue (the same
//! RTP datagrams to the same groups, or frame-sized TCP writes), from packets
//! prepared before it starts: no camera, no parsing, no packetizing. Its cost
//! is the kernel's, plus a paced loop.

use std::net::Ipv4Addr;
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

/// The packets sent: long enough that a run never sees the clip loop.
const PREPARED: Duration = Duration::from_secs(120);

/// The clip packetized once, repeated for [`PREPARED`] with continuing
/// sequence numbers and timestamps (a player drops packets whose sequence
/// numbers jump back). Repeats share the clip's buffers: only the 12-14 byte
/// heads are new.
fn frames(clip: &Path) -> anyhow::Result<(Vec<Vec<RtpPacket>>, f64, usize)> {
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
    let count = (PREPARED.as_secs_f64() * clip.fps) as usize;
    let frames = (0..count)
        .map(|i| {
            let au = &clip.access_units[i % clip.access_units.len()];
            p.packetize(au, (i as f64 * step) as u32).0
        })
        .collect();
    Ok((frames, clip.fps, clip.access_units.len()))
}

/// Send ticks per frame interval (1.6 ms apart at 25 fps).
const SLOTS: usize = 25;

/// Runs until killed.
pub fn run(clip: &Path, mode: &str, channels: usize) -> anyhow::Result<()> {
    let (frames, fps, clip_frames) = frames(clip)?;
    let period = Duration::from_secs_f64(1.0 / fps);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let interface: Ipv4Addr = RECORDER_ADDR.parse()?;
    rt.block_on(async move {
        let start = Instant::now();
        let due = |i: usize| start + period.mul_f64(i as f64);
        match mode {
            "per-packet" | "gso" => {
                // One send per packet (iovecs straight from the shared
                // buffers), or one GSO send per frame.
                let mode = if mode == "gso" {
                    SendMode::Gso
                } else {
                    SendMode::PerPacket
                };
                let mut senders = (1..=channels)
                    .map(|ch| {
                        let dest = Destination {
                            group: group(ch, channels),
                            port: PORT,
                            ttl: 1,
                        };
                        MulticastSender::open(dest, interface, false, mode)
                    })
                    .collect::<std::io::Result<Vec<_>>>()?;
                // Cameras are not in step: spread the channels over the
                // frame interval in SLOTS ticks, as their frames arrive at a
                // relay. (One burst of every channel's frame at once
                // overflows the link's receive backlog at hundreds of
                // channels.)
                let slots = SLOTS.min(channels);
                for tick in 0usize.. {
                    let (i, slot) = (tick / slots, tick % slots);
                    let at = start + period.mul_f64(i as f64 + slot as f64 / slots as f64);
                    tokio::time::sleep_until(at.into()).await;
                    for s in senders.iter_mut().skip(slot).step_by(slots) {
                        let _ = s.try_send(&frames[i % frames.len()]);
                    }
                }
            }
            "tcp" => {
                // Each frame of one pass of the clip as the bytes an RTSP/TCP
                // client receives (nobody decodes the floor's TCP stream).
                let wire: Vec<Bytes> = frames[..clip_frames]
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
