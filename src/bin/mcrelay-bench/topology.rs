//! LANs made of network namespaces, on 198.18.0.0/16: a switch (a bridge),
//! hosts each linked to it by a veth pair, every host routing multicast to
//! its LAN interface. [`Lan`]: the relay benchmarks' (a bridge with IGMP
//! snooping and a querier, as a managed switch does; a recorder host, a
//! camera host and workstation hosts). [`FailoverLan`]: the failover
//! scenario's (recorder-1, failover-1, a camera, a workstation).

use std::process::Command;

use crate::netns::Netns;

pub const RECORDER_ADDR: &str = "198.18.0.1";

/// The CPU the relay under test is pinned to. Everything the LAN does with
/// the recorder's packets after they leave it (the switch's forwarding and
/// the viewers' delivery) is steered to the other CPUs with RPS, as on a real
/// network, where the recorder never does its viewers' work.
pub const RELAY_CPU: usize = 0;
pub const CAMERA_ADDR: &str = "198.18.0.2";

pub struct Host {
    pub ns: Netns,
    /// The host's address on the LAN.
    pub addr: String,
}

pub struct Lan {
    /// Holds the bridge; the namespace (and the LAN) goes when this drops.
    _switch: Switch,
    pub recorder: Host,
    pub camera: Host,
    pub workstations: Vec<Host>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// What the switch does with multicast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bridge {
    /// A managed switch: IGMP snooping with a querier, a group forwarded
    /// only to the ports that joined it.
    Snooping,
    /// An unmanaged switch: multicast flooded to every port.
    Flooding,
}

/// A switch namespace with a bridge, to which hosts are attached.
pub struct Switch {
    pub ns: Netns,
}

impl Switch {
    pub fn new(tag: &str, bridge: Bridge) -> anyhow::Result<Switch> {
        let ns = Netns::new(tag)?;
        let snooping = match bridge {
            Bridge::Snooping => ["mcast_snooping", "1", "mcast_querier", "1"],
            Bridge::Flooding => ["mcast_snooping", "0", "mcast_querier", "0"],
        };
        let mut args = vec!["-n", &ns.name, "link", "add", "br0", "type", "bridge"];
        args.extend_from_slice(&snooping);
        ip(&args)?;
        ip(&["-n", &ns.name, "link", "set", "br0", "up"])?;
        Ok(Switch { ns })
    }

    /// A host namespace linked to the switch's `port` by a veth pair,
    /// with `addr`/16 on its end ([`LAN_IF`]) and multicast routed there.
    pub fn attach(&self, tag: &str, port: &str, addr: &str) -> anyhow::Result<Host> {
        let sw = &self.ns.name;
        let ns = Netns::new(tag)?;
        ip(&[
            "-n", sw, "link", "add", port, "type", "veth", "peer", "name", LAN_IF, "netns",
            &ns.name,
        ])?;
        ip(&["-n", sw, "link", "set", port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            LAN_IF,
        ])?;
        ip(&["-n", &ns.name, "link", "set", LAN_IF, "up"])?;
        ip(&["-n", &ns.name, "route", "add", "224.0.0.0/4", "dev", LAN_IF])?;
        // The loss probe joins every group of a 500-channel run on one
        // socket; the kernel's default allows 20 per socket.
        let status = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sysctl", "-qw"])
            .arg(format!("net.ipv4.igmp_max_memberships={MAX_GROUPS}"))
            .status();
        anyhow::ensure!(
            status.is_ok_and(|s| s.success()),
            "cannot raise net.ipv4.igmp_max_memberships in {}",
            ns.name
        );
        Ok(Host {
            ns,
            addr: addr.to_string(),
        })
    }

    /// Cuts (`up` false) or heals a port: nothing in or out of its host,
    /// as a pulled cable.
    pub fn set_port(&self, port: &str, up: bool) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.ns.name,
            "link",
            "set",
            port,
            if up { "up" } else { "down" },
        ])
    }
}

