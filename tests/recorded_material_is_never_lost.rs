//! Recorded material is sacred: kill -9 at random instants costs at most the
//! segment in progress; uploads are validated, never share a part file,
//! never make room by deleting local material; a copy that meets one bad
//! segment copies the rest.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Netns;
use common::http::{self, Reply};

const PW: (&str, &str) = ("admin", "s3cret");

fn site(disks: &[PathBuf], extra: &str) -> String {
    let list: Vec<String> = disks
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    format!(
        r#"
[[server]]
name = "rec-1"
password = "s3cret"
control = "127.0.0.1:8080"
[server.storage]
disks = [{}]
segment = "2s"
{extra}
[[server.channel]]
id = 1
source = "tcp://127.0.0.1:9001"
codec = "h264"
"#,
        list.join(", ")
    )
}

/// Complete segment files (not `.part`) under `dir`, with their sizes.
fn complete_files(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ts")
                && let Ok(m) = std::fs::metadata(&p)
            {
                out.insert(p, m.len());
            }
        }
    }
    out
}

fn listed(ns: &Netns) -> Vec<serde_json::Value> {
    let r = ns.run(|| {
        http::request(
            "127.0.0.1:8080",
            "GET",
            "/channels/1/material?from=2000-01-01T00:00:00Z",
            &[],
            b"",
            PW,
        )
    });
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["segments"].as_array().cloned().unwrap_or_default()
}

fn decodes(path: &Path) -> Result<(), String> {
    let o = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    // One line per section that names the stream; the first is enough.
    let frames: u64 = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    if frames == 0 || !err.is_empty() {
        return Err(format!("{}: {frames} frames, {err}", path.display()));
    }
    Ok(())
}

#[test]
fn kill_9_at_twenty_random_instants_loses_no_complete_segment() {
    let ns = Netns::new("kill9");
    let dir = common::tempdir();
    let disks = [dir.path().join("disk1"), dir.path().join("disk2")];
    for d in &disks {
        std::fs::create_dir_all(d).unwrap();
    }
    let site = common::write_site(dir.path(), &site(&disks, ""));
    let _cam = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    let seed: u64 = rand::random();
    eprintln!("kill instants seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut ever: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for round in 0..20 {
        let mut relay = common::start_mcrelay(&ns, dir.path(), &site, "rec-1");
        // Everything complete before this start is still there, whole, and
        // listed.
        let now = complete_files(dir.path());
        for (p, len) in &ever {
            assert_eq!(
                now.get(p),
                Some(len),
                "round {round}: {} lost or changed",
                p.display()
            );
        }
        let names: std::collections::HashSet<String> = listed(&ns)
            .iter()
            .map(|s| s["segment"].as_str().unwrap_or_default().to_string())
            .collect();
        for p in ever.keys() {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            assert!(names.contains(&name), "round {round}: {name} not listed");
        }
        // Kill somewhere in 0.2-4.5 s: before, during and after segment
        // boundaries (2 s segments), during index appends. Every other
        // round lives 3.5-4.5 s, so that segments complete whatever the
        // draw (a first segment ends at the first key frame after 2 s).
        let wait = if round % 2 == 0 {
            rand::Rng::random_range(&mut rng, 3500..4500)
        } else {
            rand::Rng::random_range(&mut rng, 200..4500)
        };
        std::thread::sleep(Duration::from_millis(wait));
        let before = complete_files(dir.path());
        relay.kill();
        ever.extend(before);
    }
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec-1");
    let after = complete_files(dir.path());
    let (files, bytes): (usize, u64) = (ever.len(), ever.values().sum());
    assert!(
        files >= 10,
        "only {files} segments were completed in 20 rounds"
    );
    for (p, len) in &ever {
        assert_eq!(after.get(p), Some(len), "{} lost or changed", p.display());
        if let Err(e) = decodes(p) {
            let _ = std::fs::copy(p, "/tmp/mcrelay-undecodable.ts");
            panic!("{e} ({len} bytes)");
        }
    }
    eprintln!("{files} complete segments ({bytes} bytes) all kept and decodable after 20 kills");
}

fn entry_for(name: &str, bytes: &[u8], end_ms: i64) -> serde_json::Value {
    let start: i64 = name.split('-').next().unwrap().parse().unwrap();
    serde_json::json!({
        "channel": 1,
        "segment": name,
        "start_ms": start,
        "end_ms": end_ms,
        "bytes": bytes.len(),
        "checksum": format!("xxh3:{:016x}", xxhash_rust::xxh3::xxh3_64(bytes)),
        "recorder": "rec-0",
    })
}

fn put(ns: &Netns, name: &str, body: &[u8], entry: &serde_json::Value) -> Reply {
    let path = format!("/channels/1/material/{name}");
    let body = body.to_vec();
    let entry = entry.to_string();
    ns.run(move || {
        http::request(
            "127.0.0.1:8080",
            "PUT",
            &path,
            &[("X-Mcrelay-Entry", entry)],
            &body,
            PW,
        )
    })
}

