//! The recorder: segments on two material disks that ffprobe decodes with
//! the duration the index states; the material API behind the server
//! password; an index that survives a restart and a kill -9.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::Netns;

fn site(disks: &Path) -> String {
    format!(
        r#"
[[server]]
name = "rec-1"
password = "s3cret"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.40.1"
port = 7000
interface = "127.0.0.1"
ttl = 1
[server.storage]
disks = ["{d}/disk1", "{d}/disk2"]
segment = "3s"
[[server.channel]]
id = 1
source = "tcp://127.0.0.1:9001"
codec = "h264"
[[server.channel]]
id = 2
source = "tcp://127.0.0.1:9002"
codec = "h265"
"#,
        d = disks.display()
    )
}

/// curl in `ns` with the server password (Digest); (status, body).
fn curl(ns: &Netns, path: &str, user_pw: Option<&str>, out: Option<&Path>) -> (u16, Vec<u8>) {
    let mut cmd = ns.command("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    if let Some(up) = user_pw {
        cmd.args(["--digest", "-u", up]);
    }
    if let Some(o) = out {
        cmd.arg("-o").arg(o);
    }
    cmd.arg(format!("http://127.0.0.1:8080{path}"));
    let o = cmd.stderr(Stdio::inherit()).output().expect("curl");
    let text = o.stdout;
    let nl = text.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&text[nl + 1..])
        .trim()
        .parse()
        .unwrap_or(0);
    (code, text[..nl].to_vec())
}

