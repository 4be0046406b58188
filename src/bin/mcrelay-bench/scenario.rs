//! One measured run: a relay, C channels, N viewers, T seconds.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::measure;
use crate::relays::{self, Env, Mode, PORT, Relay};
use crate::topology::{Lan, LinkCounters, RECORDER_ADDR};
use crate::viewers::{self, Counters, Decoded, Snapshot, TcpSource};

#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub relay: Relay,
    pub channels: usize,
    pub viewers: usize,
    pub seconds: u64,
    /// Viewers connect and decoders probe before the window opens.
    pub warm_up: Duration,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: Scenario,
    /// Measurement window, seconds.
    pub window: f64,
    /// What the recorder host sent on its LAN link during the window.
    pub link: LinkCounters,
    pub cpu: f64,
    pub rss: u64,
    pub peak_rss: u64,
    pub viewers: Snapshot,
    /// A receiver joined to every channel (multicast runs with C > 1).
    pub probe: Option<Snapshot>,
    pub decoded: Option<Decoded>,
    pub expected_frames: u64,
    /// Viewers counting packets (a TCP run's decoder is one of the N
    /// viewers and counts frames instead).
    pub counting_viewers: usize,
    /// mcrelay's own counters over the window.
    pub relay: Option<RelayCounts>,
    /// The relay died during the run.
    pub crashed: bool,
}

/// What mcrelay says it did (its /metrics), summed over channels.
#[derive(Clone, Copy, Debug, Default)]
pub struct RelayCounts {
    /// Frames received from the camera and sent on.
    pub frames: u64,
    /// Frames the multicast socket could not take in full.
    pub skipped: u64,
    pub recorded: u64,
    pub record_dropped: u64,
    /// RTP packets and their bytes (headers included) sent to multicast.
    pub mc_packets: u64,
    pub mc_bytes: u64,
    /// Seconds between the two reads of the counters (each timed at the
    /// middle of its request): the window these counts cover.
    pub window: f64,
}

impl RelayCounts {
    fn read(lan: &Lan) -> RelayCounts {
        let text = relays::control_get(lan, "/metrics");
        let sum = |name: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        RelayCounts {
            frames: sum("mcrelay_channel_frames_total"),
            skipped: sum("mcrelay_multicast_skipped_frames_total"),
            recorded: sum("mcrelay_recorded_frames_total"),
            record_dropped: sum("mcrelay_record_dropped_frames_total"),
            mc_packets: sum("mcrelay_multicast_packets_total"),
            mc_bytes: sum("mcrelay_multicast_bytes_total"),
            window: 0.0,
        }
    }
}

impl Row {
    pub fn link_mbit(&self) -> f64 {
        self.link.tx_bytes as f64 * 8.0 / self.window / 1e6
    }
    /// CPU seconds per GB the recorder put on its link.
    pub fn cpu_per_gb(&self) -> f64 {
        self.cpu / (self.link.tx_bytes as f64 / 1e9)
    }
    pub fn cpu_per_channel_hour(&self) -> f64 {
        self.cpu / (self.scenario.channels as f64 * self.window / 3600.0)
    }
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu / self.window
    }
    /// Lost packets as a share of expected, at the viewers (or the probe);
    /// `None` when no viewer counted packets.
    pub fn loss(&self) -> Option<f64> {
        if self.probe.is_none() && self.counting_viewers == 0 {
            return None;
        }
        let s = self.probe.unwrap_or(self.viewers);
        let total = s.packets + s.lost;
        Some(if total == 0 {
            1.0
        } else {
            s.lost as f64 / total as f64
        })
    }
}

fn diff(a: LinkCounters, b: LinkCounters) -> LinkCounters {
    LinkCounters {
        tx_bytes: b.tx_bytes - a.tx_bytes,
        tx_packets: b.tx_packets - a.tx_packets,
    }
}

