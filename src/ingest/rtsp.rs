//! An RTSP camera session (retina): DESCRIBE, SETUP with RTP interleaved on
//! the TCP connection, PLAY, then frames until something fails.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use retina::client::{
    Credentials, PlayOptions, SessionOptions, SetupOptions, TcpTransportOptions, Transport,
};
use retina::codec::{CodecItem, FrameFormat, ParametersRef, VideoParametersCodec};

use super::{IngestError, Sink};
use crate::media::time::CLOCK_RATE;
use crate::media::{AccessUnit, Codec, MediaTime, split_length_prefixed};

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
pub async fn session(url: &url::Url, stall: Duration, sink: &mut impl Sink) -> IngestError {
    match run(url, stall, sink).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn run(url: &url::Url, stall: Duration, sink: &mut impl Sink) -> Result<Never, IngestError> {
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

    let found = session.streams().iter().enumerate().find_map(|(i, s)| {
        let codec = match s.encoding_name().to_ascii_lowercase().as_str() {
            "h264" => Codec::H264,
            "h265" => Codec::H265,
            _ => return None,
        };
        (s.media() == "video").then_some((i, codec))
    });
    let Some((index, codec)) = found else {
        let offered: Vec<String> = session
            .streams()
            .iter()
            .map(|s| format!("{}/{}", s.media(), s.encoding_name()))
            .collect();
        return Err(IngestError::NoVideo(offered.join(", ")));
    };
    let clock = session.streams()[index].clock_rate_hz();
    if clock == 0 {
        return Err(IngestError::Rtsp(
            "video stream with a zero clock rate".into(),
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
    let playing = step(
        stall,
        "the RTSP PLAY response",
        session.play(PlayOptions::default()),
    )
    .await?;
    let mut demuxed = playing
        .demuxed()
        .map_err(|e| IngestError::Rtsp(e.to_string()))?;

    sink.session_started(codec);
    if let Some(p) = parameter_sets(demuxed.streams()[index].parameters()) {
        sink.parameters(p);
    }
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
        let CodecItem::VideoFrame(frame) = item else {
            if now.duration_since(last_picture) > stall {
                return Err(IngestError::Stalled(stall));
            }
            continue;
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
