//! A LAN of test hosts: a switch namespace with a bridge, and one
//! namespace per host linked to it by a veth pair, on 198.18.0.0/16. Each
//! host routes multicast to its LAN interface. Nothing leaves the switch.

use super::{Netns, run_ip};

/// Each host's end of its veth pair (a name no real NIC has).
pub const LAN_IF: &str = "lan0";

pub struct Lan {
    pub switch: Netns,
    hosts: Vec<(String, Netns)>,
}

impl Lan {
    /// Hosts by (name, address); names are at most 8 characters.
    /// Snooping off: the bridge floods multicast to every port, as an
    /// unmanaged switch does.
    pub fn new(tag: &str, hosts: &[(&str, &str)]) -> Lan {
        Lan::with_bridge(tag, hosts, &["mcast_snooping", "0"])
    }

    /// A managed switch: IGMPv3 snooping with a querier, so that the
    /// bridge forwards a group only to the ports that joined it, and a
    /// source-specific group only from the sources they joined.
    pub fn snooping(tag: &str, hosts: &[(&str, &str)]) -> Lan {
        Lan::with_bridge(
            tag,
            hosts,
            &[
                "mcast_snooping",
                "1",
                "mcast_igmp_version",
                "3",
                "mcast_querier",
                "1",
            ],
        )
    }

    fn with_bridge(tag: &str, hosts: &[(&str, &str)], options: &[&str]) -> Lan {
        let switch = Netns::new(&format!("{tag}sw"));
        let mut args = vec!["link", "add", "br0", "type", "bridge"];
        args.extend_from_slice(options);
        switch.ip(&args);
        switch.ip(&["link", "set", "br0", "up"]);
        let hosts = hosts
            .iter()
            .map(|(name, addr)| {
                let ns = Netns::new(&format!("{tag}{name}"));
                let port = format!("p-{name}");
                run_ip(&[
                    "-n",
                    &switch.name,
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    LAN_IF,
                    "netns",
                    &ns.name,
                ]);
                switch.ip(&["link", "set", &port, "master", "br0", "up"]);
                ns.ip(&["addr", "add", &format!("{addr}/16"), "dev", LAN_IF]);
                ns.ip(&["link", "set", LAN_IF, "up", "multicast", "on"]);
                ns.ip(&["route", "del", "224.0.0.0/4", "dev", "lo"]);
                ns.ip(&["route", "add", "224.0.0.0/4", "dev", LAN_IF]);
                (name.to_string(), ns)
            })
            .collect();
        Lan { switch, hosts }
    }

    pub fn host(&self, name: &str) -> &Netns {
        &self
            .hosts
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no host {name}"))
            .1
    }

    /// Cuts (or heals) a host's link at the switch: nothing in or out.
    pub fn set_link(&self, name: &str, up: bool) {
        let port = format!("p-{name}");
        self.switch
            .ip(&["link", "set", &port, if up { "up" } else { "down" }]);
    }
}
