//! An etcd cluster on a [`Lan`] of test hosts: one member per host
//! namespace (Debian's etcd-server, started by
//! `mcrelay::failover::etcd_store::testing`), and the faults the failover
//! tests inject into it: a member killed (kill -9), a member partitioned
//! from the others (blackhole routes both ways), lossy and slow links
//! (what the members send lost and delayed on its way to the switch,
//! [`Impairment`]). Everything stays inside the namespaces of the LAN.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcrelay::failover::etcd_store::testing::{
    CLIENT_PORT, EtcdServer, Member, PEER_PORT, RaftTiming, client_url, health, initial_cluster,
};

use super::lan::Lan;
use super::{Netns, run_ip};

/// One member: its name, address, the namespace it runs in and the
/// process (None once killed).
pub struct EtcdMember {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ns: String,
    server: Option<EtcdServer>,
}

impl EtcdMember {
    pub fn client(&self) -> SocketAddr {
        (self.ip, CLIENT_PORT).into()
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(EtcdServer::pid)
    }
}

/// A cluster of one member per LAN host, every member in
/// `--initial-cluster`; its processes are killed on drop.
pub struct Cluster {
    pub members: Vec<EtcdMember>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a member on each of `hosts` (name, address) of `lan`, on
    /// etcd's LAN timing, and waits until every one says it is healthy (it
    /// is once a quorum runs).
    pub fn start(lan: &Lan, hosts: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(lan, hosts, RaftTiming::LAN)
    }

    /// [`Cluster::start`] on the raft timing `timing`.
    pub fn start_with(lan: &Lan, hosts: &[(&str, &str)], timing: RaftTiming) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("mcrelay-etcd-")
            .tempdir()
            .unwrap();
        let hosts: Vec<(&str, Ipv4Addr)> = hosts
            .iter()
            .map(|(n, ip)| (*n, ip.parse().unwrap()))
            .collect();
        let initial = initial_cluster(&hosts);
        let mut members = Vec::new();
        for (name, ip) in hosts {
            let ns = lan.host(name);
            let data = dir.path().join(name);
            let wrapper = ["ip", "netns", "exec", ns.name.as_str()];
            let server = EtcdServer::start(&Member {
                name,
                wrapper: &wrapper,
                client: (ip, CLIENT_PORT).into(),
                peer: (ip, PEER_PORT).into(),
                initial_cluster: &initial,
                data_dir: &data,
                timing,
            })
            .unwrap_or_else(|e| panic!("start etcd {name} (Debian package etcd-server): {e}"));
            members.push(EtcdMember {
                name: name.to_string(),
                ip,
                ns: ns.name.clone(),
                server: Some(server),
            });
        }
        for m in &mut members {
            let mut server = m.server.take().unwrap();
            // /health is asked from the member's own namespace.
            let (server, r) = lan.host(&m.name).run(move || {
                let r = server.wait_healthy(Duration::from_secs(20));
                (server, r)
            });
            r.unwrap_or_else(|e| panic!("etcd {} in {}: {e}", m.name, m.ns));
            m.server = Some(server);
        }
        Cluster { members, _dir: dir }
    }

    /// The client URLs, as a site's `endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| client_url(m.ip)).collect()
    }

    pub fn index(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("no etcd member {name}"))
    }

    /// Kill -9 of member `i`, as a crash.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.members[i].server.take() {
            s.kill();
        }
    }

    /// Member `i`'s `/v3/maintenance/status`, asked from `from`.
    pub fn status(&self, from: &Netns, i: usize) -> Option<serde_json::Value> {
        let addr = self.members[i].client();
        let body = from
            .run(move || post(addr, "/v3/maintenance/status", "{}"))
            .ok()?;
        serde_json::from_str(&body).ok()
    }

    /// Whether member `i` says it is healthy (it has a leader and serves a
    /// linearizable read), asked from `from`.
    pub fn healthy(&self, from: &Netns, i: usize) -> bool {
        let addr = self.members[i].client();
        from.run(move || health(addr).unwrap_or(false))
    }

    /// The leader as a quorum of the running members sees it (each
    /// member's status names its own id and the leader's), asked from
    /// `from`.
    pub fn leader(&self, from: &Netns) -> Option<usize> {
        let views: Vec<(usize, String, String)> = (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .filter_map(|i| {
                let st = self.status(from, i)?;
                let id = json_id(&st["header"]["member_id"])?;
                let leader = json_id(&st["leader"])?;
                Some((i, id, leader))
            })
            .collect();
        let quorum = self.members.len() / 2 + 1;
        views.iter().find_map(|(i, id, _)| {
            let votes = views.iter().filter(|(_, _, l)| l == id).count();
            (votes >= quorum).then_some(*i)
        })
    }

    /// Waits (at most `timeout`) until a quorum agrees on a leader.
    pub fn wait_leader(&self, from: &Netns, timeout: Duration) -> usize {
        let end = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader(from) {
                return l;
            }
            assert!(
                Instant::now() < end,
                "the etcd members agreed on no leader within {timeout:?}: {:?}",
                (0..self.members.len())
                    .map(|i| self.status(from, i))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Cuts member `i` off from the other members (blackhole routes both
    /// ways); clients still reach it, and it them.
    pub fn isolate(&self, i: usize) {
        self.partition(i, "add");
    }

    /// Undoes [`Cluster::isolate`].
    pub fn rejoin(&self, i: usize) {
        self.partition(i, "del");
    }

    fn partition(&self, i: usize, op: &str) {
        let me = &self.members[i];
        for (j, other) in self.members.iter().enumerate() {
            if j == i {
                continue;
            }
            route_blackhole(&me.ns, op, other.ip);
            route_blackhole(&other.ns, op, me.ip);
        }
    }

    /// What the members send is lost (each frame with probability
    /// `loss`) and delayed (`delay` ± `jitter`, uniform, so reordered), as
    /// `tc qdisc add dev lan0 root netem loss L delay D J` in each member's
    /// namespace would do ([`Impairment`]); until the result is dropped or
    /// healed.
    pub fn impair(&self, lan: &Lan, loss: f64, delay: Duration, jitter: Duration) -> Impairment {
        let hosts: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        Impairment::start(lan, &hosts, loss, delay, jitter)
    }
}

/// etcd's JSON gateway writes 64-bit ids as strings.
fn json_id(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if s != "0" => Some(s.clone()),
        serde_json::Value::Number(n) if n.as_u64() != Some(0) => Some(n.to_string()),
        _ => None,
    }
}

fn route_blackhole(ns: &str, op: &str, to: Ipv4Addr) {
    run_ip(&["-n", ns, "route", op, "blackhole", &format!("{to}/32")]);
}

/// Routes `to` nowhere in `ns`: the host can no longer talk to them (its
/// packets to them are dropped at the route lookup), and everything else
/// (multicast, other hosts) is untouched.
pub fn blackhole(ns: &Netns, to: &[Ipv4Addr]) {
    for a in to {
        route_blackhole(&ns.name, "add", *a);
    }
}

/// Undoes [`blackhole`].
pub fn unblackhole(ns: &Netns, to: &[Ipv4Addr]) {
    for a in to {
        route_blackhole(&ns.name, "del", *a);
    }
}

/// Whether a TCP connection from the calling thread's namespace to
/// `addr` opens within half a second.
pub fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A POST with a JSON body over plain HTTP/1.1, from the calling thread's
/// namespace; returns the body of a 200.
pub fn post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!("{head}\n{body}")));
    }
    // A chunked reply (Go's net/http for a body it did not size).
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        return Ok(out);
    }
    Ok(body.to_string())
}

