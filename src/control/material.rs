//! Material inventory and download: what a failover or a restored server
//! compares and copies. Both need the server password (Digest; Basic only
//! where the RTSP server allows it).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, json_response, text};
use crate::record::index::{Entry, SegmentName, coverage, parse_rfc3339 as parse_time, rfc3339};
use crate::serve::auth::{Attempt, Verdict};

/// Segments closer than this count as contiguous in the gap list.
const GAP_TOLERANCE_MS: i64 = 100;

/// Checks the request's credentials; `Err` is the response to send.
pub(super) fn authorize(
    st: &AppState,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    peer: std::net::IpAddr,
) -> Result<(), Box<Response>> {
    let Some(auth) = &st.auth else {
        return Err(Box::new(text(
            StatusCode::FORBIDDEN,
            "material access needs the server password: set `password` for this server in the site file\n",
        )));
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let attempt = Attempt {
        method,
        uri: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
        authorization,
        peer,
        binding: 0,
    };
    match auth.check(&attempt, now) {
        Verdict::Allowed => Ok(()),
        Verdict::Throttled { retry_after_secs } => {
            st.metrics.rtsp_unauthorized().inc();
            let mut r = text(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentications from this address; retry later\n",
            );
            if let Ok(v) = retry_after_secs.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Err(Box::new(r))
        }
        Verdict::Denied { stale } => {
            st.metrics.rtsp_unauthorized().inc();
            let mut r = text(StatusCode::UNAUTHORIZED, "the server password is needed\n");
            for c in auth.challenges(now, stale, peer, 0) {
                if let Ok(v) = c.parse() {
                    r.headers_mut().append(header::WWW_AUTHENTICATE, v);
                }
            }
            Err(Box::new(r))
        }
    }
}

/// Checks the credentials of a GET and parses the channel id.
fn authorized_channel(
    st: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    peer: std::net::IpAddr,
    id: &str,
) -> Result<u32, Box<Response>> {
    authorize(st, "GET", uri, headers, peer)?;
    id.parse::<u32>().map_err(|_| {
        Box::new(text(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a channel id\n"),
        ))
    })
}

fn entry_json(e: &Entry) -> serde_json::Value {
    json!({
        "segment": e.segment,
        "start": rfc3339(e.start_ms),
        "end": rfc3339(e.end_ms),
        "start_ms": e.start_ms,
        "end_ms": e.end_ms,
        "duration_seconds": e.duration_ms() as f64 / 1000.0,
        "bytes": e.bytes,
        "checksum": e.checksum,
        "recorder": e.recorder,
    })
}

/// The largest segment an upload may carry: an hour (the longest
/// `storage.segment`) at 36 Mbit/s, far above any camera a recorder takes.
pub const MAX_UPLOAD_BYTES: u64 = 16 << 30;

/// `GET /channels/{id}/material?from=…&to=…`
pub async fn list(
    State(st): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let channel = match authorized_channel(&st, &uri, &headers, peer.ip(), &id) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Some(rec) = &st.recorder else {
        return text(StatusCode::NOT_FOUND, "this server does not record\n");
    };
    let (mut from, mut to) = (None, None);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match &*k {
            "from" => &mut from,
            "to" => &mut to,
            other => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}: use from and to (RFC 3339)\n"),
                );
            }
        };
        match parse_time(&v) {
            Ok(t) => *slot = Some(t),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{k}: {e}\n")),
        }
    }
    let segments = rec.segments(channel);
    let from = from.unwrap_or_else(|| segments.first().map_or(0, |e| e.start_ms));
    let to = to.unwrap_or_else(|| crate::record::now_ms(SystemTime::now()));
    if to < from {
        return text(StatusCode::BAD_REQUEST, "to is before from\n");
    }
    let (segs, gaps) = coverage(&segments, from, to, GAP_TOLERANCE_MS);
    json_response(
        StatusCode::OK,
        json!({
            "channel": channel,
            "server": st.server.name,
            "from": rfc3339(from),
            "to": rfc3339(to),
            "segments": segs.iter().map(|e| entry_json(e)).collect::<Vec<_>>(),
            "gaps": gaps.iter().map(|(a, b)| json!({
                "from": rfc3339(*a),
                "to": rfc3339(*b),
                "from_ms": a,
                "to_ms": b,
            })).collect::<Vec<_>>(),
        }),
    )
}

