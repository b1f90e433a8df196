#!/usr/bin/env bash
# The default test suite (< 15 min on 2 CPU cores): installs into .venv if needed, then runs pytest.
# Slow end-to-end tests: ./test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
