"""Model selection: the task's validation metrics at eval_every, `train.select_best` (the best step becomes model/,
scored once on test), early stopping (checkpointed, resumable, recorded), and the bad inputs, reported before
anything is trained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_gpt_raw, tiny_lora_raw
from safetensors.torch import load_file

from pipelines import cli, loop, selection
from pipelines.errors import TuneforgeError
from pipelines.recipe import build_recipe
from pipelines.runs import read_log
from pipelines.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def eval_rows(run_dir: Path) -> list[dict]:
    return [row for row in read_log(run_dir) if "eval_loss" in row]


def select_raw(corpus: Path, out: Path, base: Path, name: str, **train) -> dict:
    """LoRA on the tiny GPT with a constant learning rate and no clipping, so the validation loss is lowest early and
    then rises (steps 2..12: 4.219, 4.252, 4.236, 4.289, 4.269, 4.273; best at step 2, the same on 1 and 2 threads).
    A smaller margin (clipped, lr 0.06: best at step 10 by 0.04) flipped to the last step with another thread count."""
    train = {"max_grad_norm": None, **train}
    raw = tiny_lora_raw(corpus, out, base, name, max_steps=12, eval_every=2, log_every=2, learning_rate=0.03,
                        lr_schedule="constant", select_best="loss", **train)
    raw["eval"]["score_base"] = False
    return raw


# ---------------------------------------------------------------------------------------------------------------
# The best checkpoint


def test_best_validation_step_becomes_the_model(pretrained, corpus, tmp_path):
    loop.train(build_recipe(select_raw(corpus, tmp_path, pretrained, "best")), tmp_path / "best")
    rows = eval_rows(tmp_path / "best")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]  # the last step is a candidate too
    assert {"eval_loss", "eval_perplexity", "validation_rows", "validation_total", "best_step"} <= set(rows[0])
    best = min(rows, key=lambda r: r["eval_loss"])
    assert best["step"] != 12  # otherwise the last model would pass for the best one
    m = json.loads((tmp_path / "best/metrics.json").read_text())
    sel = m["selection"]
    assert (sel["metric"], sel["greater_is_better"], sel["step"], sel["best_step"]) == (
        "loss", False, best["step"], best["step"])
    assert sel["value"] == best["eval_loss"] and sel["validation"]["eval_perplexity"] == best["eval_perplexity"]
    # The final validation is recomputed on the model that was saved and scored on test: it is the best step's.
    assert m["validation"]["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-9)
    assert m["validation"]["eval_loss"] != pytest.approx(rows[-1]["eval_loss"], rel=1e-4)
    assert m["train"]["steps"] == 12 and m["selection"]["early_stopped_at_step"] is None
    chosen = selection.chosen_validation(tmp_path / "best")
    assert (chosen.metric, chosen.value, chosen.greater_is_better, chosen.step) == (
        "loss", best["eval_loss"], False, best["step"])


def test_resumed_selection_keeps_the_best_weights(pretrained, corpus, tmp_path):
    """Stopped after the best step (its weights live only in the checkpoint), then resumed: same model, same record."""
    loop.train(build_recipe(select_raw(corpus, tmp_path, pretrained, "whole")), tmp_path / "whole")
    raw = select_raw(corpus, tmp_path, pretrained, "resumed")
    assert loop.train(build_recipe({**raw, "train": {**raw["train"], "stop_after_steps": 11}}),
                      tmp_path / "resumed")["status"] == "stopped"
    loop.train(build_recipe({**raw, "train": {**raw["train"], "resume": "auto"}}), tmp_path / "resumed")
    a = load_file(tmp_path / "whole/model/adapter_model.safetensors")
    b = load_file(tmp_path / "resumed/model/adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("whole", "resumed"))
    assert ma["selection"] == mb["selection"] and ma["scores"] == mb["scores"]
    assert eval_rows(tmp_path / "whole") == eval_rows(tmp_path / "resumed")


# ---------------------------------------------------------------------------------------------------------------
# Early stopping


def test_early_stopping_stops_checkpoints_and_resumes(pretrained, corpus, tmp_path):
    """A learning rate too small to change a float32 weight: the validation loss never improves after the first
    evaluation, so patience 2 stops at the third (step 6), with a checkpoint there; a run stopped at step 4 and
    resumed stops at the same step with the same record."""
    raw = select_raw(corpus, tmp_path, pretrained, "early", early_stopping_patience=2)
    raw["train"].update(learning_rate=1e-30, select_best=None)  # early stopping on the loss alone
    loop.train(build_recipe(raw), tmp_path / "early")
    rows = eval_rows(tmp_path / "early")
    assert [r["step"] for r in rows] == [2, 4, 6] and rows[-1]["early_stop"] is True
    assert len({r["eval_loss"] for r in rows}) == 1
    m = json.loads((tmp_path / "early/metrics.json").read_text())
    assert m["train"]["steps"] == 6 and m["status"] == "finished"
    assert {k: m["selection"][k] for k in ("metric", "step", "value", "best_step", "evaluations",
                                           "early_stopping_patience", "early_stopped_at_step")} == {
        "metric": "loss", "step": 6, "value": None, "best_step": 2, "evaluations": 3, "early_stopping_patience": 2,
        "early_stopped_at_step": 6}
    assert [p.name for p in (tmp_path / "early/checkpoints").iterdir()] == ["step_6"]
    assert max(r["step"] for r in read_log(tmp_path / "early")) == 6

    again = {**raw, "output": {**raw["output"], "name": "again"}}
    loop.train(build_recipe({**again, "train": {**again["train"], "stop_after_steps": 4}}), tmp_path / "again")
    loop.train(build_recipe({**again, "train": {**again["train"], "resume": "auto"}}), tmp_path / "again")
    m2 = json.loads((tmp_path / "again/metrics.json").read_text())
    assert m2["selection"] == m["selection"] and m2["train"]["steps"] == 6
    assert eval_rows(tmp_path / "again") == rows


def test_keeper_direction_patience_and_state():
    model = torch.nn.Linear(2, 1)
    keeper = selection.Keeper(metric="chrf", keep_weights=True, patience=2)
    assert keeper.greater_is_better and not selection.Keeper("perplexity", False, None).greater_is_better
    values = [10.0, 12.0, float("nan"), 11.0, 12.0]  # a tie is no improvement; NaN never is
    stops = []
    for step, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(step)
        stops.append(keeper.update(step, {"eval_chrf": value}, model))
    assert stops == [False, False, False, True, True]
    assert (keeper.best_step, keeper.best_value, keeper.since_best, keeper.stopped_at) == (2, 12.0, 3, 4)
    restored = selection.Keeper(metric="chrf", keep_weights=True, patience=2)
    restored.load_state_dict(keeper.state_dict())
    restored.restore(model)
    assert torch.equal(model.weight, torch.full((1, 2), 2.0))  # the best step's weights, not the last
    assert restored.summary(5)["step"] == 2 and restored.summary(5)["early_stopped_at_step"] == 4
    with pytest.raises(TuneforgeError, match="selects on 'chrf'"):
        selection.Keeper(metric="bleu", keep_weights=True, patience=None).load_state_dict(keeper.state_dict())


# ---------------------------------------------------------------------------------------------------------------
# Bad input: exit 2, one message, nothing trained


@pytest.mark.parametrize(("train", "message"), [
    ({"early_stopping_patience": 3}, r"train.early_stopping_patience: validation during training is off; set "
                                     r"train.eval_every \(e.g. train.eval_every=6\)"),
    ({"select_best": "perplexity", "eval_limit": 5}, "train.eval_limit, train.select_best: validation during"),
])
def test_selection_without_eval_every_is_refused(corpus, tmp_path, train, message):
    with pytest.raises(TuneforgeError, match=message):
        build_recipe(tiny_gpt_raw(corpus, tmp_path, "x", **train))


def test_unknown_select_best_metric_suggests_the_task_metrics(corpus, tmp_path):
    seq = {"task": "seq2seq", "model": {"base": "x"},
           "data": {"source": "x", "columns": {"source": "a", "target": "b"}},
           "train": {"eval_every": 5, "select_best": "chrff"}, "eval": {"metrics": ["chrf", "bleu"]}}
    recipe = build_recipe(seq)
    assert selection.metric_problems(recipe, get_task("seq2seq")) == [
        "train.select_best: task 'seq2seq' does not report 'chrff' with this recipe; did you mean 'chrf'? its "
        "validation metrics: loss, perplexity, chrf, bleu"]
    no_generation = build_recipe({**seq, "eval": {"generate": False}, "train": {"eval_every": 5,
                                                                                "select_best": "rougeL"}})
    assert "its validation metrics: loss, perplexity" in selection.metric_problems(no_generation,
                                                                                   get_task("seq2seq"))[0]
    cls = build_recipe({"task": "classification", "model": {"base": "x"},
                        "data": {"source": "x", "columns": {"text": "a", "label": "b"}},
                        "train": {"eval_every": 5, "select_best": "macro_f1"}})
    assert selection.metric_problems(cls, get_task("classification")) == []

    raw = tiny_gpt_raw(corpus, tmp_path, "bad", eval_every=5)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["train", str(path), "train.select_best=perplexty"]) == 2
    assert not (tmp_path / "bad").exists()
    assert cli.main(["validate", str(path), "train.select_best=perplexty"]) == 2


def test_every_task_reports_the_metrics_it_names(corpus, tmp_path, pretrained):
    """`Task.metric_names` is what validation logs and select_best checks: the scores must carry every name."""
    raw = tiny_lora_raw(corpus, tmp_path, pretrained, "gen", max_steps=2, eval_every=1, eval_limit=4,
                        select_best="rougeL")
    raw["eval"].update(metrics=["rouge", "bleu"], generation={"max_new_tokens": 8}, score_base=False)
    loop.train(build_recipe(raw), tmp_path / "gen")
    rows = eval_rows(tmp_path / "gen")
    names = get_task("causal_lm").metric_names(build_recipe(raw))
    assert names == ("loss", "perplexity", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert {f"eval_{n}" for n in names} <= set(row) and all(math.isfinite(row[f"eval_{n}"]) for n in names)
        assert (row["validation_rows"], row["validation_total"]) == (4, 9)


def test_unset_selection_keys_keep_the_recipe_hash():
    """Runs recorded before these keys existed keep their recipe hash (pinned after the optim/subset keys, which
    changed every hash); set, they count."""
    from pipelines.recipe import load_recipe

    path = str(Path(__file__).resolve().parents[1] / "recipes/bart/lora-translate-en-de.yaml")
    assert load_recipe(path, []).hash() == "sha256:b360ca854f0f25ae"
    assert load_recipe(path, ["train.eval_every=100", "train.select_best=chrf"]).hash() != load_recipe(
        path, ["train.eval_every=100"]).hash()
