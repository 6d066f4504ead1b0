#!/usr/bin/env bash
# Sets up everything `make demo` and `make test` need on a fresh Debian/Ubuntu machine with Python 3.11:
# system packages through apt where missing, then the virtualenv with the pinned stack.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
# PostgreSQL server binaries: the test of the Helm deployment's Postgres-backed daemon starts its own server.
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || command -v pg_ctl >/dev/null || need+=(postgresql)
# Debian's chromium: the browser test of the Dagster UI drives it through playwright (which downloads no browser).
command -v chromium >/dev/null || need+=(chromium)
# A throwaway Ceph radosgw for tests/integration/test_radosgw.py (~100 MB of packages; skipped without them).
if [ "${EMILIA_CEPH_TESTS:-0}" = "1" ] && ! command -v radosgw >/dev/null; then need+=(radosgw ceph-mon ceph-osd); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# torch 2.14.1 is the CUDA build (torchaudio/torchcodec from PyPI link against it); it runs on CPU too.
.venv/bin/python -m pip install -q -e '.[dev]'
echo "environment ready: .venv"
