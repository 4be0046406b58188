//! What a failover run measured, from its two logs alone: the packet log
//! on recorder-1's group (who sent each packet, when) and the instants at
//! which the decoding viewer's pictures came out. No I/O, no clock: the
//! instants of the fault and of the recovery are arguments.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::viewers::{Packet, Picture};

/// The camera's frame rate (the clip is 25 fps).
pub const FPS: f64 = 25.0;

/// How one stream went on from one emitter to the next, as the packet log
/// saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// The last packet of the emitter before, and the first of the next.
    pub last: Packet,
    pub first: Packet,
}

impl Switch {
    /// The gap on the group: the next emitter's first packet after the
    /// last one of the emitter before.
    pub fn gap(&self) -> Duration {
        self.first.at.saturating_duration_since(self.last.at)
    }

    /// One stream across the switch: the same SSRC, the sequence number
    /// and the timestamp ahead (RFC 3550 arithmetic, modulo 2^16 and 2^32).
    pub fn continues(&self) -> bool {
        let seq = self.first.seq.wrapping_sub(self.last.seq);
        let ts = self.first.ts.wrapping_sub(self.last.ts);
        self.first.ssrc == self.last.ssrc
            && (1..1 << 15).contains(&seq)
            && (1..1 << 31).contains(&ts)
    }

    pub fn seq_ahead(&self) -> u16 {
        self.first.seq.wrapping_sub(self.last.seq)
    }
}

/// The takeover after a fault at `fault`: the first packet of `standby` on
/// the group from then on, and the last of `owner` before it.
pub fn takeover(
    packets: &[Packet],
    fault: Instant,
    owner: Ipv4Addr,
    standby: Ipv4Addr,
) -> Option<Switch> {
    let i = packets
        .iter()
        .position(|p| p.from == standby && p.at >= fault)?;
    let last = packets[..i].iter().rev().find(|p| p.from == owner)?;
    Some(Switch {
        last: *last,
        first: packets[i],
    })
}

/// The hand-back: the last packet of `standby` on the group, and the
/// first of `owner` after it; `None` while the standby is the last to
/// have sent, or the owner has not sent after it.
pub fn hand_back(packets: &[Packet], owner: Ipv4Addr, standby: Ipv4Addr) -> Option<Switch> {
    let i = packets.iter().rposition(|p| p.from == standby)?;
    let first = packets[i + 1..].iter().find(|p| p.from == owner)?;
    Some(Switch {
        last: packets[i],
        first: *first,
    })
}

/// How long [`burst`] looks after a switch: at 25 fps a steady emitter
/// sends 2 or 3 frames in it.
pub const BURST_WINDOW: Duration = Duration::from_millis(100);

/// Frames (distinct RTP timestamps) the new emitter of `s` sent in its
/// first [`BURST_WINDOW`]: more than 3 is a burst of frames sent at once
/// (the pictures since the last key frame, so that viewers decode at once).
pub fn burst(packets: &[Packet], s: &Switch) -> usize {
    let mut ts: Vec<u32> = packets
        .iter()
        .filter(|p| {
            p.from == s.first.from && p.at >= s.first.at && p.at < s.first.at + BURST_WINDOW
        })
        .map(|p| p.ts)
        .collect();
    ts.sort_unstable();
    ts.dedup();
    ts.len()
}

/// Packets of `owner` on the group between the standby's first and last:
/// a second emitter while the standby covered (a healed recorder that had
/// not yet heard the standby), and the time from the first of them to the
/// last.
pub fn overlap(packets: &[Packet], owner: Ipv4Addr, standby: Ipv4Addr) -> (usize, Duration) {
    let (Some(a), Some(b)) = (
        packets.iter().position(|p| p.from == standby),
        packets.iter().rposition(|p| p.from == standby),
    ) else {
        return (0, Duration::ZERO);
    };
    let theirs: Vec<&Packet> = packets[a..b].iter().filter(|p| p.from == owner).collect();
    let span = match (theirs.first(), theirs.last()) {
        (Some(x), Some(y)) => y.at.saturating_duration_since(x.at),
        _ => Duration::ZERO,
    };
    (theirs.len(), span)
}

/// Two packets of one source further apart than this belong to two
/// stretches of its emission (tenures): a sending server's packets come
/// every frame (40 ms at 25 fps), and a role moves only after a silence
/// of seconds (a fault) or a hand-back. `tests/failover_on_etcd.rs` splits
/// its tenures at the same gap.
pub const TENURE_GAP: Duration = Duration::from_millis(500);