#[test]
fn forged_entries_are_refused_and_listings_never_break() {
    let ns = Netns::new("forge");
    let dir = common::tempdir();
    let disks = [dir.path().join("disk1")];
    std::fs::create_dir_all(&disks[0]).unwrap();
    let site = common::write_site(dir.path(), &site(&disks, ""));
    let mut relay = common::start_mcrelay(&ns, dir.path(), &site, "rec-1");
    let body = vec![0x47u8; 188 * 10];
    let name = "1764067200000-rec-0.ts";
    for end in [i64::MAX, 253_402_300_800_000, 1_764_067_200_000 - 1] {
        let r = put(&ns, name, &body, &entry_for(name, &body, end));
        assert_eq!(r.status, 400, "end_ms {end}: {}", r.text());
    }
    // A name past the year 9999 is refused as a name.
    let far = "999999999999999-rec-0.ts";
    let r = put(&ns, far, &body, &entry_for(far, &body, 999_999_999_999_999));
    assert_eq!(r.status, 400, "{}", r.text());
    // A sane one is stored, and the listing works, now and after a restart.
    let r = put(&ns, name, &body, &entry_for(name, &body, 1_764_067_201_000));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(listed(&ns).len(), 1);
    relay.kill();
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec-1");
    let segs = listed(&ns);
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0]["end"], "2025-11-25T10:40:01.000Z");
}

#[test]
fn two_uploads_of_one_segment_never_share_a_part_file() {
    let ns = Netns::new("twoput");
    let dir = common::tempdir();
    let disks = [dir.path().join("disk1")];
    std::fs::create_dir_all(&disks[0]).unwrap();
    let site = common::write_site(dir.path(), &site(&disks, ""));
    let _relay = common::start_mcrelay(&ns, dir.path(), &site, "rec-1");
    let body: Vec<u8> = (0..188 * 2000).map(|i| (i * 7 % 251) as u8).collect();
    let name = "1764067200000-rec-0.ts";
    let entry = entry_for(name, &body, 1_764_067_202_000).to_string();
    let path = format!("/channels/1/material/{name}");
    let replies = ns.run(move || {
        let mut a = http::start_upload(
            "127.0.0.1:8080",
            &path,
            &[("X-Mcrelay-Entry", entry.clone())],
            body.len() as u64,
            PW,
        );
        let mut b = http::start_upload(
            "127.0.0.1:8080",
            &path,
            &[("X-Mcrelay-Entry", entry)],
            body.len() as u64,
            PW,
        );
        // Both bodies in flight at once, interleaved.
        let half = body.len() / 2;
        a.write_all(&body[..half]).unwrap();
        b.write_all(&body[..half]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        a.write_all(&body[half..]).unwrap();
        b.write_all(&body[half..]).unwrap();
        let (ra, rb) = (
            http::read_reply(&mut a).unwrap(),
            http::read_reply(&mut b).unwrap(),
        );
        (ra.status, rb.status, ra.text(), rb.text(), body)
    });
    let (sa, sb, ta, tb, body) = replies;
    let mut codes = [sa, sb];
    codes.sort();
    assert_eq!(codes, [200, 201], "{ta} / {tb}");
    let file = disks[0].join("mcrelay/ch1").join(name);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        body,
        "the stored segment is whole"
    );
    let parts: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(parts.is_empty(), "{parts:?}");
    assert_eq!(listed(&ns).len(), 1);
}

#[test]
fn an_upload_that_does_not_fit_is_refused_not_paid_for_with_local_material() {
    let ns = Netns::new("full");
    let dir = common::tempdir();
    let disk = dir.path().join("disk1");
    std::fs::create_dir_all(&disk).unwrap();
    let text = site(std::slice::from_ref(&disk), "max_usage_percent = 50");
    let site = common::write_site(dir.path(), &text);
    let _cam = common::start_camera(&ns, "camera-h264.h264", "127.0.0.1:9001");
    // The disk is a 16 MB tmpfs in mcrelay's own mount namespace.
    let _relay = common::start_mcrelay_on_tmpfs(&ns, dir.path(), &site, "rec-1", &[&disk], 16);
    let local = common::wait_for(Duration::from_secs(30), || {
        let s = listed(&ns);
        (s.len() >= 2).then_some(s)
    })
    .expect("two local segments");
    // 9 MB more would take the disk over its 50% limit.
    let body = vec![0x47u8; 9 << 20];
    let name = "1764067200000-rec-0.ts";
    let r = put(&ns, name, &body, &entry_for(name, &body, 1_764_067_260_000));
    assert_eq!(r.status, 507, "{}", r.text());
    let after = listed(&ns);
    let names = |v: &[serde_json::Value]| -> Vec<String> {
        v.iter()
            .map(|s| s["segment"].as_str().unwrap().to_string())
            .collect()
    };
    for n in names(&local) {
        assert!(
            names(&after).contains(&n),
            "{n} deleted to make room for an upload"
        );
    }
    // A small one fits.
    let small = vec![0x47u8; 188 * 100];
    let r = put(
        &ns,
        name,
        &small,
        &entry_for(name, &small, 1_764_067_202_000),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}
