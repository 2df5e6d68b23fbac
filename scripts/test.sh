#!/usr/bin/env bash
# Sets everything up, then runs every check: ruff, mypy --strict, and the whole pytest suite,
# including the tests against a real monerod --regtest and real monero-wallet-rpc processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check walletd tests bench
.venv/bin/ruff format --check walletd tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
exec .venv/bin/pytest -p no:cacheprovider "$@"
