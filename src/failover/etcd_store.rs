//! Carries out the etcd controller's operations ([`super::etcd::Op`]) on a
//! real etcd cluster with `etcd-client`, and reads its outcomes back
//! ([`super::etcd::Outcome`]) with the times they were sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp,
};

use super::etcd::{
    LeaseId, Op, OpKind, Outcome, RoleKey, RoleValue, Snapshot, keep_alive_limit, keys,
};
use super::{Report, Settings};
use crate::config::Site;

/// How to reach the cluster.
#[derive(Clone, Default)]
pub struct Connection {
    pub endpoints: Vec<String>,
    pub user: Option<(String, crate::config::Secret)>,
    /// PEM: the CA, and this server's certificate and key.
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("tls", &self.ca.is_some())
            .finish()
    }
}

impl Connection {
    /// The site's etcd settings, with the secrets and TLS files read.
    pub fn of_site(site: &Site) -> Result<Connection, String> {
        let fo = &site.file.site.failover;
        let read = |p: &std::path::Path, what: &str| {
            let full = site.relative(p);
            std::fs::read(&full)
                .map_err(|e| format!("cannot read site.failover.{what} {}: {e}", full.display()))
        };
        let user = match (
            &fo.etcd_user,
            site.etcd_password().map_err(|e| e.to_string())?,
        ) {
            (Some(u), Some(p)) => Some((u.clone(), p)),
            _ => None,
        };
        let ca = fo
            .etcd_ca_file
            .as_deref()
            .map(|p| read(p, "etcd_ca_file"))
            .transpose()?;
        let identity = match (&fo.etcd_cert_file, &fo.etcd_key_file) {
            (Some(c), Some(k)) => Some((read(c, "etcd_cert_file")?, read(k, "etcd_key_file")?)),
            _ => None,
        };
        Ok(Connection {
            endpoints: fo.endpoints.clone(),
            user,
            ca,
            identity,
        })
    }

    fn options(&self, timeout: Duration) -> ConnectOptions {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(2), timeout)
            // A member without a leader (a minority, an election) answers
            // at once with an error, instead of holding the request.
            .with_require_leader(true);
        if let Some((u, p)) = &self.user {
            o = o.with_user(u.clone(), p.expose().to_string());
        }
        if let Some(ca) = &self.ca {
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            o = o.with_tls(tls);
        }
        o
    }
}

/// A keep-alive stream: its lease, its two ends.
type Keeper = (LeaseId, LeaseKeeper, LeaseKeepAliveStream);

/// One server's handle on the cluster. Cheap to clone: the operations of
/// one server run side by side (a slow read never holds up a keep-alive).
///
/// Each endpoint has a client of its own, connected when first used, and
/// every operation goes to the current one; an operation that fails or
/// times out moves the next ones to the next endpoint. A member cut off
/// from the others (a minority) or one that died is left within one
/// operation's timeout, whatever the client library's own balancing would
/// pick. Keep-alives go to every endpoint at once, each on its own stream,
/// and the first answer counts: a slow, lossy or leaderless member never
/// holds up the confirmation the fence waits for.
#[derive(Clone)]
pub struct Store {
    clients: Arc<Vec<tokio::sync::Mutex<Option<Client>>>>,
    conn: Arc<Connection>,
    current: Arc<AtomicUsize>,
    prefix: String,
    me: String,
    ttl: Duration,
    /// Each endpoint's keep-alive stream of the current lease.
    keepers: Arc<Vec<tokio::sync::Mutex<Option<Keeper>>>>,
}

impl Store {
    /// Server `me`'s handle on the cluster (nothing is connected yet). The
    /// keys live under `prefix` (ending in `/`).
    pub fn new(conn: &Connection, prefix: &str, me: &str, settings: &Settings) -> Store {
        Store {
            clients: Arc::new(
                conn.endpoints
                    .iter()
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
            ),
            conn: Arc::new(conn.clone()),
            current: Arc::default(),
            prefix: prefix.to_string(),
            me: me.to_string(),
            ttl: settings.lease_ttl,
            keepers: Arc::new(
                conn.endpoints
                    .iter()
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
            ),
        }
    }

    /// The current endpoint and its client ([`Store::client_at`]); a
    /// failure moves the next operations to the next endpoint.
    async fn client(&self, limit: Duration) -> Result<(usize, Client), String> {
        let n = self.clients.len();
        if n == 0 {
            return Err("no etcd endpoints".into());
        }
        let i = self.current.load(Ordering::Relaxed) % n;
        match self.client_at(i, limit).await {
            Ok(c) => Ok((i, c)),
            Err(e) => {
                self.next_after(i);
                Err(e)
            }
        }
    }

