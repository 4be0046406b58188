//! `mcrelay demo`: a self-contained site on loopback. Two simulated cameras
//! (the shipped H.264 and H.265 clips) stream to recorder-1 over TCP; it
//! emits each channel once on its multicast group on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::camera::{self, Clip};
use crate::config::{Site, Source};
use crate::runtime::{self, RunOptions};

pub const DEMO_SITE: &str = include_str!("../config/demo.toml");
pub const DEMO_SERVER: &str = "recorder-1";
/// Path of the simulated cameras' streams.
const CAMERA_PATH: &str = "stream";
const CLIP_H264: &[u8] = include_bytes!("../assets/clips/demo-h264.h264");
const CLIP_H265: &[u8] = include_bytes!("../assets/clips/demo-h265.h265");

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Control and RTSP addresses (the demo sets both).
    pub run: RunOptions,
    /// Record into two material disks under this directory (none: do not
    /// record).
    pub material: Option<PathBuf>,
}

/// The embedded demo site.
pub fn demo_site() -> anyhow::Result<Site> {
    Site::parse(DEMO_SITE, Path::new("config/demo.toml (embedded)"))
        .context("the embedded demo site is invalid")
}

pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut site = demo_site()?;
    let server = site
        .file
        .servers
        .iter_mut()
        .find(|s| s.name == DEMO_SERVER)
        .context("demo site has no recorder-1")?;
    match &opts.material {
        Some(dir) => {
            let mut dir = std::path::absolute(dir)
                .with_context(|| format!("material directory {}", dir.display()))?;
            // Another demo records there now: take a directory of our own.
            if crate::record::disk::in_use(&dir.join("disk1")) {
                let mut name = dir.file_name().unwrap_or_default().to_os_string();
                name.push(format!("-{}", std::process::id()));
                dir.set_file_name(name);
            }
            let disks: Vec<PathBuf> = ["disk1", "disk2"].iter().map(|d| dir.join(d)).collect();
            for d in &disks {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("cannot create material disk {}", d.display()))?;
            }
            server.storage.disks = disks;
            server.storage.record = true;
        }
        None => server.storage.record = false,
    }
    let material = server.storage.record.then(|| server.storage.disks.clone());
    // Where the demo's streams stand, beside its material (or in the
    // temporary directory), so that a restarted demo continues them.
    server.state_dir = Some(match &opts.material {
        Some(_) => server
            .storage
            .disks
            .first()
            .and_then(|d| d.parent())
            .map_or_else(std::env::temp_dir, Path::to_path_buf)
            .join("state"),
        None => std::env::temp_dir().join("mcrelay-demo-state"),
    });

    // Start the RTSP cameras on free loopback ports and point the channels
    // at them: the relay ingests RTSP over TCP, as a real site does.
    // The H.264 camera has sound (G.711, a beep each second) and ONVIF
    // metadata (a licence plate each second) too.
    for ((channel, data), audio) in server
        .channels
        .iter_mut()
        .zip([CLIP_H264, CLIP_H265])
        .zip([true, false])
    {
        let clip =
            Clip::parse(Bytes::from_static(data), channel.codec, None).context("embedded clip")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("camera listener")?;
        let addr = listener.local_addr()?;
        let url = format!("rtsp://{addr}/{CAMERA_PATH}");
        channel.source = url.parse::<Source>().map_err(anyhow::Error::msg)?;
        tracing::info!(channel = channel.id, camera = %url, codec = %clip.codec, "simulated RTSP camera streaming its clip");
        let cancel = shutdown.child_token();
        let tracks = camera::CameraTracks {
            audio,
            metadata: audio,
        };
        tokio::spawn(async move {
            if let Err(e) =
                camera::serve_rtsp(Arc::new(clip), listener, CAMERA_PATH, None, tracks, cancel)
                    .await
            {
                tracing::error!(error = %e, "simulated camera failed");
            }
        });
    }
    let channels: Vec<(u32, String, Option<String>)> = server
        .channels
        .iter()
        .map(|c| {
            let dest = server
                .multicast
                .as_ref()
                .and_then(|m| crate::config::plan::destination(m, c.id).ok())
                .map(|d| d.rtp().to_string());
            (c.id, c.name.clone(), dest)
        })
        .collect();

    let handle = runtime::start(&site, DEMO_SERVER, opts.run).await?;
    let base = format!("http://{}", handle.control_addr);
    println!(
        "mcrelay demo: {DEMO_SERVER} relays {} RTSP cameras, each sent once to multicast on 127.0.0.1 (lo)",
        channels.len()
    );
    for (id, name, dest) in &channels {
        println!();
        println!(
            "  channel {id} {name:?} -> {}",
            dest.as_deref().unwrap_or("-")
        );
        println!("    SDP:  {base}/channels/{id}.sdp");
        println!(
            "    play: ffplay -protocol_whitelist file,http,tcp,udp,rtp -i {base}/channels/{id}.sdp"
        );
        if let Some(rtsp) = handle.rtsp_addr {
            println!(
                "    RTSP: ffplay -rtsp_transport tcp rtsp://admin:demo@{rtsp}/{id}   (or -rtsp_transport udp_multicast)"
            );
        }
    }
    println!();
    match &material {
        Some(disks) => {
            let list: Vec<String> = disks.iter().map(|d| d.display().to_string()).collect();
            println!(
                "  recording: {} (segments of {}s; --no-record turns it off)",
                list.join(", "),
                site.server(DEMO_SERVER)
                    .map_or(0, |s| s.storage.segment.as_secs())
            );
            println!("    material: curl --digest -u admin:demo '{base}/channels/1/material'");
        }
        None => println!("  not recording (--no-record)"),
    }
    println!("  status: {base}/status   metrics: {base}/metrics   health: {base}/health");
    println!(
        "  A player joins the group on the interface its route names: run it where lo carries"
    );
    println!("  multicast, e.g. in a network namespace (README: \"Watching the demo\").");
    println!("  Ctrl-C stops.");
    handle.run_until(shutdown).await
}

