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

const SECRET_SITE: &str = r#"
[[server]]
name = "rec"
password = PASSWORD
control = "127.0.0.1:18080"
[[server.channel]]
id = 1
source = SOURCE
"#;

fn secret_site(dir: &std::path::Path, password: &str, source: &str) -> std::path::PathBuf {
    let text = SECRET_SITE
        .replace("PASSWORD", password)
        .replace("SOURCE", source);
    common::write_site(dir, &text)
}

#[test]
fn no_command_prints_a_password_from_the_site_file() {
    let dir = common::tempdir();
    for source in [
        "\"admin:camsecret@198.18.0.5:554/stream\"",
        "\"rtsp://admin:camsecret@[bad/stream\"",
        "\"tcp://admin:camsecret@198.18.0.5:x\"",
        "\"rtsp://admin:camsecret@198.18.0.5/s\" extra = 1",
    ] {
        let site = secret_site(dir.path(), "\"srvsecret\"", source);
        for cmd in [
            vec!["check", "--site", site.to_str().unwrap()],
            vec!["run", "--site", site.to_str().unwrap(), "--server", "rec"],
        ] {
            let (ok, out, err) = mcrelay(&cmd);
            assert!(!ok, "{source}: {out}{err}");
            for leak in ["camsecret", "srvsecret"] {
                assert!(
                    !out.contains(leak) && !err.contains(leak),
                    "{cmd:?} with {source} printed a password:\n{out}{err}"
                );
            }
            assert!(err.contains("line 8"), "{cmd:?}: no location: {err}");
        }
    }
}

#[test]
fn an_empty_password_is_an_error_and_a_readable_password_file_a_warning() {
    let dir = common::tempdir();
    let source = "\"tcp://127.0.0.1:9\"\ncodec = \"h264\"";
    let site = secret_site(dir.path(), "{ env = \"MCRELAY_TEST_EMPTY_PW\" }", source);
    let out = Command::new(common::mcrelay())
        .args(["check", "--site", site.to_str().unwrap()])
        .env("MCRELAY_TEST_EMPTY_PW", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("MCRELAY_TEST_EMPTY_PW is empty"), "{err}");
    let out = Command::new(common::mcrelay())
        .args(["run", "--site", site.to_str().unwrap(), "--server", "rec"])
        .env("MCRELAY_TEST_EMPTY_PW", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));

    use std::os::unix::fs::PermissionsExt as _;
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let site = secret_site(dir.path(), "{ file = \"pw\" }", source);
    let (ok, _, err) = mcrelay(&["check", "--site", site.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        err.contains("password.file") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, _, err) = mcrelay(&["check", "--site", site.to_str().unwrap()]);
    assert!(ok && !err.contains("chmod"), "{err}");
}

#[test]
fn key_makes_a_site_key_that_check_takes_and_check_refuses_a_failover_site_without_one() {
    let (ok, key, err) = mcrelay(&["key"]);
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    assert_eq!(key.len(), 64, "{key}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    let (_, other, _) = mcrelay(&["key"]);
    assert_ne!(key, other.trim(), "two keys alike");

    let dir = common::tempdir();
    let example = std::fs::read_to_string(common::repo().join("config/site.toml")).unwrap();
    std::fs::write(dir.path().join("site.key"), format!("{key}\n")).unwrap();
    let with_file = example.replace(
        "key = { env = \"MCRELAY_SITE_KEY\" }",
        "key = { file = \"site.key\" }",
    );
    assert_ne!(with_file, example, "the example names its key by env");
    let path = common::write_site(dir.path(), &with_file);
    let (ok, _, err) = mcrelay(&["check", "--site", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(!err.contains(&key), "key printed: {err}");

    // A short key in the file: refused at check, without printing it.
    std::fs::write(dir.path().join("site.key"), "c0ffee00c0ffee00\n").unwrap();
    let (ok, _, err) = mcrelay(&["check", "--site", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("64 bits"), "{err}");
    assert!(!err.contains("c0ffee00"), "key printed: {err}");

    // No key at all, and the example protects recorder-1.
    let path = common::write_site(
        dir.path(),
        &example.replace("key = { env = \"MCRELAY_SITE_KEY\" }", ""),
    );
    let (ok, _, err) = mcrelay(&["check", "--site", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("site.key") && err.contains("mcrelay key"),
        "{err}"
    );
}
