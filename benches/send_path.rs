//! The multicast send path: one 20 KB frame (15 packets of up to 1412
//! bytes) sent to a group on the lo of a network namespace this bench makes
//! (it needs root, as the tests do), in four ways:
//!
//! - `copy_send`: each packet copied into one buffer and sent with `send`,
//!   as relays without zero-copy do;
//! - `per_packet`: one vectored `sendmsg` per packet (header part + body);
//! - `sendmmsg`: all packets in one `sendmmsg`;
//! - `gso`: runs of equal-size packets as UDP GSO, in one `sendmmsg`.
//!
//! Throughput is packets per second of a busy single thread, i.e. packets
//! per CPU-second of the sender.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcrelay::channel::core::StreamIds;
use mcrelay::channel::{Channel, Publisher};
use mcrelay::config::{Destination, Source};
use mcrelay::emit::{MulticastSender, SendMode};
use mcrelay::ingest::Sink;
use mcrelay::media::{AccessUnit, Codec, MediaTime};
use mcrelay::metrics::Metrics;
use mcrelay::rtp::RtpPacket;
use mcrelay::spec::ChannelSpec;

/// A namespace with multicast on lo, entered by this thread; deleted on drop.
struct Ns(String);

impl Ns {
    fn enter() -> Ns {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the send-path bench makes a network namespace: run it as root"
        );
        let name = format!("mcr-sendbench-{}", std::process::id());
        let ip = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up", "multicast", "on"]);
        ip(&["-n", &name, "route", "add", "224.0.0.0/4", "dev", "lo"]);
        let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn frame_packets() -> Vec<RtpPacket> {
    let spec = ChannelSpec::standalone(
        1,
        "bench",
        Source::TcpConnect {
            host: "h".into(),
            port: 1,
        },
        Codec::H264,
    );
    let ch = Channel::new(spec, Metrics::new().channel(1), SystemTime::now());
    let mut p = Publisher::new(
        ch.clone(),
        StreamIds {
            ssrc: 1,
            initial_seq: 0,
            rtp_base: 0,
        },
        String::new(),
    );
    let mut rx = ch.subscribe();
    p.session_started(Codec::H264);
    let mut nal = vec![0x41, 0x9a];
    nal.extend((0..20_000).map(|i| (i % 251) as u8 + 1));
    p.access_unit(
        AccessUnit::new(Codec::H264, vec![Bytes::from(nal)]).unwrap(),
        MediaTime(0),
        Instant::now(),
    );
    rx.try_recv().unwrap().packets.clone()
}

fn send_path(c: &mut Criterion) {
    let _ns = Ns::enter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let packets = frame_packets();
    let dest = Destination {
        group: Ipv4Addr::new(239, 255, 90, 1),
        port: 5000,
        ttl: 1,
    };
    let mut g = c.benchmark_group("multicast_send");
    g.throughput(Throughput::Elements(packets.len() as u64));

    let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    plain.set_multicast_ttl_v4(1).unwrap();
    plain.connect(dest.rtp()).unwrap();
    let mut buf = Vec::with_capacity(1500);
    g.bench_function("copy_send", |b| {
        b.iter(|| {
            for p in &packets {
                buf.clear();
                buf.extend_from_slice(p.head());
                buf.extend_from_slice(p.body());
                plain.send(&buf).unwrap();
            }
        })
    });
    for (name, mode) in [
        ("per_packet", SendMode::PerPacket),
        ("sendmmsg", SendMode::Sendmmsg),
        ("gso", SendMode::Gso),
    ] {
        let mut tx = rt
            .block_on(async { MulticastSender::open(dest, Ipv4Addr::LOCALHOST, false, mode) })
            .unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                let (stats, res) = rt.block_on(tx.send(&packets));
                res.unwrap();
                stats.packets
            })
        });
    }
    g.finish();
}

criterion_group!(benches, send_path);
criterion_main!(benches);