/// One source's stretch of emission: its packets with no gap over
/// [`TENURE_GAP`], from the first to the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tenure {
    from: Ipv4Addr,
    first: Instant,
    last: Instant,
}

/// The tenures in `packets` (in any order), by their first packet.
fn tenures(packets: &[Packet]) -> Vec<Tenure> {
    let mut sorted: Vec<&Packet> = packets.iter().collect();
    sorted.sort_by_key(|p| p.at);
    let mut open: Vec<Tenure> = Vec::new();
    let mut done: Vec<Tenure> = Vec::new();
    for p in sorted {
        match open.iter_mut().find(|t| t.from == p.from) {
            Some(t) if p.at.saturating_duration_since(t.last) <= TENURE_GAP => t.last = p.at,
            Some(t) => {
                done.push(*t);
                *t = Tenure {
                    from: p.from,
                    first: p.at,
                    last: p.at,
                };
            }
            None => open.push(Tenure {
                from: p.from,
                first: p.at,
                last: p.at,
            }),
        }
    }
    done.extend(open);
    done.sort_by_key(|t| t.first);
    done
}

/// Packets from a second emitter: those that arrived from one source
/// while another one's tenure ([`TENURE_GAP`]) was under way, in either
/// direction: a healed recorder's stray frames while the standby covers,
/// the standby's frames after the owner took its role back, a stale
/// packet, two servers sending at once. A clean switch, the one emitter
/// silent before the next one's first packet, counts none. The count
/// `tests/failover_on_etcd.rs` requires to be 0.
pub fn second_emitter(packets: &[Packet]) -> usize {
    let ts = tenures(packets);
    packets
        .iter()
        .filter(|p| {
            ts.iter()
                .any(|t| t.from != p.from && t.first <= p.at && p.at <= t.last)
        })
        .count()
}

/// The longest time in [from, to) with nothing arriving: between two
/// consecutive instants, or from an edge of the window to the nearest one.
pub fn longest_silence(
    instants: impl IntoIterator<Item = Instant>,
    from: Instant,
    to: Instant,
) -> Duration {
    let mut prev = from;
    let mut longest = Duration::ZERO;
    for at in instants.into_iter().filter(|t| *t >= from && *t < to) {
        longest = longest.max(at.saturating_duration_since(prev));
        prev = at;
    }
    longest.max(to.saturating_duration_since(prev))
}

/// Pictures a viewer decoded over a window of wall-clock time, against
/// those the camera sent in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frames {
    pub decoded: u64,
    /// 25 per second of the window.
    pub expected: u64,
    /// The longest time in the window without a new picture.
    pub longest_freeze: Duration,
    /// Decoded pictures whose timestamp is not past the furthest one
    /// decoded before them: media time shown again (a stream continued
    /// from timestamps behind those already sent).
    pub not_ahead: u64,
    /// Decoded pictures that are the same picture (the same checksum) as
    /// one decoded in the [`REPEAT_HORIZON`] before: shown twice.
    pub repeated: u64,
}

/// How far back a picture counts as shown before. The camera loops a 10 s
/// clip, so the same picture legitimately comes again 10 s later; every
/// picture of the clip differs from the others (250 checksums).
pub const REPEAT_HORIZON: Duration = Duration::from_secs(5);

impl Frames {
    /// Over [from, to), from the pictures as they came out of the decoder.
    /// A decoder's constant delay shifts every picture alike, so a window
    /// that starts well before the fault holds the same count.
    pub fn over(pictures: &[Picture], from: Instant, to: Instant) -> Frames {
        let inside = |p: &&Picture| p.at >= from && p.at < to;
        let mut furthest = i64::MIN;
        let mut not_ahead = 0;
        for p in pictures {
            if inside(&p) && p.pts <= furthest {
                not_ahead += 1;
            }
            furthest = furthest.max(p.pts);
        }
        let repeated = pictures
            .iter()
            .enumerate()
            .filter(|(_, p)| inside(p))
            .filter(|(i, p)| {
                pictures[..*i]
                    .iter()
                    .rev()
                    .take_while(|q| p.at.saturating_duration_since(q.at) <= REPEAT_HORIZON)
                    .any(|q| q.crc == p.crc)
            })
            .count() as u64;
        Frames {
            repeated,
            decoded: pictures.iter().filter(inside).count() as u64,
            expected: (to.saturating_duration_since(from).as_secs_f64() * FPS).round() as u64,
            longest_freeze: longest_silence(pictures.iter().map(|p| p.at), from, to),
            not_ahead,
        }
    }

