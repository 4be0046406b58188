#!/usr/bin/env bash
# Long fuzzing campaigns, outside the test command.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each target (all of `cargo fuzz list` when none is named) for at
# most SECONDS (default 600), or until FUZZ_RUNS executions when that is
# set (FUZZ_RUNS=10000000 scripts/fuzz.sh 3600 annexb), one target at a
# time on one core. The corpus grows in fuzz/corpus/TARGET (not committed);
# afterwards it is merged with the committed seeds into a minimal set that
# keeps the same coverage, and that set replaces fuzz/seeds/TARGET
# (commit it). Prints one line per target: executions, seconds, crashes,
# seeds; exits 1 when any target crashed (the input is in
# fuzz/artifacts/TARGET).
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && mapfile -t targets < <(cargo fuzz list)
runs=()
[ -n "${FUZZ_RUNS:-}" ] && runs=("-runs=$FUZZ_RUNS")
# Seeds stay small enough to commit: at most this many files and bytes
# per target after minimization (the smallest files are kept).
max_files=256
max_bytes=$((512 * 1024))

cargo fuzz build -s none >/dev/null || exit 1
failed=0
printf '%-16s %12s %8s %8s %6s\n' target executions seconds crashes seeds
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    log="$(mktemp)"
    start=$(date +%s)
    cargo fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" "${runs[@]}" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    crashes=0
    if [ $rc -ne 0 ]; then
        crashes=1
        failed=1
        grep -E "panicked|SUMMARY|Test unit written" "$log" | head -n 5 >&2
    fi
    # Minimize: merge corpus and seeds into a fresh directory, which keeps
    # one input per new coverage feature.
    merged="$(mktemp -d)"
    cargo fuzz run -s none "$t" "$merged" "corpus/$t" "seeds/$t" -- -merge=1 >/dev/null 2>&1
    n=0
    bytes=0
    if [ -n "$(ls -A "$merged")" ]; then
        rm -rf "seeds/$t.new" && mkdir -p "seeds/$t.new"
        while read -r size file; do
            if [ $n -ge $max_files ] || [ $((bytes + size)) -gt $max_bytes ]; then
                break
            fi
            cp "$merged/$file" "seeds/$t.new/$file"
            n=$((n + 1))
            bytes=$((bytes + size))
        done < <(cd "$merged" && find . -type f -printf '%s %P\n' | sort -n)
        rm -rf "seeds/$t" && mv "seeds/$t.new" "seeds/$t"
    fi
    rm -rf "$merged" "$log"
    printf '%-16s %12s %8s %8s %6s\n' "$t" "${execs:-?}" "$took" "$crashes" "$n"
done
exit $failed
