//! Test hosts: network namespaces made by the tests themselves, so that
//! multicast and every listener stay on a loopback nobody else sees. Needs
//! root (CI runs as root); without it the tests fail with a clear message.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (Debian package iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace whose lo carries multicast; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "integration tests create network namespaces and need root: run scripts/test.sh as root"
        );
        let name = format!(
            "mcr-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up", "multicast", "on"]);
        ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
        ns
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full);
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Moves the calling thread into the namespace: sockets it creates from
    /// now on live there.
    pub fn enter(&self) {
        enter_ns(&self.name);
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter_ns(&name);
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }
}

impl Netns {
    /// Spawns a thread inside the namespace (fake cameras, receivers).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter_ns(&name);
            f()
        })
    }
}

fn enter_ns(name: &str) {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process killed (by its PID) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        Proc {
            child,
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGINT and waits up to `timeout`; returns the exit status.
    pub fn interrupt(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

/// The mcrelay binary under test.
pub fn mcrelay() -> &'static str {
    env!("CARGO_BIN_EXE_mcrelay")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn clip(name: &str) -> PathBuf {
    repo().join("assets/clips").join(name)
}

/// Joins `group:port` on the namespace's lo (call inside the namespace).
pub fn join(group: Ipv4Addr, port: u16) -> UdpSocket {
    join_on(group, port, Ipv4Addr::LOCALHOST)
}

/// Joins `group` on the interface of `iface` (shared with other receivers
/// of the port, such as ffmpeg).
pub fn join_on(group: Ipv4Addr, port: u16, iface: Ipv4Addr) -> UdpSocket {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddrV4::new(group, port).into()).unwrap();
    s.join_multicast_v4(&group, &iface).unwrap();
    let _ = s.set_recv_buffer_size(8 << 20);
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET over plain HTTP/1.0 from inside the calling thread's namespace.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Writes a site file into `dir` and returns its path.
pub fn write_site(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("site.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A material disk `disk` inside `dir`, created.
pub fn disk(dir: &Path) -> PathBuf {
    let d = dir.join("disk");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The MPEG-TS segments in a channel's folder, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("no segments in {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ts"))
        .collect();
    segs.sort();
    segs
}

/// Channel `channel`'s SDP from the control API on 127.0.0.1:8080 of `ns`,
/// once it contains `needle` (a track's m= line comes with the camera).
pub fn wait_sdp(ns: &Netns, channel: u32, needle: &str) -> String {
    let path = format!("/channels/{channel}.sdp");
    wait_for(Duration::from_secs(10), || {
        let path = path.clone();
        let (code, body) = ns.run(move || http_get("127.0.0.1:8080", &path)).ok()?;
        (code == 200 && body.contains(needle)).then_some(body)
    })
    .unwrap_or_else(|| panic!("the SDP of channel {channel} never had {needle:?}"))
}

/// A temporary directory for a test's files (site file, logs).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mcrelay-test-")
        .tempdir()
        .unwrap()
}

/// Starts `mcrelay run` in `ns` and waits until its control API answers.
pub fn start_mcrelay(ns: &Netns, dir: &Path, site: &Path, server: &str) -> Proc {
    let log = std::fs::File::create(dir.join(format!("mcrelay-{server}.log"))).unwrap();
    let mut cmd = ns.command(mcrelay());
    cmd.args(["run", "--site"])
        .arg(site)
        .args(["--server", server])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    let mut p = Proc::spawn(cmd, "mcrelay run");
    wait_http(ns, "127.0.0.1:8080", &mut p, dir);
    p
}

/// Waits until GET /health answers in `ns`, failing with the log if the
/// process died first.
pub fn wait_http(ns: &Netns, addr: &str, p: &mut Proc, dir: &Path) {
    let addr = addr.to_string();
    let ok = wait_for(Duration::from_secs(20), || {
        if !p.is_running() {
            return Some(false);
        }
        let a = addr.clone();
        ns.run(move || http_get(&a, "/health").ok()).map(|_| true)
    });
    if ok != Some(true) {
        let logs = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| {
                format!(
                    "{}:\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        panic!("{} did not come up on {addr}:\n{logs}", p.what);
    }
}

/// Starts `mcrelay camera` serving `clip` as raw Annex-B on `listen` in `ns`.
pub fn start_camera(ns: &Netns, clip_name: &str, listen: &str) -> Proc {
    let mut cmd = ns.command(mcrelay());
    cmd.args(["camera", "--format", "annexb", "--clip"])
        .arg(clip(clip_name))
        .args(["--listen", listen])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc::spawn(cmd, "mcrelay camera")
}

/// GET `path` from the control API at 127.0.0.1:8080 in `ns`, as JSON.
pub fn get_json(ns: &Netns, path: &str) -> serde_json::Value {
    let path = path.to_string();
    let (code, body) = ns
        .run(move || http_get("127.0.0.1:8080", &path))
        .expect("control API");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// An ffmpeg decode started in the background. It writes a line per
/// decoded frame (`framecrc`, flushed at each) and its messages to one
/// file, in the order they happen: what it said before its first picture
/// can be told from what it said after.
pub struct Decoder {
    proc: Proc,
    out: PathBuf,
}

/// What ffmpeg wrote to a file of its framecrc lines and its messages
/// together ([`Decoder`]).
pub struct FfmpegLog {
    /// Frames of output stream 0 (the pictures, which ffmpeg maps first).
    pub frames: u64,
    /// Messages before its first picture: a viewer that joins a multicast
    /// group in the middle of a GOP gets them for the pictures before its
    /// first key frame, which it drops (ffmpeg 5.1 says "Missing reference
    /// picture" and "decode_slice_header error" when the first picture it
    /// gets is the one right after a key frame: no gap in frame numbers
    /// tells it a reference is missing). Nobody sends the group for one
    /// viewer, so no sender can avoid them.
    pub before_first_picture: Vec<String>,
    /// Messages from its first picture on.
    pub after_first_picture: Vec<String>,
}

impl FfmpegLog {
    pub fn parse(text: &str) -> FfmpegLog {
        let mut log = FfmpegLog {
            frames: 0,
            before_first_picture: Vec::new(),
            after_first_picture: Vec::new(),
        };
        for l in text.lines() {
            let l = l.trim_end();
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            // "0,          9,          9,        1,   345600, 0x8c8b1bc8"
            let fields: Vec<&str> = l.split(',').map(str::trim).collect();
            if fields.len() >= 5 && fields[..5].iter().all(|f| f.parse::<i64>().is_ok()) {
                log.frames += u64::from(fields[0] == "0");
                continue;
            }
            if log.frames == 0 {
                log.before_first_picture.push(l.to_string());
            } else {
                log.after_first_picture.push(l.to_string());
            }
        }
        log
    }

    /// Every message, before and after the first picture.
    pub fn messages(&self) -> Vec<String> {
        [
            &self.before_first_picture[..],
            &self.after_first_picture[..],
        ]
        .concat()
    }
}

impl Decoder {
    /// `ffmpeg -v error [pre_input] -i INPUT -t SECONDS -f framecrc -` in `ns`.
    pub fn start(
        ns: &Netns,
        dir: &Path,
        tag: &str,
        pre_input: &[&str],
        input: &str,
        seconds: u32,
    ) -> Decoder {
        Self::start_with(ns, dir, tag, pre_input, input, &[], seconds)
    }

    /// [`Decoder::start`] with options after the input (`-map 0:v`).
    pub fn start_with(
        ns: &Netns,
        dir: &Path,
        tag: &str,
        pre_input: &[&str],
        input: &str,
        after_input: &[&str],
        seconds: u32,
    ) -> Decoder {
        let out = dir.join(format!("ffmpeg-{tag}.log"));
        let file = std::fs::File::create(&out).unwrap();
        let mut cmd = ns.command("ffmpeg");
        cmd.args(["-hide_banner", "-nostdin", "-v", "error"])
            .args(pre_input)
            .args(["-i", input])
            // Each decoded picture once, as the null muxer had it.
            .args(["-fps_mode", "passthrough"])
            .args(after_input)
            .args(["-t", &seconds.to_string()])
            .args(["-f", "framecrc", "-flush_packets", "1", "-"])
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        Decoder {
            proc: Proc::spawn(cmd, "ffmpeg"),
            out,
        }
    }

    fn log(&self) -> FfmpegLog {
        FfmpegLog::parse(&std::fs::read_to_string(&self.out).unwrap_or_default())
    }

    /// Frames decoded by now.
    pub fn frames_so_far(&self) -> u64 {
        self.log().frames
    }

    /// Waits (at most `timeout`) and returns frames decoded and every
    /// message, before its first picture too: for a viewer that starts at
    /// a key frame (RTSP over TCP, or joined before the stream started).
    pub fn finish(self, timeout: Duration) -> (u64, Vec<String>) {
        let log = self.finish_log(timeout);
        (log.frames, log.messages())
    }

    /// Waits (at most `timeout`) and returns frames decoded and the
    /// messages from the first picture on, for a viewer that joined a
    /// multicast group in the middle of a GOP (what it said before is
    /// printed: see [`FfmpegLog::before_first_picture`]).
    pub fn finish_joined_mid_gop(self, timeout: Duration) -> (u64, Vec<String>) {
        let log = self.finish_log(timeout);
        if !log.before_first_picture.is_empty() {
            eprintln!(
                "ffmpeg joined mid-GOP and said before its first picture: {:?}",
                log.before_first_picture
            );
        }
        (log.frames, log.after_first_picture)
    }

    fn finish_log(mut self, timeout: Duration) -> FfmpegLog {
        let deadline = Instant::now() + timeout;
        while self.proc.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.proc.kill();
        self.log()
    }
}

/// Starts GStreamer's RTSP server (tests/support/gst_rtsp_camera.py) in `ns`
/// on 127.0.0.1:`port`/`path`, and waits until it listens.
pub fn start_gst_camera(
    ns: &Netns,
    port: u16,
    path: &str,
    codec: &str,
    auth: Option<(&str, &str)>,
) -> Proc {
    use std::io::BufRead;
    let mut cmd = ns.command("/usr/bin/python3");
    cmd.arg(repo().join("tests/support/gst_rtsp_camera.py"))
        .args([port.to_string().as_str(), path, codec]);
    if let Some((u, p)) = auth {
        cmd.args([u, p]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut p = Proc::spawn(cmd, "GStreamer RTSP camera");
    let out = p.child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("GStreamer camera did not start (Debian packages gstreamer1.0-rtsp, gir1.2-gst-rtsp-server-1.0, python3-gi, gstreamer1.0-plugins-ugly/bad)");
    assert_eq!(line.trim(), "ready", "GStreamer camera: {line}");
    p
}

/// Polls /status until channel `id`'s camera is in `state`.
pub fn wait_camera_state(ns: &Netns, id: u64, state: &str, timeout: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let found = wait_for(timeout, || {
        let st = get_json(ns, "/status");
        let ch = st["channels"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == id)?
            .clone();
        last = ch.clone();
        (ch["camera"]["state"] == state).then_some(ch)
    });
    found.unwrap_or_else(|| panic!("channel {id} never reached state {state}; last status: {last}"))
}

pub mod browser;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod http;
pub mod lan;
pub mod rtsp;
pub mod slowfs;

/// Starts `mcrelay camera` serving `clip` over RTSP at rtsp://LISTEN/stream.
pub fn start_rtsp_camera(ns: &Netns, clip: &Path, listen: &str) -> Proc {
    let mut cmd = ns.command(mcrelay());
    cmd.args(["camera", "--clip"])
        .arg(clip)
        .args(["--listen", listen])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc::spawn(cmd, "mcrelay camera (RTSP)")
}

/// Encodes a test clip with Debian's ffmpeg: H.264, 25 fps, 1 s GOP.
pub fn make_clip(dir: &Path, size: &str, bitrate: &str, seconds: u32) -> PathBuf {
    let out = dir.join(format!("clip-{size}-{bitrate}.h264"));
    mcrelay::camera::encode_test_clip(&out, size, bitrate, seconds).expect("encode a test clip");
    out
}

/// [`make_clip`] with a key frame every `gop` frames.
pub fn make_clip_with_gop(
    dir: &Path,
    size: &str,
    bitrate: &str,
    seconds: u32,
    gop: u32,
) -> PathBuf {
    let out = dir.join(format!("clip-{size}-{bitrate}-g{gop}.h264"));
    mcrelay::camera::encode_test_clip_with_gop(&out, size, bitrate, seconds, gop)
        .expect("encode a test clip");
    out
}

/// GStreamer's RTSP client over TCP (`rtspsrc protocols=tcp ! decodebin !
/// fakesink`), started in the background with its warnings logged
/// (`GST_DEBUG=*:2`) and every decoded frame printed (`fakesink
/// silent=false`, `-v`).
pub struct GstClient {
    proc: Proc,
    out: PathBuf,
    err: PathBuf,
}

/// What a [`GstClient`] saw.
#[derive(Debug)]
pub struct GstReport {
    /// Presentation timestamps of the decoded frames, in order, ns.
    pub pts: Vec<u64>,
    /// Warning lines (GST_DEBUG level 2).
    pub warnings: Vec<String>,
    /// Lines saying the decoder saw a timestamp go backwards.
    pub decreasing: usize,
}

impl GstClient {
    pub fn start(ns: &Netns, dir: &Path, tag: &str, url: &str, creds: (&str, &str)) -> GstClient {
        let out = dir.join(format!("gst-{tag}.out"));
        let err = dir.join(format!("gst-{tag}.err"));
        let mut cmd = ns.command("gst-launch-1.0");
        cmd.env("GST_DEBUG", "*:2")
            .env("GST_DEBUG_NO_COLOR", "1")
            .args(["-v", "rtspsrc"])
            .arg(format!("location={url}"))
            .args(["protocols=tcp"])
            .arg(format!("user-id={}", creds.0))
            .arg(format!("user-pw={}", creds.1))
            .args(["!", "decodebin", "!", "fakesink", "silent=false"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        GstClient {
            proc: Proc::spawn(cmd, "gst-launch-1.0 (Debian package gstreamer1.0-tools)"),
            out,
            err,
        }
    }

    /// Lets it play for `secs`, stops it and reads what it printed.
    pub fn finish(mut self, secs: u64) -> GstReport {
        std::thread::sleep(Duration::from_secs(secs));
        assert!(
            self.proc.is_running(),
            "gst-launch-1.0 exited early:\n{}",
            std::fs::read_to_string(&self.err).unwrap_or_default()
        );
        if self.proc.interrupt(Duration::from_secs(5)).is_none() {
            self.proc.kill();
        }
        let stdout = std::fs::read_to_string(&self.out).unwrap_or_default();
        // "... chain   ******* (fakesink0:sink) (345600 bytes, dts: none, pts: 0:00:01.040000000, ..."
        let pts = stdout
            .lines()
            .filter(|l| l.contains("(fakesink0:sink)") && l.contains("chain"))
            .filter_map(|l| {
                l.split("pts: ")
                    .nth(1)?
                    .split(',')
                    .next()
                    .and_then(parse_gst_time)
            })
            .collect();
        let stderr = std::fs::read_to_string(&self.err).unwrap_or_default();
        let warnings: Vec<String> = stdout
            .lines()
            .chain(stderr.lines())
            .filter(|l| l.contains("WARN"))
            .map(str::to_string)
            .collect();
        let decreasing = stdout
            .lines()
            .chain(stderr.lines())
            .filter(|l| l.contains("decreasing timestamp"))
            .count();
        GstReport {
            pts,
            warnings,
            decreasing,
        }
    }
}

/// `H:MM:SS.nnnnnnnnn` (GST_TIME_FORMAT) in ns.
fn parse_gst_time(s: &str) -> Option<u64> {
    let mut it = s.trim().split(':');
    let h: u64 = it.next()?.parse().ok()?;
    let m: u64 = it.next()?.parse().ok()?;
    let (sec, frac) = it.next()?.split_once('.')?;
    let sec: u64 = sec.parse().ok()?;
    let frac: u64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    Some(((h * 60 + m) * 60 + sec) * 1_000_000_000 + frac)
}

/// A log file's text without ANSI colour codes.
pub fn plain_log(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sums a metric's samples from /metrics text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l.as_bytes().get(name.len()) == Some(&b'{')
                    || l.as_bytes().get(name.len()) == Some(&b' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `GET /status?detail` from the control API at 127.0.0.1:8080 in `ns`,
/// with the server password (Digest).
pub fn status_detail(ns: &Netns, password: &str) -> serde_json::Value {
    status_detail_at(ns, "127.0.0.1:8080", password)
}

pub fn status_detail_at(ns: &Netns, addr: &str, password: &str) -> serde_json::Value {
    let (addr, password) = (addr.to_string(), password.to_string());
    let r = ns.run(move || {
        http::request(
            &addr,
            "GET",
            "/status?detail",
            &[],
            b"",
            ("admin", &password),
        )
    });
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// A TCP connection to `to` from the local address `from` (any 127/8
/// address works on lo): a second host on one namespace's loopback.
pub fn connect_from(from: &str, to: &str) -> std::io::Result<std::net::TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(
        &format!("{from}:0")
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )?;
    s.connect_timeout(
        &to.parse::<std::net::SocketAddr>().unwrap().into(),
        Duration::from_secs(2),
    )?;
    Ok(s.into())
}

/// Starts `mcrelay run --site SITE --server SERVER` in `ns`, in a mount
/// namespace of its own where each of `disks` is a tmpfs of `size_mb`
/// (disks that fill up or go away without touching the machine's), and
/// waits until its control API answers.
pub fn start_mcrelay_on_tmpfs(
    ns: &Netns,
    dir: &Path,
    site: &Path,
    server: &str,
    disks: &[&Path],
    size_mb: u32,
) -> Proc {
    let mut script = String::new();
    for (i, d) in disks.iter().enumerate() {
        script.push_str(&format!(
            "mount -t tmpfs -o size={size_mb}m mcrelay-d{i} {} && ",
            d.display()
        ));
    }
    script.push_str(&format!(
        "exec {} run --site {} --server {server}",
        mcrelay(),
        site.display()
    ));
    let log = std::fs::File::create(dir.join(format!("mcrelay-{server}.log"))).unwrap();
    let mut cmd = ns.command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    let mut p = Proc::spawn(cmd, "mcrelay run (own mounts)");
    wait_http(ns, "127.0.0.1:8080", &mut p, dir);
    p
}

/// One RTP packet as a receiver saw it.
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    pub from: Ipv4Addr,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub at: Instant,
}

/// A receiver in a namespace that logs every RTP packet on a group's port:
/// the independent witness of who sends what.
pub struct PacketLog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Packet>>,
}

impl PacketLog {
    /// Joins `group:port` on the interface of `iface` in `ns`.
    pub fn start(ns: &Netns, group: Ipv4Addr, port: u16, iface: Ipv4Addr) -> PacketLog {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_rx = stop.clone();
        let thread = ns.spawn(move || {
            let sock = join_on(group, port, iface);
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop_rx.load(Ordering::Relaxed) {
                if let Ok((n, std::net::SocketAddr::V4(from))) = sock.recv_from(&mut buf)
                    && n >= 12
                {
                    got.push(Packet {
                        from: *from.ip(),
                        seq: u16::from_be_bytes([buf[2], buf[3]]),
                        ts: u32::from_be_bytes(buf[4..8].try_into().unwrap()),
                        ssrc: u32::from_be_bytes(buf[8..12].try_into().unwrap()),
                        at: Instant::now(),
                    });
                }
            }
            got
        });
        PacketLog { stop, thread }
    }

    pub fn finish(self) -> Vec<Packet> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("packet log")
    }
}
