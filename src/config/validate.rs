//! Validation of a whole site file, once, at start: every problem found,
//! each naming its key and the fix.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::plan::{self, group_range};
use super::source::Source;
use super::types::{PasswordSource, Protocol, RtspConfig, ServerConfig, SiteFile};
use crate::media::TrackKind;
use crate::rtp::packetizer::MIN_MAX_PAYLOAD;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a site file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    /// Where: e.g. `server "recorder-1" multicast.address`.
    pub key: String,
    pub message: String,
    pub fix: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{sev}: {}: {}; fix: {}",
            self.key, self.message, self.fix
        )
    }
}

struct Issues(Vec<Issue>);

impl Issues {
    fn error(
        &mut self,
        key: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Error, key, message, fix);
    }
    fn warn(&mut self, key: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) {
        self.push(Severity::Warning, key, message, fix);
    }
    fn push(
        &mut self,
        severity: Severity,
        key: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Issue {
            severity,
            key: key.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }
}

fn key(server: &ServerConfig, k: &str) -> String {
    format!("server {:?} {k}", server.name)
}

fn ch_key(server: &ServerConfig, id: u32, k: &str) -> String {
    format!("server {:?} channel {id} {k}", server.name)
}

/// The largest payload size: a UDP datagram carries at most 65507 bytes over
/// IPv4, minus the 12-byte RTP header.
pub const MAX_PAYLOAD_SIZE: usize = 65_507 - 12;

