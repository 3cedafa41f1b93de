#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (root): sets up, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