/// netem in userspace (the kernels the tests run on may have no netem,
/// `CONFIG_NET_SCH_NETEM`): in the switch namespace, each impaired host's
/// port leaves the bridge, and a relay carries its frames to a new veth
/// pair on the bridge: what the host sends is lost or delayed on the way,
/// what it receives passes at once (as netem on the host's lan0, which
/// shapes only what leaves it). The frames travel with their virtio-net
/// headers (`PACKET_VNET_HDR`): a TCP segment the host's stack left to
/// offload (unsegmented, checksum not yet filled in) crosses the relay as
/// it is. Healed on drop: the relay stops and the port is back on the
/// bridge.
pub struct Impairment {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    switch: String,
    hosts: Vec<String>,
    /// Frames from the hosts: (relayed, lost).
    pub counts: Arc<Mutex<(u64, u64)>>,
}

const SOL_PACKET: libc::c_int = 263;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// A GSO frame of 64 KiB and its virtio-net header.
const FRAME_MAX: usize = 65536 + 64;

impl Impairment {
    fn start(
        lan: &Lan,
        hosts: &[&str],
        loss: f64,
        delay: Duration,
        jitter: Duration,
    ) -> Impairment {
        let switch = lan.switch.name.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new((0, 0)));
        let mut threads = Vec::new();
        for h in hosts {
            let (port, relay, bridged) = (format!("p-{h}"), format!("d-{h}"), format!("b-{h}"));
            run_ip(&["-n", &switch, "link", "set", "dev", &port, "nomaster"]);
            run_ip(&[
                "-n", &switch, "link", "add", &relay, "type", "veth", "peer", "name", &bridged,
            ]);
            run_ip(&[
                "-n", &switch, "link", "set", &bridged, "master", "br0", "up",
            ]);
            run_ip(&["-n", &switch, "link", "set", &relay, "up"]);
            // Sockets made in the switch namespace (bound to its links).
            let (from_host, to_host, from_bridge, to_bridge) = lan.switch.run({
                let (port, relay) = (port.clone(), relay.clone());
                move || {
                    let host = packet_socket(&port);
                    let bridge = packet_socket(&relay);
                    let (h2, b2) = (host.try_clone().unwrap(), bridge.try_clone().unwrap());
                    (host, h2, bridge, b2)
                }
            });
            let queue: Arc<Mutex<std::collections::BinaryHeap<Delayed>>> = Arc::default();
            // The host's frames: lost, or queued until due.
            threads.push(std::thread::spawn({
                let (stop, queue, counts) = (stop.clone(), queue.clone(), counts.clone());
                move || {
                    let mut buf = vec![0u8; FRAME_MAX];
                    let mut n_seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let Some(n) = recv(&from_host, &mut buf) else {
                            continue;
                        };
                        if rand::random::<f64>() < loss {
                            counts.lock().unwrap().1 += 1;
                            continue;
                        }
                        counts.lock().unwrap().0 += 1;
                        let spread = jitter.as_secs_f64() * (2.0 * rand::random::<f64>() - 1.0);
                        let wait = (delay.as_secs_f64() + spread).max(0.0);
                        n_seq += 1;
                        queue.lock().unwrap().push(Delayed {
                            due: Instant::now() + Duration::from_secs_f64(wait),
                            seq: n_seq,
                            frame: buf[..n].to_vec(),
                        });
                    }
                }
            }));
            // ... sent to the bridge when due.
            threads.push(std::thread::spawn({
                let (stop, queue) = (stop.clone(), queue.clone());
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        let mut due = Vec::new();
                        {
                            let mut q = queue.lock().unwrap();
                            while q.peek().is_some_and(|d| d.due <= now) {
                                due.push(q.pop().unwrap());
                            }
                        }
                        for d in due {
                            send(&to_bridge, &d.frame);
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }));
            // What the host receives, at once.
            threads.push(std::thread::spawn({
                let stop = stop.clone();
                move || {
                    let mut buf = vec![0u8; FRAME_MAX];
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(n) = recv(&from_bridge, &mut buf) {
                            send(&to_host, &buf[..n]);
                        }
                    }
                }
            }));
        }
        Impairment {
            stop,
            threads,
            switch,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            counts,
        }
    }

    /// Stops the relays and puts the hosts' ports back on the bridge.
    pub fn heal(self) {}
}

