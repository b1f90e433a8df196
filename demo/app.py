"""The Gradio app: every finished run under a folder, one tab per model family.

`tuneforge demo runs/` calls `launch("runs/")`. Tabs: Generator (streamed continuation), Chat (multi-turn,
streamed, the run's own chat template), Translate / Summarize (beam search), Classify (label probabilities),
Side by side (base model and finetuned run on one input), Leaderboard (`tuneforge compare` tables, bar and
quality-vs-cost charts, the Arena's preference ratings, per-run recipe, metrics and loss curve), Arena (blind A/B
votes between two models of one task; `demo.arena`) and Inspect (tokens, embeddings, positions, attention, next-token
probabilities and pretraining windows of any run or its base; `demo.inspect_tab`). The layouts are in `demo.tabs`;
this module holds what each tab does (`Handlers`) and serves the app.

Safe defaults: binds 127.0.0.1 and makes no public share link unless asked; inputs are limited in length with a
visible message; a queue with a concurrency limit; every error becomes a message in the UI while the server keeps
serving; models load from safetensors with remote code disabled (`pipelines.modeling`); the UI only offers runs it
discovered and never takes a file path.
"""

from __future__ import annotations

import base64
import errno
import html
import logging
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from demo.arena import VoteBook, arena_tab, ratings_markdown
from demo.inference import (
    chat_input,
    decoding,
    format_labels,
    label_probabilities,
    model_input,
    stream_text,
)
from demo.inspect_tab import inspect_tab
from demo.models import LoadedModel, Registry
from demo.page import EarlyScript
from demo.session import TAB_TASKS, Session, run_choices, shown_in_ui, user_error
from demo.tabs import chat_tab, classify_tab, generator_tab, leaderboard_tab, seq2seq_tab, side_by_side_tab
from pipelines.errors import TuneforgeError

log = logging.getLogger(__name__)

DEFAULT_CACHE_MB = 2048  # loaded models' parameter + buffer bytes; least recently used models are dropped first
DEFAULT_MAX_INPUT_CHARS = 4000
DEFAULT_CONCURRENCY = 2  # requests computing at once; the rest wait in the queue (CPU inference is compute-bound)
HISTORY_LIMIT = 20  # a chat conversation may hold this many times the input limit (older turns are cut anyway)
QUEUE_SIZE = 64  # waiting requests beyond this are refused with "queue is full" instead of piling up
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Gradio's queue looks for waiting events every 1 ms while it is idle or full, and for progress updates every 10 ms
# (`gradio.queueing.Queue.sleep_when_free` / `progress_update_sleep_when_free`; no public setting): ~1,100 wake-ups
# a second of the server's event loop, each taking the GIL and a core from the model's compute threads. A request
# now waits at most 20 ms more to start, far below what a person notices; a streamed SmolLM2 answer in the browser
# went from 11.8 to 13.2 tokens/s on 2 cores (docs/smollm2.md).
QUEUE_POLL_SECONDS = {"sleep_when_free": 0.02, "progress_update_sleep_when_free": 0.1}