    /// Endpoint `i`'s client, connected now (within `limit`) if it is not
    /// yet.
    async fn client_at(&self, i: usize, limit: Duration) -> Result<Client, String> {
        let mut slot = self.clients[i].lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let endpoint = &self.conn.endpoints[i];
        let connect = Client::connect([endpoint], Some(self.conn.options(self.ttl / 2)));
        let c = match tokio::time::timeout(limit, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("cannot connect to etcd at {endpoint}: {e}")),
            Err(_) => {
                return Err(format!(
                    "no connection to etcd at {endpoint} within {limit:?}"
                ));
            }
        };
        *slot = Some(c.clone());
        Ok(c)
    }

    /// One keep-alive of `lease` on every endpoint at once, sent at
    /// `sent_at`: the first answer (alive or not: every member forwards a
    /// keep-alive to the leader, which decides), or the failures of all.
    async fn keep_alive_everywhere(
        &self,
        lease: LeaseId,
        sent_at: Instant,
        limit: Duration,
    ) -> Outcome {
        let n = self.clients.len();
        if n == 0 {
            return failed(OpKind::KeepAlive, "no etcd endpoints".into());
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(n);
        for i in 0..n {
            let (store, tx) = (self.clone(), tx.clone());
            // Each runs to its end (or its timeout) even after another
            // answered: its stream stays in order for the next keep-alive.
            tokio::spawn(async move {
                let left = limit.saturating_sub(sent_at.elapsed());
                let r = match tokio::time::timeout(left, store.keep_alive_on(i, lease, limit)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {limit:?}")),
                };
                let _ = tx.send(r).await;
            });
        }
        drop(tx);
        let mut errors = Vec::new();
        while let Some(r) = rx.recv().await {
            match r {
                Ok(alive) => {
                    return Outcome::KeptAlive {
                        lease,
                        sent_at,
                        alive,
                    };
                }
                Err(e) => errors.push(e),
            }
        }
        failed(OpKind::KeepAlive, errors.join("; "))
    }

    /// One keep-alive of `lease` on endpoint `i`'s stream.
    async fn keep_alive_on(
        &self,
        i: usize,
        lease: LeaseId,
        limit: Duration,
    ) -> Result<bool, String> {
        let client = self.client_at(i, limit).await?;
        let mut slot = self.keepers[i].lock().await;
        // Out of its slot while in use, and put back only after its answer:
        // a keep-alive cut short (a timeout) drops its stream, so that no
        // later keep-alive takes this one's late answer for its own (the
        // fence would count from a renewal later than the real one).
        let mut keeper = slot.take().filter(|(id, ..)| *id == lease);
        let r = keep_alive(&mut keeper, client, lease).await;
        if r.is_ok() {
            *slot = keeper;
        }
        r
    }

    /// Operations after a failure on endpoint `i` go to the next one (if
    /// another did not move them already).
    fn next_after(&self, i: usize) {
        let n = self.clients.len().max(1);
        let _ = self
            .current
            .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}{name}", self.prefix)
    }

    /// Carries out `op`; `points` go with a release (the streams' last
    /// points, JSON).
    pub async fn run(&self, op: Op, points: Option<String>) -> Outcome {
        let kind = op.kind();
        let sent_at = Instant::now();
        let limit = match kind {
            OpKind::KeepAlive => keep_alive_limit(self.ttl),
            _ => self.ttl / 2,
        };
        if let Op::KeepAlive { lease } = op {
            return self.keep_alive_everywhere(lease, sent_at, limit).await;
        }
        let (at, client) = match self.client(limit).await {
            Ok(x) => x,
            Err(e) => return failed(kind, e),
        };
        let left = limit.saturating_sub(sent_at.elapsed());
        let e = match tokio::time::timeout(left, self.run_other(client, op, points, sent_at)).await
        {
            Ok(Ok(o)) => return o,
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {limit:?}"),
        };
        self.next_after(at);
        failed(kind, e)
    }

    async fn run_other(
        &self,
        mut c: Client,
        op: Op,
        points: Option<String>,
        sent_at: Instant,
    ) -> Result<Outcome, String> {
        let e = |e: etcd_client::Error| e.to_string();
        Ok(match op {
            Op::Grant => {
                let r = c
                    .lease_grant(self.ttl.as_secs() as i64, None)
                    .await
                    .map_err(e)?;
                Outcome::Granted {
                    lease: r.id(),
                    sent_at,
                }
            }
            Op::KeepAlive { .. } => return Err("a keep-alive goes through its stream".into()),
            Op::Read => {
                let r = c
                    .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
                    .await
                    .map_err(e)?;
                let mut snapshot = Snapshot::default();
                for kv in r.kvs() {
                    self.absorb(&mut snapshot, kv);
                }
                Outcome::Read { sent_at, snapshot }
            }
            Op::Publish { lease, report } => {
                let value = serde_json::to_string(&report).map_err(|e| e.to_string())?;
                c.put(
                    self.key(keys::ALIVE, &self.me),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(e)?;
                Outcome::Done {
                    op: OpKind::Publish,
                }
            }
            Op::Acquire {
                owner,
                lease,
                since_unix_ms,
            } => {
                let key = self.key(keys::ROLE, &owner);
                let value = serde_json::to_string(&RoleValue {
                    holder: self.me.clone(),
                    since_unix_ms,
                })
                .map_err(|e| e.to_string())?;
                let txn = Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                let r = c.txn(txn).await.map_err(e)?;
                // A key created by this transaction has its revision.
                let epoch = r
                    .succeeded()
                    .then(|| r.header().map(|h| h.revision()))
                    .flatten();
                Outcome::Acquired { owner, epoch }
            }
            Op::ConfirmRelease { owner, epoch } => {
                let key = self.key(keys::ROLE, &owner);
                let mut then = vec![TxnOp::delete(key.as_str(), None)];
                if let Some(p) = points {
                    then.push(TxnOp::put(self.key(keys::RELEASED, &owner), p, None));
                }
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        epoch,
                    )])
                    .and_then(then);
                let r = c.txn(txn).await.map_err(e)?;
                Outcome::Released {
                    owner,
                    deleted: r.succeeded(),
                }
            }
            Op::AskHandBack {
                lease,
                since_unix_ms,
            } => {
                c.put(
                    self.key(keys::HANDBACK, &self.me),
                    since_unix_ms.to_string(),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(e)?;
                Outcome::Done {
                    op: OpKind::AskHandBack,
                }
            }
            Op::WithdrawHandBack => {
                c.delete(self.key(keys::HANDBACK, &self.me), None::<DeleteOptions>)
                    .await
                    .map_err(e)?;
                Outcome::Done {
                    op: OpKind::WithdrawHandBack,
                }
            }
        })
    }

    /// One key of a read into the snapshot; a key that does not parse is
    /// left out (and said once per read).
    fn absorb(&self, s: &mut Snapshot, kv: &etcd_client::KeyValue) {
        let Ok(key) = kv.key_str() else { return };
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return;
        };
        let value = kv.value_str().unwrap_or_default();
        let bad = |what: &str| {
            tracing::warn!(key, "etcd key {what} does not parse: left out");
        };
        if let Some(server) = rest.strip_prefix(keys::ALIVE) {
            match serde_json::from_str::<Report>(value) {
                Ok(r) => s.alive.push((server.to_string(), r)),
                Err(_) => bad("alive"),
            }
        } else if let Some(owner) = rest.strip_prefix(keys::ROLE) {
            match serde_json::from_str::<RoleValue>(value) {
                Ok(v) => s.roles.push(RoleKey {
                    owner: owner.to_string(),
                    holder: v.holder,
                    since_unix_ms: v.since_unix_ms,
                    epoch: kv.create_revision(),
                    lease: kv.lease(),
                }),
                Err(_) => bad("role"),
            }
        } else if let Some(owner) = rest.strip_prefix(keys::HANDBACK) {
            match value.parse::<u64>() {
                Ok(t) => s.hand_backs.push((owner.to_string(), t)),
                Err(_) => bad("handback"),
            }
        } else if let Some(owner) = rest.strip_prefix(keys::RELEASED) {
            s.released.push((owner.to_string(), value.to_string()));
        }
    }
}

