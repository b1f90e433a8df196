"""`tuneforge push`: exactly model/ goes up, and an unreachable Hub fails fast and clearly. No real network: the
upload API is recorded, and the unreachable Hub is a closed port on the loopback interface."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from demo_fixtures import free_port

from pipelines import cli, push
from pipelines.errors import TuneforgeError


@pytest.fixture
def run(tmp_path) -> Path:
    """A run folder as training leaves it (files stand in for real weights: push never reads them)."""
    run = tmp_path / "runs" / "r"
    for name in ("model/README.md", "model/adapter_config.json", "model/adapter_model.safetensors",
                 "model/tokenizer.json", "model/.tmp-editor~", "checkpoints/step_2/model.safetensors",
                 "metrics.json", "README.md", "recipe.yaml", "log.jsonl"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(json.dumps(name))
    return run


def test_the_file_list_is_exactly_the_model_folder(run, capsys):
    expected = ["README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]
    assert push.files_to_push(run) == expected
    assert cli.main(["push", str(run), "me/r", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == expected


def test_push_sends_that_list_through_upload_folder(run, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)) or "commit-url")
    assert push.push_run(run, "me/r", private=True) == "commit-url"
    assert calls[0] == ("create", "me/r", {"private": True, "exist_ok": True, "repo_type": "model"})
    upload = calls[1][1]
    assert Path(upload["folder_path"]) == run / "model" and upload["repo_id"] == "me/r"
    assert upload["allow_patterns"] == push.files_to_push(run)


def test_unreachable_hub_fails_fast_with_one_message(run, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(TuneforgeError, match="cannot reach the Hub at http://127.0.0.1"):
        push.push_run(run, "me/r", endpoint=f"http://127.0.0.1:{free_port()}", token="hf_test")
    assert time.monotonic() - start < 20


def test_bad_input_exits_2(run, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["push", str(run), "me/r"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert cli.main(["push", str(run), "no owner"]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err
    assert cli.main(["push", str(run / "missing"), "me/r"]) == 2
    assert "has no model/" in capsys.readouterr().err


def test_recipe_push_to_hub_takes_a_repo_id():
    from pipelines.recipe import build_recipe

    raw = {"task": "causal_lm", "model": {"base": "gpt2"}, "data": {"source": "x.jsonl", "columns": {"text": "t"}}}
    assert build_recipe({**raw, "output": {"push_to_hub": "me/r"}}).output.push_to_hub == "me/r"
    with pytest.raises(TuneforgeError, match="output.push_to_hub: 'r' is not a Hub repo id"):
        build_recipe({**raw, "output": {"push_to_hub": "r"}})
