#!/usr/bin/env bash
# Install intercept into .venv (created on first run) and run the demo: a fixture MCP server
# wrapped with a policy, driven by a scripted client.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh "[demo]"
exec .venv/bin/python fixtures/demo.py
