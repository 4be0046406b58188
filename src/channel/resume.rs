//! One RTP stream per channel, whoever sends it and however often it
//! restarts. A workstation that joined a channel by its SDP knows one SSRC,
//! expects sequence numbers to go on and timestamps to move forward; a new
//! random SSRC and sequence number after a restart blinds it (it drops the
//! packets as late, or waits on the old source). So a channel's SSRCs are
//! derived from the site (owner and channel id), and where the stream last
//! stood is kept ([`StreamPoint`]): a restarted server, or later a server
//! that takes the channel over, continues from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::core::StreamIds;
use crate::media::TrackKind;

/// Packets that may have gone out after a point was saved, as seconds of
/// its packet rate: the point is refreshed every [`POINT_EVERY`] and
/// written every [`STATE_EVERY`], with a second to spare for a busy host.
const MARGIN_SECONDS: u32 = 2;
/// A margin of at least this many packets.
const MIN_MARGIN: u32 = 64;
/// And at most this many: far past what RFC 3550's receivers take as a
/// gap (3000), but never near half the sequence space, where a jump would
/// read as packets from the past.
const MAX_MARGIN: u32 = 30_000;

/// How often a channel refreshes its point.
pub const POINT_EVERY: Duration = Duration::from_millis(250);
/// How often the runtime writes the points of its channels to disk.
pub const STATE_EVERY: Duration = Duration::from_secs(1);

/// Where one RTP stream stands: what a later emitter of the same stream
/// continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPoint {
    pub ssrc: u32,
    /// The sequence number the next packet would have had.
    pub next_seq: u16,
    /// The RTP timestamp furthest ahead sent (with B-frames, not always
    /// the last frame's).
    pub rtp_timestamp: u32,
    pub clock_rate: u32,
    /// When that frame was sent, milliseconds since the Unix epoch.
    pub sent_unix_ms: u64,
    /// Packets a second of late (the peak, decaying): how many may have
    /// been sent after this point.
    pub packet_rate: u32,
    /// The stream's smallest step forward between two frames, in ticks
    /// (a frame's or an audio packet's duration; 0: unknown). A stream
    /// that continues moves on at least this much, so that its first frame
    /// never lands on the same instant as the last one sent (ffmpeg reads
    /// that as time standing still).
    #[serde(default)]
    pub frame_ticks: u32,
}

impl StreamPoint {
    /// The numbering of a stream that continues this one, starting at
    /// `now`: the same SSRC, sequence numbers past any the last emitter may
    /// have sent after this point, and timestamps moved on by the time
    /// since (a receiver sees a gap, never time going back).
    pub fn resume(&self, now: SystemTime) -> StreamIds {
        let margin =
            (self.packet_rate.saturating_mul(MARGIN_SECONDS)).clamp(MIN_MARGIN, MAX_MARGIN) as u16;
        let since_ms = unix_ms(now).saturating_sub(self.sent_unix_ms);
        // At least a frame: the first frame is never the last one again.
        let ticks = (u128::from(since_ms) * u128::from(self.clock_rate) / 1000)
            .max(u128::from(self.frame_ticks))
            .max(1);
        StreamIds {
            ssrc: self.ssrc,
            initial_seq: self.next_seq.wrapping_add(margin),
            rtp_base: self.rtp_timestamp.wrapping_add(ticks as u32),
        }
    }
}

/// A step between two timestamps in a row larger than this is a jump, not
/// a frame's duration (about 11 s at 90 kHz).
const STEP_MAX: u32 = 1 << 20;
/// A timestamp this far behind the furthest one is a stream that jumped
/// back (followed), not a frame sent out of order (about 3 min at 90 kHz).
const BEHIND_MAX: u32 = 1 << 24;

/// What a stream's timestamps show, frame by frame or packet by packet:
/// the one furthest ahead (a camera with B-frames sends later pictures
/// before earlier ones) and the smallest step forward between two in a
/// row (the frame duration).
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    furthest: Option<u32>,
    prev: Option<u32>,
    step: u32,
}

impl Progress {
    pub fn see(&mut self, ts: u32) {
        if let Some(p) = self.prev {
            let d = ts.wrapping_sub(p);
            if d != 0 && d < STEP_MAX && (self.step == 0 || d < self.step) {
                self.step = d;
            }
        }
        self.prev = Some(ts);
        self.furthest = Some(match self.furthest {
            Some(f) if (1..BEHIND_MAX).contains(&f.wrapping_sub(ts)) => f,
            _ => ts,
        });
    }

    /// The timestamp furthest ahead seen; `None` before the first.
    pub fn furthest(&self) -> Option<u32> {
        self.furthest
    }

