"""Offline metrics: the project's own `evaluate` modules, loaded by path, plus the helpers tasks call.

``evaluate.load("rouge")`` downloads a script from the Hub and fails with ``HF_HUB_OFFLINE=1``; every metric
tuneforge reports lives in ``eval/metrics/<name>/<name>.py`` instead and is loaded by path, which never touches
the network. `evaluate` still copies the script into ``$HF_HOME/modules/evaluate_modules`` (``HF_MODULES_CACHE``)
to import it, so that directory must be writable.

Scale conventions (each metric keeps its reference library's native scale, so numbers match what the library and
the papers that cite it print):

============================  =========  ====================================================
metric                        scale      reference implementation
============================  =========  ====================================================
perplexity                    >= 1       ``exp(sum NLL / sum tokens)``; ``loss`` in nats/token
rouge1/rouge2/rougeL/Lsum     0-1        ``rouge_score`` F-measure, mean over examples
bleu                          0-100      ``sacrebleu`` corpus BLEU (+ signature)
chrf                          0-100      ``sacrebleu`` corpus chrF (+ signature)
accuracy, precision, recall,  0-1        ``sklearn.metrics``
f1
matthews_correlation          -1..1      ``sklearn.metrics.matthews_corrcoef``
============================  =========  ====================================================
"""

import difflib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import evaluate

from pipelines.errors import TuneforgeError

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = (
    "accuracy",
    "bleu",
    "chrf",
    "f1",
    "matthews_correlation",
    "perplexity",
    "precision",
    "recall",
    "rouge",
)
GENERATION_METRICS = ("rouge", "bleu", "chrf")
SCALES = {"rouge": "0-1", "bleu": "0-100", "chrf": "0-100"}

_cache: dict[str, evaluate.EvaluationModule] = {}


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Loads one of tuneforge's metric modules by path, without the network.

    Every call returns a new module instance, so ``add_batch`` streams from different callers never mix; loading
    is cheap (milliseconds) once `evaluate` is imported. Results are kept in memory, not in cache files.

    Args:
        name: a metric name from ``METRIC_NAMES``, e.g. "rouge" or "matthews_correlation".

    Returns:
        The loaded ``evaluate.EvaluationModule``; call ``.compute(...)`` as documented in its module docstring.

    Raises:
        TuneforgeError: unknown metric name (the message suggests the closest names).
    """
    if name not in METRIC_NAMES:
        close = difflib.get_close_matches(name.lower(), METRIC_NAMES, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise TuneforgeError(f"unknown metric {name!r}.{hint} Available metrics: {', '.join(METRIC_NAMES)}.")
    # keep_in_memory: no Arrow cache files or file locks under ~/.cache; we always compute in one process
    # (callers gather predictions with accelerate's gather_for_metrics first).
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)


def _metric(name: str) -> evaluate.EvaluationModule:
    """Returns a process-wide instance of a metric for the one-shot helpers below (each call is a full compute)."""
    if name not in _cache:
        _cache[name] = load_metric(name)
    return _cache[name]


def classification_scores(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int], label_names: Sequence[str]
) -> dict:
    """Scores single-label classification predictions.

    The averaged scores use scikit-learn's default label set (classes present in ``y_true`` or ``y_pred``), as
    HF's metrics do; ``per_class`` lists every class in ``labels``, including those with support 0.

    Args:
        y_true: true class ids, one per example.
        y_pred: predicted class ids, one per example.
        labels: every class id, in display order.
        label_names: a name per entry of ``labels``.

    Returns:
        ``{"accuracy", "macro_f1", "weighted_f1", "micro_f1", "mcc"}`` (floats; 0-1, mcc -1..1) and
        ``"per_class": {name: {"precision", "recall", "f1" (0-1), "support" (count of true examples)}}``.

    Raises:
        ValueError: ``y_true`` and ``y_pred`` differ in length, or ``labels`` and ``label_names`` do.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} examples but y_pred has {len(y_pred)}")
    if len(labels) != len(label_names):
        raise ValueError(f"{len(labels)} labels but {len(label_names)} label names")
    data = {"predictions": list(y_pred), "references": list(y_true)}
    labels = list(labels)
    f1 = _metric("f1")
    per_class_args = {"average": None, "labels": labels, **data}
    precision = _metric("precision").compute(**per_class_args)["precision"]
    recall = _metric("recall").compute(**per_class_args)["recall"]
    f1_per_class = f1.compute(**per_class_args)["f1"]
    support = Counter(data["references"])
    return {
        "accuracy": _metric("accuracy").compute(**data)["accuracy"],
        "macro_f1": f1.compute(average="macro", **data)["f1"],
        "weighted_f1": f1.compute(average="weighted", **data)["f1"],
        "micro_f1": f1.compute(average="micro", **data)["f1"],
        "mcc": _metric("matthews_correlation").compute(**data)["matthews_correlation"],
        "per_class": {
            name: {"precision": p, "recall": r, "f1": f, "support": support.get(label, 0)}
            for label, name, p, r, f in zip(labels, label_names, precision, recall, f1_per_class, strict=True)
        },
    }


