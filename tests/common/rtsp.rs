//! A small blocking RTSP client for tests: Digest authentication, SETUP
//! with TCP interleaved or multicast, and reading interleaved RTP packets.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use md5::{Digest, Md5};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One RTP packet as received over the interleaved connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    pub bytes: Vec<u8>,
}

pub struct Client {
    pub stream: TcpStream,
    cseq: u32,
    creds: Option<(String, String)>,
    challenge: Option<String>,
    pub session: Option<String>,
    buf: Vec<u8>,
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Client {
    pub fn connect(addr: &str, creds: Option<(&str, &str)>) -> std::io::Result<Client> {
        Client::from_stream(TcpStream::connect(addr)?, creds)
    }

    /// A client on a connection made elsewhere (with special socket options).
    pub fn from_stream(stream: TcpStream, creds: Option<(&str, &str)>) -> std::io::Result<Client> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            stream,
            cseq: 0,
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
            challenge: None,
            session: None,
            buf: Vec::new(),
        })
    }

    fn authorization(&self, method: &str, uri: &str) -> Option<String> {
        let (user, pass) = self.creds.as_ref()?;
        let ch = self.challenge.as_ref()?;
        let field = |k: &str| {
            ch.split(&format!("{k}=\""))
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_string)
        };
        let (realm, nonce) = (field("realm")?, field("nonce")?);
        let ha1 = md5_hex(&format!("{user}:{realm}:{pass}"));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let r = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        Some(format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{r}\""
        ))
    }

    /// Sends a request (with the session and credentials it has) and reads
    /// the response; on a first 401 it authenticates and tries once more.
    pub fn request(
        &mut self,
        method: &str,
        uri: &str,
        extra: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        for attempt in 0..2 {
            self.cseq += 1;
            let mut text = format!(
                "{method} {uri} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: mcrelay-test\r\n",
                self.cseq
            );
            if let Some(s) = &self.session {
                text.push_str(&format!("Session: {s}\r\n"));
            }
            if let Some(a) = self.authorization(method, uri) {
                text.push_str(&format!("Authorization: {a}\r\n"));
            }
            for (k, v) in extra {
                text.push_str(&format!("{k}: {v}\r\n"));
            }
            text.push_str("\r\n");
            self.stream.write_all(text.as_bytes())?;
            let r = self.read_response()?;
            if r.status == 401 && attempt == 0 && self.creds.is_some() {
                self.challenge = r.header("WWW-Authenticate").map(str::to_string);
                continue;
            }
            if let Some(s) = r.header("Session") {
                self.session = Some(s.split(';').next().unwrap_or_default().trim().to_string());
            }
            return Ok(r);
        }
        unreachable!("two attempts at most")
    }

    /// Writes raw bytes (malformed requests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Reads at most `max` bytes into the client's buffer without parsing
    /// them (a slow reader); packets are parsed later by `read_packet`.
    pub fn buffer_some(&mut self, max: usize) -> std::io::Result<usize> {
        let mut tmp = vec![0u8; max];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Packets already buffered, parsed without reading more.
    pub fn buffered_packets(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while self.buf.first() == Some(&b'$') && self.buf.len() >= 4 {
            let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            if self.buf.len() < 4 + len {
                break;
            }
            match self.read_packet() {
                Ok(p) => out.push(p),
                Err(_) => break,
            }
        }
        out
    }

    /// Reads the next RTSP response, skipping interleaved frames before it.
    pub fn read_response(&mut self) -> std::io::Result<Response> {
        loop {
            if self.buf.first() == Some(&b'$') {
                if self.buf.len() >= 4 {
                    let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
                    if self.buf.len() >= 4 + len {
                        self.buf.drain(..4 + len);
                        continue;
                    }
                }
            } else if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let mut lines = head.lines();
                let status = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    return Ok(Response {
                        status,
                        headers,
                        body,
                    });
                }
            } else if self.buf.len() > 1 << 20 {
                return Err(std::io::Error::other(
                    "no RTSP response in 1 MB: the stream is out of step",
                ));
            }
            self.fill()?;
        }
    }

    /// DESCRIBE, SETUP (TCP interleaved 0-1), PLAY on `url`; returns PLAY's response.
    pub fn play_tcp(&mut self, url: &str) -> std::io::Result<Response> {
        let d = self.request("DESCRIBE", url, &[("Accept", "application/sdp")])?;
        assert_eq!(d.status, 200, "DESCRIBE {url}: {d:?}");
        let s = self.request(
            "SETUP",
            &format!("{url}/trackID=0"),
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
        )?;
        assert_eq!(s.status, 200, "SETUP {url}: {s:?}");
        self.request("PLAY", url, &[("Range", "npt=0.000-")])
    }

    /// The next interleaved RTP packet (channel 0).
    pub fn read_packet(&mut self) -> std::io::Result<Packet> {
        loop {
            if self.buf.first() == Some(&b'$') && self.buf.len() >= 4 {
                let ch = self.buf[1];
                let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
                if self.buf.len() >= 4 + len {
                    let data: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
                    if ch == 0 && data.len() >= 12 {
                        return Ok(Packet {
                            seq: u16::from_be_bytes([data[2], data[3]]),
                            ts: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
                            marker: data[1] & 0x80 != 0,
                            bytes: data,
                        });
                    }
                    continue;
                }
            } else if !self.buf.is_empty() && self.buf[0] != b'$' {
                // A response (to a keep-alive): skip it.
                let _ = self.read_response()?;
                continue;
            }
            self.fill()?;
        }
    }
}