pub fn run(lan: &Lan, env: &Env, sc: Scenario, dir: &Path) -> anyhow::Result<Row> {
    let mut running = relays::start(sc.relay, lan, env, sc.channels, dir)?;
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let w = lan.workstations.len();
    let mut threads = Vec::new();
    // On TCP the decoder is a client like the others, so it takes the place
    // of one counting viewer (the link then carries exactly N streams). A
    // multicast decoder adds nothing to the link.
    let decodes_tcp = matches!(sc.relay, Relay::McrelayTcp | Relay::GstreamerRtspServer);
    let counting_viewers = sc.viewers - usize::from(decodes_tcp && sc.viewers > 0);
    // Decoders run through the warm-up and the window.
    let decode_seconds = sc.seconds + sc.warm_up.as_secs() + 2;
    for v in 0..counting_viewers {
        let host = &lan.workstations[v % w];
        let ch = 1 + v % sc.channels;
        let (c, s) = (counters.clone(), stop.clone());
        threads.push(match sc.relay.mode() {
            Mode::Multicast => {
                let local: Ipv4Addr = host.addr.parse()?;
                viewers::multicast(
                    &host.ns,
                    local,
                    vec![relays::group(ch, sc.channels)],
                    PORT,
                    c,
                    s,
                )
            }
            Mode::Tcp => {
                let addr = format!("{RECORDER_ADDR}:{}", relays::RTSP_PORT);
                let src = if sc.relay == Relay::FloorTcp {
                    TcpSource::Raw { addr }
                } else {
                    TcpSource::Rtsp {
                        addr,
                        url: running.url(ch),
                    }
                };
                viewers::tcp(&host.ns, src, c, s)
            }
        });
    }
    let probe = (sc.relay.mode() == Mode::Multicast && sc.channels > 1).then(|| {
        let host = &lan.workstations[w - 1];
        let groups = (1..=sc.channels)
            .map(|ch| relays::group(ch, sc.channels))
            .collect();
        let c = Arc::new(Counters::default());
        let local: Ipv4Addr = host.addr.parse().expect("host address");
        threads.push(viewers::multicast(
            &host.ns,
            local,
            groups,
            PORT,
            c.clone(),
            stop.clone(),
        ));
        c
    });
    let decoder = {
        let host = &lan.workstations[0];
        let sdp = dir.join("ch1.sdp");
        std::fs::write(&sdp, relays::plain_sdp(1, sc.channels, &env.fmtp))?;
        let sdp_in = ["-protocol_whitelist", "file,http,tcp,udp,rtp", "-f", "sdp"];
        let tcp_in = ["-rtsp_transport", "tcp"];
        match sc.relay {
            Relay::McrelayMulticast | Relay::McrelayRecord => Some(viewers::Decoder::start(
                &host.ns,
                dir,
                &sdp_in,
                &format!("http://{RECORDER_ADDR}:8080/channels/1.sdp"),
                decode_seconds,
            )?),
            Relay::Ffmpeg | Relay::Gstreamer | Relay::FloorPerPacket | Relay::FloorGso => {
                Some(viewers::Decoder::start(
                    &host.ns,
                    dir,
                    &sdp_in,
                    &sdp.to_string_lossy(),
                    decode_seconds,
                )?)
            }
            Relay::McrelayTcp | Relay::GstreamerRtspServer => Some(viewers::Decoder::start(
                &host.ns,
                dir,
                &tcp_in,
                &running.url(1),
                decode_seconds,
            )?),
            Relay::FloorTcp => None,
        }
    };
    std::thread::sleep(sc.warm_up);

    let is_mcrelay = matches!(
        sc.relay,
        Relay::McrelayMulticast | Relay::McrelayTcp | Relay::McrelayRecord
    );
    // Each read is stamped at the middle of its request.
    let relay_counts = || {
        is_mcrelay.then(|| {
            let asked = Instant::now();
            let c = RelayCounts::read(lan);
            (c, asked + asked.elapsed() / 2)
        })
    };
    let r0 = relay_counts();
    let v0 = counters.snapshot();
    let p0 = probe.as_ref().map(|p| p.snapshot());
    let l0 = lan.recorder.link_counters()?;
    let t0 = Instant::now();
    let cpu = measure::cpu_over(&running.pids, Duration::from_secs(sc.seconds));
    let window = t0.elapsed().as_secs_f64();
    let l1 = lan.recorder.link_counters()?;
    let v1 = counters.snapshot();
    let p1 = probe.as_ref().map(|p| p.snapshot());
    let r1 = relay_counts();
    let rss = running.pids.iter().map(|p| measure::rss(*p)).sum();
    let peak_rss = running.pids.iter().map(|p| measure::peak_rss(*p)).sum();
    let crashed = !running.alive();

    let decoded = decoder.map(|d| d.finish(Duration::from_secs(sc.seconds + 20)));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(running);
    Ok(Row {
        scenario: sc,
        window,
        link: diff(l0, l1),
        cpu,
        rss,
        peak_rss,
        viewers: v1 - v0,
        probe: p0.zip(p1).map(|(a, b)| b - a),
        decoded,
        expected_frames: decode_seconds * 25,
        counting_viewers,
        relay: r0.zip(r1).map(|((a, at), (b, bt))| RelayCounts {
            frames: b.frames.saturating_sub(a.frames),
            skipped: b.skipped.saturating_sub(a.skipped),
            recorded: b.recorded.saturating_sub(a.recorded),
            record_dropped: b.record_dropped.saturating_sub(a.record_dropped),
            mc_packets: b.mc_packets.saturating_sub(a.mc_packets),
            mc_bytes: b.mc_bytes.saturating_sub(a.mc_bytes),
            window: (bt - at).as_secs_f64(),
        }),
        crashed,
    })
}
