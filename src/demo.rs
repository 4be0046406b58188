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
