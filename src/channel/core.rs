//! A channel's stream state, sans-IO: access units in, RTP frames out, with
//! sequence numbers and timestamps continuous across camera sessions.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::resume::{ChannelPoint, Progress, StreamPoint, unix_ms};
use crate::media::time::{CLOCK_RATE, Timeline};
use crate::media::{AccessUnit, Codec, MediaTime, ParamSets, TrackDesc, TrackKind};
use crate::rtp::rtcp::AnchorRule;
use crate::rtp::track::{TrackError, TrackPacketizer};
use crate::rtp::{Frame, Packetizer, PacketizerConfig, VIDEO_PAYLOAD_TYPE};

/// Identity and numbering of a channel's RTP stream: the SSRC is the
/// site's for the channel, the first sequence number and timestamp random
/// (RFC 3550 5.1) or continuing where the stream stood
/// ([`super::resume`]); the runtime chooses, this struct only keeps them.
#[derive(Copy, Clone, Debug)]
pub struct StreamIds {
    pub ssrc: u32,
    pub initial_seq: u16,
    pub rtp_base: u32,
}

impl StreamIds {
    /// The identity of the channel's track of `kind` besides video: its
    /// SSRC derived from the video's SSRC alone (as stable as it, and never
    /// equal to it), its numbering from the video's.
    pub fn for_track(&self, kind: TrackKind) -> StreamIds {
        let a = mix64(u64::from(self.ssrc) << 8 ^ kind as u64);
        let b = mix64(a ^ (u64::from(self.rtp_base) << 16 | u64::from(self.initial_seq)));
        let mut ssrc = a as u32;
        if ssrc == self.ssrc {
            ssrc = !ssrc;
        }
        StreamIds {
            ssrc,
            initial_seq: (b >> 32) as u16,
            rtp_base: b as u32,
        }
    }
}

/// splitmix64's finalizer: every input bit moves every output bit.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One track besides video: its identity and packetizer.
pub struct TrackCore {
    pub desc: TrackDesc,
    pub ids: StreamIds,
    pub payload_type: u8,
    packetizer: TrackPacketizer,
    tally: Tally,
}

/// What a stream sent since its last [`StreamPoint`]: its timestamps'
/// progress and a packet rate.
#[derive(Debug, Default)]
struct Tally {
    progress: Progress,
    packets: u32,
    /// Packets a second: the peak, decaying by a quarter a point.
    rate: u32,
}

impl Tally {
    fn count(&mut self, rtp_timestamp: u32, packets: usize) {
        self.progress.see(rtp_timestamp);
        self.packets = self.packets.saturating_add(packets as u32);
    }

    fn point(
        &mut self,
        ids: (u32, u16),
        clock_rate: u32,
        sent: u64,
        dt: Duration,
    ) -> Option<StreamPoint> {
        let now = (f64::from(self.packets) / dt.as_secs_f64().max(0.001)).min(1e9) as u32;
        self.rate = now.max(self.rate - self.rate / 4);
        self.packets = 0;
        Some(StreamPoint {
            ssrc: ids.0,
            next_seq: ids.1,
            rtp_timestamp: self.progress.furthest()?,
            clock_rate,
            sent_unix_ms: sent,
            packet_rate: self.rate,
            frame_ticks: self.progress.step(),
        })
    }
}

pub struct ChannelCore {
    ids: StreamIds,
    max_payload: usize,
    packetizer: Option<Packetizer>,
    timeline: Timeline,
    in_session: bool,
    tracks: Vec<TrackCore>,
    /// The video's media time and instant that its RTCP reports map by
    /// (the rule of [`crate::rtp::rtcp::RtcpSender`]): tracks besides
    /// video are placed in real time by the same anchor.
    clock: Option<(MediaTime, Instant)>,
    clock_rule: AnchorRule,
    /// Tracks of earlier sessions, by kind: a camera that comes back with
    /// the same track continues its sequence numbers.
    retired: Vec<TrackCore>,
    /// Numbering that continues a track of an earlier emitter, by kind,
    /// until a session has that track.
    resumed: Vec<(TrackKind, StreamIds, u32)>,
    /// When the resumed numbering was computed: the first frame moves the
    /// timestamps on by the time since (see [`ChannelCore::resume`]).
    resumed_at: Option<Instant>,
    tally: Tally,
    last_point: Option<Instant>,
    /// The tracks' timestamps moved since [`ChannelCore::take_rebased`]
    /// last said (a resumed channel's first picture).
    rebased: bool,
}

