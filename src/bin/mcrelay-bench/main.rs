//! `mcrelay-bench`: what relaying costs, measured on this machine on a LAN
//! of network namespaces the tool builds itself (a switch, a recorder, a
//! camera, workstations on 198.18.0.0/16). Nothing leaves the machine.
//!
//!   mcrelay-bench suite --out bench-out     # everything BENCHMARKS.md shows
//!   mcrelay-bench suite --quick             # a short smoke run
//!   mcrelay-bench failover                  # takeover and failback, kill -9 and link cut
//!   mcrelay-bench failover --controller etcd   # the same on etcd (--features etcd)

mod failover;
mod floor;
mod measure;
mod netns;
mod relays;
mod report;
mod scenario;
mod topology;
mod viewers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use relays::{Env, Relay};
use scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "mcrelay-bench",
    about = "Benchmarks for mcrelay (run as root, after cargo build --release)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole comparison: a viewer sweep on one channel (multicast and
    /// TCP fan-out, mcrelay, the usual alternatives, the floor) and a
    /// channel sweep in multicast mode. Writes results.md and benchmarks.svg.
    Suite {
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Viewer counts for the one-channel sweep [default: 1,10,50,200;
        /// with --quick: 2].
        #[arg(long, value_delimiter = ',')]
        viewers: Option<Vec<usize>>,
        /// Channel counts for the multicast sweep (mcrelay and the floor)
        /// [default: 1,16,100,500; with --quick: 2].
        #[arg(long, value_delimiter = ',')]
        channels: Option<Vec<usize>>,
        /// Channel counts at which the alternatives run (one process per
        /// channel) [default: 1,16; with --quick: none].
        #[arg(long, value_delimiter = ',')]
        alternative_channels: Option<Vec<usize>>,
        /// Measurement window per run, seconds [default: 20; with --quick: 2].
        #[arg(long)]
        seconds: Option<u64>,
        /// Camera bitrate (ffmpeg syntax) [default: 4M; with --quick: 1M].
        #[arg(long)]
        bitrate: Option<String>,
        /// Camera picture size [default: 1920x1080; with --quick: 640x360].
        #[arg(long)]
        size: Option<String>,
        /// Workstation hosts (viewers are spread over them) [default: 20;
        /// with --quick: 2].
        #[arg(long)]
        hosts: Option<usize>,
        /// A short run of a few rows, for CI. Options given as well override
        /// its settings.
        #[arg(long)]
        quick: bool,
        /// Only these relays (mcrelay-multicast, mcrelay-record, mcrelay-tcp, ffmpeg,
        /// gstreamer, gstreamer-rtsp, floor-per-packet, floor-gso, floor-tcp),
        /// and the failover scenario (failover), which a full run ends with
        /// and a quick one leaves out (it takes over a minute; under every
        /// controller the binary has: embedded, and etcd when built with
        /// --features etcd).
        #[arg(long, value_delimiter = ',')]
        relays: Vec<String>,
        /// Runtime threads for mcrelay (it is pinned to one CPU).
        #[arg(long, default_value_t = 1)]
        mcrelay_threads: usize,
        /// Cameras send a G.711 audio track too (mcrelay relays it to its
        /// own multicast port): the extra cost of a track.
        #[arg(long)]
        audio: bool,
    },
    /// Failover on a LAN of its own: recorder-1 broken by kill -9 and by a
    /// cut link, under each controller, side by side: the time until
    /// failover-1 emits on its group, the frames a decoding viewer lost,
    /// and the gap when recorder-1 takes its role back. Writes failover.md
    /// (and the servers' logs under failover-logs/<controller>-<fault>/).
    Failover {
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// recorder-1's inaccessible_period.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        period: Duration,
        /// The site's failback_delay.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        failback_delay: Duration,
        /// Only these faults.
        #[arg(long, value_delimiter = ',', default_values = ["kill", "cut"])]
        faults: Vec<failover::Fault>,
        /// Under these failover controllers, each on a LAN of its own (etcd:
        /// a 3-member cluster on the LAN, lease_ttl 2 s). The default is
        /// every controller this binary has: etcd only with --features etcd
        /// (needs protoc: Debian protobuf-compiler).
        #[arg(long, value_delimiter = ',', default_values = failover::DEFAULT_CONTROLLERS)]
        controller: Vec<failover::Controller>,
    },
    /// The floor sender (run by the suite on the recorder host).
    #[command(hide = true)]
    Floor {
        #[arg(long)]
        clip: PathBuf,
        #[arg(long)]
        mode: String,
        #[arg(long)]
        channels: usize,
    },
}

/// A file next to this binary.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(
        p.exists(),
        "{} not found: build it first (cargo build --release)",
        p.display()
    );
    Ok(p)
}

/// A 10 s H.264 clip at `size` and `bitrate`, made once and kept.
/// Recording runs stop here: 100 channels at 4 Mbit/s write 50 MB/s, a
/// 500-channel run would measure this machine's virtual disk.
const RECORD_MAX_CHANNELS: usize = 100;

