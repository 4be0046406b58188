//! The tracks of a channel besides its video: audio and ONVIF metadata.
//!
//! Their payloads go out exactly as the camera coded them (never decoded or
//! re-encoded); only the RTP framing is mcrelay's: SSRC, sequence numbers,
//! timestamps on the channel's timeline, and for AAC the RFC 3640 AU header.

use std::fmt::Write as _;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A kind of track, as a channel's `tracks` setting names it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Video,
    Audio,
    /// ONVIF metadata (`application/vnd.onvif.metadata`): motion and
    /// analytics events, ANPR among them.
    Metadata,
}

impl TrackKind {
    pub const ALL: [TrackKind; 3] = [TrackKind::Video, TrackKind::Audio, TrackKind::Metadata];

    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Video => "video",
            TrackKind::Audio => "audio",
            TrackKind::Metadata => "metadata",
        }
    }

    /// The SDP media type (`m=` line) of this kind.
    pub fn sdp_media(self) -> &'static str {
        match self {
            TrackKind::Video => "video",
            TrackKind::Audio => "audio",
            TrackKind::Metadata => "application",
        }
    }
}

impl std::fmt::Display for TrackKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a track's frames become RTP payloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// MPEG-4 AAC, RFC 3640 AAC-hbr: one access unit per packet behind a
    /// 16-bit AU header (sizeLength 13, indexLength 3), fragmented when it
    /// does not fit. `config` is the AudioSpecificConfig.
    Aac { config: Bytes },
    /// One frame is one RTP payload, relayed byte for byte (G.711, G.722,
    /// L16: the frame the camera sent in one packet).
    Frame,
    /// One message (an ONVIF metadata XML document) split across packets,
    /// the marker bit on its last (ONVIF Streaming Specification 5.2.1.1).
    Message,
}

/// One track besides video, as the camera's DESCRIBE offered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackDesc {
    pub kind: TrackKind,
    /// The encoding name as written in `a=rtpmap` ("PCMU", "MPEG4-GENERIC",
    /// "vnd.onvif.metadata").
    pub encoding: String,
    pub clock_rate: u32,
    /// Audio channels, when the camera's rtpmap says.
    pub channels: Option<u16>,
    pub payload: Payload,
}

/// First dynamic payload type for tracks besides video (video is 96).
const FIRST_TRACK_PAYLOAD_TYPE: u8 = 97;

impl TrackDesc {
    /// The RTP payload type of the track in position `index` among the
    /// channel's extra tracks: the static one of RFC 3551 where it exists
    /// (PCMU 0, PCMA 8, G722 9, all mono), else dynamic from 97.
    pub fn payload_type(&self, index: usize) -> u8 {
        let mono = self.channels.is_none_or(|c| c == 1);
        match (self.encoding.to_ascii_uppercase().as_str(), self.clock_rate) {
            ("PCMU", 8000) if mono => 0,
            ("PCMA", 8000) if mono => 8,
            ("G722", 8000) if mono => 9,
            _ => FIRST_TRACK_PAYLOAD_TYPE.saturating_add(index.min(30) as u8),
        }
    }

    /// Whether each byte of a frame is one tick of the track's clock and a
    /// frame can be cut at any byte (G.711 mono: one sample a byte, no
    /// state between samples), so that a part of a frame is sound of its own.
    pub fn byte_per_tick(&self) -> bool {
        let mono = self.channels.is_none_or(|c| c == 1);
        let enc = self.encoding.to_ascii_uppercase();
        mono && self.clock_rate == 8000
            && matches!(self.payload, Payload::Frame)
            && (enc == "PCMU" || enc == "PCMA")
    }

    /// G.711 mu-law, mono, as cameras send it (tests).
    #[cfg(test)]
    pub fn pcmu() -> TrackDesc {
        TrackDesc {
            kind: TrackKind::Audio,
            encoding: "PCMU".into(),
            clock_rate: 8000,
            channels: None,
            payload: Payload::Frame,
        }
    }

    /// `a=rtpmap` after the payload type: `PCMU/8000`, `MPEG4-GENERIC/48000/2`.
    pub fn rtpmap(&self) -> String {
        let mut s = format!("{}/{}", self.encoding, self.clock_rate);
        if let Some(c) = self.channels {
            let _ = write!(s, "/{c}");
        }
        s
    }

    /// `a=fmtp` after the payload type, when the encoding needs one.
    pub fn fmtp(&self) -> Option<String> {
        match &self.payload {
            Payload::Aac { config } => {
                let mut hex = String::with_capacity(config.len() * 2);
                for b in config.iter() {
                    let _ = write!(hex, "{b:02x}");
                }
                Some(format!(
                    "streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config={hex}"
                ))
            }
            Payload::Frame | Payload::Message => None,
        }
    }

    /// `audio/PCMU`, for logs and status.
    pub fn name(&self) -> String {
        format!("{}/{}", self.kind, self.encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(encoding: &str, clock_rate: u32, channels: Option<u16>, payload: Payload) -> TrackDesc {
        TrackDesc {
            kind: TrackKind::Audio,
            encoding: encoding.into(),
            clock_rate,
            channels,
            payload,
        }
    }

    #[test]
    fn static_payload_types_only_where_rfc_3551_defines_them() {
        assert_eq!(desc("PCMU", 8000, None, Payload::Frame).payload_type(0), 0);
        assert_eq!(
            desc("pcma", 8000, Some(1), Payload::Frame).payload_type(0),
            8
        );
        assert_eq!(desc("G722", 8000, None, Payload::Frame).payload_type(1), 9);
        // Stereo or another rate is not the static type.
        assert_eq!(
            desc("PCMU", 8000, Some(2), Payload::Frame).payload_type(0),
            97
        );
        assert_eq!(
            desc("PCMU", 16000, None, Payload::Frame).payload_type(1),
            98
        );
        assert_eq!(
            desc("L16", 44100, Some(2), Payload::Frame).rtpmap(),
            "L16/44100/2"
        );
    }

    #[test]
    fn aac_fmtp_carries_the_config_for_hbr_framing() {
        let d = desc(
            "MPEG4-GENERIC",
            48000,
            Some(2),
            Payload::Aac {
                config: Bytes::from_static(&[0x11, 0x90]),
            },
        );
        assert_eq!(d.rtpmap(), "MPEG4-GENERIC/48000/2");
        assert_eq!(
            d.fmtp().unwrap(),
            "streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1190"
        );
    }
}
