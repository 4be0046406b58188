//! The multicast socket of one channel: socket2 for the setup, libc for the
//! sends socket2 lacks (`sendmmsg`, UDP GSO via a `UDP_SEGMENT` control
//! message). Each packet leaves as two iovecs, its header part and its body,
//! straight from the shared `Bytes`; nothing is copied into a send buffer.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::batch::{MAX_GSO_BYTES, MAX_SEGMENTS, Run, plan_runs};
use crate::config::Destination;
use crate::rtp::RtpPacket;

/// `UDP_SEGMENT` from linux/udp.h (the libc crate lacks it for glibc targets).
const UDP_SEGMENT: libc::c_int = 103;

/// Messages per `sendmmsg` call: a key frame of a few hundred KB is a few
/// dozen GSO runs; 64 bounds the stack of headers built per call.
const MAX_MSGS: usize = 64;

/// Requested send buffer: room for a large key frame (several hundred KB)
/// when the NIC queue is briefly full. The kernel caps it at wmem_max.
const SEND_BUFFER: usize = 4 * 1024 * 1024;

/// How packets are handed to the kernel.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendMode {
    /// Runs of equal-size packets as one GSO send each, all runs of a frame in
    /// one `sendmmsg`: usually one system call per frame.
    Gso,
    /// One message per packet, all of a frame in one `sendmmsg`.
    Sendmmsg,
    /// One `sendmsg` per packet (what relays without batching do).
    PerPacket,
}

/// Counters of what one send did.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    pub packets: usize,
    pub syscalls: usize,
}

/// Opens a UDP socket that sends to `dest` from `interface`.
pub fn open_multicast(
    dest: SocketAddrV4,
    interface: Ipv4Addr,
    ttl: u32,
    loopback: bool,
) -> io::Result<UdpSocket> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} for {dest} via {interface}: {e}"))
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| ctx("socket", e))?;
    s.set_multicast_if_v4(&interface).map_err(|e| {
        ctx(
            "IP_MULTICAST_IF (is the interface address on this host?)",
            e,
        )
    })?;
    s.set_multicast_ttl_v4(ttl)
        .map_err(|e| ctx("IP_MULTICAST_TTL", e))?;
    s.set_multicast_loop_v4(loopback)
        .map_err(|e| ctx("IP_MULTICAST_LOOP", e))?;
    // Best effort: a smaller buffer only means waiting for writability sooner.
    let _ = s.set_send_buffer_size(SEND_BUFFER);
    s.bind(&SocketAddrV4::new(interface, 0).into())
        .map_err(|e| {
            ctx(
                "bind to the interface address (is it an address of this host?)",
                e,
            )
        })?;
    s.connect(&dest.into()).map_err(|e| ctx("connect", e))?;
    s.set_nonblocking(true)
        .map_err(|e| ctx("non-blocking mode", e))?;
    UdpSocket::from_std(s.into())
}

/// One channel's RTP and RTCP sockets.
pub struct MulticastSender {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    mode: SendMode,
    dest: Destination,
}

impl MulticastSender {
    pub fn open(
        dest: Destination,
        interface: Ipv4Addr,
        loopback: bool,
        mode: SendMode,
    ) -> io::Result<Self> {
        Ok(MulticastSender {
            rtp: open_multicast(dest.rtp(), interface, dest.ttl, loopback)?,
            rtcp: open_multicast(dest.rtcp(), interface, dest.ttl, loopback)?,
            mode,
            dest,
        })
    }

    pub fn destination(&self) -> Destination {
        self.dest
    }

    /// The mode in use (GSO falls back to `Sendmmsg` if the kernel refuses it).
    pub fn mode(&self) -> SendMode {
        self.mode
    }