    /// Expected minus decoded; never below zero (a decoder that catches up
    /// in a burst can put a picture or two more than 25 a second into a
    /// window).
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const STANDBY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// A packet every 40 ms from `from` over [start, end) ms, sequence and
    /// timestamp following on from (seq, ts).
    fn run(t0: Instant, from: Ipv4Addr, start: u64, end: u64, seq: u16, ts: u32) -> Vec<Packet> {
        (start..end)
            .step_by(40)
            .enumerate()
            .map(|(i, ms)| Packet {
                from,
                ssrc: 0x5eed,
                seq: seq.wrapping_add(i as u16),
                ts: ts.wrapping_add(3600 * i as u32),
                at: at(t0, ms),
            })
            .collect()
    }

    #[test]
    fn a_takeover_is_the_standbys_first_packet_after_the_fault() {
        let t0 = Instant::now();
        // recorder-1 until 1000 ms (killed at 1010), failover-1 from 4200,
        // its sequence numbers past a wrap-around.
        let mut log = run(t0, OWNER, 0, 1000, 65_530, 0);
        let last = *log.last().unwrap();
        log.extend(run(
            t0,
            STANDBY,
            4200,
            6000,
            last.seq.wrapping_add(3),
            last.ts + 90_000,
        ));
        let s = takeover(&log, at(t0, 1010), OWNER, STANDBY).unwrap();
        assert_eq!(s.last, last);
        assert_eq!(s.first.from, STANDBY);
        assert_eq!(s.gap(), Duration::from_millis(4200 - 960));
        assert!(s.continues());
        assert_eq!(s.seq_ahead(), 3);
        // One frame a packet, 40 ms apart: 3 in the first 100 ms.
        assert_eq!(burst(&log, &s), 3);
        let mut bursty = log.clone();
        let first = bursty.iter().position(|p| p.from == STANDBY).unwrap();
        for p in &mut bursty[first..first + 10] {
            p.at = s.first.at;
        }
        let s2 = takeover(&bursty, at(t0, 1010), OWNER, STANDBY).unwrap();
        assert_eq!(burst(&bursty, &s2), 10);
        assert_eq!(
            longest_silence(log.iter().map(|p| p.at), at(t0, 0), at(t0, 6000)),
            Duration::from_millis(4200 - 960)
        );
        // A new SSRC, or a sequence gone back, is a new stream.
        let mut other = s;
        other.first.ssrc = 1;
        assert!(!other.continues());
        let mut back = s;
        back.first.seq = s.last.seq.wrapping_sub(5);
        assert!(!back.continues());
        // Nothing of the standby: no takeover.
        assert!(takeover(&log[..20], at(t0, 1010), OWNER, STANDBY).is_none());
    }

    #[test]
    fn a_hand_back_is_the_standbys_last_packet_and_the_owners_next() {
        let t0 = Instant::now();
        let mut log = run(t0, OWNER, 0, 1000, 100, 0);
        log.extend(run(t0, STANDBY, 4000, 9000, 200, 400_000));
        // A healed owner's stray frame while the standby covers.
        log.insert(
            log.iter().position(|p| p.at >= at(t0, 6000)).unwrap(),
            Packet {
                from: OWNER,
                ssrc: 0x5eed,
                seq: 150,
                ts: 100,
                at: at(t0, 5990),
            },
        );
        // Still the standby's: no hand-back yet.
        assert!(hand_back(&log, OWNER, STANDBY).is_none());
        let last_fo = *log.last().unwrap();
        log.extend(run(
            t0,
            OWNER,
            9150,
            12_000,
            last_fo.seq + 1,
            last_fo.ts + 7200,
        ));
        let s = hand_back(&log, OWNER, STANDBY).unwrap();
        assert_eq!(s.last, last_fo);
        assert_eq!(
            s.gap(),
            Duration::from_millis(9150 - last_fo.at.duration_since(t0).as_millis() as u64)
        );
        assert!(s.continues());
        assert_eq!(overlap(&log, OWNER, STANDBY), (1, Duration::ZERO));
        // The stray frame is a second emitter's packet; the hand-back
        // (the owner silent until the standby's last packet) is clean.
        assert_eq!(second_emitter(&log), 1);
    }