/// One keep-alive of `lease` on `keeper`'s stream (opened with `client`
/// if there is none): whether etcd still knows the lease.
async fn keep_alive(
    keeper: &mut Option<Keeper>,
    mut client: Client,
    lease: LeaseId,
) -> Result<bool, String> {
    if keeper.is_none() {
        // Opening the stream is a keep-alive too; etcd-client says "lease
        // not found" when etcd answers it with no time left.
        let (k, s) = match client.lease_keep_alive(lease).await {
            Ok(ks) => ks,
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => {
                return Ok(false);
            }
            Err(e) => return Err(e.to_string()),
        };
        *keeper = Some((lease, k, s));
    }
    let Some((_, k, s)) = keeper.as_mut() else {
        return Err("no keep-alive stream".into());
    };
    k.keep_alive().await.map_err(|e| e.to_string())?;
    match s.message().await.map_err(|e| e.to_string())? {
        Some(r) => Ok(r.ttl() > 0),
        None => Err("the keep-alive stream ended".into()),
    }
}

fn failed(op: OpKind, error: String) -> Outcome {
    Outcome::Failed { op, error }
}

/// A real etcd member for tests and the simulated world, started as a
/// child process and ended with it.
pub mod testing {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// The ports a member of a test cluster listens on, each on its own
    /// host's address: clients, and the other members.
    pub const CLIENT_PORT: u16 = 2379;
    pub const PEER_PORT: u16 = 2380;

