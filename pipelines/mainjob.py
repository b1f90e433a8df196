"""The main job: every built-in recipe in dependency order, then the comparison tables.

`./main.sh` runs it on a fresh machine (see README). Finished runs are kept and skipped on a rerun
(`--overwrite` retrains everything), so an interrupted main job continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipelines import runs
from pipelines.cli import main as cli

# (tuneforge command, recipe) in dependency order: pretraining runs before the recipes that name them as base.
STEPS: list[tuple[str, str]] = [
    ("train", "recipes/gpt/pretrain-tiny.yaml"),
    ("train", "recipes/gpt/lora-manpages.yaml"),
    ("train", "recipes/gpt/chat-lora-manpages.yaml"),
    # the real SmolLM2-135M-Instruct (builtin:, offline): base vs LoRA on the same 200 test conversations
    ("train", "recipes/gpt/smollm2-chat-lora-manpages.yaml"),
    ("train", "recipes/bart/pretrain-tiny.yaml"),
    ("train", "recipes/bart/lora-summarize-manpages.yaml"),
    ("train", "recipes/bart/lora-translate-en-de.yaml"),
    ("baseline", "recipes/classifier/minilm-lora-sections.yaml"),
    ("train", "recipes/classifier/minilm-lora-sections.yaml"),
    ("train", "recipes/classifier/minilm-full-sections.yaml"),
    ("train", "recipes/classifier/minilm-head-sections.yaml"),
]
SUFFIX = {"train": "", "baseline": "-baseline"}  # the folder each command writes: runs/<run name><suffix>


def run_name(recipe_path: str) -> str:
    from pipelines.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    return recipe.run_name(recipe_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.mainjob", description=__doc__.splitlines()[0])
    parser.add_argument("--overwrite", action="store_true", help="retrain runs that already finished")
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    timings = []
    for command, recipe in STEPS:
        run_dir = Path(args.runs_dir) / (run_name(recipe) + SUFFIX[command])
        if runs.is_finished(run_dir) and not args.overwrite:
            print(f"== {recipe}: finished run in {run_dir}, skipped (--overwrite retrains)")
            continue
        print(f"== {recipe}", flush=True)
        t0 = time.perf_counter()
        # An interrupted run resumes from its last checkpoint; --overwrite starts every run afresh.
        again = ["--overwrite"] if args.overwrite or command != "train" else ["train.resume=auto"]
        code = cli([command, recipe, f"output.dir={args.runs_dir}", *again])
        timings.append((f"{command} {recipe}", time.perf_counter() - t0))
        if code:
            print(f"main job: {recipe} failed (exit {code})", file=sys.stderr)
            return code
    print("\n== comparison", flush=True)
    out = Path(args.runs_dir) / "compare.html"
    cli(["compare", args.runs_dir, "--format", "html", "--out", str(out)])
    cli(["compare", args.runs_dir])
    total = time.perf_counter() - start
    for step, seconds in timings:
        print(f"  {seconds:7.1f} s  tuneforge {step}")
    print(f"main job: {total / 60:.1f} min; tables: {out}; demo: ./.venv/bin/tuneforge demo {args.runs_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
