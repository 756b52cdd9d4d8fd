#!/usr/bin/env bash
# Installs everything the test suite needs into .venv and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements-test.txt
.venv/bin/python -m pytest "$@"
