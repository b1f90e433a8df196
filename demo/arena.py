"""The Arena tab: blind A/B votes between two models of one task, and the preference ratings they add up to.

A battle draws two different contestants of the chosen task at random (a contestant is a finished run, or the base
model a run was finetuned from), in random order; both answer the same input greedily with their run's scoring
settings (as the Side by side tab does). Their names stay on the server (`gr.State`) until the user votes A / B /
tie / both bad; the vote then reveals them and is appended to `<runs>/arena-votes.jsonl`. The Leaderboard tab shows
per contestant a Bradley–Terry rating with a bootstrap interval and the vote count (`eval.ratings`), beside the
contestant's automatic primary metric.

Votes file: one JSON object per line, appended with a single ``write`` on an ``O_APPEND`` descriptor under an
exclusive ``flock``, so concurrent voters (threads of this server or other demo processes on the same folder)
never interleave or lose a line; nothing ever rewrites it. A torn last line (a crash mid-write) is skipped by the
reader.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from demo.inference import format_labels, label_probabilities, model_input, stream_text
from demo.models import Registry
from demo.session import Session, shown_in_ui, user_error
from pipelines.errors import TuneforgeError

VOTES_FILE = "arena-votes.jsonl"
CHOICES = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
BASE_PREFIX = "base: "
_PICK = random.SystemRandom()  # battles must not be predictable from the process's seeded `random`


@dataclass(frozen=True)
class Contestant:
    """A model that can enter the arena.

    Attributes:
        name: what votes and ratings call it: the run's key, or ``"base: <model>"`` for a base model.
        task: the task its answers are for.
        run_key: the run whose model (or whose base) answers.
        is_base: answer with the run's base model instead of the run.
    """

    name: str
    task: str
    run_key: str
    is_base: bool


def contestants(registry: Registry) -> dict[str, list[Contestant]]:
    """Per task, every finished run and every distinct base model a run of the task was finetuned from.

    Tasks with fewer than two contestants cannot hold a battle and are left out.
    """
    runs = registry.catalog.runs()
    listed = {run.path.resolve() for run in runs}
    by_task: dict[str, list[Contestant]] = {}
    for run in runs:
        entries = by_task.setdefault(run.task, [])
        entries.append(Contestant(run.path.name, run.task, run.path.name, False))
        base = BASE_PREFIX + run.base_model
        if run.method in ("scratch", "baseline") or any(c.name == base for c in entries):
            continue
        # A base that is itself a run of this folder (runs/gpt-pretrain-tiny) already competes under its own name.
        where = (Path(run.base_model), registry.catalog.path.parent / run.base_model)
        if not any(p.resolve() in listed for p in where):
            entries.append(Contestant(base, run.task, run.path.name, True))
    return {task: sorted(entries, key=lambda c: c.name) for task, entries in sorted(by_task.items())
            if len(entries) >= 2}


class VoteBook:
    """The append-only votes file of one runs folder.

    Args:
        root: the runs folder; the file is `root / VOTES_FILE`.
    """

    def __init__(self, root: str | Path):
        self.path = Path(root) / VOTES_FILE

    def append(self, vote: dict) -> None:
        """Append one vote as one line: a single write on an O_APPEND descriptor, under an exclusive lock."""
        line = (json.dumps(vote, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close; orders writers where appends are not atomic (NFS)
            written = os.write(fd, line)
            if written != len(line):  # a full disk: say so rather than leave half a line unexplained
                raise OSError(f"wrote {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict]:
        """Every complete vote, oldest first (a torn or garbled line is skipped)."""
        if not self.path.is_file():
            return []
        votes = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                vote = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(vote, dict):
                votes.append(vote)
        return votes


def ratings_markdown(registry: Registry, votes: list[dict]) -> str:
    """The Leaderboard's arena section: per task, each contestant's rating, 95% interval, votes and primary metric.

    Args:
        registry: the runs (for each run's automatic primary metric).
        votes: from `VoteBook.read`.

    Returns:
        Markdown; a hint when there are no votes yet.
    """
    from eval.ratings import rate

    lines = ["## Arena: blind preference ratings", ""]
    if not votes:
        return "\n".join(lines + ["No votes yet: hold a battle in the Arena tab."])
    lines += ["Bradley–Terry ratings on the Elo scale (1000 = the task's average contestant; +400 = 10:1 odds) "
              "from the blind votes in `arena-votes.jsonl`; a tie or \"both bad\" counts half a win each; "
              "95% interval: bootstrap over the votes (200 resamples, seed 12345).", ""]
    runs = {run.path.name: run for run in registry.catalog.runs()}
    base_scores = {}  # "base: <model>" -> (metric, its score as a run's metrics.json recorded it)
    for run in runs.values():
        score = (run.metrics.get("base_scores") or {}).get(run.primary_metric)
        if isinstance(score, int | float):
            base_scores.setdefault(BASE_PREFIX + run.base_model, (run.primary_metric, score))
    for task in sorted({v.get("task") for v in votes if v.get("task")}):
        lines += [f"### {task}", "", "| contestant | rating | 95% CI | votes | W / T / L | automatic metric |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in rate([v for v in votes if v.get("task") == task]):
            run = runs.get(r.name)
            if run is not None and run.primary_score is not None:
                metric = f"{run.primary_metric} {run.primary_score:.4g}"
            elif r.name in base_scores:
                metric = "{} {:.4g} (its runs' base score)".format(*base_scores[r.name])
            else:
                metric = "—"
            ci = f"[{r.interval[0]:.0f}, {r.interval[1]:.0f}]" if r.interval else "n/a"
            lines.append(f"| {r.name} | {r.rating:.0f} | {ci} | {r.votes} | {r.wins} / {r.ties} / {r.losses} "
                         f"| {metric} |")
        lines.append("")
    return "\n".join(lines)


class Arena:
    """What the Arena tab does (battle, vote), over the demo's shared session.

    Args:
        session: the demo's `Session` (registry, input limit).
    """

    def __init__(self, session: Session):
        self.session, self.registry = session, session.registry
        self.book = VoteBook(self.registry.catalog.path)

    def tasks(self) -> list[str]:
        """Tasks with at least two contestants."""
        return list(contestants(self.registry))

    def answer(self, who: Contestant, text: str, pair: str | None, max_new_tokens: int) -> str:
        """The contestant's answer to `text`: greedy text, or its top labels for a classifier."""
        if who.is_base:
            loaded, adapter_off = self.registry.base(who.run_key)
        else:
            # Not `Session.model`: its "Loading <run>" toast would name the contestant before the vote.
            loaded, adapter_off = self.registry.finetuned(who.run_key), False
        if loaded.task.demo_feed == "classify":
            takes_pair = "text_pair" in loaded.recipe.data.columns
            if takes_pair and not (pair and pair.strip()):
                raise user_error(f"second text: the {who.task} contestants classify text pairs; fill in both")
            return format_labels(label_probabilities(loaded, text, pair if takes_pair else None,
                                                     adapter_off=adapter_off))
        settings = loaded.recipe.eval.generation.model_copy(update={"do_sample": False})
        inputs = model_input(loaded, text, int(max_new_tokens))
        *_, final = "", *stream_text(loaded, inputs, settings, adapter_off=adapter_off)  # the last text is whole
        return final

    @shown_in_ui
    def battle(self, task: str | None, text: str, pair: str | None, max_new_tokens: int):
        """Draw two contestants of `task` in random order and let both answer `text`; their names stay hidden.

        Returns:
            (answer A, answer B, status markdown, battle state, 4 vote-button updates).
        """
        text = self.session.text(text, "input")
        pool = contestants(self.registry).get(task or "")
        if not pool:
            raise user_error(f"task: {task!r} has fewer than two models to compare; pick one from the list "
                             "(press Refresh runs after training more)")
        a, b = _PICK.sample(pool, 2)  # sample() draws in random order: which side is which is random too
        answers = [self.answer(who, text, pair, max_new_tokens) for who in (a, b)]
        state = {"task": task, "a": a.name, "b": b.name, "input_sha256": _digest(text), "voted": False}
        status = "Both answered. Which is better? The names are revealed after your vote."
        return (*answers, status, state, *_buttons(True))

    @shown_in_ui
    def vote(self, choice: str, state: dict | None):
        """Record the vote for the current battle (once) and reveal the contestants.

        Returns:
            (status markdown, battle state, 4 vote-button updates).
        """
        if choice not in CHOICES:
            raise TuneforgeError(f"vote: {choice!r} is not one of {', '.join(CHOICES)}")
        if not state or state.get("voted"):
            raise user_error("vote: no open battle; press Battle for a new pair")
        self.book.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "task": state["task"],
                          "a": state["a"], "b": state["b"], "winner": choice,
                          "input_sha256": state["input_sha256"]})
        state = {**state, "voted": True}
        status = (f"Your vote: {CHOICES[choice]}. A was **{state['a']}**, B was **{state['b']}**. "
                  "Press Battle for another pair.")
        return (status, state, *_buttons(False))

    def task_choices(self) -> dict:
        """The task list after a rescan of the runs (keeps the first task selected when there is none)."""
        tasks = self.tasks()
        return gr.update(choices=tasks, value=tasks[0] if tasks else None)

    def ratings(self) -> str:
        """The Leaderboard's arena section (see `ratings_markdown`)."""
        return ratings_markdown(self.registry, self.book.read())