impl Lan {
    /// Builds the LAN with `workstations` workstation hosts.
    pub fn new(workstations: usize) -> anyhow::Result<Lan> {
        anyhow::ensure!(workstations <= 250, "at most 250 workstation hosts");
        let switch = Switch::new("switch", Bridge::Snooping)?;
        let sw = switch.ns.name.clone();
        let recorder = switch.attach("rec", "p-rec", RECORDER_ADDR)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus > 1 {
            let mask = ((1u64 << cpus.min(63)) - 1) & !(1 << RELAY_CPU);
            let status = Command::new("ip")
                .args(["netns", "exec", &sw, "sh", "-c"])
                .arg(format!(
                    "echo {mask:x} > /sys/class/net/p-rec/queues/rx-0/rps_cpus"
                ))
                .status();
            anyhow::ensure!(
                status.is_ok_and(|s| s.success()),
                "cannot set RPS on the switch port"
            );
        }
        // Like a NIC without UDP segmentation offload: the kernel cuts GSO
        // datagrams into wire packets before the link, so the link counters
        // count packets and headers as they would appear on the wire (the
        // sender still makes one system call per run of packets).
        let status = Command::new("ip")
            .args([
                "netns",
                "exec",
                &recorder.ns.name,
                "ethtool",
                "-K",
                LAN_IF,
                "tx-udp-segmentation",
                "off",
            ])
            .status();
        anyhow::ensure!(
            status.is_ok_and(|s| s.success()),
            "ethtool -K {LAN_IF} tx-udp-segmentation off failed (Debian package ethtool)"
        );
        let camera = switch.attach("cam", "p-cam", CAMERA_ADDR)?;
        let workstations = (1..=workstations)
            .map(|i| {
                switch.attach(
                    &format!("ws{i}"),
                    &format!("p-ws{i}"),
                    &format!("198.18.1.{i}"),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Lan {
            _switch: switch,
            recorder,
            camera,
            workstations,
        })
    }
}

/// The failover scenario's LAN, as the LAN failover tests build it: a camera
/// host, a protected recorder (recorder-1), a failover server (failover-1)
/// and a workstation on an unmanaged switch (flooding: a healed recorder
/// hears the standby on its group at once, without waiting for a querier
/// to ask for its membership again); for the etcd controller, one host per
/// etcd member on the same switch, as `tests/failover_on_etcd.rs` has them.
pub struct FailoverLan {
    switch: Switch,
    pub recorder: Host,
    pub failover: Host,
    pub camera: Host,
    pub workstation: Host,
    /// The etcd members' hosts, named as [`FAILOVER_ETCD`]; empty for the
    /// embedded controller. Read by the etcd cluster, which exists only
    /// with the `etcd` feature.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub etcd: Vec<Host>,
}

pub const FAILOVER_RECORDER_ADDR: &str = "198.18.0.1";
pub const FAILOVER_STANDBY_ADDR: &str = "198.18.0.2";
pub const FAILOVER_CAMERA_ADDR: &str = "198.18.0.10";
pub const FAILOVER_WORKSTATION_ADDR: &str = "198.18.1.1";
/// The etcd members (name, address): each on a host of its own.
pub const FAILOVER_ETCD: [(&str, &str); 3] = [
    ("e1", "198.18.0.21"),
    ("e2", "198.18.0.22"),
    ("e3", "198.18.0.23"),
];
/// recorder-1's port on the switch.
const RECORDER_PORT: &str = "p-rec1";

impl FailoverLan {
    /// `tag` keeps the namespaces of two LANs apart (`fok`, `foc`, ...);
    /// `etcd`: with the hosts of [`FAILOVER_ETCD`].
    pub fn new(tag: &str, etcd: bool) -> anyhow::Result<FailoverLan> {
        let switch = Switch::new(&format!("{tag}-sw"), Bridge::Flooding)?;
        let recorder = switch.attach(
            &format!("{tag}-rec1"),
            RECORDER_PORT,
            FAILOVER_RECORDER_ADDR,
        )?;
        let failover = switch.attach(&format!("{tag}-fo1"), "p-fo1", FAILOVER_STANDBY_ADDR)?;
        let camera = switch.attach(&format!("{tag}-cam"), "p-cam", FAILOVER_CAMERA_ADDR)?;
        let workstation = switch.attach(&format!("{tag}-ws"), "p-ws", FAILOVER_WORKSTATION_ADDR)?;
        let etcd = if etcd {
            FAILOVER_ETCD
                .iter()
                .map(|(name, addr)| {
                    switch.attach(&format!("{tag}-{name}"), &format!("p-{name}"), addr)
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(FailoverLan {
            switch,
            recorder,
            failover,
            camera,
            workstation,
            etcd,
        })
    }

    /// Cuts or heals recorder-1's link at the switch.
    pub fn set_recorder_link(&self, up: bool) -> anyhow::Result<()> {
        self.switch.set_port(RECORDER_PORT, up)
    }
}

/// Each host's end of its veth pair to the switch. It exists only inside
/// the host namespaces this tool creates (the machine's own interfaces are
/// never touched); a name no real NIC has keeps that obvious.
pub const LAN_IF: &str = "lan0";

/// Groups one socket may join on a bench host (above the largest channel count).
const MAX_GROUPS: usize = 1024;

/// Bytes and packets a host sent on its LAN interface (the kernel's counters).
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkCounters {
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

impl Host {
    pub fn link_counters(&self) -> anyhow::Result<LinkCounters> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.ns.name,
                "-s",
                "-j",
                "link",
                "show",
                "dev",
                LAN_IF,
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "ip link show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let tx = &v[0]["stats64"]["tx"];
        Ok(LinkCounters {
            tx_bytes: tx["bytes"].as_u64().unwrap_or(0),
            tx_packets: tx["packets"].as_u64().unwrap_or(0),
        })
    }
}
