#!/usr/bin/env bash
# Refresh constraints.txt: set up a second venv with the newest versions pyproject.toml allows, run the tests
# against them, and only if they pass write that venv's versions as the new lock.
#   scripts/refresh-lock.sh [pytest args...]     (e.g. -m "not slow" for a quicker check)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-latest
rm -rf "$VENV"
CARELOOP_VENV=$VENV CARELOOP_UNLOCKED=1 scripts/setup.sh --dev
"$VENV/bin/python" -m pytest "$@"
{
  head -3 constraints.txt
  "$VENV/bin/python" -m pip freeze --exclude-editable
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt refreshed from $VENV (tests passed); review the diff and commit it"