    /// A member's client URL on its host (`http://ip:2379`), as a site's
    /// `endpoints` lists it.
    pub fn client_url(ip: Ipv4Addr) -> String {
        format!("http://{}", SocketAddr::from((ip, CLIENT_PORT)))
    }

    /// `--initial-cluster` of members (name, host address) each on its own
    /// host: `name=http://ip:2380,...`.
    pub fn initial_cluster(members: &[(&str, Ipv4Addr)]) -> String {
        members
            .iter()
            .map(|(name, ip)| format!("{name}=http://{}", SocketAddr::from((*ip, PEER_PORT))))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcd's raft timing: how often the leader beats, how long a follower
    /// waits without a beat before it calls an election. etcd's tuning
    /// guide: the heartbeat about the round trip between members, the
    /// election timeout ten times it.
    #[derive(Debug, Clone, Copy)]
    pub struct RaftTiming {
        pub heartbeat: Duration,
        pub election: Duration,
    }

    impl RaftTiming {
        /// etcd's defaults, for a LAN (round trips under a millisecond).
        pub const LAN: RaftTiming = RaftTiming {
            heartbeat: Duration::from_millis(100),
            election: Duration::from_millis(1000),
        };
        /// Members up to 250 ms apart (a lossy, slow link: a round trip of
        /// 2 × (75 ± 50) ms, and retransmissions).
        pub const SLOW_LINK: RaftTiming = RaftTiming {
            heartbeat: Duration::from_millis(250),
            election: Duration::from_millis(2500),
        };
    }

    pub struct EtcdServer {
        child: Child,
        _dir: Option<tempfile::TempDir>,
        /// Its client URL.
        pub endpoint: String,
        pub client: SocketAddr,
    }

    /// A member of a cluster to start.
    pub struct Member<'a> {
        pub name: &'a str,
        /// Runs etcd under this command (e.g. `ip netns exec ns`), or alone.
        pub wrapper: &'a [&'a str],
        pub client: SocketAddr,
        pub peer: SocketAddr,
        /// `name=http://ip:port,...` of every member.
        pub initial_cluster: &'a str,
        pub data_dir: &'a std::path::Path,
        pub timing: RaftTiming,
    }

    fn free_port() -> std::io::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    impl EtcdServer {
        /// A single-member cluster on loopback, on free ports.
        pub fn start_local() -> std::io::Result<EtcdServer> {
            let dir = tempfile::tempdir()?;
            let client: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let peer: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let cluster = format!("n0=http://{peer}");
            let mut s = EtcdServer::start(&Member {
                name: "n0",
                wrapper: &[],
                client,
                peer,
                initial_cluster: &cluster,
                data_dir: dir.path(),
                timing: RaftTiming::LAN,
            })?;
            s.wait_healthy(Duration::from_secs(20))?;
            s._dir = Some(dir);
            Ok(s)
        }

        /// Starts one member (it is healthy once a quorum runs:
        /// [`EtcdServer::wait_healthy`]).
        pub fn start(m: &Member) -> std::io::Result<EtcdServer> {
            let (program, args) = match m.wrapper.split_first() {
                Some((p, rest)) => (*p, rest.to_vec()),
                None => ("etcd", Vec::new()),
            };
            let mut cmd = Command::new(program);
            cmd.args(args);
            if !m.wrapper.is_empty() {
                cmd.arg("etcd");
            }
            let client = format!("http://{}", m.client);
            let peer = format!("http://{}", m.peer);
            cmd.args(["--name", m.name, "--data-dir"])
                .arg(m.data_dir)
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", m.initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .arg("--heartbeat-interval")
                .arg(m.timing.heartbeat.as_millis().to_string())
                .arg("--election-timeout")
                .arg(m.timing.election.as_millis().to_string())
                .args(["--log-level", "error", "--logger", "zap"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl only, between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    // Ends with the test that started it, even an aborted one.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn()?;
            Ok(EtcdServer {
                child,
                _dir: None,
                endpoint: client,
                client: m.client,
            })
        }

        /// Waits until its `/health` says true.
        pub fn wait_healthy(&mut self, limit: Duration) -> std::io::Result<()> {
            let end = Instant::now() + limit;
            while Instant::now() < end {
                if let Some(status) = self.child.try_wait()? {
                    return Err(std::io::Error::other(format!("etcd exited: {status}")));
                }
                if health(self.client).unwrap_or(false) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(std::io::Error::other(format!(
                "etcd at {} not healthy within {limit:?}",
                self.endpoint
            )))
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Ends it (kill -9), as a crash.
        pub fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Whether the member at `addr` answers `/health` with true.
    pub fn health(addr: SocketAddr) -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body.contains("\"health\":\"true\""))
    }

    impl Drop for EtcdServer {
        fn drop(&mut self) {
            self.kill();
        }
    }
}
