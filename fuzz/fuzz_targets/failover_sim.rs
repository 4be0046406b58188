//! The embedded failover controller under arbitrary fault sequences: two
//! recorders and two failover servers (their failback settings and disk
//! layouts chosen by the input) killed, restarted, cut off, with hung APIs
//! and broken disks, failbacks commanded. After every step of virtual
//! time: never two emitters on one owner's groups, only failover servers
//! emit another's channels, never a role return before the copy under
//! `delay_failover`.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mcrelay::failover::sim::World;
use mcrelay::failover::{ControllerKind, Member, Settings};

fn member(name: &str, standby: bool, flags: u8) -> Member {
    Member {
        name: name.into(),
        standby,
        protected: !standby && flags & 1 == 0,
        // Every server has a multicast interface: the failover's data
        // plane (the beacons) needs one. A site of servers without one has
        // the control plane alone, and two standbys may then both cover a
        // recorder while one's API is out of the other's reach (README).
        multicast: true,
        inaccessible_period: Duration::from_millis(1000 + 500 * u64::from(flags >> 5)),
        automatic_failback: flags & 4 == 0,
        automatic_material_copying: flags & 8 == 0,
        delay_failover: flags & 16 == 0,
        disk_layout: if standby && flags & 16 != 0 && flags & 1 != 0 {
            vec!["other".into()]
        } else {
            vec!["disk1".into()]
        },
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let names = ["r1", "r2", "f1", "f2"];
    let members: Vec<Member> = names
        .iter()
        .enumerate()
        .map(|(i, n)| member(n, i >= 2, data[i]))
        .collect();
    let settings = Settings {
        controller: ControllerKind::Embedded,
        poll_interval: Duration::from_millis(500),
        failback_delay: Duration::from_millis(500 * u64::from(data[4] % 16)),
        lease_ttl: Duration::from_secs(10),
    };
    let mut w = World::new(settings, members);
    w.copy_time = Duration::from_millis(250 * u64::from(data[4] >> 4));
    // Two bytes an event: what and to whom, then how long to run after.
    for ev in data[5..].chunks(2).take(64) {
        let who = names[usize::from(ev[0] & 3)];
        w.fault(who, (ev[0] >> 2) % 7);
        let ms = ev.get(1).map_or(100, |b| 50 * u64::from(*b % 80));
        w.run(Duration::from_millis(ms));
        assert!(w.violations.is_empty(), "{}", w.story());
    }
});