def _digest(text: str) -> str:
    # The vote keeps which input it was about without storing what the user typed.
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _buttons(enabled: bool) -> list[dict]:
    return [gr.update(interactive=enabled) for _ in CHOICES]


def arena_tab(session: Session) -> tuple[Arena, gr.Dropdown]:
    """Arena tab (`/arena_battle`; votes only from the page); returns its handlers and its task list."""
    arena = Arena(session)
    tasks = arena.tasks()
    with gr.Tab("Arena", id="arena"):
        gr.Markdown("Two models of one task answer the same input, unnamed and in random order (greedy). Vote, and "
                    "the names are revealed; the Leaderboard turns the votes into ratings.")
        task = gr.Dropdown(choices=tasks, value=tasks[0] if tasks else None, label="Task", elem_id="arena-task")
        text = gr.Textbox(label="Input", lines=3, info=f"Up to {session.max_input_chars:,} characters.",
                          elem_id="arena-input")
        with gr.Row():
            pair = gr.Textbox(label="Second text (pair classifiers only)", lines=1, elem_id="arena-pair")
            max_tokens = gr.Slider(1, 512, value=48, step=1, label="Max new tokens", elem_id="arena-max-tokens")
        go = gr.Button("Battle", variant="primary", elem_id="arena-go")
        with gr.Row():
            out_a = gr.Textbox(label="Model A", lines=6, interactive=False, elem_id="arena-a")
            out_b = gr.Textbox(label="Model B", lines=6, interactive=False, elem_id="arena-b")
        with gr.Row():
            buttons = [gr.Button(label, interactive=False, elem_id=f"arena-vote-{key}") for key, label in
                       CHOICES.items()]
        status = gr.Markdown(elem_id="arena-status")
        state = gr.State(None)  # server-side per browser session: the names never reach the page before the vote
    go.click(arena.battle, [task, text, pair, max_tokens], [out_a, out_b, status, state, *buttons],
             api_name="arena_battle")
    for key, button in zip(CHOICES, buttons, strict=True):
        button.click(lambda s, key=key: arena.vote(key, s), state, [status, state, *buttons],
                     api_visibility="private", concurrency_limit=None)
    return arena, task
