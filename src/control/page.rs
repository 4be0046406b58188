//! `GET /`: the status page for an operator's browser. One static page
//! (`status.html`, its script `status.js` and style `status.css`, all
//! compiled in) that reads the public `/status` of the same server every
//! second and a half and shows the site's three folders and this server's
//! channels. It shows only what `/status` shows without the password.
//!
//! The page, script and style are separate files so that the
//! Content-Security-Policy can allow nothing inline: script, style and
//! fetches come from this server only, nothing else is loaded, and the
//! page cannot be framed.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const HTML: &str = include_str!("status.html");
const JS: &str = include_str!("status.js");
const CSS: &str = include_str!("status.css");

/// What the page may load: its own script and style, `/status` by fetch.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets are tiny, and a browser must never show an old
            // page after an upgrade.
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub async fn html() -> Response {
    asset("text/html; charset=utf-8", HTML)
}

/// `GET /status.js`.
pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// `GET /status.css`.
pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::control::{AppState, ServerInfo, router};

    fn state() -> AppState {
        let (_, channels) = tokio::sync::watch::channel(crate::channel::Directory::default());
        let (_, failover) = tokio::sync::watch::channel(Default::default());
        let (failover_requests, _) = tokio::sync::mpsc::channel(1);
        AppState {
            server: Arc::new(ServerInfo {
                name: "recorder-1".into(),
                description: "a <b>test</b> recorder".into(),
                protocol: crate::config::Protocol::RtpMulticast,
                failover_server: false,
                origin: std::net::Ipv4Addr::LOCALHOST,
            }),
            channels,
            metrics: crate::metrics::Metrics::new(),
            started: SystemTime::now(),
            clients: None,
            recorder: None,
            auth: None,
            failover,
            failover_requests,
        }
    }

    async fn get(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                40000,
            ))));
        let r = router(state()).oneshot(req).await.unwrap();
        let (parts, body) = r.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn header<'a>(h: &'a axum::http::HeaderMap, name: &str) -> &'a str {
        h.get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
    }

    #[tokio::test]
    async fn the_page_is_served_with_a_strict_policy() {
        let (code, h, body) = get("/").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&h, "cache-control"), "no-store");
        assert_eq!(header(&h, "x-content-type-options"), "nosniff");
        let csp = header(&h, "content-security-policy");
        for d in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(d), "{csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        for id in [
            "id=\"folder-vms\"",
            "id=\"folder-failover\"",
            "id=\"folder-broken\"",
            "id=\"channel-rows\"",
            "<script src=\"/status.js\"",
            "href=\"/status.css\"",
        ] {
            assert!(body.contains(id), "no {id} in the page");
        }
        // Nothing inline and nothing from elsewhere: the policy would block it.
        assert!(!body.contains("<script>") && !body.contains("<style"));
        assert!(!body.contains("http://") && !body.contains("https://"));
    }

    #[tokio::test]
    async fn the_script_and_style_are_served_with_their_types() {
        for (path, ty, needle) in [
            (
                "/status.js",
                "text/javascript; charset=utf-8",
                "fetch(\"/status\"",
            ),
            ("/status.css", "text/css; charset=utf-8", ".server"),
        ] {
            let (code, h, body) = get(path).await;
            assert_eq!(code, StatusCode::OK, "{path}");
            assert_eq!(header(&h, "content-type"), ty, "{path}");
            assert_eq!(header(&h, "x-content-type-options"), "nosniff");
            assert_eq!(header(&h, "cache-control"), "no-store");
            assert!(body.contains(needle), "{path}");
        }
        // The script writes the server's text as text only.
        assert!(!JS.contains("innerHTML") && !JS.contains("outerHTML"));
        assert!(!JS.contains("insertAdjacentHTML") && !JS.contains("eval("));
    }

    #[tokio::test]
    async fn status_has_what_the_page_reads() {
        let (code, h, body) = get("/status").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(header(&h, "content-type"), "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["now_unix_ms"].as_u64().is_some_and(|t| t > 0), "{v}");
        for folder in ["recorders", "failover", "broken"] {
            assert!(v["site"][folder].is_array(), "{v}");
        }
        assert!(v["channels"].is_array(), "{v}");
        assert!(v.get("failover_controller").is_some(), "{v}");
        assert_eq!(v["server"]["name"], "recorder-1");
    }
}
