//! The `mcrelay` command: clap → config → runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use mcrelay::config::{Site, plan};
use mcrelay::emit::SendMode;
use mcrelay::media::{Codec, TrackKind};
use mcrelay::runtime::{self, RunOptions};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "mcrelay",
    version,
    about = "Multicast video stream relay: ingest each camera once, emit each channel once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum MaterialCommand {
    /// Copy the segments one server has and another is missing (compares
    /// both inventories over the control API; verifies checksums).
    Copy {
        #[arg(long)]
        site: PathBuf,
        /// The server that has the material.
        #[arg(long)]
        from: String,
        /// The server that is missing it.
        #[arg(long)]
        to: String,
        #[arg(long)]
        channel: u32,
        /// Start of the range, RFC 3339 (e.g. 2026-11-25T10:00:00Z).
        #[arg(long)]
        since: String,
        /// End of the range, RFC 3339 (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Copy at most this many segments in this run (the next run
        /// continues).
        #[arg(long)]
        max_segments: Option<usize>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run one server of a site file.
    Run {
        #[arg(long)]
        site: PathBuf,
        #[arg(long)]
        server: String,
        /// Control API address (overrides the server's `control`).
        #[arg(long)]
        control: Option<SocketAddr>,
        /// RTSP address (overrides the server's `rtsp.listen`).
        #[arg(long)]
        rtsp: Option<SocketAddr>,
        #[arg(long, value_enum, default_value = "gso")]
        send_mode: Mode,
        /// Runtime threads: 1 runs everything on one thread (no cross-thread
        /// wake-ups: the cheapest per frame when one core is enough); 0 uses
        /// one per CPU.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Recorded material.
    Material {
        #[command(subcommand)]
        command: MaterialCommand,
    },
    /// Give a server its role back from the failover server covering it
    /// (for servers without automatic_failback): it copies its missing
    /// material first when delay_failover says so.
    Failback {
        #[arg(long)]
        site: PathBuf,
        /// The restored server.
        #[arg(long)]
        server: String,
    },
    /// Print the site as a server sees it: VMS servers, failover servers,
    /// broken VMS servers (asks each server of the site until one answers).
    Status {
        #[arg(long)]
        site: PathBuf,
    },
    /// Print a new random site key (256 bits, hex) for `[site] key`: it
    /// authenticates the servers' failover beacons. Keep it like a password.
    Key,
    /// Validate a site file and print its address plan.
    Check {
        #[arg(long)]
        site: PathBuf,
    },
    /// Print a channel's SDP as its server sends it (group and port from the
    /// address plan; parameter sets come from the live server's /channels/{id}.sdp).
    Sdp {
        #[arg(long)]
        site: PathBuf,
        #[arg(long)]
        server: String,
        #[arg(long)]
        channel: u32,
    },
    /// Run the embedded demo site on loopback: two simulated cameras, one
    /// recorder sending both channels to multicast on 127.0.0.1.
    Demo {
        /// Control API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        control: SocketAddr,
        /// RTSP address for workstations.
        #[arg(long, default_value = "127.0.0.1:8554")]
        rtsp: SocketAddr,
        #[arg(long, value_enum, default_value = "gso")]
        send_mode: Mode,
        /// Runtime threads (see `run --threads`).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Where the demo records its material (two "disks" inside);
        /// default: mcrelay-demo-material in the temporary directory.
        #[arg(long)]
        material: Option<PathBuf>,
        /// Do not record.
        #[arg(long)]
        no_record: bool,
        /// The failover demo instead: recorder-1 (a process of its own)
        /// and failover-1 on loopback (config/demo-failover.toml); break
        /// recorder-1 with kill -9 and watch failover-1 take over, then
        /// the failback.
        #[arg(long)]
        failover: bool,
        /// With --failover: kill recorder-1 after this long (e.g. "20s")
        /// instead of waiting for the operator to.
        #[arg(long, value_parser = humantime::parse_duration)]
        break_after: Option<std::time::Duration>,
        /// With --failover: start recorder-1 again this long after the
        /// takeover.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        restart_after: std::time::Duration,
        /// With --failover: stop once recorder-1 has its role back.
        #[arg(long)]
        exit_when_done: bool,
    },
    /// Serve a clip as a live camera, paced in real time and looping.
    Camera {
        /// An H.264 or H.265 Annex-B file (e.g. assets/clips/demo-h264.h264).
        #[arg(long)]
        clip: PathBuf,
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, value_enum, default_value = "rtsp")]
        format: CameraFormat,
        /// RTSP path: the camera is rtsp://LISTEN/PATH.
        #[arg(long, default_value = "stream")]
        path: String,
        /// Require Digest authentication with this user (RTSP).
        #[arg(long, requires = "password")]
        user: Option<String>,
        /// The password for --user.
        #[arg(long, requires = "user")]
        password: Option<String>,
        /// Codec of the clip, if it cannot be detected.
        #[arg(long, value_enum)]
        codec: Option<ClipCodec>,
        /// Frame rate, if the clip does not state one (default 25).
        #[arg(long)]
        fps: Option<f64>,
        /// RTSP: a G.711 audio track too (a beep each second).
        #[arg(long)]
        audio: bool,
        /// RTSP: an ONVIF metadata track too (a licence plate each second).
        #[arg(long)]
        metadata: bool,
    },
}

