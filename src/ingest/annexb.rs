//! A raw Annex-B session over TCP: read into the splitter's buffer, split
//! into NAL units, group into access units, timestamp, deliver.

use std::time::{Duration, Instant};

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{IngestError, Sink};
use crate::config::Allowed;
use crate::media::annexb::{AnnexBSplitter, DEFAULT_MAX_NAL};
use crate::media::time::{AnnexBClock, TimingPolicy};
use crate::media::{AuAssembler, Codec, ParamSets};

/// Reads `stream` (after the bytes of `prefix`, read from it before) until
/// it fails. With `replace`, a new encoder that connects to that listener
/// is read alongside; once it has sent a whole access unit it ends this
/// session and takes over (a connection that sends nothing valid, a port
/// scan, replaces nothing).
pub async fn session<S: AsyncRead + Unpin>(
    mut stream: S,
    prefix: &[u8],
    codec: Codec,
    timing: TimingPolicy,
    stall: Duration,
    sink: &mut impl Sink,
    mut replace: Option<Replacement<'_>>,
) -> IngestError {
    let mut reader = Reader::new(codec, timing);
    sink.session_started(codec);
    let mut last_picture = Instant::now();
    if !prefix.is_empty() {
        reader.splitter.push(prefix);
        reader.offset = prefix.len() as u64;
        match reader.drain(last_picture, sink) {
            Ok(_) => {}
            Err(e) => return e,
        }
    }
    loop {
        let read = tokio::time::timeout(stall, stream.read_buf(reader.splitter.read_buf()));
        let res = match &mut replace {
            Some(r) => tokio::select! {
                res = read => res,
                a = r.listener.accept() => {
                    if let Ok((s, peer)) = a {
                        r.candidates.offer(s, peer, r.allow);
                    }
                    continue;
                }
                ready = r.candidates.ready() => {
                    return IngestError::Replaced { peer: ready.peer, ready: Some(Box::new(ready)) };
                }
            },
            None => read.await,
        };
        let now = Instant::now();
        let n = match res {
            Err(_) => return IngestError::Stalled(stall),
            Ok(Err(source)) => {
                return IngestError::Read {
                    offset: reader.offset,
                    source,
                };
            }
            Ok(Ok(n)) => n,
        };
        reader.offset += n as u64;
        if n == 0 {
            // A live connection rarely ends on a picture boundary: what is
            // pending is most likely cut, so it is dropped, not relayed.
            return IngestError::Closed {
                offset: reader.offset,
                discarded: reader.discard(),
            };
        }
        match reader.drain(now, sink) {
            Ok(0) => {}
            Ok(_) => last_picture = now,
            Err(e) => return e,
        }
        if now.duration_since(last_picture) > stall {
            return IngestError::Stalled(stall);
        }
    }
}

/// What lets a newer encoder replace the current one.
pub struct Replacement<'a> {
    pub listener: &'a TcpListener,
    pub candidates: &'a mut Candidates,
    pub allow: &'a [Allowed],
}

/// An encoder connection that has proven itself: it sent a whole access
/// unit. `prefix` is every byte read from it so far.
#[derive(Debug)]
pub struct Ready {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub prefix: Vec<u8>,
}

/// Encoders probed at once: a scanner holding some cannot keep a real
/// encoder out.
const MAX_CANDIDATES: usize = 4;
/// A candidate must send a whole access unit within this many bytes (far
/// more than a key frame of any camera).
const MAX_PROBE_BYTES: usize = 16 << 20;

/// Connections waiting to prove they are an encoder (see [`session`]). Each
/// is read by its own task until it delivers an access unit, fails, sends
/// junk or stays silent for the stall timeout.
pub struct Candidates {
    codec: Codec,
    timing: TimingPolicy,
    stall: Duration,
    tasks: JoinSet<Option<Ready>>,
    refused: u64,
}

impl Candidates {
    pub fn new(codec: Codec, timing: TimingPolicy, stall: Duration) -> Self {
        Candidates {
            codec,
            timing,
            stall,
            tasks: JoinSet::new(),
            refused: 0,
        }
    }

    /// Whether `peer` may push to this channel; logs refusals (rate-limited).
    pub fn allowed(&mut self, peer: SocketAddr, allow: &[Allowed]) -> bool {
        if allow.is_empty() || allow.iter().any(|a| a.contains(peer.ip())) {
            return true;
        }
        self.refused += 1;
        if self.refused.is_power_of_two() {
            tracing::warn!(%peer, refused = self.refused, "encoder connection refused: not in the channel's allow list");
        }
        false
    }