pub const DEMO_FAILOVER_SITE: &str = include_str!("../config/demo-failover.toml");

/// `mcrelay demo --failover`.
#[derive(Clone, Debug)]
pub struct FailoverDemoOptions {
    /// Where the site file, the material and recorder-1's log go (a
    /// folder of this run inside).
    pub dir: PathBuf,
    pub send_mode: crate::emit::SendMode,
    /// Kill recorder-1 (kill -9) after this long; `None`: the operator does.
    pub break_after: Option<std::time::Duration>,
    /// Restart recorder-1 this long after the takeover (as an operator who
    /// repaired it would).
    pub restart_after: std::time::Duration,
    /// Stop once recorder-1 has its role back (for tests).
    pub exit_when_done: bool,
}

/// Where the failover demo stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Broken,
    Covered(std::time::Instant),
    Restarted,
    Done,
}

/// A takeover and a failback on one machine: two simulated cameras,
/// recorder-1 as a process of its own (so that `kill -9` breaks it for
/// real), failover-1 in this one; the site as failover-1 sees it is
/// printed at each change, and the figures at the end.
pub async fn run_failover(
    opts: FailoverDemoOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    let dir = opts.dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::path::absolute(&dir)?;
    let mut text = DEMO_FAILOVER_SITE.replace("/var/lib/mcrelay-demo", &dir.display().to_string());
    for (port, (data, codec, tracks)) in [8611, 8612].into_iter().zip([
        (CLIP_H264, crate::media::Codec::H264, true),
        (CLIP_H265, crate::media::Codec::H265, false),
    ]) {
        let clip =
            Clip::parse(Bytes::from_static(data), Some(codec), None).context("embedded clip")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("camera listener")?;
        let url = format!("rtsp://{}/{CAMERA_PATH}", listener.local_addr()?);
        text = text.replace(&format!("rtsp://127.0.0.1:{port}/{CAMERA_PATH}"), &url);
        let cancel = shutdown.child_token();
        let tracks = camera::CameraTracks {
            audio: tracks,
            metadata: tracks,
        };
        tokio::spawn(async move {
            if let Err(e) =
                camera::serve_rtsp(Arc::new(clip), listener, CAMERA_PATH, None, tracks, cancel)
                    .await
            {
                tracing::error!(error = %e, "simulated camera failed");
            }
        });
    }
    for s in ["recorder-1", "failover-1"] {
        std::fs::create_dir_all(dir.join(s).join("disk1"))?;
    }
    let site_path = dir.join("site.toml");
    std::fs::write(&site_path, &text)
        .with_context(|| format!("cannot write {}", site_path.display()))?;
    let site = Site::load(&site_path)?;

    let recorder_log = dir.join("recorder-1.log");
    let start_recorder = || -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&recorder_log)
            .with_context(|| format!("cannot open {}", recorder_log.display()))?;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        // SAFETY: prctl is async-signal-safe, and the closure touches
        // nothing else between fork and exec. recorder-1 dies with the demo
        // even when the demo is killed (kill_on_drop needs it to unwind).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.args(["run", "--site"])
            .arg(&site_path)
            .args(["--server", "recorder-1"])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start recorder-1")
    };
    let mut recorder = start_recorder()?;
    let standby = runtime::start(
        &site,
        "failover-1",
        RunOptions {
            send_mode: opts.send_mode,
            ..RunOptions::default()
        },
    )
    .await?;
    let (rec_api, fo_api) = (
        site.server("recorder-1").map(|s| s.control),
        site.server("failover-1").map(|s| s.control),
    );
    let (Some(rec_api), Some(fo_api)) = (rec_api, fo_api) else {
        anyhow::bail!("the failover demo site lacks recorder-1 or failover-1");
    };
    let standby_run = tokio::spawn(standby.run_until(shutdown.child_token()));

    let pid = recorder.id().unwrap_or_default();
    println!("mcrelay failover demo ({})", dir.display());
    println!(
        "  recorder-1 (pid {pid}) relays 2 cameras to 239.255.78.1 on 127.0.0.1 and records them;"
    );
    println!(
        "  failover-1 stands by on 127.0.0.2, polls recorder-1 every 500 ms and listens on its group."
    );
    println!();
    println!(
        "  watch:  the status page http://{fo_api}/ (failover-1's; recorder-1's: http://{rec_api}/)"
    );
    println!(
        "          a workstation: ffplay -protocol_whitelist file,http,tcp,udp,rtp -i http://{rec_api}/channels/1.sdp"
    );
    println!(
        "          (in a network namespace where lo carries multicast: README, \"Watching the demo\")"
    );
    match opts.break_after {
        Some(d) => println!(
            "  break:  the demo kills recorder-1 (kill -9) in {} s",
            d.as_secs()
        ),
        None => println!("  break:  kill -9 {pid}   (recorder-1; inaccessible_period is 3 s)"),
    }
    println!(
        "  then:   the demo starts recorder-1 again {} s after the takeover; after failback_delay (15 s)",
        opts.restart_after.as_secs()
    );
    println!(
        "          it copies back what failover-1 recorded and takes its role back. Ctrl-C stops."
    );
    println!();

    let client = runtime::client::HttpClient::new();
    let started = Instant::now();
    let mut phase = Phase::Running;
    let mut shown = String::new();
    let (mut killed, mut stopped_at, mut took) = (false, None, None);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if phase == Phase::Running
            && !killed
            && opts.break_after.is_some_and(|d| now - started >= d)
        {
            println!("{}  breaking recorder-1: kill -9 {pid}", clock());
            let _ = recorder.start_kill();
            killed = true;
        }
        if phase == Phase::Running
            && let Ok(Some(status)) = recorder.try_wait()
        {
            println!("{}  recorder-1 stopped ({status})", clock());
            phase = Phase::Broken;
            stopped_at = Some(now);
        }
        let Some(view) = site_view(&client, fo_api).await else {
            continue;
        };
        if view != shown {
            println!("{}  {view}", clock());
            shown = view.clone();
        }
        let covering = view.contains("failover-1: covering recorder-1");
        match phase {
            Phase::Broken if covering => {
                phase = Phase::Covered(now);
                took = stopped_at.map(|t| now - t);
            }
            Phase::Covered(at) if now - at >= opts.restart_after => {
                println!(
                    "{}  starting recorder-1 again, as an operator who repaired it would",
                    clock()
                );
                recorder = start_recorder()?;
                phase = Phase::Restarted;
            }
            Phase::Restarted
                if view.contains("failover-1: standby") && view.contains("recorder-1: ok") =>
            {
                phase = Phase::Done;
                print_figures(&client, rec_api, fo_api, took).await;
                if opts.exit_when_done {
                    break;
                }
            }
            _ => {}
        }
    }
    shutdown.cancel();
    let _ = recorder.start_kill();
    let _ = recorder.wait().await;
    let _ = standby_run.await;
    if opts.exit_when_done && phase != Phase::Done {
        anyhow::bail!("the failover demo stopped before recorder-1 had its role back");
    }
    Ok(())
}

