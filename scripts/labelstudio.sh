#!/usr/bin/env bash
# Install, start and stop a real Label Studio 1.23.2 for the end-to-end tests, benchmarks and local use
# (tests/labelstudio_server.py: test infrastructure, not part of the backend).
#   scripts/labelstudio.sh install          # into .venv-ls (skipped when that version is already there)
#   scripts/labelstudio.sh start [--port 8080] [--data-dir DIR]   # prints URL, user, password, token as JSON
#   scripts/labelstudio.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m tests.labelstudio_server "$@"