/// Checks everything that can be checked without the network.
pub fn validate(site: &SiteFile) -> Vec<Issue> {
    let mut out = Issues(Vec::new());
    if site.servers.is_empty() {
        out.error(
            "server",
            "the site has no servers",
            "add a [[server]] table",
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut channel_owner: HashMap<u32, &str> = HashMap::new();
    let mut listeners: HashMap<SocketAddr, String> = HashMap::new();

    let fo = &site.site.failover;
    if fo.poll_interval < Duration::from_millis(50) || fo.poll_interval > Duration::from_secs(60) {
        out.error(
            "site.failover.poll_interval",
            format!("{:?} is outside 50 ms ..= 60 s", fo.poll_interval),
            "set it such as \"500ms\" (the default)",
        );
    }
    if fo.controller == crate::failover::ControllerKind::Etcd {
        check_etcd(&mut out, site);
    }
    check_beacons(&mut out, site);
    for s in &site.servers {
        if let Err(why) = super::types::check_server_name(&s.name) {
            out.error(
                format!("server {:?} name", s.name),
                format!("{why} (a name is 1-64 letters, digits, '-', '_' and '.', starting with a letter or digit)"),
                "rename the server",
            );
        }
        if names.insert(&s.name, 0).is_some() {
            out.error(
                format!("server {:?} name", s.name),
                "two servers have this name",
                "give every server its own name",
            );
        }
        check_listener(&mut out, &mut listeners, s.control, key(s, "control"));
        if let Some(r) = &s.rtsp {
            check_listener(&mut out, &mut listeners, r.listen, key(s, "rtsp.listen"));
            check_rtsp(&mut out, s, r);
        }
        check_password(&mut out, s);
        check_multicast(&mut out, s);
        check_failover(&mut out, s, site);
        check_storage(&mut out, s);
        check_ingest(&mut out, s);

        for c in &s.channels {
            if let Some(other) = channel_owner.insert(c.id, &s.name) {
                out.error(
                    ch_key(s, c.id, "id"),
                    format!("channel id {} is also used by server {other:?}", c.id),
                    "channel ids are unique in the site (a failover server may carry both servers' channels): renumber one",
                );
            }
            if c.source.is_annexb() && c.codec.is_none() {
                out.error(
                    ch_key(s, c.id, "codec"),
                    format!(
                        "{} is a raw Annex-B stream, which does not say its codec",
                        c.source
                    ),
                    "add codec = \"h264\" or codec = \"h265\"",
                );
            }
            if let Source::TcpListen(addr) = c.source {
                check_listener(&mut out, &mut listeners, addr, ch_key(s, c.id, "source"));
                if c.allow.is_empty() {
                    out.warn(
                        ch_key(s, c.id, "allow"),
                        format!("any host that reaches {addr} can push video into this channel and its recordings"),
                        "list the encoder's address: allow = [\"198.18.0.5\"]",
                    );
                }
            } else if !c.allow.is_empty() {
                out.error(
                    ch_key(s, c.id, "allow"),
                    "allow applies only to tcp-listen:// sources",
                    "remove allow, or make the source tcp-listen://",
                );
            }
            if !c.tracks.contains(&TrackKind::Video) {
                out.error(
                    ch_key(s, c.id, "tracks"),
                    "a channel always carries its camera's video",
                    "add \"video\": tracks = [\"video\", \"audio\"]",
                );
            }
        }
    }

    check_group_overlaps(&mut out, site);
    out.0
}

/// Two listeners on one socket address (or one on the wildcard address and
/// one on a specific address, same port) cannot both bind.
fn check_listener(
    out: &mut Issues,
    seen: &mut HashMap<SocketAddr, String>,
    addr: SocketAddr,
    k: String,
) {
    for (other, other_key) in seen.iter() {
        let same_ip =
            other.ip() == addr.ip() || other.ip().is_unspecified() || addr.ip().is_unspecified();
        if other.port() == addr.port() && same_ip {
            out.error(
                k.clone(),
                format!("{addr} collides with {other_key} ({other})"),
                "use another port",
            );
        }
    }
    seen.insert(addr, k);
}

fn check_rtsp(out: &mut Issues, s: &ServerConfig, r: &RtspConfig) {
    if r.user.is_empty() || r.user.contains([':', '"']) {
        out.error(
            key(s, "rtsp.user"),
            "the user name is empty or contains ':' or '\"'",
            "use a plain name such as \"admin\"",
        );
    }
    if r.max_clients == 0 || r.max_clients_per_channel == 0 {
        out.error(
            key(s, "rtsp.max_clients"),
            "a limit of 0 refuses every workstation",
            "set max_clients and max_clients_per_channel above 0",
        );
    }
    if r.max_unauthenticated == 0 {
        out.error(
            key(s, "rtsp.max_unauthenticated"),
            "0 leaves no room for a workstation to authenticate",
            "keep the default, 64",
        );
    }
    if r.max_request_bytes < 1024 || r.max_headers < 8 {
        out.error(
            key(s, "rtsp.max_request_bytes"),
            "requests this small or with this few headers cannot carry a SETUP with authentication",
            "keep max_request_bytes >= 1024 and max_headers >= 8",
        );
    }
    for (k, d) in [
        ("stall_timeout", r.stall_timeout),
        ("session_timeout", r.session_timeout),
        ("idle_timeout", r.idle_timeout),
        ("auth_timeout", r.auth_timeout),
    ] {
        if d.is_zero() {
            out.error(
                key(s, &format!("rtsp.{k}")),
                "zero timeout",
                "set a duration such as \"10s\"",
            );
        }
    }
    if s.password.is_none() {
        out.warn(
            key(s, "rtsp"),
            "without a server password, anyone who reaches the RTSP port can watch every channel",
            "set the server's password",
        );
    }
    if r.basic_auth {
        out.warn(
            key(s, "rtsp.basic_auth"),
            "Basic authentication sends the password in clear text",
            "leave basic_auth off unless a client cannot do Digest",
        );
    }
}

fn check_password(out: &mut Issues, s: &ServerConfig) {
    match &s.password {
        None => out.warn(
            key(s, "password"),
            "no password: the control API's material and state-changing endpoints are open",
            "set password = { env = \"VARIABLE\" } or { file = \"path\" }",
        ),
        Some(PasswordSource::Inline(p)) if p.is_empty() => out.error(
            key(s, "password"),
            "the password is empty",
            "set a password or remove the key",
        ),
        Some(PasswordSource::Env(v)) if v.is_empty() => out.error(
            key(s, "password.env"),
            "empty variable name",
            "name the environment variable that holds the password",
        ),
        _ => {}
    }
}

fn check_multicast(out: &mut Issues, s: &ServerConfig) {
    let Some(mc) = &s.multicast else {
        if s.protocol == Protocol::RtpMulticast {
            out.error(
                key(s, "multicast"),
                "protocol is \"rtp-multicast\" but the server has no multicast address",
                "add a [server.multicast] table with address, port and interface",
            );
        }
        return;
    };
    let (first, last) = group_range(mc);
    let multicast = |a: u32| Ipv4Addr::from(a).is_multicast();
    if mc.groups == 0 || mc.groups > 65_536 {
        out.error(
            key(s, "multicast.groups"),
            "groups must be 1 to 65536",
            "set groups = 1 for one group per server",
        );
    } else if !multicast(first) || !multicast(last) || last.saturating_sub(first) + 1 != mc.groups {
        out.error(
            key(s, "multicast.address"),
            format!(
                "{}..{} is not all multicast (224.0.0.0/4)",
                mc.address,
                Ipv4Addr::from(last)
            ),
            "use an administratively scoped group such as 239.192.x.y",
        );
    } else if plan::is_ssm(Ipv4Addr::from(first)) != plan::is_ssm(Ipv4Addr::from(last)) {
        out.error(
            key(s, "multicast.address"),
            format!(
                "{}..{} runs across the edge of 232.0.0.0/8: some groups would be source-specific, some not",
                mc.address,
                Ipv4Addr::from(last)
            ),
            "keep the range inside 232.0.0.0/8 (SSM) or outside it",
        );
    } else if Ipv4Addr::from(first).octets()[..3] == [232, 0, 0] {
        out.error(
            key(s, "multicast.address"),
            format!("{} is in 232.0.0.0/24, reserved (RFC 4607)", mc.address),
            "use a source-specific group from 232.0.1.0 on, such as 232.1.1.1",
        );
    } else if Ipv4Addr::from(first).octets()[..3] == [224, 0, 0] {
        out.error(
            key(s, "multicast.address"),
            format!(
                "{} is in 224.0.0.0/24, reserved for local network control",
                mc.address
            ),
            "use an administratively scoped group such as 239.192.x.y",
        );
    }
    if mc.port % 2 != 0 || mc.port == 0 {
        out.error(
            key(s, "multicast.port"),
            format!(
                "{} is odd or zero; RTP uses even ports and RTCP the next odd one (RFC 3550 11)",
                mc.port
            ),
            "use an even port such as 5000",
        );
    }
    if mc.ttl == 0 || mc.ttl > 255 {
        out.error(
            key(s, "multicast.ttl"),
            format!("{} is not a TTL (1-255)", mc.ttl),
            "set ttl between 1 and 255",
        );
    }
    if mc.interface.is_unspecified() || mc.interface.is_multicast() {
        out.error(
            key(s, "multicast.interface"),
            format!("{} does not name an interface", mc.interface),
            "set the IPv4 address of the interface to send on",
        );
    }
    let mut by_group: HashMap<Ipv4Addr, u32> = HashMap::new();
    for c in &s.channels {
        match plan::destination(mc, c.id) {
            Err(e) => out.error(
                ch_key(s, c.id, "id"),
                e,
                "lower multicast.port, renumber the channel, or use one group per channel (multicast.groups)",
            ),
            Ok(d) if mc.groups > 1 => {
                if let Some(other) = by_group.insert(d.group, c.id) {
                    out.error(
                        ch_key(s, c.id, "id"),
                        format!("channels {other} and {} both map to group {} (id modulo groups = {})", c.id, d.group, mc.groups),
                        "widen multicast.groups or renumber a channel",
                    );
                }
            }
            Ok(_) => {}
        }
    }
    // Audio and metadata ports: inside the port range, and never on a port
    // (RTP or RTCP) another kind of track of this server uses in that group.
    let mut used: HashMap<(Ipv4Addr, u16), (u32, TrackKind)> = HashMap::new();
    for c in &s.channels {
        for &kind in TrackKind::ALL.iter().filter(|k| c.tracks.contains(k)) {
            let d = match plan::track_destination(mc, c.id, kind) {
                Ok(d) => d,
                // The video's own error is reported above.
                Err(_) if kind == TrackKind::Video => continue,
                Err(e) => {
                    out.error(
                        ch_key(s, c.id, "tracks"),
                        e,
                        format!("set multicast.{kind}_port lower, or leave \"{kind}\" out of the channel's tracks"),
                    );
                    continue;
                }
            };
            for port in [d.port, d.port + 1] {
                match used.insert((d.group, port), (c.id, kind)) {
                    Some((other, k)) if k != kind => {
                        out.error(
                            ch_key(s, c.id, "tracks"),
                            format!(
                                "channel {}'s {kind} and channel {other}'s {k} both use {}:{port}",
                                c.id, d.group
                            ),
                            "move multicast.audio_port / metadata_port past the video ports (port + 2 x the highest channel id + 2)",
                        );
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The site key and the beacon group, for a site with failover.
fn check_beacons(out: &mut Issues, site: &SiteFile) {
    let fo = &site.site.failover;
    if !fo.in_use(&site.servers) {
        return;
    }
    match &site.site.key {
        None => out.error(
            "site.key",
            "the site has failover and no key: the servers' beacons, which decide who emits, would be unauthenticated",
            "make one with `mcrelay key` and set key = { file = \"site.key\" } under [site]",
        ),
        Some(PasswordSource::Inline(k)) => {
            if let Err(why) = crate::failover::beacon::SiteKey::from_hex(k) {
                out.error("site.key", why, "make one with `mcrelay key`");
            }
        }
        Some(_) => {}
    }
    let g = *fo.beacon_group.ip();
    if !g.is_multicast() || g.octets()[0] == 224 && g.octets()[1] == 0 && g.octets()[2] == 0 {
        out.error(
            "site.failover.beacon_group",
            format!(
                "{g} is not a multicast group a site may use (224.0.0.0/24 is link-local control)"
            ),
            "choose one in 239.0.0.0/8 (or 232.0.0.0/8 for a source-specific site)",
        );
    }
    if fo.beacon_group.port() == 0 {
        out.error(
            "site.failover.beacon_group",
            "port 0",
            "give it a port, such as 7777",
        );
    }
    let b = u32::from(g);
    for s in &site.servers {
        let Some(mc) = &s.multicast else { continue };
        let (lo, hi) = group_range(mc);
        if (lo..=hi).contains(&b) {
            out.error(
                "site.failover.beacon_group",
                format!(
                    "{g} is in server {:?}'s multicast range {}..{}: viewers of its channels would receive the beacons",
                    s.name,
                    Ipv4Addr::from(lo),
                    Ipv4Addr::from(hi)
                ),
                "give the beacons a group of their own",
            );
        }
    }
}

/// The seed: "Each multicast address needs to be separate".
fn check_group_overlaps(out: &mut Issues, site: &SiteFile) {
    let ranges: Vec<(&ServerConfig, (u32, u32))> = site
        .servers
        .iter()
        .filter_map(|s| s.multicast.as_ref().map(|mc| (s, group_range(mc))))
        .collect();
    for (i, (a, (a0, a1))) in ranges.iter().enumerate() {
        for (b, (b0, b1)) in &ranges[..i] {
            if a0 <= b1 && b0 <= a1 {
                out.error(
                    key(a, "multicast.address"),
                    format!(
                        "{}..{} overlaps server {:?}'s {}..{}; each server's multicast address must be separate",
                        Ipv4Addr::from(*a0),
                        Ipv4Addr::from(*a1),
                        b.name,
                        Ipv4Addr::from(*b0),
                        Ipv4Addr::from(*b1)
                    ),
                    "give each server its own multicast address (or range)",
                );
            }
        }
    }
}

fn check_failover(out: &mut Issues, s: &ServerConfig, site: &SiteFile) {
    let f = &s.failover;
    // A receiver of a source-specific group hears only the sources it
    // joined: the ones the owner's SDP lists, which are the interfaces of
    // the failover servers that may cover it.
    let ssm_owner = s
        .multicast
        .as_ref()
        .filter(|m| plan::is_ssm(m.address) && s.protocol == Protocol::RtpMulticast);
    if let (Some(mc), true) = (ssm_owner, f.failover_enabled) {
        for o in site
            .servers
            .iter()
            .filter(|o| o.failover.use_as_failover_server && o.multicast.is_none())
        {
            out.error(
                key(o, "multicast"),
                format!(
                    "may cover server {:?}, whose group {} is source-specific, but has no multicast interface: workstations joined by source would never hear it",
                    s.name, mc.address
                ),
                "add a [server.multicast] table with this server's interface (its address and port are its own)",
            );
        }
    }
    if f.use_as_failover_server {
        if !s.channels.is_empty() {
            out.error(
                key(s, "channel"),
                "a failover server in standby has no channels of its own; it takes over broken servers' channels",
                "move the channels to a recorder, or set failover.use_as_failover_server = false",
            );
        }
        if f.failover_enabled {
            out.error(
                key(s, "failover.failover_enabled"),
                "a failover server cannot itself be under failover protection",
                "set failover_enabled = false on the failover server",
            );
        }
    }
    if f.inaccessible_period.is_zero() {
        out.error(
            key(s, "failover.inaccessible_period"),
            "a zero period would declare the server broken at its first missed heartbeat",
            "set a period such as \"2h\"",
        );
    }
    if f.failover_enabled {
        let standbys: Vec<&ServerConfig> = site
            .servers
            .iter()
            .filter(|o| o.failover.use_as_failover_server)
            .collect();
        if standbys.is_empty() {
            out.warn(
                key(s, "failover.failover_enabled"),
                "no server in the site is a failover server, so nothing can take over",
                "add a server with failover.use_as_failover_server = true",
            );
        } else if !standbys
            .iter()
            .any(|o| o.storage.layout() == s.storage.layout())
        {
            out.warn(
                key(s, "storage.disks"),
                "no failover server has the same material disk layout (disks of the same names), so a takeover will be refused",
                "give a failover server disks of the same names, in the same order",
            );
        }
        let poll = site.site.failover.poll_interval;
        if f.inaccessible_period < poll * 3 {
            out.warn(
                key(s, "failover.inaccessible_period"),
                format!("shorter than three polls ({poll:?} each): one lost answer would count as a failure"),
                "make the period longer, or site.failover.poll_interval shorter",
            );
        }
    }
    if (f.delay_failover || f.automatic_material_copying) && !f.failover_enabled {
        out.warn(
            key(s, "failover"),
            "delay_failover and automatic_material_copying act only when failover_enabled = true",
            "enable failover for this server or drop those keys",
        );
    }
}

/// `[site.failover]` with `controller = "etcd"`.
fn check_etcd(out: &mut Issues, site: &SiteFile) {
    let fo = &site.site.failover;
    let k = |name: &str| format!("site.failover.{name}");
    if !cfg!(feature = "etcd") {
        out.error(
            k("controller"),
            "this mcrelay was built without the etcd controller",
            "build it with `cargo build --release --features etcd` (needs protoc: Debian's protobuf-compiler), or choose controller = \"embedded\"",
        );
    }
    if fo.endpoints.is_empty() {
        out.error(
            k("endpoints"),
            "the etcd controller needs the cluster's client URLs",
            "set endpoints = [\"http://etcd-1:2379\", ...] (every member of the cluster)",
        );
    }
    let mut https = false;
    for e in &fo.endpoints {
        match url::Url::parse(e) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                https |= u.scheme() == "https";
                if !u.username().is_empty() || u.password().is_some() {
                    out.error(
                        k("endpoints"),
                        "an endpoint carries credentials in its URL",
                        "remove them from the URL and set etcd_user and etcd_password",
                    );
                }
            }
            _ => out.error(
                k("endpoints"),
                format!(
                    "{:?} is not an http:// or https:// URL with a host",
                    super::source::redact_credentials(e)
                ),
                "write each endpoint as http://host:2379 or https://host:2379",
            ),
        }
    }
    if https && fo.etcd_ca_file.is_none() {
        out.error(
            k("etcd_ca_file"),
            "https endpoints need the CA that signed the cluster's certificates",
            "set etcd_ca_file to its PEM file",
        );
    }
    if !https && (fo.etcd_ca_file.is_some() || fo.etcd_cert_file.is_some()) {
        out.warn(
            k("endpoints"),
            "TLS files are set but every endpoint is http://: they are not used",
            "write the endpoints as https://",
        );
    }
    if fo.etcd_cert_file.is_some() != fo.etcd_key_file.is_some() {
        out.error(
            k("etcd_cert_file"),
            "a client certificate needs its key, and a key its certificate",
            "set both etcd_cert_file and etcd_key_file, or neither",
        );
    }
    if fo.etcd_user.is_some() != fo.etcd_password.is_some() {
        out.error(
            k("etcd_user"),
            "etcd's authentication needs both a user and a password",
            "set both etcd_user and etcd_password, or neither",
        );
    }
    let ttl = fo.lease_ttl;
    if ttl < Duration::from_secs(2) || ttl > Duration::from_secs(300) || ttl.subsec_nanos() != 0 {
        out.error(
            k("lease_ttl"),
            format!("{ttl:?} is not a whole number of seconds in 2 s ..= 300 s (etcd's leases count whole seconds)"),
            "set it such as \"10s\" (the default)",
        );
    }
    if fo.poll_interval * 2 > ttl {
        out.warn(
            k("poll_interval"),
            format!("longer than half the lease time to live ({ttl:?}): roles move slower than the leases"),
            "make poll_interval shorter or lease_ttl longer",
        );
    }
    if let Some(p) = &fo.key_prefix
        && (!p.starts_with('/') || p.len() < 2)
    {
        out.error(
            k("key_prefix"),
            format!("{p:?} does not start with '/' or is only '/'"),
            "set it such as \"/mcrelay/site-a/\"",
        );
    }
    for s in site.servers.iter().filter(|s| s.failover.failover_enabled) {
        if s.failover.inaccessible_period < ttl {
            out.warn(
                key(s, "failover.inaccessible_period"),
                format!(
                    "shorter than site.failover.lease_ttl ({ttl:?}): a standby takes over only once the lease expired, so after {ttl:?}"
                ),
                "make the period at least lease_ttl, or lease_ttl shorter",
            );
        }
    }
}

fn check_storage(out: &mut Issues, s: &ServerConfig) {
    let st = &s.storage;
    if !(Duration::from_secs(2)..=Duration::from_secs(3600)).contains(&st.segment) {
        out.error(
            key(s, "storage.segment"),
            format!("{:?} is outside 2s..1h", st.segment),
            "segments of a minute or so suit copying and retention",
        );
    }
    if !(10..=99).contains(&st.max_usage_percent) {
        out.error(
            key(s, "storage.max_usage_percent"),
            format!("{} is outside 10..99", st.max_usage_percent),
            "leave the file system some room, e.g. 90",
        );
    }
    if !(1..=4096).contains(&st.write_buffer_mb) {
        out.error(
            key(s, "storage.write_buffer_mb"),
            format!("{} is outside 1..4096", st.write_buffer_mb),
            "64 (MiB) rides out a disk stall of minutes at a few cameras' bitrate",
        );
    }
    if st.retention.is_some_and(|r| r < st.segment) {
        out.error(
            key(s, "storage.retention"),
            "retention is shorter than one segment".to_string(),
            "keep material at least one segment long, e.g. \"30d\"",
        );
    }
    let mut seen = std::collections::HashSet::new();
    for d in &s.storage.disks {
        if !d.is_absolute() {
            out.error(
                key(s, "storage.disks"),
                format!("{} is not an absolute path", d.display()),
                "write each material disk as an absolute path",
            );
        }
        if !seen.insert(d) {
            out.error(
                key(s, "storage.disks"),
                format!("{} is listed twice", d.display()),
                "list each material disk once",
            );
        }
    }
}

fn check_ingest(out: &mut Issues, s: &ServerConfig) {
    let i = &s.ingest;
    if !(MIN_MAX_PAYLOAD..=MAX_PAYLOAD_SIZE).contains(&i.payload_size) {
        out.error(
            key(s, "ingest.payload_size"),
            format!(
                "{} is outside {MIN_MAX_PAYLOAD}..={MAX_PAYLOAD_SIZE}",
                i.payload_size
            ),
            "use 1400 (fits a 1500-byte Ethernet MTU)",
        );
    } else if i.payload_size > 1472 - 12 {
        out.warn(
            key(s, "ingest.payload_size"),
            format!("{} bytes of payload make IP packets larger than a 1500-byte Ethernet MTU; they will fragment", i.payload_size),
            "use 1400 unless every link has jumbo frames",
        );
    }
    if i.reconnect_min.is_zero() || i.reconnect_min > i.reconnect_max {
        out.error(
            key(s, "ingest.reconnect_min"),
            "reconnect_min must be above zero and at most reconnect_max",
            "e.g. reconnect_min = \"500ms\", reconnect_max = \"30s\"",
        );
    }
    if i.stall_timeout.is_zero() {
        out.error(
            key(s, "ingest.stall_timeout"),
            "zero stall timeout",
            "set e.g. \"10s\"",
        );
    }
}
