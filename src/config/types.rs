//! The site file's types, named after the VMS server settings they model
//! (server name, description, password, protocol, multicast address,
//! failover settings, material disks).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::source::Source;
use crate::media::Codec;
use crate::media::time::TimingPolicy;

/// The whole file: every server of a site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    #[serde(default)]
    pub site: SiteInfo,
    #[serde(default, rename = "server")]
    pub servers: Vec<ServerConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteInfo {
    #[serde(default)]
    pub name: String,
    /// The site key (hex, at least 128 bits; `mcrelay key` makes one):
    /// authenticates the servers' beacons. A secret like a password
    /// (inline, `{ file = ... }` or `{ env = ... }`); no viewer gets it.
    /// Needed by a site with failover.
    #[serde(default)]
    pub key: Option<PasswordSource>,
    #[serde(default)]
    pub failover: SiteFailoverConfig,
}

/// `[site.failover]`: the controller and its timing, the same for every
/// server of the site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFailoverConfig {
    /// `embedded` (the default: servers watch each other) or `none`.
    #[serde(default = "default_controller")]
    pub controller: crate::failover::ControllerKind,
    /// How often each server asks its peers' health (default 500 ms).
    #[serde(default = "default_poll_interval", deserialize_with = "de_duration")]
    pub poll_interval: Duration,
    /// How long a restored server stays healthy before it takes its role
    /// back (default 5 min).
    #[serde(default = "default_failback_delay", deserialize_with = "de_duration")]
    pub failback_delay: Duration,
    /// etcd: the cluster's client URLs (`http://host:2379`, or `https://`
    /// with `etcd_ca_file`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// etcd: each server's lease time to live (default 10 s, at least 2 s,
    /// whole seconds). A role holder that cannot confirm its lease stops
    /// sending after half of it; a standby takes over after all of it.
    #[serde(default = "default_lease_ttl", deserialize_with = "de_duration")]
    pub lease_ttl: Duration,
    /// etcd: where the site's keys live (default `/mcrelay/<site name>/`).
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// etcd: the user for etcd's authentication, with `etcd_password`.
    #[serde(default)]
    pub etcd_user: Option<String>,
    #[serde(default)]
    pub etcd_password: Option<PasswordSource>,
    /// etcd over TLS: the CA that signed the cluster's certificates (PEM),
    /// relative to the site file.
    #[serde(default)]
    pub etcd_ca_file: Option<PathBuf>,
    /// etcd over TLS with client certificates: this server's certificate
    /// and key (PEM).
    #[serde(default)]
    pub etcd_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub etcd_key_file: Option<PathBuf>,
    /// The group and port every server sends its beacons to and the
    /// failover servers listen on (default `239.255.77.77:7777`): no
    /// viewer joins it. A source-specific group (232/8) is joined with
    /// every server's interface address as a source.
    #[serde(default = "default_beacon_group")]
    pub beacon_group: SocketAddrV4,
}

/// The default beacon group: organization-local scope (RFC 2365), far from
/// the example site's media groups.
pub const DEFAULT_BEACON_GROUP: SocketAddrV4 =
    SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 77), 7777);