    #[test]
    fn second_emitter_packets_are_those_inside_another_sources_stream() {
        let t0 = Instant::now();
        let cat = |parts: &[Vec<Packet>]| parts.concat();
        let one = |from, ms| run(t0, from, ms, ms + 1, 0, 0);
        assert_eq!(second_emitter(&[]), 0);
        assert_eq!(second_emitter(&run(t0, OWNER, 0, 5000, 0, 0)), 0);
        // A takeover after a silence and a hand-back within a frame time:
        // clean, in any order.
        let clean = cat(&[
            run(t0, OWNER, 0, 5000, 0, 0),
            run(t0, STANDBY, 8000, 12_000, 0, 0),
            run(t0, OWNER, 12_010, 15_000, 0, 0),
        ]);
        assert_eq!(second_emitter(&clean), 0);
        let mut reversed = clean.clone();
        reversed.reverse();
        assert_eq!(second_emitter(&reversed), 0);
        // The standby goes on 200 ms after the owner took its role back:
        // its packets at 12 000 .. 12 160 (5) after the owner's first, the
        // owner's 12 000 .. 12 160 (5) before the standby's last.
        let late = cat(&[
            run(t0, STANDBY, 8000, 12_200, 0, 0),
            run(t0, OWNER, 12_000, 15_000, 0, 0),
        ]);
        assert_eq!(second_emitter(&late), 10);
        // One stale packet of the owner 2 s into the standby's cover.
        let stale = cat(&[
            run(t0, OWNER, 0, 5000, 0, 0),
            run(t0, STANDBY, 8000, 12_000, 0, 0),
            one(OWNER, 10_010),
        ]);
        assert_eq!(second_emitter(&stale), 1);
        assert_eq!(tenures(&stale).len(), 3);
    }

    #[test]
    fn frames_lost_are_those_missing_from_25_a_second_over_the_window() {
        let t0 = Instant::now();
        // 25 fps with a 2 s freeze from 3 s to 5 s.
        let frames: Vec<Picture> = (0..250u64)
            .map(|i| Picture {
                at: at(t0, i * 40),
                pts: i as i64 * 3600,
                crc: i as u32,
            })
            .filter(|p| !(at(t0, 3000)..at(t0, 5000)).contains(&p.at))
            .collect();
        let f = Frames::over(&frames, at(t0, 1000), at(t0, 9000));
        assert_eq!(f.expected, 200);
        assert_eq!(f.decoded, 150);
        assert_eq!(f.lost(), 50);
        assert_eq!(f.longest_freeze, Duration::from_millis(2040));
        assert_eq!(f.not_ahead, 0);
        // A window past the last picture freezes to its end.
        let f = Frames::over(&frames, at(t0, 9000), at(t0, 12_000));
        assert_eq!((f.decoded, f.expected, f.lost()), (25, 75, 50));
        assert_eq!(f.longest_freeze, Duration::from_millis(2040));
        // A burst after a gap, timestamps gone back by four pictures: not
        // negative loss, and four pictures not ahead.
        let burst: Vec<Picture> = (0..30i64)
            .map(|i| Picture {
                at: at(t0, i as u64 * 30),
                pts: if i < 20 { i } else { i - 4 },
                crc: i as u32,
            })
            .collect();
        let f = Frames::over(&burst, t0, at(t0, 1000));
        assert_eq!((f.lost(), f.not_ahead, f.repeated), (0, 4, 0));
        // The last 3 pictures before a switch sent again after it (new
        // timestamps); the clip's loop 10 s later is no repeat.
        let mut again: Vec<Picture> = (0..25u64)
            .map(|i| Picture {
                at: at(t0, i * 40),
                pts: i as i64,
                crc: i as u32,
            })
            .collect();
        for (k, crc) in [22, 23, 24, 25, 26].into_iter().enumerate() {
            again.push(Picture {
                at: at(t0, 1000 + k as u64 * 40),
                pts: 25 + k as i64,
                crc,
            });
        }
        again.push(Picture {
            at: at(t0, 11_000),
            pts: 40,
            crc: 0,
        });
        let f = Frames::over(&again, t0, at(t0, 12_000));
        assert_eq!((f.repeated, f.not_ahead), (3, 0));
    }
}