#[derive(Copy, Clone, ValueEnum)]
enum Mode {
    Gso,
    Sendmmsg,
    PerPacket,
}

impl From<Mode> for SendMode {
    fn from(m: Mode) -> SendMode {
        match m {
            Mode::Gso => SendMode::Gso,
            Mode::Sendmmsg => SendMode::Sendmmsg,
            Mode::PerPacket => SendMode::PerPacket,
        }
    }
}

#[derive(Copy, Clone, ValueEnum)]
enum CameraFormat {
    /// RTSP with RTP interleaved on the TCP connection (rtsp://host:port/path).
    Rtsp,
    /// Raw Annex-B byte stream over TCP (connect with tcp://host:port).
    Annexb,
}

#[derive(Copy, Clone, ValueEnum)]
enum ClipCodec {
    H264,
    H265,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { site } => check(&site),
        Command::Key => {
            println!("{}", mcrelay::failover::beacon::SiteKey::generate());
            Ok(ExitCode::SUCCESS)
        }
        Command::Failback { site, server } => failback(&site, &server),
        Command::Status { site } => site_status(&site),
        Command::Sdp {
            site,
            server,
            channel,
        } => sdp(&site, &server, channel),
        Command::Material {
            command:
                MaterialCommand::Copy {
                    site,
                    from,
                    to,
                    channel,
                    since,
                    until,
                    max_segments,
                },
        } => material_copy(
            &site,
            &from,
            &to,
            channel,
            &since,
            until.as_deref(),
            max_segments,
        )
        .map(|()| ExitCode::SUCCESS),
        Command::Run {
            site,
            server,
            control,
            rtsp,
            send_mode,
            threads,
        } => {
            let site = Site::load(&site)?;
            with_runtime(threads, |shutdown| async move {
                raise_fd_limit();
                let opts = RunOptions {
                    control,
                    rtsp,
                    send_mode: send_mode.into(),
                };
                runtime::start(&site, &server, opts)
                    .await?
                    .run_until(shutdown)
                    .await
            })
        }
        Command::Demo {
            control,
            rtsp,
            send_mode,
            threads,
            material,
            no_record,
            failover,
            break_after,
            restart_after,
            exit_when_done,
        } => with_runtime(threads, |shutdown| async move {
            raise_fd_limit();
            if failover {
                let opts = mcrelay::demo::FailoverDemoOptions {
                    dir: material
                        .unwrap_or_else(|| std::env::temp_dir().join("mcrelay-failover-demo")),
                    send_mode: send_mode.into(),
                    break_after,
                    restart_after,
                    exit_when_done,
                };
                return mcrelay::demo::run_failover(opts, shutdown).await;
            }
            let opts = mcrelay::demo::DemoOptions {
                run: RunOptions {
                    control: Some(control),
                    rtsp: Some(rtsp),
                    send_mode: send_mode.into(),
                },
                material: (!no_record).then(|| {
                    material.unwrap_or_else(|| std::env::temp_dir().join("mcrelay-demo-material"))
                }),
            };
            mcrelay::demo::run(opts, shutdown).await
        }),
        Command::Camera {
            clip,
            listen,
            format,
            path,
            user,
            password,
            codec,
            fps,
            audio,
            metadata,
        } => {
            let codec = codec.map(|c| match c {
                ClipCodec::H264 => Codec::H264,
                ClipCodec::H265 => Codec::H265,
            });
            let clip = mcrelay::camera::Clip::load(&clip, codec, fps)?;
            with_runtime(0, |shutdown| async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listen on {listen}"))?;
                let what = format!(
                    "{} ({} frames at {} fps, looping)",
                    clip.codec,
                    clip.access_units.len(),
                    clip.fps
                );
                let addr = listener.local_addr()?;
                match format {
                    CameraFormat::Annexb => {
                        eprintln!("camera: serving {what} as raw Annex-B on tcp://{addr}");
                        mcrelay::camera::serve_annexb(Arc::new(clip), listener, shutdown).await;
                    }
                    CameraFormat::Rtsp => {
                        eprintln!("camera: serving {what} on rtsp://{addr}/{path}");
                        let creds = user.zip(password);
                        mcrelay::camera::serve_rtsp(
                            Arc::new(clip),
                            listener,
                            &path,
                            creds,
                            mcrelay::camera::CameraTracks { audio, metadata },
                            shutdown,
                        )
                        .await?;
                    }
                }
                Ok(())
            })
        }
    }
}