    /// The smallest step forward seen; 0 before two timestamps.
    pub fn step(&self) -> u32 {
        self.step
    }
}

/// RTP clock rates a camera's streams use: what a heard stream's measured
/// rate is rounded to.
const CLOCK_RATES: [u32; 10] = [
    8000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 90_000,
];
/// How long a heard stream is measured before its clock rate is taken.
const RATE_AFTER_MS: u64 = 2000;

/// Where a stream heard on a group stands, packet by packet: what a
/// server that takes the group over continues. Its clock rate comes from
/// a static payload type, else from its timestamps against the wall
/// clock (0 until then: a continuation moves on by a frame only).
#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// The clock rate known before the first packet (0: none).
    known: u32,
    progress: Progress,
    last: Option<(u32, u16, u64)>,
    clock_rate: u32,
    first: Option<(u32, u64)>,
    window: (u64, u32),
    rate: u32,
}

impl Watch {
    /// Watches a stream whose clock rate is `clock_rate` if known (video:
    /// 90 kHz), else 0.
    pub fn new(clock_rate: u32) -> Watch {
        Watch {
            known: clock_rate,
            clock_rate,
            ..Watch::default()
        }
    }

    /// An RTP packet heard at `now_ms` (Unix milliseconds).
    pub fn packet(&mut self, ssrc: u32, payload_type: u8, seq: u16, ts: u32, now_ms: u64) {
        if self.last.is_some_and(|(s, _, _)| s != ssrc) {
            *self = Watch::new(self.known);
        }
        self.progress.see(ts);
        self.last = Some((ssrc, seq, now_ms));
        if self.clock_rate == 0 {
            self.clock_rate = match payload_type {
                0 | 3..=5 | 7..=9 | 12 | 13 | 15 | 18 => 8000,
                6 => 16_000,
                10 | 11 => 44_100,
                _ => self.measure(ts, now_ms),
            };
        }
        self.window.1 = self.window.1.saturating_add(1);
        if now_ms.saturating_sub(self.window.0) >= 1000 {
            self.rate = self.window.1.max(self.rate - self.rate / 4);
            self.window = (now_ms, 0);
        }
    }

    /// The clock rate the timestamps show against the wall clock, once
    /// measured long enough (0 before).
    fn measure(&mut self, ts: u32, now_ms: u64) -> u32 {
        let Some((ts0, at0)) = self.first else {
            self.first = Some((ts, now_ms));
            return 0;
        };
        let ms = now_ms.saturating_sub(at0);
        if ms < RATE_AFTER_MS {
            return 0;
        }
        let measured = f64::from(ts.wrapping_sub(ts0)) * 1000.0 / ms as f64;
        CLOCK_RATES
            .into_iter()
            .min_by(|a, b| {
                let off = |r: u32| (measured / f64::from(r)).ln().abs();
                off(*a).total_cmp(&off(*b))
            })
            .filter(|r| (measured / f64::from(*r) - 1.0).abs() < 0.1)
            .unwrap_or_else(|| {
                // Not a rate a camera uses: measure again.
                self.first = Some((ts, now_ms));
                0
            })
    }

    /// Where the stream stands; `None` before its first packet.
    pub fn point(&self) -> Option<StreamPoint> {
        let (ssrc, seq, at) = self.last?;
        Some(StreamPoint {
            ssrc,
            next_seq: seq.wrapping_add(1),
            rtp_timestamp: self.progress.furthest()?,
            clock_rate: self.clock_rate,
            sent_unix_ms: at,
            packet_rate: self.rate.max(self.window.1),
            frame_ticks: self.progress.step(),
        })
    }
}

/// Where a channel's streams stand: its video and each track besides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPoint {
    pub video: StreamPoint,
    #[serde(default)]
    pub tracks: BTreeMap<TrackKind, StreamPoint>,
}

/// How a channel's streams start: fresh, or continuing a point.
#[derive(Clone, Debug)]
pub struct Resume {
    pub video: StreamIds,
    /// Each track's numbering, with its clock rate (0: unknown).
    pub tracks: Vec<(TrackKind, StreamIds, u32)>,
    /// Continues an earlier emitter's streams: their timestamps move on
    /// by the time to the first frame too ([`super::core::ChannelCore::resume`]).
    pub continued: bool,
}

impl Resume {
    /// Streams that continue `point` at `now`.
    pub fn from_point(point: &ChannelPoint, now: SystemTime) -> Resume {
        Resume {
            video: point.video.resume(now),
            tracks: point
                .tracks
                .iter()
                .map(|(k, p)| (*k, p.resume(now), p.clock_rate))
                .collect(),
            continued: true,
        }
    }

