//! Camera sources: where a channel's video comes from.

use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A camera source, parsed from the channel's `source` URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// RTSP with RTP interleaved on the TCP connection. Credentials, if any,
    /// are in the URL's user info.
    Rtsp(url::Url),
    /// Connect to `host:port` and read a raw Annex-B byte stream.
    TcpConnect { host: String, port: u16 },
    /// Listen on `addr` and accept one encoder pushing a raw Annex-B stream.
    TcpListen(SocketAddr),
}

impl Source {
    /// Raw Annex-B sources carry no codec signalling.
    pub fn is_annexb(&self) -> bool {
        !matches!(self, Source::Rtsp(_))
    }

    /// The URL with any password replaced, for logs, status and errors.
    pub fn redacted(&self) -> String {
        match self {
            Source::Rtsp(u) => {
                let mut u = u.clone();
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            Source::TcpConnect { host, port } => format!("tcp://{host}:{port}"),
            Source::TcpListen(a) => format!("tcp-listen://{a}"),
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            format!("{:?} is not a source URL: write rtsp://host/path, tcp://host:port or tcp-listen://addr:port", redact_str(s))
        })?;
        match scheme {
            "rtsp" => {
                let url = url::Url::parse(s).map_err(|e| format!("{:?}: {e}", redact_str(s)))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(format!("{:?} has no host", redact_str(s)));
                }
                Ok(Source::Rtsp(url))
            }
            "tcp" => {
                let rest = rest.trim_end_matches('/');
                let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
                    format!("tcp://{} needs a port: tcp://host:port", redact_str(rest))
                })?;
                let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!(
                        "tcp://{}: {port:?} is not a port (1-65535)",
                        redact_str(rest)
                    )
                })?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(format!("tcp://{} has no host", redact_str(rest)));
                }
                if host.contains('@') {
                    return Err(format!(
                        "tcp://{}: raw Annex-B sources take no credentials",
                        redact_str(rest)
                    ));
                }
                Ok(Source::TcpConnect {
                    host: host.to_string(),
                    port,
                })
            }
            "tcp-listen" => {
                let rest = rest.trim_end_matches('/');
                let addr: SocketAddr = rest.parse().map_err(|_| {
                    format!("tcp-listen://{}: expected an IP address and port, e.g. tcp-listen://0.0.0.0:9000", redact_str(rest))
                })?;
                Ok(Source::TcpListen(addr))
            }
            other => Err(format!(
                "unsupported source scheme {:?}: use rtsp://, tcp:// or tcp-listen://",
                redact_str(other)
            )),
        }
    }
}

/// Hides the password of every `user:password@host` in `s`, with or
/// without a scheme, wherever it stands in a longer text (an error message,
/// a string that failed to parse as a URL). Words are split at whitespace
/// and quotes; in a word, the password runs from the first `:` after the
/// scheme to the last `@`.
pub fn redact_credentials(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if let Some(at) = word.rfind('@') {
            let start = word[..at].find("://").map_or(0, |i| i + 3);
            if let Some(colon) = word[start..at].find(':') {
                word.replace_range(start + colon + 1..at, "***");
            }
        }
        out.push_str(word);
        word.clear();
    };
    for c in s.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn redact_str(s: &str) -> String {
    redact_credentials(s)
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let s: Source = "rtsp://admin:secret@198.18.0.5:554/stream1"
            .parse()
            .unwrap();
        assert_eq!(s.redacted(), "rtsp://admin:***@198.18.0.5:554/stream1");
        assert!(!format!("{s:?}").contains("secret"));
        assert_eq!(
            "tcp://cam.local:9000".parse::<Source>().unwrap(),
            Source::TcpConnect {
                host: "cam.local".into(),
                port: 9000
            }
        );
        assert_eq!(
            "tcp-listen://127.0.0.1:9001".parse::<Source>().unwrap(),
            Source::TcpListen("127.0.0.1:9001".parse().unwrap())
        );
    }

    #[test]
    fn rejects_bad_sources_without_leaking_passwords() {
        for bad in [
            "cam:554",
            "http://x/y",
            "tcp://host",
            "tcp://:80",
            "tcp://h:0",
            "tcp-listen://host:1",
            "rtsp://",
        ] {
            assert!(bad.parse::<Source>().is_err(), "{bad}");
        }
        for bad in [
            "rtsp://u:secret@[bad/x",
            "admin:secret@198.18.0.5:554/stream",
            "u:secret@cam",
            "tcp://u:secret@cam:x",
            "tcp://u:secret@cam:554",
            "tcp-listen://u:secret@0.0.0.0:1",
        ] {
            let e = bad.parse::<Source>().unwrap_err();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn credentials_are_hidden_anywhere_in_a_text() {
        assert_eq!(
            redact_credentials("invalid \"rtsp://admin:p@ss:w@rd@cam:554/x\" here"),
            "invalid \"rtsp://admin:***@cam:554/x\" here"
        );
        assert_eq!(redact_credentials("admin:secret@cam"), "admin:***@cam");
        assert_eq!(
            redact_credentials("mail user@host, a:b"),
            "mail user@host, a:b"
        );
        assert_eq!(redact_credentials("no secrets"), "no secrets");
    }
}
