//! `mcrelay demo --failover` as a new user runs it (README): a takeover
//! and a failback on one machine, told as it happens, with the figures at
//! the end. Here the demo breaks recorder-1 itself and stops when it has
//! its role back; in a network namespace of its own.

mod common;

use std::time::{Duration, Instant};

use common::{Netns, Proc};

#[test]
fn the_failover_demo_shows_a_takeover_and_a_failback() {
    let ns = Netns::new("fodemo");
    let dir = common::tempdir();
    let out = dir.path().join("demo.out");
    let mut cmd = ns.command(common::mcrelay());
    cmd.args([
        "demo",
        "--failover",
        "--break-after",
        "6s",
        "--restart-after",
        "3s",
    ])
    .args(["--exit-when-done", "--material"])
    .arg(dir.path())
    .env("RUST_LOG", "warn")
    .stdout(std::fs::File::create(&out).unwrap())
    .stderr(std::fs::File::create(dir.path().join("demo.err")).unwrap());
    let mut demo = Proc::spawn(cmd, "mcrelay demo --failover");
    // 6 s, the 3 s period, 3 s, failback_delay 15 s, the copy.
    let deadline = Instant::now() + Duration::from_secs(90);
    while demo.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let running = demo.is_running();
    let status = demo.interrupt(Duration::from_secs(10));
    let text = std::fs::read_to_string(&out).unwrap();
    let err = common::plain_log(&dir.path().join("demo.err"));
    assert!(!running, "the demo did not finish in 90 s:\n{text}\n{err}");
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{text}\n{err}"
    );
    println!("{text}");
    for want in [
        "breaking recorder-1: kill -9",
        "Failover servers: failover-1: covering recorder-1 | Broken VMS servers: recorder-1: inaccessible (covered by failover-1)",
        "starting recorder-1 again",
        "recorder-1 has its role back.",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // The figures are the servers' own, and plausible.
    let number_after = |label: &str| -> f64 {
        let rest =
            &text[text.find(label).unwrap_or_else(|| panic!("no {label:?}")) + label.len()..];
        rest.split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no number after {label:?} in\n{text}"))
    };
    let gap = number_after("failback: ");
    assert!(gap > 0.0 && gap < 2.0, "failback gap {gap}");
    let copied = number_after("to recorder-1's first; ");
    assert!(copied >= 2.0, "{copied} segments copied back");
}
