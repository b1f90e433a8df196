"""Paired bootstrap intervals for comparison tables: each run's primary metric, its difference from the best run.

Every run in a table was scored on the same test rows (same dataset fingerprint), so one set of resamples of the
row indices is drawn per table and every run's metric is recomputed on the same resamples (a *paired* bootstrap,
Koehn 2004, as sacreBLEU's ``--paired-bs``). Percentile 95% intervals; ties: the interval of the difference from
the best run contains 0.

Per-example evidence comes from the run folder: ``predictions.jsonl`` (classification: reference/prediction;
generation: prediction/reference) or ``evidence.json`` (perplexity: summed loss and target count per example).
Corpus-level metrics (BLEU, chrF) are recomputed from summed sacreBLEU sufficient statistics on each resample,
exactly what ``sacrebleu.significance`` does; ROUGE is the mean of per-example F-measures, accuracy/macro-F1 are
recomputed from resampled confusion counts, perplexity is exp(resampled loss sum / resampled target count).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESAMPLES = 1000  # as sacreBLEU's paired bootstrap default (`--paired-bs-n 1000`)
SEED = 12345  # sacreBLEU's default SACREBLEU_SEED, so its numbers and ours share a convention
CONFIDENCE = 0.95
_CHUNK = 200  # resamples per block: bounds memory at _CHUNK x N counts


@dataclass
class Statistic:
    """A metric that can be recomputed on resampled rows.

    Attributes:
        n: examples.
        value: the metric on the full sample.
        resample: counts [B, N] (how often each row is drawn per resample) -> metric per resample [B].
        keys: per-example identity used to check two runs scored the same rows (references), or None.
    """

    n: int
    value: float
    resample: Callable[[np.ndarray], np.ndarray]
    keys: list | None = None


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """Draw-count matrices of a bootstrap over `n` rows, in blocks.

    Args:
        n: examples.
        resamples: total resamples B.
        seed: numpy Generator seed (fixed: the same table gives the same intervals).

    Yields:
        float64 arrays [b, n] (b <= _CHUNK, summing to B over the blocks): entry (r, i) is how often row i is drawn
        in resample r; each row sums to n.
    """
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        b = min(_CHUNK, resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def _mean_statistic(values: np.ndarray, keys=None) -> Statistic:
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    return Statistic(n, float(values.mean()), lambda counts: counts @ values / n, keys)


def perplexity_statistic(nll_sum, num_targets) -> Statistic:
    """Perplexity exp(sum NLL / sum targets); per resample from the resampled sums (never a mean of ratios)."""
    nll, count = np.asarray(nll_sum, dtype=np.float64), np.asarray(num_targets, dtype=np.float64)
    return Statistic(len(nll), float(np.exp(nll.sum() / max(count.sum(), 1))),
                     lambda c: np.exp((c @ nll) / np.maximum(c @ count, 1)))


def classification_statistic(metric: str, references: list[str], predictions: list[str]) -> Statistic:
    """accuracy / micro_f1 or macro_f1 from resampled confusion counts.

    macro_f1 averages F1 = 2TP / (true + predicted) over the classes present among the resample's references or
    predictions, scikit-learn's default label set (what `eval.metrics.classification_scores` reports).
    """
    names = sorted(set(references) | set(predictions))
    index = {name: i for i, name in enumerate(names)}
    t = np.eye(len(names))[[index[r] for r in references]]  # [N, C] one-hot true class
    p = np.eye(len(names))[[index[q] for q in predictions]]  # [N, C] one-hot predicted class
    tp, n = t * p, len(references)
    if metric in ("accuracy", "micro_f1"):
        return _mean_statistic(tp.sum(axis=1), references)

    def macro(c: np.ndarray) -> np.ndarray:
        true, pred, hit = c @ t, c @ p, c @ tp  # [B, C] each
        present = (true + pred) > 0
        f1 = np.where(present, 2 * hit / np.maximum(true + pred, 1), 0.0)
        return f1.sum(axis=1) / present.sum(axis=1)

    return Statistic(n, float(macro(np.ones((1, n)))[0]), macro, references)


def rouge_statistic(metric: str, references: list[str], predictions: list[str], use_stemmer: bool) -> Statistic:
    """Mean per-example ROUGE F-measure (as eval/metrics/rouge), resampled as a mean."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([metric], use_stemmer=use_stemmer)
    values = [scorer.score(r, p)[metric].fmeasure for r, p in zip(references, predictions, strict=True)]
    return _mean_statistic(values, references)


def _sacrebleu_metric(metric: str, settings: dict):
    from sacrebleu.metrics import BLEU, CHRF

    # Rebuild the scorer from the recorded signature, e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|...".
    sig = dict(part.split(":", 1) for part in str(settings.get("signature", "")).split("|") if ":" in part)
    lowercase = sig.get("case") == "lc"
    if metric == "bleu":
        return BLEU(tokenize=sig.get("tok", "13a"), lowercase=lowercase, smooth_method=sig.get("smooth", "exp"))
    return CHRF(char_order=int(sig.get("nc", 6)), word_order=int(sig.get("nw", 0)), lowercase=lowercase,
                whitespace=sig.get("space") == "yes")


