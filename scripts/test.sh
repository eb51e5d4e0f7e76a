#!/usr/bin/env bash
# Install intercept with its test dependencies and run lint + the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# A real third-party MCP server for the end-to-end approval test (tests/test_filesystem_server.py).
npm install --silent --no-audit --no-fund --prefix .cache/npm @modelcontextprotocol/server-filesystem
python3 -m ruff check intercept tests fixtures bench
exec python3 -m pytest -q "$@"
