//! Decode times for cameras that send B-frames. Sans-IO.
//!
//! RTP carries each picture's presentation time only, in decode order. A
//! B-frame camera's pictures come as I0 P3 B1 B2 P6 B4 B5 (presentation
//! times): the times go back. A transport stream needs a decode time too,
//! strictly increasing and never after the presentation time, or players
//! stutter and ffmpeg warns of non-monotonic DTS.
//!
//! The decode time of the n-th picture is the (n - R)-th smallest
//! presentation time, R being the reorder depth: the most pictures that
//! are decoded before one but presented after it (1 for IBBP, 2 for a
//! B-pyramid). All pictures presented before it have arrived by then, so no
//! picture waits: a min-heap of the times not used yet gives it. For
//! I0 P3 B1 B2 P6 with R = 1: DTS = -1, 0, 1, 2, 3 (in frames), each at
//! most its PTS. R = 0 is DTS = PTS.
//!
//! [`ReorderProbe`] measures R on the live stream; a segment takes the
//! depth measured so far when it starts (its decode times must not change
//! pace inside it). Before a GOP has been seen it assumes 2, which costs a
//! camera without B-frames only a decode time two frames early.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Pictures the probe compares each one with.
const WINDOW: usize = 16;
/// The deepest reorder a segment assumes (H.264 allows 16; cameras use 1-3).
pub const MAX_DEPTH: u8 = 8;
/// Assumed until the probe has seen this many pictures.
const DEFAULT_DEPTH: u8 = 2;
const PROBE_FRAMES: u64 = 50;

/// Measures the reorder depth of a stream from its presentation times in
/// decode order.
#[derive(Debug, Default)]
pub struct ReorderProbe {
    recent: VecDeque<i64>,
    seen: u64,
    max: u8,
}

impl ReorderProbe {
    /// A picture with presentation time `pts` (decode order).
    pub fn push(&mut self, pts: i64) {
        // A clock jump (over a second) is no reordering: it starts afresh.
        let jump = i64::from(crate::media::time::CLOCK_RATE);
        if self
            .recent
            .back()
            .is_some_and(|&last| pts.saturating_sub(last).abs() > jump)
        {
            self.recent.clear();
        }
        let later = self.recent.iter().filter(|&&p| p > pts).count();
        self.max = self.max.max(later.min(usize::from(MAX_DEPTH)) as u8);
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(pts);
        self.seen += 1;
    }

    /// The depth a segment starting now should assume.
    pub fn depth(&self) -> u8 {
        if self.seen < PROBE_FRAMES {
            self.max.max(DEFAULT_DEPTH)
        } else {
            self.max
        }
    }

    /// A new camera session may reorder differently.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// The decode times of one segment's pictures.
#[derive(Debug)]
pub struct DtsClock {
    depth: usize,
    pending: BinaryHeap<Reverse<i64>>,
    n: usize,
    first: Option<i64>,
    last: Option<i64>,
    /// Pictures presented before the decode time they needed: the stream
    /// reorders deeper than the segment assumed.
    pub too_deep: u64,
}

impl DtsClock {
    pub fn new(depth: u8) -> Self {
        DtsClock {
            depth: usize::from(depth.min(MAX_DEPTH)),
            pending: BinaryHeap::new(),
            n: 0,
            first: None,
            last: None,
            too_deep: 0,
        }
    }

    /// The decode time of the next picture (decode order), presented at
    /// `pts`; `step` is a frame's duration, for the first pictures' times.
    pub fn next(&mut self, pts: i64, step: i64) -> i64 {
        self.pending.push(Reverse(pts));
        let first = *self.first.get_or_insert(pts);
        let mut dts = if self.n < self.depth {
            first.saturating_sub((self.depth - self.n) as i64 * step.max(1))
        } else {
            self.pending.pop().map_or(pts, |Reverse(p)| p)
        };
        self.n += 1;
        let floor = self.last.map_or(i64::MIN, |l| l.saturating_add(1));
        dts = dts.max(floor);
        if dts > pts {
            // Deeper than assumed: no decode time can be both after the
            // last one and before this presentation. Decode order wins
            // (a decoder needs it); this picture is presented late.
            self.too_deep += 1;
            dts = pts.max(floor);
        }
        self.last = Some(dts);
        dts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dts_of(pts: &[i64], depth: u8) -> (Vec<i64>, u64) {
        let mut c = DtsClock::new(depth);
        let d = pts.iter().map(|&p| c.next(p, 1)).collect();
        (d, c.too_deep)
    }

    #[test]
    fn b_frames_get_increasing_decode_times_never_after_presentation() {
        // IBBP: I0 P3 B1 B2 P6 B4 B5 P9 B7 B8.
        let ibbp = [0, 3, 1, 2, 6, 4, 5, 9, 7, 8];
        let mut probe = ReorderProbe::default();
        ibbp.iter().for_each(|&p| probe.push(p));
        assert_eq!(probe.max, 1);
        let (dts, deep) = dts_of(&ibbp, 1);
        assert_eq!(dts, [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(deep, 0);
        // A B-pyramid: I0 P4 B2 b1 b3 P8 B6 b5 b7.
        let pyramid = [0, 4, 2, 1, 3, 8, 6, 5, 7];
        let mut probe = ReorderProbe::default();
        pyramid.iter().for_each(|&p| probe.push(p));
        assert_eq!(probe.max, 2);
        let (dts, deep) = dts_of(&pyramid, 2);
        assert_eq!(deep, 0);
        assert!(dts.windows(2).all(|w| w[1] > w[0]), "{dts:?}");
        assert!(dts.iter().zip(&pyramid).all(|(d, p)| d <= p), "{dts:?}");
        // Assumed too shallow: still increasing (decode order wins over a
        // presentation that came too early), and counted.
        let (dts, deep) = dts_of(&pyramid, 0);
        assert!(deep > 0);
        assert!(dts.windows(2).all(|w| w[1] > w[0]), "{dts:?}");
    }

    #[test]
    fn a_clock_jump_is_not_a_deep_reorder() {
        let mut probe = ReorderProbe::default();
        for p in (0..60)
            .map(|i| 300_000 + 3600 * i)
            .chain((0..10).map(|i| 3600 * i))
        {
            probe.push(p);
        }
        assert_eq!(probe.depth(), 0, "the camera's clock went back 3 s");
    }

    #[test]
    fn without_b_frames_depth_zero_is_the_presentation_time() {
        let ipp: Vec<i64> = (0..60).map(|i| 1000 + 3600 * i).collect();
        let mut probe = ReorderProbe::default();
        assert_eq!(probe.depth(), 2, "assumed before a GOP is seen");
        ipp.iter().for_each(|&p| probe.push(p));
        assert_eq!(probe.depth(), 0);
        let mut c = DtsClock::new(0);
        assert!(ipp.iter().all(|&p| c.next(p, 3600) == p));
        // Depth 2 on the same stream: two frames early, then in step.
        let mut c = DtsClock::new(2);
        let d: Vec<i64> = ipp.iter().map(|&p| c.next(p, 3600)).collect();
        assert_eq!(d[..3], [1000 - 7200, 1000 - 3600, 1000]);
        assert_eq!(d[10], ipp[8]);
    }
}
