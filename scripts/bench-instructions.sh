#!/usr/bin/env bash
# The server's own instructions per tool call, counted by valgrind's callgrind: a count, not a
# time, so two builds can be compared on a busy machine (a CPU-time difference of a few per cent
# drowns in the noise of a shared 2-vCPU VM; this count repeats to within about 1%). It counts
# user space only (not the kernel's socket and fsync work) and runs the server about 50 times
# slower, so it is for comparing builds, not for latency.
#
#   scripts/bench-instructions.sh [BINARY] [RATE] [SECONDS] [TOOLS_PER_CALL]
#     BINARY          default target/release/lifeline (cargo build --release first)
#     RATE            tool calls per second offered (default 100: the server must keep up under
#                     valgrind)
#     TOOLS_PER_CALL  collect_info calls per call (default 1000: calls held open, as jambonz
#                     holds a call's socket; 1 makes every tool call a new call)
#   DATABASE_URL      default: a fresh SQLite file; a PostgreSQL URL uses that database as is
#   KEEP=1            copies the profile to /tmp/callgrind.out.1, for `callgrind_annotate
#                     --inclusive=yes /tmp/callgrind.out.1` (where the instructions went)
#
# Counting starts after 2 s of the same load (start-up, first connections and statements are
# not counted) and stops when the measured load ends.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/lifeline}"); rate=${2:-100}; secs=${3:-8}; per_call=${4:-1000}
loadgen=target/release/loadgen
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
[ -x "$bin" ] && [ -x "$loadgen" ] || { echo "build first: cargo build --release" >&2; exit 2; }
work=$(mktemp -d -p "$PWD/target" bench-instructions.XXXXXX)
port=$((20000 + RANDOM % 20000))
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && cp "$work"/callgrind.out.* /tmp/ 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT
DATABASE_URL=${DATABASE_URL:-sqlite://$work/lifeline.db} LIFELINE_CONFIG=fixtures/demo.toml \
  PORT=$port LIFELINE_BIND=127.0.0.1 RUST_LOG=${RUST_LOG:-info} \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
  "$bin" serve >"$work/lifeline.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
load() {
  "$loadgen" --url "ws://127.0.0.1:$port/jambonz" --calls 50 --rate "$rate" --duration "$1" \
    --tools-per-call "$per_call" --label instructions
}
load 2 >/dev/null
callgrind_control -i on "$pid" >/dev/null
load "$secs" >"$work/load.json"
callgrind_control -i off "$pid" >/dev/null
callgrind_control -d "$pid" >/dev/null
# The dump is the measured stretch (callgrind.out.1); what it writes at exit is not counted.
for _ in $(seq 100); do
  compgen -G "$work/callgrind.out.*" >/dev/null && break
  sleep 0.1
done
sleep 1
total=0
for f in "$work"/callgrind.out.*; do
  n=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  total=$((total + ${n:-0}))
done
python3 - "$work/load.json" "$total" "$(basename "$bin")" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))
n = load["tool_calls"]
print(f"{sys.argv[3]}: {n} tool calls ({load['errors']} errors), "
      f"{int(sys.argv[2]) // max(n, 1):,} instructions per tool call (user space, server process)")
PY
