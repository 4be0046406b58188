//! The control API holds under abuse: half-sent headers are closed, a flood
//! from one host neither grows memory nor locks out other hosts, and idle
//! connections that would exhaust descriptors never make a disk "broken".

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Netns;

fn site(disk: &std::path::Path) -> String {
    format!(
        r#"
[[server]]
name = "rec"
password = "pw"
control = "127.0.0.1:8080"
[server.rtsp]
listen = "127.0.0.1:8554"
[server.storage]
disks = ["{}"]
segment = "2s"
[[server.channel]]
id = 1
source = "tcp://127.0.0.1:9001"
codec = "h264"
"#,
        disk.display()
    )
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a 408 or 431 before the close is fine
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn health(ns: &Netns) -> Option<u16> {
    ns.run(|| {
        common::http_get("127.0.0.1:8080", "/health")
            .ok()
            .map(|(c, _)| c)
    })
}

fn start(ns: &Netns, dir: &std::path::Path, nofile: Option<u32>) -> common::Proc {
    let disk = dir.join("disk1");
    std::fs::create_dir_all(&disk).unwrap();
    let site = common::write_site(dir, &site(&disk));
    let log = std::fs::File::create(dir.join("mcrelay-rec.log")).unwrap();
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = ns.command("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(common::mcrelay());
            c
        }
        None => ns.command(common::mcrelay()),
    };
    cmd.args(["run", "--site"])
        .arg(&site)
        .args(["--server", "rec"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    let mut p = common::Proc::spawn(cmd, "mcrelay run");
    common::wait_http(ns, "127.0.0.1:8080", &mut p, dir);
    p
}

#[test]
fn half_sent_headers_are_closed_and_a_flood_locks_out_nobody() {
    let ns = Netns::new("httpabuse");
    let dir = common::tempdir();
    let _cam = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    let relay = start(&ns, dir.path(), None);
    let pid = relay.pid();
    let rss_before = common::rss_kib(pid);

    // 20 connections that never finish their headers: closed by the
    // server within the header timeout (5 s), not held forever.
    let closed = ns.run(|| {
        let mut conns: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut s = common::connect_from("127.0.0.3", "127.0.0.1:8080").unwrap();
                s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .unwrap();
                s
            })
            .collect();
        let t0 = Instant::now();
        let mut n = 0;
        for s in &mut conns {
            if closed_within(s, Duration::from_secs(8).saturating_sub(t0.elapsed())) {
                n += 1;
            }
        }
        (n, t0.elapsed())
    });
    assert_eq!(
        closed.0, 20,
        "half-sent headers still held after {:?}",
        closed.1
    );

    // 300 connections from one host, each sending 288 KiB of header
    // bytes: most are refused at once, the rest cut at the header limit;
    // memory stays flat and another host is served all along.
    let flood = ns.spawn(|| {
        let junk = vec![b'a'; 288 * 1024];
        let mut conns = Vec::new();
        for _ in 0..300 {
            if let Ok(mut s) = common::connect_from("127.0.0.2", "127.0.0.1:8080") {
                let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = s.write_all(b"GET /health HTTP/1.1\r\nX-Junk: ");
                let _ = s.write_all(&junk);
                conns.push(s);
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        conns.len()
    });
    let mut answered = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        if health(&ns) == Some(200) {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let opened = flood.join().unwrap();
    let rss_after = common::rss_kib(pid);
    eprintln!(
        "flood: {opened} connections opened, /health answered {answered} times, RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        answered >= 20,
        "/health answered only {answered} times during the flood"
    );
    assert!(
        rss_after < rss_before + 20 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[test]
fn exhausting_descriptors_with_idle_connections_never_breaks_a_disk() {
    let ns = Netns::new("fdabuse");
    let dir = common::tempdir();
    let _cam = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    // 160 descriptors in all: before the connection caps were shared out
    // of them, idle connections took every one.
    let _relay = start(&ns, dir.path(), Some(160));
    let held = ns.spawn(|| {
        let mut conns = Vec::new();
        for i in 0..400u32 {
            let from = format!("127.0.{}.{}", 10 + i / 50, 2 + i % 50);
            let to = if i % 2 == 0 {
                "127.0.0.1:8080"
            } else {
                "127.0.0.1:8554"
            };
            if let Ok(s) = common::connect_from(&from, to) {
                conns.push(s);
            }
        }
        // Keep them through more than one disk check (every 5 s).
        std::thread::sleep(Duration::from_secs(7));
        conns.len()
    });
    let opened = held.join().unwrap();
    let health = common::wait_for(Duration::from_secs(10), || health(&ns));
    let v = common::get_json(&ns, "/status");
    let disks = &v["material"]["disks"];
    eprintln!("{opened} idle connections; /health {health:?}; disks {disks}");
    assert_eq!(health, Some(200), "{disks}");
    assert_eq!(disks[0]["status"], "ok", "{disks}");
    let log = std::fs::read_to_string(dir.path().join("mcrelay-rec.log")).unwrap_or_default();
    assert!(!log.contains("material disk broken"), "{log}");
}

/// `/status` without the password shows states and counts, never where
/// things are: no camera sources, client or camera addresses, disk paths or
/// errors. `/status?detail` shows them, with the password.
#[test]
fn public_status_names_no_addresses_sources_paths_or_errors() {
    let ns = Netns::new("pubstatus");
    let dir = common::tempdir();
    // No camera: the channel keeps failing, with an error naming its address.
    let _relay = start(&ns, dir.path(), None);
    std::thread::sleep(Duration::from_secs(2));
    let public = common::get_json(&ns, "/status").to_string();
    let disk = dir.path().join("disk1").display().to_string();
    for secret in [
        "127.0.0.1",
        "9001",
        "tcp://",
        &disk,
        "refused",
        "\"source\"",
        "\"path\"",
    ] {
        assert!(
            !public.contains(secret),
            "public /status shows {secret:?}: {public}"
        );
    }
    assert!(public.contains("\"segments\""), "{public}");
    // Detail needs the password.
    let (code, _) = ns
        .run(|| common::http_get("127.0.0.1:8080", "/status?detail"))
        .unwrap();
    assert_eq!(code, 401);
    let detail = common::status_detail(&ns, "pw").to_string();
    for shown in ["tcp://127.0.0.1:9001", &disk] {
        assert!(detail.contains(shown), "detail lacks {shown:?}: {detail}");
    }
}

/// A raw GET with a given Authorization header; the status.
fn get_with(addr: &str, path: &str, authorization: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {authorization}\r\n\r\n"
    )
    .unwrap();
    common::http::read_reply(&mut s).unwrap().status
}

/// The material API's Digest: a captured header cannot be replayed nor used
/// for another path, and an address that keeps failing is locked out.
#[test]
fn material_credentials_cannot_be_replayed_moved_or_guessed() {
    let ns = Netns::new("httpdigest");
    let dir = common::tempdir();
    let _relay = start(&ns, dir.path(), None);
    let (replay, moved, guesses, locked) = ns.run(|| {
        let addr = "127.0.0.1:8080";
        let path = "/channels/1/material";
        let h = common::http::authorization(addr, "GET", path, "admin", "pw");
        let first = get_with(addr, path, &h);
        let again = get_with(addr, path, &h);
        let h = common::http::authorization(addr, "GET", path, "admin", "pw");
        let moved = get_with(addr, "/channels/2/material", &h);
        // The replay and the moved header were failures too: 8 more make 10.
        let mut guesses = Vec::new();
        for i in 0..8 {
            let h = common::http::authorization(addr, "GET", path, "admin", &format!("guess{i}"));
            guesses.push(get_with(addr, path, &h));
        }
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let locked = common::http::read_reply(&mut s).unwrap().status;
        ((first, again), moved, guesses, locked)
    });
    assert_eq!(replay, (200, 401), "a replayed header was accepted");
    assert_eq!(moved, 401, "a header for channel 1 opened channel 2");
    assert!(guesses.iter().all(|s| *s == 401), "{guesses:?}");
    assert_eq!(locked, 429, "the guessing address is not locked out");
}
