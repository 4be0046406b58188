//! The channel hub and the TCP writer: frames published once, delivered to
//! N subscribers; interleaved RTSP writes to a client.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mcrelay::channel::core::StreamIds;
use mcrelay::channel::{Channel, Publisher};
use mcrelay::config::Source;
use mcrelay::ingest::Sink;
use mcrelay::media::{AccessUnit, Codec, MediaTime};
use mcrelay::metrics::Metrics;
use mcrelay::spec::ChannelSpec;

fn channel() -> Arc<Channel> {
    let spec = ChannelSpec::standalone(
        1,
        "bench",
        Source::TcpConnect {
            host: "h".into(),
            port: 1,
        },
        Codec::H264,
    );
    Channel::new(spec, Metrics::new().channel(1), SystemTime::now())
}

/// A 20 KB P frame (a 4 Mbit/s camera at 25 fps): 15 packets.
fn frame_au() -> AccessUnit {
    let mut nal = vec![0x41, 0x9a];
    nal.extend((0..20_000).map(|i| (i % 251) as u8 + 1));
    AccessUnit::new(Codec::H264, vec![Bytes::from(nal)]).unwrap()
}

fn hub(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_fanout");
    let au = frame_au();
    for subscribers in [1usize, 10, 100] {
        let ch = channel();
        let mut p = Publisher::new(
            ch.clone(),
            StreamIds {
                ssrc: 1,
                initial_seq: 0,
                rtp_base: 0,
            },
            String::new(),
        );
        p.session_started(Codec::H264);
        let mut rx: Vec<_> = (0..subscribers).map(|_| ch.subscribe()).collect();
        // Packets delivered per iteration: 15 per subscriber.
        g.throughput(Throughput::Elements(15 * subscribers as u64));
        let mut t = 0;
        g.bench_with_input(
            BenchmarkId::new("packets_delivered", subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    t += 3600;
                    p.access_unit(au.clone(), MediaTime(t), Instant::now());
                    for r in rx.iter_mut() {
                        let f = r.try_recv().expect("a frame");
                        black_box(f.packets.len());
                    }
                })
            },
        );
    }
    g.finish();
}

fn tcp_writer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ch = channel();
    let mut p = Publisher::new(
        ch.clone(),
        StreamIds {
            ssrc: 1,
            initial_seq: 0,
            rtp_base: 0,
        },
        String::new(),
    );
    p.session_started(Codec::H264);
    let mut rx = ch.subscribe();
    p.access_unit(frame_au(), MediaTime(0), Instant::now());
    let frames = vec![rx.try_recv().unwrap()];
    let bytes: usize = frames
        .iter()
        .map(|f| f.byte_len() + 4 * f.packets.len())
        .sum();
    // A TCP connection on the host's loopback, drained by a reader thread.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::Read;
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    });
    let mut client = rt.block_on(tokio::net::TcpStream::connect(addr)).unwrap();
    let mut g = c.benchmark_group("interleaved_writer");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("one 20 KB frame per writev", |b| {
        b.iter(|| {
            rt.block_on(mcrelay::runtime::rtsp::write_frames(
                &mut client,
                &frames,
                0,
                std::time::Duration::from_secs(5),
            ))
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, hub, tcp_writer);
criterion_main!(benches);