class Handlers:
    """What each tab does, over one runs folder.

    Args:
        registry: the runs and the model cache.
        max_input_chars: longest text accepted from the UI (characters).
    """

    def __init__(self, registry: Registry, max_input_chars: int):
        self.session = Session(registry, max_input_chars)  # shared with the Inspect tab
        self.registry, self.max_input_chars = registry, max_input_chars

    # -- tabs ---------------------------------------------------------------------------------------------------

    @shown_in_ui
    def generate(self, run: str, prompt: str, temperature: float, top_p: float, max_new_tokens: int):
        """Generator tab: the continuation of `prompt`, streamed; temperature 0 is greedy (deterministic)."""
        text = self.session.text(prompt, "prompt")
        loaded = self.session.model(run, "generator")
        settings = decoding(max_new_tokens, temperature, top_p)
        inputs = model_input(loaded, text, settings.max_new_tokens)
        self.session.notes(inputs.notes)
        yield from stream_text(loaded, inputs, settings)

    @shown_in_ui
    def chat(self, run: str, message: str, history: list | None, temperature: float, top_p: float,
             max_new_tokens: int):  # fmt: skip
        """Chat tab: the conversation with the answer streamed in; clears the message box."""
        text = self.session.text(message, "message")
        turns = plain_history(history) + [{"role": "user", "content": text}]
        if sum(len(turn["content"]) for turn in turns) > HISTORY_LIMIT * self.max_input_chars:
            raise user_error("conversation: too long for this demo; press Clear and start a new one")
        loaded = self.session.model(run, "chat")
        settings = decoding(max_new_tokens, temperature, top_p)
        inputs = chat_input(loaded, turns, settings.max_new_tokens)
        self.session.notes(inputs.notes)
        yield turns, ""
        for answer in stream_text(loaded, inputs, settings):
            # A chat bubble does not show leading whitespace; strip it so the value is what the user sees.
            yield turns + [{"role": "assistant", "content": answer.lstrip()}], ""

    @shown_in_ui
    def seq2seq(self, run: str, source: str, num_beams: int, length_penalty: float, no_repeat_ngram_size: int,
                max_new_tokens: int):  # fmt: skip
        """Translate / Summarize tab: the generated target (one piece with beam search, streamed without)."""
        text = self.session.text(source, "source text")
        loaded = self.session.model(run, "seq2seq")
        settings = decoding(max_new_tokens, 0.0, 1.0, num_beams, length_penalty, no_repeat_ngram_size)
        inputs = model_input(loaded, text, settings.max_new_tokens)
        self.session.notes(inputs.notes)
        yield from stream_text(loaded, inputs, settings)

    @shown_in_ui
    def classify(self, run: str, text: str, pair: str | None) -> dict[str, float]:
        """Classify tab: probability per label, highest first."""
        text = self.session.text(text, "text")
        loaded = self.session.model(run, "classify")
        pair = self._pair(loaded, pair)
        return label_probabilities(loaded, text, pair)

    @shown_in_ui
    def side_by_side(self, run: str, text: str, max_new_tokens: int):
        """Side by side tab: the base model's output, then the finetuned run's, both greedy."""
        text = self.session.text(text, "input")
        tuned = self.session.model(run, "side_by_side")
        base, adapter_off = self.registry.base(run)
        if tuned.task.demo_feed == "classify":
            before = label_probabilities(base, text, adapter_off=adapter_off)
            yield format_labels(before), format_labels(label_probabilities(tuned, text))
            return
        # The run's own scoring settings (e.g. beams for seq2seq), greedy so both sides are reproducible.
        settings = tuned.recipe.eval.generation.model_copy(update={"do_sample": False})
        inputs = model_input(tuned, text, int(max_new_tokens))
        self.session.notes(inputs.notes)
        before = ""
        for before in stream_text(base, inputs, settings, adapter_off=adapter_off):
            yield before, ""
        for after in stream_text(tuned, inputs, settings):
            yield before, after

    @shown_in_ui
    def leaderboard(self) -> tuple[str, str]:
        """Leaderboard tab: the comparison tables (markdown), and per table a bar chart and the quality-vs-cost
        figure with its Pareto front (HTML, embedded PNGs)."""
        from eval.compare import bar_chart_png, build_tables, chart_name, collect_runs, render_markdown
        from eval.pareto import pareto_name, pareto_png
        from eval.uncertainty import add_intervals

        root = self.registry.catalog.root
        runs, problems = collect_runs([self.registry.catalog.path])
        if not runs and not problems:
            return f"No runs under `{root}` yet. Train one: `tuneforge train recipes/gpt/pretrain-tiny.yaml`", ""
        tables = build_tables(runs)
        for table in tables:  # paired-bootstrap intervals and ties, as `tuneforge compare` prints them
            add_intervals(table)
        with self.session.plot_lock:
            folder = Path(self.session.charts.name)
            charts = []
            for t in tables:
                charts += [(t.title, bar_chart_png(t, folder / chart_name(t))),
                           (f"{t.title}: quality vs cost (Pareto front)", pareto_png(t, folder / pareto_name(t)))]
        arena = ratings_markdown(self.registry, VoteBook(self.registry.catalog.path).read())
        return render_markdown(tables, problems) + "\n" + arena, charts_html(charts)

    @shown_in_ui
    def run_details(self, run: str | None) -> tuple[str, dict, str | None]:
        """Leaderboard tab: one run's resolved recipe, metrics.json and loss curve picture (empty: no run picked)."""
        from eval.plots import loss_curve_png

        if not run:
            return "", {}, None
        info = self.registry.run(run)
        recipe = (info.path / "recipe.yaml").read_text(encoding="utf-8")
        picture = Path(self.session.charts.name) / f"loss-{info.path.name}.png"
        with self.session.plot_lock:
            try:
                curve = str(loss_curve_png(info.path / "log.jsonl", picture))
            except TuneforgeError as exc:  # nothing logged: show the rest anyway
                gr.Warning(str(exc))
                curve = None
        return recipe, info.metrics, curve

    def side_labels(self, run: str | None) -> tuple[dict, dict]:
        """Side by side: name the two outputs after the run's base and the run."""
        found = next((r for r in self.registry.catalog.runs() if r.path.name == run), None)
        if found is None:
            return gr.update(label="Base model"), gr.update(label="Finetuned run")
        return gr.update(label=f"Base: {found.base_model}"), gr.update(label=f"Finetuned: {found.name}")

    def seq2seq_defaults(self, run: str | None) -> tuple[dict, dict, dict, dict]:
        """Translate / Summarize: start the beam controls at the settings the run was scored with."""
        from pipelines.runs import load_run_recipe

        try:
            gen = load_run_recipe(self.registry.catalog.get(run).path).eval.generation
        except TuneforgeError:
            return gr.update(), gr.update(), gr.update(), gr.update()
        return (gr.update(value=gen.num_beams), gr.update(value=gen.length_penalty),
                gr.update(value=gen.no_repeat_ngram_size), gr.update(value=gen.max_new_tokens))  # fmt: skip

    def refresh(self, *selected: str | None) -> list:
        """Rescan the runs folder: the header and every tab's run list (keeping each selection that still exists)."""
        self.registry.catalog.refresh()
        updates: list = [header_text(self.registry)]
        for tab, current in zip(TAB_TASKS, selected, strict=True):
            choices = run_choices(self.registry, tab)
            keys = [key for _, key in choices]
            value = current if current in keys else (keys[0] if keys else None)
            updates.append(gr.update(choices=choices, value=value))
        return updates

    def _pair(self, loaded: LoadedModel, pair: str | None) -> str | None:
        takes_pairs = "text_pair" in loaded.recipe.data.columns
        if pair and pair.strip() and not takes_pairs:
            gr.Warning(f"{loaded.key} classifies single texts; the second text is ignored")
        if not takes_pairs:
            return None
        return self.session.text(pair, "second text")