/// Runs `f` on a runtime of `threads` threads (1: the current thread; 0: one
/// per CPU) with Ctrl-C / SIGTERM handling: the first signal starts a clean
/// shutdown, a second exits at once.
fn with_runtime<F, Fut>(threads: usize, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let rt = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let mut count = 0;
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
                count += 1;
                if count == 1 {
                    tracing::info!("stopping (send the signal again to exit at once)");
                    trigger.cancel();
                } else {
                    std::process::exit(130);
                }
            }
        });
        f(shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Each channel holds two UDP sockets and a TCP connection: hundreds of
/// channels need more than the usual soft limit of 1024 descriptors.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let site = match Site::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for w in &site.warnings {
        eprintln!("{}: {w}", path.display());
    }
    // Passwords as `run` will resolve them here: an empty one is an error,
    // an environment variable not set in this shell only a warning.
    let mut bad_password = false;
    for s in site.servers() {
        match &s.password {
            Some(mcrelay::config::PasswordSource::Env(var)) if std::env::var_os(var).is_none() => {
                eprintln!(
                    "{}: warning: server {:?} password.env: {var} is not set here; `mcrelay run` needs it",
                    path.display(),
                    s.name
                );
            }
            Some(_) => {
                if let Err(e) = site.password(s) {
                    eprintln!("error: {e}");
                    bad_password = true;
                }
            }
            None => {}
        }
    }
    // The site key, as `run` will read it.
    match &site.file.site.key {
        Some(mcrelay::config::PasswordSource::Env(var)) if std::env::var_os(var).is_none() => {
            eprintln!(
                "{}: warning: site key.env: {var} is not set here; `mcrelay run` needs it",
                path.display()
            );
        }
        _ => {
            if let Err(e) = site.site_key() {
                eprintln!("error: {e}");
                bad_password = true;
            }
        }
    }
    if bad_password {
        return Ok(ExitCode::FAILURE);
    }
    let mut channels = 0;
    for s in site.servers() {
        let role = if s.failover.use_as_failover_server {
            "failover server"
        } else {
            "recorder"
        };
        let mc = s
            .multicast
            .as_ref()
            .map_or("no multicast address".to_string(), |m| {
                if m.groups > 1 {
                    format!("groups {}+{} on {}", m.address, m.groups - 1, m.interface)
                } else {
                    format!("group {} on {}", m.address, m.interface)
                }
            });
        let protocol = match s.protocol {
            mcrelay::config::Protocol::Tcp => "tcp",
            mcrelay::config::Protocol::RtpMulticast => "rtp-multicast",
        };
        println!(
            "server {:?} ({role}, {protocol}, {mc}, control {})",
            s.name, s.control
        );
        if let Err(e) = site.password(s) {
            eprintln!("  warning: {e}");
        }
        for c in &s.channels {
            channels += 1;
            let dest = s
                .multicast
                .as_ref()
                .and_then(|m| {
                    let d = plan::destination(m, c.id).ok()?;
                    let mut line = format!("{} (RTCP {})", d.rtp(), d.rtcp().port());
                    // The camera's other tracks, when it has them.
                    for kind in [TrackKind::Audio, TrackKind::Metadata] {
                        if c.tracks.contains(&kind)
                            && !c.source.is_annexb()
                            && let Ok(t) = plan::track_destination(m, c.id, kind)
                        {
                            line.push_str(&format!(", {kind} {}", t.port));
                        }
                    }
                    Some(line)
                })
                .unwrap_or_else(|| "-".to_string());
            println!(
                "  channel {} -> {dest}  from {}",
                mcrelay::config::channel_label(c),
                c.source
            );
        }
    }
    println!(
        "{}: OK ({} servers, {channels} channels)",
        path.display(),
        site.servers().len()
    );
    Ok(ExitCode::SUCCESS)
}

