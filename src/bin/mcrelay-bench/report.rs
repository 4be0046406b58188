//! Tables, target verdicts and the plot.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::relays::{Mode, Relay};
use crate::scenario::Row;

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

fn decoded(r: &Row) -> String {
    match &r.decoded {
        Some(d) if d.errors.is_empty() => format!("{}/{}", d.frames, r.expected_frames),
        Some(d) => format!(
            "{}/{}, {} error lines",
            d.frames,
            r.expected_frames,
            d.errors.len()
        ),
        None => "-".into(),
    }
}

/// mcrelay's own view: frames in against the camera's rate, frames the
/// multicast socket dropped, frames the recorder dropped.
fn relay_counts(r: &Row) -> String {
    let Some(c) = r.relay else {
        return "-".into();
    };
    // The clips are 25 fps; over the window the counters cover.
    let window = if c.window > 0.0 { c.window } else { r.window };
    let expected = r.scenario.channels as f64 * 25.0 * window;
    let mut s = format!(
        "{:.1}%, {} dropped",
        100.0 * c.frames as f64 / expected,
        c.skipped
    );
    if r.scenario.relay == Relay::McrelayRecord {
        s.push_str(&format!(
            "; recorded {:.1}%, {} not",
            100.0 * c.recorded as f64 / expected,
            c.record_dropped
        ));
    }
    s
}

fn loss(r: &Row) -> String {
    if r.crashed {
        return "relay died".into();
    }
    r.loss()
        .map_or("-".into(), |l| format!("{:.2}%", 100.0 * l))
}

/// The viewer sweep (one channel): bytes on the recorder link and cost.
pub fn viewers_table(rows: &[Row]) -> String {
    let mc: BTreeMap<usize, u64> = rows
        .iter()
        .filter(|r| r.scenario.relay == Relay::McrelayMulticast)
        .map(|r| (r.scenario.viewers, r.link.tx_bytes))
        .collect();
    let mut s = String::from(
        "| relay | viewers | recorder link Mbit/s | link packets/s | × mcrelay multicast | relay CPU % of a core | CPU-s per GB sent | CPU-s per channel-hour | peak RSS MB | viewer loss | frames decoded |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let ratio = mc.get(&r.scenario.viewers).map_or("-".into(), |m| {
            format!("{:.1}", r.link.tx_bytes as f64 / *m as f64)
        });
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} |\n",
            r.scenario.relay.label(),
            r.scenario.viewers,
            r.link_mbit(),
            r.link.tx_packets as f64 / r.window,
            ratio,
            r.cpu_percent(),
            r.cpu_per_gb(),
            r.cpu_per_channel_hour(),
            mb(r.peak_rss),
            loss(r),
            decoded(r),
        ));
    }
    s
}

/// The channel sweep (multicast).
pub fn channels_table(rows: &[Row]) -> String {
    let one: BTreeMap<&str, u64> = rows
        .iter()
        .filter(|r| r.scenario.channels == 1)
        .map(|r| (r.scenario.relay.label(), r.rss))
        .collect();
    let mut s = String::from(
        "| relay | channels | recorder link Mbit/s | relay CPU % of a core | CPU-s per GB sent | CPU-s per channel-hour | RSS MB | RSS per added channel MB | loss at the probe | frames decoded (channel 1) | mcrelay frames in / expected, send drops |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let per = match one.get(r.scenario.relay.label()) {
            Some(base) if r.scenario.channels > 1 => {
                format!(
                    "{:.2}",
                    (r.rss as f64 - *base as f64) / 1e6 / (r.scenario.channels - 1) as f64
                )
            }
            _ => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {} | {} | {} | {} |\n",
            r.scenario.relay.label(),
            r.scenario.channels,
            r.link_mbit(),
            r.cpu_percent(),
            r.cpu_per_gb(),
            r.cpu_per_channel_hour(),
            mb(r.rss),
            per,
            loss(r),
            decoded(r),
            relay_counts(r),
        ));
    }
    s
}

