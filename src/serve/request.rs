//! Reading what a workstation sends: RTSP requests (parsed by rtsp-types) and
//! interleaved frames (its RTCP receiver reports), with limits on size and
//! header count checked before any parsing. Sans-IO.

use bytes::{Buf, BytesMut};
use rtsp_types::{Message, ParseError, Request};

/// Something complete the client sent.
#[derive(Debug)]
pub enum Incoming {
    Request(Request<Vec<u8>>),
    /// An interleaved frame (`$`, channel, length): the client's RTCP, which
    /// the relay reads and drops.
    Interleaved {
        channel: u8,
        len: usize,
    },
    /// A response (clients do not send them unasked): ignored.
    Response,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("more than {limit} header lines")]
    TooManyHeaders { limit: usize },
    #[error("malformed request: {0}")]
    Malformed(String),
}

pub struct RequestReader {
    buf: BytesMut,
    max_bytes: usize,
    max_headers: usize,
}

impl RequestReader {
    pub fn new(max_bytes: usize, max_headers: usize) -> Self {
        RequestReader {
            buf: BytesMut::with_capacity(4096),
            max_bytes,
            max_headers,
        }
    }

    /// The buffer to read into (a read never needs more than the limit).
    pub fn read_buf(&mut self) -> &mut BytesMut {
        self.buf.reserve(4096);
        &mut self.buf
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `None` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, RequestError> {
        // Stray line ends between requests are allowed (RFC 2326 15.1 lists
        // none, but clients send them after bodies).
        while self.buf.first().is_some_and(|b| *b == b'\r' || *b == b'\n') {
            self.buf.advance(1);
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf[0] == b'$' {
            if self.buf.len() < 4 {
                return Ok(None);
            }
            let channel = self.buf[1];
            let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            if self.buf.len() < 4 + len {
                return Ok(None);
            }
            self.buf.advance(4 + len);
            return Ok(Some(Incoming::Interleaved { channel, len }));
        }
        let head_end = memchr::memmem::find(&self.buf, b"\r\n\r\n");
        let head = match head_end {
            Some(e) => &self.buf[..e],
            None => &self.buf[..],
        };
        let lines = memchr::memchr_iter(b'\n', head).count();
        if lines > self.max_headers + 1 {
            return Err(RequestError::TooManyHeaders {
                limit: self.max_headers,
            });
        }
        if head_end.is_none() {
            if self.buf.len() > self.max_bytes {
                return Err(RequestError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            return Ok(None);
        }
        let parsed: Result<(Message<Vec<u8>>, usize), ParseError> = Message::parse(&self.buf[..]);
        match parsed {
            Ok((msg, consumed)) => {
                if consumed > self.max_bytes {
                    return Err(RequestError::TooLarge {
                        limit: self.max_bytes,
                    });
                }
                self.buf.advance(consumed);
                Ok(Some(match msg {
                    Message::Request(r) => Incoming::Request(r),
                    Message::Response(_) => Incoming::Response,
                    Message::Data(d) => Incoming::Interleaved {
                        channel: d.channel_id(),
                        len: d.len(),
                    },
                }))
            }
            Err(ParseError::Incomplete(_)) => {
                if self.buf.len() > self.max_bytes {
                    Err(RequestError::TooLarge {
                        limit: self.max_bytes,
                    })
                } else {
                    Ok(None)
                }
            }
            Err(ParseError::Error) => {
                let first_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
                let shown = String::from_utf8_lossy(&first_line[..first_line.len().min(80)])
                    .trim()
                    .to_string();
                Err(RequestError::Malformed(format!("cannot parse {shown:?}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> RequestReader {
        RequestReader::new(4096, 16)
    }

    #[test]
    fn requests_and_interleaved_frames_in_pieces() {
        let stream = b"OPTIONS rtsp://h/1 RTSP/1.0\r\nCSeq: 1\r\n\r\n$\x01\x00\x03abc\r\nGET_PARAMETER rtsp://h/1 RTSP/1.0\r\nCSeq: 2\r\nContent-Length: 4\r\n\r\nbody";
        for cut in 0..stream.len() {
            let mut r = reader();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                r.push(part);
                while let Some(m) = r.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}: {got:?}");
            assert!(
                matches!(&got[0], Incoming::Request(q) if *q.method() == rtsp_types::Method::Options)
            );
            assert!(matches!(
                got[1],
                Incoming::Interleaved { channel: 1, len: 3 }
            ));
            assert!(matches!(&got[2], Incoming::Request(q) if q.body() == b"body"));
        }
    }

    #[test]
    fn limits_are_enforced_before_parsing() {
        let mut r = reader();
        r.push(b"DESCRIBE rtsp://h/1 RTSP/1.0\r\n");
        r.push(&b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(90));
        assert_eq!(
            r.next_message().unwrap_err(),
            RequestError::TooManyHeaders { limit: 16 }
        );
        let mut r = reader();
        r.push(b"DESCRIBE rtsp://h/1 RTSP/1.0\r\nX: ");
        r.push(&vec![b'a'; 5000]);
        assert_eq!(
            r.next_message().unwrap_err(),
            RequestError::TooLarge { limit: 4096 }
        );
        let mut r = reader();
        r.push(b"SET_PARAMETER rtsp://h/1 RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 99999\r\n\r\n");
        r.push(&vec![b'a'; 5000]);
        assert_eq!(
            r.next_message().unwrap_err(),
            RequestError::TooLarge { limit: 4096 }
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let mut r = reader();
        r.push(b"\x16\x03\x01\x02\x00hello\r\n\r\n");
        assert!(matches!(r.next_message(), Err(RequestError::Malformed(_))));
        let mut r = reader();
        r.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            matches!(r.next_message(), Err(RequestError::Malformed(_))),
            "HTTP is not RTSP"
        );
    }
}