impl Drop for Impairment {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // No assert here: a drop while a test unwinds must not panic.
        for h in &self.hosts {
            let relay = format!("d-{h}");
            let port = format!("p-{h}");
            for args in [
                &["link", "del", relay.as_str()][..],
                &["link", "set", port.as_str(), "master", "br0", "up"][..],
            ] {
                let _ = std::process::Command::new("ip")
                    .args(["-n", self.switch.as_str()])
                    .args(args)
                    .status();
            }
        }
    }
}

/// A frame held back until `due` (the earliest first out of the heap).
struct Delayed {
    due: Instant,
    seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

/// An AF_PACKET socket on link `ifname` of the calling thread's
/// namespace: every frame it receives (not those sent on it), with its
/// virtio-net header; reads time out after 100 ms.
fn packet_socket(ifname: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: plain socket calls on a descriptor owned here.
    unsafe {
        // Protocol 0: nothing arrives before the bind picks the link.
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let one: libc::c_int = 1;
        for opt in [PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING] {
            let rc = libc::setsockopt(
                raw,
                SOL_PACKET,
                opt,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(
                rc,
                0,
                "packet option {opt}: {}",
                std::io::Error::last_os_error()
            );
        }
        let index = libc::if_nametoindex(name.as_ptr());
        assert!(index > 0, "no link {ifname}");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = index as i32;
        let rc = libc::bind(
            raw,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        assert_eq!(
            rc,
            0,
            "bind to {ifname}: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        fd
    }
}

fn recv(fd: &std::os::fd::OwnedFd, buf: &mut [u8]) -> Option<usize> {
    let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
    // SAFETY: reads into `buf`, within its length.
    let n = unsafe { libc::recv(raw, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
    (n > 0).then_some(n as usize)
}

fn send(fd: &std::os::fd::OwnedFd, frame: &[u8]) {
    let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
    // SAFETY: writes from `frame`, within its length. A frame the link
    // refuses is lost, as on a wire.
    unsafe { libc::send(raw, frame.as_ptr() as *const libc::c_void, frame.len(), 0) };
}
