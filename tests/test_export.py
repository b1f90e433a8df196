"""`tuneforge export`: merged standalone folders that load without peft and pass their own verification, and a
corrupted export that is refused (exit 2, nothing left at --out, the largest difference named)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from demo_fixtures import trained_runs
from safetensors.torch import load_file, save_file

from pipelines import cli, export
from pipelines.errors import TuneforgeError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus, pretrained) -> Path:
    return trained_runs(tmp_path_factory, corpus, pretrained)


@pytest.mark.parametrize("name", ["gpt-lora", "chat-lora", "bart-summarize", "cls-lora"])
def test_export_merges_and_verifies(trained, tmp_path, name, capsys):
    from transformers import AutoConfig

    out = tmp_path / "export"
    assert cli.main(["export", str(trained / name), "--out", str(out), "--merge"]) == 0
    assert "verified" in capsys.readouterr().out
    assert not (out / "adapter_config.json").exists() and (out / "README.md").is_file()
    check = json.loads((out / "export.json").read_text())
    metrics = json.loads((trained / name / "metrics.json").read_text())
    assert check["run_score"] == pytest.approx(metrics["scores"][metrics["primary_metric"]])
    assert check["export_score"] == pytest.approx(check["run_score"], rel=1e-3)
    assert check["max_abs_diff"] <= 1e-4 * max(1.0, check["max_abs_logit"])
    # Plain transformers, no peft: the task's Auto class (from the run's recipe) loads it with its labels.
    from pipelines.run_model import load_run_model

    _recipe, task, _model, _tok = load_run_model(trained / name)
    plain = task.auto_model.from_pretrained(out)
    assert type(plain).__module__.startswith("transformers.")
    if name == "cls-lora":
        assert set(AutoConfig.from_pretrained(out).id2label.values()) == {"lists", "copies", "moves", "prints"}


def test_lora_export_needs_merge_and_a_free_folder(trained, tmp_path):
    with pytest.raises(TuneforgeError, match="pass --merge"):
        export.export_model(trained / "gpt-lora", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(TuneforgeError, match="not empty"):
        export.export_model(trained / "gpt-lora", tmp_path / "full", merge=True)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_a_corrupted_export_is_refused(trained, tmp_path, monkeypatch, capsys):
    """One exported weight changed on disk before verification: exit 2, the largest difference named, no folder."""
    write = export.write_folder

    def write_then_corrupt(run_dir, out, *args):
        write(run_dir, out, *args)
        weights = out / "model.safetensors"
        tensors = load_file(weights)
        key = next(k for k in tensors if k.endswith("weight") and tensors[k].dim() == 2)
        tensors[key] = tensors[key] + 0.5 * torch.randn_like(tensors[key])
        save_file(tensors, weights, metadata={"format": "pt"})

    monkeypatch.setattr(export, "write_folder", write_then_corrupt)
    out = tmp_path / "export"
    assert cli.main(["export", str(trained / "cls-lora"), "--out", str(out), "--merge"]) == 2
    err = capsys.readouterr().err
    assert "logits differ from the run's by up to" in err and "test example" in err and "refused" in err
    assert not out.exists()


def test_bf16_export_is_bf16_and_passes_its_tolerance(trained, tmp_path):
    check = export.export_model(trained / "gpt-lora", tmp_path / "bf16", merge=True, dtype="bf16")
    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}
    assert 0 < check.max_abs_diff <= export.TOLERANCE[torch.bfloat16] * max(1.0, check.max_abs_logit)