fn sdp(path: &std::path::Path, server: &str, channel: u32) -> anyhow::Result<ExitCode> {
    let site = Site::load(path)?;
    let local = site
        .server(server)
        .with_context(|| format!("{}: no server named {server:?}", path.display()))?;
    let (owner, ch) = site
        .channel(channel)
        .with_context(|| format!("{}: no channel {channel}", path.display()))?;
    if owner.name != local.name && !local.failover.use_as_failover_server {
        anyhow::bail!(
            "channel {channel} belongs to server {:?}, not {server:?}",
            owner.name
        );
    }
    let spec = mcrelay::spec::ChannelSpec::new(owner, ch, local, SendMode::Gso)
        .map_err(anyhow::Error::msg)?;
    let emit = spec.multicast.with_context(|| {
        format!(
            "server {:?} uses protocol \"tcp\": channel {channel} has no multicast SDP",
            owner.name
        )
    })?;
    let codec = ch.codec.with_context(|| {
        format!(
            "channel {channel}'s codec is learned from the camera at run time: set `codec` in the site file, or fetch the live SDP from http://{}/channels/{channel}.sdp",
            local.control
        )
    })?;
    let info = mcrelay::media::params::VideoInfo::default();
    print!(
        "{}",
        mcrelay::control::sdp::channel_sdp(&mcrelay::control::sdp::ChannelDescription {
            channel_id: channel,
            name: &ch.name,
            origin: emit.interface,
            delivery: mcrelay::control::sdp::Delivery::Multicast(emit.dest),
            codec,
            params: &Default::default(),
            video: &info,
            version: 0,
            tracks: &[],
            sources: &mcrelay::config::plan::ssm_sources(site.servers(), owner),
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// A server's control API as a copy endpoint.
fn endpoint(site: &Site, name: &str) -> anyhow::Result<mcrelay::record::copy::Endpoint> {
    let server = site
        .server(name)
        .with_context(|| format!("{}: no server named {name:?}", site.path.display()))?;
    let password = site
        .password(server)?
        .with_context(|| format!("server {name:?} has no password: its material API is closed"))?;
    let user = server
        .rtsp
        .as_ref()
        .map_or_else(|| "admin".to_string(), |r| r.user.clone());
    Ok(mcrelay::record::copy::Endpoint {
        name: name.to_string(),
        addr: server.control,
        user,
        password,
    })
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn failback(site: &std::path::Path, server: &str) -> anyhow::Result<ExitCode> {
    let site = Site::load(site)?;
    let ep = endpoint(&site, server)?;
    let client = mcrelay::runtime::client::HttpClient::new();
    let (code, body) = current_thread()?.block_on(client.post_digest(
        ep.addr,
        "/failover/failback",
        &ep.user,
        &ep.password,
        Duration::from_secs(5),
    ))?;
    let answer = String::from_utf8_lossy(&body);
    if code == 202 {
        println!("{server}: {}", answer.trim());
        Ok(ExitCode::SUCCESS)
    } else {
        anyhow::bail!("{server} ({}): {code} {}", ep.addr, answer.trim())
    }
}

fn site_status(site: &std::path::Path) -> anyhow::Result<ExitCode> {
    let site = Site::load(site)?;
    let client = mcrelay::runtime::client::HttpClient::new();
    let rt = current_thread()?;
    for s in site.servers() {
        let Ok((200, body)) = rt.block_on(client.get(s.control, "/status", Duration::from_secs(2)))
        else {
            eprintln!("{} ({}): no answer", s.name, s.control);
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        println!("as {} sees it:", s.name);
        for (key, title) in [
            ("recorders", "VMS servers"),
            ("failover", "Failover servers"),
            ("broken", "Broken VMS servers"),
        ] {
            println!("  {title}");
            for r in v["site"][key].as_array().into_iter().flatten() {
                let mut line = format!(
                    "    {}: {}",
                    r["name"].as_str().unwrap_or("?"),
                    r["state"].as_str().unwrap_or("?")
                );
                if let Some(c) = r["cover"].as_str() {
                    line.push_str(&format!(" ({c})"));
                }
                println!("{line}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::bail!("no server of {} answered", site.path.display())
}

fn material_copy(
    site: &std::path::Path,
    from: &str,
    to: &str,
    channel: u32,
    since: &str,
    until: Option<&str>,
    max_segments: Option<usize>,
) -> anyhow::Result<()> {
    let site = Site::load(site)?;
    let time = |v: &str, what: &str| -> anyhow::Result<i64> {
        mcrelay::record::index::parse_rfc3339(v).map_err(|e| anyhow::anyhow!("--{what}: {e}"))
    };
    let from_ms = time(since, "since")?;
    let to_ms = match until {
        Some(u) => time(u, "until")?,
        None => mcrelay::record::now_ms(std::time::SystemTime::now()),
    };
    anyhow::ensure!(to_ms > from_ms, "--until is not after --since");
    let (src, dst) = (endpoint(&site, from)?, endpoint(&site, to)?);
    let client = mcrelay::runtime::client::HttpClient::new();
    let report = current_thread()?
        .block_on(mcrelay::record::copy::copy_missing(
            &client,
            &src,
            &dst,
            channel,
            from_ms,
            to_ms,
            max_segments,
            |e| println!("copied {} ({} bytes)", e.segment, e.bytes),
        ))
        .with_context(|| format!("copying channel {channel} from {from} to {to}"))?;
    println!(
        "channel {channel}: copied {} segments ({} bytes); skipped {} already present and {} covered by {to}'s own material ({} bytes); {} left for a later run",
        report.copied,
        report.copied_bytes,
        report.skipped_present,
        report.skipped_covered,
        report.skipped_bytes,
        report.remaining
    );
    for f in &report.failed {
        eprintln!("not copied: {}: {}", f.segment, f.error);
    }
    println!("{}", serde_json::to_string(&report)?);
    anyhow::ensure!(
        report.failed.is_empty(),
        "{} segment(s) could not be copied (listed above); run the copy again to retry them",
        report.failed.len()
    );
    Ok(())
}
