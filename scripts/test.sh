#!/usr/bin/env bash
# Install intercept with its test dependencies into .venv (created on first run) and run lint +
# the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh "[test]"
# A real third-party MCP server for the end-to-end tests (tests/e2e/test_filesystem_server.py and others).
if ! command -v npm >/dev/null 2>&1; then
    echo "intercept: npm not found: the end-to-end tests need Node.js and npm (on Debian/Ubuntu: sudo apt install npm)" >&2
    exit 1
fi
if ! npm install --loglevel=error --no-audit --no-fund --prefix .cache/npm @modelcontextprotocol/server-filesystem; then
    echo "intercept: npm could not install @modelcontextprotocol/server-filesystem (see npm's error above); the end-to-end tests need it" >&2
    exit 1
fi
.venv/bin/python -m ruff check intercept tests fixtures bench
exec .venv/bin/python -m pytest -q "$@"
