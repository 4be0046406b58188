//! The one HTTP client of a server (hyper-util's): the failover controller
//! polls its peers' `/health` with it. Every request has a deadline and a
//! cap on the answer it reads.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The largest answer read (a health report is a few hundred bytes).
const MAX_ANSWER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Http(String),
    #[error("the answer is larger than {MAX_ANSWER} bytes, or cut short: {0}")]
    Body(String),
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        HttpClient { inner }
    }

    /// POST `path` of `addr` as `user` with Digest (answering the server's
    /// challenge, once more if it says the nonce went stale), within
    /// `timeout` in all.
    pub async fn post_digest(
        &self,
        addr: SocketAddr,
        path: &str,
        user: &str,
        password: &crate::config::Secret,
        timeout: Duration,
    ) -> Result<(u16, Bytes), ClientError> {
        let run = async {
            let mut auth: Option<String> = None;
            for attempt in 0..3u32 {
                let mut req = hyper::Request::post(format!("http://{addr}{path}"))
                    .header(hyper::header::HOST, addr.to_string());
                if let Some(a) = &auth {
                    req = req.header(hyper::header::AUTHORIZATION, a);
                }
                let req = req
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| ClientError::Http(e.to_string()))?;
                let resp = self
                    .inner
                    .request(req)
                    .await
                    .map_err(|e| ClientError::Http(e.to_string()))?;
                let status = resp.status().as_u16();
                let challenge = resp
                    .headers()
                    .get(hyper::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = Limited::new(resp.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| ClientError::Body(e.to_string()))?
                    .to_bytes();
                match challenge {
                    Some(c) if status == 401 && attempt < 2 => {
                        let cnonce = format!("{:016x}", rand::random::<u64>());
                        auth = crate::serve::auth::digest_answer(
                            &c,
                            user,
                            password.expose(),
                            "POST",
                            path,
                            &cnonce,
                            attempt + 1,
                        );
                        if auth.is_none() {
                            return Ok((status, body));
                        }
                    }
                    _ => return Ok((status, body)),
                }
            }
            Err(ClientError::Http(
                "refused after answering its challenge".into(),
            ))
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// GET `path` of `addr`; the status and the body, within `timeout`.
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, Bytes), ClientError> {
        let req = hyper::Request::get(format!("http://{addr}{path}"))
            .header(hyper::header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let run = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ClientError::Body(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}
