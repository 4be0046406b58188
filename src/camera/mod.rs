//! A simulated camera: serves a clip (an Annex-B file) as a live stream,
//! paced in real time and looping. Used by `mcrelay camera`, the demo and
//! the tests.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::media::annexb::{AnnexBSplitter, DEFAULT_MAX_NAL};
use crate::media::{AccessUnit, AuAssembler, Codec, ParamSets};

/// Frame rate when the clip's parameter sets state none.
pub const DEFAULT_FPS: f64 = 25.0;
/// Clients one simulated camera serves.
const CAMERA_MAX_CLIENTS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cannot tell the codec of the clip (no H.264 SPS/AUD or H.265 VPS at its start): pass --codec"
    )]
    UnknownCodec,
    #[error("malformed clip: {0}")]
    Malformed(String),
    #[error("the clip has no pictures")]
    Empty,
    #[error("the clip must start with a key frame (with its parameter sets) so that it can loop")]
    NoKeyFrameFirst,
}

/// A clip split into access units, ready to serve.
#[derive(Debug)]
pub struct Clip {
    pub codec: Codec,
    pub fps: f64,
    pub access_units: Vec<AccessUnit>,
    /// Each access unit as Annex-B bytes (4-byte start codes).
    pub annexb: Vec<Bytes>,
}

impl Clip {
    pub fn load(path: &Path, codec: Option<Codec>, fps: Option<f64>) -> Result<Clip, ClipError> {
        let data = std::fs::read(path).map_err(|source| ClipError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Clip::parse(Bytes::from(data), codec, fps)
    }

    pub fn parse(data: Bytes, codec: Option<Codec>, fps: Option<f64>) -> Result<Clip, ClipError> {
        let codec = codec
            .or_else(|| detect_codec(&data))
            .ok_or(ClipError::UnknownCodec)?;
        let mut splitter = AnnexBSplitter::new(DEFAULT_MAX_NAL);
        splitter.push(&data);
        let mut asm = AuAssembler::new(codec);
        let mut params = ParamSets::default();
        let mut aus = Vec::new();
        let bad = |e: &dyn std::fmt::Display| ClipError::Malformed(e.to_string());
        let mut feed = |nal: Bytes, aus: &mut Vec<AccessUnit>| -> Result<(), ClipError> {
            params.update(codec, &nal);
            if let Some((au, ())) = asm.push(nal, ()).map_err(|e| bad(&e))? {
                aus.push(au);
            }
            Ok(())
        };
        while let Some(nal) = splitter.next_nal().map_err(|e| bad(&e))? {
            feed(nal, &mut aus)?;
        }
        if let Some(nal) = splitter.finish().map_err(|e| bad(&e))? {
            feed(nal, &mut aus)?;
        }
        aus.extend(asm.flush().map(|(au, ())| au));
        let first = aus.first().ok_or(ClipError::Empty)?;
        if !first.key
            || !first
                .nals
                .iter()
                .any(|n| codec.classify(n) == crate::media::NalKind::Sps)
        {
            return Err(ClipError::NoKeyFrameFirst);
        }
        let fps = fps
            .or(params.video_info(codec).fps)
            .filter(|f| f.is_finite() && *f > 0.0)
            .unwrap_or(DEFAULT_FPS);
        let annexb = aus
            .iter()
            .map(|au| {
                let mut b = BytesMut::with_capacity(au.byte_len() + 4 * au.nals.len());
                for n in &au.nals {
                    b.extend_from_slice(&[0, 0, 0, 1]);
                    b.extend_from_slice(n);
                }
                b.freeze()
            })
            .collect();
        Ok(Clip {
            codec,
            fps,
            access_units: aus,
            annexb,
        })
    }

    pub fn frame_period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.fps)
    }
}

/// Guesses the codec from the first NAL unit: an H.265 VPS (type 32, layer
/// 0) or an H.264 SPS/AUD.
pub fn detect_codec(data: &[u8]) -> Option<Codec> {
    let mut s = AnnexBSplitter::new(DEFAULT_MAX_NAL);
    s.push(&data[..data.len().min(64 * 1024)]);
    let nal = s.next_nal().ok().flatten()?;
    if nal.len() >= 2 && (nal[0] >> 1) & 0x3f == 32 && nal[1] == 1 {
        Some(Codec::H265)
    } else if matches!(nal[0] & 0x1f, 7 | 9) {
        Some(Codec::H264)
    } else {
        None
    }
}