def plain_history(history: list | None) -> list[dict]:
    """Chatbot messages (Gradio 6 gives `content` as a list of typed parts) -> `{"role", "content": str}`."""
    out = []
    for message in history or []:
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            continue
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append({"role": role, "content": str(content or "")})
    return out


def charts_html(charts: list[tuple[str, Path]]) -> str:
    """PNG charts as one HTML block (embedded as data URIs, so nothing on disk is served to the browser)."""
    figures = []
    for title, path in charts:
        path = Path(path)
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        width = 1500 if path.name.endswith("-pareto.png") else 700  # the Pareto figure has three panels
        figures.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}" '
                       f'style="max-width: {width}px; width: 100%"><figcaption>{html.escape(title)}</figcaption>'
                       '</figure>')
    return "\n".join(figures)


def header_text(registry: Registry) -> str:
    """The line above the tabs: how many runs, from where, and the cache budget."""
    runs = registry.catalog.runs()
    count = f"{len(runs)} finished run{'s' if len(runs) != 1 else ''}"
    hint = "" if runs else " Train one (`tuneforge train recipes/gpt/pretrain-tiny.yaml`), then press Refresh runs."
    limit = registry.cache.max_bytes / 2**20
    return (
        f"## tuneforge demo\nServing {count} from `{registry.catalog.root}`.{hint} Models load on first use and "
        f"stay cached up to {limit:,.0f} MiB."
    )