def generation_scores(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    metrics: Sequence[str] = ("rouge",),
    metric_kwargs: dict[str, dict] | None = None,
) -> tuple[dict, dict]:
    """Scores generated text with ROUGE, BLEU and/or chrF.

    Args:
        predictions: generated texts, one per example.
        references: one reference per example, or a list of references per example (for BLEU/chrF every example
            needs the same number).
        metrics: any of "rouge", "bleu", "chrf"; ("rouge",) for summarization, ("bleu", "chrf") for translation.
        metric_kwargs: extra arguments per metric, e.g. ``{"rouge": {"use_stemmer": False}, "bleu": {"tokenize":
            "intl"}}``.

    Returns:
        ``(scores, settings)``. scores: ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum`` (0-1), ``bleu`` (0-100),
        ``chrf`` (0-100), for the metrics asked. settings: what ``metrics.json["metric_settings"]`` records, e.g.
        ``{"rouge": {"use_stemmer": True, "scale": "0-1", ...}, "bleu": {"signature": "nrefs:1|...", "scale":
        "0-100"}}``.

    Raises:
        TuneforgeError: a metric that is not a generation metric.
        ValueError: predictions and references differ in length.
    """
    unknown = [m for m in metrics if m not in GENERATION_METRICS]
    if unknown:
        raise TuneforgeError(f"not generation metrics: {unknown}; choose from {', '.join(GENERATION_METRICS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    metric_kwargs = metric_kwargs or {}
    predictions = list(predictions)
    references = [ref if isinstance(ref, str) else list(ref) for ref in references]
    scores, settings = {}, {}
    for name in metrics:
        kwargs = metric_kwargs.get(name, {})
        result = _metric(name).compute(predictions=predictions, references=references, **kwargs)
        if name == "rouge":
            scores.update(result)
            settings["rouge"] = {
                "use_stemmer": kwargs.get("use_stemmer", True),
                "rouge_types": list(result),
                "aggregation": "mean of per-example F-measure",
                "newline_sentence_split": True,
                "scale": SCALES["rouge"],
            }
        else:
            scores[name] = result["score"]
            settings[name] = {"signature": result["signature"], "scale": SCALES[name]}
    return scores, settings


def perplexity_scores(nll_sums: Sequence[float], token_counts: Sequence[int]) -> dict:
    """Corpus perplexity over a whole split.

    Args:
        nll_sums: per-example (or per-batch) summed negative log-likelihood, nats.
        token_counts: the number of scored tokens behind each entry of ``nll_sums``.

    Returns:
        ``{"perplexity": exp(loss), "loss": total NLL / total tokens (nats/token), "num_tokens": int}``.

    Raises:
        ValueError: lengths differ, negative values, or no tokens at all.
    """
    if len(nll_sums) != len(token_counts):
        raise ValueError(f"{len(nll_sums)} NLL sums but {len(token_counts)} token counts")
    return _metric("perplexity").compute(
        nll_sum=[float(x) for x in nll_sums], num_tokens=[int(n) for n in token_counts]
    )
