//! RTCP sender reports (RFC 3550 6.4.1) with SDES CNAME, and BYE. Sans-IO:
//! the emitter tells [`RtcpSender`] what it sent and asks it, with the
//! current monotonic and wall-clock time, for the report that is due.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Frame;
use crate::media::MediaTime;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// RFC 3550 6.2: the minimum report interval is 5 s. With one sender per
/// group and session bandwidths of a few Mbit/s this is also the computed one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// A 64-bit NTP timestamp: seconds since 1900 in the high word, fraction in the low.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NtpTime(pub u64);

impl NtpTime {
    pub fn from_system(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() + NTP_UNIX_OFFSET;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    pub ntp: NtpTime,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

impl SenderReport {
    /// SR with no reception report blocks (RFC 3550 6.4.1).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0x80, 200]); // V=2, P=0, RC=0; PT=SR
        out.extend_from_slice(&6u16.to_be_bytes()); // length in words - 1
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(&self.ntp.0.to_be_bytes());
        out.extend_from_slice(&self.rtp_timestamp.to_be_bytes());
        out.extend_from_slice(&self.packet_count.to_be_bytes());
        out.extend_from_slice(&self.octet_count.to_be_bytes());
    }
}

/// SDES with one chunk holding the CNAME item (RFC 3550 6.5), which every
/// compound packet must carry.
fn write_sdes_cname(ssrc: u32, cname: &str, out: &mut Vec<u8>) {
    let name = &cname.as_bytes()[..cname.len().min(255)];
    // ssrc + type + len + text + at least one null, padded to 32 bits.
    let chunk_len = (4 + 2 + name.len() + 1).div_ceil(4) * 4;
    out.extend_from_slice(&[0x81, 202]); // V=2, SC=1; PT=SDES
    out.extend_from_slice(&((chunk_len / 4) as u16).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&[1, name.len() as u8]); // CNAME
    out.extend_from_slice(name);
    out.resize(start + chunk_len, 0);
}

fn write_bye(ssrc: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x81, 203]); // V=2, SC=1; PT=BYE
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
}

/// Sender-side RTCP state of one RTP stream.
#[derive(Debug)]
pub struct RtcpSender {
    ssrc: u32,
    cname: String,
    interval: Duration,
    packets: u32,
    octets: u32,
    /// RTP timestamp and arrival of the last frame sent.
    last_frame: Option<(u32, Instant)>,
    last_sent: Option<Instant>,
    next_report: Option<Instant>,
}

impl RtcpSender {
    pub fn new(ssrc: u32, cname: String, interval: Duration) -> Self {
        RtcpSender {
            ssrc,
            cname,
            interval,
            packets: 0,
            octets: 0,
            last_frame: None,
            last_sent: None,
            next_report: None,
        }
    }

    /// Records a frame sent at `now` (all of its packets). The first frame
    /// of the stream makes a report due at once.
    pub fn on_sent(&mut self, frame: &Frame, now: Instant) {
        self.packets = self.packets.wrapping_add(frame.packets.len() as u32);
        self.octets = self.octets.wrapping_add(frame.payload_len() as u32);
        self.last_frame = Some((frame.rtp_timestamp, frame.arrival));
        self.last_sent = Some(now);
        if self.next_report.is_none() {
            self.next_report = Some(now);
        }
    }

