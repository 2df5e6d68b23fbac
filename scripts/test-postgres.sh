#!/usr/bin/env bash
# Sourced by scripts/test.sh: a private, throw-away PostgreSQL (Debian's postgresql package) for
# the cluster tests. `test_pg_start` runs initdb and pg_ctl in a temporary directory on a free
# loopback port and exports WALLETD_TEST_PG_URL; `test_pg_stop` stops it and removes the
# directory (test.sh calls it on exit, also on failure). initdb refuses to run as root, so as
# root the server runs as the unprivileged `postgres` user (created by the package), which owns
# the data directory.

_pg_bin() {
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  # Debian puts the server binaries under /usr/lib/postgresql/<major>/bin, not on PATH.
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

_pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

test_pg_start() {
  local bin port
  bin="$(_pg_bin)"
  if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
    echo "test-postgres: initdb/pg_ctl not found (apt-get install postgresql)" >&2
    return 1
  fi
  TEST_PG_DIR="$(mktemp -d /tmp/walletd-test-pg.XXXXXX)"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$TEST_PG_DIR"; fi
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  _pg_as_owner "$bin/initdb" -D "$TEST_PG_DIR/data" -U walletd --auth=trust -E UTF8 \
    --no-instructions >"$TEST_PG_DIR/initdb.log" 2>&1 \
    || { cat "$TEST_PG_DIR/initdb.log" >&2; return 1; }
  # Loopback TCP only, the Unix socket inside the temporary directory, fsync off (a test database).
  _pg_as_owner "$bin/pg_ctl" -D "$TEST_PG_DIR/data" -l "$TEST_PG_DIR/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $TEST_PG_DIR -F" start >/dev/null \
    || { cat "$TEST_PG_DIR/server.log" >&2; return 1; }
  TEST_PG_BIN="$bin"
  export WALLETD_TEST_PG_URL="postgresql://walletd@127.0.0.1:$port/postgres"
  echo "test-postgres: private PostgreSQL on 127.0.0.1:$port ($TEST_PG_DIR)" >&2
}

test_pg_stop() {
  if [ -n "${TEST_PG_DIR:-}" ] && [ -d "$TEST_PG_DIR/data" ]; then
    _pg_as_owner "$TEST_PG_BIN/pg_ctl" -D "$TEST_PG_DIR/data" -m immediate -w stop \
      >/dev/null 2>&1 || true
  fi
  if [ -n "${TEST_PG_DIR:-}" ]; then rm -rf "$TEST_PG_DIR"; fi
}
