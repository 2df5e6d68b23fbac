#!/usr/bin/env bash
# Sets everything up, then runs every check: ruff, mypy --strict, and the whole pytest suite,
# including the tests against a real monerod --regtest and real monero-wallet-rpc processes, and
# the cluster tests against a private PostgreSQL started here (WALLETD_TEST_PG_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check walletd tests bench
.venv/bin/ruff format --check walletd tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
source scripts/test-postgres.sh
trap test_pg_stop EXIT
test_pg_start
.venv/bin/pytest -p no:cacheprovider "$@"
