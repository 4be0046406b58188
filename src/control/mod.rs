//! The control API (HTTP): health, status (and a page showing it), each
//! channel's SDP, metrics.

pub mod material;
pub mod page;
pub mod sdp;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::json;
use tokio::sync::watch;

use crate::channel::{Channel, Directory};
use crate::config::Protocol;
use crate::metrics::{CameraState, Metrics};

/// Who this server is, for status and SDP.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub name: String,
    pub description: String,
    pub protocol: Protocol,
    pub failover_server: bool,
    /// The address the SDP names as origin (the multicast interface).
    pub origin: Ipv4Addr,
}

#[derive(Clone)]
pub struct AppState {
    pub server: Arc<ServerInfo>,
    pub channels: watch::Receiver<Directory>,
    pub metrics: Metrics,
    pub started: SystemTime,
    /// The RTSP server's clients, when the server has one.
    pub clients: Option<Arc<crate::runtime::rtsp::Clients>>,
    /// The recorder, when the server records.
    pub recorder: Option<Arc<crate::record::Recorder>>,
    /// Checks the server password where the API exposes material.
    pub auth: Option<Arc<crate::serve::auth::Authenticator>>,
    /// The failover controller's report and view of the site.
    pub failover: watch::Receiver<crate::runtime::failover::FailoverStatus>,
    /// Peers' and operators' requests to the failover controller.
    pub failover_requests: tokio::sync::mpsc::Sender<crate::runtime::failover::ApiRequest>,
}

/// Requests other than uploads carry no body worth reading.
const MAX_BODY: usize = 64 * 1024;
/// A handler answers within this (uploads excepted: their body may take
/// long, and has its own idle timeout).
const HANDLER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// An upload body that sends nothing for this long is dropped.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

pub fn router(state: AppState) -> Router {
    use tower_http::limit::RequestBodyLimitLayer;
    use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
    let small = (
        RequestBodyLimitLayer::new(MAX_BODY),
        TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, HANDLER_TIMEOUT),
    );
    let upload = put(material::upload).layer((
        RequestBodyLimitLayer::new(
            usize::try_from(material::MAX_UPLOAD_BYTES).unwrap_or(usize::MAX),
        ),
        RequestBodyTimeoutLayer::new(UPLOAD_IDLE),
    ));
    Router::new()
        .route("/", get(page::html).layer(small))
        .route("/status.js", get(page::js).layer(small))
        .route("/status.css", get(page::css).layer(small))
        .route("/health", get(health).layer(small))
        .route("/status", get(status).layer(small))
        .route("/metrics", get(metrics).layer(small))
        .route(
            "/failover/{what}",
            axum::routing::post(failover_request).layer(small),
        )
        .route("/channels/{file}", get(channel_sdp).layer(small))
        .route("/channels/{id}/material", get(material::list).layer(small))
        .route(
            "/channels/{id}/material/{segment}",
            get(material::download).layer(small).merge(upload),
        )
        .with_state(state)
}

fn text(code: StatusCode, body: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn json_response(code: StatusCode, v: serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn health(State(st): State<AppState>) -> Response {
    let dir = st.channels.borrow().clone();
    let streaming = dir
        .values()
        .filter(|c| c.status.borrow().state == CameraState::Streaming)
        .count();
    let disks_broken = st.recorder.as_ref().is_some_and(|r| r.all_disks_broken());
    let (code, status) = if disks_broken {
        // The seed's failover trigger: nothing can be recorded.
        (StatusCode::SERVICE_UNAVAILABLE, "broken")
    } else if streaming == dir.len() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::OK, "degraded")
    };
    let material = match &st.recorder {
        None => json!({ "recording": false }),
        Some(r) => {
            let disks = r.disks();
            json!({
                "recording": true,
                "disks": disks.len(),
                "disks_ok": disks.iter().filter(|d| !d.status.broken()).count(),
                "all_disks_broken": disks_broken,
            })
        }
    };
    json_response(
        code,
        json!({
            "status": status,
            "server": st.server.name,
            "channels": dir.len(),
            "streaming": streaming,
            "material": material,
            // What the site's failover controllers read of this server.
            "failover": st.failover.borrow().report,
        }),
    )
}

