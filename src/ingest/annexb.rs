//! A raw Annex-B session over TCP: read into the splitter's buffer, split
//! into NAL units, group into access units, timestamp, deliver.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;

use super::{IngestError, Sink};
use crate::media::annexb::{AnnexBSplitter, DEFAULT_MAX_NAL};
use crate::media::time::{AnnexBClock, TimingPolicy};
use crate::media::{AuAssembler, Codec, ParamSets};

/// Reads `stream` until it fails. With `replace`, a new connection on that
/// listener ends this session in favour of the new encoder.
pub async fn session<S: AsyncRead + Unpin>(
    mut stream: S,
    codec: Codec,
    timing: TimingPolicy,
    stall: Duration,
    sink: &mut impl Sink,
    replace: Option<&TcpListener>,
) -> IngestError {
    let mut reader = Reader::new(codec, timing);
    sink.session_started(codec);
    let mut last_picture = Instant::now();
    loop {
        let read = tokio::time::timeout(stall, stream.read_buf(reader.splitter.read_buf()));
        let res = match replace {
            Some(l) => tokio::select! {
                r = read => r,
                a = l.accept() => match a {
                    Ok((s, peer)) => return IngestError::Replaced { peer, stream: Some(s) },
                    Err(_) => continue,
                },
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
