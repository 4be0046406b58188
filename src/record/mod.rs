//! The recorder: every channel a server emits is written to its material
//! disks in time segments (MPEG-TS, see [`ts`]), with an index per disk
//! ([`index`]) that failover and failback use to copy only what is missing.
//!
//! Data flow: the camera task hands each access unit to its channel's
//! [`ChannelRecorder`], which decides segment boundaries (at key frames, a
//! configured length apart, staggered across channels) and queues the frame,
//! without waiting, to the writer thread of the disk the segment lives on.
//! A full queue drops the frame (counted) and the segment ends there; the
//! next one starts at the next key frame. A health thread checks each disk
//! every few seconds and applies retention.

pub mod copy;
pub mod disk;
pub mod index;
pub mod reorder;
pub mod ts;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use self::disk::{Disk, DiskStatus, FrameJob, Job, TrackJob};
use self::index::{Entry, SegmentName};
use crate::config::StorageConfig;
use crate::media::{AccessUnit, MediaTime, Payload, TrackDesc, TrackKind};
use crate::metrics::RecordMetrics;

/// How often disks are checked (presence, a test write, usage, retention).
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Media time and wall time may drift this far apart before a segment's
/// start is taken from the wall clock again (a camera clock that runs fast).
const MAX_DRIFT_MS: i64 = 500;
/// A step of media time this far off the wall clock's is a camera clock
/// jump, which ends the segment.
const MAX_JUMP_MS: i64 = 1000;

pub fn now_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One disk as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskReport {
    pub path: PathBuf,
    pub status: DiskStatus,
    pub reason: String,
    pub used_percent: f64,
    pub available_bytes: u64,
    pub segments: usize,
}