fn material(ns: &Netns, channel: u32) -> serde_json::Value {
    let (code, body) = curl(
        ns,
        &format!("/channels/{channel}/material"),
        Some("admin:s3cret"),
        None,
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn segments(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["segments"].as_array().cloned().unwrap_or_default()
}

/// The segment's file on whichever disk holds it.
fn find(disks: &Path, channel: u32, name: &str) -> PathBuf {
    ["disk1", "disk2"]
        .iter()
        .map(|d| {
            disks
                .join(d)
                .join("mcrelay")
                .join(format!("ch{channel}"))
                .join(name)
        })
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("segment {name} on no disk"))
}

/// ffprobe's duration and decoded frame count of a file, with any errors.
fn probe(path: &Path) -> (f64, u64, String) {
    let o = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "format=duration:stream=nb_read_frames"])
        .args(["-of", "default=nw=1"])
        .arg(path)
        .output()
        .expect("ffprobe");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    (
        get("duration="),
        get("nb_read_frames=") as u64,
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn start(ns: &Netns, dir: &Path) -> common::Proc {
    let site = common::write_site(dir, &site(dir));
    common::start_mcrelay(ns, dir, &site, "rec-1")
}

#[test]
fn segments_decode_with_the_indexed_duration_and_need_the_password() {
    let ns = Netns::new("record");
    let dir = common::tempdir();
    for d in ["disk1", "disk2"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let _cam1 = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    let _cam2 = common::start_camera(&ns, "camera-h265.h265", "127.0.0.1:9002");
    let _relay = start(&ns, dir.path());

    // Three complete segments per channel (3 s each, staggered first).
    for ch in [1, 2] {
        let got = common::wait_for(Duration::from_secs(30), || {
            let v = material(&ns, ch);
            (segments(&v).len() >= 3).then_some(v)
        });
        assert!(got.is_some(), "channel {ch}: {}", material(&ns, ch));
    }
    let mut used_disks = std::collections::HashSet::new();
    for ch in [1u32, 2] {
        let v = material(&ns, ch);
        let segs = segments(&v);
        for s in &segs {
            let name = s["segment"].as_str().unwrap();
            let path = find(dir.path(), ch, name);
            used_disks.insert(path.parent().unwrap().parent().unwrap().to_path_buf());
            let (duration, frames, errors) = probe(&path);
            let indexed = s["duration_seconds"].as_f64().unwrap();
            assert!(
                (duration - indexed).abs() <= 0.040 + 1e-6,
                "channel {ch} {name}: ffprobe says {duration} s, the index {indexed} s"
            );
            assert!(errors.trim().is_empty(), "{name}: {errors}");
            assert_eq!(frames, (indexed * 25.0).round() as u64, "{name}");
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                s["bytes"].as_u64().unwrap()
            );
        }
        // Consecutive segments leave no gap.
        for w in segs.windows(2) {
            assert_eq!(w[0]["end_ms"], w[1]["start_ms"], "{w:?}");
        }
        // Download one through the API: the same bytes.
        let name = segs[0]["segment"].as_str().unwrap();
        let out = dir.path().join("download.ts");
        let (code, _) = curl(
            &ns,
            &format!("/channels/{ch}/material/{name}"),
            Some("admin:s3cret"),
            Some(&out),
        );
        assert_eq!(code, 200);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(find(dir.path(), ch, name)).unwrap()
        );
    }
    assert_eq!(used_disks.len(), 2, "segments spread over both disks");
    // Healthy disks lose nothing.
    let (_, metrics) = ns
        .run(|| common::http_get("127.0.0.1:8080", "/metrics"))
        .unwrap();
    assert_eq!(
        common::metric(&metrics, "mcrelay_record_dropped_frames_total"),
        0.0,
        "frames dropped on healthy disks"
    );
    assert!(common::metric(&metrics, "mcrelay_recorded_frames_total") > 0.0);

    // Without or with the wrong password: 401. Names that try to leave the
    // disk: 400 or 404, never a file.
    assert_eq!(curl(&ns, "/channels/1/material", None, None).0, 401);
    assert_eq!(
        curl(&ns, "/channels/1/material", Some("admin:wrong"), None).0,
        401
    );
    for bad in [
        "/channels/1/material/..%2F..%2F..%2Fetc%2Fpasswd",
        "/channels/1/material/1-rec-1.ts%2F..%2Findex.jsonl",
        "/channels/1/material/index.jsonl",
        "/channels/1/material/1-rec-1.ts",
    ] {
        let (code, body) = curl(&ns, bad, Some("admin:s3cret"), None);
        assert!(
            code == 400 || code == 404,
            "{bad}: {code} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (code, body) = curl(
        &ns,
        "/channels/1/material?from=yesterday",
        Some("admin:s3cret"),
        None,
    );
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    // The largest channel id a URL can name lists nothing (and does not
    // crash the server).
    let (code, body) = curl(
        &ns,
        "/channels/4294967295/material",
        Some("admin:s3cret"),
        None,
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("\"segments\":[]"));

    // A second process configured with the same disks must not write them.
    let site_path = dir.path().join("site.toml");
    let log = std::fs::File::create(dir.path().join("mcrelay-second.log")).unwrap();
    let mut cmd = ns.command(common::mcrelay());
    cmd.args(["run", "--site"])
        .arg(&site_path)
        .args(["--server", "rec-1", "--control", "127.0.0.1:8090"])
        .stdout(Stdio::null())
        .stderr(log);
    let mut second = common::Proc::spawn(cmd, "second mcrelay on the same disks");
    common::wait_http(&ns, "127.0.0.1:8090", &mut second, dir.path());
    let body = common::status_detail_at(&ns, "127.0.0.1:8090", "s3cret").to_string();
    assert!(body.contains("in use by another mcrelay process"), "{body}");
    let (code, _) = ns
        .run(|| common::http_get("127.0.0.1:8090", "/health"))
        .unwrap();
    assert_eq!(code, 503);
}

#[test]
fn the_index_survives_a_restart_and_a_kill_9() {
    let ns = Netns::new("recidx");
    let dir = common::tempdir();
    for d in ["disk1", "disk2"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let _cam1 = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    let _cam2 = common::start_camera(&ns, "camera-h265.h265", "127.0.0.1:9002");

    // A clean stop finishes the segment in progress.
    let mut relay = start(&ns, dir.path());
    let before = common::wait_for(Duration::from_secs(30), || {
        let s = segments(&material(&ns, 1));
        (s.len() >= 2).then_some(s)
    })
    .expect("two segments");
    assert!(relay.interrupt(Duration::from_secs(10)).is_some());
    let mut relay = start(&ns, dir.path());
    let after_stop = segments(&material(&ns, 1));
    for s in &before {
        assert!(after_stop.contains(s), "{s} lost by a restart");
    }
    assert!(
        after_stop.len() > before.len(),
        "the segment in progress at the stop was not finished"
    );

    // kill -9 in the middle of a segment: what was listed stays listed,
    // the segment in progress is gone, nothing half-written is listed.
    std::thread::sleep(Duration::from_millis(4500));
    let listed = segments(&material(&ns, 1));
    relay.kill();
    let parts: Vec<PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(!parts.is_empty(), "no segment was in progress at the kill");
    let _relay = start(&ns, dir.path());
    let after_kill = segments(&material(&ns, 1));
    for s in &listed {
        assert!(after_kill.contains(s), "{s} lost by kill -9");
    }
    let left: Vec<&PathBuf> = parts.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "half-written segments left: {left:?}");
    for s in &after_kill {
        let name = s["segment"].as_str().unwrap();
        let (duration, _, errors) = probe(&find(dir.path(), 1, name));
        assert!(
            duration > 0.0 && errors.trim().is_empty(),
            "{name}: {errors}"
        );
    }
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

const TWO_SERVERS: &str = r#"
[[server]]
name = "rec-1"
password = "one"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
[server.multicast]
address = "239.255.41.1"
port = 7000
interface = "127.0.0.1"
ttl = 1
[server.storage]
disks = ["DIR/a1", "DIR/a2"]
segment = "2s"
[[server.channel]]
id = 1
source = "tcp://127.0.0.1:9001"
codec = "h264"

[[server]]
name = "rec-2"
password = "two"
control = "127.0.0.1:8081"
[server.storage]
disks = ["DIR/b1"]
segment = "2s"
"#;

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
        .to_string()
}

/// Runs `mcrelay material copy` and returns its JSON report.
fn copy(ns: &Netns, site: &Path, since: i64, until: i64, max: Option<usize>) -> serde_json::Value {
    let (ok, report, out) = copy_run(ns, site, since, until, max);
    assert!(ok, "copy failed: {out}");
    report
}

/// Runs `mcrelay material copy`: (exit success, JSON report, all output).
fn copy_run(
    ns: &Netns,
    site: &Path,
    since: i64,
    until: i64,
    max: Option<usize>,
) -> (bool, serde_json::Value, String) {
    let mut cmd = ns.command(common::mcrelay());
    cmd.args(["material", "copy", "--site"])
        .arg(site)
        .args(["--from", "rec-1", "--to", "rec-2", "--channel", "1"])
        .args(["--since", &rfc3339(since), "--until", &rfc3339(until)]);
    if let Some(m) = max {
        cmd.args(["--max-segments", &m.to_string()]);
    }
    let o = cmd.output().expect("mcrelay material copy");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let all = format!("{out}{}", String::from_utf8_lossy(&o.stderr));
    let report = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (o.status.success(), report, all)
}

fn inventory(ns: &Netns, port: u16, user_pw: &str) -> Vec<serde_json::Value> {
    let mut cmd = ns.command("curl");
    cmd.args(["-sS", "--digest", "-u", user_pw]).arg(format!(
        "http://127.0.0.1:{port}/channels/1/material?from=2000-01-01T00:00:00Z"
    ));
    let o = cmd.output().expect("curl");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    segments(&v)
}

#[test]
fn copy_moves_only_missing_segments_and_resumes() {
    let ns = Netns::new("reccopy");
    let dir = common::tempdir();
    for d in ["a1", "a2", "b1"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let text = TWO_SERVERS.replace("DIR", &dir.path().display().to_string());
    let site = common::write_site(dir.path(), &text);
    let _cam = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    let _one = common::start_mcrelay(&ns, dir.path(), &site, "rec-1");
    let mut two = {
        let log = std::fs::File::create(dir.path().join("mcrelay-rec-2.log")).unwrap();
        let mut cmd = ns.command(common::mcrelay());
        cmd.args(["run", "--site"])
            .arg(&site)
            .args(["--server", "rec-2"])
            .stdout(Stdio::null())
            .stderr(log);
        common::Proc::spawn(cmd, "mcrelay run rec-2")
    };
    common::wait_http(&ns, "127.0.0.1:8081", &mut two, dir.path());

    let src = common::wait_for(Duration::from_secs(40), || {
        let s = inventory(&ns, 8080, "admin:one");
        (s.len() >= 6).then_some(s)
    })
    .expect("six segments on rec-1");
    let ms = |s: &serde_json::Value, k: &str| s[k].as_i64().unwrap();
    let bytes = |segs: &[serde_json::Value]| -> u64 {
        segs.iter().map(|s| s["bytes"].as_u64().unwrap()).sum()
    };
    let start = ms(&src[0], "start_ms");

    // The first three.
    let r = copy(&ns, &site, start, ms(&src[2], "end_ms"), None);
    assert_eq!(r["copied"], 3, "{r}");
    assert_eq!(r["copied_bytes"].as_u64().unwrap(), bytes(&src[..3]));
    // An overlapping range: only the other three move.
    let until = ms(&src[5], "end_ms");
    let r = copy(&ns, &site, start, until, None);
    assert_eq!(r["copied"], 3, "{r}");
    assert_eq!(r["skipped_present"], 3, "{r}");
    assert_eq!(r["copied_bytes"].as_u64().unwrap(), bytes(&src[3..6]));
    // Again: nothing.
    let r = copy(&ns, &site, start, until, None);
    assert_eq!(r["copied"], 0, "{r}");
    assert_eq!(r["skipped_present"], 6, "{r}");

    // An interrupted run (stopped after one segment) resumes.
    let more = common::wait_for(Duration::from_secs(30), || {
        let s = inventory(&ns, 8080, "admin:one");
        (s.len() >= 9).then_some(s)
    })
    .expect("nine segments on rec-1");
    let until = ms(&more[8], "end_ms");
    let r = copy(&ns, &site, start, until, Some(1));
    assert_eq!(
        (r["copied"].as_u64(), r["remaining"].as_u64()),
        (Some(1), Some(2)),
        "{r}"
    );
    let r = copy(&ns, &site, start, until, None);
    assert_eq!(r["copied"], 2, "{r}");
    assert_eq!(r["skipped_present"], 7, "{r}");

    // The target lists exactly the source's segments, same bytes and checksums.
    let dst = inventory(&ns, 8081, "admin:two");
    assert_eq!(dst.len(), 9);
    for (a, b) in more[..9].iter().zip(&dst) {
        for k in [
            "segment", "start_ms", "end_ms", "bytes", "checksum", "recorder",
        ] {
            assert_eq!(a[k], b[k], "{k}");
        }
    }
    // One segment that cannot be copied (damaged at the source: its
    // checksum fails at the target) is reported and skipped; the others
    // are copied, and each later run retries it.
    let more = common::wait_for(Duration::from_secs(30), || {
        let s = inventory(&ns, 8080, "admin:one");
        (s.len() >= 12).then_some(s)
    })
    .expect("twelve segments on rec-1");
    let until = ms(&more[11], "end_ms");
    let bad_name = more[10]["segment"].as_str().unwrap().to_string();
    let bad_file = ["a1", "a2"]
        .iter()
        .map(|d| dir.path().join(d).join("mcrelay/ch1").join(&bad_name))
        .find(|p| p.exists())
        .expect("the source segment's file");
    let original = std::fs::read(&bad_file).unwrap();
    let mut damaged = original.clone();
    damaged[1000] ^= 0xff;
    std::fs::write(&bad_file, &damaged).unwrap();
    let (ok, r, out) = copy_run(&ns, &site, start, until, None);
    assert!(!ok, "a failed segment must fail the run: {out}");
    assert_eq!(r["copied"], 2, "{r}");
    assert_eq!(r["failed"][0]["segment"], bad_name.as_str(), "{r}");
    assert!(out.contains(&bad_name) && out.contains("checksum"), "{out}");
    let (_, r, _) = copy_run(&ns, &site, start, until, None);
    assert_eq!(
        r["failed"].as_array().map(Vec::len),
        Some(1),
        "retried: {r}"
    );
    std::fs::write(&bad_file, &original).unwrap();
    let (ok, r, out) = copy_run(&ns, &site, start, until, None);
    assert!(ok, "{out}");
    assert_eq!(r["copied"], 1, "{r}");
    assert_eq!(inventory(&ns, 8081, "admin:two").len(), 12);

    // A wrong password is refused with a clear error.
    let bad = text.replace("password = \"two\"", "password = \"nope\"");
    let bad_site = dir.path().join("bad.toml");
    std::fs::write(&bad_site, bad).unwrap();
    let o = ns
        .command(common::mcrelay())
        .args(["material", "copy", "--site"])
        .arg(&bad_site)
        .args(["--from", "rec-1", "--to", "rec-2", "--channel", "1"])
        .args(["--since", &rfc3339(start)])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("401") && err.contains("rec-2"), "{err}");
}

fn disk_status(ns: &Netns) -> Vec<(String, u64)> {
    let v = common::get_json(ns, "/status");
    v["material"]["disks"]
        .as_array()
        .expect("disks in /status")
        .iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap_or_default().to_string(),
                d["segments"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_broken_disk_is_skipped_and_all_broken_disks_fail_health() {
    let ns = Netns::new("recdisk");
    let dir = common::tempdir();
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    for d in [&d1, &d2] {
        std::fs::create_dir_all(d).unwrap();
    }
    let text = site(dir.path()).replace("segment = \"3s\"", "segment = \"2s\"");
    let site = common::write_site(dir.path(), &text);
    let _cam1 = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    let _cam2 = common::start_camera(&ns, "camera-h265.h265", "127.0.0.1:9002");
    // mcrelay in a mount namespace of its own, each disk a small tmpfs.
    let relay = common::start_mcrelay_on_tmpfs(&ns, dir.path(), &site, "rec-1", &[&d1, &d2], 32);
    let pid = relay.pid().to_string();
    let nsenter = |args: &[&str]| {
        let st = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-m"])
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("nsenter");
        st.success()
    };

    // Both disks take segments.
    let both = common::wait_for(Duration::from_secs(30), || {
        let s = disk_status(&ns);
        s.iter().all(|(st, n)| st == "ok" && *n >= 2).then_some(s)
    });
    assert!(both.is_some(), "{:?}", disk_status(&ns));

    // Disk 1 unmounted under the server: missing; recording goes on on disk 2.
    assert!(nsenter(&["umount", "-l", &d1.display().to_string()]));
    let missing = common::wait_for(Duration::from_secs(15), || {
        let s = disk_status(&ns);
        (s[0].0 == "missing").then_some(s)
    })
    .unwrap_or_else(|| panic!("disk 1 not reported missing: {:?}", disk_status(&ns)));
    let grew = common::wait_for(Duration::from_secs(20), || {
        let s = disk_status(&ns);
        (s[1].0 == "ok" && s[1].1 >= missing[1].1 + 3).then_some(())
    });
    assert!(
        grew.is_some(),
        "disk 2 stopped growing: {:?}",
        disk_status(&ns)
    );
    let (code, body) = ns
        .run(|| common::http_get("127.0.0.1:8080", "/health"))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    // No material went to the directory below the unmounted disk.
    assert!(
        !d1.join("mcrelay").exists(),
        "material written under an unmounted disk"
    );

    // Disk 2 filled up: every disk broken, /health says so.
    let filler = d2.join("filler").display().to_string();
    nsenter(&[
        "dd",
        "if=/dev/zero",
        &format!("of={filler}"),
        "bs=1M",
        "count=64",
        "status=none",
    ]);
    let broken = common::wait_for(Duration::from_secs(20), || {
        let (code, body) = ns
            .run(|| common::http_get("127.0.0.1:8080", "/health"))
            .ok()?;
        (code == 503).then_some(body)
    })
    .unwrap_or_else(|| panic!("/health still fine: {:?}", disk_status(&ns)));
    let v: serde_json::Value = serde_json::from_str(&broken).unwrap();
    assert_eq!(v["status"], "broken");
    assert_eq!(v["material"]["all_disks_broken"], true);
    // Trying to get under the limit, retention deleted what disk 2 held.
    let emptied = common::wait_for(Duration::from_secs(15), || {
        let s = disk_status(&ns);
        (s[1] == ("full".to_string(), 0)).then_some(())
    });
    assert!(emptied.is_some(), "{:?}", disk_status(&ns));
}

#[test]
fn retention_deletes_material_past_its_age() {
    let ns = Netns::new("recret");
    let dir = common::tempdir();
    for d in ["disk1", "disk2"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let text = site(dir.path()).replace("segment = \"3s\"", "segment = \"2s\"\nretention = \"4s\"");
    let site = common::write_site(dir.path(), &text);
    let _cam1 = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    let _cam2 = common::start_camera(&ns, "camera-h265.h265", "127.0.0.1:9002");
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec-1");
    // Material older than 4 s goes at the next check (every 5 s): after
    // 16 s of recording nothing listed ended more than 4 + 5 s ago, and
    // the files of deleted segments are gone.
    std::thread::sleep(Duration::from_secs(16));
    let ch1_files = || -> Vec<PathBuf> {
        walk(dir.path())
            .into_iter()
            .filter(|p| {
                p.to_string_lossy().contains("/ch1/") && p.extension().is_some_and(|e| e == "ts")
            })
            .collect()
    };
    // A segment may finish (file renamed, then indexed) or be deleted
    // between the listing and the directory walk: compare a snapshot in
    // which the listing did not change across the walk.
    let mut last = String::new();
    let snapshot = common::wait_for(Duration::from_secs(6), || {
        let before = segments(&material(&ns, 1));
        let files = ch1_files();
        let after = segments(&material(&ns, 1));
        last = format!("{files:?} vs {} listed", after.len());
        (before == after && files.len() == after.len()).then_some(after)
    });
    let segs = snapshot.unwrap_or_else(|| panic!("files and index never agreed: {last}"));
    let now = mcrelay::record::now_ms(std::time::SystemTime::now());
    assert!(!segs.is_empty());
    for s in &segs {
        let end = s["end_ms"].as_i64().unwrap();
        assert!(now - end <= 9_500, "{s} outlived its retention");
    }
    assert!(
        segs[0]["start_ms"].as_i64().unwrap() > now - 14_000,
        "the oldest segments were kept"
    );
}
