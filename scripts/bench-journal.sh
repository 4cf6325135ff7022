#!/usr/bin/env bash
# The journal's figures: tool calls answered per second, and their latency, while PostgreSQL is
# unreachable (every write journaled), then how fast the journal is replayed when it is back.
#
#   scripts/bench-journal.sh [RATE] [SECONDS]      (build first: cargo build --release)
#
# The outage: the bench database refuses new connections (ALLOW_CONNECTIONS false) and its open
# ones are ended, so lifeline's pool fails at once and the call path falls back on the journal.
# BENCH_PG names the server (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-500}; secs=${2:-10}
pg=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
bin=target/release/lifeline; loadgen=target/release/loadgen
[ -x "$bin" ] && [ -x "$loadgen" ] || { echo "build first: cargo build --release" >&2; exit 2; }
db="lifeline_journal_bench_$$"
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -q "$pg/postgres" -c "CREATE DATABASE $db" >/dev/null
DATABASE_URL="$pg/$db" LIFELINE_CONFIG=fixtures/demo.toml LIFELINE_JOURNAL_DIR="$work/journal" \
  PORT=$port LIFELINE_BIND=127.0.0.1 RUST_LOG=info "$bin" serve >"$work/lifeline.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
psql -q "$pg/postgres" -c "ALTER DATABASE $db ALLOW_CONNECTIONS false" \
  -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$db'" >/dev/null
"$loadgen" --url "ws://127.0.0.1:$port/jambonz" --rate "$rate" --duration "$secs" \
  --label "journaling at $rate/s" >"$work/load.json"
echo "while the database is unreachable (loadgen, $rate/s offered for ${secs}s):"
cat "$work/load.json"; echo
curl -s "http://127.0.0.1:$port/readyz"; echo
psql -q "$pg/postgres" -c "ALTER DATABASE $db ALLOW_CONNECTIONS true" >/dev/null
for _ in $(seq 600); do
  grep -q 'journal replayed into the database' "$work/lifeline.log" && break
  sleep 0.1
done
echo "replay:"
grep -E "journal replayed|journal replay stopped|writes to the journal" "$work/lifeline.log"
echo "rows after the replay:"
psql -At "$pg/$db" -c "SELECT 'tool_call_logs', count(*) FROM tool_call_logs UNION ALL
  SELECT 'callback_requests', count(*) FROM callback_requests UNION ALL
  SELECT 'pending', count(*) FROM tool_call_logs WHERE status = 'pending'"
