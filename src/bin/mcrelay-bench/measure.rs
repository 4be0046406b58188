//! What a process costs: CPU time and resident memory.

use std::process::Command;
use std::time::Duration;

/// CPU seconds the processes `pids` use over `window` (perf's task-clock
/// when perf works here, else /proc's 10 ms ticks).
pub fn cpu_over(pids: &[u32], window: Duration) -> f64 {
    let list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let perf = Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "task-clock",
            "-p",
            &list,
            "--",
            "sleep",
        ])
        .arg(format!("{:.3}", window.as_secs_f64()))
        .output();
    if let Ok(out) = perf
        && out.status.success()
        && let Some(ms) = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| l.contains("task-clock"))
            .and_then(|l| l.split(',').next()?.parse::<f64>().ok())
    {
        return ms / 1000.0;
    }
    let before: f64 = pids.iter().map(|p| proc_cpu(*p)).sum();
    std::thread::sleep(window);
    pids.iter().map(|p| proc_cpu(*p)).sum::<f64>() - before
}

fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Resident memory, bytes.
pub fn rss(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:") * 1024
}

/// Peak resident memory (VmHWM), bytes.
pub fn peak_rss(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:") * 1024
}