    /// When the next report is due, if one is.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_report
    }

    /// The compound packet (SR + SDES) due at `now`, if any. A stream that
    /// has sent nothing for two intervals is no longer a sender (RFC 3550
    /// 6.4): it reports nothing until it sends again.
    pub fn poll_report(&mut self, now: Instant, wall: SystemTime) -> Option<Vec<u8>> {
        let due = self.next_report?;
        if now < due {
            return None;
        }
        let sending = self
            .last_sent
            .is_some_and(|t| now.saturating_duration_since(t) < 2 * self.interval);
        if !sending {
            self.next_report = None;
            return None;
        }
        self.next_report = Some(now + self.interval);
        let mut out = Vec::with_capacity(64);
        self.sender_report(now, wall)?.write(&mut out);
        write_sdes_cname(self.ssrc, &self.cname, &mut out);
        Some(out)
    }

    /// SR + SDES + BYE, for a stream that stops (RFC 3550 6.6).
    pub fn bye(&self, now: Instant, wall: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(72);
        if let Some(sr) = self.sender_report(now, wall) {
            sr.write(&mut out);
        } else {
            // RR with no blocks: a compound packet must start with SR or RR.
            out.extend_from_slice(&[0x80, 201, 0, 1]);
            out.extend_from_slice(&self.ssrc.to_be_bytes());
        }
        write_sdes_cname(self.ssrc, &self.cname, &mut out);
        write_bye(self.ssrc, &mut out);
        out
    }

    /// The report for `now`: the RTP timestamp is extrapolated from the last
    /// frame sent by the real time since it arrived.
    pub fn sender_report(&self, now: Instant, wall: SystemTime) -> Option<SenderReport> {
        let (rtp, arrival) = self.last_frame?;
        let elapsed = MediaTime::from_duration(now.saturating_duration_since(arrival));
        Some(SenderReport {
            ssrc: self.ssrc,
            ntp: NtpTime::from_system(wall),
            rtp_timestamp: elapsed.rtp(rtp),
            packet_count: self.packets,
            octet_count: self.octets,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::rtp::RtpPacket;

    fn frame(rtp_timestamp: u32, arrival: Instant, payloads: &[usize]) -> Frame {
        let packets = payloads
            .iter()
            .map(|n| RtpPacket::new(Bytes::from(vec![0x80; 12]), Bytes::from(vec![1; *n])))
            .collect();
        Frame {
            packets,
            key: false,
            time: MediaTime(0),
            rtp_timestamp,
            arrival,
            interleaved: Default::default(),
        }
    }

    #[test]
    fn ntp_time_of_unix_epoch_and_half_second() {
        assert_eq!(NtpTime::from_system(UNIX_EPOCH).0, NTP_UNIX_OFFSET << 32);
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(
            NtpTime::from_system(t).0,
            ((NTP_UNIX_OFFSET + 1) << 32) | (1 << 31)
        );
    }

    #[test]
    fn first_report_at_stream_start_then_every_interval() {
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut s = RtcpSender::new(0xabcd, "ch1@recorder-1".into(), DEFAULT_INTERVAL);
        assert_eq!(s.poll_timeout(), None);
        s.on_sent(&frame(1000, t0, &[1400, 600]), t0);
        assert_eq!(s.poll_timeout(), Some(t0));
        let raw = s
            .poll_report(t0 + Duration::from_millis(20), wall)
            .expect("due at start");
        assert!(s.poll_report(t0 + Duration::from_secs(1), wall).is_none());
        assert_eq!(
            s.poll_timeout(),
            Some(t0 + Duration::from_millis(20) + DEFAULT_INTERVAL)
        );

        // Decode with webrtc-rs's rtcp crate, an independent implementation.
        let pkts = rtcp::packet::unmarshal(&mut &raw[..]).expect("valid compound RTCP");
        let sr = pkts[0]
            .as_any()
            .downcast_ref::<rtcp::sender_report::SenderReport>()
            .expect("SR first");
        assert_eq!(sr.ssrc, 0xabcd);
        assert_eq!(sr.packet_count, 2);
        assert_eq!(sr.octet_count, 2000);
        // 20 ms after the frame arrived: 1800 ticks later.
        assert_eq!(sr.rtp_time, 2800);
        assert_eq!(sr.ntp_time >> 32, 1_700_000_000 + NTP_UNIX_OFFSET);
        let sdes = pkts[1]
            .as_any()
            .downcast_ref::<rtcp::source_description::SourceDescription>()
            .expect("SDES second");
        assert_eq!(sdes.chunks[0].items[0].text, Bytes::from("ch1@recorder-1"));
    }

    #[test]
    fn silent_stream_stops_reporting_and_bye_is_valid() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut s = RtcpSender::new(7, "x".into(), DEFAULT_INTERVAL);
        s.on_sent(&frame(0, t0, &[100]), t0);
        assert!(s.poll_report(t0, wall).is_some());
        assert!(s.poll_report(t0 + Duration::from_secs(11), wall).is_none());
        assert_eq!(s.poll_timeout(), None);
        let bye = s.bye(t0, wall);
        let pkts = rtcp::packet::unmarshal(&mut &bye[..]).expect("valid BYE");
        assert_eq!(pkts.len(), 3);
        assert!(
            pkts[2]
                .as_any()
                .downcast_ref::<rtcp::goodbye::Goodbye>()
                .is_some()
        );
        // Never sent: BYE starts with an empty RR.
        let fresh = RtcpSender::new(9, "y".into(), DEFAULT_INTERVAL);
        assert!(rtcp::packet::unmarshal(&mut &fresh.bye(t0, wall)[..]).is_ok());
    }
}
