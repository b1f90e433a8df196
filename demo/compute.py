"""One long-lived thread for the demo's model computation: loading, generating, classifying.

Why one thread: PyTorch's CPU build parallelizes operators with OpenMP (GNU libgomp). Every thread that runs a
parallel region gets its own team of OpenMP threads, kept while that thread lives, and libgomp lets the team's
helpers spin between regions (to start the next one in microseconds) only while the process's OpenMP threads do not
outnumber the CPUs; otherwise they sleep and every region wakes them through the kernel. Decoding runs hundreds of
small regions per token, so generating on a fresh thread per request, while a Gradio worker thread that loaded the
model (or the main thread) keeps its own team, made every request decode at about 60% speed: on 2 cores, SmolLM2
greedy decoding ran at 9.5 tokens/s on a new thread against 16.7 on the thread that had loaded the model
(2026-12-07). With all model work submitted here there is one team, and its helpers spin.

The Inspect tab's analyses run here too (`on_compute`); so does everything that loads a model.

Rules that keep it deadlock-free: a job may take a model's lock (`LoadedModel.lock`), but no thread may wait for a
job (`run`, or a future's `result`) while it holds a model lock. A job that itself calls `run` runs inline.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_compute_thread: list[int] = []  # its ident, recorded when the thread starts (before its first job)


def _mark() -> None:
    _compute_thread[:] = [threading.get_ident()]


_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneforge-compute", initializer=_mark)


def on_compute_thread() -> bool:
    """Whether the caller is the compute thread."""
    return threading.get_ident() in _compute_thread


def submit(fn: Callable[..., T], *args, **kwargs) -> Future:
    """Queue `fn(*args, **kwargs)` on the compute thread (inline, as a finished future, when already on it).

    Returns:
        A `concurrent.futures.Future`; its `result()` re-raises what `fn` raised.
    """
    if on_compute_thread():
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller through the future, as the executor does
            future.set_exception(exc)
        return future
    # the caller's context variables go with the job (Gradio finds its request through them, e.g. for gr.Info)
    return _executor.submit(contextvars.copy_context().run, fn, *args, **kwargs)


def run(fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` on the compute thread, waiting for its result (re-raising what it raised)."""
    return submit(fn, *args, **kwargs).result()


def on_compute(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: every call of `fn` runs on the compute thread (see `run`); `fn` must not be a generator."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run(fn, *args, **kwargs)

    return wrapper
