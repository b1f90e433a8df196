"""Demo latencies on real runs: the generator's first token and every Inspect view, cold and warm.

    .venv/bin/python -m bench.demo runs/ [--out FILE.json] [--browser docs/inspect]
    .venv/bin/python -m bench.demo runs/ --side-by-side smollm2-chat-lora-manpages --shot docs/smollm2-side-by-side.png

Calls the demo's own handlers in this process, as the Gradio server would for one user (no browser, no network
in between): a new `Handlers` per run, so "cold" includes loading the model from disk, as a user's first click
does; "warm" repeats the call with the model cached. With `--browser DIR` it also serves the app and, in headless
Chromium, clicks each Inspect view's button and times it until the result is on screen (images decoded), then
saves a full-page screenshot per run into DIR. Run names default to the main job's runs. Prints markdown tables;
`--out` also writes the numbers as JSON.

With `--side-by-side RUN` it does only this instead: serves the app, asks RUN's base model and RUN itself one chat
question in the Side by side tab in headless Chromium (greedy, the run's own `eval.generation.max_new_tokens`),
prints both answers and the seconds from the click to both answers on screen, and saves the page as `--shot`
(docs/smollm2-side-by-side.png for the main job's SmolLM2 chat run: take it from the main job's runs/ folder only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from bench.run import machine

GENERATOR_RUN = "gpt-lora-manpages"
# Families alternate: in the browser a view counts as rendered when its content changes, and a LoRA run shows the
# same position table (and tokens) as its base.
INSPECT_RUNS = ("gpt-pretrain-tiny", "bart-pretrain-tiny", "minilm-lora-sections", "gpt-lora-manpages",
                "bart-lora-translate-en-de")  # fmt: skip
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


CHAT_RUN = "gpt-chat-lora-manpages"
CHAT_TURNS = ("What does the ls command do?", "And what does the grep command do?", "What is cp for?")


def chat_transcript(runs_dir: Path, run: str = CHAT_RUN) -> list[dict]:
    """A multi-turn conversation through the Chat tab's handler (greedy, 48 new tokens a turn)."""
    h = handlers(runs_dir)
    history: list[dict] = []
    for message in CHAT_TURNS:
        *_, (history, _) = h.chat(run, message, history, 0.0, 1.0, 48)  # the last update holds the whole answer
    return history


def inspect_views(runs_dir: Path, run: str) -> dict:
    """Seconds per Inspect view for `run`: selecting the run (loads the model, prefetches), then each view cold
    (first request of that view) and warm (repeated), all with the tab's default inputs."""
    from demo.inspect_tab import DEFAULT_TEXT, Inspector

    ins = Inspector(handlers(runs_dir).session)
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


# Per view: the button, and the element whose content changes once the result is on screen.
BROWSER_VIEWS = {
    "tokens": ("#inspect-tokens-go", "#inspect-tokens"),
    "embeddings": ("#inspect-emb-go", "#inspect-neighbours"),
    "positions": ("#inspect-pos-go", "#inspect-positions"),
    "attention": ("#inspect-att-go", "#inspect-attention"),
    "next_token": ("#inspect-next-go", "#inspect-topk"),
    "windows": ("#inspect-win-go", "#inspect-win-note"),
}
# True once `selector`'s HTML differs from `before`, nothing in the page is pending and every image is decoded.
SETTLED = """([selector, before]) => {
    const el = document.querySelector(selector);
    if (!el || el.innerHTML === before || document.querySelector('.pending, .generating')) return false;
    return [...el.querySelectorAll('img')].every(img => img.complete && img.naturalWidth > 0);
}"""


def serve_runs(runs_dir: Path):
    """The demo app on `runs_dir`, served on a free local port in the background.

    Returns:
        (app, url); `app.close()` stops it.
    """
    import socket

    from demo.app import build_app, serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = build_app(runs_dir)
    return app, serve(app, "127.0.0.1", port)


def _open_page(playwright, timeout_ms: int):
    """Debian's headless Chromium (no sandbox as root, no background network) and one 1280x900 page.

    Returns:
        (browser, page); close the browser when done.
    """
    browser = playwright.chromium.launch(
        executable_path=shutil.which("chromium") or "/usr/bin/chromium",
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
              "--no-first-run", "--disable-sync"],
    )
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(timeout_ms)
    return browser, page