/// Serves the clip as a live RTSP camera at `rtsp://listen/path`, with RTP
/// interleaved on the TCP connection: the same RTSP server and fan-out as
/// the relay's, fed by a paced player instead of a camera. Timestamps and
/// sequence numbers continue across loops.
pub async fn serve_rtsp(
    clip: Arc<Clip>,
    listener: TcpListener,
    path: &str,
    credentials: Option<(String, String)>,
    tracks: CameraTracks,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    use crate::channel::core::StreamIds;
    use crate::channel::{Channel, Publisher};
    use crate::config::{RtspConfig, Secret, Source};
    use crate::runtime::rtsp::{Clients, RtspShared};
    use crate::spec::ChannelSpec;

    let addr = listener.local_addr()?;
    let url = format!("rtsp://{addr}/{path}");
    // The stream itself as source: a simulator has no upstream.
    let mut spec = ChannelSpec::standalone(
        1,
        "camera",
        url.parse::<Source>().map_err(std::io::Error::other)?,
        clip.codec,
    );
    spec.name = path.to_string();
    let metrics = crate::metrics::Metrics::new();
    let channel = Channel::new(spec, metrics.channel(1), std::time::SystemTime::now());
    let ids = StreamIds {
        ssrc: rand::random(),
        initial_seq: rand::random(),
        rtp_base: rand::random(),
    };
    let mut publisher = Publisher::new(channel.clone(), ids, String::new());
    let directory =
        tokio::sync::watch::Sender::new(Arc::new(std::collections::BTreeMap::from([(1, channel)])));
    let mut cfg = RtspConfig::new(addr);
    // A simulated camera feeds benchmarks of hundreds of channels that all
    // pull it; a real camera's few-client limit is not what is measured.
    cfg.max_clients = CAMERA_MAX_CLIENTS;
    cfg.max_clients_per_channel = CAMERA_MAX_CLIENTS;
    let auth = credentials.map(|(user, pw)| {
        Arc::new(crate::serve::auth::Authenticator::new(
            user,
            Secret::new(pw),
            false,
            rand::random(),
        ))
    });
    let shared = Arc::new(RtspShared {
        max_connections: RtspShared::connections_wanted(&cfg),
        clients: Clients::new(cfg.max_clients, cfg.max_clients_per_channel),
        cfg,
        multicast_allowed: false,
        auth,
        channels: directory.subscribe(),
        origin: match addr.ip() {
            std::net::IpAddr::V4(a) if !a.is_unspecified() => a,
            _ => std::net::Ipv4Addr::LOCALHOST,
        },
        metrics,
    });
    // The session and its tracks exist before the first DESCRIBE is
    // answered: a client that connects at once gets every track.
    let metadata_index = start_session(&clip, &mut publisher, tracks);
    tokio::spawn(play(
        clip,
        publisher,
        tracks,
        metadata_index,
        cancel.clone(),
    ));
    crate::runtime::rtsp::serve(listener, shared, cancel).await;
    drop(directory);
    Ok(())
}

/// The tracks a simulated camera sends besides its video.
#[derive(Clone, Copy, Debug, Default)]
pub struct CameraTracks {
    /// G.711 mu-law, a beep each second ([`Beeps`]).
    pub audio: bool,
    /// ONVIF metadata, an analytics document each second ([`Plates`]).
    pub metadata: bool,
}

/// Starts the camera's session with its tracks; returns the metadata
/// track's index.
fn start_session(
    clip: &Clip,
    publisher: &mut crate::channel::Publisher,
    tracks: CameraTracks,
) -> usize {
    use crate::ingest::Sink;
    publisher.session_started(clip.codec);
    let mut descs = Vec::new();
    if tracks.audio {
        descs.push(Beeps::track());
    }
    let metadata_index = descs.len();
    if tracks.metadata {
        descs.push(Plates::track());
    }
    if !descs.is_empty() {
        publisher.tracks(descs, Vec::new());
    }
    metadata_index
}

/// Feeds the clip's access units at its frame rate, forever, with
/// timestamps that keep counting across loops; the tracks besides video on
/// the same time line.
async fn play(
    clip: Arc<Clip>,
    mut publisher: crate::channel::Publisher,
    tracks: CameraTracks,
    metadata_index: usize,
    cancel: CancellationToken,
) {
    use crate::ingest::Sink;
    let mut plates = tracks.metadata.then(Plates::default);
    let mut beeps = tracks.audio.then(Beeps::default);
    let period = clip.frame_period();
    let ticks = f64::from(crate::media::time::CLOCK_RATE) / clip.fps;
    // Pictures and audio frames sent. Both are due on one schedule from
    // `start`, which a stalled host moves later for both at once: their
    // timestamps keep counting, so sound and pictures stay in sync.
    let mut start = Instant::now();
    let (mut i, mut j): (u64, u64) = (0, 0);
    loop {
        let video_due = start + period.mul_f64(i as f64);
        let audio_due = beeps.as_ref().map(|_| start + Beeps::FRAME * j as u32);
        let due = audio_due.map_or(video_due, |a| a.min(video_due));
        let now = Instant::now();
        if now > due + MAX_LAG {
            start += now - due;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            () = cancel.cancelled() => return,
        }
        if let (Some(b), Some(a)) = (beeps.as_mut(), audio_due)
            && a < video_due
        {
            let (data, elapsed) = b.next_frame();
            publisher.track_frame(0, data, elapsed, Instant::now());
            j += 1;
            continue;
        }
        let au = clip.access_units[(i % clip.access_units.len() as u64) as usize].clone();
        let t = crate::media::MediaTime((i as f64 * ticks).round() as i64);
        publisher.access_unit(au, t, Instant::now());
        // A metadata document with the first picture of each second.
        if let Some(p) = plates.as_mut()
            && (i as f64 % clip.fps.round().max(1.0)) < 1.0
        {
            publisher.track_frame(metadata_index, p.next_document(), t.0, Instant::now());
        }
        i += 1;
    }
}

