#!/usr/bin/env bash
# Sets everything up, then runs walletd against a private regtest monerod (walletd dev).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/walletd dev "$@"
