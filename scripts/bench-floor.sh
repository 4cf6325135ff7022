#!/usr/bin/env bash
# The floor under the p50 and CPU targets of issue 13, measured beside lifeline and the peer.
#
#   scripts/bench-floor.sh [RATES] [SECONDS] [ROUNDS]     (build first: cargo build --release)
#
# Four servers on one PostgreSQL, driven in turn by the peer's own load client
# (../shared/bench/loadgen.js, 50 calls, latency from each tool call's intended send time):
#   floor-nodb  floorserver --no-db: answers every tool call at once (the transport's floor)
#   floor-db    floorserver: the peer's two rows in one autocommitted statement, then the answer
#               (one round trip, one durable commit: the least the same durable work can take)
#   lifeline    lifeline serve, configured as compare.sh configures it
#   peer        ../shared/bench/node-baseline (jambonz's SDK + node-postgres)
# Each run is preceded by 2 s of the same load (not counted: start-up and JIT warm-up), then
# SECONDS measured: answered/s, p50, p99, and CPU per tool call of the server process (user and
# kernel, /proc/PID/stat) and of PostgreSQL (every postgres process). At the end, the medians per
# rate and the ratios to the peer. Needs node, psql and a PostgreSQL at $BENCH_PG (default
# postgres://postgres@127.0.0.1:5432) that may CREATE DATABASE.
set -euo pipefail
cd "$(dirname "$0")/.."
rates=${1:-"500 1000"}; secs=${2:-8}; rounds=${3:-2}
pg=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
bench=$(realpath ../shared/bench)
lifeline=target/release/lifeline; floor=target/release/floorserver
[ -x "$lifeline" ] && [ -x "$floor" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -d "$bench/node-baseline/node_modules" ] || npm ci --prefix "$bench/node-baseline" --no-audit --no-fund >&2
work=$(mktemp -d); pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for db in bench_floor bench_peer bench_lifeline; do
    psql "$pg/postgres" -qc "drop database if exists $db" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

for db in bench_floor bench_peer bench_lifeline; do
  psql "$pg/postgres" -qc "drop database if exists $db" -c "create database $db" >/dev/null
