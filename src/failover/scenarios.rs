// The scenario suite of every failover controller: each trigger, the
// cases that must not fail over, the races between servers, failback in
// both orders, and a random soak, every step checked by `World`'s
// invariants. Included by each controller's tests, which define `KIND`
// (the controller), `SOAK` (rounds and faults of the random soak) and
// bring `World`, `ControllerKind`, `Member`, `Settings`, `Report`, `DEAF` and
// `ReportedRole` into scope.

const POLL: Duration = Duration::from_millis(500);
const PERIOD: Duration = Duration::from_secs(3);

fn settings() -> Settings {
    Settings {
        controller: KIND,
        poll_interval: POLL,
        failback_delay: Duration::from_secs(10),
        lease_ttl: Duration::from_secs(2),
    }
}

fn recorder(name: &str) -> Member {
    Member {
        name: name.into(),
        standby: false,
        protected: true,
        multicast: true,
        inaccessible_period: PERIOD,
        automatic_failback: true,
        automatic_material_copying: true,
        delay_failover: true,
        disk_layout: vec!["disk1".into(), "disk2".into()],
    }
}

fn standby(name: &str) -> Member {
    Member {
        standby: true,
        protected: false,
        ..recorder(name)
    }
}

fn world(members: Vec<Member>) -> World {
    let mut w = World::new(settings(), members);
    // Everyone up and talking: recorders past their start-up listening.
    w.run(Duration::from_secs(5));
    assert_clean(&w);
    w
}

fn assert_clean(w: &World) {
    assert!(w.violations.is_empty(), "{}", w.story());
}

fn emits(w: &World, owner: &str, by: &str) -> bool {
    w.emitter_names(owner) == [by]
}

#[test]
fn a_killed_recorder_is_covered_within_its_period() {
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    assert!(emits(&w, "r1", "r1"), "{}", w.story());
    w.kill("r1");
    let took = w
        .run_until(Duration::from_secs(20), |w| emits(w, "r1", "f1"))
        .unwrap_or_else(|| panic!("no takeover:\n{}", w.story()));
    assert!(took <= PERIOD + POLL * 2, "took {took:?}\n{}", w.story());
    // Not sooner than the period: the last answer came at most one poll
    // before the kill.
    assert!(took >= PERIOD - POLL, "took {took:?}\n{}", w.story());
    w.run(Duration::from_secs(10));
    assert!(emits(&w, "r1", "f1"));
    let v = w.nodes[1].ctl.view(w.now);
    assert_eq!(v.broken.len(), 1, "{v:?}");
    assert_eq!(v.broken[0].cover.as_deref(), Some("covered by f1"), "{v:?}");
    assert_clean(&w);
}

#[test]
fn a_flapping_recorder_is_never_taken_over() {
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    for _ in 0..20 {
        w.set_api("r1", false);
        w.run(PERIOD - POLL * 2);
        w.set_api("r1", true);
        w.run(POLL * 2);
    }
    assert!(emits(&w, "r1", "r1"), "{}", w.story());
    assert!(!w.log.iter().any(|l| l.contains("f1")), "{}", w.story());
    assert_clean(&w);
}

#[test]
fn an_unreachable_api_with_streams_flowing_is_not_a_dead_recorder() {
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    w.set_api("r1", false);
    w.run(PERIOD * 10);
    assert!(emits(&w, "r1", "r1"), "{}", w.story());
    // The embedded controller says why it does not take over; on etcd the
    // server is not broken at all (its lease lives).
    let v = w.nodes[1].ctl.view(w.now);
    assert!(
        v.broken.iter().any(
            |s| s.name == "r1" && s.cover.as_deref() == Some("still streaming: not taken over")
        ) || (KIND == ControllerKind::Etcd && v.broken.is_empty()),
        "{v:?}"
    );
    // Once the streams stop too, it is taken over: at once by the embedded
    // controller (inaccessible for long already), after its period on etcd
    // (its lease lived until the kill).
    w.kill("r1");
    let limit = match KIND {
        ControllerKind::Etcd => PERIOD + POLL * 2,
        _ => PERIOD,
    };
    assert!(
        w.run_until(limit, |w| emits(w, "r1", "f1")).is_some(),
        "{}",
        w.story()
    );
    assert_clean(&w);
}