def corpus_statistic(metric: str, references: list[str], predictions: list[str], settings: dict) -> Statistic:
    """BLEU / chrF recomputed at the corpus level on each resample from summed per-sentence sufficient statistics.

    This is sacreBLEU's own paired bootstrap (``sacrebleu.significance``: ``_extract_corpus_statistics`` once,
    ``_compute_score_from_stats`` of the summed statistics per resample), with the table's shared resamples.
    """
    scorer = _sacrebleu_metric(metric, settings)
    stats = np.asarray(scorer._extract_corpus_statistics(predictions, [references]), dtype=np.float64)  # [N, K]

    def score(c: np.ndarray) -> np.ndarray:
        sums = c @ stats  # [B, K]; integer-valued counts, exact in float64
        return np.array([scorer._compute_score_from_stats([int(round(x)) for x in row]).score for row in sums])

    return Statistic(len(stats), float(score(np.ones((1, len(stats))))[0]), score, references)


def _read_predictions(run_dir: Path) -> list[dict] | None:
    path = run_dir / "predictions.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda r: r.get("id", 0))
    return rows


def run_statistic(run_dir: Path, metric: str, settings: dict | None) -> Statistic | str:
    """The statistic behind a run's `metric`, or why there is none.

    Args:
        run_dir: the run folder.
        metric: the table's primary metric.
        settings: the run's ``metric_settings`` (ROUGE stemming, sacreBLEU signatures).

    Returns:
        A `Statistic`, or a short reason string (no evidence, unsupported metric, unreadable file).
    """
    settings = settings or {}
    try:
        if metric == "perplexity":
            path = run_dir / "evidence.json"
            if not path.is_file():
                return "no evidence.json"
            ev = json.loads(path.read_text(encoding="utf-8"))["perplexity"]
            return perplexity_statistic(ev["nll_sum"], ev["num_targets"])
        rows = _read_predictions(run_dir)
        if not rows:
            return "no predictions.jsonl"
        refs, preds = [str(r["reference"]) for r in rows], [str(r["prediction"]) for r in rows]
        if metric in ("accuracy", "micro_f1", "macro_f1"):
            return classification_statistic(metric, refs, preds)
        if metric.startswith("rouge"):
            return rouge_statistic(metric, refs, preds, bool(settings.get("rouge", {}).get("use_stemmer", True)))
        if metric in ("bleu", "chrf"):
            return corpus_statistic(metric, refs, preds, settings.get(metric, {}))
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"evidence unreadable: {error}"
    return f"no resampling for {metric}"


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` percentile interval of bootstrap values."""
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap(stats: list[Statistic], resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Every statistic on the same resamples.

    Args:
        stats: statistics over the same N rows.
        resamples, seed: see `resample_counts`.

    Returns:
        [len(stats), resamples] metric values.
    """
    n = stats[0].n
    blocks = [np.stack([s.resample(c) for s in stats]) for c in resample_counts(n, resamples, seed)]
    return np.concatenate(blocks, axis=1)


def add_intervals(table, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE) -> None:
    """Fill each row's interval, difference from the best row, tie flag and difference from its base, in place.

    Rows whose evidence is missing, unreadable, over other rows (count or references differ) or does not reproduce
    the recorded score get ``evidence_note`` and no interval ("n/a" in the tables); the others are resampled
    together. A base row (scores only) has no evidence; a base scored as a run of the same table (method "base",
    e.g. ``tuneforge eval MODEL``) pairs with the runs of that base for ``vs_base``.

    Args:
        table: an `eval.tables.Table`.
        resamples, seed: see `resample_counts`.
        confidence: interval coverage.
    """
    metric = table.primary_metric
    stats: dict[int, Statistic] = {}
    for i, row in enumerate(table.rows):
        if row.run_dir is None:
            row.evidence_note = "base scores only (its per-example predictions are not kept)"
            continue
        stat = run_statistic(row.run_dir, metric, row.settings)
        if isinstance(stat, str):
            row.evidence_note = stat
            continue
        recorded = row.scores.get(metric)
        if recorded is None or not np.isclose(stat.value, recorded, rtol=1e-4, atol=1e-9):
            row.evidence_note = f"evidence gives {metric} {stat.value:.6g}, the record {recorded}"
            continue
        stats[i] = stat
    if not stats:
        return
    # Pair only rows over the same examples: the table's count (or the most common one) and the same references.
    counts = [s.n for s in stats.values()]
    n = table.num_examples if table.num_examples in counts else max(set(counts), key=counts.count)
    keys = next((s.keys for s in stats.values() if s.n == n and s.keys is not None), None)
    for i in list(stats):
        if stats[i].n != n or (keys is not None and stats[i].keys is not None and stats[i].keys != keys):
            table.rows[i].evidence_note = f"evidence over other test rows ({stats[i].n} examples, table {n})"
            del stats[i]
    order = list(stats)
    values = bootstrap([stats[i] for i in order], resamples, seed)
    at = {i: k for k, i in enumerate(order)}
    for i in order:
        table.rows[i].interval = percentile_interval(values[at[i]], confidence)
    best = next((i for i in order if table.rows[i].best), None)
    if best is not None:
        for i in order:
            lo, hi = percentile_interval(values[at[i]] - values[at[best]], confidence)
            table.rows[i].vs_best = (lo, hi)
            table.rows[i].tied = lo <= 0 <= hi
    bases = {table.rows[i].base_model: i for i in order if table.rows[i].method == "base"}
    for i in order:
        j = bases.get(table.rows[i].base_model)
        if j is not None and j != i:
            table.rows[i].vs_base = percentile_interval(values[at[i]] - values[at[j]], confidence)
    table.bootstrap = {"resamples": resamples, "seed": seed, "confidence": confidence, "examples": n,
                       "method": "paired percentile bootstrap over test examples"}