fn default_beacon_group() -> SocketAddrV4 {
    DEFAULT_BEACON_GROUP
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_controller() -> crate::failover::ControllerKind {
    crate::failover::ControllerKind::Embedded
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(500)
}

fn default_failback_delay() -> Duration {
    Duration::from_secs(300)
}

impl Default for SiteFailoverConfig {
    fn default() -> Self {
        SiteFailoverConfig {
            controller: default_controller(),
            poll_interval: default_poll_interval(),
            failback_delay: default_failback_delay(),
            endpoints: Vec::new(),
            lease_ttl: default_lease_ttl(),
            key_prefix: None,
            etcd_user: None,
            etcd_password: None,
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
            beacon_group: default_beacon_group(),
        }
    }
}

impl SiteFailoverConfig {
    /// Whether any server of `servers` covers or is covered: the site
    /// then needs its key and its beacons.
    pub fn in_use(&self, servers: &[ServerConfig]) -> bool {
        self.controller != crate::failover::ControllerKind::None
            && servers
                .iter()
                .any(|s| s.failover.use_as_failover_server || s.failover.failover_enabled)
    }

    pub fn settings(&self) -> crate::failover::Settings {
        crate::failover::Settings {
            controller: self.controller,
            poll_interval: self.poll_interval,
            failback_delay: self.failback_delay,
            lease_ttl: self.lease_ttl,
        }
    }
}

/// Longest server name: it is part of every segment file name.
pub const MAX_SERVER_NAME: usize = 64;

/// The one grammar of server names, used by the site validator and by the
/// segment-name parser (a name is part of each segment's file name, so a
/// name the parser refuses would make the recorder's own files unreadable):
/// 1 to 64 ASCII letters, digits, `-`, `_` and `.`, starting with a letter
/// or a digit (never `.`, so no name is hidden or climbs a directory).
pub fn check_server_name(name: &str) -> Result<(), &'static str> {
    let first = name.bytes().next().ok_or("the server name is empty")?;
    if !first.is_ascii_alphanumeric() {
        return Err("the server name does not start with a letter or digit");
    }
    if name.len() > MAX_SERVER_NAME {
        return Err("the server name is longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("the server name has characters other than letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// One VMS server: a recorder, or a failover server in standby.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// "VMS server name": unique in the site.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Protects the control API's state-changing and material endpoints
    /// (and RTSP for workstations).
    pub password: Option<PasswordSource>,
    /// "Protocol": TCP (default) or RTP multicast.
    #[serde(default)]
    pub protocol: Protocol,
    /// Control API listen address (health, status, SDP, metrics).
    pub control: SocketAddr,
    /// "Multicast address" and how the server's channels use it.
    pub multicast: Option<MulticastConfig>,
    /// The RTSP server for workstations (multicast or TCP interleaved).
    pub rtsp: Option<RtspConfig>,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Where the server keeps where each of its RTP streams stands (SSRC,
    /// next sequence number, timestamp), so that a restarted server
    /// continues its streams and joined workstations keep decoding.
    /// Default: `mcrelay-state/<server name>` beside the site file.
    pub state_dir: Option<PathBuf>,
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Workstations pull each stream over TCP (the VMS default).
    #[default]
    Tcp,
    /// Each channel is sent to the LAN once, on the server's multicast group.
    RtpMulticast,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MulticastConfig {
    /// The server's multicast address (first of its range when `groups` > 1).
    pub address: Ipv4Addr,
    /// Base UDP port: with one group, channel n uses port + 2n (RTCP + 1).
    pub port: u16,
    /// Local IPv4 address of the interface to send on (IP_MULTICAST_IF).
    pub interface: Ipv4Addr,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Deliver the server's own multicast to local receivers too.
    #[serde(default = "default_true", rename = "loop")]
    pub loopback: bool,
    /// 1 (default): all channels share the server's group. N > 1: one group
    /// per channel, from address to address + N - 1 (channel id modulo N).
    #[serde(default = "default_groups")]
    pub groups: u32,
    /// Where a channel's audio goes: its video destination with the port
    /// moved by `audio_port - port`. Default: `port + 2000` with one group
    /// (room for channel ids below 1000), `port + 2` with one group per
    /// channel.
    pub audio_port: Option<u16>,
    /// The same for ONVIF metadata. Default: `port + 4000` with one group,
    /// `port + 4` with one group per channel.
    pub metadata_port: Option<u16>,
}

impl MulticastConfig {
    /// The base port of a kind of track (video: `port`), past 65535 when
    /// the default does not fit.
    pub fn track_port(&self, kind: crate::media::TrackKind) -> u32 {
        use crate::media::TrackKind;
        let step = if self.groups > 1 { 2 } else { 2000 };
        let port = u32::from(self.port);
        match kind {
            TrackKind::Video => port,
            TrackKind::Audio => self.audio_port.map_or(port + step, u32::from),
            TrackKind::Metadata => self.metadata_port.map_or(port + 2 * step, u32::from),
        }
    }
}

fn default_ttl() -> u32 {
    16
}
fn default_true() -> bool {
    true
}
fn default_groups() -> u32 {
    1
}

/// The RTSP server workstations use to discover channels and, without
/// multicast, to receive them over TCP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtspConfig {
    /// Listen address, e.g. "0.0.0.0:554".
    pub listen: SocketAddr,
    /// User name for the server password (Digest authentication).
    #[serde(default = "default_rtsp_user")]
    pub user: String,
    /// Also accept Basic authentication (the password crosses the network
    /// in clear text; only for clients that cannot do Digest).
    #[serde(default)]
    pub basic_auth: bool,
    /// Workstations playing over TCP, on the whole server.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Workstations playing one channel over TCP.
    #[serde(default = "default_max_clients_per_channel")]
    pub max_clients_per_channel: usize,
    /// A TCP client whose socket accepts nothing for this long is dropped.
    #[serde(default = "default_client_stall", deserialize_with = "de_duration")]
    pub stall_timeout: Duration,
    /// A session without requests for this long expires (TCP sessions live
    /// while their connection does).
    #[serde(default = "default_session_timeout", deserialize_with = "de_duration")]
    pub session_timeout: Duration,
    /// A connection without a session and without requests is closed after this.
    #[serde(default = "default_idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// A connection must authenticate within this of connecting (with a
    /// server password), or it is closed.
    #[serde(default = "default_auth_timeout", deserialize_with = "de_duration")]
    pub auth_timeout: Duration,
    /// Connections not yet authenticated: a pool of their own, so that
    /// connections that never authenticate cannot take workstations'
    /// places; when it is full, a new connection closes the oldest one.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Largest request (headers and body), bytes.
    #[serde(default = "default_max_request")]
    pub max_request_bytes: usize,
    /// Most header lines in a request.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Kernel send buffer of each TCP client's socket, bytes: with the
    /// channel's ring, all a slow client can hold up (512 KiB is one second
    /// of a 4 Mbit/s camera).
    #[serde(default = "default_send_buffer")]
    pub send_buffer: usize,
    /// How a new TCP client gets the frames cached since the last key frame.
    #[serde(default)]
    pub catch_up: CatchUpPolicy,
}

/// A client quirk policy: how the frames a new TCP client starts with (the
/// cached GOP, already old) are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUpPolicy {
    /// `paced` for clients that say they are GStreamer (whose jitter buffer
    /// times frames by arrival and stamps a burst alike), `burst` for the
    /// rest (ffmpeg, VLC/live555 time frames by their RTP timestamps).
    #[default]
    Auto,
    /// The key frame at once, the rest at a bounded speed-up: every client
    /// starts clean, one that joins late in a long GOP is live later.
    Paced,
    /// Everything cached at once: live soonest.
    Burst,
}

fn default_send_buffer() -> usize {
    512 * 1024
}

fn default_rtsp_user() -> String {
    "admin".to_string()
}
fn default_max_clients() -> usize {
    200
}
fn default_max_clients_per_channel() -> usize {
    50
}
fn default_client_stall() -> Duration {
    Duration::from_secs(5)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_auth_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_unauthenticated() -> usize {
    64
}
fn default_max_request() -> usize {
    16 * 1024
}
fn default_max_headers() -> usize {
    64
}

impl RtspConfig {
    /// Defaults for a listen address (the camera simulator, tests).
    pub fn new(listen: SocketAddr) -> Self {
        RtspConfig {
            listen,
            user: default_rtsp_user(),
            basic_auth: false,
            max_clients: default_max_clients(),
            max_clients_per_channel: default_max_clients_per_channel(),
            stall_timeout: default_client_stall(),
            session_timeout: default_session_timeout(),
            idle_timeout: default_idle_timeout(),
            auth_timeout: default_auth_timeout(),
            max_unauthenticated: default_max_unauthenticated(),
            max_request_bytes: default_max_request(),
            max_headers: default_max_headers(),
            send_buffer: default_send_buffer(),
            catch_up: CatchUpPolicy::default(),
        }
    }
}

/// "VMS server failover settings".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// "Use as a failover VMS server": a standby that takes over the duties
    /// of a broken server.
    #[serde(default)]
    pub use_as_failover_server: bool,
    /// "VMS Server failover is enabled for this VMS server": this server's
    /// role moves to a failover server when it breaks.
    #[serde(default)]
    pub failover_enabled: bool,
    /// Inaccessible for longer than this means broken (the seed's example: 2 hours).
    #[serde(default = "default_inaccessible", deserialize_with = "de_duration")]
    pub inaccessible_period: Duration,
    /// "Delay failover to prevent data loss" ("Wait for the recorder to
    /// apply settings"): a restored server copies only missing material
    /// before taking its role back.
    #[serde(default)]
    pub delay_failover: bool,
    /// "Use automatic failback".
    #[serde(default)]
    pub automatic_failback: bool,
    /// "Use automatic material copying".
    #[serde(default)]
    pub automatic_material_copying: bool,
}

fn default_inaccessible() -> Duration {
    Duration::from_secs(2 * 3600)
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            use_as_failover_server: false,
            failover_enabled: false,
            inaccessible_period: default_inaccessible(),
            delay_failover: false,
            automatic_failback: false,
            automatic_material_copying: false,
        }
    }
}