impl ChannelCore {
    pub fn new(ids: StreamIds, max_payload: usize) -> Self {
        ChannelCore {
            ids,
            max_payload,
            packetizer: None,
            timeline: Timeline::new(),
            in_session: false,
            tracks: Vec::new(),
            retired: Vec::new(),
            clock: None,
            clock_rule: AnchorRule::default(),
            resumed: Vec::new(),
            resumed_at: None,
            tally: Tally::default(),
            last_point: None,
            rebased: false,
        }
    }

    /// The channel continues an earlier emitter's streams, numbered as of
    /// `at`: tracks besides video continue these (with their clock rates)
    /// when a session has them, and the first picture, whenever it comes,
    /// moves every timestamp on by the time since `at`. So the first frame
    /// stands where the earlier emitter's timeline would have put it, and
    /// this channel's sender reports (which map it to when it arrived)
    /// agree with the earlier emitter's: receivers that sync by reports
    /// see no jump back (ffmpeg did, by the camera's connect time).
    pub fn resume(&mut self, tracks: Vec<(TrackKind, StreamIds, u32)>, at: Instant) {
        self.resumed = tracks;
        self.resumed_at = Some(at);
    }

    /// At the first picture of a resumed channel: every timestamp on by
    /// the time since the numbering was computed.
    fn catch_up(&mut self, arrival: Instant) {
        let Some(at) = self.resumed_at.take() else {
            return;
        };
        let d = arrival.saturating_duration_since(at);
        let ticks = |rate: u32| (d.as_nanos() * u128::from(rate) / 1_000_000_000) as u32;
        self.ids.rtp_base = self.ids.rtp_base.wrapping_add(ticks(CLOCK_RATE));
        for t in &mut self.tracks {
            t.ids.rtp_base = t.ids.rtp_base.wrapping_add(ticks(t.desc.clock_rate));
        }
        for (_, ids, rate) in &mut self.resumed {
            ids.rtp_base = ids.rtp_base.wrapping_add(ticks(*rate));
        }
        self.rebased = !self.tracks.is_empty();
    }

    /// Whether the tracks' timestamps moved (so what sinks know of their
    /// numbering is stale) since this was last asked.
    pub fn take_rebased(&mut self) -> bool {
        std::mem::take(&mut self.rebased)
    }

    /// In a session, before its first picture: a track's frame has
    /// nothing to be placed by yet.
    pub fn awaits_first_picture(&self) -> bool {
        self.in_session && self.timeline.offset().is_none()
    }

    /// The media time a frame of track `index` at `elapsed` ticks of the
    /// session's time line stands at ([`ChannelCore::push_track`]'s); `None`
    /// before the session's first picture or for an unknown track.
    pub fn track_time(&self, index: usize, elapsed: i64) -> Option<MediaTime> {
        let offset = self.timeline.offset()?;
        let clock = i128::from(self.tracks.get(index)?.desc.clock_rate.max(1));
        let time = i128::from(elapsed) * i128::from(CLOCK_RATE) / clock + i128::from(offset);
        Some(MediaTime(
            time.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
        ))
    }

