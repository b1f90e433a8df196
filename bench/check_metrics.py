"""Recompute every run's generation and classification scores from its saved predictions with the reference
libraries (sacrebleu, rouge_score, scikit-learn) called directly, and compare them with its metrics.json.

    .venv/bin/python -m bench.check_metrics runs/

Prints one line per run and metric: the stored value, the recomputed one and whether they agree (|diff| <= 1e-9
relative). Perplexity needs the model, not the predictions: it is checked by `tests/test_metrics.py` against a
direct computation. Exit status 1 when any value disagrees.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def reference_scores(metrics: dict, rows: list[dict]) -> dict[str, float]:
    """The run's metrics recomputed from `rows` (predictions.jsonl) by the reference libraries."""
    preds = [r["prediction"] for r in rows]
    refs = [r["reference"] for r in rows]
    scores = metrics["scores"]
    settings = metrics.get("metric_settings", {})
    out = {}
    if metrics["task"] == "classification":
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

        out["accuracy"] = accuracy_score(refs, preds)
        for average in ("macro", "weighted", "micro"):
            out[f"{average}_f1"] = f1_score(refs, preds, average=average, zero_division=0)
        out["mcc"] = matthews_corrcoef(refs, preds)
        return out
    if "chrf" in scores or "bleu" in scores:
        from sacrebleu.metrics import BLEU, CHRF

        if "chrf" in scores:
            out["chrf"] = CHRF().corpus_score(preds, [refs]).score
        if "bleu" in scores:
            out["bleu"] = BLEU().corpus_score(preds, [refs]).score
    rouge_types = [t for t in ("rouge1", "rouge2", "rougeL", "rougeLsum") if t in scores]
    if rouge_types:
        from rouge_score.rouge_scorer import RougeScorer

        use_stemmer = settings.get("rouge", {}).get("use_stemmer", True)
        scorer = RougeScorer(rouge_types, use_stemmer=use_stemmer)
        per = [scorer.score(ref, pred) for pred, ref in zip(preds, refs, strict=True)]
        for t in rouge_types:
            out[t] = sum(p[t].fmeasure for p in per) / len(per)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path)
    args = parser.parse_args(argv)
    bad = 0
    for metrics_path in sorted(args.runs_dir.glob("*/metrics.json")):
        run = metrics_path.parent
        metrics = json.loads(metrics_path.read_text())
        predictions = run / "predictions.jsonl"
        if not predictions.is_file():
            print(f"{run.name}: no predictions.jsonl (perplexity only)")
            continue
        rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
        for name, value in reference_scores(metrics, rows).items():
            stored = metrics["scores"][name]
            ok = math.isclose(stored, value, rel_tol=1e-9, abs_tol=1e-12)
            bad += not ok
            print(f"{run.name}: {name} stored {stored:.10g} recomputed {value:.10g} {'ok' if ok else 'DIFFERENT'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
