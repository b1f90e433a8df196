"""Trainer-grade logging through Accelerate's trackers: TensorBoard and a local MLflow file store, offline."""

from __future__ import annotations

import pytest
from conftest import tiny_gpt_raw

from pipelines import loop, trackers
from pipelines.errors import TuneforgeError
from pipelines.recipe import TRACKER_NAMES, build_recipe
from pipelines.runs import read_log

pytestmark = pytest.mark.usefixtures("one_thread")

EVERY_LINE = ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_s", "train/examples_per_s",
              "train/peak_memory_mb")


def test_tracker_names_match_accelerate():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    assert set(TRACKER_NAMES) == set(trackers.TRACKERS) == set(LOGGER_TYPE_TO_CLASS)


def test_tensorboard_and_mlflow_get_trainer_grade_logs(corpus, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the offline file store behind this
    raw = tiny_gpt_raw(corpus, tmp_path, "tracked", max_steps=6, log_every=2, eval_every=3,
                       report_to=["tensorboard", "mlflow"])
    metrics = loop.train(build_recipe(raw), tmp_path / "tracked")

    log = [r for r in read_log(tmp_path / "tracked") if "loss" in r]
    assert [r["step"] for r in log] == [2, 4, 6] and all(r["grad_norm"] > 0 for r in log)

    (events,) = (tmp_path / "tracked" / "tensorboard").glob("tuneforge/events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent)).Reload()
    tags = set(acc.Tags()["scalars"])
    assert set(EVERY_LINE) | {"eval/loss", "eval/perplexity", "test/perplexity", "test/loss"} <= tags
    assert [e.step for e in acc.Scalars("eval/loss")] == [3, 6]
    assert acc.Scalars("eval/loss")[-1].value == pytest.approx(metrics["validation"]["eval_loss"], rel=1e-6)
    assert acc.Scalars("test/perplexity")[0].value == pytest.approx(metrics["scores"]["perplexity"], rel=1e-6)
    assert [e.value for e in acc.Scalars("train/grad_norm")] == pytest.approx([r["grad_norm"] for r in log])

    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(trackers.PROJECT).experiment_id])
    assert run.info.run_name == "tracked"
    params = run.data.params
    assert params["train.learning_rate"] == "0.003" and params["recipe_hash"] == metrics["recipe_hash"]
    assert params["model.scratch.hidden_size"] == "32" and params["data.columns.text"] == "description"
    assert set(EVERY_LINE) | {"eval/loss", "test/perplexity"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train/tokens_per_s")
    assert [m.step for m in history] == [2, 4, 6] and all(m.value > 0 for m in history)
    assert run.data.metrics["test/loss"] == pytest.approx(metrics["scores"]["loss"], rel=1e-6)


def test_report_to_none_writes_no_tracker_files(corpus, tmp_path):
    raw = tiny_gpt_raw(corpus, tmp_path, "quiet", max_steps=2, log_every=1, report_to="none")
    recipe = build_recipe(raw)
    assert recipe.train.report_to == []
    loop.train(recipe, tmp_path / "quiet")
    assert not (tmp_path / "quiet" / "tensorboard").exists()
    assert len(read_log(tmp_path / "quiet")) == 2


def test_missing_tracker_package_is_a_clear_error(monkeypatch):
    from accelerate.utils import imports

    monkeypatch.setattr(imports, "is_wandb_available", lambda: False)
    with pytest.raises(TuneforgeError, match=r"train.report_to: 'wandb' needs the 'wandb' package, which is not "
                                             r"installed; pip install wandb"):
        trackers.check_report_to(["tensorboard", "wandb"])


def test_hparams_are_flat_scalars(corpus, tmp_path):
    recipe = build_recipe(tiny_gpt_raw(corpus, tmp_path, "h"))
    flat = trackers.hparams(recipe)
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    assert flat["train.adam_betas"] == "[0.9, 0.999]" and flat["lora"] == "null" and flat["task"] == "causal_lm"


def test_loss_curve_smoothing_is_tensorboards_debiased_ema():
    from eval.plots import ema

    assert ema([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # debiased: a flat series stays flat
    assert ema([0.0, 1.0], weight=0.5) == pytest.approx([0.0, 0.5 / 0.75])
    zigzag = [3.55, 4.08, 3.65, 2.77, 3.94, 3.2, 3.6]  # a length-grouped run's log lines (the numbers)
    smooth = ema(zigzag)
    def largest_jump(series: list[float]) -> float:
        return max(abs(a - b) for a, b in zip(series, series[1:], strict=False))

    assert largest_jump(smooth) < largest_jump(zigzag) / 2
    assert ema(zigzag, weight=0.0) == pytest.approx(zigzag)
