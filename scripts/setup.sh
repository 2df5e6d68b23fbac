#!/usr/bin/env bash
# Installs what walletd needs on a fresh Debian machine: Debian's monero package (monerod and
# monero-wallet-rpc), the fast-open library (gcc, libssl-dev), promtool and PostgreSQL for the
# tests, and a virtualenv with walletd and its development tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v monerod >/dev/null 2>&1 || ! command -v monero-wallet-rpc >/dev/null 2>&1; then
  echo "setup: installing Debian's monero package" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq monero >/dev/null
fi

# promtool, from Debian's prometheus package: tests/test_metrics.py checks /metrics with it.
if ! command -v promtool >/dev/null 2>&1; then
  echo "setup: installing promtool (Debian's prometheus package) for the metrics test" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
  # Only promtool is wanted: the package's own server is neither left running nor enabled.
  if command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# PostgreSQL (Debian's postgresql package): scripts/test.sh starts a private server for the
# cluster tests. The package's own cluster is neither needed nor left running.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "setup: installing Debian's postgresql package for the cluster tests" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  if command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now postgresql >/dev/null 2>&1 || true
  fi
fi

# The fast-open library (walletd/wallets/fastopen): built next to its source, where walletd looks
# for it. Without it walletd still runs, with slow wallet opens, and says so.
if ! command -v gcc >/dev/null 2>&1 || [ ! -f /usr/include/openssl/rsa.h ]; then
  echo "setup: installing gcc and libssl-dev (for the fast-open library)" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libssl-dev >/dev/null
fi
echo "setup: building walletd/wallets/fastopen/libwalletd_fastopen.so" >&2
fastopen=walletd/wallets/fastopen
gcc -O2 -Wall -Wextra -fPIC -shared -fvisibility=hidden \
  -o "$fastopen/libwalletd_fastopen.so.tmp" "$fastopen/fastopen.c" -lcrypto -pthread
mv -f "$fastopen/libwalletd_fastopen.so.tmp" "$fastopen/libwalletd_fastopen.so"

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
echo "setup: installing walletd and its dependencies into .venv" >&2
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