/// A channel for `/status`: the public part (state and counts), and with
/// `detail` what only the server password may see: the camera's source
/// and last error, the interface, each client's address.
fn channel_json(
    c: &Channel,
    clients: Option<&crate::runtime::rtsp::Clients>,
    detail: bool,
) -> serde_json::Value {
    let info = c.info.borrow().clone();
    let camera = c.status.borrow().clone();
    let m = &c.metrics;
    let mut v = json!({
        "id": c.spec.id,
        "name": c.spec.name,
        "owner": c.spec.owner,
        "codec": info.codec.or(c.spec.codec),
        "video": info.video,
        "camera": {
            "state": camera.state,
            "since": humantime::format_rfc3339_millis(camera.since).to_string(),
            "reconnects": camera.reconnects,
        },
        "multicast": c.spec.multicast.map(|e| json!({
            "group": e.dest.group,
            "port": e.dest.port,
            "rtcp_port": e.dest.rtcp().port(),
            "ttl": e.dest.ttl,
            "send_mode": e.mode,
        })),
        "tracks": info.tracks.iter().map(|t| json!({
            "kind": t.desc.kind,
            "encoding": t.desc.encoding,
            "clock_rate": t.desc.clock_rate,
            "channels": t.desc.channels,
            "payload_type": t.payload_type,
            "multicast_port": c.spec.multicast.and_then(|e| e.track(t.desc.kind)).map(|d| d.port),
        })).collect::<Vec<_>>(),
        "tracks_not_carried": info.not_carried.len(),
        "track_frames": m.track_frames.get(),
        "frames": m.frames.get(),
        "key_frames": m.key_frames.get(),
        "packets": m.packets.get(),
        "bytes": m.bytes.get(),
        "multicast_packets": m.mc_packets.get(),
        "multicast_bytes": m.mc_bytes.get(),
        "multicast_skipped_frames": m.mc_skipped.get(),
        "clients": {
            "tcp": m.clients_tcp.get(),
            "multicast": m.clients_multicast.get(),
        },
        "tcp_bytes": m.tcp_bytes.get(),
        "tcp_packets": m.tcp_packets.get(),
        "tcp_key_frame_skips": m.key_frame_skips.get(),
        "tcp_stall_disconnects": m.stall_disconnects.get(),
    });
    if detail {
        v["source"] = c.spec.source.redacted().into();
        v["camera"] = serde_json::to_value(&camera).unwrap_or_default();
        // The reasons can quote the camera's answers: behind the password.
        v["tracks_not_carried"] = info.not_carried.clone().into();
        if let Some(e) = c.spec.multicast {
            v["multicast"]["interface"] = e.interface.to_string().into();
        }
        v["clients"]["list"] = serde_json::to_value(
            clients
                .map(|cl| cl.of_channel(c.spec.id))
                .unwrap_or_default(),
        )
        .unwrap_or_default();
    }
    v
}

/// `GET /status`: public, states and counts only (no addresses, sources,
/// paths or errors). `GET /status?detail` adds them, behind the server
/// password (Digest).
async fn status(
    State(st): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let detail = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "detail" || p.starts_with("detail="))
    });
    if detail && let Err(r) = material::authorize(&st, "GET", &uri, &headers, peer.ip()) {
        return *r;
    }
    let dir = st.channels.borrow().clone();
    let uptime = SystemTime::now()
        .duration_since(st.started)
        .unwrap_or_default();
    let material = st.recorder.as_ref().map(|r| {
        let disks: Vec<serde_json::Value> = r
            .disks()
            .into_iter()
            .map(|d| {
                let mut v = json!({
                    "status": d.status,
                    "used_percent": d.used_percent,
                    "available_bytes": d.available_bytes,
                    "segments": d.segments,
                });
                if detail {
                    v["path"] = d.path.display().to_string().into();
                    v["reason"] = d.reason.into();
                }
                v
            })
            .collect();
        json!({
            "all_disks_broken": r.all_disks_broken(),
            "segment_seconds": r.segment_length().as_secs_f64(),
            "disks": disks,
        })
    });
    // One borrow of the failover status (a second one in the same
    // statement could wait behind its writer while this one holds it).
    let (controller, site, mut beacons) = {
        let f = st.failover.borrow();
        (f.controller, f.site.clone(), f.beacons.clone())
    };
    // What was refused last, in words, behind the password; the counts
    // (forged beacons heard) for anyone.
    if !detail {
        beacons.last_rejected = None;
    }
    json_response(
        StatusCode::OK,
        json!({
            "server": {
                "name": st.server.name,
                "description": st.server.description,
                "protocol": st.server.protocol,
                "role": if st.server.failover_server { "failover" } else { "recorder" },
            },
            "uptime_seconds": uptime.as_secs(),
            // The server's wall clock when it answered: what the status
            // page measures bitrates and "since" against.
            "now_unix_ms": crate::channel::resume::unix_ms(SystemTime::now()),
            "detail": detail,
            "material": material,
            "failover_controller": controller,
            "site": site,
            "beacons": beacons,
            "channels": dir.values().map(|c| channel_json(c, st.clients.as_deref(), detail)).collect::<Vec<_>>(),
        }),
    )
}

