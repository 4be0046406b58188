use std::net::Ipv4Addr;
use std::path::Path;

use super::*;

const EXAMPLE: &str = include_str!("../../config/site.toml");
const DEMO: &str = include_str!("../../config/demo.toml");

fn parse(text: &str) -> Result<Site, ConfigError> {
    Site::parse(text, Path::new("test-site.toml"))
}

const TEST_KEY: &str = "00112233445566778899aabbccddeeff";

/// A minimal valid site with two multicast servers; tests patch it.
fn two_servers(extra_a: &str, extra_b: &str) -> String {
    format!(
        r#"
[site]
key = "{TEST_KEY}"

[[server]]
name = "a"
password = "x"
protocol = "rtp-multicast"
control = "198.18.0.1:8080"
[server.multicast]
address = "239.1.1.1"
port = 5000
interface = "198.18.0.1"
{extra_a}

[[server]]
name = "b"
password = "x"
protocol = "rtp-multicast"
control = "198.18.0.2:8080"
[server.multicast]
address = "239.1.1.2"
port = 5000
interface = "198.18.0.2"
{extra_b}
"#
    )
}

fn errors(text: &str) -> Vec<Issue> {
    match parse(text) {
        Err(ConfigError::Invalid { issues, .. }) => issues,
        Err(e) => panic!("expected validation errors, got {e}"),
        Ok(_) => panic!("expected validation errors, got a valid site"),
    }
}

#[test]
fn shipped_examples_are_valid() {
    let site = parse(EXAMPLE).unwrap();
    assert_eq!(site.servers().len(), 3);
    let (server, ch) = site.channel(2).unwrap();
    assert_eq!(server.name, "recorder-1");
    assert_eq!(ch.codec, Some(crate::media::Codec::H265));
    let demo = parse(DEMO).unwrap();
    let r = demo.server("recorder-1").unwrap();
    assert_eq!(r.protocol, Protocol::RtpMulticast);
    assert_eq!(
        r.multicast.as_ref().unwrap().interface,
        std::net::Ipv4Addr::LOCALHOST
    );
    assert!(demo.warnings.is_empty(), "{:?}", demo.warnings);
    // The failover demo: both servers on loopback, told apart by address.
    let fo = parse(crate::demo::DEMO_FAILOVER_SITE).unwrap();
    assert!(fo.warnings.is_empty(), "{:?}", fo.warnings);
    let interfaces: Vec<Ipv4Addr> = fo
        .servers()
        .iter()
        .filter_map(|s| s.multicast.as_ref().map(|m| m.interface))
        .collect();
    assert_eq!(
        interfaces,
        [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)]
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_key_and_file() {
    let text = two_servers("bogus_key = 1", "");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.starts_with("test-site.toml:"), "{err}");
    assert!(err.contains("bogus_key"), "{err}");
    let err = parse("[[server]]\nname = \"a\"\ncontrl = \"127.0.0.1:1\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("contrl"), "{err}");
}

#[test]
fn a_parse_error_quotes_a_key_never_a_value_before_an_equals_sign() {
    // Found by the config_loader fuzz target: the text before the line's
    // first `=` was quoted as its key, even when it was a URL.
    let err = parse("  //admin:Hunter2pw@127.0.( =01:81")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("Hunter2pw"), "{err}");
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn same_multicast_address_is_rejected() {
    let text = two_servers("", "").replace("239.1.1.2", "239.1.1.1");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].key, "server \"b\" multicast.address");
    assert!(
        e[0].message.contains("overlaps server \"a\""),
        "{}",
        e[0].message
    );
    assert!(e[0].fix.contains("own multicast address"));
}

#[test]
fn overlapping_group_ranges_are_rejected() {
    let e = errors(&two_servers("groups = 4", ""));
    assert!(
        e.iter().any(|i| i
            .message
            .contains("overlaps server \"a\"'s 239.1.1.1..239.1.1.4")),
        "{e:?}"
    );
}

