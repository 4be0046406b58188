//! Hot pure paths: Annex-B splitting and RTP packetizing, in bytes per second.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mcrelay::ingest::Sink;
use mcrelay::ingest::annexb::Reader;
use mcrelay::media::time::TimingPolicy;
use mcrelay::media::{AccessUnit, Codec, MediaTime};
use mcrelay::rtp::{Packetizer, PacketizerConfig};

fn nal(header: &[u8], len: usize) -> Bytes {
    let mut v = header.to_vec();
    v.extend((0..len - header.len()).map(|i| (i % 251) as u8 + 1));
    Bytes::from(v)
}

fn packetize(c: &mut Criterion) {
    let mut g = c.benchmark_group("packetize");
    for codec in [Codec::H264, Codec::H265] {
        let header: &[u8] = match codec {
            Codec::H264 => &[0x41, 0x9a],
            Codec::H265 => &[0x02, 0x01, 0xd0],
        };
        for kb in [5usize, 50, 500] {
            let au = AccessUnit::new(codec, vec![nal(header, kb * 1024)]).unwrap();
            let mut p = Packetizer::new(
                codec,
                PacketizerConfig {
                    payload_type: 96,
                    ssrc: 1,
                    max_payload: 1400,
                    aggregate: true,
                },
                0,
            );
            g.throughput(Throughput::Bytes(au.byte_len() as u64));
            g.bench_with_input(
                BenchmarkId::new(codec.to_string(), format!("{kb}KB")),
                &au,
                |b, au| {
                    let mut ts = 0u32;
                    b.iter(|| {
                        ts = ts.wrapping_add(3600);
                        black_box(p.packetize(black_box(au), ts))
                    })
                },
            );
        }
    }
    g.finish();
}

struct Count(usize);

impl Sink for Count {
    fn session_started(&mut self, _: Codec) {}
    fn parameters(&mut self, _: Vec<Bytes>) {}
    fn access_unit(&mut self, au: AccessUnit, _: MediaTime, _: Instant) {
        self.0 += au.nals.len();
    }
}

fn annexb(c: &mut Criterion) {
    let clip: &[u8] = include_bytes!("../assets/clips/camera-h264.h264");
    let mut g = c.benchmark_group("annexb_ingest");
    g.throughput(Throughput::Bytes(clip.len() as u64));
    g.bench_function("camera-h264 in 64 KB reads", |b| {
        b.iter(|| {
            let mut r = Reader::new(Codec::H264, TimingPolicy::Auto);
            let mut sink = Count(0);
            let now = Instant::now();
            for chunk in clip.chunks(64 * 1024) {
                r.splitter.push(chunk);
                r.drain(now, &mut sink).unwrap();
            }
            black_box(sink.0)
        })
    });
    g.finish();
}

criterion_group!(benches, packetize, annexb);
criterion_main!(benches);
