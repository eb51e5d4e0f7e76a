#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: create (first run) or reuse the project-local virtual
# environment .venv and install intercept into it with the extras given as $1 (e.g. "[test]").
# Never installs into the system or global interpreter (PEP 668 systems refuse that anyway).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "intercept: $PYTHON not found: install Python 3.11 or newer" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "intercept: $("$PYTHON" --version 2>&1) is too old: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.x)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        version="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        echo "intercept: $PYTHON cannot create a virtual environment; on Debian/Ubuntu: sudo apt install python${version}-venv" >&2
        exit 1
    fi
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${1:-}"