    /// Sends the packets of one frame, waiting for room in the socket's send
    /// buffer when it is full. On any other error the rest of the frame is
    /// dropped and the error returned with what was sent.
    pub async fn send(&mut self, packets: &[RtpPacket]) -> (SendStats, io::Result<()>) {
        let mut total = SendStats::default();
        loop {
            let (stats, res) = self.send_now(&packets[total.packets..], true);
            total.packets += stats.packets;
            total.syscalls += stats.syscalls;
            match res {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.rtp.writable().await {
                        return (total, Err(e));
                    }
                }
                res => return (total, res),
            }
        }
    }

    /// Sends the packets of one frame without waiting: if the socket's send
    /// buffer is full the rest of the frame is dropped and `WouldBlock`
    /// returned with what was sent. For senders that must never wait (the
    /// camera task sends its channel's multicast itself).
    pub fn try_send(&mut self, packets: &[RtpPacket]) -> (SendStats, io::Result<()>) {
        self.send_now(packets, false)
    }

    /// Issues the system calls for `packets` until done or an error.
    /// `via_reactor` goes through tokio's readiness gate (so that a later
    /// `writable().await` sees the EAGAIN); without it the call goes straight
    /// to the non-blocking socket, which a fresh socket needs: the gate
    /// refuses it until the reactor has polled it once.
    fn send_now(
        &mut self,
        packets: &[RtpPacket],
        via_reactor: bool,
    ) -> (SendStats, io::Result<()>) {
        let mut stats = SendStats::default();
        let mut runs = self.plan(packets);
        let mut next = 0;
        while next < runs.len() {
            let mode = self.mode;
            let fd = self.rtp.as_raw_fd();
            let call = || match mode {
                SendMode::PerPacket => send_one(fd, packets, runs[next]).map(|()| 1),
                _ => send_runs(fd, packets, &runs[next..], mode == SendMode::Gso),
            };
            let res = if via_reactor {
                self.rtp.try_io(Interest::WRITABLE, call)
            } else {
                call()
            };
            match res {
                Ok(n) => {
                    stats.syscalls += 1;
                    stats.packets += runs[next..next + n].iter().map(Run::len).sum::<usize>();
                    next += n;
                }
                Err(e) if self.mode == SendMode::Gso && gso_refused(&e) => {
                    tracing::warn!(dest = %self.dest.rtp(), error = %e, "the kernel refused UDP GSO; sending one datagram per packet with sendmmsg");
                    self.mode = SendMode::Sendmmsg;
                    let from = runs[next].start;
                    runs = singles(from, packets.len());
                    next = 0;
                }
                Err(e) => return (stats, Err(e)),
            }
        }
        (stats, Ok(()))
    }

    /// Sends one RTCP compound packet without waiting.
    pub fn try_send_rtcp(&self, data: &[u8]) -> io::Result<()> {
        // SAFETY: a send from a live buffer on a socket this struct owns.
        let n = unsafe { libc::send(self.rtcp.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn plan(&self, packets: &[RtpPacket]) -> Vec<Run> {
        match self.mode {
            SendMode::Gso => plan_runs(packets, MAX_SEGMENTS, MAX_GSO_BYTES),
            _ => singles(0, packets.len()),
        }
    }

    /// Sends one RTCP compound packet to the RTCP port.
    pub async fn send_rtcp(&self, data: &[u8]) -> io::Result<()> {
        self.rtcp.send(data).await.map(|_| ())
    }
}

fn singles(from: usize, to: usize) -> Vec<Run> {
    (from..to)
        .map(|i| Run {
            start: i,
            end: i + 1,
            segment: 0,
        })
        .collect()
}

/// Errors with which the kernel says it cannot do GSO on this route (no
/// checksum offload on the device, xfrm, old kernel).
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

/// Control message buffer for one `UDP_SEGMENT` (CMSG_SPACE(2) = 24 bytes
/// on 64-bit Linux), aligned for `cmsghdr`.
#[derive(Copy, Clone)]
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

/// One `sendmmsg` with a message per run. Returns the number of runs sent.
fn send_runs(fd: RawFd, packets: &[RtpPacket], runs: &[Run], gso: bool) -> io::Result<usize> {
    let runs = &runs[..runs.len().min(MAX_MSGS)];
    let mut iov: Vec<libc::iovec> =
        Vec::with_capacity(2 * runs.iter().map(Run::len).sum::<usize>());
    let mut spans = Vec::with_capacity(runs.len());
    for r in runs {
        let first = iov.len();
        for p in &packets[r.start..r.end] {
            iov.push(iovec(p.head()));
            if !p.body().is_empty() {
                iov.push(iovec(p.body()));
            }
        }
        spans.push((first, iov.len() - first));
    }
    let mut cmsgs = vec![CmsgBuf([0; 32]); runs.len()];
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(runs.len());
    for (i, r) in runs.iter().enumerate() {
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        // SAFETY: spans index into `iov`, which is fully built and not
        // resized again while the pointers live.
        hdr.msg_iov = unsafe { iov.as_mut_ptr().add(spans[i].0) };
        hdr.msg_iovlen = spans[i].1 as _;
        if gso && r.len() > 1 {
            // SAFETY: CMSG_* only compute offsets; `cmsgs[i]` is 32 bytes,
            // aligned, and CMSG_SPACE(2) = 24 fits in it.
            unsafe {
                hdr.msg_control = cmsgs[i].0.as_mut_ptr().cast();
                hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                let c = libc::CMSG_FIRSTHDR(&hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), r.segment as u16);
            }
        }
        msgs.push(libc::mmsghdr {
            msg_hdr: hdr,
            msg_len: 0,
        });
    }
    // SAFETY: every pointer in `msgs` refers to `iov`, `cmsgs` or the packets'
    // bytes, all alive and unmoved for the duration of the call.
    let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `sendmsg` for one packet.
fn send_one(fd: RawFd, packets: &[RtpPacket], run: Run) -> io::Result<()> {
    let p = &packets[run.start];
    let mut iov = [iovec(p.head()), iovec(p.body())];
    // SAFETY: as in send_runs; the header points at `iov` on this stack frame.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = iov.as_mut_ptr();
    hdr.msg_iovlen = if p.body().is_empty() { 1 } else { 2 };
    let n = unsafe { libc::sendmsg(fd, &hdr, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
