//! A channel's stream state, sans-IO: access units in, RTP frames out, with
//! sequence numbers and timestamps continuous across camera sessions.

use std::time::Instant;

use bytes::Bytes;

use crate::media::time::Timeline;
use crate::media::{AccessUnit, Codec, MediaTime, ParamSets};
use crate::rtp::{Frame, Packetizer, PacketizerConfig, VIDEO_PAYLOAD_TYPE};

/// Identity and numbering of a channel's RTP stream. RFC 3550 5.1 asks for
/// random initial sequence number and timestamp and a random SSRC; the
/// runtime draws them, this struct only keeps them.
#[derive(Copy, Clone, Debug)]
pub struct StreamIds {
    pub ssrc: u32,
    pub initial_seq: u16,
    pub rtp_base: u32,
}

pub struct ChannelCore {
    ids: StreamIds,
    max_payload: usize,
    packetizer: Option<Packetizer>,
    timeline: Timeline,
    in_session: bool,
}

impl ChannelCore {
    pub fn new(ids: StreamIds, max_payload: usize) -> Self {
        ChannelCore {
            ids,
            max_payload,
            packetizer: None,
            timeline: Timeline::new(),
            in_session: false,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ids.ssrc
    }

    pub fn codec(&self) -> Option<Codec> {
        self.packetizer.as_ref().map(Packetizer::codec)
    }

    pub fn params(&self) -> Option<&ParamSets> {
        self.packetizer.as_ref().map(Packetizer::params)
    }

    /// A camera session starts with `codec`. Timestamps re-anchor at its
    /// first frame; sequence numbers go on, even if the codec changed.
    pub fn start_session(&mut self, codec: Codec) {
        self.timeline.new_session();
        self.in_session = true;
        if self.codec() != Some(codec) {
            let seq = self
                .packetizer
                .as_ref()
                .map_or(self.ids.initial_seq, Packetizer::next_seq);
            self.packetizer = Some(Packetizer::new(
                codec,
                PacketizerConfig {
                    payload_type: VIDEO_PAYLOAD_TYPE,
                    ssrc: self.ids.ssrc,
                    max_payload: self.max_payload,
                    aggregate: true,
                },
                seq,
            ));
        }
    }

    pub fn end_session(&mut self) {
        self.in_session = false;
    }

    /// Parameter sets learned out of band. Returns true if any changed.
    pub fn set_params(&mut self, nals: Vec<Bytes>) -> bool {
        self.packetizer
            .as_mut()
            .is_some_and(|p| p.update_params(nals))
    }

    /// Packetizes an access unit whose source timestamp is `source` (90 kHz,
    /// the session's own timeline). Returns the frame and whether the
    /// parameter sets changed; `None` outside a session or on a codec mismatch.
    pub fn push(
        &mut self,
        au: &AccessUnit,
        source: MediaTime,
        arrival: Instant,
    ) -> Option<(Frame, bool)> {
        if !self.in_session {
            return None;
        }
        let p = self.packetizer.as_mut().filter(|p| p.codec() == au.codec)?;
        let time = self.timeline.map(source, arrival);
        let rtp_timestamp = time.rtp(self.ids.rtp_base);
        let (packets, params_changed) = p.packetize(au, rtp_timestamp);
        Some((
            Frame {
                packets,
                key: au.key,
                time,
                rtp_timestamp,
                arrival,
                interleaved: Default::default(),
            },
            params_changed,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn au(key: bool) -> AccessUnit {
        let nal = if key {
            vec![0x65, 0x88, 1, 2]
        } else {
            vec![0x41, 0x9a, 1, 2]
        };
        AccessUnit::new(Codec::H264, vec![Bytes::from(nal)]).unwrap()
    }

    #[test]
    fn sequence_and_timestamps_continue_across_sessions() {
        let ids = StreamIds {
            ssrc: 1,
            initial_seq: 65535,
            rtp_base: u32::MAX - 3600,
        };
        let mut c = ChannelCore::new(ids, 1400);
        let t0 = Instant::now();
        assert!(
            c.push(&au(true), MediaTime(0), t0).is_none(),
            "no session yet"
        );
        c.start_session(Codec::H264);
        let (f1, _) = c.push(&au(true), MediaTime(500), t0).unwrap();
        let (f2, _) = c
            .push(&au(false), MediaTime(4100), t0 + Duration::from_millis(40))
            .unwrap();
        assert_eq!(f1.packets[0].seq(), 65535);
        assert_eq!(f2.packets[0].seq(), 0);
        assert_eq!(f1.rtp_timestamp, u32::MAX - 3600);
        assert_eq!(f2.rtp_timestamp, u32::MAX, "3600 ticks later");
        // The camera comes back one second later with its clock reset.
        c.end_session();
        c.start_session(Codec::H264);
        let (f3, _) = c
            .push(&au(true), MediaTime(0), t0 + Duration::from_millis(1040))
            .unwrap();
        assert_eq!(f3.packets[0].seq(), 1);
        assert_eq!(f3.rtp_timestamp, 90_000 - 1, "wrapped, one second after f2");
        assert!(f3.time > f2.time);
    }

    #[test]
    fn codec_change_keeps_the_sequence() {
        let mut c = ChannelCore::new(
            StreamIds {
                ssrc: 1,
                initial_seq: 10,
                rtp_base: 0,
            },
            1400,
        );
        c.start_session(Codec::H264);
        c.push(&au(false), MediaTime(0), Instant::now()).unwrap();
        c.start_session(Codec::H265);
        assert_eq!(c.codec(), Some(Codec::H265));
        assert!(
            c.push(&au(false), MediaTime(0), Instant::now()).is_none(),
            "H.264 unit on an H.265 session"
        );
        let h265 = AccessUnit::new(
            Codec::H265,
            vec![Bytes::from_static(&[0x02, 0x01, 0xd0, 1])],
        )
        .unwrap();
        let (f, _) = c.push(&h265, MediaTime(0), Instant::now()).unwrap();
        assert_eq!(f.packets[0].seq(), 11);
    }
}