/// The simulated camera's ONVIF metadata: once a second, a
/// `tt:MetadataStream` document with one analytics frame naming a licence
/// plate `MCR-n` (n counting up), padded past one RTP packet so that it
/// is split and joined again on its way.
#[derive(Debug, Default)]
pub struct Plates {
    n: u64,
}

impl Plates {
    pub fn track() -> crate::media::TrackDesc {
        crate::media::TrackDesc {
            kind: crate::media::TrackKind::Metadata,
            encoding: "vnd.onvif.metadata".into(),
            clock_rate: crate::media::time::CLOCK_RATE,
            channels: None,
            payload: crate::media::Payload::Message,
        }
    }

    pub fn next_document(&mut self) -> Bytes {
        self.n += 1;
        let n = self.n;
        let when = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        // A description long enough to need two packets.
        let note = "x".repeat(1500);
        Bytes::from(format!(
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                r#"<tt:MetadataStream xmlns:tt="http://www.onvif.org/ver10/schema">"#,
                r#"<tt:VideoAnalytics><tt:Frame UtcTime="{when}">"#,
                r#"<tt:Object ObjectId="{n}"><tt:Appearance><tt:Class>"#,
                r#"<tt:Type Likelihood="0.93">LicensePlate</tt:Type></tt:Class>"#,
                r#"<tt:Extension><Plate>MCR-{n}</Plate><Note>{note}</Note></tt:Extension>"#,
                r#"</tt:Appearance></tt:Object></tt:Frame></tt:VideoAnalytics>"#,
                r#"</tt:MetadataStream>"#
            ),
            when = when,
            n = n,
            note = note
        ))
    }
}

/// The simulated camera's sound: G.711 mu-law at 8 kHz in 20 ms frames, a
/// 200 ms 880 Hz beep at the start of every second of media time (so that
/// a listener hears it, and a test can line it up with the pictures),
/// silence between.
#[derive(Debug, Default)]
pub struct Beeps {
    frames: u64,
}

impl Beeps {
    pub const FRAME: Duration = Duration::from_millis(20);
    const RATE: u32 = 8000;
    const SAMPLES: u64 = 160;

    pub fn track() -> crate::media::TrackDesc {
        crate::media::TrackDesc {
            kind: crate::media::TrackKind::Audio,
            encoding: "PCMU".into(),
            clock_rate: Self::RATE,
            channels: Some(1),
            payload: crate::media::Payload::Frame,
        }
    }

    /// The next frame and its time (8 kHz ticks since the first).
    pub fn next_frame(&mut self) -> (Bytes, i64) {
        let first = self.frames * Self::SAMPLES;
        let data: Vec<u8> = (first..first + Self::SAMPLES)
            .map(|n| {
                let in_second = n % u64::from(Self::RATE);
                let beep = in_second < u64::from(Self::RATE) / 5;
                let t = n as f64 / f64::from(Self::RATE);
                let v = if beep {
                    (t * 880.0 * std::f64::consts::TAU).sin() * 8000.0
                } else {
                    0.0
                };
                ulaw(v as i16)
            })
            .collect();
        self.frames += 1;
        (Bytes::from(data), first as i64)
    }
}

/// G.711 mu-law of a 16-bit sample (ITU-T G.711, the usual bias-and-segment
/// form).
fn ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// Encodes a test-pattern clip with Debian's ffmpeg (libx264): `seconds`
/// at 25 fps, a 1 s GOP of one reference frame and no B-frames, like an IP
/// camera; for tests and benchmarks that need other sizes or bitrates than
/// the shipped clips.
pub fn encode_test_clip(
    out: &Path,
    size: &str,
    bitrate: &str,
    seconds: u32,
) -> std::io::Result<()> {
    encode_test_clip_with_gop(out, size, bitrate, seconds, 25)
}

