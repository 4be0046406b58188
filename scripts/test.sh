#!/usr/bin/env bash
# Runs every test of mcrelay: formatting, lints, unit and integration tests
# (network namespaces, Debian's ffmpeg, GStreamer's RTSP server), a criterion
# smoke run and the fuzz targets. Installs what the tests need when it is
# missing. Needs root: the integration tests make their own network
# namespaces, and nothing they send leaves them.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-15}"

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root (the tests create network namespaces)" >&2
    exit 1
fi

# Debian packages: ffmpeg (the workstation decoder), iproute2 and ethtool
# (namespaces, the benchmark's LAN),
# GStreamer's RTSP server with x264/x265 (a camera that is not ours),
# curl (a Digest HTTP client for the material API),
# chromium (a real browser, headless, for the status page),
# protoc and its well-known types (etcd-client's build), etcd-server (a real
# etcd cluster for the etcd failover controller's tests), faketime (a host
# whose wall clock steps).
packages=(
    ffmpeg iproute2 ethtool curl chromium python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp
    protobuf-compiler libprotobuf-dev etcd-server faketime
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly gstreamer1.0-tools
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --all-targets --quiet --features etcd -- -D warnings

echo "== cargo test (unit and integration, with the etcd controller)"
cargo test --quiet --features etcd

# Real time against a real etcd on loopback: the worlds mostly wait, so
# many run at once.
echo "== the failover scenario suite on a real etcd"
cargo test --quiet --features etcd --test etcd_scenarios -- --test-threads 8

echo "== benches (one pass each, as a smoke test)"
for bench in packetize fanout send_path; do
    cargo bench --quiet --bench "$bench" -- --test
done
echo "== benchmark tool (smoke run)"
cargo build --quiet --bins
target/debug/mcrelay-bench suite --quick --out target/bench-smoke > /dev/null

echo "== fuzz targets (${FUZZ_SECONDS}s each)"
for target in $(cargo fuzz list); do
    # Committed seeds (fuzz/seeds/TARGET) start the search inside valid input.
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/corpus/$target" "fuzz/seeds/$target")
    mkdir -p "fuzz/corpus/$target"
    echo -n "$target: "
    cargo fuzz run -s none "$target" "${seeds[@]}" -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=0 2>&1 | tail -n 1
done

echo "== all tests passed"
