#!/bin/sh
# Writes an empty stand-in for every Rust target Cargo.toml declares (each `path = "….rs"`) and
# for src/main.rs and src/lib.rs, where none exists yet. The Dockerfile runs it before copying
# the sources, so its first `cargo build` compiles the dependencies alone and Docker caches
# them; a new [[bin]] needs no change to the Dockerfile. (tests/deploy.rs checks that every
# target of the real manifest gets one.)
#
# Usage: scripts/docker-stub-targets.sh [Cargo.toml]     (run in the manifest's directory)
set -eu
manifest="${1:-Cargo.toml}"
stub() {
  [ -e "$1" ] && return 0
  mkdir -p "$(dirname "$1")"
  printf '%s\n' "$2" >"$1"
}
stub src/main.rs 'fn main() {}'
stub src/lib.rs ''
sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*$/\1/p' "$manifest" |
  while IFS= read -r target; do
    stub "$target" 'fn main() {}'
  done