fn clock() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .get(11..19)
        .unwrap_or_default()
        .to_string()
}

/// The site's three folders from `api`'s `/status`, on one line, without
/// the seconds that change each second.
async fn site_view(
    client: &runtime::client::HttpClient,
    api: std::net::SocketAddr,
) -> Option<String> {
    let (_, body) = client
        .get(api, "/status", std::time::Duration::from_secs(1))
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let folder = |key: &str, title: &str| {
        let servers: Vec<String> = v["site"][key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let state = s["state"].as_str().unwrap_or("?");
                let state = state.split(" for ").next().unwrap_or(state);
                match s["cover"].as_str() {
                    Some(c) => format!("{}: {state} ({c})", s["name"].as_str().unwrap_or("?")),
                    None => format!("{}: {state}", s["name"].as_str().unwrap_or("?")),
                }
            })
            .collect();
        format!(
            "{title}: {}",
            if servers.is_empty() {
                "-".to_string()
            } else {
                servers.join(", ")
            }
        )
    };
    Some(format!(
        "{} | {} | {}",
        folder("recorders", "VMS servers"),
        folder("failover", "Failover servers"),
        folder("broken", "Broken VMS servers")
    ))
}

/// The takeover and failback as the servers' metrics have them.
async fn print_figures(
    client: &runtime::client::HttpClient,
    rec_api: std::net::SocketAddr,
    fo_api: std::net::SocketAddr,
    took: Option<std::time::Duration>,
) {
    let metrics = |api| async move {
        client
            .get(api, "/metrics", std::time::Duration::from_secs(2))
            .await
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let value = |text: &str, series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // recorder-1 exports the gap once its first packet is out, a moment
    // after failover-1 says it stands by again.
    let mut rec = metrics(rec_api).await;
    for _ in 0..50 {
        if value(&rec, "mcrelay_failover_failback_gap_seconds") > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        rec = metrics(rec_api).await;
    }
    let fo = metrics(fo_api).await;
    println!();
    println!("  recorder-1 has its role back.");
    if let Some(t) = took {
        println!(
            "  takeover: failover-1 covering {:.1} s after recorder-1 stopped (as this demo saw it, polling every 250 ms)",
            t.as_secs_f64()
        );
    }
    println!(
        "            its first packet on recorder-1's group {:.3} s after it decided (after the 3 s inaccessible_period)",
        value(
            &fo,
            "mcrelay_failover_takeover_seconds{server=\"recorder-1\"}"
        )
    );
    println!(
        "  failback: {:.3} s from failover-1's last packet to recorder-1's first; {} segments ({} bytes) copied back first",
        value(&rec, "mcrelay_failover_failback_gap_seconds"),
        value(&rec, "mcrelay_failover_copied_segments_total"),
        value(&rec, "mcrelay_failover_copied_bytes_total")
    );
}
