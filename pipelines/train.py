"""`python -m pipelines.train RECIPE [section.key=value ...] [--overwrite]`: the entry for launchers.

    accelerate launch --config_file accelerate_config.yaml -m pipelines.train recipes/gpt/lora-manpages.yaml
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m pipelines.train recipes/gpt/lora-manpages.yaml
"""

from __future__ import annotations

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
