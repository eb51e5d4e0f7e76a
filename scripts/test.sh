#!/usr/bin/env bash
# Install intercept with its test dependencies into .venv (created on first run) and run lint +
# the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh "[test]"
# A real third-party MCP server for the end-to-end tests (tests/e2e/test_filesystem_server.py and others).
npm install --silent --no-audit --no-fund --prefix .cache/npm @modelcontextprotocol/server-filesystem
.venv/bin/python -m ruff check intercept tests fixtures bench
exec .venv/bin/python -m pytest -q "$@"
