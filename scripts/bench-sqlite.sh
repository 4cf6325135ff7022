#!/usr/bin/env bash
# SQLite (the embedded default) under load: tool calls answered per second and their latency,
# with the project's own loadgen, then every answered call's rows counted.
#
#   [TOOLS_PER_CALL=5] scripts/bench-sqlite.sh [RATE] [SECONDS] [CALLS]   (build first: cargo build --release)
#
# The database is a fresh file in a temporary directory (WAL, synchronous=FULL: lifeline's
# settings), on the same disk as the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-3000}; secs=${2:-10}; calls=${3:-100}
bin=target/release/lifeline; loadgen=target/release/loadgen
[ -x "$bin" ] && [ -x "$loadgen" ] || { echo "build first: cargo build --release" >&2; exit 2; }
work=$(mktemp -d -p "$PWD/target" bench-sqlite.XXXXXX)
port=$((20000 + RANDOM % 20000))
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
DATABASE_URL="sqlite://$work/lifeline.db" LIFELINE_CONFIG=fixtures/demo.toml \
  PORT=$port LIFELINE_BIND=127.0.0.1 RUST_LOG=${RUST_LOG:-info} "$bin" serve >"$work/lifeline.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
"$loadgen" --url "ws://127.0.0.1:$port/jambonz" --calls "$calls" --rate "$rate" --duration "$secs" --tools-per-call "${TOOLS_PER_CALL:-5}" \
  --label "sqlite at $rate/s" >"$work/load.json"
t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
# A write that ran over its budget was journaled (answered from the journal's fsync) and reaches
# the database when the journal is replayed: count the rows after that, not before.
journaled=$(curl -fs "http://127.0.0.1:$port/metrics" | awk '/^lifeline_journal_records_total/ {n += $2} END {print n + 0}')
for _ in $(seq 600); do
  curl -fs "http://127.0.0.1:$port/readyz" 2>/dev/null | grep -q degraded || break
  sleep 0.1
done
echo "SQLite, loadgen at $rate tool calls/s offered for ${secs}s ($calls call workers):"
cat "$work/load.json"; echo
python3 - "$work/lifeline.db" "$work/load.json" "$((t1 - t0))" "$(getconf CLK_TCK)" "$journaled" <<'PY'
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
load = json.load(open(sys.argv[2]))
ticks, hz = int(sys.argv[3]), int(sys.argv[4])
logs, = db.execute("SELECT count(*) FROM tool_call_logs").fetchone()
ok, = db.execute("SELECT count(*) FROM tool_call_logs WHERE status = 'success'").fetchone()
cbs, = db.execute("SELECT count(*) FROM callback_requests").fetchone()
pending, = db.execute("SELECT count(*) FROM tool_call_logs WHERE status = 'pending'").fetchone()
done = load.get("tool_calls_ok", load.get("completed", 0))
print(f"rows: tool_call_logs {logs} (success {ok}, pending {pending}), callback_requests {cbs}")
print(f"writes journaled (over their budget) and replayed before the count: {sys.argv[5]}")
calls = max(logs, 1)
print(f"server CPU: {ticks / hz:.2f} s, {1000 * ticks / hz / calls:.3f} ms per logged tool call")
PY
