"""Recipe schema, overrides, validation of every shipped recipe, and CLI error behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.errors import TuneforgeError
from pipelines.recipe import MOVED_KEYS, build_recipe, load_recipe, parse_overrides
from pipelines.validate import validate_many

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
MINIMAL = {"task": "causal_lm", "model": {"base": "gpt2"}, "data": {"source": "manpages", "columns": {"text": "d"}}}


def test_all_problems_reported_together_with_did_you_mean():
    raw = {**MINIMAL, "train": {"max_step": 3, "learning_rate": -1}, "lora": {"rank": 4}}
    with pytest.raises(TuneforgeError) as err:
        build_recipe(raw, ["eval.batch_size=0"])
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "train.max_step: unknown key. did you mean 'train.max_steps'?" in msg
    assert "lora.rank: unknown key" in msg and "r, alpha" in msg
    assert "train.learning_rate: Input should be greater than 0 (got -1)" in msg
    assert "eval.batch_size" in msg


OLD_VALUES = {"top_k_labels": 20, "other_labels": "other", "class_weights": "balanced", "num_labels": 2,
              "target_max_length": 32}


@pytest.mark.parametrize("task", ["classification", "seq2seq"])
def test_every_moved_key_is_rejected_at_its_old_place_with_the_new_one(task, tmp_path):
    assert {key for _, key in MOVED_KEYS} == set(OLD_VALUES)
    raw = {**MINIMAL, "task": task, "data": {**MINIMAL["data"], **OLD_VALUES}}
    with pytest.raises(TuneforgeError) as err:
        build_recipe(raw)
    msg = str(err.value)
    assert f"{len(OLD_VALUES)} problem(s)" in msg
    for key, section in [("top_k_labels", "classification"), ("other_labels", "classification"),
                         ("class_weights", "classification"), ("num_labels", "classification"),
                         ("target_max_length", "seq2seq")]:
        assert f"data.{key}: moved; did you mean '{section}.{key}'?" in msg
    # The same through an override and through the CLI (exit 2, one line per key, no traceback).
    with pytest.raises(TuneforgeError, match=r"data\.num_labels: moved; did you mean 'classification\.num_labels'\?"):
        build_recipe({**MINIMAL, "task": task}, ["data.num_labels=2"])
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "validate", str(path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "data.target_max_length: moved; did you mean 'seq2seq.target_max_length'?" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_moved_keys_work_in_their_task_section_only():
    recipe = build_recipe({**MINIMAL, "task": "classification", "classification": {"num_labels": 3}})
    assert recipe.classification.num_labels == 3 and recipe.classification.other_labels == "drop"
    recipe = build_recipe({**MINIMAL, "task": "seq2seq", "seq2seq": {"target_max_length": 12}})
    assert recipe.seq2seq.target_max_length == 12
    with pytest.raises(TuneforgeError, match=r"seq2seq: only used with task: seq2seq \(task is 'causal_lm'\)"):
        build_recipe({**MINIMAL, "seq2seq": {"target_max_length": 12}})
    # A setting in its task's section still defines the run: it counts in the recipe hash.
    moved = build_recipe({**MINIMAL, "task": "classification", "classification": {"top_k_labels": 5}})
    assert moved.hash() != build_recipe({**MINIMAL, "task": "classification"}).hash()


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["train.max_steps=5", "lora.target_modules=[c_attn, c_proj]", "eval.score_base=false"]) == {
        "train": {"max_steps": 5}, "lora": {"target_modules": ["c_attn", "c_proj"]}, "eval": {"score_base": False}}
    recipe = build_recipe(MINIMAL, ["train.learning_rate=1e-4", "lora.r=4"])
    assert recipe.train.learning_rate == 1e-4 and recipe.lora.r == 4 and recipe.method == "lora"


@pytest.mark.parametrize("bad", ["train.max_steps", "=3", "train..x=1"])
def test_malformed_override(bad):
    with pytest.raises(TuneforgeError, match="expected section.key=value"):
        parse_overrides([bad])


def test_wrong_type_and_impossible_values():
    with pytest.raises(TuneforgeError) as err:
        build_recipe({**MINIMAL, "model": {"scratch": {"architecture": "gpt2", "hidden_size": 30, "heads": 4}}})
    assert "heads=4 must divide hidden_size=30" in str(err.value)
    with pytest.raises(TuneforgeError, match="exactly one of model.base"):
        build_recipe({**MINIMAL, "model": {}})


def test_hash_ignores_nothing_that_defines_the_run():
    a, b = build_recipe(MINIMAL), build_recipe(MINIMAL, ["train.seed=1"])
    assert a.hash() == build_recipe(MINIMAL).hash() and a.hash() != b.hash()


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_every_recipe_validates(path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert validate_many([str(path)], []) == 0, capsys.readouterr().out
    header = path.read_text().splitlines()[0]
    assert header.startswith("#"), "each recipe starts with a comment giving its launch command"
    assert "tuneforge train" in path.read_text().split("\n\n")[0] or "accelerate launch" in path.read_text()


def test_recipe_files_have_no_unknown_keys():
    for path in RECIPES:
        load_recipe(path)  # raises on any schema problem


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_misspelled_key_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MINIMAL, "trian": {"max_steps": 3}}))
    result = _cli("validate", str(bad))
    assert result.returncode == 2
    assert "trian: unknown key. did you mean 'train'?" in result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_train_missing_base_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MINIMAL, "model": {"base": "./no/such/model"}}))
    result = _cli("train", str(bad), f"output.dir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert "model.base: './no/such/model' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_recipe_file():
    result = _cli("validate", "recipes/nope.yaml")
    assert result.returncode == 2 and "no such file" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.columns.prompt=name_lin", "data.columns.prompt: no column 'name_lin' in 'manpages'; did you mean"),
        ("model.base=", "model.base: empty; give a Hub id"),
        ("model.base=.", "model.base: '.' is a folder without a model (no config.json)"),
        ("output.name=../elsewhere", "output.name: must be one folder name (no '/', not '.' or '..')"),
        ("task=clasification", "task: unknown value 'clasification'; did you mean 'classification'?"),
        ("lora.target_modules=5", "lora.target_modules: expected 'auto' or a list of str (got 5)"),
        ("data.source=manpagez", "data.source: unknown source 'manpagez'; did you mean 'manpages'?"),
        ("data.columns.textpair=synopsis", "data.columns.textpair: not a role of task 'causal_lm'"),
        ("model.base=recipes/gpt/pretrain-tiny.yaml", "is a file; give a model folder or a run folder"),
    ],
)
def test_validate_catches_what_would_fail_later(override, message, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert validate_many(["recipes/gpt/lora-manpages.yaml"], [override]) == 2
    out = capsys.readouterr().out
    assert message in out
    assert "is a Hub" not in out  # no note contradicting the error ("is a Hub dataset", "is a Hub id")


def test_validate_notes_a_warmup_longer_than_the_run(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert validate_many(["recipes/gpt/lora-manpages.yaml"], ["train.max_steps=10", "train.warmup_steps=20"]) == 0
    assert "note: train.warmup_steps: 20 >= train.max_steps 10" in capsys.readouterr().out


def test_launch_configs_are_not_recipes(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    # `tuneforge validate recipes/*/*.yaml` also matches recipes/accelerate/: skipped with a pointer, not failed.
    assert validate_many(["recipes/accelerate/fsdp.yaml", "recipes/gpt/lora-manpages.yaml"], []) == 0
    assert "skip recipes/accelerate/fsdp.yaml (an Accelerate launch config: use it as --launch-config)" in (
        capsys.readouterr().out
    )
    with pytest.raises(TuneforgeError, match="is an Accelerate launch config, not a recipe"):
        load_recipe("recipes/accelerate/fsdp.yaml")
    with pytest.raises(TuneforgeError, match="it is a tuneforge recipe; give it before --launch-config"):
        validate_many(["recipes/gpt/lora-manpages.yaml"], [], launch_config="recipes/gpt/lora-manpages.yaml")


def test_cli_data_limit_must_be_positive():
    result = _cli("data", "manpages", "--limit", "-1")
    assert result.returncode == 2
    assert "argument --limit: expected a whole number >= 1, got '-1'" in result.stderr



def test_recipe_that_is_not_utf8_or_is_a_folder(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"# M\xfcller\ntask: causal_lm\n")
    with pytest.raises(TuneforgeError, match="not UTF-8 text"):
        load_recipe(bad)
    assert validate_many([str(bad)], []) == 2  # reported as a failed recipe, not a traceback
    with pytest.raises(TuneforgeError, match="is a folder; give a recipe file, e.g. .*latin1.yaml"):
        load_recipe(tmp_path)


def test_lora_may_target_embedding_layers(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    recipe = "recipes/classifier/minilm-lora-sections.yaml"
    assert validate_many([recipe], ["lora.target_modules=[query, value, word_embeddings]"]) == 0
    assert validate_many([recipe], ["lora.target_modules=[query, word_embedings]"]) == 2
    assert "['word_embedings'] not in BertForSequenceClassification; it has [" in capsys.readouterr().out
