"""`train.optim` and the learning-rate schedule (transformers.get_scheduler), and the CLI's --version and --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import tiny_gpt_raw

from pipelines import optim
from pipelines.cli import main as cli
from pipelines.errors import TuneforgeError
from pipelines.recipe import build_recipe

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, **train):
    return build_recipe(tiny_gpt_raw(tmp_path / "c.jsonl", tmp_path, "o", **train))


def _lrs(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "polynomial", "inverse_sqrt"])
def test_schedule_is_transformers_step_for_step(schedule, tmp_path):
    recipe = _recipe(tmp_path, max_steps=10, warmup_steps=4, lr_schedule=schedule, learning_rate=1.0)
    ours = optim.make_scheduler(optim.make_optimizer(torch.nn.Linear(2, 2), recipe), recipe)
    name = "constant_with_warmup" if schedule == "constant" else schedule
    theirs = transformers.get_scheduler(name, torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0),
                                        num_warmup_steps=4, num_training_steps=10)
    lrs = _lrs(ours, 10)
    assert lrs == pytest.approx(_lrs(theirs, 10))
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])  # warmup from 0: step s runs at s / warmup
    if schedule == "cosine":
        assert lrs[7] == pytest.approx(0.5)  # half-way through the 6 decay steps: (1 + cos(pi / 2)) / 2


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("adafactor", transformers.Adafactor),
                                       ("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop)])
def test_each_optimizer_steps_with_decay_on_matrices_only(name, cls, tmp_path):
    recipe = _recipe(tmp_path, optim=name, weight_decay=0.1, learning_rate=0.1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    opt = optim.make_optimizer(model, recipe)
    assert type(opt) is cls
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]  # the weight matrix; biases and the norm
    before = model[0].weight.detach().clone()
    model(torch.ones(2, 3)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(before, model[0].weight)
    if name == "adamw":
        assert opt.defaults["fused"] is True  # the fused kernel on CPU tensors


def test_8bit_adamw_is_refused_clearly_where_it_cannot_run(tmp_path, monkeypatch, capsys):
    recipe = _recipe(tmp_path, optim="adamw_8bit")
    with pytest.raises(TuneforgeError, match=r"train.optim: 'adamw_8bit' (needs the bitsandbytes|runs on CUDA)"):
        optim.make_optimizer(torch.nn.Linear(2, 2), recipe)


def test_version_and_defaults_in_every_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("tuneforge 0.1.0 (torch ") and "transformers " in out and out.count("\n") == 1
    helps = {}
    for command in ("train", "validate", "eval", "baseline", "compare", "demo", "data"):
        with pytest.raises(SystemExit):
            cli([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    assert "--port PORT port to serve on (default: 7860)" in helps["demo"]
    assert "(default: 127.0.0.1)" in helps["demo"] and "(default: runs)" in helps["demo"]
    assert "(default: markdown)" in helps["compare"] and "--limit LIMIT rows to show or write (default: 5)" in helps[
        "data"]
    assert "train.learning_rate=0.0003" in helps["train"] and "train.optim=adamw" in helps["train"]
    assert "(default: None)" not in " ".join(helps.values()) and "(default: False)" not in " ".join(helps.values())


def test_cli_version_is_one_line_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "--version"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("tuneforge ") and not result.stderr


def test_validate_names_cached_hub_ids_instead_of_needing_the_network(tmp_path, monkeypatch, capsys):
    import datasets
    import huggingface_hub
    import yaml
    from test_architectures import populate_cache

    populate_cache(tmp_path / "hub", "roberta-base")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    recipe = tmp_path / "r.yaml"
    raw = yaml.safe_load((ROOT / "recipes" / "hub" / "roberta-base-lora-sst2.yaml").read_text())
    recipe.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    assert cli(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "model.base 'roberta-base' is a Hub id found in the local Hugging Face cache (checked offline)" in out
    assert f"data.source {raw['data']['source']!r} is a Hub dataset (needs network; not checked)" in out
    # the folder datasets itself looks for when offline: <namespace>___<name>/<config>/<version>/<hash>/
    namespace, name = raw["data"]["source"].split("/")
    (tmp_path / "datasets" / f"{namespace}___{name}" / "default" / "0.0.0" / "0123abcd").mkdir(parents=True)
    assert cli(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "is a Hub dataset in the local datasets cache (loads offline; columns not checked)" in out
    assert "needs network" not in out
