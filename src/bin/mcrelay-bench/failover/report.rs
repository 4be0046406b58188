//! The failover scenario's table: the faults side by side (under each
//! controller, when it ran under more than one), one row per figure.

use std::time::Duration;

use super::analysis::{Frames, Switch};
use super::{AFTER_FAILBACK, BEFORE, Case, Config, Controller, LEASE_TTL, Outcome, Phase};

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{s:.3} s")
    } else {
        format!("{s:.2} s")
    }
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), secs)
}

fn exported(v: Option<f64>) -> String {
    v.map_or("not exported".into(), |s| {
        secs(Duration::from_secs_f64(s.max(0.0)))
    })
}

fn stream(s: Option<Switch>) -> String {
    match s {
        Some(s) if s.continues() => format!("yes (SSRC kept, sequence +{})", s.seq_ahead()),
        Some(s) if s.first.ssrc != s.last.ssrc => format!(
            "**no**: SSRC {:08x} after {:08x}",
            s.first.ssrc, s.last.ssrc
        ),
        Some(s) => format!(
            "**no**: sequence {} after {}, timestamp {} after {}",
            s.first.seq, s.last.seq, s.first.ts, s.last.ts
        ),
        None => "-".into(),
    }
}

fn frames(f: &Frames) -> String {
    format!(
        "{} of {} decoded: **{} lost**",
        f.decoded,
        f.expected,
        f.lost()
    )
}

fn opt_count(n: Option<usize>) -> String {
    n.map_or("-".into(), |n| n.to_string())
}

fn burst_label() -> String {
    format!(
        "frames the new emitter sent in its first {} (steady 25 fps: 2–3)",
        secs(super::analysis::BURST_WINDOW)
    )
}

fn repeated_label() -> String {
    format!(
        "viewer's pictures shown twice (the same picture as one decoded in the {} before)",
        secs(super::analysis::REPEAT_HORIZON)
    )
}

fn kb(bytes: f64) -> String {
    format!("{:.0} kB", bytes / 1e3)
}

/// One line for the progress output.
pub fn summary(o: &Outcome) -> String {
    format!(
        "takeover {} after the fault, {} frames lost; failback gap {}, {} frames lost; {:.0} s",
        opt_secs(o.takeover.after_event),
        o.takeover.frames.lost(),
        opt_secs(o.failback.switch.map(|s| s.gap())),
        o.failback.frames.lost(),
        o.seconds
    )
}

/// Each controller that ran, once, in the order of the results.
fn controllers(results: &[(Case, anyhow::Result<Outcome>)]) -> Vec<Controller> {
    let mut cs: Vec<Controller> = Vec::new();
    for (case, _) in results {
        if !cs.contains(&case.controller) {
            cs.push(case.controller);
        }
    }
    cs
}