/// `PUT /channels/{id}/material/{segment}`: a segment copied from another
/// server, with its index entry in `X-Mcrelay-Entry`. Written beside its
/// final name, checked against the entry's size and checksum, synced, then
/// listed. A segment already listed with the same checksum is accepted
/// again (200) without a write: copies are idempotent.
pub async fn upload(
    State(st): State<AppState>,
    Path((id, segment)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = authorize(&st, "PUT", &uri, &headers, peer.ip()) {
        return *r;
    }
    let Ok(channel) = id.parse::<u32>() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a channel id\n"),
        );
    };
    let name = match SegmentName::parse(&segment) {
        Ok(n) => n,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let Some(rec) = st.recorder.clone() else {
        return text(StatusCode::CONFLICT, "this server does not record\n");
    };
    let entry: Entry = match headers
        .get("x-mcrelay-entry")
        .and_then(|v| v.to_str().ok())
        .map(serde_json::from_str)
    {
        Some(Ok(e)) => e,
        Some(Err(e)) => {
            return text(StatusCode::BAD_REQUEST, format!("X-Mcrelay-Entry: {e}\n"));
        }
        None => {
            return text(StatusCode::BAD_REQUEST, "X-Mcrelay-Entry is missing\n");
        }
    };
    if entry.channel != channel || entry.segment != segment {
        return text(
            StatusCode::BAD_REQUEST,
            "X-Mcrelay-Entry does not describe this segment\n",
        );
    }
    if let Err(why) = crate::record::index::check(&entry) {
        return text(StatusCode::BAD_REQUEST, format!("X-Mcrelay-Entry: {why}\n"));
    }
    if entry.bytes > MAX_UPLOAD_BYTES {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} bytes is more than a segment may hold ({MAX_UPLOAD_BYTES})\n",
                entry.bytes
            ),
        );
    }
    if let Some((_, have)) = rec.segment_file(channel, &name) {
        return if have.checksum == entry.checksum {
            text(StatusCode::OK, "already present\n")
        } else {
            text(
                StatusCode::CONFLICT,
                format!(
                    "{name} is present with another checksum ({})\n",
                    have.checksum
                ),
            )
        };
    }
    let target = {
        let rec = rec.clone();
        let name = name.clone();
        let bytes = entry.bytes;
        tokio::task::spawn_blocking(move || rec.import_target(channel, &name, bytes)).await
    };
    let Ok(Some((disk, part, path))) = target else {
        return text(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "no usable material disk has room for {} more bytes under its usage limit\n",
                entry.bytes
            ),
        );
    };
    if let Err((code, msg)) = receive(body, &part, &entry).await {
        let _ = tokio::fs::remove_file(&part).await;
        tracing::warn!(channel, segment = %name, "material upload refused: {msg}");
        return text(code, format!("{msg}\n"));
    }
    let checksum = entry.checksum.clone();
    let committed = {
        let part = part.clone();
        tokio::task::spawn_blocking(move || rec.import_commit(disk, &part, &path, entry)).await
    };
    match committed {
        Ok(Ok(true)) => {
            tracing::info!(channel, segment = %name, "copied segment received");
            text(StatusCode::CREATED, "stored\n")
        }
        // Another upload of the same name got there first.
        Ok(Ok(false)) => match st
            .recorder
            .as_ref()
            .and_then(|r| r.segment_file(channel, &name))
        {
            Some((_, have)) if have.checksum != checksum => text(
                StatusCode::CONFLICT,
                format!(
                    "{name} is present with another checksum ({})\n",
                    have.checksum
                ),
            ),
            _ => text(StatusCode::OK, "already present\n"),
        },
        Ok(Err(e)) => {
            let _ = tokio::fs::remove_file(&part).await;
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store the segment: {e}\n"),
            )
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Streams the body to `part`, checks size and checksum, syncs.
async fn receive(
    body: Body,
    part: &std::path::Path,
    entry: &Entry,
) -> Result<(), (StatusCode, String)> {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let io = |what: &str, e: std::io::Error| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} {}: {e}", part.display()),
        )
    };
    if let Some(dir) = part.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io("cannot create the directory of", e))?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(part)
        .await
        .map_err(|e| io("cannot create", e))?;
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    let mut bytes = 0u64;
    let mut stream = body.into_data_stream();
    // The router's body layers stop a body that idles or outgrows its cap.
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| (StatusCode::BAD_REQUEST, format!("upload broke off: {e}")))?;
        bytes += chunk.len() as u64;
        if bytes > entry.bytes {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("more than the {} bytes the entry states", entry.bytes),
            ));
        }
        hash.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| io("cannot write", e))?;
    }
    if bytes != entry.bytes {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{bytes} bytes received, the entry states {}", entry.bytes),
        ));
    }
    let sum = crate::record::index::checksum_string(hash.digest());
    if sum != entry.checksum {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "checksum {sum} does not match the entry's {}",
                entry.checksum
            ),
        ));
    }
    file.sync_all().await.map_err(|e| io("cannot sync", e))
}

/// `GET /channels/{id}/material/{segment}`
pub async fn download(
    State(st): State<AppState>,
    Path((id, segment)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let channel = match authorized_channel(&st, &uri, &headers, peer.ip(), &id) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let name = match SegmentName::parse(&segment) {
        Ok(n) => n,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let Some((path, entry)) = st
        .recorder
        .as_ref()
        .and_then(|r| r.segment_file(channel, &name))
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("channel {channel} has no segment {name}\n"),
        );
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "indexed segment cannot be opened");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("segment {name} cannot be read: {e}\n"),
            );
        }
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "video/mp2t".to_string()),
            (header::CONTENT_LENGTH, entry.bytes.to_string()),
            (
                header::HeaderName::from_static("x-mcrelay-checksum"),
                entry.checksum.clone(),
            ),
            (
                header::HeaderName::from_static("x-mcrelay-entry"),
                serde_json::to_string(&entry).unwrap_or_default(),
            ),
        ],
        body,
    )
        .into_response()
}
