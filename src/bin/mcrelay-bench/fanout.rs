//! TCP fan-out cost: one camera, one channel, N workstations playing it over
//! RTSP with TCP interleaved. Reports the relay's CPU per delivered GB and
//! its memory per client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::measure;
use crate::netns::{Netns, Proc};

pub struct Options {
    pub clients: Vec<usize>,
    pub seconds: u64,
    pub clip: std::path::PathBuf,
    pub mcrelay: std::path::PathBuf,
}

pub struct Row {
    pub clients: usize,
    pub delivered_mbit: f64,
    pub cpu_seconds: f64,
    pub window: f64,
    pub cpu_per_gb: f64,
    pub rss: u64,
    pub rss_per_client: f64,
    pub skips: f64,
    pub stalls: f64,
}

fn http_get(path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect("127.0.0.1:8080")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads one RTSP response (headers and body).
fn response(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(b[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    anyhow_status(&head)?;
    Ok(head)
}

fn anyhow_status(head: &str) -> std::io::Result<()> {
    if head.starts_with("RTSP/1.0 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(
            head.lines().next().unwrap_or_default().to_string(),
        ))
    }
}

/// DESCRIBE, SETUP (TCP interleaved), PLAY.
fn play(s: &mut TcpStream) -> std::io::Result<()> {
    let url = "rtsp://127.0.0.1:8554/1";
    write!(s, "DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n")?;
    response(s)?;
    write!(
        s,
        "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    )?;
    let head = response(s)?;
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("Session:"))
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    write!(
        s,
        "PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n"
    )?;
    response(s)?;
    Ok(())
}

fn site(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("fanout.toml");
    std::fs::write(
        &p,
        r#"
[[server]]
name = "bench"
protocol = "tcp"
control = "127.0.0.1:8080"
[server.rtsp]
listen = "127.0.0.1:8554"
max_clients = 1000
max_clients_per_channel = 1000
[[server.channel]]
id = 1
source = "rtsp://127.0.0.1:9001/stream"
"#,
    )
    .expect("write the site file");
    p
}

pub fn run(opts: &Options, progress: &dyn Fn(&str)) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let ns = Netns::new("fanout")?;
    let mut cam = ns.command(&opts.mcrelay);
    cam.args(["camera", "--clip"])
        .arg(&opts.clip)
        .args(["--listen", "127.0.0.1:9001"]);
    let _camera = Proc::spawn(cam)?;
    let mut rel = ns.command(&opts.mcrelay);
    rel.args(["run", "--site"])
        .arg(site(dir.path()))
        .args(["--server", "bench"]);
    let relay = Proc::spawn(rel)?;
    let pid = relay.pid();

    // Wait until the camera streams (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = ns
            .spawn(|| http_get("/status"))
            .join()
            .expect("status thread")
            .unwrap_or_default();
        if st.contains("\"state\":\"streaming\"") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay did not start streaming within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let base_rss = measure::rss(pid);
    let mut rows = Vec::new();
    for &n in &opts.clients {
        progress(&format!("fan-out: {n} TCP clients, {} s", opts.seconds));
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..n)
            .map(|_| {
                let (stop, bytes) = (stop.clone(), bytes.clone());
                ns.spawn(move || -> std::io::Result<()> {
                    let mut s = TcpStream::connect("127.0.0.1:8554")?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    play(&mut s)?;
                    let mut buf = vec![0u8; 256 * 1024];
                    while !stop.load(Ordering::Relaxed) {
                        let k = s.read(&mut buf)?;
                        if k == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        bytes.fetch_add(k as u64, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        // Warm up: every client connected and past its GOP burst.
        std::thread::sleep(Duration::from_secs(3));
        let m0 = ns
            .spawn(|| http_get("/metrics"))
            .join()
            .expect("metrics thread")
            .unwrap_or_default();
        let b0 = bytes.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let cpu = measure::cpu_over(pid, Duration::from_secs(opts.seconds));
        let window = t0.elapsed().as_secs_f64();
        let b1 = bytes.load(Ordering::Relaxed);
        let rss = measure::rss(pid);
        let m1 = ns
            .spawn(|| http_get("/metrics"))
            .join()
            .expect("metrics thread")
            .unwrap_or_default();
        stop.store(true, Ordering::Relaxed);
        let failed = readers
            .into_iter()
            .map(|h| h.join())
            .filter(|r| !matches!(r, Ok(Ok(()))))
            .count();
        anyhow::ensure!(failed == 0, "{failed} of {n} clients failed");
        let delivered = (b1 - b0) as f64;
        let d = |name: &str| metric(&m1, name) - metric(&m0, name);
        rows.push(Row {
            clients: n,
            delivered_mbit: delivered * 8.0 / window / 1e6,
            cpu_seconds: cpu,
            window,
            cpu_per_gb: cpu / (delivered / 1e9),
            rss,
            rss_per_client: (rss.saturating_sub(base_rss)) as f64 / n as f64,
            skips: d("mcrelay_tcp_key_frame_skips_total"),
            stalls: d("mcrelay_tcp_stall_disconnects_total"),
        });
        // Let the relay see the clients go.
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(relay);
    Ok(rows)
}

pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| TCP clients | delivered Mbit/s | relay CPU (% of a core) | CPU-s per delivered GB | relay RSS MB | RSS per client KB | key-frame skips | stall drops |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.2} | {:.3} | {:.1} | {:.1} | {} | {} |\n",
            r.clients,
            r.delivered_mbit,
            100.0 * r.cpu_seconds / r.window,
            r.cpu_per_gb,
            r.rss as f64 / 1e6,
            r.rss_per_client / 1024.0,
            r.skips,
            r.stalls
        ));
    }
    s
}
