#!/usr/bin/env bash
# The main job: install (first time), then pretrain, finetune, evaluate and compare every built-in recipe on this
# machine's offline data, writing runs/ and runs/compare.html. About 20 minutes on 2 CPU cores (measured 16.1 and 19.1 on 2026-12-07, alone: the host's speed varies).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pipelines.mainjob "$@"
