#!/usr/bin/env bash
# The PostgreSQL binaries the tests and bench/pg.sh run privately (initdb,
# postgres, pg_isready, createdb, psql, pgbench): Debian's `postgresql`
# package when no /usr/lib/postgresql/*/bin/initdb exists. Idempotent; a
# no-op when present. The package's own cluster/service is never used: the
# tests start their own server in a temporary directory; we ask apt not to
# start the service (policy-rc.d), and a cluster it creates is left alone.
# Prints the bin directory found (the newest version).
set -euo pipefail

find_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; fi
}

bin=$(find_bin)
if [ -z "$bin" ]; then
  echo "postgres: installing postgresql (apt-get)" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  # invoke-rc.d consults policy-rc.d: 101 = "action not allowed", so the
  # package installs without starting its service.
  policy=/usr/sbin/policy-rc.d
  added_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    added_policy=true
  fi
  trap '$added_policy && $SUDO rm -f "$policy"' EXIT
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  bin=$(find_bin)
  if [ -z "$bin" ]; then
    echo "postgres: installed postgresql, but no /usr/lib/postgresql/*/bin/initdb" >&2
    exit 1
  fi
fi
echo "postgres: $bin ($("$bin/postgres" --version))"
