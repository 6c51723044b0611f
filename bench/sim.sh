#!/usr/bin/env bash
# The simulator's performance benchmark (a benchmark, not a test: timing targets do not
# belong in the test suite). Targets on a 2-core machine, p2p-dedup, 64 MiB release,
# per-device links and random gossip on:
#   bench-100k.toml (100,000 devices, 1,000 sites)   <= 10 s
#   fleet-1m.toml   (1,000,000 devices, 10,000 sites) <= 30 s, <= 1 GiB peak RSS
#   fleet-10m.toml  (10,000,000 devices, 100,000 sites) <= 5 min, <= 8 GiB peak RSS
#     (about 4 minutes a run, so only when named: bench/sim.sh 1 fleet-10m)
# Usage: bench/sim.sh [RUNS [SCENARIO...]]   (default 3 runs of bench-100k and fleet-1m;
# prints each run and the median)
# fleet-1m and fleet-10m play as 2 shards (sim.shards = 2, one thread each): on an idle 2-core
# machine its wall time is about half its CPU time; on a busy one, wall time grows while
# CPU time stays put. bench-100k plays as one world (wall about equals CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
shift || true
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    scenarios=(bench-100k fleet-1m)
fi
for scenario in "${scenarios[@]}"; do
    if [ ! -f "scenarios/$scenario.toml" ]; then
        echo "bench/sim.sh: no scenarios/$scenario.toml: name a file of scenarios/ without .toml" >&2
        exit 2
    fi
done
cargo build --release --quiet --bin otamesh
# The build's target directory (a wrapper may place it outside the checkout).
target="$(cargo metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')"
for scenario in "${scenarios[@]}"; do
    walls=()
    for i in $(seq "$runs"); do
        out="$(mktemp -d)"
        /usr/bin/time -v "$target/release/otamesh" sim "scenarios/$scenario.toml" --out "$out" --quiet \
            >"$out/stdout" 2>"$out/time"
        wall="$(grep -o '"wall_s": [0-9.]*' "$out/summary.json" | cut -d' ' -f2)"
        events="$(grep -o '"events": [0-9]*' "$out/summary.json" | cut -d' ' -f2)"
        rss="$(grep 'Maximum resident' "$out/time" | awk '{print $6}')"
        cpu="$(grep -E '(User|System) time' "$out/time" | awk '{t += $4} END {print t}')"
        awk -v s="$scenario" -v i="$i" -v w="$wall" -v c="$cpu" -v e="$events" -v r="$rss" 'BEGIN {
            printf "%s run %s: %s s wall, %s s CPU, %d events, %.0f events/s, peak RSS %.0f MiB\n",
                s, i, w, c, e, e / w, r / 1024 }' 
        walls+=("$wall")
        rm -rf "$out"
    done
    median="$(printf '%s\n' "${walls[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
    echo "$scenario median wall: $median s"
done
