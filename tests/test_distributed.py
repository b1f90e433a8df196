"""Two CPU processes (gloo) give the same run as one: loss curve, scores, weights; resume; LoRA + checkpointing.

A 2-process run with micro-batch 4 and the same global batch (8) as a 1-process run accumulating 2 x 4 must see
the same examples at every step and weight every token equally, so everything matches to float tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_gpt_raw, tiny_lora_raw, torchrun
from safetensors.torch import load_file

from pipelines import loop
from pipelines.recipe import build_recipe
from pipelines.runs import read_log


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in read_log(run_dir) if "loss" in row]


def assert_same_run(one: Path, two: Path, rtol: float = 1e-4):
    m1, m2 = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert m2["train"]["processes"] == 2 and m1["train"]["processes"] == 1
    assert m1["train"]["examples"] == m2["train"]["examples"] and m1["train"]["tokens"] == m2["train"]["tokens"]
    assert losses(two) == pytest.approx(losses(one), rel=rtol)
    for key, value in m1["scores"].items():
        if isinstance(value, float):
            assert m2["scores"][key] == pytest.approx(value, rel=rtol), key
    assert m1["dataset"] == m2["dataset"]
    # exactly one process wrote: one log line per logging step, no duplicates
    steps = [row["step"] for row in read_log(two) if "loss" in row]
    assert steps == sorted(set(steps))


def test_causal_lm_two_processes_equal_one(corpus, tmp_path):
    # Validation perplexity at steps 4 and 8 and the final one, the best of them kept as model/.
    common = {"max_steps": 10, "micro_batch_size": 4, "log_every": 2, "eval_every": 4, "select_best": "perplexity"}
    one = tiny_gpt_raw(corpus, tmp_path, "one", gradient_accumulation_steps=2, **common)
    two = tiny_gpt_raw(corpus, tmp_path, "two", **common)
    loop.train(build_recipe(one), tmp_path / "one")
    torchrun(two, tmp_path)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    evals = [[row for row in read_log(run) if "eval_loss" in row] for run in (tmp_path / "one", tmp_path / "two")]
    assert [row["step"] for row in evals[1]] == [row["step"] for row in evals[0]] == [4, 8, 10]
    for a, b in zip(*evals, strict=True):
        assert b == pytest.approx(a, rel=1e-4)
    selections = [json.loads((tmp_path / r / "metrics.json").read_text())["selection"] for r in ("one", "two")]
    assert selections[1]["step"] == selections[0]["step"]
    a, b = load_file(tmp_path / "one/model/model.safetensors"), load_file(tmp_path / "two/model/model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-5)


def test_two_process_resume_matches_uninterrupted(corpus, tmp_path):
    raw = tiny_gpt_raw(corpus, tmp_path, "full2", max_steps=8, micro_batch_size=4, log_every=2)
    raw["model"]["scratch"]["dropout"] = 0.1  # both processes' RNG states must come back
    torchrun(raw, tmp_path)
    stopped = {**raw, "output": {**raw["output"], "name": "resumed2"}}
    torchrun(stopped, tmp_path, "train.stop_after_steps=4")
    assert sorted(p.name for p in (tmp_path / "resumed2/checkpoints").iterdir()) == ["step_4"]
    torchrun(stopped, tmp_path, "train.resume=auto")
    a = load_file(tmp_path / "full2/model/model.safetensors")
    b = load_file(tmp_path / "resumed2/model/model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert losses(tmp_path / "resumed2") == losses(tmp_path / "full2")


def test_lora_with_gradient_checkpointing_trains_under_ddp(pretrained, corpus, tmp_path):
    raw = tiny_lora_raw(corpus, tmp_path, pretrained, "gc", max_steps=6, micro_batch_size=4, log_every=2)
    raw["model"]["gradient_checkpointing"] = True
    torchrun(raw, tmp_path)
    metrics = json.loads((tmp_path / "gc/metrics.json").read_text())
    assert metrics["train"]["processes"] == 2
    assert metrics["scores"]["perplexity"] < metrics["base_scores"]["perplexity"]


def test_dropout_two_processes_equal_one(pretrained, corpus, tmp_path):
    """LoRA dropout draws its masks per global micro-batch (`loop.micro_seed`), not from each process's stream:
    1 process accumulating 2 x 4 and 2 processes x 4 give the same losses, validation scores and best step."""
    common = {"max_steps": 8, "micro_batch_size": 4, "log_every": 2, "eval_every": 4, "select_best": "perplexity"}
    one = tiny_lora_raw(corpus, tmp_path, pretrained, "drop1", gradient_accumulation_steps=2, **common)
    two = tiny_lora_raw(corpus, tmp_path, pretrained, "drop2", **common)
    for raw in (one, two):
        raw["lora"]["dropout"] = 0.3
    loop.train(build_recipe(one), tmp_path / "drop1")
    torchrun(two, tmp_path)
    assert_same_run(tmp_path / "drop1", tmp_path / "drop2", rtol=1e-5)
    evals = [[row for row in read_log(tmp_path / r) if "eval_loss" in row] for r in ("drop1", "drop2")]
    assert [row["step"] for row in evals[0]] == [4, 8]
    for a, b in zip(*evals, strict=True):
        assert b == pytest.approx(a, rel=1e-5)
    # The masks differ from step to step and between a step's micro-batches.
    seeds = {loop.micro_seed(0, step, k) for step in range(8) for k in range(2)}
    assert len(seeds) == 16
