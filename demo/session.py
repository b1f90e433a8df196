"""What the demo's tabs share: one session over a runs folder (the registry of runs and loaded models, the input
limit, the plotting lock), the error wrapper every handler uses, and the run lists of each tab.

The tabs (`demo.app`, `demo.inspect_tab`) import this module, never each other.
"""

from __future__ import annotations

import functools
import inspect
import logging
import tempfile
import threading

import gradio as gr

from demo.models import LoadedModel, Registry
from pipelines.errors import TuneforgeError
from pipelines.runs import RunInfo
from pipelines.tasks import registry

log = logging.getLogger("demo.app")

def _tasks_fed(*feeds: str) -> tuple[str, ...]:
    """The registered tasks the demo feeds in one of these ways (`Task.demo_feed`), in the order given."""
    tasks = registry().values()
    return tuple(task.name for feed in feeds for task in tasks if task.demo_feed == feed)


# Which runs each tab offers, by the task recorded in metrics.json.
TAB_TASKS = {
    "generator": _tasks_fed("continue"),
    "chat": _tasks_fed("turn"),
    "seq2seq": _tasks_fed("source"),
    "classify": _tasks_fed("classify"),
    "side_by_side": _tasks_fed("continue", "turn", "source", "classify"),
    "details": None,  # every run
    "inspect": None,  # every run (demo/inspect_tab.py)
}


def user_error(message: str) -> gr.Error:
    """An error message for the UI; no traceback in the server log (bad input is not a server problem)."""
    return gr.Error(message, print_exception=False)


def shown_in_ui(fn):
    """Turn any failure of a handler into an error message in the UI; the server keeps serving.

    `TuneforgeError` (bad input the user can fix) shows its own message; anything else is logged with its
    traceback and shown by type and message. Works for plain and generator (streaming) handlers.
    """

    def convert(exc: Exception) -> gr.Error:
        if isinstance(exc, TuneforgeError):
            return user_error(str(exc))
        log.exception("demo handler %s failed", fn.__name__)
        return user_error(f"{type(exc).__name__}: {exc} (details in the server log)")

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise convert(exc) from exc

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise convert(exc) from exc

    return call


class Session:
    """The state every tab shares, over one runs folder.

    Args:
        registry: the runs and the model cache.
        max_input_chars: longest text accepted from the UI (characters).
    """

    def __init__(self, registry: Registry, max_input_chars: int):
        self.registry = registry
        self.max_input_chars = max_input_chars
        self.charts = tempfile.TemporaryDirectory(prefix="tuneforge-demo-")  # removed when the app goes away
        self.plot_lock = threading.Lock()  # matplotlib's pyplot is not thread-safe

    # -- shared checks ------------------------------------------------------------------------------------------

    def text(self, value: str | None, what: str) -> str:
        """The user's text, refused (with a message) when empty or over the length limit."""
        if value is None or not str(value).strip():
            raise user_error(f"{what}: empty; type some text first")
        if len(value) > self.max_input_chars:
            raise user_error(
                f"{what}: {len(value):,} characters is over this demo's limit of {self.max_input_chars:,}; shorten it"
            )
        return value

    def model(self, key: str | None, tab: str) -> LoadedModel:
        """The run's model, checked to belong to `tab`; says so in the UI when it loads for the first time."""
        run = self.registry.run(key)
        tasks = TAB_TASKS[tab]
        if tasks is not None and run.task not in tasks:
            raise TuneforgeError(f"run: {run.name!r} is a {run.task} run; this tab serves {', '.join(tasks)} runs")
        if run.path.name not in self.registry.cache.keys:
            gr.Info(f"Loading {run.name} (first use)")
        return self.registry.finetuned(key)

    @staticmethod
    def notes(notes: list[str]) -> None:
        for note in notes:
            gr.Warning(note)


def run_choices(registry: Registry, tab: str) -> list[tuple[str, str]]:
    """(label shown, run key) for the runs a tab serves."""
    runs: list[RunInfo] = registry.catalog.runs(TAB_TASKS[tab], with_base=tab == "side_by_side")
    return [(run.label, run.path.name) for run in runs]


def run_dropdown(registry: Registry, tab: str) -> gr.Dropdown:
    """The runs `tab` serves, labelled with task, base and primary score; the first one selected."""
    choices = run_choices(registry, tab)
    return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None, label="Run", elem_id=f"{tab}-run")