#[test]
fn a_standby_without_the_site_key_takes_nothing_over_and_says_why() {
    // f1 has another key: it verifies no beacon, and nobody verifies its.
    let mut w = World::new(settings(), vec![recorder("r1"), standby("f1")]);
    w.set_key("f1", false);
    w.run(Duration::from_secs(5));
    w.kill("r1");
    w.run(PERIOD * 3);
    assert!(w.emitter_names("r1").is_empty(), "{}", w.story());
    let f1 = w.index("f1");
    let view = w.nodes[f1].ctl.view(w.now);
    assert!(
        view.failover
            .iter()
            .any(|s| s.name == "f1" && s.state == DEAF),
        "{view:?}"
    );
    assert_clean(&w);

    // With a second standby that has the key, that one covers, although
    // f1 comes first in site order.
    let mut w = World::new(
        settings(),
        vec![recorder("r1"), standby("f1"), standby("f2")],
    );
    w.set_key("f1", false);
    w.run(Duration::from_secs(5));
    w.kill("r1");
    let took = w.run_until(PERIOD * 3, |w| emits(w, "r1", "f2"));
    assert!(
        took.is_some_and(|t| t <= PERIOD + Duration::from_secs(3)),
        "{took:?}\n{}",
        w.story()
    );
    let f2 = w.index("f2");
    let view = w.nodes[f2].ctl.view(w.now);
    assert!(
        view.failover
            .iter()
            .any(|s| s.name == "f1" && s.state == DEAF),
        "f2 does not say f1 hears no beacon: {view:?}"
    );
    assert_clean(&w);
}

#[test]
fn lost_beacons_with_a_live_control_plane_are_not_a_dead_recorder() {
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    w.set_beacons_out("r1", false);
    w.run(PERIOD * 3);
    assert!(emits(&w, "r1", "r1"), "{}", w.story());
    assert_clean(&w);
}

#[test]
fn two_failures_and_one_standby_cover_the_first_and_say_why_not_the_second() {
    let mut w = world(vec![recorder("r1"), recorder("r2"), standby("f1")]);
    w.kill("r2");
    w.kill("r1");
    w.run(PERIOD * 3);
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    assert!(w.emitter_names("r2").is_empty());
    let v = w.nodes[2].ctl.view(w.now);
    let r2 = v.broken.iter().find(|s| s.name == "r2").expect("r2 broken");
    assert_eq!(r2.cover.as_deref(), Some("no failover server available"));
    assert_clean(&w);
}

#[test]
fn two_standbys_and_one_failure_exactly_one_takes_it() {
    let mut w = world(vec![recorder("r1"), standby("f1"), standby("f2")]);
    w.kill("r1");
    w.run(PERIOD * 4);
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    // f2 never claimed it.
    assert!(!w.log.iter().any(|l| l.contains("f2:")), "{}", w.story());
    // The second standby takes the second failure.
    w.kill("r1");
    assert_clean(&w);
}

#[test]
fn two_failures_and_two_standbys_are_both_covered() {
    let mut w = world(vec![
        recorder("r1"),
        recorder("r2"),
        standby("f1"),
        standby("f2"),
    ]);
    w.kill("r1");
    w.kill("r2");
    w.run(PERIOD * 4);
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    assert!(emits(&w, "r2", "f2"), "{}", w.story());
    assert_clean(&w);
}

#[test]
fn a_standby_that_dies_while_covering_is_replaced() {
    let mut w = world(vec![recorder("r1"), standby("f1"), standby("f2")]);
    w.kill("r1");
    w.run(PERIOD * 2);
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    w.kill("f1");
    let took = w
        .run_until(Duration::from_secs(20), |w| emits(w, "r1", "f2"))
        .unwrap_or_else(|| panic!("f2 never took r1:\n{}", w.story()));
    assert!(took <= Duration::from_secs(5), "{took:?}\n{}", w.story());
    assert_clean(&w);
}

#[test]
fn a_disk_layout_mismatch_is_refused_with_the_reason() {
    let mut f1 = standby("f1");
    f1.disk_layout = vec!["disk1".into()];
    let mut w = world(vec![recorder("r1"), f1]);
    w.kill("r1");
    w.run(PERIOD * 3);
    assert!(w.emitter_names("r1").is_empty(), "{}", w.story());
    let v = w.nodes[1].ctl.view(w.now);
    let why = v.broken[0].cover.clone().unwrap_or_default();
    assert!(why.contains("disk layout") && why.contains("f1"), "{why}");
    assert_clean(&w);
}

#[test]
fn all_disks_broken_hand_over_cleanly_when_the_owner_confirms() {
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    w.set_disks_broken("r1", true);
    let took = w
        .run_until(Duration::from_secs(10), |w| emits(w, "r1", "f1"))
        .unwrap_or_else(|| panic!("no takeover:\n{}", w.story()));
    // Asked and confirmed at the next poll: no wait for silence.
    assert!(took <= POLL * 2, "{took:?}\n{}", w.story());
    assert!(w.log.iter().any(|l| l.contains("ConfirmRelease")));
    assert_clean(&w);
}