#[test]
fn port_collisions_are_rejected() {
    let text = two_servers("", "").replace("198.18.0.2:8080", "198.18.0.1:8080");
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|i| i.key == "server \"b\" control" && i.message.contains("collides")),
        "{e:?}"
    );
    // A camera listener on the control port of the same server.
    let ch = "[[server.channel]]\nid = 1\nsource = \"tcp-listen://0.0.0.0:8080\"\ncodec = \"h264\"";
    let e = errors(&two_servers(ch, ""));
    assert!(
        e.iter().any(|i| i.key == "server \"a\" channel 1 source"),
        "{e:?}"
    );
    // Odd base port; a channel id that pushes the port past 65535.
    let e = errors(&two_servers("", "").replacen("port = 5000", "port = 5001", 1));
    assert!(
        e.iter().any(|i| i.key == "server \"a\" multicast.port"),
        "{e:?}"
    );
    let ch = "[[server.channel]]\nid = 40000\nsource = \"tcp://198.18.0.9:1\"\ncodec = \"h264\"";
    let e = errors(&two_servers(ch, ""));
    assert!(
        e.iter().any(|i| i.message.contains("beyond 65535")),
        "{e:?}"
    );
}

#[test]
fn duplicate_channel_ids_are_rejected_site_wide() {
    let ch = "[[server.channel]]\nid = 7\nsource = \"rtsp://198.18.0.9/s\"";
    let e = errors(&two_servers(ch, ch));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].message.contains("also used by server \"a\""), "{e:?}");
}

#[test]
fn channels_mapping_to_one_group_are_rejected() {
    let chs = "groups = 4\n[[server.channel]]\nid = 1\nsource = \"rtsp://198.18.0.9/a\"\n[[server.channel]]\nid = 5\nsource = \"rtsp://198.18.0.9/b\"";
    let text = two_servers(chs, "").replace("239.1.1.2", "239.1.2.1");
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|i| i.message.contains("channels 1 and 5 both map")),
        "{e:?}"
    );
}

#[test]
fn raw_sources_need_a_codec_and_bad_sources_name_the_key() {
    let ch = "[[server.channel]]\nid = 1\nsource = \"tcp://198.18.0.9:9000\"";
    let e = errors(&two_servers(ch, ""));
    assert_eq!(e[0].key, "server \"a\" channel 1 codec");
    let ch = "[[server.channel]]\nid = 1\nsource = \"http://198.18.0.9/x\"";
    let err = parse(&two_servers(ch, "")).unwrap_err().to_string();
    assert!(
        err.contains("source") && err.contains("unsupported source scheme"),
        "{err}"
    );
}

#[test]
fn multicast_protocol_needs_an_address() {
    let text = r#"
[[server]]
name = "a"
password = "x"
protocol = "rtp-multicast"
control = "127.0.0.1:8080"
"#;
    let e = errors(text);
    assert_eq!(e[0].key, "server \"a\" multicast");
}

#[test]
fn bad_multicast_values() {
    let e = errors(&two_servers("", "").replace("239.1.1.1", "198.18.5.5"));
    assert!(
        e.iter().any(|i| i.message.contains("not all multicast")),
        "{e:?}"
    );
    let e = errors(&two_servers("", "").replace("239.1.1.1", "224.0.0.9"));
    assert!(
        e.iter().any(|i| i.message.contains("224.0.0.0/24")),
        "{e:?}"
    );
    let e = errors(&two_servers("ttl = 0", ""));
    assert!(e.iter().any(|i| i.key.ends_with("multicast.ttl")), "{e:?}");
}

#[test]
fn failover_rules() {
    let standby = r#"
[[server]]
name = "fo"
password = "x"
control = "198.18.0.3:8080"
[server.failover]
use_as_failover_server = true
failover_enabled = true
[[server.channel]]
id = 9
source = "rtsp://198.18.0.9/s"
"#;
    let text = format!("{}{standby}", two_servers("", ""));
    let e = errors(&text);
    assert!(e.iter().any(|i| i.key == "server \"fo\" channel"), "{e:?}");
    assert!(
        e.iter()
            .any(|i| i.key == "server \"fo\" failover.failover_enabled"),
        "{e:?}"
    );

    // Protection without any failover server is a warning, not an error.
    let site = parse(&two_servers(
        "[server.failover]\nfailover_enabled = true\ninaccessible_period = \"90m\"",
        "",
    ))
    .unwrap();
    assert_eq!(site.warnings.len(), 1);
    assert!(
        site.warnings[0]
            .message
            .contains("no server in the site is a failover server")
    );
    let a = site.server("a").unwrap();
    assert_eq!(
        a.failover.inaccessible_period,
        std::time::Duration::from_secs(5400)
    );
    let err = parse(&two_servers(
        "[server.failover]\ninaccessible_period = \"soon\"",
        "",
    ))
    .unwrap_err();
    assert!(err.to_string().contains("not a duration"), "{err}");
}