fn camera_clip(size: &str, bitrate: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join("mcrelay-bench");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("clip-{size}-{bitrate}.h264"));
    if out.exists() {
        return Ok(out);
    }
    eprintln!("making a {size} {bitrate}bit/s clip with ffmpeg...");
    let tmp = out.with_extension("partial");
    mcrelay::camera::encode_test_clip(&tmp, size, bitrate, 10)
        .context("encode a clip (Debian package ffmpeg)")?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_else(|_| "not installed".into())
    };
    format!(
        "- CPU: {cpu}, {cores} cores; memory {mem}\n- kernel {}\n- {}\n- {}\n- mcrelay {} (git {})\n",
        cmd("uname", &["-r"]),
        cmd("ffmpeg", &["-version"]),
        cmd("gst-launch-1.0", &["--version"]),
        env!("CARGO_PKG_VERSION"),
        cmd(
            "git",
            &[
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "rev-parse",
                "--short",
                "HEAD"
            ]
        ),
    )
}

/// The failover scenario's tools: mcrelay and the tests' camera clip.
fn failover_env() -> anyhow::Result<failover::Env> {
    Ok(failover::Env {
        mcrelay: sibling("mcrelay")?,
        clip: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/clips/camera-h264.h264"),
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    netns::clean_up_on_signals();
    match cli.command {
        Command::Failover {
            out,
            period,
            failback_delay,
            faults,
            controller,
        } => {
            failover::check_controllers(&controller)?;
            let cfg = failover::Config {
                period,
                failback_delay,
                faults,
                controllers: controller,
            };
            std::fs::create_dir_all(&out)?;
            let started = Instant::now();
            let results = failover::run(&failover_env()?, &cfg, &out.join("failover-logs"));
            let md = format!(
                "## Machine\n\n{}\n{}",
                machine(),
                failover::section(&cfg, &results)
            );
            std::fs::write(out.join("failover.md"), &md)?;
            println!("{md}");
            eprintln!(
                "wrote {} in {:.1} min",
                out.join("failover.md").display(),
                started.elapsed().as_secs_f64() / 60.0
            );
            anyhow::ensure!(
                results.iter().all(|(_, r)| r.is_ok()),
                "a run failed (its column says why)"
            );
            Ok(())
        }
        Command::Floor {
            clip,
            mode,
            channels,
        } => floor::run(&clip, &mode, channels),
        Command::Suite {
            out,
            viewers,
            channels,
            alternative_channels,
            seconds,
            bitrate,
            size,
            hosts,
            quick,
            relays,
            mcrelay_threads,
            audio,
        } => {
            let wanted = |r: Relay| relays.is_empty() || relays.iter().any(|k| k == r.key());
            // The defaults of a full run, or of a quick one; what is given
            // on the command line wins over either.
            let pick = |full: &str, short: &str| if quick { short } else { full }.to_string();
            let viewers = viewers.unwrap_or(if quick { vec![2] } else { vec![1, 10, 50, 200] });
            let channels = channels.unwrap_or(if quick {
                vec![2]
            } else {
                vec![1, 16, 100, 500]
            });
            let alternative_channels =
                alternative_channels.unwrap_or(if quick { vec![] } else { vec![1, 16] });
            let seconds = seconds.unwrap_or(if quick { 2 } else { 20 });
            let bitrate = bitrate.unwrap_or_else(|| pick("4M", "1M"));
            let size = size.unwrap_or_else(|| pick("1920x1080", "640x360"));
            let hosts = hosts.unwrap_or(if quick { 2 } else { 20 });
            let warm_up = std::time::Duration::from_secs(if quick { 2 } else { 4 });
            anyhow::ensure!(hosts >= 1, "--hosts: at least one workstation host");
            let clip = camera_clip(&size, &bitrate)?;
            let parsed = mcrelay::camera::Clip::load(&clip, None, None)?;
            let mut params = mcrelay::media::ParamSets::default();
            for nal in &parsed.access_units[0].nals {
                params.update(parsed.codec, nal);
            }
            let env = Env {
                mcrelay: sibling("mcrelay")?,
                bench: std::env::current_exe()?,
                fmtp: params.fmtp(parsed.codec),
                clip,
                gst_rtsp_relay: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("benches/support/gst_rtsp_relay.py"),
                mcrelay_threads,
                audio,
            };
            std::fs::create_dir_all(&out)?;
            let work = tempfile::tempdir()?;
            let started = Instant::now();
            eprintln!("building the LAN: switch, recorder, camera, {hosts} workstations");
            let lan = topology::Lan::new(hosts)?;
            let camera = relays::camera(&lan, &env)?;
            std::thread::sleep(std::time::Duration::from_secs(1));

            let viewer_relays = [
                Relay::McrelayMulticast,
                Relay::FloorPerPacket,
                Relay::FloorGso,
                Relay::Ffmpeg,
                Relay::Gstreamer,
                Relay::McrelayTcp,
                Relay::FloorTcp,
                Relay::GstreamerRtspServer,
            ];
            let mut plan: Vec<(bool, Scenario)> = Vec::new();
            for relay in viewer_relays {
                if !relay.available() {
                    eprintln!("skipping {}: not installed here", relay.label());
                }
            }
            for relay in viewer_relays
                .into_iter()
                .filter(|r| r.available() && wanted(*r))
            {
                for &v in &viewers {
                    plan.push((
                        true,
                        Scenario {
                            relay,
                            channels: 1,
                            viewers: v,
                            seconds,
                            warm_up,
                        },
                    ));
                }
            }
            for relay in [
                Relay::McrelayMulticast,
                Relay::McrelayRecord,
                Relay::FloorPerPacket,
                Relay::FloorGso,
                Relay::Ffmpeg,
                Relay::Gstreamer,
            ] {
                if !relay.available() || !wanted(relay) {
                    continue;
                }
                let counts = if relay.is_alternative() {
                    &alternative_channels
                } else {
                    &channels
                };
                for &c in counts {
                    if relay == Relay::McrelayRecord && c > RECORD_MAX_CHANNELS {
                        continue;
                    }
                    plan.push((
                        false,
                        Scenario {
                            relay,
                            channels: c,
                            viewers: c.min(hosts),
                            seconds,
                            warm_up,
                        },
                    ));
                }
            }
            let (mut by_viewers, mut by_channels) = (Vec::new(), Vec::new());
            let total = plan.len();
            for (i, (viewer_sweep, sc)) in plan.into_iter().enumerate() {
                eprintln!(
                    "[{}/{total}, {:.0} min] {}: {} channel(s), {} viewer(s), {} s",
                    i + 1,
                    started.elapsed().as_secs_f64() / 60.0,
                    sc.relay.label(),
                    sc.channels,
                    sc.viewers,
                    sc.seconds
                );
                let dir = work.path().join(format!("run{i}"));
                std::fs::create_dir_all(&dir)?;
                match scenario::run(&lan, &env, sc, &dir) {
                    Ok(row) => {
                        eprintln!(
                            "    link {:.2} Mbit/s, CPU {:.2}% ({:.2} CPU-s/GB), loss {}",
                            row.link_mbit(),
                            row.cpu_percent(),
                            row.cpu_per_gb(),
                            row.loss()
                                .map_or("-".into(), |l| format!("{:.2}%", 100.0 * l))
                        );
                        if viewer_sweep {
                            by_viewers.push(row)
                        } else {
                            by_channels.push(row)
                        }
                    }
                    Err(e) => eprintln!("    failed: {e:#}"),
                }
            }
            // The failover scenario builds LANs of its own: this one goes first.
            drop(camera);
            drop(lan);
            let run_failover = if relays.is_empty() {
                !quick
            } else {
                relays.iter().any(|k| k == "failover")
            };
            let failover_section = if run_failover {
                // Every controller this binary has.
                let controllers = failover::default_controllers();
                eprintln!(
                    "[{:.0} min] failover: kill -9 and link cut, under {}",
                    started.elapsed().as_secs_f64() / 60.0,
                    controllers
                        .iter()
                        .map(|c| c.label())
                        .collect::<Vec<_>>()
                        .join(" and ")
                );
                let cfg = failover::Config {
                    period: Duration::from_secs(3),
                    failback_delay: Duration::from_secs(3),
                    faults: vec![failover::Fault::Kill, failover::Fault::Cut],
                    controllers,
                };
                let results = failover::run(&failover_env()?, &cfg, &out.join("failover-logs"));
                format!("\n{}", failover::section(&cfg, &results))
            } else {
                String::new()
            };
            let md = format!(
                "## Machine\n\n{}\n## One channel, N viewers\n\nOne {size} H.264 camera at {bitrate}bit/s (1 s GOP) on the camera host, pulled over RTSP/TCP by the relay on the recorder host; viewers spread over {hosts} workstation hosts. Multicast viewers join the channel's group through the switch (IGMP snooping); TCP viewers play it over RTSP with TCP interleaved. One viewer per run is Debian's ffmpeg decoding. Each row: {seconds} s.\n\n{}\n## N channels, multicast\n\nEach channel pulls the same camera; one group per channel; a probe joins every group to count loss.\n\n{}\n## Targets\n\n{}",
                machine(),
                report::viewers_table(&by_viewers),
                report::channels_table(&by_channels),
                report::targets(&by_viewers, &by_channels),
            ) + &failover_section;
            std::fs::write(out.join("results.md"), &md)?;
            report::plot(
                &out.join("benchmarks.svg"),
                &bitrate,
                &by_viewers,
                &by_channels,
            )?;
            println!("{md}");
            eprintln!(
                "wrote {} and {} in {:.1} min",
                out.join("results.md").display(),
                out.join("benchmarks.svg").display(),
                started.elapsed().as_secs_f64() / 60.0
            );
            Ok(())
        }
    }
}