def browser_views(runs_dir: Path, runs: list[str], shots: Path) -> dict:
    """Seconds from clicking each Inspect view's button to its result on screen, per run, in headless Chromium."""
    import re

    from playwright.sync_api import sync_playwright

    app, url = serve_runs(runs_dir)
    shots.mkdir(parents=True, exist_ok=True)
    out = {}
    try:
        with sync_playwright() as p:
            browser, page = _open_page(p, timeout_ms=120_000)
            page.goto(url)
            page.locator("#header").wait_for()
            page.get_by_role("tab", name="Inspect").click()
            for run in runs:
                page.locator("#inspect-run input").click()
                page.get_by_role("option", name=re.compile(rf"^{re.escape(run)} \(")).click()
                t0 = time.perf_counter()
                page.wait_for_function("() => !document.querySelector('.pending, .generating')")
                out[run] = {"select_run_s": time.perf_counter() - t0}
                for view, (button, result) in BROWSER_VIEWS.items():
                    before = page.locator(result).inner_html()
                    t0 = time.perf_counter()
                    page.locator(button).click()
                    page.wait_for_function(SETTLED, arg=[result, before], polling=20)
                    out[run][view] = time.perf_counter() - t0
                for button in page.locator(".toast-close").all():
                    if button.is_visible():
                        button.click()
                page.screenshot(path=str(shots / f"{run}.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    return out


SIDE_QUESTION = "What does the ls command do?"


def side_by_side_shot(runs_dir: Path, run: str, question: str, shot: Path) -> dict:
    """The Side by side tab for `run` in headless Chromium: both answers, the seconds until both are on screen, and
    a screenshot of the page saved as `shot`."""
    import re

    from playwright.sync_api import sync_playwright

    from pipelines.runs import load_run_recipe

    new_tokens = load_run_recipe(runs_dir / run).eval.generation.max_new_tokens
    app, url = serve_runs(runs_dir)
    shot.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            # two 135M-parameter models loading on a busy 2-core CPU
            browser, page = _open_page(p, timeout_ms=600_000)
            page.goto(url)
            page.locator("#header").wait_for()
            page.get_by_role("tab", name="Side by side").click()
            page.locator("#side_by_side-run input").click()
            page.get_by_role("option", name=re.compile(rf"^{re.escape(run)} \(")).click()
            page.locator("#side-input textarea").fill(question)
            box = page.locator("#side-max-tokens input[type=number]")
            box.fill(str(new_tokens))
            box.press("Enter")
            t0 = time.perf_counter()
            page.locator("#side-go").click()
            page.wait_for_function(
                "() => document.querySelector('#side-tuned textarea').value"
                " && !document.querySelector('.pending, .generating')", polling=100)  # fmt: skip
            seconds = time.perf_counter() - t0
            for button in page.locator(".toast-close").all():
                if button.is_visible():
                    button.click()
            page.wait_for_function("() => !document.querySelector('.toast-body')", timeout=15_000)  # faded out
            page.screenshot(path=str(shot), full_page=True)
            out = {"run": run, "question": question, "max_new_tokens": new_tokens, "seconds": seconds,
                   "base": page.locator("#side-base textarea").input_value(),
                   "finetuned": page.locator("#side-tuned textarea").input_value(), "screenshot": str(shot)}
            browser.close()
    finally:
        app.close()
    return out


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
    if result.get("browser"):
        lines += ["", "In the browser, seconds from the click to the result on screen (first click of each view):", "",
                  "| run | " + " | ".join(VIEWS) + " |", "|---|" + "---:|" * len(VIEWS)]
        for run, views in result["browser"].items():
            lines.append(f"| {run} | " + " | ".join(f"{views[v]:.2f}" for v in VIEWS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--runs", default=",".join(INSPECT_RUNS), help="comma-separated runs for the Inspect views")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--browser", type=Path, default=None, metavar="DIR",
                        help="also time the views in headless Chromium; screenshots go to DIR")
    parser.add_argument("--side-by-side", default=None, metavar="RUN",
                        help="only take the Side by side screenshot of RUN's base and RUN on one question")
    parser.add_argument("--question", default=SIDE_QUESTION, help="the question for --side-by-side")
    parser.add_argument("--shot", type=Path, default=Path("docs/smollm2-side-by-side.png"),
                        help="where --side-by-side saves its screenshot")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.side_by_side:
        side = {"machine": machine(), "load_average_start": os.getloadavg(),
                **side_by_side_shot(args.runs_dir, args.side_by_side, args.question, args.shot),
                "load_average_end": os.getloadavg()}
        print(f"Side by side ({side['run']}, greedy, {side['max_new_tokens']} new tokens, {side['seconds']:.1f} s "
              f"from the click to both answers on screen; load average {side['load_average_start'][0]:.1f}):\n\n"
              f"> **user**: {side['question']}\n\n**base**: {side['base']}\n\n**finetuned**: {side['finetuned']}\n\n"
              f"screenshot: {side['screenshot']}")
        if args.out:
            args.out.write_text(json.dumps(side, indent=1))
        return 0
    result = {"machine": machine(), "load_average_start": os.getloadavg(),
              "generator": first_token(args.runs_dir, GENERATOR_RUN), "inspect": {}}
    for run in args.runs.split(","):
        result["inspect"][run] = inspect_views(args.runs_dir, run)
    if args.browser:
        result["browser"] = browser_views(args.runs_dir, args.runs.split(","), args.browser)
    result["chat"] = chat_transcript(args.runs_dir)
    result["load_average_end"] = os.getloadavg()
    print("Inspect views, seconds, cold / warm (cold = first request of that view after selecting the run)\n")
    print(table(result))
    print(f"\nChat tab transcript ({CHAT_RUN}, greedy):\n")
    for turn in result["chat"]:
        print(f"> **{turn['role']}**: {turn['content']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