#[test]
fn source_specific_groups_list_their_covers_and_are_checked() {
    // a on 232.1.1.1 under protection; b a failover server with its own
    // interface; c a failover server without one.
    let text = two_servers(
        "[server.failover]\nfailover_enabled = true",
        "[server.failover]\nuse_as_failover_server = true",
    )
    .replace("239.1.1.1", "232.1.1.1");
    let site = parse(&text).unwrap();
    let a = site.server("a").unwrap();
    assert_eq!(
        plan::ssm_sources(site.servers(), a),
        vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)]
    );
    // Any-source groups list none.
    assert!(plan::ssm_sources(site.servers(), site.server("b").unwrap()).is_empty());
    let no_interface = format!(
        "{text}\n[[server]]\nname = \"c\"\npassword = \"x\"\ncontrol = \"198.18.0.3:8080\"\n[server.failover]\nuse_as_failover_server = true\n"
    );
    let e = errors(&no_interface);
    assert!(
        e.iter()
            .any(|i| i.key == "server \"c\" multicast" && i.message.contains("source-specific")),
        "{e:?}"
    );
    // Reserved, and a range across the edge of 232/8.
    let e = errors(&two_servers("", "").replace("239.1.1.1", "232.0.0.7"));
    assert!(e.iter().any(|i| i.message.contains("RFC 4607")), "{e:?}");
    let e = errors(
        &two_servers("", "")
            .replace("239.1.1.1", "232.255.255.255")
            .replace(
                "interface = \"198.18.0.1\"",
                "interface = \"198.18.0.1\"\ngroups = 2",
            ),
    );
    assert!(e.iter().any(|i| i.message.contains("edge of 232")), "{e:?}");
}

#[test]
fn site_failover_settings_default_parse_and_are_checked() {
    let site = parse(&two_servers("", "")).unwrap();
    let f = &site.file.site.failover;
    assert_eq!(f.controller, crate::failover::ControllerKind::Embedded);
    assert_eq!(f.poll_interval, std::time::Duration::from_millis(500));
    assert_eq!(f.failback_delay, std::time::Duration::from_secs(300));
    let text = format!(
        "[site.failover]\ncontroller = \"none\"\npoll_interval = \"2s\"\nfailback_delay = \"30s\"\n{}",
        two_servers("", "")
    );
    let f = parse(&text).unwrap().file.site.failover.clone();
    assert_eq!(f.controller, crate::failover::ControllerKind::None);
    assert_eq!(f.poll_interval, std::time::Duration::from_secs(2));
    let text = format!(
        "[site.failover]\npoll_interval = \"1ms\"\n{}",
        two_servers("", "")
    );
    assert!(
        errors(&text)
            .iter()
            .any(|i| i.key == "site.failover.poll_interval")
    );
    let text = format!(
        "[site.failover]\ncontroller = \"zookeeper\"\n{}",
        two_servers("", "")
    );
    assert!(parse(&text).is_err());
    // A period of under three polls flaps: warned.
    let site = parse(&two_servers(
        "[server.failover]\nfailover_enabled = true\ninaccessible_period = \"1s\"",
        "[server.failover]\nuse_as_failover_server = true",
    ))
    .unwrap();
    assert!(
        site.warnings
            .iter()
            .any(|w| w.message.contains("shorter than three polls")),
        "{:?}",
        site.warnings
    );
}

#[test]
fn a_site_with_failover_needs_a_strong_key_and_a_beacon_group_of_its_own() {
    let protected = || {
        two_servers(
            "[server.failover]\nfailover_enabled = true",
            "[server.failover]\nuse_as_failover_server = true",
        )
    };
    let site = parse(&protected()).unwrap();
    assert!(format!("{:?}", site.site_key().unwrap()).contains("redacted"));
    assert_eq!(
        site.file.site.failover.beacon_group,
        types::DEFAULT_BEACON_GROUP
    );
    let no_key = protected().replace(&format!("key = \"{TEST_KEY}\""), "");
    let e = errors(&no_key);
    assert!(
        e.iter()
            .any(|i| i.key == "site.key" && i.fix.contains("mcrelay key")),
        "{e:?}"
    );
    // Without failover, no key is needed.
    parse(&two_servers("", "").replace(&format!("key = \"{TEST_KEY}\""), "")).unwrap();
    let short = protected().replace(TEST_KEY, "0011223344556677");
    let e = errors(&short);
    assert!(
        e.iter()
            .any(|i| i.key == "site.key" && i.message.contains("64 bits")),
        "{e:?}"
    );
    assert!(!format!("{e:?}").contains("0011223344556677"), "{e:?}");
    // A key from a file is read when it is used, and its faults named.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.key"), "abcd\n").unwrap();
    let text = protected().replace(
        &format!("key = \"{TEST_KEY}\""),
        "key = { file = \"site.key\" }",
    );
    let site = Site::parse(&text, &dir.path().join("site.toml")).unwrap();
    let err = site.site_key().unwrap_err().to_string();
    assert!(err.contains("16 bits") && !err.contains("abcd"), "{err}");
    std::fs::write(dir.path().join("site.key"), format!("{TEST_KEY}\n")).unwrap();
    assert!(site.site_key().unwrap().is_some());
    // The beacon group is a group of its own.
    for (group, says) in [
        ("239.1.1.2:7777", "server \"b\"'s multicast range"),
        ("198.18.0.7:7777", "not a multicast group"),
        ("224.0.0.5:7777", "not a multicast group"),
    ] {
        let text = format!(
            "[site.failover]\nbeacon_group = \"{group}\"\n{}",
            protected()
        );
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|i| i.key == "site.failover.beacon_group" && i.message.contains(says)),
            "{group}: {e:?}"
        );
    }
}