/// A server's recorder: its disks and their threads.
pub struct Recorder {
    server: String,
    disks: Vec<Arc<Disk>>,
    segment: Duration,
    retention: Option<Duration>,
    max_usage_percent: f64,
    stop: Arc<AtomicBool>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Recorder {
    /// Opens the disks (repairing what a crash left) and starts a writer
    /// thread per disk and the health thread.
    pub fn start(server: &str, cfg: &StorageConfig) -> std::io::Result<Arc<Recorder>> {
        let disks: Vec<Arc<Disk>> = cfg
            .disks
            .iter()
            .map(|p| Disk::open(p, cfg.write_buffer_mb as usize * (1 << 20)))
            .collect();
        let rec = Arc::new(Recorder {
            server: server.to_string(),
            disks,
            segment: cfg.segment,
            retention: cfg.retention,
            max_usage_percent: f64::from(cfg.max_usage_percent),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Default::default(),
        });
        let mut threads = Vec::new();
        for d in &rec.disks {
            threads.push(d.start()?);
        }
        rec.check_disks();
        let weak = Arc::downgrade(&rec);
        let stop = rec.stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("mcrelay-disks".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(CHECK_EVERY);
                        match weak.upgrade() {
                            Some(r) if !stop.load(Ordering::Relaxed) => r.check_disks(),
                            _ => break,
                        }
                    }
                })?,
        );
        *rec.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        Ok(rec)
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn segment_length(&self) -> Duration {
        self.segment
    }

    /// Checks every disk now.
    pub fn check_disks(&self) {
        let before = self
            .retention
            .map(|r| now_ms(SystemTime::now()) - r.as_millis() as i64);
        for d in &self.disks {
            d.check(before, self.max_usage_percent);
        }
    }

    /// Finishes every open segment and stops the threads.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for d in &self.disks {
            d.shutdown();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            t.thread().unpark();
            let _ = t.join();
        }
    }

    pub fn disks(&self) -> Vec<DiskReport> {
        self.disks
            .iter()
            .map(|d| {
                let st = d.state();
                DiskReport {
                    path: d.path.clone(),
                    status: d.status(),
                    reason: st.reason.clone(),
                    used_percent: (st.used_percent * 10.0).round() / 10.0,
                    available_bytes: st.available,
                    segments: st.entries.len(),
                }
            })
            .collect()
    }

    /// True when the server has disks and every one is broken (the seed's
    /// failover trigger).
    pub fn all_disks_broken(&self) -> bool {
        !self.disks.is_empty() && self.disks.iter().all(|d| d.status().broken())
    }

    /// The channel's complete segments on every readable disk, oldest first.
    pub fn segments(&self, channel: u32) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        for d in &self.disks {
            if d.status() == DiskStatus::Missing {
                continue;
            }
            let st = d.state();
            // From the channel's first key on (channel + 1 would overflow
            // for the largest id a URL can name).
            out.extend(
                st.entries
                    .range((channel, String::new())..)
                    .take_while(|((c, _), _)| *c == channel)
                    .map(|(_, e)| e.clone()),
            );
        }
        out.sort_by(|a, b| (a.start_ms, &a.segment).cmp(&(b.start_ms, &b.segment)));
        out
    }

    /// The file of an indexed segment. Only names in an index resolve, so
    /// nothing outside the material disks can be reached.
    pub fn segment_file(&self, channel: u32, name: &SegmentName) -> Option<(PathBuf, Entry)> {
        let key = (channel, name.to_string());
        self.disks.iter().find_map(|d| {
            if d.status() == DiskStatus::Missing {
                return None;
            }
            d.state()
                .entries
                .get(&key)
                .map(|e| (d.segment_path(channel, name), e.clone()))
        })
    }

    /// Where an imported segment (a copy from another server) of `bytes`
    /// is written: a usable disk it fits on without going over
    /// `max_usage_percent` (an upload never makes room by deleting local
    /// material), a `.part` path of its own (two uploads of one name never
    /// share one) and the final path. `None` when no disk has room.
    pub fn import_target(
        &self,
        channel: u32,
        name: &SegmentName,
        bytes: u64,
    ) -> Option<(usize, PathBuf, PathBuf)> {
        let n = self.disks.len();
        let first = self.pick_disk(channel, name.start_ms as u64)?;
        let d = (0..n).map(|i| (first + i) % n).find(|&d| {
            let disk = &self.disks[d];
            !disk.status().broken()
                && disk
                    .has_room(bytes, self.max_usage_percent)
                    .unwrap_or(false)
        })?;
        let path = self.disks[d].segment_path(channel, name);
        let part = path.with_extension(format!("ts.{:016x}{}", rand::random::<u64>(), disk::PART));
        Some((d, part, path))
    }

    /// Lists an imported segment whose file is complete at `part`: renamed
    /// to `path` and listed, unless the segment is listed already (then
    /// `false`, and `part` is removed).
    pub fn import_commit(
        &self,
        disk: usize,
        part: &std::path::Path,
        path: &std::path::Path,
        entry: Entry,
    ) -> std::io::Result<bool> {
        self.disks[disk].import(part, path, entry)
    }

    /// The disk a new segment goes to: the usable disks in turn, so that
    /// channels and successive segments spread over them.
    fn pick_disk(&self, channel: u32, seq: u64) -> Option<usize> {
        let ok: Vec<usize> = (0..self.disks.len())
            .filter(|&i| !self.disks[i].status().broken())
            .collect();
        if ok.is_empty() {
            return None;
        }
        Some(ok[((u64::from(channel) + seq) % ok.len() as u64) as usize])
    }

    pub fn channel(self: &Arc<Self>, channel: u32, metrics: RecordMetrics) -> ChannelRecorder {
        ChannelRecorder {
            rec: self.clone(),
            channel,
            metrics,
            segmenter: Segmenter::new(channel, self.segment),
            current: None,
            seq: 0,
            losing: false,
            audio: None,
            metadata: None,
            raw_audio: None,
            reorder: reorder::ReorderProbe::default(),
            segment_reorder: 0,
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Where segments begin and end. Sans-IO: media time and wall time in.
#[derive(Debug, Clone)]
pub struct Segmenter {
    length: i64,
    /// The first segment is shorter, by a fraction that depends on the
    /// channel, so that channels started together do not all rotate at once.
    first_length: i64,
    started: Option<i64>,
    count: u64,
    /// Wall ms at media time 0 of the current anchor.
    anchor: Option<i64>,
    /// The last frame's media time and wall time (ms).
    last: Option<(i64, i64)>,
}

/// A decision for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Part of the current segment.
    Continue,
    /// Starts a new segment that begins at this wall time (ms).
    Start { start_ms: i64 },
    /// Not recordable yet (no segment, not a key frame). A segment in
    /// progress ends here (the camera's clock jumped).
    Wait,
}

impl Segmenter {
    pub fn new(channel: u32, length: Duration) -> Self {
        let length = MediaTime::from_duration(length).0;
        // Golden-ratio spread of channel ids over (0.5, 1] of a length.
        let frac = (f64::from(channel) * 0.618_033_988_75).fract();
        Segmenter {
            length,
            first_length: ((0.5 + 0.5 * frac) * length as f64) as i64,
            started: None,
            count: 0,
            anchor: None,
            last: None,
        }
    }

    /// Forgets the current segment: the next key frame starts one.
    pub fn reset(&mut self) {
        self.started = None;
    }

    /// A camera clock that jumped: media time went back more than a second
    /// (more than B-frame reordering), or ahead by more than a second beyond
    /// the time the frame took to arrive (a late burst after a stall runs
    /// behind, not ahead, and is no jump).
    fn jumped(&self, time: i64, wall_ms: i64) -> bool {
        let Some((t, w)) = self.last else {
            return false;
        };
        let media_ms = time.saturating_sub(t) / 90;
        let wall = wall_ms.saturating_sub(w);
        media_ms < -MAX_JUMP_MS || media_ms > wall.saturating_add(MAX_JUMP_MS)
    }

    pub fn push(&mut self, key: bool, time: MediaTime, wall_ms: i64) -> Cut {
        if self.jumped(time.0, wall_ms) {
            // The segment ends; the next starts at a key frame, its time
            // from the wall clock.
            self.started = None;
            self.anchor = None;
        }
        self.last = Some((time.0, wall_ms));
        let due = match self.started {
            None => true,
            Some(s) => {
                let len = if self.count == 1 {
                    self.first_length
                } else {
                    self.length
                };
                time.0.saturating_sub(s) >= len
            }
        };
        if !due {
            return Cut::Continue;
        }
        if !key {
            return if self.started.is_some() {
                Cut::Continue
            } else {
                Cut::Wait
            };
        }
        // Start times follow media time, so that one segment ends exactly
        // where the next begins, unless the clocks drift apart.
        let media_ms = time.0 / 90;
        let start_ms = match self.anchor {
            Some(a) if (a.saturating_add(media_ms) - wall_ms).abs() <= MAX_DRIFT_MS => a + media_ms,
            _ => {
                self.anchor = Some(wall_ms.saturating_sub(media_ms));
                wall_ms
            }
        };
        self.started = Some(time.0);
        self.count += 1;
        Cut::Start {
            start_ms: start_ms.clamp(0, index::MAX_TIME_MS),
        }
    }
}

/// The recorder's end in one camera task.
pub struct ChannelRecorder {
    rec: Arc<Recorder>,
    channel: u32,
    metrics: RecordMetrics,
    segmenter: Segmenter,
    /// The segment being written and its disk.
    current: Option<(SegmentName, usize)>,
    seq: u64,
    /// Frames are being lost (a disk too slow or none usable) until a
    /// segment starts again: each is counted.
    losing: bool,
    /// The camera's AAC track (its index among the tracks besides video),
    /// recorded beside the video from the next segment on.
    audio: Option<(usize, ts::Adts)>,
    /// The camera's ONVIF metadata track, recorded from the next segment on.
    metadata: Option<usize>,
    /// Without AAC, the camera's audio of an encoding MPEG-TS has no stream
    /// type for, kept as private data: its index and rtpmap.
    raw_audio: Option<(usize, Arc<str>)>,
    /// The stream's B-frame reorder depth, for the decode times.
    reorder: reorder::ReorderProbe,
    /// The depth the current segment was started with.
    segment_reorder: u8,
}

impl ChannelRecorder {
    /// Queues one access unit; never waits.
    pub fn push(&mut self, au: &AccessUnit, params: &[Bytes], time: MediaTime, wall: SystemTime) {
        // A segment on a disk that broke ends; the next key frame starts
        // one on another disk.
        if let Some((_, d)) = &self.current
            && self.rec.disks[*d].status().broken()
        {
            self.end();
        }
        let wall_ms = now_ms(wall);
        let depth = self.reorder.depth();
        self.reorder.push(time.0);
        let start_ms = match self.segmenter.push(au.key, time, wall_ms) {
            Cut::Wait => {
                self.close();
                if self.losing {
                    self.metrics.dropped_frames.inc();
                }
                return;
            }
            Cut::Continue => None,
            Cut::Start { start_ms } => Some(start_ms),
        };
        if let Some(start_ms) = start_ms {
            self.close();
            let Some(d) = self.rec.pick_disk(self.channel, self.seq) else {
                self.metrics.dropped_frames.inc();
                self.losing = true;
                self.segmenter.reset();
                return;
            };
            self.seq += 1;
            self.losing = false;
            self.segment_reorder = depth;
            self.current = Some((SegmentName::new(start_ms, &self.rec.server), d));
        }
        let Some((name, d)) = &self.current else {
            return;
        };
        let job = FrameJob {
            channel: self.channel,
            segment: name.clone(),
            codec: au.codec,
            audio: self.audio.map(|(_, a)| a),
            metadata: self.metadata.is_some(),
            raw_audio: self.raw_audio.as_ref().map(|(_, r)| r.clone()),
            reorder: self.segment_reorder,
            nals: au.nals.clone(),
            params: if au.key { params.to_vec() } else { Vec::new() },
            key: au.key,
            time: time.0,
            wall_ms,
            bytes: au.byte_len(),
            metrics: self.metrics.clone(),
        };
        if !self.rec.disks[*d].offer(Job::Frame(Box::new(job))) {
            // The disk is behind: this segment ends here, the material up to
            // this frame is kept, the next key frame starts a new one.
            self.metrics.dropped_frames.inc();
            tracing::warn!(channel = self.channel, disk = %self.rec.disks[*d].path.display(), "material disk too slow: frame dropped, segment ended");
            self.end();
            self.losing = true;
        }
    }

    /// The session's tracks besides video. The first AAC track is recorded
    /// in the segments, as ADTS, and the ONVIF metadata as PES private
    /// data; other audio encodings (G.711, G.722, L16) have no stream type
    /// players read in MPEG-TS and are kept as PES private data too, the
    /// encoding named in the PMT.
    pub fn set_tracks(&mut self, tracks: &[TrackDesc]) {
        let audio = tracks
            .iter()
            .enumerate()
            .find_map(|(i, t)| match &t.payload {
                Payload::Aac { config } => match ts::Adts::from_config(config) {
                    Ok(a) => Some((i, a)),
                    Err(e) => {
                        tracing::warn!(channel = self.channel, "AAC audio not recorded: {e}");
                        None
                    }
                },
                _ => None,
            });
        let raw_audio = if audio.is_none() {
            tracks
                .iter()
                .enumerate()
                .find(|(_, t)| t.kind == TrackKind::Audio && t.payload == Payload::Frame)
                .map(|(i, t)| (i, Arc::from(t.rtpmap())))
        } else {
            None
        };
        if let Some((_, rtpmap)) = &raw_audio
            && raw_audio != self.raw_audio
        {
            tracing::info!(channel = self.channel, encoding = %rtpmap, "this audio is recorded as private data in the segments: MPEG-TS has no stream type players read for it");
        }
        let metadata = tracks.iter().position(|t| t.kind == TrackKind::Metadata);
        if audio != self.audio || metadata != self.metadata || raw_audio != self.raw_audio {
            // A segment's streams are fixed at its start.
            self.end();
            self.audio = audio;
            self.metadata = metadata;
            self.raw_audio = raw_audio;
        }
    }

    /// Queues one frame of track `index` (media time `time`, on the video's
    /// time line): the recorded audio track's, and the metadata's. Never
    /// waits.
    pub fn push_track(&mut self, index: usize, data: &Bytes, time: MediaTime) {
        let kind = if self.audio.is_some_and(|(i, _)| i == index)
            || self.raw_audio.as_ref().is_some_and(|(i, _)| *i == index)
        {
            TrackKind::Audio
        } else if self.metadata == Some(index) {
            TrackKind::Metadata
        } else {
            return;
        };
        let Some((name, d)) = &self.current else {
            return;
        };
        let job = TrackJob {
            channel: self.channel,
            segment: name.clone(),
            kind,
            data: data.clone(),
            time: time.0,
        };
        // A full queue costs this audio frame; the video path counts and
        // ends the segment when it meets the same full queue.
        let _ = self.rec.disks[*d].offer(Job::Track(Box::new(job)));
    }

    /// Ends the current segment (camera lost, channel stopped, frame
    /// dropped): the next key frame starts a new one.
    pub fn end(&mut self) {
        self.close();
        self.segmenter.reset();
        // The next session may reorder differently.
        self.reorder.reset();
    }

    /// Asks the writer to finish the current segment.
    fn close(&mut self) {
        if let Some((name, d)) = self.current.take() {
            self.rec.disks[d].offer(Job::Close {
                channel: self.channel,
                start_ms: name.start_ms,
            });
        }
    }
}

impl Drop for ChannelRecorder {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: i64 = 3600; // 40 ms at 90 kHz

    #[test]
    fn segments_start_at_key_frames_after_their_length() {
        let mut s = Segmenter::new(0, Duration::from_secs(2));
        let wall0 = 1_000_000;
        let mut starts = Vec::new();
        for i in 0..250i64 {
            let key = i % 25 == 0; // 1 s GOP
            let t = MediaTime(i * FRAME);
            if let Cut::Start { start_ms } = s.push(key, t, wall0 + i * 40 + (i % 3)) {
                starts.push((i, start_ms));
            }
        }
        // Channel 0 has frac 0: the first segment is half a length (1 s).
        let frames: Vec<i64> = starts.iter().map(|s| s.0).collect();
        assert_eq!(frames, vec![0, 25, 75, 125, 175, 225]);
        // Starts follow media time exactly (jittery wall time ignored).
        for (i, ms) in &starts {
            assert_eq!(*ms, wall0 + i * 40);
        }
    }

    #[test]
    fn nothing_is_recorded_before_the_first_key_frame() {
        let mut s = Segmenter::new(3, Duration::from_secs(60));
        assert_eq!(s.push(false, MediaTime(0), 0), Cut::Wait);
        assert_eq!(
            s.push(true, MediaTime(FRAME), 40),
            Cut::Start { start_ms: 40 }
        );
        assert_eq!(s.push(false, MediaTime(2 * FRAME), 80), Cut::Continue);
        s.reset();
        assert_eq!(s.push(false, MediaTime(3 * FRAME), 120), Cut::Wait);
    }

    #[test]
    fn drift_re_anchors_on_the_wall_clock() {
        let mut s = Segmenter::new(0, Duration::from_secs(2));
        assert_eq!(
            s.push(true, MediaTime(0), 10_000),
            Cut::Start { start_ms: 10_000 }
        );
        // 4 s of media, but the wall clock moved 6 s: trust the wall clock.
        assert_eq!(
            s.push(true, MediaTime(4 * 90_000), 16_000),
            Cut::Start { start_ms: 16_000 }
        );
    }

    #[test]
    fn a_camera_clock_jump_ends_the_segment_and_restarts_on_the_wall_clock() {
        let mut s = Segmenter::new(0, Duration::from_secs(60));
        let wall0 = 5_000_000;
        assert_eq!(
            s.push(true, MediaTime(0), wall0),
            Cut::Start { start_ms: wall0 }
        );
        assert_eq!(s.push(false, MediaTime(FRAME), wall0 + 40), Cut::Continue);
        // An hour forward in one frame: the segment ends, and the next key
        // frame starts one at the time it arrived.
        let jump = 3600 * 90_000;
        assert_eq!(s.push(false, MediaTime(jump), wall0 + 80), Cut::Wait);
        assert_eq!(
            s.push(true, MediaTime(jump + FRAME), wall0 + 120),
            Cut::Start {
                start_ms: wall0 + 120
            }
        );
        // Backwards by ten seconds: ends again.
        assert_eq!(
            s.push(true, MediaTime(jump - 10 * 90_000), wall0 + 160),
            Cut::Start {
                start_ms: wall0 + 160
            }
        );
        // A burst after a stall (media behind the wall clock) is no jump,
        // nor is B-frame reordering.
        let t = jump - 10 * 90_000;
        assert_eq!(
            s.push(false, MediaTime(t + FRAME), wall0 + 3160),
            Cut::Continue
        );
        assert_eq!(
            s.push(false, MediaTime(t + 3 * FRAME), wall0 + 3170),
            Cut::Continue
        );
        assert_eq!(
            s.push(false, MediaTime(t + 2 * FRAME), wall0 + 3180),
            Cut::Continue
        );
    }

    #[test]
    fn extreme_times_saturate_instead_of_wrapping() {
        let mut s = Segmenter::new(1, Duration::from_secs(2));
        for (t, wall) in [
            (i64::MAX, i64::MAX),
            (i64::MIN, 0),
            (0, i64::MIN),
            (i64::MIN, i64::MAX),
        ] {
            if let Cut::Start { start_ms } = s.push(true, MediaTime(t), wall) {
                assert!((0..=index::MAX_TIME_MS).contains(&start_ms), "{start_ms}");
            }
        }
    }

    #[test]
    fn first_segments_are_staggered_across_channels() {
        let firsts: Vec<i64> = (1..=8)
            .map(|c| Segmenter::new(c, Duration::from_secs(60)).first_length)
            .collect();
        let mut sorted = firsts.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
        assert!(firsts.iter().all(|&f| f > 30 * 90_000 && f <= 60 * 90_000));
    }
}