    /// Where the channel's streams stand, at most every `every`: `None`
    /// before then, or before the first picture.
    pub fn point(
        &mut self,
        now: Instant,
        wall: impl FnOnce() -> SystemTime,
        every: Duration,
    ) -> Option<ChannelPoint> {
        let dt = match self.last_point {
            Some(t) if now.duration_since(t) < every => return None,
            Some(t) => now.duration_since(t),
            None => every,
        };
        self.last_point = Some(now);
        // The wall clock is read only when a point is due.
        let sent = unix_ms(wall());
        let next_seq = self.packetizer.as_ref()?.next_seq();
        let video = self
            .tally
            .point((self.ids.ssrc, next_seq), CLOCK_RATE, sent, dt)?;
        let tracks = self
            .tracks
            .iter_mut()
            .filter_map(|t| {
                let p = t.tally.point(
                    (t.ids.ssrc, t.packetizer.next_seq()),
                    t.desc.clock_rate,
                    sent,
                    dt,
                )?;
                Some((t.desc.kind, p))
            })
            .collect();
        Some(ChannelPoint { video, tracks })
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

    /// The session's tracks besides video, in the ingest's order. A track
    /// of a kind seen before keeps its SSRC and continues its sequence
    /// numbers. Returns true if they differ from the last session's.
    pub fn set_tracks(&mut self, descs: Vec<TrackDesc>) -> bool {
        let before: Vec<&TrackDesc> = self.tracks.iter().map(|t| &t.desc).collect();
        let changed =
            before.len() != descs.len() || before.iter().zip(&descs).any(|(a, b)| *a != b);
        self.retired.append(&mut self.tracks);
        for (index, desc) in descs.into_iter().enumerate() {
            let old = self
                .retired
                .iter()
                .position(|t| t.desc.kind == desc.kind)
                .map(|i| self.retired.swap_remove(i));
            // A track of an earlier session keeps its numbering; one that
            // an earlier emitter sent continues it.
            let resumed = self
                .resumed
                .iter()
                .position(|(k, _, _)| *k == desc.kind)
                .map(|i| self.resumed.swap_remove(i).1);
            let ids = old
                .as_ref()
                .map(|t| t.ids)
                .or(resumed)
                .unwrap_or_else(|| self.ids.for_track(desc.kind));
            let seq = old
                .as_ref()
                .map_or(ids.initial_seq, |t| t.packetizer.next_seq());
            let payload_type = desc.payload_type(index);
            let packetizer = TrackPacketizer::new(
                desc.payload.clone(),
                payload_type,
                ids.ssrc,
                seq,
                self.max_payload,
            );
            self.tracks.push(TrackCore {
                desc,
                ids,
                payload_type,
                packetizer,
                tally: Tally::default(),
            });
        }
        changed
    }

    pub fn tracks(&self) -> &[TrackCore] {
        &self.tracks
    }

    /// Packetizes a frame of track `index` whose source time is `elapsed`
    /// ticks of the track's clock on the session's time line. Placed on
    /// the channel's timeline by the video's offset: `None` outside a
    /// session, for an unknown track, or before the session's first
    /// picture (nothing to be in sync with yet).
    pub fn push_track(
        &mut self,
        index: usize,
        data: &Bytes,
        elapsed: i64,
    ) -> Option<Result<Frame, TrackError>> {
        if !self.in_session {
            return None;
        }
        let offset = self.timeline.offset()?;
        let (video_time, video_at) = self.clock?;
        // Output media time (90 kHz) and the track's RTP timestamp: both
        // are its source time moved by the session's offset, so a track
        // keeps the camera's own sync with the video.
        let time = self.track_time(index, elapsed)?;
        let track = self.tracks.get_mut(index)?;
        let clock = i128::from(track.desc.clock_rate.max(1));
        let rate = i128::from(CLOCK_RATE);
        let ticks = i128::from(elapsed) + (i128::from(offset) * clock).div_euclid(rate);
        let rtp_timestamp = (ticks + i128::from(track.ids.rtp_base)).rem_euclid(1 << 32) as u32;
        // The instant this media time stands for, by the video's clock: what
        // RTCP maps to wall-clock time, the same way for every track.
        let ahead = time.0.saturating_sub(video_time.0);
        let d = std::time::Duration::from_nanos(
            (u128::from(ahead.unsigned_abs()) * 1_000_000_000 / CLOCK_RATE as u128)
                .min(u64::MAX as u128) as u64,
        );
        let arrival = if ahead >= 0 {
            video_at.checked_add(d)
        } else {
            video_at.checked_sub(d)
        }
        .unwrap_or(video_at);
        Some(
            track
                .packetizer
                .packetize(data, rtp_timestamp)
                .inspect(|packets| track.tally.count(rtp_timestamp, packets.len()))
                .map(|packets| Frame {
                    packets,
                    key: true,
                    time,
                    rtp_timestamp,
                    arrival,
                    track: (index + 1).min(255) as u8,
                    interleaved: Default::default(),
                }),
        )
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
        if self
            .packetizer
            .as_ref()
            .is_some_and(|p| p.codec() == au.codec)
        {
            self.catch_up(arrival);
        }
        let p = self.packetizer.as_mut().filter(|p| p.codec() == au.codec)?;
        let time = self.timeline.map(source, arrival);
        self.clock = Some(reanchor(self.clock, &mut self.clock_rule, time, arrival));
        let rtp_timestamp = time.rtp(self.ids.rtp_base);
        let (packets, params_changed) = p.packetize(au, rtp_timestamp);
        self.tally.count(rtp_timestamp, packets.len());
        Some((
            Frame {
                packets,
                key: au.key,
                time,
                rtp_timestamp,
                arrival,
                track: 0,
                interleaved: Default::default(),
            },
            params_changed,
        ))
    }
}

/// The anchor after a picture at `time` that arrived `at`, by the rule of
/// the video's reports ([`AnchorRule`]).
fn reanchor(
    anchor: Option<(MediaTime, Instant)>,
    rule: &mut AnchorRule,
    time: MediaTime,
    at: Instant,
) -> (MediaTime, Instant) {
    let implied = anchor.and_then(|(t0, a0)| {
        let ticks = time.0.saturating_sub(t0.0);
        let d = std::time::Duration::from_nanos(
            (u128::from(ticks.unsigned_abs()) * 1_000_000_000 / u128::from(CLOCK_RATE))
                .min(u128::from(u64::MAX)) as u64,
        );
        if ticks >= 0 {
            a0.checked_add(d)
        } else {
            a0.checked_sub(d)
        }
    });
    match anchor {
        Some(a) if !rule.moves(implied, at) => a,
        _ => (time, at),
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
    fn a_resumed_channel_moves_its_timestamps_on_to_its_first_frame() {
        use crate::media::{Payload, TrackDesc};
        let ids = |ssrc, rtp_base| StreamIds {
            ssrc,
            initial_seq: 10,
            rtp_base,
        };
        let mut c = ChannelCore::new(ids(1, 1000), 1400);
        let t0 = Instant::now();
        c.resume(vec![(TrackKind::Audio, ids(2, 500), 8000)], t0);
        c.start_session(Codec::H264);
        c.set_tracks(vec![TrackDesc {
            kind: TrackKind::Audio,
            encoding: "PCMU".into(),
            clock_rate: 8000,
            channels: None,
            payload: Payload::Frame,
        }]);
        // The camera's first picture comes half a second after the
        // numbering was computed: 45000 ticks of video, 4000 of sound on.
        let (v, _) = c
            .push(&au(true), MediaTime(0), t0 + Duration::from_millis(500))
            .unwrap();
        assert_eq!(v.rtp_timestamp, 46_000);
        assert_eq!(v.packets[0].seq(), 10);
        let a = c
            .push_track(0, &Bytes::from_static(&[0xff; 160]), 0)
            .unwrap()
            .unwrap();
        assert_eq!((a.packets[0].ssrc(), a.rtp_timestamp), (2, 4500));
        // Only once.
        let (v2, _) = c
            .push(&au(false), MediaTime(3600), t0 + Duration::from_millis(540))
            .unwrap();
        assert_eq!(v2.rtp_timestamp, 49_600);
    }

    #[test]
    fn a_track_keeps_the_cameras_sync_and_its_numbering_across_sessions() {
        use crate::media::{Payload, TrackDesc};
        let ids = StreamIds {
            ssrc: 5,
            initial_seq: 100,
            rtp_base: 1000,
        };
        let pcmu = TrackDesc {
            kind: TrackKind::Audio,
            encoding: "PCMU".into(),
            clock_rate: 8000,
            channels: None,
            payload: Payload::Frame,
        };
        let mut c = ChannelCore::new(ids, 1400);
        let t0 = Instant::now();
        c.start_session(Codec::H264);
        assert!(c.set_tracks(vec![pcmu.clone()]));
        let audio = Bytes::from_static(&[0xff; 160]);
        assert!(
            c.push_track(0, &audio, 0).is_none(),
            "no picture yet to be in sync with"
        );
        // The camera's video starts at 9000 ticks (0.1 s) of its time line.
        let (v, _) = c.push(&au(true), MediaTime(9000), t0).unwrap();
        assert_eq!(v.time, MediaTime(0));
        // Audio at 0.2 s of the same time line: 0.1 s after that picture.
        let a = c.push_track(0, &audio, 1600).unwrap().unwrap();
        assert_eq!(a.time, MediaTime(9000));
        assert_eq!(a.arrival, t0 + Duration::from_millis(100));
        let track = &c.tracks()[0];
        assert_ne!(track.ids.ssrc, 5, "its own SSRC");
        assert_eq!(track.payload_type, 0);
        let base = track.ids.rtp_base;
        assert_eq!(a.rtp_timestamp, base.wrapping_add(1600 - 800));
        let seq = a.packets[0].seq();
        let a2 = c.push_track(0, &audio, 1760).unwrap().unwrap();
        assert_eq!(a2.rtp_timestamp.wrapping_sub(a.rtp_timestamp), 160);
        // The camera comes back with the same audio: same SSRC, next number.
        c.end_session();
        c.start_session(Codec::H264);
        assert!(!c.set_tracks(vec![pcmu]));
        c.push(&au(true), MediaTime(0), t0 + Duration::from_secs(1))
            .unwrap();
        let a3 = c.push_track(0, &audio, 0).unwrap().unwrap();
        assert_eq!(a3.packets[0].seq(), seq.wrapping_add(2));
        assert_eq!(c.tracks()[0].ids.ssrc, track_ssrc(&c));
        assert!(c.push_track(1, &audio, 0).is_none(), "no such track");
    }

    fn track_ssrc(c: &ChannelCore) -> u32 {
        c.ids.for_track(TrackKind::Audio).ssrc
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