    /// New streams of the site's identity for channel `channel` of server
    /// `owner`: the SSRC is derived, the first sequence number and
    /// timestamp are `random` (RFC 3550 5.1).
    pub fn fresh(owner: &str, channel: u32, random: (u16, u32)) -> Resume {
        Resume {
            video: StreamIds {
                ssrc: site_ssrc(owner, channel),
                initial_seq: random.0,
                rtp_base: random.1,
            },
            tracks: Vec::new(),
            continued: false,
        }
    }

    /// The streams of channel `channel` of `owner` at `now`: continuing
    /// `point` when it is of this channel's identity, else fresh.
    pub fn for_channel(
        owner: &str,
        channel: u32,
        point: Option<&ChannelPoint>,
        now: SystemTime,
        random: (u16, u32),
    ) -> Resume {
        match point {
            Some(p) if p.video.ssrc == site_ssrc(owner, channel) => Resume::from_point(p, now),
            _ => Resume::fresh(owner, channel, random),
        }
    }
}

/// The SSRC of channel `channel` of server `owner`, the same on every
/// server of the site and across restarts. Tracks besides video derive
/// theirs from it ([`StreamIds::for_track`]).
pub fn site_ssrc(owner: &str, channel: u32) -> u32 {
    // FNV-1a: stable across builds and platforms (std's hasher is not
    // promised to be), then mixed so that neighbouring channels differ in
    // every bit.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in owner
        .as_bytes()
        .iter()
        .chain(b"/")
        .chain(channel.to_be_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let z = super::core::mix64(h) as u32;
    // 0 reads as "no SSRC" to some tools.
    if z == 0 { 1 } else { z }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// The file a server keeps its channels' points in.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StateFile {
    pub channels: BTreeMap<u32, ChannelPoint>,
}

impl StateFile {
    pub const NAME: &'static str = "streams.json";

    /// The points saved in `dir`; none when there is no file yet. A file
    /// that cannot be read or parsed costs the continuity (logged), never
    /// the start.
    pub fn load(dir: &Path) -> StateFile {
        let path = dir.join(Self::NAME);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "stream state unreadable: streams start afresh");
                    StateFile::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "stream state unreadable: streams start afresh");
                StateFile::default()
            }
        }
    }

    /// Writes the points to `dir` atomically (a temporary file renamed
    /// over the old one, synced first: a crash leaves the old or the new).
    pub fn store(&self, dir: &Path) -> std::io::Result<PathBuf> {
        use std::io::Write as _;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(Self::NAME);
        // Per process: two servers pointed at one folder never share it.
        let tmp = dir.join(format!("{}.{}.tmp", Self::NAME, std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(next_seq: u16, rtp_timestamp: u32, sent_unix_ms: u64, rate: u32) -> StreamPoint {
        StreamPoint {
            ssrc: 7,
            next_seq,
            rtp_timestamp,
            clock_rate: 90_000,
            sent_unix_ms,
            packet_rate: rate,
            frame_ticks: 0,
        }
    }

    #[test]
    fn progress_keeps_the_furthest_timestamp_and_the_frame_step() {
        let mut p = Progress::default();
        assert_eq!((p.furthest(), p.step()), (None, 0));
        // I0 P3 B1 B2 P6 B4 B5 at 3600 a frame, across the wrap.
        let base = u32::MAX - 5000;
        for f in [0u32, 3, 1, 2, 6, 4, 5] {
            p.see(base.wrapping_add(f * 3600));
        }
        assert_eq!(p.furthest(), Some(base.wrapping_add(6 * 3600)));
        assert_eq!(p.step(), 3600);
        // Packets of one frame share its timestamp: no step of 0.
        p.see(base.wrapping_add(6 * 3600));
        assert_eq!(p.step(), 3600);
        // A stream that jumps back far is followed.
        p.see(base.wrapping_sub(BEHIND_MAX));
        assert_eq!(p.furthest(), Some(base.wrapping_sub(BEHIND_MAX)));
    }

    #[test]
    fn a_heard_stream_is_continued_at_its_measured_clock_rate() {
        // AAC at 48 kHz on a dynamic payload type: 1024 samples a packet,
        // about 47 packets a second, heard for 3 s.
        let mut w = Watch::new(0);
        let t0 = 1_700_000_000_000u64;
        for i in 0..141u32 {
            let at = t0 + u64::from(i) * 1024 * 1000 / 48_000;
            w.packet(9, 97, 100u16.wrapping_add(i as u16), 5000 + i * 1024, at);
        }
        let p = w.point().unwrap();
        assert_eq!((p.ssrc, p.clock_rate, p.frame_ticks), (9, 48_000, 1024));
        assert_eq!(p.next_seq, 241);
        assert_eq!(p.rtp_timestamp, 5000 + 140 * 1024);
        assert!((40..=50).contains(&p.packet_rate), "{}", p.packet_rate);
        // G.711 is known by its payload type at once.
        let mut g = Watch::new(0);
        g.packet(1, 8, 0, 0, t0);
        assert_eq!(g.point().unwrap().clock_rate, 8000);
        // A new SSRC starts over.
        w.packet(10, 97, 7, 1, t0 + 4000);
        let p = w.point().unwrap();
        assert_eq!(
            (p.ssrc, p.next_seq, p.rtp_timestamp, p.frame_ticks),
            (10, 8, 1, 0)
        );
    }

    #[test]
    fn a_resumed_stream_moves_on_at_least_a_frame() {
        let sent = 1_700_000_000_000;
        // Resumed 1 ms after the last frame: one frame (40 ms) on.
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(sent + 1);
        let p = StreamPoint {
            frame_ticks: 3600,
            ..point(10, 1000, sent, 0)
        };
        assert_eq!(p.resume(now).rtp_base, 4600);
        // Resumed after a second: the time elapsed.
        let later = SystemTime::UNIX_EPOCH + Duration::from_millis(sent + 1000);
        assert_eq!(p.resume(later).rtp_base, 91_000);
    }

    #[test]
    fn a_resumed_stream_continues_past_what_may_have_been_sent() {
        let sent = 1_700_000_000_000;
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(sent + 1500);
        let ids = point(65_500, u32::MAX - 1000, sent, 400).resume(now);
        assert_eq!(ids.ssrc, 7);
        // 2 s of 400 packets a second, across the wrap.
        assert_eq!(ids.initial_seq, 65_500u16.wrapping_add(800));
        // 1.5 s at 90 kHz, across the wrap.
        assert_eq!(ids.rtp_base, (u32::MAX - 1000).wrapping_add(135_000));
    }

    #[test]
    fn margins_stay_between_a_gap_and_half_the_sequence_space() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        assert_eq!(point(100, 0, 10_000, 0).resume(now).initial_seq, 164);
        assert_eq!(
            point(0, 0, 10_000, 1_000_000).resume(now).initial_seq,
            30_000
        );
        // A clock that went back still moves the timestamp on.
        assert_eq!(point(0, 5, 20_000, 0).resume(now).rtp_base, 6);
    }

    #[test]
    fn site_ssrcs_are_stable_and_differ_by_owner_and_channel() {
        assert_eq!(site_ssrc("recorder-1", 1), site_ssrc("recorder-1", 1));
        let all: std::collections::BTreeSet<u32> = ["recorder-1", "recorder-2"]
            .iter()
            .flat_map(|o| (1..=500).map(move |c| site_ssrc(o, c)))
            .collect();
        assert_eq!(all.len(), 1000);
    }

    #[test]
    fn only_a_point_of_the_channels_identity_is_continued() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let mut p = ChannelPoint {
            video: point(10, 10, 10_000, 0),
            tracks: BTreeMap::new(),
        };
        let fresh = Resume::for_channel("rec", 3, Some(&p), now, (1, 2));
        assert_eq!(fresh.video.ssrc, site_ssrc("rec", 3));
        assert_eq!((fresh.video.initial_seq, fresh.video.rtp_base), (1, 2));
        p.video.ssrc = site_ssrc("rec", 3);
        p.tracks.insert(TrackKind::Audio, point(5, 5, 10_000, 0));
        let cont = Resume::for_channel("rec", 3, Some(&p), now, (1, 2));
        assert_eq!(cont.video.initial_seq, 10 + 64);
        assert_eq!(cont.tracks.len(), 1);
        assert_eq!(cont.tracks[0].0, TrackKind::Audio);
    }

    #[test]
    fn the_state_file_round_trips_and_a_torn_one_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateFile::default();
        let mut tracks = BTreeMap::new();
        tracks.insert(TrackKind::Metadata, point(1, 2, 3, 4));
        s.channels.insert(
            4,
            ChannelPoint {
                video: point(9, 8, 7, 6),
                tracks,
            },
        );
        s.store(dir.path()).unwrap();
        assert_eq!(StateFile::load(dir.path()).channels, s.channels);
        let text = std::fs::read(dir.path().join(StateFile::NAME)).unwrap();
        std::fs::write(dir.path().join(StateFile::NAME), &text[..text.len() / 2]).unwrap();
        assert!(StateFile::load(dir.path()).channels.is_empty());
        assert!(
            StateFile::load(&dir.path().join("none"))
                .channels
                .is_empty()
        );
    }
}
