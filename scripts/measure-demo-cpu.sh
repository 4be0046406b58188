#!/usr/bin/env bash
# Measures the relay's CPU for the demo's channels: the two simulated
# cameras and the relay (config/demo.toml) run as separate processes in a
# fresh network namespace; the relay's user+system CPU time comes from
# /proc/PID/stat, the bytes it sent from its /metrics.
#   scripts/measure-demo-cpu.sh [SECONDS] [SEND_MODE]
# CLIP1 / CLIP2 replace the demo clips (e.g. a 4 Mbit/s 1080p recording).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
mode="${2:-gso}"
clip1="${CLIP1:-assets/clips/demo-h264.h264}"
clip2="${CLIP2:-assets/clips/demo-h265.h265}"
bin=target/release/mcrelay
cargo build --release --quiet
ns="mcr-measure-$$"
ip netns add "$ns"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip -n "$ns" link set lo up multicast on
ip -n "$ns" route add 224.0.0.0/4 dev lo
ip netns exec "$ns" "$bin" camera --clip "$clip1" --listen 127.0.0.1:8601 2>/dev/null & pids+=($!)
ip netns exec "$ns" "$bin" camera --clip "$clip2" --listen 127.0.0.1:8602 2>/dev/null & pids+=($!)
ip netns exec "$ns" "$bin" run --site config/demo.toml --server recorder-1 --send-mode "$mode" 2>/dev/null & relay=$!; pids+=($relay)
sleep 3
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$relay/stat"; }
usr() { awk '{print $14}' "/proc/$relay/stat"; }
sent() { ip netns exec "$ns" curl -s http://127.0.0.1:8080/metrics | awk '/^mcrelay_multicast_bytes_total/ {s += $2} END {print s + 0}'; }
syscalls() { ip netns exec "$ns" curl -s http://127.0.0.1:8080/metrics | awk '/^mcrelay_multicast_syscalls_total/ {s += $2} END {print s + 0}'; }
u0=$(usr); c0=$(cpu); b0=$(sent); s0=$(syscalls); t0=$(date +%s.%N)
clock=""
if perf stat -e task-clock true >/dev/null 2>&1; then
    # perf's task-clock (ms) is exact; /proc's ticks are 10 ms.
    clock=$(perf stat -x, -e task-clock -p "$relay" -- sleep "$secs" 2>&1 | awk -F, '/task-clock/ {print $1}')
else
    sleep "$secs"
fi
u1=$(usr); c1=$(cpu); b1=$(sent); s1=$(syscalls); t1=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$relay/status")
awk -v clock="$clock" -v u0="$u0" -v u1="$u1" -v c0="$c0" -v c1="$c1" -v tick="$tick" -v b0="$b0" -v b1="$b1" -v s0="$s0" -v s1="$s1" -v t0="$t0" -v t1="$t1" -v rss="$rss" -v mode="$mode" 'BEGIN {
    cpu = (c1 - c0) / tick; wall = t1 - t0; bytes = b1 - b0;
    if (clock != "") cpu = clock / 1000;
    printf "send mode            %s\n", mode;
    printf "wall time            %.1f s\n", wall;
    printf "relay CPU            %.3f s (%.3f%% of one core; %s)\n", cpu, 100 * cpu / wall, clock != "" ? "perf task-clock" : "/proc ticks";
    printf "  of which user      %.2f s, system %.2f s (/proc ticks)\n", (u1 - u0) / tick, (c1 - c0 - (u1 - u0)) / tick;
    printf "multicast sent       %.2f MB (%.3f Mbit/s for 2 channels)\n", bytes / 1e6, bytes * 8 / wall / 1e6;
    printf "send system calls    %d (%.1f per second)\n", s1 - s0, (s1 - s0) / wall;
    if (bytes > 0) printf "CPU per GB relayed   %.2f CPU-s/GB\n", cpu / (bytes / 1e9);
    printf "relay RSS            %.1f MB\n", rss / 1024;
}'
