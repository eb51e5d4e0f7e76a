#!/usr/bin/env bash
# Install intercept with its test dependencies and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
python3 -m ruff check intercept tests fixtures bench
exec python3 -m pytest -q "$@"