/// [`encode_test_clip`] with a key frame every `gop` frames.
pub fn encode_test_clip_with_gop(
    out: &Path,
    size: &str,
    bitrate: &str,
    seconds: u32,
    gop: u32,
) -> std::io::Result<()> {
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=size={size}:rate=25"))
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
        ])
        .args(["-g", &gop.to_string(), "-bf", "0", "-refs", "1"])
        .args([
            "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate, "-pix_fmt", "yuv420p", "-f",
            "h264",
        ])
        .arg(out)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ffmpeg could not encode {}",
            out.display()
        )))
    }
}

/// Pacing: access unit `i` of a connection is due `i` frame periods after it
/// started. A sender that fell more than this far behind (a suspended
/// process) restarts its schedule instead of bursting to catch up.
const MAX_LAG: Duration = Duration::from_secs(1);

/// Serves the clip as a raw Annex-B stream to every connection on `listener`.
pub async fn serve_annexb(clip: Arc<Clip>, listener: TcpListener, cancel: CancellationToken) {
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "camera: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        tracing::debug!(%peer, "camera: client connected");
        let clip = clip.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = stream_annexb(&clip, sock) => {
                    tracing::debug!(%peer, result = ?r, "camera: client gone");
                }
                () = cancel.cancelled() => {}
            }
        });
    }
}

async fn stream_annexb(clip: &Clip, mut sock: TcpStream) -> std::io::Result<()> {
    let _ = sock.set_nodelay(true);
    let period = clip.frame_period();
    let mut start = Instant::now();
    let mut i: u64 = 0;
    loop {
        let due = start + period.mul_f64(i as f64);
        let now = Instant::now();
        if now > due + MAX_LAG {
            start = now;
            i = 0;
        }
        tokio::time::sleep_until(due.into()).await;
        sock.write_all(&clip.annexb[(i % clip.annexb.len() as u64) as usize])
            .await?;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mu_law_matches_g711() {
        // Zero, the extremes, and a value in each direction.
        assert_eq!(ulaw(0), 0xff);
        assert_eq!(ulaw(i16::MAX), 0x80);
        assert_eq!(ulaw(i16::MIN), 0x00);
        assert_eq!(ulaw(1000), 0xce);
        assert_eq!(ulaw(-1000), 0x4e);
        let mut b = Beeps::default();
        let (f0, t0) = b.next_frame();
        let (_, t1) = b.next_frame();
        assert_eq!((f0.len(), t0, t1), (160, 0, 160));
        assert!(f0.iter().any(|&x| x != 0xff), "a beep at the start");
        for _ in 2..20 {
            b.next_frame();
        }
        let (quiet, _) = b.next_frame();
        assert!(quiet.iter().all(|&x| x == 0xff), "silence after 200 ms");
    }

    #[test]
    fn shipped_clips_parse() {
        // (clip, codec, pictures, key frames)
        let clips: [(&'static [u8], Codec, usize, usize); 4] = [
            (
                include_bytes!("../../assets/clips/demo-h264.h264"),
                Codec::H264,
                250,
                25,
            ),
            (
                include_bytes!("../../assets/clips/demo-h265.h265"),
                Codec::H265,
                100,
                100,
            ),
            (
                include_bytes!("../../assets/clips/camera-h264.h264"),
                Codec::H264,
                250,
                10,
            ),
            (
                include_bytes!("../../assets/clips/camera-h265.h265"),
                Codec::H265,
                250,
                10,
            ),
        ];
        for (data, codec, pictures, keys) in clips {
            assert_eq!(detect_codec(data), Some(codec));
            let clip = Clip::parse(Bytes::from_static(data), None, None).unwrap();
            assert_eq!(clip.codec, codec);
            assert_eq!(clip.access_units.len(), pictures);
            assert_eq!(clip.access_units.iter().filter(|a| a.key).count(), keys);
            assert_eq!(clip.fps, 25.0);
            assert!(clip.access_units[0].key);
        }
    }

    #[test]
    fn clips_that_cannot_loop_are_refused() {
        static P_FRAME_FIRST: [u8; 8] = [0, 0, 0, 1, 0x41, 0x9a, 1, 2];
        let err =
            Clip::parse(Bytes::from_static(&P_FRAME_FIRST), Some(Codec::H264), None).unwrap_err();
        assert!(matches!(err, ClipError::NoKeyFrameFirst), "{err}");
        assert!(matches!(
            Clip::parse(Bytes::new(), Some(Codec::H264), None),
            Err(ClipError::Empty)
        ));
        assert!(matches!(
            Clip::parse(Bytes::from_static(b"hello"), None, None),
            Err(ClipError::UnknownCodec)
        ));
    }
}