    /// Starts probing a new connection, if `peer` is allowed and there is
    /// room.
    pub fn offer(&mut self, stream: TcpStream, peer: SocketAddr, allow: &[Allowed]) {
        if !self.allowed(peer, allow) {
            return;
        }
        if self.tasks.len() >= MAX_CANDIDATES {
            tracing::warn!(%peer, "encoder connection dropped: {MAX_CANDIDATES} others are being checked");
            return;
        }
        let _ = stream.set_nodelay(true);
        self.tasks
            .spawn(probe(stream, peer, self.codec, self.timing, self.stall));
    }

    /// The first candidate that proves itself; pending while none does.
    pub async fn ready(&mut self) -> Ready {
        loop {
            match self.tasks.join_next().await {
                Some(Ok(Some(r))) => return r,
                Some(_) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// Reads a candidate until its first access unit.
async fn probe(
    mut stream: TcpStream,
    peer: SocketAddr,
    codec: Codec,
    timing: TimingPolicy,
    stall: Duration,
) -> Option<Ready> {
    struct Count(usize);
    impl Sink for Count {
        fn session_started(&mut self, _: Codec) {}
        fn parameters(&mut self, _: Vec<bytes::Bytes>) {}
        fn access_unit(
            &mut self,
            _: crate::media::AccessUnit,
            _: crate::media::MediaTime,
            _: Instant,
        ) {
            self.0 += 1;
        }
    }
    let mut reader = Reader::new(codec, timing);
    let mut prefix = Vec::new();
    let mut count = Count(0);
    let why = loop {
        let buf = reader.splitter.read_buf();
        let before = buf.len();
        match tokio::time::timeout(stall, stream.read_buf(buf)).await {
            Err(_) => break format!("sent no picture in {stall:?}"),
            Ok(Err(e)) => break format!("read failed: {e}"),
            Ok(Ok(0)) => break "closed the connection".to_string(),
            Ok(Ok(_)) => {}
        }
        let buf = reader.splitter.buffered_bytes();
        prefix.extend_from_slice(&buf[before.min(buf.len())..]);
        if prefix.len() > MAX_PROBE_BYTES {
            break format!("sent {MAX_PROBE_BYTES} bytes without a whole picture");
        }
        match reader.drain(Instant::now(), &mut count) {
            Err(e) => break format!("sent no valid stream: {e}"),
            Ok(_) if count.0 > 0 => {
                return Some(Ready {
                    stream,
                    peer,
                    prefix,
                });
            }
            Ok(_) => {}
        }
    };
    tracing::info!(%peer, "a connecting encoder {why}; it replaces nothing");
    None
}

/// The sans-IO part of a session: bytes (already in the splitter's buffer)
/// to timestamped access units.
pub struct Reader {
    pub splitter: AnnexBSplitter,
    assembler: AuAssembler<Instant>,
    clock: AnnexBClock,
    codec: Codec,
    params: ParamSets,
    fps: Option<f64>,
    pub offset: u64,
}

impl Reader {
    pub fn new(codec: Codec, timing: TimingPolicy) -> Self {
        Reader {
            splitter: AnnexBSplitter::new(DEFAULT_MAX_NAL),
            assembler: AuAssembler::new(codec),
            clock: AnnexBClock::new(timing),
            codec,
            params: ParamSets::default(),
            fps: None,
            offset: 0,
        }
    }

    /// Delivers every complete access unit in the buffer; returns how many.
    /// A picture is complete as soon as the next one begins to arrive.
    pub fn drain(&mut self, now: Instant, sink: &mut impl Sink) -> Result<usize, IngestError> {
        let mut count = 0;
        while let Some(nal) = self.splitter.next_nal()? {
            count += self.push(nal, now, sink)?;
        }
        if let Some(head) = self.splitter.pending_head(self.assembler.head_len())
            && let Some((au, at)) = self.assembler.boundary_ahead(head)
        {
            self.deliver(au, at, sink);
            count += 1;
        }
        Ok(count)
    }

    fn deliver(&mut self, au: crate::media::AccessUnit, at: Instant, sink: &mut impl Sink) {
        let t = self.clock.stamp(at, self.fps);
        sink.access_unit(au, t, at);
    }

    /// Drops the unfinished access unit (and NAL unit); returns its size.
    pub fn discard(&mut self) -> usize {
        self.splitter.buffered() + self.assembler.reset()
    }

    fn push(
        &mut self,
        nal: bytes::Bytes,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<usize, IngestError> {
        if self.params.update(self.codec, &nal) {
            // Parse the SPS once per change, not per picture.
            self.fps = self.params.video_info(self.codec).fps;
        }
        match self.assembler.push(nal, now)? {
            Some((au, at)) => {
                self.deliver(au, at, sink);
                Ok(1)
            }
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::media::{AccessUnit, MediaTime};

    #[derive(Default)]
    struct Collect {
        aus: Vec<(AccessUnit, MediaTime)>,
        codec: Option<Codec>,
    }

    impl Sink for Collect {
        fn session_started(&mut self, codec: Codec) {
            self.codec = Some(codec);
        }
        fn parameters(&mut self, _: Vec<Bytes>) {}
        fn access_unit(&mut self, au: AccessUnit, t: MediaTime, _: Instant) {
            self.aus.push((au, t));
        }
    }

    const CLIP: &[u8] = include_bytes!("../../assets/clips/camera-h264.h264");

    #[tokio::test]
    async fn reads_the_shipped_clip_into_access_units() {
        let mut sink = Collect::default();
        let err = session(
            CLIP,
            &[],
            Codec::H264,
            TimingPolicy::Auto,
            Duration::from_secs(5),
            &mut sink,
            None,
        )
        .await;
        assert!(
            matches!(err, IngestError::Closed { offset, discarded } if offset == CLIP.len() as u64 && discarded > 0),
            "{err}"
        );
        assert_eq!(sink.codec, Some(Codec::H264));
        // 10 s at 25 fps; nothing ends the last picture, so at the close it
        // counts as unfinished and is dropped.
        assert_eq!(sink.aus.len(), 249);
        assert_eq!(
            sink.aus.iter().filter(|(a, _)| a.key).count(),
            10,
            "one key frame per second"
        );
    }

    /// Paced arrival with jitter (simulated time): the SPS says 25 fps, so
    /// timestamps are exact 3600-tick steps whatever the jitter.
    #[test]
    fn paced_clip_gets_frame_rate_timestamps() {
        let mut reader = Reader::new(Codec::H264, TimingPolicy::Auto);
        let mut sink = Collect::default();
        let t0 = Instant::now();
        for (i, chunk) in CLIP.chunks(CLIP.len() / 250).enumerate() {
            let jitter = (i as u64 * 7) % 13;
            reader.splitter.push(chunk);
            reader
                .drain(
                    t0 + Duration::from_millis(40 * i as u64 + jitter),
                    &mut sink,
                )
                .unwrap();
        }
        assert!(sink.aus.len() > 240);
        let steps: Vec<i64> = sink.aus.windows(2).map(|w| w[1].1.0 - w[0].1.0).collect();
        assert!(steps.iter().all(|s| *s == 3600), "{:?}", &steps[..10]);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        // Start codes followed by random bytes, as a corrupted stream looks.
        let mut garbage = Vec::new();
        let mut x = 0x1234_5678u32;
        for _ in 0..1000 {
            garbage.extend_from_slice(&[0, 0, 1]);
            for _ in 0..50 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                garbage.push(x as u8);
            }
        }
        let mut sink = Collect::default();
        let err = session(
            &garbage[..],
            &[],
            Codec::H264,
            TimingPolicy::Auto,
            Duration::from_secs(5),
            &mut sink,
            None,
        )
        .await;
        assert!(
            matches!(err, IngestError::AnnexB(_) | IngestError::Au(_)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn truncated_stream_ends_cleanly() {
        let cut = &CLIP[..CLIP.len() / 3 + 7];
        let mut sink = Collect::default();
        let err = session(
            cut,
            &[],
            Codec::H264,
            TimingPolicy::Auto,
            Duration::from_secs(5),
            &mut sink,
            None,
        )
        .await;
        assert!(
            matches!(err, IngestError::Closed { discarded, .. } if discarded > 0),
            "{err}"
        );
        assert!(err.to_string().contains("unfinished picture"), "{err}");
        assert!(sink.aus.len() > 50);
        // Every delivered picture is whole: the sizes add up to less than
        // the cut, and re-splitting the whole clip gives the same pictures.
        let mut full = Collect::default();
        let _ = session(
            CLIP,
            &[],
            Codec::H264,
            TimingPolicy::Auto,
            Duration::from_secs(5),
            &mut full,
            None,
        )
        .await;
        for (got, want) in sink.aus.iter().zip(&full.aus) {
            assert_eq!(got.0, want.0);
        }
    }
}
