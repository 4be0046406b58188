//! An RTSP camera session (retina): DESCRIBE, SETUP with RTP interleaved on
//! the TCP connection, PLAY, then frames until something fails.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use retina::client::{
    Credentials, InitialTimestampPolicy, PlayOptions, SessionOptions, SetupOptions,
    TcpTransportOptions, Transport,
};
use retina::codec::{CodecItem, FrameFormat, ParametersRef, VideoParametersCodec};

use super::{IngestError, Sink};
use crate::media::time::CLOCK_RATE;
use crate::media::{
    AccessUnit, Codec, MediaTime, Payload, TrackDesc, TrackKind, split_length_prefixed,
};

const USER_AGENT: &str = concat!("mcrelay/", env!("CARGO_PKG_VERSION"));

/// Separates the URL's user info into retina credentials (retina refuses
/// URLs with credentials, and they must not reach logs).
pub fn split_credentials(url: &url::Url) -> (url::Url, Option<Credentials>) {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let creds = (!url.username().is_empty()).then(|| Credentials {
        username: decode(url.username()),
        password: decode(url.password().unwrap_or("")),
    });
    let mut bare = url.clone();
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    (bare, creds)
}

async fn step<T>(
    stall: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, retina::Error>>,
) -> Result<T, IngestError> {
    match tokio::time::timeout(stall, f).await {
        Err(_) => Err(IngestError::Timeout { after: stall, what }),
        Ok(Err(e)) => Err(IngestError::Rtsp(e.to_string())),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Runs one RTSP session; returns why it ended.
pub async fn session(
    url: &url::Url,
    stall: Duration,
    wanted: &[TrackKind],
    sink: &mut impl Sink,
) -> IngestError {
    match run(url, stall, wanted, sink).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn run(
    url: &url::Url,
    stall: Duration,
    wanted: &[TrackKind],
    sink: &mut impl Sink,
) -> Result<Never, IngestError> {
    let (bare, creds) = split_credentials(url);
    let opts = SessionOptions::default()
        .creds(creds)
        .user_agent(USER_AGENT.to_string());
    let mut session = step(
        stall,
        "the RTSP DESCRIBE response",
        retina::client::Session::describe(bare, opts),
    )
    .await?;

    let offered: Vec<Offered> = session
        .streams()
        .iter()
        .map(|s| Offered {
            media: s.media().to_string(),
            encoding: s.encoding_name().to_string(),
            clock_rate: s.clock_rate_hz(),
            channels: s.channels().map(|c| c.get()),
        })
        .collect();
    let mut plan = choose(&offered, wanted);
    let Some((index, codec)) = plan.video else {
        let names: Vec<String> = offered.iter().map(Offered::name).collect();
        return Err(IngestError::NoVideo(names.join(", ")));
    };
    let clock = offered[index].clock_rate;
    if clock == 0 {
        return Err(IngestError::Rtsp(
            "video stream with a zero clock rate".into(),
        ));
    }
    // AAC needs its AudioSpecificConfig from the SDP's fmtp.
    let mut tracks = Vec::new();
    for (i, kind) in std::mem::take(&mut plan.tracks) {
        let o = &offered[i];
        let payload = match o.encoding.to_ascii_lowercase().as_str() {
            "mpeg4-generic" => match session.streams()[i].parameters() {
                Some(ParametersRef::Audio(a)) if !a.extra_data().is_empty() => Payload::Aac {
                    config: Bytes::copy_from_slice(a.extra_data()),
                },
                _ => {
                    plan.not_carried
                        .push(format!("{} (no AAC config in the SDP)", o.name()));
                    continue;
                }
            },
            _ if kind == TrackKind::Metadata => Payload::Message,
            _ => Payload::Frame,
        };
        tracks.push((
            i,
            TrackDesc {
                kind,
                // retina lowers the name; RFC 3551 and 3640 write audio
                // encodings in capitals, ONVIF its metadata in lower case.
                encoding: if kind == TrackKind::Audio {
                    o.encoding.to_ascii_uppercase()
                } else {
                    o.encoding.to_ascii_lowercase()
                },
                clock_rate: o.clock_rate,
                channels: o.channels,
                payload,
            },
        ));
    }
    let format = FrameFormat {
        h26x_framing: retina::codec::h26x::Framing::FourByteLength,
        parameter_set_insertion: retina::codec::ParameterSetInsertion::Never,
        ..FrameFormat::default()
    };
    let setup = SetupOptions::default()
        .transport(Transport::Tcp(TcpTransportOptions::default()))
        .frame_format(format);
    step(
        stall,
        "the RTSP SETUP response",
        session.setup(index, setup),
    )
    .await?;
    // A track the camera refuses to set up costs that track, not the video.
    let mut set_up = Vec::new();
    if !tracks.is_empty() {
        sink.setting_up_tracks();
    }
    for (i, desc) in tracks {
        let opts =
            SetupOptions::default().transport(Transport::Tcp(TcpTransportOptions::default()));
        match step(stall, "the RTSP SETUP response", session.setup(i, opts)).await {
            Ok(()) => set_up.push((i, desc)),
            Err(e) => {
                // The reason only, not retina's text (it names this
                // session's ports and times, and would log on every retry).
                let why = match &e {
                    IngestError::Timeout { .. } => "no answer",
                    _ => "refused",
                };
                tracing::debug!(error = %e, track = %desc.name(), "track SETUP failed");
                plan.not_carried
                    .push(format!("{} (SETUP {why})", desc.name()));
            }
        }
    }
    let playing = step(
        stall,
        "the RTSP PLAY response",
        // With several streams retina would require RTP-Info's rtptime for
        // each; a camera without it still plays (each stream then starts
        // its time line at its first packet).
        session.play(PlayOptions::default().initial_timestamp(InitialTimestampPolicy::Permissive)),
    )
    .await?;
    let mut demuxed = playing
        .demuxed()
        .map_err(|e| IngestError::Rtsp(e.to_string()))?;

    sink.session_started(codec);
    if let Some(p) = parameter_sets(demuxed.streams()[index].parameters()) {
        sink.parameters(p);
    }
    // Stream index -> track index.
    let track_of: std::collections::HashMap<usize, usize> = set_up
        .iter()
        .enumerate()
        .map(|(t, (i, _))| (*i, t))
        .collect();
    sink.tracks(
        set_up.into_iter().map(|(_, d)| d).collect(),
        plan.not_carried,
    );
    let playing_since = Instant::now();
    let mut last_picture = playing_since;
    let (mut frames, mut bytes) = (0u64, 0u64);
    loop {
        let item = match tokio::time::timeout(stall, demuxed.next()).await {
            Err(_) => return Err(IngestError::Stalled(stall)),
            Ok(None) => {
                return Err(IngestError::RtspClosed {
                    frames,
                    bytes,
                    after: playing_since.elapsed(),
                });
            }
            Ok(Some(Err(e))) => return Err(IngestError::Rtsp(e.to_string())),
            Ok(Some(Ok(item))) => item,
        };
        let now = Instant::now();
        let frame = match item {
            CodecItem::VideoFrame(frame) => frame,
            other => {
                let track = match &other {
                    CodecItem::AudioFrame(f) => Some((f.stream_id(), f.timestamp(), f.data())),
                    CodecItem::MessageFrame(f) => Some((f.stream_id(), f.timestamp(), f.data())),
                    _ => None,
                };
                if let Some((stream, timestamp, data)) = track
                    && let Some(&t) = track_of.get(&stream)
                {
                    sink.track_frame(t, Bytes::copy_from_slice(data), timestamp.elapsed(), now);
                }
                // Sound and metadata alone do not keep a camera alive.
                if now.duration_since(last_picture) > stall {
                    return Err(IngestError::Stalled(stall));
                }
                continue;
            }
        };
        if frame.stream_id() != index {
            continue;
        }
        if frame.has_new_parameters()
            && let Some(p) = parameter_sets(demuxed.streams()[index].parameters())
        {
            sink.parameters(p);
        }
        let ticks =
            i128::from(frame.timestamp().elapsed()) * i128::from(CLOCK_RATE) / i128::from(clock);
        let data = Bytes::from(frame.into_data());
        bytes += data.len() as u64;
        let nals = split_length_prefixed(&data).map_err(IngestError::Frame)?;
        if nals.is_empty() {
            continue;
        }
        let au = AccessUnit::new(codec, nals)?;
        // An absurd camera clock saturates, never wraps.
        let ticks = i64::try_from(ticks).unwrap_or(if ticks < 0 { i64::MIN } else { i64::MAX });
        sink.access_unit(au, MediaTime(ticks), now);
        frames += 1;
        last_picture = now;
    }
}

/// A media of the camera's DESCRIBE.
#[derive(Clone, Debug)]
struct Offered {
    media: String,
    encoding: String,
    clock_rate: u32,
    channels: Option<u16>,
}

impl Offered {
    fn name(&self) -> String {
        format!("{}/{}", self.media, self.encoding)
    }
}

/// What to set up of a DESCRIBE.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    video: Option<(usize, Codec)>,
    /// Stream index and kind of each track besides video.
    tracks: Vec<(usize, TrackKind)>,
    /// Offered but not taken: name and reason.
    not_carried: Vec<String>,
}

/// Audio encodings mcrelay relays (retina depacketizes each, and each has
/// an RTP payload format mcrelay writes back: RFC 3640 for AAC, the frame
/// as the payload for the others).
const AUDIO: &[&str] = &["mpeg4-generic", "pcmu", "pcma", "g722", "l16"];

/// The ONVIF metadata encodings retina depacketizes (plain XML, gzip, EXI).
const METADATA: &[&str] = &[
    "vnd.onvif.metadata",
    "vnd.onvif.metadata.gzip",
    "vnd.onvif.metadata.exi.onvif",
    "vnd.onvif.metadata.exi.ext",
];

/// The first H.264/H.265 video, the first audio and the first metadata
/// stream mcrelay can carry, of those `wanted`; every other media named.
fn choose(offered: &[Offered], wanted: &[TrackKind]) -> Plan {
    let mut plan = Plan::default();
    for (i, o) in offered.iter().enumerate() {
        let encoding = o.encoding.to_ascii_lowercase();
        let kind = match o.media.as_str() {
            "video" => TrackKind::Video,
            "audio" => TrackKind::Audio,
            "application" => TrackKind::Metadata,
            _ => {
                plan.not_carried
                    .push(format!("{} (not audio, video or metadata)", o.name()));
                continue;
            }
        };
        let carried = match kind {
            TrackKind::Video => matches!(encoding.as_str(), "h264" | "h265"),
            TrackKind::Audio => AUDIO.contains(&encoding.as_str()),
            TrackKind::Metadata => METADATA.contains(&encoding.as_str()),
        };
        let taken = match kind {
            TrackKind::Video => plan.video.is_some(),
            _ => plan.tracks.iter().any(|(_, k)| *k == kind),
        };
        let reason = if !carried && matches!(encoding.as_str(), "opus" | "mp4a-latm") {
            // Named apart: the operator can choose AAC (mpeg4-generic) or
            // G.711 on the camera instead.
            Some(
                "not relayed yet: mcrelay's RTSP client has no depacketizer for it; choose AAC or G.711 on the camera",
            )
        } else if !carried {
            Some("an encoding mcrelay does not relay")
        } else if !wanted.contains(&kind) {
            Some("not taken: the channel's tracks setting, or a cool-down after its tracks failed")
        } else if taken {
            Some("the channel already carries one")
        } else if o.clock_rate == 0 {
            Some("a zero clock rate")
        } else {
            None
        };
        match (reason, kind) {
            (Some(why), _) => plan.not_carried.push(format!("{} ({why})", o.name())),
            (None, TrackKind::Video) => {
                let codec = if encoding == "h264" {
                    Codec::H264
                } else {
                    Codec::H265
                };
                plan.video = Some((i, codec));
            }
            (None, kind) => plan.tracks.push((i, kind)),
        }
    }
    plan
}

fn parameter_sets(p: Option<ParametersRef<'_>>) -> Option<Vec<Bytes>> {
    let Some(ParametersRef::Video(v)) = p else {
        return None;
    };
    match v.codec_params() {
        VideoParametersCodec::H264 { sps, pps } => Some(vec![sps.clone(), pps.clone()]),
        VideoParametersCodec::H265 { vps, sps, pps } => {
            Some(vec![vps.clone(), sps.clone(), pps.clone()])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(media: &str, encoding: &str) -> Offered {
        Offered {
            media: media.into(),
            encoding: encoding.into(),
            clock_rate: if media == "video" { 90_000 } else { 8000 },
            channels: None,
        }
    }

    #[test]
    fn every_carried_track_is_set_up_and_the_rest_named() {
        let offered = [
            offer("audio", "opus"),
            offer("video", "H264"),
            offer("audio", "PCMU"),
            offer("video", "H265"),
            offer("audio", "MPEG4-GENERIC"),
            offer("application", "vnd.onvif.metadata"),
            offer("application", "vnd.onvif.metadata.future"),
            offer("text", "t140"),
        ];
        let plan = choose(&offered, &TrackKind::ALL);
        assert_eq!(plan.video, Some((1, Codec::H264)));
        assert_eq!(
            plan.tracks,
            [(2, TrackKind::Audio), (5, TrackKind::Metadata)]
        );
        assert_eq!(
            plan.not_carried,
            [
                "audio/opus (not relayed yet: mcrelay's RTSP client has no depacketizer for it; choose AAC or G.711 on the camera)",
                "video/H265 (the channel already carries one)",
                "audio/MPEG4-GENERIC (the channel already carries one)",
                "application/vnd.onvif.metadata.future (an encoding mcrelay does not relay)",
                "text/t140 (not audio, video or metadata)",
            ]
        );
        let video_only = choose(&offered, &[TrackKind::Video, TrackKind::Metadata]);
        assert_eq!(video_only.tracks, [(5, TrackKind::Metadata)]);
        assert!(
            video_only
                .not_carried
                .contains(&"audio/PCMU (not taken: the channel's tracks setting, or a cool-down after its tracks failed)".to_string())
        );
    }

    #[test]
    fn credentials_leave_the_url() {
        let url = url::Url::parse("rtsp://ad%40min:p%3Ass@198.18.0.5:554/s1").unwrap();
        let (bare, creds) = split_credentials(&url);
        assert_eq!(bare.as_str(), "rtsp://198.18.0.5:554/s1");
        let c = creds.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("ad@min", "p:ss")
        );
        let (_, none) = split_credentials(&url::Url::parse("rtsp://198.18.0.5/s1").unwrap());
        assert!(none.is_none());
    }
}