/// The server's material disks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub disks: Vec<PathBuf>,
    /// Record the channels this server emits (when it has disks).
    #[serde(default = "default_true")]
    pub record: bool,
    /// Length of a material segment; segments rotate at the first key frame
    /// after it.
    #[serde(default = "default_segment", deserialize_with = "de_duration")]
    pub segment: Duration,
    /// Material older than this is deleted (none: kept until space runs out).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub retention: Option<Duration>,
    /// Oldest material is deleted to keep each disk's usage below this
    /// percentage; a disk that stays above it is full.
    #[serde(default = "default_max_usage")]
    pub max_usage_percent: u8,
    /// Frames queued per disk for its writer, MiB: a disk that falls this
    /// far behind loses frames (counted), never holds up the camera.
    #[serde(default = "default_write_buffer_mb")]
    pub write_buffer_mb: u32,
}

fn default_write_buffer_mb() -> u32 {
    64
}

impl StorageConfig {
    /// The material disk layout, by disk name (the seed's "same drive
    /// letters"): a failover server covers only servers with the same one.
    pub fn layout(&self) -> Vec<String> {
        self.disks
            .iter()
            .map(|d| {
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            disks: Vec::new(),
            record: true,
            segment: default_segment(),
            retention: None,
            max_usage_percent: default_max_usage(),
            write_buffer_mb: default_write_buffer_mb(),
        }
    }
}

fn default_segment() -> Duration {
    Duration::from_secs(60)
}
fn default_max_usage() -> u8 {
    90
}

/// How the server talks to its cameras.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// A camera that delivers no picture for this long is reconnected.
    #[serde(default = "default_stall", deserialize_with = "de_duration")]
    pub stall_timeout: Duration,
    /// First reconnect delay; doubles per failure up to `reconnect_max`.
    #[serde(default = "default_reconnect_min", deserialize_with = "de_duration")]
    pub reconnect_min: Duration,
    #[serde(default = "default_reconnect_max", deserialize_with = "de_duration")]
    pub reconnect_max: Duration,
    /// Largest RTP payload in bytes (the packetizer's MTU).
    #[serde(default = "default_payload_size")]
    pub payload_size: usize,
}

