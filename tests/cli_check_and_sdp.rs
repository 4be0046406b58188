//! The operator's commands on site files: `mcrelay check` and `mcrelay sdp`.

mod common;

use std::process::Command;

fn mcrelay(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::mcrelay()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_examples_and_prints_the_address_plan() {
    for file in ["config/site.toml", "config/demo.toml"] {
        let path = common::repo().join(file);
        let (ok, out, err) = mcrelay(&["check", "--site", path.to_str().unwrap()]);
        assert!(ok, "{file}: {err}");
        assert!(out.contains(": OK ("), "{out}");
    }
    let (_, out, _) = mcrelay(&[
        "check",
        "--site",
        common::repo().join("config/site.toml").to_str().unwrap(),
    ]);
    assert!(
        out.contains("channel 1 \"Entrance\" -> 239.192.1.1:5002 (RTCP 5003)"),
        "{out}"
    );
    assert!(!out.contains("secret"), "camera password printed: {out}");
}

#[test]
fn check_rejects_a_bad_site_naming_file_key_and_fix() {
    let dir = common::tempdir();
    let text = std::fs::read_to_string(common::repo().join("config/site.toml"))
        .unwrap()
        .replace("address = \"239.192.2.1\"", "address = \"239.192.1.1\"");
    let path = common::write_site(dir.path(), &text);
    let (ok, _, err) = mcrelay(&["check", "--site", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(
        err.contains("server \"recorder-2\" multicast.address"),
        "{err}"
    );
    assert!(err.contains("fix:"), "{err}");
}

#[test]
fn sdp_prints_the_channel_description() {
    let site = common::repo().join("config/demo.toml");
    let (ok, out, err) = mcrelay(&[
        "sdp",
        "--site",
        site.to_str().unwrap(),
        "--server",
        "recorder-1",
        "--channel",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("c=IN IP4 239.255.77.1/1\r\n"), "{out}");
    assert!(out.contains("m=video 5004 RTP/AVP 96\r\n"), "{out}");
    assert!(out.contains("a=rtpmap:96 H265/90000\r\n"), "{out}");
    // A channel of another server, and an RTSP channel without a codec.
    let site = common::repo().join("config/site.toml");
    let (ok, _, err) = mcrelay(&[
        "sdp",
        "--site",
        site.to_str().unwrap(),
        "--server",
        "recorder-2",
        "--channel",
        "1",
    ]);
    assert!(
        !ok && err.contains("belongs to server \"recorder-1\""),
        "{err}"
    );
    let (ok, _, err) = mcrelay(&[
        "sdp",
        "--site",
        site.to_str().unwrap(),
        "--server",
        "recorder-1",
        "--channel",
        "1",
    ]);
    assert!(!ok && err.contains("learned from the camera"), "{err}");
}
