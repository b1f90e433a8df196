"""Demo latencies on real runs: the generator's first token and every Inspect view, cold and warm.

    .venv/bin/python -m bench.demo runs/ [--out docs/demo-timings.json]

Calls the demo's own handlers in this process, as the Gradio server would for one user (no browser, no network
in between): a new `Handlers` per run, so "cold" includes loading the model from disk, as a user's first click
does; "warm" repeats the call with the model cached. Run names default to the main job's runs. Prints a markdown
table; `--out` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.run import machine

GENERATOR_RUN = "gpt-lora-manpages"
INSPECT_RUNS = ("gpt-pretrain-tiny", "gpt-lora-manpages", "bart-pretrain-tiny", "bart-lora-translate-en-de",
                "minilm-lora-sections")  # fmt: skip
VIEWS = ("tokens", "embeddings", "positions", "attention", "next_token", "windows")


def _seconds(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def handlers(runs_dir: Path):
    from demo.app import DEFAULT_CACHE_MB, DEFAULT_MAX_INPUT_CHARS, Handlers
    from demo.models import Registry

    return Handlers(Registry(runs_dir, DEFAULT_CACHE_MB * 2**20), DEFAULT_MAX_INPUT_CHARS)


def first_token(runs_dir: Path, run: str, prompt: str = "ls - list directory contents") -> dict:
    """Seconds from the request to the first streamed text of the Generator tab (greedy, 48 new tokens)."""
    h = handlers(runs_dir)
    out = {}
    for kind in ("cold", "warm"):
        t0 = time.perf_counter()
        stream = h.generate(run, prompt, 0.0, 1.0, 48)
        next(stream)
        out[f"first_token_{kind}_s"] = time.perf_counter() - t0
        for _ in stream:
            pass
        out[f"full_{kind}_s"] = time.perf_counter() - t0
    return out


def inspect_views(runs_dir: Path, run: str) -> dict:
    """Seconds per Inspect view for `run`: selecting the run (loads the model, prefetches), then each view cold
    (first request of that view) and warm (repeated), all with the tab's default inputs."""
    from demo.inspect_tab import DEFAULT_TEXT, Inspector

    ins = Inspector(handlers(runs_dir))
    out = {"select_run_s": _seconds(lambda: ins.controls(run))[0]}
    calls = {
        "tokens": lambda: ins.tokens(run, "run", DEFAULT_TEXT),
        "embeddings": lambda: ins.embeddings(run, "run", "file", "", "", "", 10),
        "positions": lambda: ins.positions(run, "run"),
        "attention": lambda: ins.attention(run, "run", DEFAULT_TEXT, None, _first_kind(ins, run), 0, 0, False),
        "next_token": lambda: ins.next_token(run, "run", DEFAULT_TEXT, None, 1.0, 10, 8),
        "windows": lambda: ins.windows(run, "run", 0),
    }
    for view in VIEWS:
        out[view] = {"cold_s": _seconds(calls[view])[0], "warm_s": _seconds(calls[view])[0]}
    return out


def _first_kind(ins, run: str) -> str:
    from demo.inspect_tab import ATTENTION_KINDS
    from pipelines import introspect

    return ATTENTION_KINDS[introspect.family(ins.h.registry.finetuned(run).model)][0]


def table(result: dict) -> str:
    lines = ["| run | select run | " + " | ".join(VIEWS) + " |", "|---|---:|" + "---:|" * len(VIEWS)]
    for run, views in result["inspect"].items():
        cells = [f"{views['select_run_s']:.2f}"]
        cells += [f"{views[v]['cold_s']:.2f} / {views[v]['warm_s']:.2f}" for v in VIEWS]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    gen = result["generator"]
    lines.append("")
    lines.append(f"Generator ({GENERATOR_RUN}, greedy, 48 new tokens): first token {gen['first_token_cold_s']:.2f} s "
                 f"cold (model load included) / {gen['first_token_warm_s']:.3f} s warm; whole answer "
                 f"{gen['full_cold_s']:.2f} s / {gen['full_warm_s']:.2f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--runs", default=",".join(INSPECT_RUNS), help="comma-separated runs for the Inspect views")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {"machine": machine(), "load_average_start": os.getloadavg(),
              "generator": first_token(args.runs_dir, GENERATOR_RUN), "inspect": {}}
    for run in args.runs.split(","):
        result["inspect"][run] = inspect_views(args.runs_dir, run)
    result["load_average_end"] = os.getloadavg()
    print("Inspect views, seconds, cold / warm (cold = first request of that view after selecting the run)\n")
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
