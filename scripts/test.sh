#!/usr/bin/env bash
# The lifeline project test command:  ./scripts/test.sh [extra args for cargo nextest run / cargo test]
#
#   1. finds (or starts) a PostgreSQL that allows CREATE DATABASE  -> $LIFELINE_TEST_PG_URL
#   2. installs the jambonz verb validator (tools/verb-validator, @jambonz/verb-specifications)
#      and runs its self-test                                     -> $LIFELINE_VERB_VALIDATOR,
#                                                                    $LIFELINE_REQUIRE_VERB_VALIDATOR=1
#   3. fetches a pinned Chromium + ChromeDriver into .cache/browser for the dashboard's browser
#      test (scripts/fetch-browser.sh: apt-get download + dpkg-deb -x, no system package changed)
#                                                                 -> $LIFELINE_CHROMIUM,
#                                                                    $LIFELINE_CHROMEDRIVER
#      LIFELINE_SKIP_BROWSER=1 skips this step and the browser test.
#   4. runs the Rust tests (cargo nextest if installed, else cargo test)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

step() { echo "==> test.sh: $*" >&2; }
die() { echo "test.sh: ERROR: $*" >&2; exit 1; }

as_root() {
  if [[ "$(id -u)" == 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# --- a. PostgreSQL -----------------------------------------------------------------------------
step "ensuring a PostgreSQL for tests (scripts/ensure-postgres.sh)"
pg_url="$("$ROOT/scripts/ensure-postgres.sh")" || die "scripts/ensure-postgres.sh failed: no usable PostgreSQL (see messages above)"
[[ -n "$pg_url" ]] || die "scripts/ensure-postgres.sh printed no URL"
export LIFELINE_TEST_PG_URL="$pg_url"
step "LIFELINE_TEST_PG_URL=${LIFELINE_TEST_PG_URL%%://*}://<redacted>@${LIFELINE_TEST_PG_URL##*@}"

# --- b. jambonz verb validator -----------------------------------------------------------------
VV="$ROOT/tools/verb-validator"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "node/npm not found and apt-get is unavailable; install Node.js >= 18 and npm"
  step "node/npm not found; installing nodejs + npm with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >&2 || die "apt-get install nodejs npm failed"
fi

lock_hash="$(sha256sum "$VV/package-lock.json" | cut -d' ' -f1)" || die "missing $VV/package-lock.json"
stamp="$VV/node_modules/.lifeline-lock.sha256"
if [[ -d "$VV/node_modules" && -f "$stamp" && "$(cat "$stamp")" == "$lock_hash" ]]; then
  step "verb validator dependencies up to date"
else
  step "installing verb validator dependencies (npm ci)"
  npm ci --prefix "$VV" --no-audit --no-fund >&2 || die "npm ci in tools/verb-validator failed"
  echo "$lock_hash" >"$stamp"
fi

step "verb validator self-test"
"$VV/selftest.sh" || die "tools/verb-validator/selftest.sh failed"

export LIFELINE_VERB_VALIDATOR="$VV/validate.js"
export LIFELINE_REQUIRE_VERB_VALIDATOR=1

# --- c. Chromium for the dashboard's browser test ---------------------------------------------
# A pinned Chromium and ChromeDriver in the project's cache (.cache/browser), fetched once with
# `apt-get download` and unpacked there: no system package is installed or upgraded.
if [[ "${LIFELINE_SKIP_BROWSER:-}" == 1 ]]; then
  step "LIFELINE_SKIP_BROWSER=1: no Chromium fetched; the dashboard's browser test (tests/browser.rs) is skipped"
elif [[ -n "${LIFELINE_CHROMIUM:-}" && -n "${LIFELINE_CHROMEDRIVER:-}" ]]; then
  step "browser test uses LIFELINE_CHROMIUM=$LIFELINE_CHROMIUM and LIFELINE_CHROMEDRIVER=$LIFELINE_CHROMEDRIVER"
else
  step "fetching Chromium + ChromeDriver into .cache/browser (scripts/fetch-browser.sh; set LIFELINE_SKIP_BROWSER=1 to skip the browser test)"
  browser_paths="$("$ROOT/scripts/fetch-browser.sh")" \
    || die "scripts/fetch-browser.sh failed (see above); set LIFELINE_SKIP_BROWSER=1 to run without the browser test"
  while IFS='=' read -r name value; do
    case "$name" in LIFELINE_CHROMIUM|LIFELINE_CHROMEDRIVER) export "$name=$value" ;; esac
  done <<<"$browser_paths"
  [[ -n "${LIFELINE_CHROMIUM:-}" && -n "${LIFELINE_CHROMEDRIVER:-}" ]] || die "scripts/fetch-browser.sh printed no paths"
fi

# --- d. Rust tests -----------------------------------------------------------------------------
if cargo nextest --version >/dev/null 2>&1; then
  step "cargo nextest run --workspace --no-fail-fast $*"
  # nextest does not run doctests; the crate has none (examples live in tests/), so the nextest
  # summary is the run's last word.
  cargo nextest run --workspace --no-fail-fast "$@" || die "Rust tests failed (cargo nextest)"
else
  step "cargo test --workspace $* (cargo-nextest not installed)"
  cargo test --workspace "$@" || die "Rust tests failed (cargo test)"
fi

step "all tests passed"
