#!/usr/bin/env bash
# Two real nodes on loopback: a seed fetches a release from a local origin and installs
# it, then a leech peered only with the seed fetches it over the LAN path. Prints the
# LAN transfer's wall time and speed, the CPU time of each process during it (clock
# ticks, usually 1/100 s), and their resident memory (VmRSS of the idle seed, VmHWM of
# both at the end). With PERF=1, `perf record -g` of both processes during the transfer
# goes to $W/perf.data.
#
#   BIN=target/release/otamesh MIB=256 W=/dev/shm/lan-pair bash bench/lan-pair.sh
#
# W is the scratch directory (in /dev/shm: memory; elsewhere: that disk).
set -euo pipefail
BIN=$(realpath "${BIN:-target/release/otamesh}")
W=${W:-/dev/shm/lan-pair}
MIB=${MIB:-256}
rm -rf "$W"; mkdir -p "$W"; cd "$W"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$BIN" keygen --out pub >/dev/null 2>&1
head -c $((MIB << 20)) /dev/urandom > art.bin
"$BIN" publish --key pub.key --artifact art.bin --class gw --version 1.0.0 --sequence 1 \
    --kind firmware --store store >/dev/null
"$BIN" serve --store store --listen 127.0.0.1:18080 > serve.log 2>&1 & pids+=($!)
for n in seed leech; do "$BIN" enroll --key pub.key --data $n --site lan --class gw >/dev/null 2>&1; done
node() { # name port api-port extra...
    local name=$1 port=$2 api=$3; shift 3
    exec "$BIN" node --data "$name" --site lan --class gw --listen /ip4/127.0.0.1/tcp/$port \
        --api 127.0.0.1:$api --trust pub.pub --poll-interval 0.5 --no-mdns "$@" > "$name.log" 2>&1
}
metric() { curl -s "127.0.0.1:$1/metrics" | awk -v pat="$2" '$0 ~ pat {s += $2} END {print s + 0}'; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
mem() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
node seed 14001 19001 --origin http://127.0.0.1:18080 & SEED=$!; pids+=($SEED)
until [ "$(metric 19001 '^otamesh_chunk_bytes_total')" -ge $((MIB << 20)) ] \
    && [ "$(metric 19001 '^otamesh_installs_total')" -ge 1 ]; do sleep 0.2; done
echo "seed: fetched and installed; idle VmRSS $(mem $SEED VmRSS) kB"
node leech 14002 19002 --peer /ip4/127.0.0.1/tcp/14001 & LEECH=$!; pids+=($LEECH)
if [ -n "${PERF:-}" ]; then
    perf record -F 2999 -g -o "$W/perf.data" -p "$SEED,$LEECH" >/dev/null 2>&1 & PERF_PID=$!
fi
first=""
while true; do
    got=$(metric 19002 '^otamesh_chunk_bytes_total.*lan')
    now=$(date +%s.%N)
    if [ -z "$first" ] && [ "${got%.*}" -gt 0 ]; then first=$now; l0=$(cpu $LEECH); s0=$(cpu $SEED); fi
    [ "${got%.*}" -ge $((MIB << 20)) ] && break
    sleep 0.01
done
l1=$(cpu $LEECH); s1=$(cpu $SEED)
[ -n "${PERF:-}" ] && kill -INT "$PERF_PID" && sleep 1
awk -v a="$first" -v b="$now" -v m="$MIB" -v l=$((l1 - l0)) -v s=$((s1 - s0)) \
    'BEGIN {printf "LAN: %d MiB in %.2f s = %.0f MiB/s; CPU ticks during it: leech %d, seed %d\n", m, b - a, m / (b - a), l, s}'
echo "VmHWM: seed $(mem $SEED VmHWM) kB, leech $(mem $LEECH VmHWM) kB"
