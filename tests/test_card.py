"""Model cards: every ```python block of every shipped family's card runs as written, from a moved run folder.

The tiny runs are the demo's (`demo_fixtures.trained_runs`: chat LoRA, BART LoRA, LoRA classifier) plus a GPT LoRA
run scored by generation and a full-finetuned classifier. Each run folder is copied to another path; a fresh Python
process (no tuneforge on its path, offline) runs each card's blocks from inside the copied `model/` and must print
the run's own prediction for the card's example (predictions.jsonl's first row).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import tiny_lora_raw
from demo_fixtures import _classifier_raw, trained_runs, write_label_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

CARD_RUNS = ("gpt-lora-generate", "chat-lora", "bart-summarize", "cls-lora", "cls-full")

# Runs every block of each card in a fresh namespace from inside its folder; prints one JSON line per block.
DRIVER = textwrap.dedent("""
    import contextlib, io, json, os, sys, torch
    torch.set_num_threads(1)
    for folder, block in json.load(open(sys.argv[1])):
        os.chdir(folder)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, folder + "/README.md", "exec"), {"__name__": "__main__"})
        print(json.dumps({"folder": folder, "stdout": out.getvalue().strip()}))
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus, pretrained) -> Path:
    """The trained tiny runs (plus a full classifier), copied to a new path: the originals stay where trained."""
    from pipelines import loop
    from pipelines.recipe import build_recipe

    trained = trained_runs(tmp_path_factory, corpus, pretrained)
    own = tmp_path_factory.mktemp("card-runs")  # not in `trained`: the demo tests list every run there
    raw = _classifier_raw(write_label_corpus(own / "labels.jsonl"), own)
    raw.pop("lora")
    raw["output"]["name"] = "cls-full"
    loop.train(build_recipe(raw), own / "cls-full")
    raw = tiny_lora_raw(corpus, own, pretrained, "gpt-lora-generate", max_steps=10)
    raw["eval"] |= {"metrics": ["rouge"], "generation": {"max_new_tokens": 8}}  # generations to compare
    raw["data"] |= {"validation_limit": 8, "test_limit": 8}
    loop.train(build_recipe(raw), own / "gpt-lora-generate")
    moved = tmp_path_factory.mktemp("moved") / "elsewhere"
    moved.mkdir()
    for name in CARD_RUNS:
        source = own / name if (own / name).is_dir() else trained / name
        shutil.copytree(source, moved / name, ignore=shutil.ignore_patterns("checkpoints"))
    return moved


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def expected_prediction(run: Path) -> str:
    """The run's own prediction for its card's example (the first row of predictions.jsonl)."""
    return json.loads((run / "predictions.jsonl").read_text().splitlines()[0])["prediction"]


def test_every_card_snippet_reproduces_the_run_from_a_moved_folder(runs, tmp_path):
    jobs, expected = [], {}
    for name in CARD_RUNS:
        model_dir = runs / name / "model"
        card = (model_dir / "README.md").read_text()
        blocks = python_blocks(card)
        assert blocks, f"{name}: no python block in its card"
        jobs += [(str(model_dir), b) for b in blocks]
        expected[str(model_dir)] = expected_prediction(runs / name)
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "jobs.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(jobs)
    for (folder, _), result in zip(jobs, results, strict=True):
        assert result["stdout"] == expected[folder], folder


def test_card_front_matter_and_run_readme(runs):
    card = (runs / "cls-lora" / "model" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert meta["license"] == "apache-2.0"
    results = meta["model-index"][0]["results"]
    metrics = json.loads((runs / "cls-lora" / "metrics.json").read_text())
    accuracy = [m["value"] for r in results for m in r["metrics"] if m["type"] == "accuracy"]
    assert accuracy == [pytest.approx(metrics["scores"]["accuracy"])]
    assert "model/README.md" in (runs / "cls-lora" / "README.md").read_text()
    full = yaml.safe_load((runs / "cls-full" / "model" / "README.md").read_text().split("---")[1])
    assert full["library_name"] == "transformers"


def test_adapters_name_an_absolute_base_and_files_are_readable(runs):
    for name in ("gpt-lora-generate", "chat-lora", "bart-summarize", "cls-lora"):
        base = json.loads((runs / name / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert Path(base).is_absolute() and Path(base).is_dir(), (name, base)
    card = (runs / "gpt-lora-generate" / "model" / "README.md").read_text()
    assert re.search(r"weights sha256 `[0-9a-f]{16}`", card)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (runs / "gpt-lora-generate" / "model").iterdir()}
    assert modes["adapter_model.safetensors"] & 0o044 == 0o044, modes


def test_chat_run_stops_at_the_end_of_the_turn(runs):
    from transformers import AutoTokenizer, GenerationConfig

    model_dir = runs / "chat-lora" / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    assert "generation_config=generation_config" in (model_dir / "README.md").read_text()


def test_launch_line_names_the_real_launcher():
    from pipelines.card import launch_line

    plain = "tuneforge train r.yaml"
    assert launch_line(plain, argv=["/x/bin/tuneforge", "train", "r.yaml"], parent=["bash"], env={}) == plain
    torchrun = ["/v/bin/python", "/v/bin/torchrun", "--nproc_per_node", "2", "-m", "pipelines.train", "r.yaml"]
    assert (launch_line(plain, argv=["/r/pipelines/train.py", "r.yaml"], parent=torchrun,
                        env={"ACCELERATE_USE_CPU": "true"})
            == "ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m pipelines.train r.yaml")
    accel = ["/v/bin/python", "/v/bin/accelerate", "launch", "--config_file", "a.yaml", "-m", "pipelines.train", "r"]
    assert (launch_line(plain, argv=["/r/pipelines/train.py", "r"], parent=accel, env={})
            == "accelerate launch --config_file a.yaml -m pipelines.train r")
    assert (launch_line(plain, argv=["/r/pipelines/train.py", "r"], parent=["bash"], env={})
            == "python -m pipelines.train r")
