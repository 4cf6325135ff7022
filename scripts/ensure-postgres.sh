#!/usr/bin/env bash
# Prints (as the only line on stdout) an admin connection URL of a reachable PostgreSQL
# that allows CREATE DATABASE. All diagnostics go to stderr.
#
# Order of preference:
#   1. $LIFELINE_TEST_PG_URL, if set and usable;
#   2. postgres://postgres@127.0.0.1:5432/postgres, if usable
#      (skipped when LIFELINE_FORCE_THROWAWAY_PG=1, which simulates "5432 unreachable");
#   3. an already running throwaway cluster on 127.0.0.1:$LIFELINE_THROWAWAY_PG_PORT (default 54329);
#   4. a new throwaway cluster (initdb into a temp dir, trust auth, fsync on) started on that port.
#      PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` system user
#      (created with useradd if missing). If the PostgreSQL binaries are missing they are installed
#      with apt-get (package `postgresql`).
#
# Usage: export LIFELINE_TEST_PG_URL="$(scripts/ensure-postgres.sh)"
set -euo pipefail

# Everything goes to stderr by default; only the final URL is written to the saved stdout (fd 3).
exec 3>&1 1>&2

log() { echo "ensure-postgres: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

THROWAWAY_PORT="${LIFELINE_THROWAWAY_PG_PORT:-54329}"
DEFAULT_URL="postgres://postgres@127.0.0.1:5432/postgres"
THROWAWAY_URL="postgres://postgres@127.0.0.1:${THROWAWAY_PORT}/postgres"

as_root() {
  if [[ "$(id -u)" == 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

install_postgres() {
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL binaries not found and apt-get is unavailable; install PostgreSQL manually"
  log "PostgreSQL binaries not found; installing with apt-get (package: postgresql)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
}

# Directory holding initdb/pg_ctl/postgres (Debian keeps them out of PATH).
find_server_bindir() {
  local p d
  p="$(command -v initdb 2>/dev/null || true)"
  if [[ -n "$p" ]]; then
    p="$(readlink -f "$p")"
    d="$(dirname "$p")"
    if [[ -x "$d/pg_ctl" && -x "$d/postgres" ]]; then echo "$d"; return 0; fi
  fi
  # newest version first
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k4,4 -V -r); do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then echo "$d"; return 0; fi
  done
  return 1
}

find_psql() {
  local p
  p="$(command -v psql 2>/dev/null || true)"
  if [[ -n "$p" ]]; then echo "$p"; return 0; fi
  if p="$(find_server_bindir)" && [[ -x "$p/psql" ]]; then echo "$p/psql"; return 0; fi
  return 1
}

PSQL="$(find_psql || true)"
if [[ -z "$PSQL" ]]; then
  install_postgres
  PSQL="$(find_psql || true)"
  [[ -n "$PSQL" ]] || die "psql still not found after installing postgresql"
fi

# usable URL: reachable, and the role may create databases (superuser or CREATEDB).
usable() {
  local url="$1" out
  out="$(PGCONNECT_TIMEOUT=5 "$PSQL" -X -w -A -t -q -d "$url" \
    -c "select rolsuper or rolcreatedb from pg_roles where rolname = current_user" 2>&1)" || {
    log "  not usable: ${out%%$'\n'*}"
    return 1
  }
  if [[ "$out" != "t" ]]; then
    log "  reachable, but the role may not CREATE DATABASE"
    return 1
  fi
  return 0
}

emit() {
  echo "$1" >&3
  exit 0
}

# 1. explicit URL
if [[ -n "${LIFELINE_TEST_PG_URL:-}" ]]; then
  log "checking LIFELINE_TEST_PG_URL"
  if usable "$LIFELINE_TEST_PG_URL"; then
    log "using LIFELINE_TEST_PG_URL"
    emit "$LIFELINE_TEST_PG_URL"
  fi
  log "LIFELINE_TEST_PG_URL is set but not usable; falling back"
fi

# 2. local default server
if [[ "${LIFELINE_FORCE_THROWAWAY_PG:-0}" == 1 ]]; then
  log "LIFELINE_FORCE_THROWAWAY_PG=1: treating 127.0.0.1:5432 as unreachable"
else
  log "checking $DEFAULT_URL"
  if usable "$DEFAULT_URL"; then
    log "using local PostgreSQL on 127.0.0.1:5432"
    emit "$DEFAULT_URL"
  fi
fi

# 3. throwaway cluster left running by an earlier invocation
log "checking for an existing throwaway cluster at $THROWAWAY_URL"
if usable "$THROWAWAY_URL"; then
  log "reusing the throwaway cluster on 127.0.0.1:$THROWAWAY_PORT"
  emit "$THROWAWAY_URL"
fi

# 4. new throwaway cluster
BINDIR="$(find_server_bindir || true)"
if [[ -z "$BINDIR" ]]; then
  install_postgres
  BINDIR="$(find_server_bindir || true)"
  [[ -n "$BINDIR" ]] || die "initdb/pg_ctl/postgres still not found after installing postgresql"
fi
log "starting a throwaway cluster with binaries from $BINDIR"

RUN_AS=()
if [[ "$(id -u)" == 0 ]]; then
  if ! id -u postgres >/dev/null 2>&1; then
    log "creating system user 'postgres' (PostgreSQL refuses to run as root)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin postgres \
      || die "useradd postgres failed"
  fi
  if command -v runuser >/dev/null 2>&1; then
    RUN_AS=(runuser -u postgres --)
  elif command -v setpriv >/dev/null 2>&1; then
    RUN_AS=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  else
    die "running as root but neither runuser nor setpriv is available to drop privileges"
  fi
fi

PGTMP="$(mktemp -d "${TMPDIR:-/tmp}/lifeline-pg.XXXXXX")"
chmod 700 "$PGTMP"
if [[ "$(id -u)" == 0 ]]; then chown postgres: "$PGTMP"; fi
DATA="$PGTMP/data"
LOGFILE="$PGTMP/postgres.log"

# run a server binary as the cluster owner, from a directory it can read. fd 3 (our real stdout)
# is closed so the daemon cannot inherit it and keep a caller's $(...) waiting forever.
as_owner() { (cd "$PGTMP" && "${RUN_AS[@]}" "$@") 3>&-; }

log "initdb into $DATA"
if ! as_owner "$BINDIR/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C >&2; then
  rm -rf "$PGTMP"
  die "initdb failed"
fi

cat >>"$DATA/postgresql.conf" <<EOF

# --- lifeline throwaway test cluster ---
listen_addresses = '127.0.0.1'
port = $THROWAWAY_PORT
unix_socket_directories = '$PGTMP'
fsync = on
EOF

log "pg_ctl start on 127.0.0.1:$THROWAWAY_PORT (log: $LOGFILE)"
if ! as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 start >&2; then
  log "pg_ctl start failed; server log follows"
  tail -n 50 "$LOGFILE" >&2 || true
  rm -rf "$PGTMP"
  die "could not start the throwaway cluster on 127.0.0.1:$THROWAWAY_PORT"
fi

STOP_SCRIPT="$PGTMP/stop.sh"
{
  echo '#!/usr/bin/env bash'
  echo "# stops the lifeline throwaway PostgreSQL cluster and deletes its files"
  echo "cd '$PGTMP' && ${RUN_AS[*]:+${RUN_AS[*]} }'$BINDIR/pg_ctl' -D '$DATA' -m fast -w stop"
  echo "rm -rf '$PGTMP'"
} >"$STOP_SCRIPT"
chmod 755 "$STOP_SCRIPT"

if ! usable "$THROWAWAY_URL"; then
  tail -n 50 "$LOGFILE" >&2 || true
  die "throwaway cluster started but $THROWAWAY_URL is not usable"
fi

log "throwaway cluster running (data dir $DATA, port $THROWAWAY_PORT)."
log "to stop it and delete its files:  $STOP_SCRIPT"
log "  (equivalently: ${RUN_AS[*]:+${RUN_AS[*]} }$BINDIR/pg_ctl -D $DATA -m fast stop && rm -rf $PGTMP)"
emit "$THROWAWAY_URL"
