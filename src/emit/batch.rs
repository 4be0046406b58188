//! Send batching, sans-IO: which packets of a frame can leave in one UDP GSO
//! send (one datagram the kernel splits into equal-size segments).
//!
//! UDP GSO (`UDP_SEGMENT`, Linux 4.18) takes a buffer and a segment size and
//! emits `ceil(len / size)` datagrams, all of `size` bytes but the last. A run
//! of packets qualifies when all but its last packet have the same length and
//! the last is no longer. The packetizer makes FU fragments full-size for
//! exactly this.

use crate::rtp::RtpPacket;

/// Kernel limit on segments per GSO send (`UDP_MAX_SEGMENTS`: 64 before
/// Linux 6.9, 128 since; the lower is safe everywhere).
pub const MAX_SEGMENTS: usize = 64;

/// Largest UDP payload of one send over IPv4: 65535 - 20 (IP) - 8 (UDP).
pub const MAX_GSO_BYTES: usize = 65_507;

/// Packets `[start, end)` of a frame, sent as one datagram split every
/// `segment` bytes (a plain send when the run has one packet).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub start: usize,
    pub end: usize,
    pub segment: usize,
}

impl Run {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Groups consecutive packets into GSO runs.
pub fn plan_runs(packets: &[RtpPacket], max_segments: usize, max_bytes: usize) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < packets.len() {
        let segment = packets[i].len();
        let mut end = i + 1;
        let mut bytes = segment;
        while end < packets.len() && end - i < max_segments {
            let len = packets[end].len();
            if len > segment || bytes + len > max_bytes {
                break;
            }
            bytes += len;
            end += 1;
            if len < segment {
                break; // A shorter packet can only be the last of a run.
            }
        }
        runs.push(Run {
            start: i,
            end,
            segment,
        });
        i = end;
    }
    runs
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn packets(sizes: &[usize]) -> Vec<RtpPacket> {
        sizes
            .iter()
            .map(|n| RtpPacket::new(Bytes::from(vec![0x80; 12]), Bytes::from(vec![0; n - 12])))
            .collect()
    }

    fn shape(runs: &[Run]) -> Vec<(usize, usize)> {
        runs.iter().map(|r| (r.len(), r.segment)).collect()
    }

    #[test]
    fn fragments_of_one_nal_make_one_run() {
        let p = packets(&[1412, 1412, 1412, 700]);
        assert_eq!(shape(&plan_runs(&p, 64, MAX_GSO_BYTES)), vec![(4, 1412)]);
    }

    #[test]
    fn a_shorter_packet_ends_a_run_and_a_longer_one_starts_one() {
        let p = packets(&[300, 1412, 1412, 900, 1412, 1412, 1412, 80, 80]);
        assert_eq!(
            shape(&plan_runs(&p, 64, MAX_GSO_BYTES)),
            vec![(1, 300), (3, 1412), (4, 1412), (1, 80)]
        );
    }

    #[test]
    fn runs_respect_segment_and_byte_limits() {
        let p = packets(&[1412; 100]);
        let runs = plan_runs(&p, 64, MAX_GSO_BYTES);
        // 46 x 1412 = 64952 <= 65507; 47 would not fit.
        assert_eq!(shape(&runs), vec![(46, 1412), (46, 1412), (8, 1412)]);
        assert_eq!(shape(&plan_runs(&p, 10, MAX_GSO_BYTES))[0], (10, 1412));
        // Every packet is covered once, in order.
        let covered: Vec<usize> = runs.iter().flat_map(|r| r.start..r.end).collect();
        assert_eq!(covered, (0..100).collect::<Vec<_>>());
    }
}