fn default_stall() -> Duration {
    Duration::from_secs(10)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
fn default_payload_size() -> usize {
    crate::rtp::packetizer::DEFAULT_MAX_PAYLOAD
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            stall_timeout: default_stall(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            payload_size: default_payload_size(),
        }
    }
}

/// One camera channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Unique in the site: a failover server may carry several servers' channels.
    pub id: u32,
    #[serde(default)]
    pub name: String,
    /// `rtsp://[user:pass@]host[:port]/path`, `tcp://host:port` (connect and
    /// read raw Annex-B) or `tcp-listen://addr:port` (accept an encoder that
    /// pushes raw Annex-B).
    pub source: Source,
    /// Required for raw Annex-B sources; learned from the camera for RTSP.
    pub codec: Option<Codec>,
    /// Timestamps of raw Annex-B sources: "auto", "arrival" or a frame rate.
    #[serde(default)]
    pub timing: Timing,
    /// `tcp-listen://` sources: the encoders allowed to connect, as
    /// addresses or networks ("198.18.0.5", "198.18.0.0/24"). Empty: any.
    #[serde(default)]
    pub allow: Vec<Allowed>,
    /// The camera's tracks to relay, record and serve: "video" (required),
    /// "audio", "metadata". Default: all. Leave "audio" out for a camera
    /// whose sound must not leave the recorder.
    #[serde(default = "all_tracks")]
    pub tracks: Vec<crate::media::TrackKind>,
}