#[test]
fn a_cut_link_is_taken_over_and_the_healed_recorder_stays_quiet() {
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    w.set_link("r1", false);
    assert!(
        w.run_until(PERIOD * 2, |w| emits(w, "r1", "f1")).is_some(),
        "{}",
        w.story()
    );
    w.set_link("r1", true);
    w.run(Duration::from_secs(5));
    // The world's invariant saw at most one emitter at every step.
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    assert_clean(&w);
}

#[test]
fn a_recorder_that_restarts_while_covered_does_not_emit() {
    let mut r1 = recorder("r1");
    r1.automatic_failback = false;
    let mut w = world(vec![r1, standby("f1")]);
    w.kill("r1");
    w.run(PERIOD * 2);
    assert!(emits(&w, "r1", "f1"));
    w.restart("r1");
    w.run(Duration::from_secs(60));
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    // The operator's failback.
    w.command_failback("r1");
    assert!(
        w.run_until(Duration::from_secs(30), |w| emits(w, "r1", "r1"))
            .is_some(),
        "{}",
        w.story()
    );
    assert_clean(&w);
}

#[test]
fn failback_with_delay_failover_copies_first_then_returns_the_role() {
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    w.kill("r1");
    w.run(PERIOD * 2);
    w.restart("r1");
    let back = w
        .run_until(Duration::from_secs(60), |w| emits(w, "r1", "r1"))
        .unwrap_or_else(|| panic!("no failback:\n{}", w.story()));
    // failback_delay, then the copy (3 s), then the hand-back.
    assert!(back >= Duration::from_secs(13), "{back:?}\n{}", w.story());
    let copy = w.log.iter().position(|l| l.contains("StartCopy")).unwrap();
    let ask = w
        .log
        .iter()
        .position(|l| l.contains("AskHandBack"))
        .unwrap();
    assert!(copy < ask, "{}", w.story());
    assert_eq!(w.hand_backs.len(), 1, "{}", w.story());
    assert_clean(&w);
}

#[test]
fn failback_without_delay_failover_returns_the_role_then_copies() {
    let mut r1 = recorder("r1");
    r1.delay_failover = false;
    let mut w = world(vec![r1, standby("f1")]);
    w.kill("r1");
    w.run(PERIOD * 2);
    w.restart("r1");
    let back = w
        .run_until(Duration::from_secs(60), |w| emits(w, "r1", "r1"))
        .unwrap_or_else(|| panic!("no failback:\n{}", w.story()));
    assert!(back < Duration::from_secs(12), "{back:?}");
    w.run(POLL);
    let copy = w.log.iter().position(|l| l.contains("StartCopy")).unwrap();
    let ask = w
        .log
        .iter()
        .position(|l| l.contains("AskHandBack"))
        .unwrap();
    assert!(ask < copy, "{}", w.story());
    assert_clean(&w);
}

#[test]
fn a_restored_recorder_that_dies_during_its_copy_leaves_the_role_covered() {
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    w.copy_time = Duration::from_secs(20);
    w.kill("r1");
    w.run(PERIOD * 2);
    w.restart("r1");
    w.run(Duration::from_secs(15)); // failback delay, then copying
    assert!(w.log.iter().any(|l| l.contains("StartCopy")));
    w.kill("r1");
    w.run(Duration::from_secs(30));
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    w.restart("r1");
    assert!(
        w.run_until(Duration::from_secs(60), |w| emits(w, "r1", "r1"))
            .is_some(),
        "{}",
        w.story()
    );
    assert_eq!(
        // The copy that died, the one after the restart, and the one after
        // the hand-back (what was recorded during the second).
        w.log.iter().filter(|l| l.contains("StartCopy")).count(),
        3,
        "{}",
        w.story()
    );
    assert_clean(&w);
}

#[test]
fn without_automatic_failback_the_role_stays_with_the_failover_server() {
    let mut r1 = recorder("r1");
    r1.automatic_failback = false;
    let mut w = world(vec![r1, standby("f1")]);
    w.kill("r1");
    w.run(PERIOD * 2);
    w.restart("r1");
    w.run(Duration::from_secs(120));
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    assert!(w.hand_backs.is_empty());
    assert_clean(&w);
}

#[test]
fn an_unprotected_recorder_is_never_taken_over() {
    let mut r1 = recorder("r1");
    r1.protected = false;
    let mut w = world(vec![r1, standby("f1")]);
    w.kill("r1");
    w.run(PERIOD * 5);
    assert!(w.emitter_names("r1").is_empty(), "{}", w.story());
    assert_clean(&w);
}

