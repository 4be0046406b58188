//! A LAN made of network namespaces: a switch (a bridge with IGMP snooping
//! and a querier, as a managed switch does), a recorder host, a camera host
//! and workstation hosts, each linked to the switch by a veth pair, on
//! 198.18.0.0/16. Every host routes multicast to its LAN interface.

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
    _switch: Netns,
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

impl Lan {
    /// Builds the LAN with `workstations` workstation hosts.
    pub fn new(workstations: usize) -> anyhow::Result<Lan> {
        anyhow::ensure!(workstations <= 250, "at most 250 workstation hosts");
        let switch = Netns::new("switch")?;
        let sw = switch.name.clone();
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "1",
            "mcast_querier",
            "1",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let attach = |tag: &str, port: &str, addr: &str| -> anyhow::Result<Host> {
            let ns = Netns::new(tag)?;
            ip(&[
                "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", LAN_IF, "netns",
                &ns.name,
            ])?;
            ip(&["-n", &sw, "link", "set", port, "master", "br0", "up"])?;
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
        };
        let recorder = attach("rec", "p-rec", RECORDER_ADDR)?;
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
        let camera = attach("cam", "p-cam", CAMERA_ADDR)?;
        let workstations = (1..=workstations)
            .map(|i| {
                attach(
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
