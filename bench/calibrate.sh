#!/usr/bin/env bash
# Plays one rollout on real nodes and in the simulator and compares them: writes
# OUT/calibration.png (both convergence curves), OUT/results.json (calibrate/* errors
# in percent) and OUT/summary.md (the table of real and simulated t50, t90, t100, WAN
# bytes and rollback time). Usage: bash bench/calibrate.sh [OUT]  (default calibrate-out)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-calibrate-out}
cargo build --release --bin otamesh
exec target/release/otamesh bench --quick --filter calibrate --out "$out"