done
for db in bench_floor bench_peer; do psql "$pg/$db" -q -f "$bench/node-baseline/schema.sql" >/dev/null; done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listening() { python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' "$1" 2>/dev/null; }
cat > "$work/lifeline.toml" <<'TOML'
[limits]
tool_timeout_ms = 2000
tool_calls_per_call = 1000000
call_window_secs = 60
transfers_per_call = 3
transfer_window_secs = 600
tool_calls_per_tenant_per_minute = 100000000
[[tenants]]
id = "bench"
name = "Bench Clinic"
numbers = ["+15005550006"]
[tenants.jambonz]
username = "bench"
password = "bench-password-123"
[tenants.transfer]
primary = "+15557654321"
[tenants.ultravox]
api_key = "bench-ultravox-key"
system_prompt = "You are the after-hours assistant of a veterinary clinic."
TOML

declare -A port pid
port[floor-nodb]=$(free_port); port[floor-db]=$(free_port); port[lifeline]=$(free_port); port[peer]=$(free_port)
"$floor" --no-db --port "${port[floor-nodb]}" >"$work/floor-nodb.log" 2>&1 & pid[floor-nodb]=$!; pids+=($!)
DATABASE_URL="$pg/bench_floor" "$floor" --port "${port[floor-db]}" >"$work/floor-db.log" 2>&1 & pid[floor-db]=$!; pids+=($!)
LIFELINE_CONFIG="$work/lifeline.toml" PORT=${port[lifeline]} LIFELINE_BIND=127.0.0.1 \
  DATABASE_URL="$pg/bench_lifeline" RUST_LOG=${RUST_LOG:-info} "$lifeline" serve >"$work/lifeline.log" 2>&1 &
pid[lifeline]=$!; pids+=($!)
DATABASE_URL="$pg/bench_peer" PORT=${port[peer]} node "$bench/node-baseline/app.js" >"$work/peer.log" 2>&1 &
pid[peer]=$!; pids+=($!)
for side in floor-nodb floor-db lifeline peer; do
  for _ in $(seq 100); do listening "${port[$side]}" && break; sleep 0.2; done
  listening "${port[$side]}" || { echo "$side did not start; its log:" >&2; cat "$work/$side.log" >&2; exit 1; }
done
for _ in $(seq 100); do curl -sf "http://127.0.0.1:${port[lifeline]}/readyz" >/dev/null && break; sleep 0.2; done

load() { # side rate seconds
  local cred=(); [ "$1" = peer ] || cred=(bench:bench-password-123 acct-1 +15005550006)
  NODE_PATH="$bench/node-baseline/node_modules" node "$bench/loadgen.js" \
    "ws://127.0.0.1:${port[$1]}/jambonz" 50 "$2" "$3" "${cred[@]}"
}
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# PostgreSQL's CPU: every live postgres process, plus what the postmaster has collected from
# those that exited (its cutime and cstime), so a backend ending mid-run is not lost.
pg_ticks() {
  local pm; pm=$(pgrep -o -x postgres)
  { awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat"
    for p in $(pgrep -x postgres); do
      [ "$p" = "$pm" ] || awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null
    done; } | awk '{s += $1} END {print s + 0}'
}

printf '%-10s %5s %10s %5s %8s %8s %9s %9s %8s\n' side rate answered/s lost p50_ms p99_ms user_ms kernel_ms pg_ms
for rate in $rates; do
  for _ in $(seq "$rounds"); do
    for side in floor-nodb floor-db lifeline peer; do
      load "$side" "$rate" 2 | sed "s/^/{\"side\": \"$side\", \"warmup\": /; s/\$/}/" >>"$work/warmups.jsonl"
      read -r u0 s0 < <(ticks "${pid[$side]}"); g0=$(pg_ticks)
      out=$(load "$side" "$rate" "$secs")
      read -r u1 s1 < <(ticks "${pid[$side]}"); g1=$(pg_ticks)
      echo "$out" | python3 -c '
import json, sys
side, hz, u, s, g = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
d = json.load(sys.stdin)
n = max(d["answered"], 1)
ms = lambda t: 1000 * t / hz / n
d.update(side=side, user_ms=ms(u), kernel_ms=ms(s), pg_ms=ms(g))
print(json.dumps(d))
' "$side" "$(getconf CLK_TCK)" "$((u1 - u0))" "$((s1 - s0))" "$((g1 - g0))" | tee -a "$work/results.jsonl" |
        python3 -c '
import json, sys
d = json.load(sys.stdin)
print("%-10s %5d %10.1f %5d %8s %8s %9.3f %9.3f %8.3f" % (d["side"], d["rate"], d["throughput"], d["lost"],
      d["p50_ms"], d["p99_ms"], d["user_ms"], d["kernel_ms"], d["pg_ms"]))'
    done
  done
done
python3 - "$work/results.jsonl" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda rs, k: st.median([r[k] for r in rs if r[k] is not None] or [float("nan")])
print("\nmedians per rate; ratios to the peer (server CPU = user + kernel of the server process)")
for rate in sorted({r["rate"] for r in rows}):
    by = {s: [r for r in rows if r["rate"] == rate and r["side"] == s]
          for s in ("floor-nodb", "floor-db", "lifeline", "peer")}
    peer = by["peer"]
    p50p, p99p = med(peer, "p50_ms"), med(peer, "p99_ms")
    cpu_of = lambda rs: st.median([r["user_ms"] + r["kernel_ms"] for r in rs])
    cpup = cpu_of(peer)
    for s, rs in by.items():
        cpu = cpu_of(rs)
        print(f"rate {rate} {s:10s} p50 {med(rs, 'p50_ms'):.3f} ms ({med(rs, 'p50_ms') / p50p:.2f}x)"
              f"  p99 {med(rs, 'p99_ms'):.3f} ms ({med(rs, 'p99_ms') / p99p:.2f}x)"
              f"  server CPU {cpu:.3f} ms ({cpu / cpup:.2f}x; kernel {med(rs, 'kernel_ms'):.3f})"
              f"  PostgreSQL {med(rs, 'pg_ms'):.3f} ms")
PY
# Nothing lost: every answer of a side that writes has its rows (warm-ups included).
answered() { cat "$work/results.jsonl" "$work/warmups.jsonl" | python3 -c '
import json, sys
side = sys.argv[1]
n = 0
for l in sys.stdin:
    d = json.loads(l)
    if d["side"] == side:
        n += d.get("warmup", d)["answered"]
print(n)' "$1"; }
rows() { psql "$pg/$1" -tAc "select (select count(*) from tool_call_logs) || ' log rows, ' ||
  (select count(*) from callback_requests) || ' callback requests, ' ||
  (select count(*) from tool_call_logs where status = 'pending') || ' pending'"; }
echo
echo "rows: floor-db $(rows bench_floor) for $(answered floor-db) answered"
echo "rows: lifeline $(rows bench_lifeline) for $(answered lifeline) answered"
echo "rows: peer     $(rows bench_peer) for $(answered peer) answered"
echo "logs: $work"