#[test]
fn a_cut_recorder_in_a_site_of_three_stops_before_any_standby_may_start() {
    let mut w = world(vec![recorder("r1"), recorder("r2"), standby("f1")]);
    // Cut beyond its port: its carrier stays up, it only hears nobody.
    w.set_link_beyond_port("r1", false);
    let r1 = w.index("r1");
    let mut stopped = None;
    let took = w.run_until(PERIOD * 3, |w| {
        if stopped.is_none() && !w.nodes[r1].ctl.may_emit(w.now) {
            stopped = Some(w.now);
        }
        emits(w, "r1", "f1")
    });
    let (Some(took), Some(stopped)) = (took, stopped) else {
        panic!("covered {took:?}, r1 stopped {stopped:?}\n{}", w.story());
    };
    let covered = w.now;
    assert!(
        stopped < covered,
        "r1 stopped {:?} after f1 started\n{}",
        stopped.duration_since(covered),
        w.story()
    );
    println!(
        "cut beyond its port: r1 stopped {:.2} s before f1 started ({:.2} s after the cut)",
        covered.duration_since(stopped).as_secs_f64(),
        took.as_secs_f64()
    );
    // Healed: r1 hears f1 covering it before its fence opens.
    w.set_link_beyond_port("r1", true);
    w.run(Duration::from_secs(5));
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    assert_clean(&w);
}

#[test]
fn a_recorder_whose_only_standby_dies_keeps_emitting() {
    // A site of two: r1 hears nobody once f1 is gone, its link is up.
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    w.kill("f1");
    w.run(PERIOD * 3);
    assert!(emits(&w, "r1", "r1"), "{}", w.story());
    // A site of three: r1 still hears r2.
    let mut w = world(vec![recorder("r1"), recorder("r2"), standby("f1")]);
    w.kill("f1");
    w.run(PERIOD * 3);
    assert!(emits(&w, "r1", "r1") && emits(&w, "r2", "r2"), "{}", w.story());
    assert_clean(&w);
}

#[test]
fn a_recorder_paused_past_its_period_sends_nothing_stale_when_it_resumes() {
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    let r1 = w.index("r1");
    w.set_frozen("r1", true);
    w.run(PERIOD + Duration::from_secs(5));
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    w.set_frozen("r1", false);
    // Before it hears anything: its fence ran out while it was paused.
    assert!(!w.nodes[r1].ctl.may_emit(w.now), "{}", w.story());
    w.run(Duration::from_secs(5));
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    assert_clean(&w);

    // Paused shorter than its fence: it goes on, nobody takes over.
    let mut w = world(vec![recorder("r1"), standby("f1")]);
    w.set_frozen("r1", true);
    w.run(Duration::from_millis(500));
    w.set_frozen("r1", false);
    w.run(PERIOD * 2);
    assert!(emits(&w, "r1", "r1"), "{}", w.story());
    assert_clean(&w);
}

/// A long run of random faults: the invariants hold at every step.
#[test]
fn random_faults_never_break_the_invariants() {
    let mut seed: u64 = 0x5eed_1234;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (rounds, faults) = SOAK;
    for round in 0..rounds {
        let mut w = world(vec![
            recorder("r1"),
            recorder("r2"),
            standby("f1"),
            standby("f2"),
        ]);
        for _ in 0..faults {
            let who = ["r1", "r2", "f1", "f2"][rnd(4) as usize];
            w.fault(who, rnd(7) as u8);
            w.run(Duration::from_millis(100 * (1 + rnd(40))));
        }
        assert!(w.violations.is_empty(), "round {round}:\n{}", w.story());
    }
}

#[test]
fn two_failover_servers_on_one_group_after_a_heal_the_later_yields() {
    let mut w = world(vec![recorder("r1"), standby("f1"), standby("f2")]);
    w.kill("r1");
    w.run(PERIOD * 2);
    assert!(emits(&w, "r1", "f1"), "{}", w.story());
    w.set_link("f1", false);
    assert!(
        w.run_until(Duration::from_secs(20), |w| emits(w, "r1", "f2"))
            .is_some(),
        "{}",
        w.story()
    );
    w.set_link("f1", true);
    w.run(Duration::from_secs(5));
    assert_eq!(w.emitter_names("r1").len(), 1, "{}", w.story());
    assert_clean(&w);
}

#[test]
fn reports_read_back_as_written() {
    for role in [
        ReportedRole::Recorder { emitting: true },
        ReportedRole::Standby,
        ReportedRole::Claiming { owner: "r1".into() },
        ReportedRole::Covering {
            owner: "r1".into(),
            since_unix_ms: 1_800_000_000_123,
        },
    ] {
        let r = Report {
            disks_broken: false,
            role,
            hears_beacons: false,
        };
        let text = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r, "{text}");
    }
}