fn find(rows: &[Row], relay: Relay, channels: usize, viewers: usize) -> Option<&Row> {
    rows.iter().find(|r| {
        r.scenario.relay == relay
            && r.scenario.channels == channels
            && r.scenario.viewers == viewers
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**missed**" }
}

/// One stream as mcrelay sent it to the group during the row's run, bytes
/// per second: its RTP packets plus UDP (8) and IPv4 (20) headers, over the
/// window of its counters (which brackets the link's). From mcrelay's own
/// counters, not from the viewers: viewers that lost packets, joined late
/// or never (CPU-starved receivers at high viewer counts) made the stream
/// look smaller than it was, and a run with one viewer count had no better
/// row to take it from.
fn sent_stream(r: &Row) -> Option<f64> {
    let c = r.relay?;
    (c.mc_packets > 0 && c.window > 0.0)
        .then(|| (c.mc_bytes as f64 + 28.0 * c.mc_packets as f64) / c.window)
}

/// The targets, checked against this run.
pub fn targets(viewer_rows: &[Row], channel_rows: &[Row]) -> String {
    let mut s = String::new();
    // 1. Multicast bytes do not grow with viewers; within 3% of the stream.
    // Each row against the stream sent in that same row.
    let mc: Vec<&Row> = viewer_rows
        .iter()
        .filter(|r| r.scenario.relay == Relay::McrelayMulticast && !r.crashed)
        .collect();
    let link = |r: &Row| r.link.tx_bytes as f64 / r.window;
    let measured: Vec<(&Row, f64)> = mc
        .iter()
        .filter_map(|r| sent_stream(r).map(|st| (*r, st)))
        .collect();
    if !mc.is_empty() {
        let min = mc.iter().map(|r| link(r)).fold(f64::INFINITY, f64::min);
        let max = mc.iter().map(|r| link(r)).fold(0.0, f64::max);
        let counts = mc
            .iter()
            .map(|r| r.scenario.viewers.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let spread = if mc.len() > 1 {
            format!(
                "{:.3}–{:.3} Mbit/s (spread {:.1}%)",
                min * 8.0 / 1e6,
                max * 8.0 / 1e6,
                100.0 * (max / min - 1.0)
            )
        } else {
            format!(
                "{:.3} Mbit/s (one viewer count: no spread)",
                max * 8.0 / 1e6
            )
        };
        let mbit = |v: f64| v * 8.0 / 1e6;
        let sent = match (
            measured.iter().map(|m| m.1).reduce(f64::min),
            measured.iter().map(|m| m.1).reduce(f64::max),
        ) {
            (Some(a), Some(b)) if mbit(b) - mbit(a) < 0.0005 => format!("{:.3} Mbit/s", mbit(b)),
            (Some(a), Some(b)) => format!("{:.3}–{:.3} Mbit/s", mbit(a), mbit(b)),
            _ => "not known".into(),
        };
        let over = measured
            .iter()
            .map(|(r, st)| link(r) / st - 1.0)
            .fold(f64::NEG_INFINITY, f64::max);
        let all_measured = measured.len() == mc.len();
        let text = if all_measured {
            format!(
                "the link carries {:+.1}% at most (Ethernet headers, RTCP, the camera connection's ACKs): {}",
                100.0 * over,
                verdict(max / min <= 1.03 && over <= 0.03)
            )
        } else {
            "mcrelay's counters could not be read for every row: **not measured**".into()
        };
        s.push_str(&format!(
            "- Multicast link bytes at {counts} viewer(s): {spread}; one stream as mcrelay sent it (RTP+UDP+IP, from its counters) is {sent}; {text} (target: within 3%).\n"
        ));
    }
    // 2. CPU per GB in multicast mode <= 1/4 of the ffmpeg relay's, at each
    // channel count both ran (one ffmpeg process per channel).
    for r in channel_rows
        .iter()
        .filter(|r| r.scenario.relay == Relay::McrelayMulticast)
    {
        if let Some(f) = channel_rows.iter().find(|f| {
            f.scenario.relay == Relay::Ffmpeg && f.scenario.channels == r.scenario.channels
        }) {
            let (m, f) = (r.cpu_per_gb(), f.cpu_per_gb());
            s.push_str(&format!(
                "- Multicast CPU per GB sent, {} channel(s): mcrelay {m:.2}, ffmpeg relay {f:.2} CPU-s/GB: mcrelay uses {:.0}% of ffmpeg's: {} (target: at most 25%).\n",
                r.scenario.channels,
                100.0 * m / f,
                verdict(m <= f / 4.0)
            ));
        }
    }
    // 3. RSS per added channel < 2 MB.
    let chans: Vec<&Row> = channel_rows
        .iter()
        .filter(|r| r.scenario.relay == Relay::McrelayMulticast)
        .collect();
    if let (Some(one), Some(most)) = (
        chans.iter().find(|r| r.scenario.channels == 1),
        chans.iter().max_by_key(|r| r.scenario.channels),
    ) && most.scenario.channels > 1
    {
        let per = (most.rss as f64 - one.rss as f64) / 1e6 / (most.scenario.channels - 1) as f64;
        s.push_str(&format!(
            "- mcrelay RSS per added channel (1 → {} channels at the camera's bitrate): {per:.2} MB: {} (target: under 2 MB).\n",
            most.scenario.channels,
            verdict(per < 2.0)
        ));
    }
    // The recorder's cost: the same channels with and without recording.
    for r in channel_rows
        .iter()
        .filter(|r| r.scenario.relay == Relay::McrelayRecord)
    {
        if let Some(m) = channel_rows.iter().find(|m| {
            m.scenario.relay == Relay::McrelayMulticast
                && m.scenario.channels == r.scenario.channels
        }) {
            s.push_str(&format!(
                "- Recording {} channel(s): {:.1} vs {:.1} CPU-s per channel-hour with and without it ({:+.1}), RSS {:.1} vs {:.1} MB.\n",
                r.scenario.channels,
                r.cpu_per_channel_hour(),
                m.cpu_per_channel_hour(),
                r.cpu_per_channel_hour() - m.cpu_per_channel_hour(),
                mb(r.rss),
                mb(m.rss),
            ));
        }
    }
    // 4. TCP fan-out to 50 clients <= 1/3 of the GStreamer RTSP server's:
    // at 50 if both ran it, else at the largest count both ran.
    let both = |v: usize| {
        find(viewer_rows, Relay::McrelayTcp, 1, v).zip(find(
            viewer_rows,
            Relay::GstreamerRtspServer,
            1,
            v,
        ))
    };
    let tcp_at = both(50).map(|p| (50, p)).or_else(|| {
        viewer_rows
            .iter()
            .map(|r| r.scenario.viewers)
            .filter(|v| both(*v).is_some())
            .max()
            .and_then(|v| both(v).map(|p| (v, p)))
    });
    if let Some((n, (m, g))) = tcp_at {
        let note = if n == 50 {
            String::new()
        } else {
            " (the target is set at 50 clients, which this run did not have)".into()
        };
        s.push_str(&format!(
            "- TCP fan-out to {n} clients{note}, CPU per GB delivered: mcrelay {:.2}, GStreamer RTSP server {:.2} CPU-s/GB: mcrelay uses {:.0}% of GStreamer's: {} (target: at most 33%).\n",
            m.cpu_per_gb(),
            g.cpu_per_gb(),
            100.0 * m.cpu_per_gb() / g.cpu_per_gb(),
            verdict(m.cpu_per_gb() <= g.cpu_per_gb() / 3.0)
        ));
    }
    // 5. Distance to the floor.
    for (relay, floor) in [
        (Relay::McrelayMulticast, Relay::FloorPerPacket),
        (Relay::McrelayMulticast, Relay::FloorGso),
        (Relay::McrelayTcp, Relay::FloorTcp),
    ] {
        let pairs: Vec<(f64, f64)> = viewer_rows
            .iter()
            .filter(|r| r.scenario.relay == relay)
            .filter_map(|r| {
                find(viewer_rows, floor, 1, r.scenario.viewers)
                    .map(|f| (r.cpu_per_gb(), f.cpu_per_gb()))
            })
            .collect();
        if !pairs.is_empty() {
            let (a, b) = pairs
                .iter()
                .fold((0.0, 0.0), |acc, p| (acc.0 + p.0, acc.1 + p.1));
            s.push_str(&format!(
                "- {} vs {}: {:.2} vs {:.2} CPU-s/GB (mean over the viewer runs), {:.1}× the floor.\n",
                relay.label(),
                floor.label(),
                a / pairs.len() as f64,
                b / pairs.len() as f64,
                a / b
            ));
        }
    }
    s
}

fn color(relay: Relay) -> RGBColor {
    match relay {
        Relay::McrelayMulticast => RGBColor(0, 114, 178),
        Relay::McrelayRecord => RGBColor(0, 60, 110),
        Relay::McrelayTcp => RGBColor(86, 180, 233),
        Relay::Ffmpeg => RGBColor(213, 94, 0),
        Relay::Gstreamer => RGBColor(230, 159, 0),
        Relay::GstreamerRtspServer => RGBColor(204, 121, 167),
        Relay::FloorPerPacket => RGBColor(90, 90, 90),
        Relay::FloorGso => RGBColor(150, 150, 150),
        Relay::FloorTcp => RGBColor(0, 158, 115),
    }
}

type Series = Vec<(Relay, Vec<(f64, f64)>)>;

fn series(rows: &[Row], x: impl Fn(&Row) -> f64, y: impl Fn(&Row) -> f64) -> Series {
    let mut by: Vec<(Relay, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        if r.crashed || !y(r).is_finite() || y(r) <= 0.0 {
            continue;
        }
        match by.iter_mut().find(|(rel, _)| *rel == r.scenario.relay) {
            Some((_, pts)) => pts.push((x(r), y(r))),
            None => by.push((r.scenario.relay, vec![(x(r), y(r))])),
        }
    }
    by
}

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    data: &Series,
) -> anyhow::Result<()> {
    let xs = data.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let ys = data.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (y0, y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if x0 > x1 {
        return Ok(());
    }
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(
            (x0 * 0.8..x1 * 1.25).log_scale(),
            (y0 * 0.7..y1 * 1.5).log_scale(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (relay, pts) in data {
        let c = color(*relay);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(relay.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Three panels: link bytes and CPU per GB against viewers, CPU per GB
/// against channels. `bitrate` is the camera's, as given (`4M`).
pub fn plot(
    path: &Path,
    bitrate: &str,
    viewer_rows: &[Row],
    channel_rows: &[Row],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 1260)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let areas = root.split_evenly((3, 1));
    let v = |r: &Row| r.scenario.viewers as f64;
    panel(
        &areas[0],
        &format!("Bytes on the recorder's link, one {bitrate}bit/s channel"),
        "viewers",
        "Mbit/s sent by the recorder",
        &series(viewer_rows, v, Row::link_mbit),
    )?;
    panel(
        &areas[1],
        "Relay CPU per GB it sends, one channel",
        "viewers",
        "CPU-seconds per GB",
        &series(viewer_rows, v, Row::cpu_per_gb),
    )?;
    let multicast: Vec<Row> = channel_rows
        .iter()
        .filter(|r| r.scenario.relay.mode() == Mode::Multicast)
        .cloned()
        .collect();
    panel(
        &areas[2],
        "Relay CPU per GB sent to multicast, by channel count",
        "channels",
        "CPU-seconds per GB",
        &series(&multicast, |r| r.scenario.channels as f64, Row::cpu_per_gb),
    )?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::scenario::{RelayCounts, Scenario};
    use crate::topology::LinkCounters;
    use crate::viewers::Snapshot;

    const WINDOW: f64 = 20.0;

    /// A viewer-sweep row: the recorder's link carried `link_mbit`, mcrelay
    /// sent `sent_mbit` of RTP in 1300-byte packets, and the viewers counted
    /// `per_viewer_mbit` each.
    fn row(
        relay: Relay,
        viewers: usize,
        link_mbit: f64,
        sent_mbit: f64,
        per_viewer_mbit: f64,
    ) -> Row {
        let bytes = |mbit: f64| (mbit * 1e6 / 8.0 * WINDOW) as u64;
        // Counters count RTP bytes; the 28 bytes of UDP and IP headers a
        // packet adds on the wire come on top.
        let packets = |mbit: f64| bytes(mbit) / 1328;
        let seen = packets(per_viewer_mbit) * viewers as u64;
        Row {
            scenario: Scenario {
                relay,
                channels: 1,
                viewers,
                seconds: WINDOW as u64,
                warm_up: Duration::from_secs(4),
            },
            window: WINDOW,
            link: LinkCounters {
                tx_bytes: bytes(link_mbit),
                tx_packets: bytes(link_mbit) / 1342,
            },
            cpu: 1.0,
            rss: 20_000_000,
            peak_rss: 20_000_000,
            viewers: Snapshot {
                packets: seen,
                bytes: seen * 1300,
                lost: 0,
                failed: 0,
            },
            probe: None,
            decoded: None,
            expected_frames: 500,
            counting_viewers: viewers,
            relay: Some(RelayCounts {
                frames: 500,
                skipped: 0,
                recorded: 0,
                record_dropped: 0,
                mc_packets: packets(sent_mbit),
                mc_bytes: packets(sent_mbit) * 1300,
                window: WINDOW,
            }),
            crashed: false,
        }
    }

    fn link_line(rows: &[Row]) -> String {
        targets(rows, &[])
            .lines()
            .find(|l| l.starts_with("- Multicast link bytes"))
            .expect("the link target")
            .to_string()
    }

    #[test]
    fn one_viewer_count_is_judged_against_the_stream_mcrelay_sent() {
        // `--viewers 50`: 50 starved receivers counted 2.3 Mbit/s each of a
        // 4.277 Mbit/s stream; the link carried 4.334.
        let line = link_line(&[row(Relay::McrelayMulticast, 50, 4.334, 4.277, 2.3)]);
        assert!(line.contains("is 4.277 Mbit/s"), "{line}");
        assert!(line.contains("+1.3%"), "{line}");
        assert!(line.contains("**met**"), "{line}");
        assert!(line.contains("one viewer count: no spread"), "{line}");
    }

    #[test]
    fn each_row_is_judged_against_its_own_stream() {
        // A sweep whose rows saw different camera bitrates (VBR): each
        // link against the stream of its own window.
        let rows = [
            row(Relay::McrelayMulticast, 1, 4.10, 4.05, 4.05),
            row(Relay::McrelayMulticast, 200, 4.20, 4.15, 1.0),
        ];
        let line = link_line(&rows);
        assert!(line.contains("4.050–4.150 Mbit/s"), "{line}");
        assert!(line.contains("+1.2% at most"), "{line}");
        assert!(line.contains("spread 2.4%"), "{line}");
        assert!(line.contains("**met**"), "{line}");
        // A link that carries a second copy is missed, whatever the viewers saw.
        let line = link_line(&[row(Relay::McrelayMulticast, 10, 8.6, 4.277, 4.277)]);
        assert!(line.contains("**missed**"), "{line}");
        // Without mcrelay's counters there is no reference.
        let mut r = row(Relay::McrelayMulticast, 10, 4.3, 4.277, 4.277);
        r.relay = None;
        assert!(link_line(&[r]).contains("**not measured**"));
    }

    #[test]
    fn tcp_fan_out_is_compared_where_both_servers_ran() {
        let rows = [
            row(Relay::McrelayTcp, 10, 40.0, 0.0, 4.0),
            row(Relay::GstreamerRtspServer, 10, 40.0, 0.0, 4.0),
        ];
        let t = targets(&rows, &[]);
        assert!(
            t.contains("TCP fan-out to 10 clients (the target is set at 50"),
            "{t}"
        );
    }

    #[test]
    fn the_plot_names_the_cameras_bitrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.svg");
        let rows = [row(Relay::McrelayMulticast, 2, 1.07, 1.06, 1.06)];
        plot(&path, "1M", &rows, &[]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("one 1Mbit/s channel"), "{svg}");
    }
}