fn all_tracks() -> Vec<crate::media::TrackKind> {
    crate::media::TrackKind::ALL.to_vec()
}

/// An address or network an encoder may connect from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed(pub ipnet::IpNet);

impl Allowed {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl<'de> Deserialize<'de> for Allowed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let net = s
            .parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "{s:?} is not an address or network, e.g. \"198.18.0.5\" or \"198.18.0.0/24\""
                ))
            })?;
        Ok(Allowed(net))
    }
}

/// The site file's spelling of [`TimingPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timing(pub TimingPolicy);

impl<'de> Deserialize<'de> for Timing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Fps(f64),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected \"auto\", \"arrival\" or a frame rate such as 25")
        })? {
            Raw::Name(s) if s == "auto" => Ok(Timing(TimingPolicy::Auto)),
            Raw::Name(s) if s == "arrival" => Ok(Timing(TimingPolicy::Arrival)),
            Raw::Fps(f) if f > 0.0 && f <= 1000.0 => Ok(Timing(TimingPolicy::Fps(f))),
            _ => Err(serde::de::Error::custom(
                "expected \"auto\", \"arrival\" or a frame rate between 0 and 1000",
            )),
        }
    }
}

/// Where a secret comes from: inline, a file, or an environment variable.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordSource {
    Inline(String),
    File(PathBuf),
    Env(String),
}

impl std::fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            PasswordSource::File(p) => write!(f, "File({p:?})"),
            PasswordSource::Env(v) => write!(f, "Env({v:?})"),
        }
    }
}

impl<'de> Deserialize<'de> for PasswordSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reference {
            file: Option<PathBuf>,
            env: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Inline(String),
            Reference(Reference),
        }
        const EXPECTED: &str = "expected a string, { file = \"path\" } or { env = \"VARIABLE\" }";
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom(EXPECTED))? {
            Raw::Inline(s) => Ok(PasswordSource::Inline(s)),
            Raw::Reference(Reference {
                file: Some(f),
                env: None,
            }) => Ok(PasswordSource::File(f)),
            Raw::Reference(Reference {
                file: None,
                env: Some(v),
            }) => Ok(PasswordSource::Env(v)),
            Raw::Reference(_) => Err(serde::de::Error::custom(EXPECTED)),
        }
    }
}

/// A resolved secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Parses durations such as "500ms", "30s", "5m", "2h", "1d" or "1h30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!(
            "{s:?} is not a duration: write e.g. \"500ms\", \"30s\", \"5m\", \"2h\" or \"1h30m\""
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86400),
            _ => return Err(err()),
        };
        let n = u32::try_from(n).map_err(|_| err())?;
        total = total
            .checked_add(unit.checked_mul(n).ok_or_else(err)?)
            .ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "2", "h", "2 hours", "-1s", "99999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