/// `POST /failover/release?by=S` (a failover server asks this recorder,
/// whose disks broke, to stop emitting), `/failover/handback?owner=S&since=MS`
/// (a restored recorder asks this failover server for its role back),
/// `/failover/failback` (an operator's `mcrelay failback`). With the server
/// password. A release answers the released streams' points as JSON.
async fn failover_request(
    State(st): State<AppState>,
    Path(what): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    use crate::failover::Input;
    if let Err(r) = material::authorize(&st, "POST", &uri, &headers, peer.ip()) {
        return *r;
    }
    let q: std::collections::HashMap<String, String> = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let input = match (what.as_str(), q.get("by"), q.get("owner"), q.get("since")) {
        ("release", Some(by), _, _) => Input::ReleaseAsked { by: by.clone() },
        ("handback", _, Some(owner), Some(since)) => match since.parse() {
            Ok(since_unix_ms) => Input::HandBackAsked {
                owner: owner.clone(),
                since_unix_ms,
            },
            Err(_) => return text(StatusCode::BAD_REQUEST, "since: Unix milliseconds\n"),
        },
        ("failback", _, _, _) => Input::FailbackCommanded,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "use /failover/release?by=S, /failover/handback?owner=S&since=MS or /failover/failback\n",
            );
        }
    };
    let failback = input == Input::FailbackCommanded;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let req = crate::runtime::failover::ApiRequest { input, reply };
    if st.failover_requests.send(req).await.is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the failover controller is not running\n",
        );
    }
    match answer.await {
        Ok(_) if failback => text(StatusCode::ACCEPTED, "failback requested\n"),
        Ok(Ok(points)) => json_response(
            StatusCode::OK,
            serde_json::to_value(points).unwrap_or_default(),
        ),
        Ok(Err(why)) => text(StatusCode::CONFLICT, format!("{why}\n")),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the failover controller stopped\n",
        ),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

async fn channel_sdp(State(st): State<AppState>, Path(file): Path<String>) -> Response {
    let Some(id) = file
        .strip_suffix(".sdp")
        .and_then(|i| i.parse::<u32>().ok())
    else {
        return text(StatusCode::NOT_FOUND, "not found: use /channels/{id}.sdp\n");
    };
    let Some(c) = st.channels.borrow().get(&id).cloned() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("channel {id} is not emitted by server {}\n", st.server.name),
        );
    };
    let Some(emit) = c.spec.multicast else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "channel {id} is not sent by multicast: server {} uses protocol \"tcp\"\n",
                c.spec.owner
            ),
        );
    };
    let info = c.info.borrow().clone();
    let Some(codec) = info.codec.or(c.spec.codec) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "channel {id}: the camera has not connected yet, so its codec is unknown; retry shortly\n"
            ),
        );
    };
    let tracks: Vec<sdp::TrackLine<'_>> = info
        .tracks
        .iter()
        .map(|t| sdp::TrackLine {
            desc: &t.desc,
            payload_type: t.payload_type,
            dest: emit.track(t.desc.kind),
        })
        .collect();
    let body = sdp::channel_sdp(&sdp::ChannelDescription {
        channel_id: id,
        name: &c.spec.name,
        origin: st.server.origin,
        delivery: sdp::Delivery::Multicast(emit.dest),
        codec,
        params: &info.params,
        video: &info.video,
        version: info.version,
        tracks: &tracks,
        sources: &c.spec.ssm_sources,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/sdp")],
        body,
    )
        .into_response()
}
