//! The control API's HTTP server: hyper's HTTP/1 connection with its own
//! limits, behind a connection cap, so that no client can hold the API (or
//! the process's descriptors) for long.
//!
//! - At most `max_connections` connections, and at most
//!   [`MAX_PER_ADDRESS`] from one client address: one host cannot take the
//!   slots the failover peers poll `/health` through. A connection over a
//!   cap is closed at once.
//! - A request head must arrive within [`HEADER_TIMEOUT`] of the connection
//!   opening or of the previous response (hyper's `header_read_timeout`,
//!   which is also the idle timeout of a kept-alive connection), and be at
//!   most [`MAX_HEADER_BYTES`] in at most [`MAX_HEADERS`] lines.
//! - Bodies: the routes set their own limits and body timeouts (tower-http,
//!   see [`crate::control::router`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A request head has this long to arrive: a LAN client sends one in
/// milliseconds; a peer polling every 500 ms keeps its connection alive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Request line and headers: ample for a Digest header and a segment
/// entry, far below hyper's default 400 KB buffer.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
pub const MAX_HEADERS: usize = 64;
/// Connections from one client address.
pub const MAX_PER_ADDRESS: usize = 32;

/// Open connections by client address, for the caps.
struct Slots {
    max: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_ip) = &mut *g;
        let here = by_ip.get(&ip).copied().unwrap_or(0);
        if *total >= self.max || here >= MAX_PER_ADDRESS {
            return None;
        }
        *total += 1;
        by_ip.insert(ip, here + 1);
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

/// One connection's place under the caps; freed on drop.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_ip) = &mut *g;
        *total -= 1;
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `cancel`; open connections then finish
/// their request in progress (graceful shutdown) within the caller's grace.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    max_connections: usize,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Slots {
        max: max_connections,
        open: Mutex::new((0, HashMap::new())),
    });
    let mut refused_logged = false;
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: back off a little.
                    tracing::warn!(error = %e, "control API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return Ok(()),
        };
        let Some(slot) = slots.take(peer.ip()) else {
            if !refused_logged {
                tracing::warn!(%peer, "control API connection refused: over the connection cap (logged once)");
                refused_logged = true;
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Handlers see the client's address (ConnectInfo), as axum::serve
        // would give them.
        let svc = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            move |mut r: hyper::Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                r
            },
        ));
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_header_size(MAX_HEADER_BYTES)
                .max_headers(MAX_HEADERS)
                .max_buf_size(64 * 1024)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "control API connection ended");
            }
        });
    }
}
