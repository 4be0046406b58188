//! Every send mode (UDP GSO, sendmmsg, one sendmsg per packet) delivers the
//! same datagrams, in order, to a receiver joined on the namespace's lo.

mod common;

use std::net::Ipv4Addr;
use std::time::Instant;

use bytes::Bytes;
use mcrelay::config::Destination;
use mcrelay::emit::{MulticastSender, SendMode};
use mcrelay::rtp::RtpPacket;

fn frame(sizes: &[usize], tag: u8) -> Vec<RtpPacket> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut head = vec![0x80, 96, 0, i as u8, 0, 0, 0, 0, 0, 0, 0, tag];
            head.extend_from_slice(&[0xaa, i as u8]);
            RtpPacket::new(Bytes::from(head), Bytes::from(vec![tag ^ i as u8; n - 14]))
        })
        .collect()
}

#[test]
fn send_modes_deliver_identical_datagrams() {
    let ns = common::Netns::new("sendmodes");
    ns.run(|| {
        let group = Ipv4Addr::new(239, 255, 1, 1);
        let dest = Destination {
            group,
            port: 6000,
            ttl: 1,
        };
        let rx = common::join(group, 6000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A key frame's shape: aggregation packet, FU run, a short tail, a
        // second slice's FU run, then more than one GSO send's worth.
        let mut sizes = vec![120, 1412, 1412, 1412, 333, 1412, 1412, 90];
        sizes.extend(std::iter::repeat_n(1412, 70));
        sizes.push(500);
        for (tag, mode) in [
            (1u8, SendMode::Gso),
            (2, SendMode::Sendmmsg),
            (3, SendMode::PerPacket),
        ] {
            let packets = frame(&sizes, tag);
            let (stats, used) = rt.block_on(async {
                let mut tx = MulticastSender::open(dest, Ipv4Addr::LOCALHOST, true, mode).unwrap();
                let (stats, res) = tx.send(&packets).await;
                res.unwrap();
                (stats, tx.mode())
            });
            assert_eq!(stats.packets, packets.len(), "{mode:?}");
            let mut buf = [0u8; 65536];
            let deadline = Instant::now() + std::time::Duration::from_secs(5);
            for (i, p) in packets.iter().enumerate() {
                let n = loop {
                    match rx.recv(&mut buf) {
                        Ok(n) => break n,
                        Err(_) if Instant::now() < deadline => continue,
                        Err(e) => panic!("{mode:?}: packet {i} not received: {e}"),
                    }
                };
                assert_eq!(&buf[..n], &p.to_vec()[..], "{mode:?}: packet {i} differs");
            }
            match mode {
                // GSO on lo: the runs of equal sizes leave in few system calls.
                SendMode::Gso => {
                    assert_eq!(used, SendMode::Gso, "lo supports UDP GSO");
                    assert_eq!(stats.syscalls, 1, "one sendmmsg for the frame");
                }
                SendMode::Sendmmsg => assert_eq!(stats.syscalls, 2, "64 messages per call"),
                SendMode::PerPacket => assert_eq!(stats.syscalls, packets.len()),
            }
        }
    });
}
