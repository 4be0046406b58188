//! A small HTTP/1.1 client for the control API with the server password
//! (Digest, computed by mcrelay's own client side), for tests that send
//! what curl cannot: PUT bodies cut in pieces, forged entries.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response: status, head, body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

pub fn read_reply(s: &mut TcpStream) -> std::io::Result<Reply> {
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let at = memchr_find(&buf, b"\r\n\r\n").map_or(buf.len(), |i| i + 4);
    Ok(Reply {
        status,
        head: head.to_string(),
        body: buf[at..].to_vec(),
    })
}

fn memchr_find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// The `Authorization` header for `method path`: fetches a fresh challenge
/// with an unauthenticated request and answers it.
pub fn authorization(addr: &str, method: &str, path: &str, user: &str, pw: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the control API");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let r = read_reply(&mut s).expect("challenge");
    assert_eq!(r.status, 401, "expected a challenge: {}", r.head);
    let challenge = r
        .head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.eq_ignore_ascii_case("www-authenticate") && v.trim().starts_with("Digest"))
                .then(|| v.trim().to_string())
        })
        .expect("a Digest challenge");
    let cnonce = format!("{:016x}", rand::random::<u64>());
    mcrelay::serve::auth::digest_answer(&challenge, user, pw, method, path, &cnonce, 1)
        .expect("answerable challenge")
}

/// Sends the head of a request with a body of `len` bytes, authenticated;
/// the caller writes the body and reads the reply.
pub fn start_upload(
    addr: &str,
    path: &str,
    headers: &[(&str, String)],
    len: u64,
    user_pw: (&str, &str),
) -> TcpStream {
    let auth = authorization(addr, "PUT", path, user_pw.0, user_pw.1);
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Length: {len}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// An authenticated request with an optional body.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    user_pw: (&str, &str),
) -> Reply {
    let mut s = if method == "PUT" {
        start_upload(addr, path, headers, body.len() as u64, user_pw)
    } else {
        let auth = authorization(addr, method, path, user_pw.0, user_pw.1);
        let mut s = TcpStream::connect(addr).expect("connect");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {auth}\r\n\r\n"
        )
        .unwrap();
        s
    };
    // A server that refuses early may close before the body is sent: its
    // answer is still there to read.
    let _ = s.write_all(body);
    read_reply(&mut s).expect("reply")
}
