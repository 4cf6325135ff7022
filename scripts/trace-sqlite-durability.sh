#!/usr/bin/env bash
# Checks, on the real binary, that no tool call is answered before the WAL holding its rows was
# synced: runs lifeline (SQLite) under strace while loadgen drives it, then, for every
# `llm:tool-output` it sent, finds the WAL commit that first holds the tool call's id and
# requires an fsync/fdatasync of the WAL that began after that commit and ended before the
# answer (scripts/durable_answers.py). Exits non-zero if any answer came first.
#
#   scripts/trace-sqlite-durability.sh [RATE] [SECONDS] [CALLS]   (cargo build --release; strace)
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-300}; secs=${2:-3}; calls=${3:-20}
bin=target/release/lifeline; loadgen=target/release/loadgen
[ -x "$bin" ] && [ -x "$loadgen" ] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v strace >/dev/null || { echo "needs strace (apt-get install strace)" >&2; exit 2; }
work=$(mktemp -d -p "$PWD/target" durability.XXXXXX)
port=$((20000 + RANDOM % 20000))
cleanup() {
  pkill -f "$work/lifeline.db" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# The database's path is in the server's command line (the environment is not), so that cleanup
# finds this server only.
DATABASE_URL="sqlite://$work/lifeline.db" LIFELINE_CONFIG=fixtures/demo.toml PORT=$port \
  LIFELINE_BIND=127.0.0.1 RUST_LOG=warn strace -f -tt -T -y -s 4200 \
  -e trace=pwrite64,fdatasync,fsync,write,writev,sendto,sendmsg -o "$work/trace.txt" \
  "$bin" serve --database-url "sqlite://$work/lifeline.db" >"$work/lifeline.log" 2>&1 &
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
"$loadgen" --url "ws://127.0.0.1:$port/jambonz" --calls "$calls" --rate "$rate" --duration "$secs" \
  --tools-per-call 5 --label "durability trace" >"$work/load.json"
pkill -f "$work/lifeline.db"
sleep 2
python3 scripts/durable_answers.py "$work/trace.txt"
