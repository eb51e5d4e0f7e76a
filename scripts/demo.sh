#!/usr/bin/env bash
# Install intercept and run the demo: a fixture MCP server wrapped with a policy, driven by a scripted client.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e .
exec python3 fixtures/demo.py
