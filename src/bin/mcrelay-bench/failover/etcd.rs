//! The etcd cluster of an etcd run: one member per etcd host of the
//! [`FailoverLan`] (Debian's etcd-server, started by
//! `mcrelay::failover::etcd_store::testing`, as `tests/common/etcd.rs`
//! does), every member in `--initial-cluster`. Built only with the `etcd`
//! feature.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use mcrelay::failover::etcd_store::testing::{
    CLIENT_PORT, EtcdServer, Member, PEER_PORT, RaftTiming, client_url, initial_cluster,
};

use crate::topology::{FAILOVER_ETCD, FailoverLan};

/// How long a member may take to say it is healthy (a quorum elected a
/// leader): the tests' bound; it takes a second or two.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// The site's `endpoints`: every member's client URL.
pub fn endpoints() -> Vec<String> {
    members().iter().map(|(_, ip)| client_url(*ip)).collect()
}

/// The members: (name, host address) of [`FAILOVER_ETCD`].
fn members() -> Vec<(&'static str, Ipv4Addr)> {
    FAILOVER_ETCD
        .iter()
        .map(|(name, addr)| {
            let ip = addr.parse().expect("FAILOVER_ETCD holds IPv4 addresses");
            (*name, ip)
        })
        .collect()
}

/// The running members, killed (by their PIDs) on drop, before their data
/// directory goes.
pub struct Cluster {
    servers: Vec<EtcdServer>,
    _data: tempfile::TempDir,
}

impl Cluster {
    /// Starts a member on each etcd host of `lan` and waits until every
    /// one says it is healthy. Must run on a thread that outlives the
    /// cluster: the members get SIGKILL when the thread that started them
    /// ends (`PR_SET_PDEATHSIG`), so that none outlives an aborted run.
    pub fn start(lan: &FailoverLan) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            lan.etcd.len() == FAILOVER_ETCD.len(),
            "the LAN was built without its etcd hosts"
        );
        let data = tempfile::Builder::new()
            .prefix("mcrelay-bench-etcd-")
            .tempdir()?;
        let members = members();
        let initial = initial_cluster(&members);
        let mut servers = Vec::new();
        for ((name, ip), host) in members.iter().zip(&lan.etcd) {
            let ip = *ip;
            let wrapper = ["ip", "netns", "exec", host.ns.name.as_str()];
            let server = EtcdServer::start(&Member {
                name,
                wrapper: &wrapper,
                client: SocketAddr::from((ip, CLIENT_PORT)),
                peer: SocketAddr::from((ip, PEER_PORT)),
                initial_cluster: &initial,
                data_dir: &data.path().join(name),
                timing: RaftTiming::LAN,
            })
            .with_context(|| format!("start etcd {name} (Debian package etcd-server)"))?;
            servers.push(server);
        }
        let mut healthy = Vec::new();
        for ((name, _), host) in FAILOVER_ETCD.iter().zip(&lan.etcd) {
            let mut server = servers.remove(0);
            // /health is asked over TCP from the member's own namespace.
            let (server, r) = host
                .ns
                .spawn(move || {
                    let r = server.wait_healthy(HEALTHY_WITHIN);
                    (server, r)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the health check of etcd {name} panicked"))?;
            healthy.push(server);
            r.with_context(|| format!("etcd {name} in {}", host.ns.name))?;
        }
        Ok(Cluster {
            servers: healthy,
            _data: data,
        })
    }

    /// The members' PIDs, for the run's log.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(EtcdServer::pid).collect()
    }
}
