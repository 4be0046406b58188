//! `mcrelay-bench`: what relaying costs, measured on this machine with
//! hosts the tool makes itself (network namespaces). Nothing leaves the
//! machine.

mod fanout;
mod measure;
mod netns;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mcrelay-bench", about = "Benchmarks for mcrelay (run as root)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One channel fanned out over RTSP/TCP to N workstations: relay CPU per
    /// delivered GB and memory per client.
    Fanout {
        /// Client counts to measure, in order.
        #[arg(long, value_delimiter = ',', default_value = "1,10,50,200")]
        clients: Vec<usize>,
        /// Measurement window per client count, seconds.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Camera bitrate (ffmpeg syntax).
        #[arg(long, default_value = "4M")]
        bitrate: String,
        /// Picture size.
        #[arg(long, default_value = "1920x1080")]
        size: String,
    },
}

/// The mcrelay binary next to this one.
fn mcrelay_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name("mcrelay");
    anyhow::ensure!(
        p.exists(),
        "{} not found: build it first (cargo build --release)",
        p.display()
    );
    Ok(p)
}

/// A 10 s H.264 test clip at `size` and `bitrate`, made once with ffmpeg and
/// kept in the system temp directory.
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Fanout {
            clients,
            seconds,
            bitrate,
            size,
        } => {
            let opts = fanout::Options {
                clients,
                seconds,
                clip: camera_clip(&size, &bitrate)?,
                mcrelay: mcrelay_binary()?,
            };
            let rows = fanout::run(&opts, &|m| eprintln!("{m}"))?;
            println!(
                "One {size} H.264 camera at {bitrate}bit/s, one channel, RTSP/TCP interleaved, {seconds} s per row.\n"
            );
            print!("{}", fanout::table(&rows));
        }
    }
    Ok(())
}