def build_app(
    runs_dir: str | Path,
    *,
    cache_mb: int = DEFAULT_CACHE_MB,
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> gr.Blocks:
    """The demo app over every finished run under `runs_dir` (not started; see `serve` / `launch`).

    Args:
        runs_dir: the folder holding run folders (`runs/`).
        cache_mb: memory budget for loaded models (parameter + buffer MiB); least recently used go first.
        max_input_chars: longest text accepted per input box.
        concurrency: requests computed at once; others wait in the queue.

    Returns:
        The Blocks app with its queue configured.

    Raises:
        TuneforgeError: `runs_dir` is not a directory.
    """
    handlers = Handlers(Registry(runs_dir, cache_mb * 2**20), max_input_chars)
    with gr.Blocks(title="tuneforge demo", analytics_enabled=False) as app:
        with gr.Row():
            header = gr.Markdown(header_text(handlers.registry), elem_id="header")
            refresh = gr.Button("Refresh runs", size="sm", scale=0, min_width=120, elem_id="refresh")
        with gr.Tabs():
            generator_run, chat_run = generator_tab(handlers), chat_tab(handlers)
            seq2seq_run, beam_controls = seq2seq_tab(handlers)
            classify_run, side_run = classify_tab(handlers), side_by_side_tab(handlers)
            details_run, board, details = leaderboard_tab(handlers)
            inspect_run = inspect_tab(handlers.session)
            arena, arena_task = arena_tab(handlers.session)
        dropdowns = [generator_run, chat_run, seq2seq_run, classify_run, side_run, details_run,
                     inspect_run]  # TAB_TASKS order
        # Cheap file-system reads: never stuck behind generations waiting for the concurrency limit.
        refresh.click(handlers.refresh, dropdowns, [header, *dropdowns], api_name="refresh_runs",
                      concurrency_limit=None).then(arena.task_choices, None, arena_task, api_visibility="private",
                                                   concurrency_limit=None)  # fmt: skip
        # A page (re)load sees runs finished since the app started, starts the beam controls at the selected
        # run's scoring settings, and fills the leaderboard.
        loaded = app.load(handlers.refresh, dropdowns, [header, *dropdowns], api_visibility="private",
                          concurrency_limit=None)  # fmt: skip
        loaded.then(handlers.seq2seq_defaults, seq2seq_run, beam_controls, api_visibility="private",
                    concurrency_limit=None)  # fmt: skip
        loaded.then(handlers.run_details, details_run, details, api_visibility="private")
        app.load(handlers.leaderboard, None, board, api_visibility="private")
    app.queue(default_concurrency_limit=concurrency, max_size=QUEUE_SIZE)
    relax_queue_polling(app)
    app.handlers = handlers  # the registry (cache, catalog) behind the app, for callers that manage it
    return app


# Gradio's prose style lets table cells break anywhere, so a narrow leaderboard split numbers mid-word ("0.3|266").
# Cells keep their text on one line; a table wider than the page scrolls sideways instead.
CSS = """
#leaderboard-tables table { display: block; max-width: 100%; overflow-x: auto; }
#leaderboard-tables th, #leaderboard-tables td { white-space: nowrap; overflow-wrap: normal; word-break: normal; }
"""


def relax_queue_polling(app: gr.Blocks) -> None:
    """Set the queue's polling intervals to `QUEUE_POLL_SECONDS` (after `app.queue()`, before launch).

    A Gradio version without these attributes keeps its own polling, with a warning (nothing breaks).
    """
    queue = getattr(app, "_queue", None)
    for name, seconds in QUEUE_POLL_SECONDS.items():
        if not isinstance(getattr(queue, name, None), (int, float)):
            log.warning("demo: this Gradio's queue has no %s; its default polling is kept", name)
            continue
        setattr(queue, name, seconds)


def serve(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> str:
    """Start the app's server in the background.

    Args:
        app: from `build_app`.
        host: interface to bind; anything but loopback makes the demo reachable from other machines.
        port: TCP port.
        share: also create a public gradio.live link (off unless asked: it exposes the models to anyone).

    Returns:
        The local URL.
    """
    if host not in LOOPBACK:
        log.warning("demo: binding %s makes it reachable from other machines", host)
    check_address(host, port)
    try:
        app.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=True, show_error=True, quiet=True,
            ssr_mode=False, mcp_server=False, css=CSS,
            app_kwargs={"middleware": [Middleware(EarlyScript)]},  # demo/page.py
        )  # fmt: skip
    except OSError as exc:  # gradio: "Cannot find empty port in range: ..." (taken between the check and the start)
        raise TuneforgeError(f"--port: cannot serve on {host}:{port} ({exc}); pick a free port with --port") from None
    return app.local_url


def check_address(host: str, port: int) -> None:
    """The demo can bind `host:port`: a port in 1-65535 that no other program holds, a host of this machine.

    Checked by binding a socket and closing it at once, before the models are loaded (gradio's own failure comes
    after the app is built and reads "Cannot find empty port").

    Raises:
        TuneforgeError: the port is out of range, in use, or the host cannot be bound here.
    """
    import socket

    if not 1 <= port <= 65535:
        raise TuneforgeError(f"--port: {port} is not a TCP port; give one between 1 and 65535 (default 7860)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TuneforgeError(f"--host: {host!r} is not a known host name or address ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TuneforgeError(
                    f"--port: {port} on {host} is in use by another program (another demo?); pick another with "
                    f"--port {port + 1}, or stop that program"
                ) from None
            raise TuneforgeError(
                f"--host/--port: cannot serve on {host}:{port} ({exc.strerror}); use --host 127.0.0.1 and a port "
                "above 1023 (lower ones need root)"
            ) from None


def launch(runs_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **options) -> None:
    """`tuneforge demo`: build the app over `runs_dir`, serve it and block until interrupted.

    Args:
        runs_dir: the folder holding run folders.
        host, port, share: see `serve`.
        **options: `build_app` keyword options (cache_mb, max_input_chars, concurrency).

    Raises:
        TuneforgeError: `runs_dir` is not a directory.
    """
    check_address(host, port)  # before loading anything: a taken port fails in a second, not after the models load
    app = build_app(runs_dir, **options)
    url = serve(app, host, port, share)
    count = len(app.handlers.registry.catalog.runs())
    print(f"tuneforge demo: {count} run(s) from {runs_dir} at {url}" + (f" and {app.share_url}" if share else ""))
    try:
        app.block_thread()
    finally:
        app.close()
