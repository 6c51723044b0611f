#!/usr/bin/env bash
# Node benchmarks (issue 4), on a release build, as root on a Debian machine:
#
#   bash bench/node-bench.sh
#
# 1. Two nodes on loopback, 256 MiB: chunk transfer throughput, and in the same run an
#    HTTPS download of the same bytes from nginx (Debian's package, TLS on loopback,
#    self-signed) with curl: the fair baseline, since our transport is encrypted too.
# 2. 12 nodes in 3 sites against an origin throttled to 10 MB/s, then the same 12 as
#    "central" (each downloads straight from the origin): time until all 12 hold the
#    release, and WAN bytes.
#
# Data directories go to $BENCH_TMP (default /dev/shm, so that the disk's fsync cost
# does not hide the network path; set BENCH_TMP=/var/tmp to include the disk).
# Env: OTAMESH_BENCH_MIB (size of part 1, default 256), SKIP_MESH=1 to skip part 2.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=${BENCH_TMP:-/dev/shm}
MIB=${OTAMESH_BENCH_MIB:-256}
WORK=$(mktemp -d "$TMP/otamesh-bench.XXXXXX")
NGINX_PID=""
cleanup() {
  if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v nginx >/dev/null || ! command -v openssl >/dev/null || ! command -v curl >/dev/null; then
  echo "installing nginx, openssl and curl from Debian's packages" >&2
  apt-get update -qq && apt-get install -y -qq nginx-light openssl curl >/dev/null 2>&1 ||
    apt-get install -y -qq nginx openssl curl >/dev/null
fi

cargo build --release --bin otamesh -q
cargo test --release --test bench --no-run -q 2>/dev/null

echo "== 1. two nodes, $MIB MiB, loopback"
export TMPDIR=$WORK
OTAMESH_BENCH_MIB=$MIB OTAMESH_BENCH_ARTIFACT=$WORK/artifact.bin \
  cargo test --release -q --test bench stress_bench_two_nodes_lan_transfer -- --ignored --nocapture 2>&1 |
  grep BENCH

mkdir -p "$WORK/www" "$WORK/nginx"
mv "$WORK/artifact.bin" "$WORK/www/artifact.bin"
# nginx workers run unprivileged: let them read the artifact.
chmod a+rx "$WORK" "$WORK/www" && chmod a+r "$WORK/www/artifact.bin"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -keyout "$WORK/nginx/key.pem" -out "$WORK/nginx/cert.pem" 2>/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  server {
    listen 127.0.0.1:$PORT ssl;
    ssl_certificate $WORK/nginx/cert.pem;
    ssl_certificate_key $WORK/nginx/key.pem;
    root $WORK/www;
  }
}
CONF
nginx -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
sleep 0.5
for i in 1 2 3; do
  curl -skf -o /dev/null -w "BENCH nginx HTTPS (curl, 1 stream): $MIB MiB at %{speed_download} B/s\n" \
    "https://127.0.0.1:$PORT/artifact.bin" |
    awk -v mib="$MIB" '{ printf "%s %s %s %s %s %s %s %s = %.0f MiB/s\n", $1,$2,$3,$4,$5,$6,$7,$8, $10/1048576 }'
done
kill "$NGINX_PID" && NGINX_PID=""

if [ "${SKIP_MESH:-0}" != 1 ]; then
  echo "== 2. 12 nodes in 3 sites, origin throttled to 10 MB/s, vs central"
  OTAMESH_BENCH_MIB=32 cargo test --release -q --test bench stress_bench_twelve_nodes_mesh_vs_central \
    -- --ignored --nocapture 2>&1 | grep BENCH
fi
