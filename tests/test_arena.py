"""The Arena (demo.arena): contestants, blind battles, the append-only votes file, and ratings on the Leaderboard."""

from __future__ import annotations

import json
import multiprocessing
import random
import threading

import gradio as gr
import pytest
from demo_fixtures import demo_root, trained_runs

import demo.arena
from demo.arena import VOTES_FILE, Arena, VoteBook, contestants, ratings_markdown
from demo.models import Registry
from demo.session import Session

pytestmark = pytest.mark.usefixtures("one_thread")


def _append_many(root: str, writer: int, n: int) -> None:
    book = VoteBook(root)
    for i in range(n):
        book.append({"writer": writer, "i": i, "pad": "x" * 5000})  # longer than a pipe buffer: no torn lines


def test_concurrent_appends_from_threads_and_processes_keep_every_line(tmp_path):
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_append_many, args=(str(tmp_path), w, 40)) for w in (0, 1)]
    threads = [threading.Thread(target=_append_many, args=(str(tmp_path), w, 40)) for w in (2, 3)]
    for worker in (*procs, *threads):
        worker.start()
    for worker in (*procs, *threads):
        worker.join()
    assert all(p.exitcode == 0 for p in procs)
    lines = (tmp_path / VOTES_FILE).read_text().splitlines()
    votes = [json.loads(line) for line in lines]  # every line whole
    assert sorted((v["writer"], v["i"]) for v in votes) == [(w, i) for w in range(4) for i in range(40)]


def test_reader_skips_a_torn_last_line(tmp_path):
    VoteBook(tmp_path).append({"a": "x", "b": "y", "winner": "a"})
    with open(tmp_path / VOTES_FILE, "a") as f:
        f.write('{"a": "x", "b"')  # a crash mid-write
    assert VoteBook(tmp_path).read() == [{"a": "x", "b": "y", "winner": "a"}]


@pytest.fixture(scope="module")
def arena(tmp_path_factory, corpus, pretrained):
    trained = trained_runs(tmp_path_factory, corpus, pretrained)
    root = demo_root(tmp_path_factory.mktemp("arena") / "runs", trained, pretrained)
    return Arena(Session(Registry(root, 256 * 2**20), 500))


def test_contestants_are_runs_and_bases_of_one_task(arena, pretrained):
    pools = contestants(arena.registry)
    causal = {c.name: c for c in pools["causal_lm"]}
    # gpt-lora's base is the pretraining run the fixtures trained outside this folder (a copy is gpt-tiny here)
    base = f"base: {pretrained}"
    assert set(causal) == {"gpt-lora", "gpt-tiny", base}
    assert causal[base].is_base and causal[base].run_key == "gpt-lora" and not causal["gpt-tiny"].is_base
    classify = {c.name: c for c in pools["classification"]}
    assert len(classify) == 2 and sum(c.is_base for c in classify.values()) == 1
    assert all(c.task == task for task, pool in pools.items() for c in pool)


def test_battle_hides_names_until_the_vote_and_the_vote_is_recorded_once(arena, monkeypatch):
    monkeypatch.setattr(demo.arena, "_PICK", random.Random(0))  # seeded draws: the test cannot flake
    pool = {c.name: c for c in contestants(arena.registry)["causal_lm"]}
    seen = set()
    for _ in range(15):  # random pairs in random order: every contestant shows up as A
        out_a, out_b, status, state, *buttons = arena.battle("causal_lm", "cmd7 - lists files", None, 8)
        seen.add(state["a"])
        assert state["a"] != state["b"] and {state["a"], state["b"]} <= set(pool)
        assert "gpt-" not in status and all(b["interactive"] for b in buttons)
        # greedy: each side's answer is what that contestant answers on its own
        assert out_a == arena.answer(pool[state["a"]], "cmd7 - lists files", None, 8)
    assert seen == set(pool)
    status, voted, *buttons = arena.vote("tie", state)
    assert f"A was **{state['a']}**, B was **{state['b']}**" in status and not any(b["interactive"] for b in buttons)
    with pytest.raises(gr.Error, match="no open battle"):
        arena.vote("a", voted)
    (vote,) = arena.book.read()
    assert vote["winner"] == "tie" and (vote["a"], vote["b"]) == (state["a"], state["b"])
    assert len(vote["input_sha256"]) == 64 and "cmd7" not in json.dumps(vote)  # the input itself is not kept


def test_a_classifier_battle_shows_labels(arena):
    out_a, out_b, *_ = arena.battle("classification", "a red cat", None, 8)
    assert " · " in out_a and " · " in out_b


def test_leaderboard_section_rates_each_contestant_beside_its_metric(arena, tmp_path):
    votes = [{"task": "causal_lm", "a": "gpt-lora", "b": "gpt-tiny", "winner": "a"}] * 3
    votes.append({"task": "causal_lm", "a": "gpt-tiny", "b": "gpt-lora", "winner": "both_bad"})
    text = ratings_markdown(arena.registry, votes)
    lora = next(line for line in text.splitlines() if line.startswith("| gpt-lora |"))
    cells = [c.strip() for c in lora.strip("|").split("|")]
    assert int(cells[1]) > 1000 and cells[3] == "4" and cells[4] == "3 / 1 / 0"
    assert cells[5].startswith("perplexity ")
    base = next(c.name for c in contestants(arena.registry)["causal_lm"] if c.is_base)  # gpt-lora scored its base
    text = ratings_markdown(arena.registry, [{"task": "causal_lm", "a": base, "b": "gpt-lora", "winner": "b"}])
    base_line = next(line for line in text.splitlines() if line.startswith(f"| {base} |"))
    base_score = arena.registry.run("gpt-lora").metrics["base_scores"]["perplexity"]
    assert f"perplexity {base_score:.4g} (its runs' base score)" in base_line
    assert "No votes yet" in ratings_markdown(arena.registry, [])