#[test]
fn passwords_resolve_from_inline_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "from-file\n").unwrap();
    let path = dir.path().join("site.toml");
    let text = two_servers("", "")
        .replacen("password = \"x\"", "password = { file = \"pw\" }", 1)
        .replacen(
            "password = \"x\"",
            "password = { env = \"MCRELAY_TEST_UNSET_VARIABLE\" }",
            1,
        );
    std::fs::write(&path, text).unwrap();
    let site = Site::load(&path).unwrap();
    let a = site.password(site.server("a").unwrap()).unwrap().unwrap();
    assert_eq!(a.expose(), "from-file");
    assert_eq!(format!("{a:?}"), "<redacted>");
    let err = site
        .password(site.server("b").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MCRELAY_TEST_UNSET_VARIABLE is not set"),
        "{err}"
    );
    let err =
        parse(&two_servers("", "").replacen("password = \"x\"", "password = { path = \"p\" }", 1))
            .unwrap_err();
    assert!(
        err.to_string().contains("expected a string, { file"),
        "{err}"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let err = Site::load(Path::new("/nonexistent/site.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/site.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn server_names_follow_the_segment_name_grammar() {
    for bad in ["_rec1", ".hidden", "-x", &"r".repeat(65)] {
        let text = two_servers("", "").replacen("name = \"a\"", &format!("name = {bad:?}"), 1);
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|i| i.key.ends_with(" name") && i.message.contains("server name")),
            "{bad:?}: {e:?}"
        );
    }
    let ok = two_servers("", "").replacen("name = \"a\"", "name = \"rec_1.a\"", 1);
    assert!(parse(&ok).is_ok());
}

#[test]
fn tracks_need_video_and_ports_of_their_own() {
    let ch = |id: u32, tracks: &str| {
        format!("[[server.channel]]\nid = {id}\nsource = \"rtsp://198.18.0.9/s\"\n{tracks}\n")
    };
    // Default: every track, on the default bases.
    let site = parse(&two_servers(&ch(1, ""), "")).unwrap();
    let (_, c) = site.channel(1).unwrap();
    assert_eq!(c.tracks, crate::media::TrackKind::ALL);
    // No video.
    let e = errors(&two_servers(&ch(1, "tracks = [\"audio\"]"), ""));
    assert!(
        e.iter()
            .any(|i| i.key.ends_with("tracks") && i.message.contains("video")),
        "{e:?}"
    );
    // Audio past 65535: an error naming the setting, unless audio is left out.
    let high = format!("audio_port = 65000\n{}", ch(300, ""));
    let e = errors(&two_servers(&high, ""));
    assert!(
        e.iter()
            .any(|i| i.message.contains("multicast.audio_port is 65000")),
        "{e:?}"
    );
    let video_only = format!(
        "audio_port = 65000\n{}",
        ch(300, "tracks = [\"video\", \"metadata\"]")
    );
    assert!(parse(&two_servers(&video_only, "")).is_ok());
    // Audio on a port channel 1001's video uses.
    let clash = format!("{}{}", ch(1, ""), ch(1001, "tracks = [\"video\"]"));
    let e = errors(&two_servers(&clash, ""));
    assert!(
        e.iter().any(|i| i
            .message
            .contains("channel 1001's video and channel 1's audio")
            || i.message
                .contains("channel 1's audio and channel 1001's video")),
        "{e:?}"
    );
}