/// The runs side by side; a run that failed says why in its column. The
/// columns name the controller when more than one ran.
pub fn table(cfg: &Config, results: &[(Case, anyhow::Result<Outcome>)]) -> String {
    let several = controllers(results).len() > 1;
    let mut s = String::from("| |");
    for (case, _) in results {
        let label = if several {
            case.label()
        } else {
            case.fault.label().to_string()
        };
        s.push_str(&format!(" {label} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(results.len()));
    s.push('\n');
    type Cell = Box<dyn Fn(&Outcome) -> String>;
    let takeover = |f: fn(&Phase) -> String| -> Cell { Box::new(move |o| f(&o.takeover)) };
    let failback = |f: fn(&Phase) -> String| -> Cell { Box::new(move |o| f(&o.failback)) };
    let after = secs(cfg.after_fault());
    let rows: Vec<(String, Cell)> = vec![
        ("**takeover**".into(), Box::new(|_| String::new())),
        (
            "fault → failover-1's first packet on recorder-1's group".into(),
            takeover(|p| opt_secs(p.after_event)),
        ),
        (
            "failover-1's `mcrelay_failover_takeover_seconds` (decided broken → first packet)".into(),
            takeover(|p| exported(p.exported)),
        ),
        (
            "gap on the group (recorder-1's last packet → failover-1's first)".into(),
            takeover(|p| opt_secs(p.switch.map(|s| s.gap()))),
        ),
        (
            format!("longest gap on the group, {} before to {after} after the fault", secs(BEFORE)),
            takeover(|p| secs(p.longest_gap)),
        ),
        ("one RTP stream across it".into(), takeover(|p| stream(p.switch))),
        (burst_label(), takeover(|p| opt_count(p.burst))),
        (
            format!("viewer's frames at 25 fps, {} before to {after} after the fault", secs(BEFORE)),
            takeover(|p| frames(&p.frames)),
        ),
        (
            "viewer's longest freeze in that window".into(),
            takeover(|p| secs(p.frames.longest_freeze)),
        ),
        (
            "viewer's pictures not ahead of media time already shown".into(),
            takeover(|p| p.frames.not_ahead.to_string()),
        ),
        (
            repeated_label(),
            takeover(|p| p.frames.repeated.to_string()),
        ),
        (
            "recorder-1's packets on the group while failover-1 covered".into(),
            Box::new(|o| match o.overlap {
                (0, _) => "0".into(),
                (n, span) => format!("{n} over {}", secs(span)),
            }),
        ),
        (
            format!(
                "packets from a second emitter over the run (either server's, while the other's stream was under way; streams split at {} silences)",
                secs(super::analysis::TENURE_GAP)
            ),
            Box::new(|o| o.second_emitter.to_string()),
        ),
        ("**failback**".into(), Box::new(|_| String::new())),
        (
            "recovery (restart / heal) → failover-1's last packet".into(),
            Box::new(|o| {
                format!(
                    "{} ({})",
                    opt_secs(o.failback.after_event),
                    o.fault.recovery()
                )
            }),
        ),
        (
            "failback gap on the group (failover-1's last packet → recorder-1's first)".into(),
            failback(|p| opt_secs(p.switch.map(|s| s.gap()))),
        ),
        (
            "recorder-1's `mcrelay_failover_failback_gap_seconds`".into(),
            failback(|p| exported(p.exported)),
        ),
        ("one RTP stream across it".into(), failback(|p| stream(p.switch))),
        (burst_label(), failback(|p| opt_count(p.burst))),
        (
            format!(
                "viewer's frames at 25 fps, {} before to {} after the hand-back",
                secs(BEFORE),
                secs(AFTER_FAILBACK)
            ),
            failback(|p| frames(&p.frames)),
        ),
        (
            "viewer's longest freeze in that window".into(),
            failback(|p| secs(p.frames.longest_freeze)),
        ),
        (
            "viewer's pictures not ahead of media time already shown".into(),
            failback(|p| p.frames.not_ahead.to_string()),
        ),
        (
            repeated_label(),
            failback(|p| p.frames.repeated.to_string()),
        ),
        (
            "material copied back (recorder-1's `mcrelay_failover_copied_segments_total`, `_bytes_total`)".into(),
            Box::new(|o| {
                o.copied
                    .map_or("not exported".into(), |(n, b)| format!("{n:.0} segments, {}", kb(b)))
            }),
        ),
        (
            "ffmpeg error lines before the fault / after it".into(),
            Box::new(|o| format!("{} / {}", o.decoder_errors.0, o.decoder_errors.1)),
        ),
        (
            "run time (LAN up to LAN down)".into(),
            Box::new(|o| format!("{:.0} s", o.seconds)),
        ),
    ];
    for (i, (label, cell)) in rows.iter().enumerate() {
        s.push_str(&format!("| {label} |"));
        for (_, r) in results {
            let text = match r {
                Ok(o) => cell(o),
                // The reason once, in the first row.
                Err(e) if i == 1 => format!("failed: {}", format!("{e:#}").replace('|', "/")),
                Err(_) => "-".into(),
            };
            s.push_str(&format!(" {text} |"));
        }
        s.push('\n');
    }
    s
}

/// What each controller that ran is, for the section.
fn controllers_text(results: &[(Case, anyhow::Result<Outcome>)]) -> String {
    let cs = controllers(results);
    let each: Vec<String> = cs
        .iter()
        .map(|c| match c {
            Controller::Embedded => "embedded (the default: the servers poll each other's health and listen on the groups)".to_string(),
            Controller::Etcd => format!(
                "etcd (`controller = \"etcd\"`, `lease_ttl` {}: a 3-member cluster of Debian's etcd-server, one member per host at 198.18.0.21–23 on the same switch, heartbeat 100 ms, election timeout 1 s; the link cut cuts recorder-1 from etcd too)",
                secs(LEASE_TTL)
            ),
        })
        .collect();
    match each.as_slice() {
        [one] => format!("Failover controller: {one}."),
        _ => format!(
            "Each fault under each failover controller, side by side: {}.",
            each.join("; ")
        ),
    }
}

/// The section the tool writes: what ran, then the table.
pub fn section(cfg: &Config, results: &[(Case, anyhow::Result<Outcome>)]) -> String {
    format!(
        "## Failover\n\n\
The LAN of the failover tests, on an unmanaged switch: a camera (`mcrelay camera`, the tests' 640x360 25 fps H.264 clip, 1 s GOP, with G.711 sound), recorder-1 (`failover_enabled`, `inaccessible_period` {period}, `automatic_failback`, `automatic_material_copying`, `delay_failover`; its channel on 239.255.50.1), failover-1 (`use_as_failover_server`) and a workstation; `poll_interval` 500 ms, `failback_delay` {delay}, 2 s segments. {controllers} Each run (a fault under a controller) has a LAN of its own. kill -9: SIGKILL to recorder-1, restarted about {after} after. Link cut: recorder-1's port on the switch set down, up again about {after} after (its process runs throughout).\n\n\
Two witnesses on the workstation: a packet log of every packet on recorder-1's group (source, SSRC, sequence number, timestamp, arrival), and Debian's ffmpeg playing recorder-1's SDP (`/channels/1.sdp`, fetched once it lists the parameter sets and the sound), each picture stamped as it leaves the decoder, with its timestamp and a checksum (`-fps_mode passthrough -f framecrc`: no picture is repeated to fill a gap). Frames lost: 25 a second of the window minus the pictures decoded in it; pictures a new emitter sends in a burst count as decoded. Not ahead: pictures whose timestamp is not past the furthest one decoded before them (ffmpeg's clock went back). Shown twice: the same picture (checksum) as one decoded in the 5 s before. Second emitter: a packet of one server that arrived while the other's stream (its packets) was under way, as `tests/failover_on_etcd.rs` counts them (split at silences over {gap}). `packets.csv` and `pictures.csv` beside the servers' logs hold both logs.\n\n{}",
        table(cfg, results),
        controllers = controllers_text(results),
        gap = secs(super::analysis::TENURE_GAP),
        period = secs(cfg.period),
        delay = secs(cfg.failback_delay),
        after = secs(cfg.after_fault() + super::DECODER_MARGIN),
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Instant;

    use super::super::Fault;
    use super::*;

    /// The table's row that starts with `label`.
    fn row_of(t: &str, label: &str) -> String {
        t.lines()
            .find(|l| l.starts_with(&format!("| {label}")))
            .unwrap_or_else(|| panic!("no row {label}:\n{t}"))
            .to_string()
    }
    use crate::viewers::Packet;

    fn outcome(fault: Fault) -> Outcome {
        let t0 = Instant::now();
        let p = |from, seq, ms| Packet {
            from,
            ssrc: 7,
            seq,
            ts: u32::from(seq) * 3600,
            at: t0 + Duration::from_millis(ms),
        };
        let (rec1, fo1) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        let f = |decoded| Frames {
            decoded,
            expected: 300,
            longest_freeze: Duration::from_millis(3900),
            not_ahead: 6,
            repeated: 9,
        };
        Outcome {
            fault,
            takeover: Phase {
                switch: Some(Switch {
                    last: p(rec1, 10, 0),
                    first: p(fo1, 12, 3800),
                }),
                after_event: Some(Duration::from_millis(3810)),
                burst: Some(24),
                exported: Some(0.21),
                frames: f(201),
                longest_gap: Duration::from_millis(3800),
            },
            failback: Phase {
                switch: Some(Switch {
                    last: p(fo1, 400, 0),
                    first: p(rec1, 401, 45),
                }),
                after_event: Some(Duration::from_secs(5)),
                burst: None,
                exported: None,
                frames: f(300),
                longest_gap: Duration::from_millis(45),
            },
            overlap: (3, Duration::from_millis(80)),
            second_emitter: 5,
            copied: Some((4.0, 250_000.0)),
            decoder_errors: (7, 0),
            seconds: 31.0,
        }
    }

    fn cfg(controllers: Vec<Controller>) -> Config {
        Config {
            period: Duration::from_secs(3),
            failback_delay: Duration::from_secs(3),
            faults: vec![Fault::Kill, Fault::Cut],
            controllers,
        }
    }

    fn case(controller: Controller, fault: Fault) -> Case {
        Case { controller, fault }
    }

    #[test]
    fn the_faults_stand_side_by_side_and_a_failed_one_says_why() {
        let cfg = cfg(vec![Controller::Embedded]);
        let results = vec![
            (
                case(Controller::Embedded, Fault::Kill),
                Ok(outcome(Fault::Kill)),
            ),
            (
                case(Controller::Embedded, Fault::Cut),
                Err(anyhow::anyhow!("no packet | of failover-1")),
            ),
        ];
        let t = table(&cfg, &results);
        let row = |label: &str| row_of(&t, label);
        assert!(
            t.starts_with("| | kill -9 | link cut |\n|---|---:|---:|\n"),
            "{t}"
        );
        assert_eq!(
            row("fault → failover-1's first packet"),
            "| fault → failover-1's first packet on recorder-1's group | 3.81 s | failed: no packet / of failover-1 |"
        );
        assert!(
            row("gap on the group (recorder-1's").contains("| 3.80 s | - |"),
            "{t}"
        );
        assert!(
            row("viewer's frames at 25 fps, 2.00 s before to 10.00 s after the fault")
                .contains("201 of 300 decoded: **99 lost**"),
            "{t}"
        );
        assert!(t.contains("| yes (SSRC kept, sequence +2) |"), "{t}");
        assert!(t.contains("| yes (SSRC kept, sequence +1) |"), "{t}");
        assert!(
            row("recorder-1's `mcrelay_failover_failback_gap").contains("not exported"),
            "{t}"
        );
        assert!(
            row("recorder-1's packets on the group").contains("3 over 0.080 s"),
            "{t}"
        );
        assert_eq!(
            row("packets from a second emitter"),
            "| packets from a second emitter over the run (either server's, while the other's stream was under way; streams split at 0.500 s silences) | 5 | - |"
        );
        assert!(row("failback gap").contains("0.045 s"), "{t}");
        assert!(row("recovery").contains("5.00 s (restart)"), "{t}");
        assert!(
            row("material copied back").contains("4 segments, 250 kB"),
            "{t}"
        );
        // Every row has a cell per fault.
        assert!(t.lines().all(|l| l.matches('|').count() == 4), "{t}");
    }

    #[test]
    fn the_controllers_stand_side_by_side_each_with_every_fault() {
        let cfg = cfg(vec![Controller::Embedded, Controller::Etcd]);
        assert_eq!(
            cfg.cases(),
            vec![
                case(Controller::Embedded, Fault::Kill),
                case(Controller::Embedded, Fault::Cut),
                case(Controller::Etcd, Fault::Kill),
                case(Controller::Etcd, Fault::Cut),
            ]
        );
        let mut etcd_cut = outcome(Fault::Cut);
        etcd_cut.takeover.after_event = Some(Duration::from_millis(4620));
        etcd_cut.second_emitter = 0;
        let results = vec![
            (
                case(Controller::Embedded, Fault::Kill),
                Ok(outcome(Fault::Kill)),
            ),
            (
                case(Controller::Embedded, Fault::Cut),
                Ok(outcome(Fault::Cut)),
            ),
            (
                case(Controller::Etcd, Fault::Kill),
                Err(anyhow::anyhow!("recorder-1 did not take its role back")),
            ),
            (case(Controller::Etcd, Fault::Cut), Ok(etcd_cut)),
        ];
        let t = table(&cfg, &results);
        assert!(
            t.starts_with(
                "| | kill -9 (embedded) | link cut (embedded) | kill -9 (etcd) | link cut (etcd) |\n|---|---:|---:|---:|---:|\n"
            ),
            "{t}"
        );
        let row = |label: &str| row_of(&t, label);
        assert!(
            row("fault → failover-1's first packet").ends_with(
                "| 3.81 s | 3.81 s | failed: recorder-1 did not take its role back | 4.62 s |"
            ),
            "{t}"
        );
        assert!(
            row("recovery").ends_with("| 5.00 s (restart) | 5.00 s (heal) | - | 5.00 s (heal) |"),
            "{t}"
        );
        assert!(
            row("packets from a second emitter").ends_with("| 5 | 5 | - | 0 |"),
            "{t}"
        );
        assert!(t.lines().all(|l| l.matches('|').count() == 6), "{t}");
        // The section says what each controller was.
        let sec = section(&cfg, &results);
        assert!(
            sec.contains("Each fault under each failover controller, side by side: embedded ("),
            "{sec}"
        );
        assert!(
            sec.contains("`lease_ttl` 2.00 s: a 3-member cluster"),
            "{sec}"
        );
        let one = section(&cfg, &results[..2]);
        assert!(one.contains("Failover controller: embedded ("), "{one}");
        assert!(!one.contains("etcd-server"), "{one}");
    }
}
