"""Fair subsets (`pipelines.subsets`) and your own splits (`data.files`): seeded, stratified, exactly the files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from pipelines import data as data_lib
from pipelines.errors import TuneforgeError
from pipelines.recipe import build_recipe
from pipelines.sources import fingerprint
from pipelines.subsets import sample_indices

ROOT = Path(__file__).resolve().parents[1]


def test_plain_sample_is_seeded_sorted_and_the_same_in_another_process():
    ours = sample_indices(1000, 7, seed=3)
    assert ours == sorted(ours) and len(set(ours)) == 7 and all(0 <= i < 1000 for i in ours)
    assert sample_indices(1000, 7, seed=4) != ours  # the seed matters
    code = "from pipelines.subsets import sample_indices; print(sample_indices(1000, 7, seed=3))"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"})
    assert json.loads(other.stdout) == ours  # no dependence on hash randomisation or process state
    assert sample_indices(5, 9, seed=0) == [0, 1, 2, 3, 4]  # a limit above the split keeps it whole


def test_stratified_sample_covers_every_label_and_is_proportional():
    labels = ["big"] * 900 + ["mid"] * 90 + ["rare"] * 9 + ["once"]
    picked = sample_indices(len(labels), 50, seed=0, labels=labels)
    counts = Counter(labels[i] for i in picked)
    assert len(picked) == 50
    # one each, then the other 46 by largest remainder over the counts beyond the first: 899, 89, 8, 0 of 996
    assert counts == {"big": 1 + 42, "mid": 1 + 4, "rare": 1, "once": 1}
    # the first rows of a sorted split would hold only "big"; the plain sample misses the rare labels
    assert {labels[i] for i in sample_indices(len(labels), 50, seed=0)} < set(labels)
    assert len(sample_indices(len(labels), 3, seed=0, labels=labels)) == 3  # fewer rows than labels: plain sample


def _rows(n: int, labels: list[str]) -> list[dict]:
    return [{"text": f"package {i} does {labels[i % len(labels)]} things", "label": labels[i % len(labels)]}
            for i in range(n)]


def _classification_raw(source: str | None, files: dict | None = None, **data) -> dict:
    spec = {"files": files} if files else {"source": source}
    return {"task": "classification", "model": {"base": "builtin:minilm-l6"},
            "data": {**spec, "columns": {"text": "text", "label": "label"}, **data}}


def test_classification_test_limit_is_stratified_and_recorded(tmp_path):
    # Sorted by label (as built-in sources are sorted by key): the first 12 rows would hold 1 of 6 labels.
    rows = sorted(_rows(600, ["a", "b", "c", "d", "e", "f"]), key=lambda r: r["label"])
    path = tmp_path / "pkgs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = build_recipe(_classification_raw(str(path), test_limit=12, validation_limit=6))
    dd = data_lib.load_data(recipe.data, "label")
    assert len(dd["test"]) == 12 and set(dd["test"]["label"]) == set("abcdef")
    assert len(dd["validation"]) == 6 and set(dd["validation"]["label"]) == set("abcdef")
    again = data_lib.load_data(recipe.data, "label")
    assert fingerprint(again["test"]) == fingerprint(dd["test"])
    other_seed = data_lib.load_data(recipe.data.model_copy(update={"subset_seed": 1}), "label")
    assert fingerprint(other_seed["test"]) != fingerprint(dd["test"])
    info = data_lib.dataset_info(recipe.data, dd["test"], stratify_role="label")
    assert info["subset"] == "seeded sample of at most 12 (seed 0, stratified by label)"
    assert "subset" not in data_lib.dataset_info(recipe.data.model_copy(update={"test_limit": None}), dd["test"])


def test_data_files_are_the_splits_exactly_in_any_mix_of_formats(tmp_path):
    train, val, test = _rows(40, ["x", "y"]), _rows(6, ["x", "y"]), _rows(8, ["y", "x"])
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    pd.DataFrame(val).to_csv(tmp_path / "val.csv", index=False)
    pd.DataFrame(test).to_parquet(tmp_path / "test.parquet")
    files = {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "val.csv"),
             "test": str(tmp_path / "test.parquet")}
    recipe = build_recipe(_classification_raw(None, files))
    assert recipe.data.source == "files"
    dd = data_lib.load_data(recipe.data, "label")
    assert [list(dd[s]["text"]) for s in ("train", "validation", "test")] == [
        [r["text"] for r in rows] for rows in (train, val, test)]
    name = data_lib.dataset_name(recipe.data)
    assert name == "files(train=train.jsonl,validation=val.csv,test=test.parquet)[text=text, label=label]"
    # the resolved recipe (recipe.yaml) reads back
    assert build_recipe(json.loads(recipe.model_dump_json())).data.files == files


@pytest.mark.parametrize("change, message", [
    ({"source": "x.jsonl"}, "give data.source or data.files, not both"),
    ({"files": {"train": "a.jsonl", "test": "b.jsonl"}}, "data.files: missing ['validation']"),
])
def test_data_files_schema_errors(change, message, tmp_path):
    raw = _classification_raw(None, {"train": "a.jsonl", "validation": "b.jsonl", "test": "c.jsonl"})
    raw["data"].update(change)
    with pytest.raises(TuneforgeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_recipe(raw)


def test_data_files_missing_or_mismatched_file_names_the_split(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "a", "label": "x"}) + "\n")
    (tmp_path / "v.jsonl").write_text(json.dumps({"body": "a", "label": "x"}) + "\n")
    files = {"train": str(tmp_path / "t.jsonl"), "validation": str(tmp_path / "v.jsonl"),
             "test": str(tmp_path / "nope.csv")}
    recipe = build_recipe(_classification_raw(None, files))
    with pytest.raises(TuneforgeError, match=r"data.files.test: '.*nope.csv' does not exist"):
        data_lib.load_data(recipe.data)
    recipe = build_recipe(_classification_raw(None, {**files, "test": files["train"]}))
    with pytest.raises(TuneforgeError, match=r"data.files.validation: '.*v.jsonl' lacks the column\(s\) \['text'\]"):
        data_lib.load_data(recipe.data)


def test_a_run_on_data_files_trains_and_scores_exactly_those_files(tmp_path):
    import datasets
    from conftest import tiny_gpt_raw, write_corpus

    from pipelines import loop

    train = write_corpus(tmp_path / "train.jsonl", n=160, seed=1)
    val = write_corpus(tmp_path / "val.jsonl", n=20, seed=2)
    test = tmp_path / "test.csv"
    pd.read_json(write_corpus(tmp_path / "t.jsonl", n=24, seed=3), lines=True).to_csv(test, index=False)
    raw = tiny_gpt_raw(train, tmp_path, "own-splits", max_steps=4, log_every=2)
    raw["data"] = {**raw["data"], "files": {"train": str(train), "validation": str(val), "test": str(test)},
                   "packing": False}
    del raw["data"]["source"]
    metrics = loop.train(build_recipe(raw), tmp_path / "own-splits")
    assert metrics["dataset"]["name"] == (
        "files(train=train.jsonl,validation=val.jsonl,test=test.csv)[text=description]")
    expected = datasets.load_dataset("csv", data_files=str(test), split="train")
    assert metrics["dataset"]["num_examples"] == 24
    assert metrics["dataset"]["fingerprint"] == fingerprint(expected)
    assert "subset" not in metrics["dataset"]
