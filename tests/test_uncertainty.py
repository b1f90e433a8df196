"""Paired-bootstrap intervals and ties in comparison tables (eval.uncertainty), from hand-made run folders."""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch
from sklearn.metrics import f1_score

from eval.compare import build_tables, collect_runs, compare_main, render_csv, render_html, render_markdown
from eval.uncertainty import (
    RESAMPLES,
    SEED,
    add_intervals,
    classification_statistic,
    corpus_statistic,
    perplexity_statistic,
    resample_counts,
)
from pipelines.record import RunRecord, write_result
from pipelines.scoring import Scored, loss_evidence
from tests.test_compare import FP_CLS, write_run

LABELS = ["admin", "devel", "libs", "net"]


def write_cls_run(root: Path, name: str, refs: list[str], preds: list[str], method="lora") -> Path:
    """A classification run with predictions.jsonl, its scores computed from them as the task does."""
    scores = {"macro_f1": float(f1_score(refs, preds, average="macro")),
              "accuracy": float(np.mean([r == p for r, p in zip(refs, preds, strict=True)]))}
    folder = write_run(root, name, task="classification", dataset="debian-packages", fingerprint=FP_CLS,
                       primary="macro_f1", greater=True, scores=scores, method=method, base_model="minilm")
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["dataset"]["num_examples"] = len(refs)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    rows = [{"id": i, "text": f"t{i}", "reference": r, "prediction": p}
            for i, (r, p) in enumerate(zip(refs, preds, strict=True))]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _refs(n=200, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [LABELS[i] for i in rng.integers(0, len(LABELS), n)]


def _corrupt(refs: list[str], wrong: int, seed=1) -> list[str]:
    """`refs` with `wrong` predictions replaced by another label."""
    preds = list(refs)
    for i in np.random.default_rng(seed).choice(len(refs), wrong, replace=False):
        preds[i] = LABELS[(LABELS.index(refs[i]) + 1) % len(LABELS)]
    return preds


def _rows(tmp_path):
    tables = build_tables(collect_runs([tmp_path])[0])
    for table in tables:
        add_intervals(table)
    (table,) = tables
    return table, {row.label: row for row in table.rows}


def test_identical_predictions_give_a_zero_width_difference_and_a_tie(tmp_path):
    refs = _refs()
    preds = _corrupt(refs, 40)
    write_cls_run(tmp_path, "a", refs, preds)
    write_cls_run(tmp_path, "b", refs, preds)
    table, rows = _rows(tmp_path)
    assert rows["a"].vs_best == (0.0, 0.0) and rows["b"].vs_best == (0.0, 0.0)
    assert rows["a"].tied and rows["b"].tied
    assert rows["a"].interval == rows["b"].interval
    lo, hi = rows["a"].interval
    assert lo < rows["a"].scores["macro_f1"] < hi and hi - lo > 0.02  # 200 examples: a real, non-zero spread
    assert table.bootstrap["resamples"] == RESAMPLES and table.bootstrap["seed"] == SEED


def test_a_clearly_better_run_is_not_tied(tmp_path):
    refs = _refs()
    write_cls_run(tmp_path, "good", refs, _corrupt(refs, 10))  # accuracy 0.95
    write_cls_run(tmp_path, "coin", refs, _corrupt(refs, 100))  # accuracy 0.5
    write_cls_run(tmp_path, "close", refs, _corrupt(refs, 12, seed=3))  # 0.94: within noise of the best
    table, rows = _rows(tmp_path)
    assert rows["good"].best and rows["good"].vs_best == (0.0, 0.0)
    assert rows["coin"].tied is False and rows["coin"].vs_best[1] < -0.3
    assert rows["close"].tied is True and rows["close"].vs_best[0] < 0 <= rows["close"].vs_best[1]
    markdown = render_markdown([table], [])
    assert "| close | lora |" in markdown and "= tied [" in markdown and "paired bootstrap over the 200" in markdown
    line = next(line for line in markdown.splitlines() if line.startswith("| coin |"))
    assert "tied" not in line and "| [-0.5334, -0.3879] |" in line  # worse at both ends of the interval
    records = list(csv.DictReader(io.StringIO(render_csv([table]))))
    tied = {r["run"]: r["tied_with_best"] for r in records}
    assert tied == {"good": "true", "close": "true", "coin": "false"}
    assert all(float(r["ci_low"]) <= float(r["macro_f1"]) <= float(r["ci_high"]) for r in records)
    assert {r["bootstrap_resamples"] for r in records} == {str(RESAMPLES)}
    page = render_html([table], [])
    assert '<tr class="tied">' in page and "= tied [" in page


def test_macro_f1_and_accuracy_resamples_match_scikit_learn():
    refs = _refs(120)
    preds = _corrupt(refs, 30)
    counts = next(resample_counts(len(refs), resamples=3, seed=7))
    for metric, direct in (("macro_f1", lambda r, p: f1_score(r, p, average="macro")),
                           ("accuracy", lambda r, p: np.mean(np.array(r) == np.array(p)))):
        stat = classification_statistic(metric, refs, preds)
        assert stat.value == pytest.approx(direct(refs, preds), abs=1e-12)
        resampled = stat.resample(counts)
        for k in range(3):  # the same resample written out as a list of rows
            rows = np.repeat(np.arange(len(refs)), counts[k].astype(int))
            assert resampled[k] == pytest.approx(direct([refs[i] for i in rows], [preds[i] for i in rows]), abs=1e-12)


def test_corpus_chrf_and_bleu_are_recomputed_at_the_corpus_level_as_sacrebleu_does():
    refs = ["the cat sat on the mat", "a quick brown fox", "hello world again", "open the file for reading",
            "print the manual page", "remove the package"]
    hyps = ["the cat sat on a mat", "the quick brown fox", "hello world", "open a file for writing",
            "print manual pages", "install the package"]
    # Non-default settings (chrF++, the intl tokenizer, lowercase) must be read back from the recorded signature.
    for metric, scorer in (("chrf", sacrebleu.CHRF(word_order=2)), ("chrf", sacrebleu.CHRF()),
                           ("bleu", sacrebleu.BLEU(tokenize="intl", lowercase=True)), ("bleu", sacrebleu.BLEU())):
        full = scorer.corpus_score(hyps, [refs]).score
        settings = {"signature": str(scorer.get_signature())}
        stat = corpus_statistic(metric, refs, hyps, settings)
        assert stat.value == pytest.approx(full, abs=1e-9)
        counts = next(resample_counts(len(refs), resamples=2, seed=3))
        rows = np.repeat(np.arange(len(refs)), counts[0].astype(int))
        direct = scorer.corpus_score([hyps[i] for i in rows], [[refs[i] for i in rows]]).score
        assert stat.resample(counts)[0] == pytest.approx(direct, abs=1e-9)  # not a mean of sentence scores


def test_perplexity_resamples_summed_losses_over_summed_targets():
    nll, n = [10.0, 30.0, 5.0], [5, 10, 1]
    stat = perplexity_statistic(nll, n)
    assert stat.value == pytest.approx(math.exp(45 / 16))
    counts = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    assert stat.resample(counts) == pytest.approx([math.exp(25 / 11), math.exp(3.0)])


def test_write_result_keeps_loss_evidence_and_drops_a_stale_file(tmp_path):
    evidence = loss_evidence(torch.tensor([1.5, 2.0], dtype=torch.float64), torch.tensor([3, 4]))
    record = RunRecord(status="finished")
    write_result(tmp_path, record, Scored(scores={"perplexity": 1.0}, evidence=evidence))
    assert json.loads((tmp_path / "evidence.json").read_text()) == {
        "perplexity": {"nll_sum": [1.5, 2.0], "num_targets": [3, 4]}}
    write_result(tmp_path, record, Scored(scores={"perplexity": 1.0}))
    assert not (tmp_path / "evidence.json").exists()


def test_perplexity_runs_pair_through_evidence_and_runs_without_it_show_na(tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.integers(5, 50, 300)
    for name, per_token in (("lora", 3.0), ("full", 2.9)):
        nll = targets * (per_token + rng.normal(0, 0.5, 300))
        scores = {"perplexity": float(np.exp(nll.sum() / targets.sum())), "loss": 0.0}
        folder = write_run(tmp_path, name, scores=scores)
        (folder / "evidence.json").write_text(json.dumps(
            {"perplexity": {"nll_sum": nll.tolist(), "num_targets": targets.tolist()}}))
    write_run(tmp_path, "old", scores={"perplexity": 30.0, "loss": 3.4})  # an older run: no evidence.json
    table, rows = _rows(tmp_path)
    assert rows["full"].best and rows["lora"].tied is False and rows["lora"].vs_best[0] > 0
    assert rows["old"].interval is None and rows["old"].tied is None
    text = compare_main([tmp_path], charts_dir=tmp_path / "charts")
    old = next(line for line in text.splitlines() if line.startswith("| old |"))
    assert "| n/a | n/a |" in old and "no interval for old: no evidence.json" in text
    assert len(list((tmp_path / "charts").glob("*.png"))) == 2  # the bar chart and the quality-vs-cost figure


def test_compare_without_any_evidence_prints_na(tmp_path):
    write_run(tmp_path, "a", scores={"perplexity": 30.0, "loss": 3.4}, base_scores={"perplexity": 80.0})
    write_run(tmp_path, "b", scores={"perplexity": 31.0, "loss": 3.4}, base_scores={"perplexity": 80.0})
    text = compare_main([tmp_path], charts_dir=tmp_path / "charts")
    assert "95% CI: n/a" in text and text.count("| n/a | n/a |") == 3  # two runs and the base row
    assert "Δ vs base has no interval" in text
    records = list(csv.DictReader(io.StringIO(compare_main([tmp_path], fmt="csv", charts_dir=tmp_path / "c"))))
    assert {r["tied_with_best"] for r in records} == {""} and {r["ci_low"] for r in records} == {""}


def test_a_base_scored_beside_the_runs_pairs_for_the_delta(tmp_path):
    refs = _refs()
    write_cls_run(tmp_path, "lora", refs, _corrupt(refs, 20))
    write_cls_run(tmp_path, "minilm", refs, _corrupt(refs, 150), method="base")
    _, rows = _rows(tmp_path)
    lo, hi = rows["lora"].vs_base
    assert 0 < lo < rows["lora"].scores["macro_f1"] - rows["minilm"].scores["macro_f1"] < hi
