#!/usr/bin/env bash
# Installs everything the test suite needs into .venv and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements-test.txt
# The app's browser tests drive Debian's chromium through Playwright (which cannot download a browser here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "chromium is missing and this is not root: install it (apt-get install chromium)" >&2
  fi
fi
.venv/bin/python -m pytest "$@"
