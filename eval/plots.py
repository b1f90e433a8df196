"""PNG plots for run folders and comparison reports (matplotlib, headless Agg backend)."""

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from pipelines.errors import TuneforgeError  # noqa: E402


def confusion_matrix_png(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str], path: str | Path
) -> Path:
    """Draws a row-normalised confusion matrix.

    Rows are true classes and sum to 1 (recall on the diagonal), so rare classes are as readable as common ones.
    The figure grows with the number of classes and cells are annotated up to 25 classes, so 20 classes stay
    legible.

    Args:
        y_true: true class ids in ``range(len(label_names))``.
        y_pred: predicted class ids, same length.
        label_names: class names, indexed by class id.
        path: the PNG file to write (parent folders are created).

    Returns:
        The path written.
    """
    n = len(label_names)
    # normalize="true": divide each row by its support; rows with no examples stay 0 instead of NaN.
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(n)), normalize="true")
    size = max(4.0, 0.45 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), labels=label_names, rotation=60, ha="right", fontsize=8 if n > 10 else 10)
    ax.set_yticks(range(n), labels=label_names, fontsize=8 if n > 10 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                if value >= 0.005:  # blank zeros keep a 20x20 grid readable
                    color = "white" if value > 0.5 else "black"
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7 if n > 10 else 9, color=color)
    ax.set_title(f"Confusion matrix (rows normalised, n={len(y_true)})")
    fig.tight_layout()
    return _save(fig, path)


SMOOTHING = 0.6  # TensorBoard's default scalar smoothing weight


def ema(values: Sequence[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average, TensorBoard's scalar smoothing (`tensorboard/.../vz_line_chart2`).

    s_i = weight * s_(i-1) + (1 - weight) * v_i with s_(-1) = 0, divided by 1 - weight^(i+1) so the first points
    are not pulled towards 0 (Adam's bias correction, Kingma & Ba 2015).

    Args:
        values: the raw series (e.g. the loss of each log line, nats/token).
        weight: 0 keeps the series as it is; closer to 1 smooths more.

    Returns:
        The smoothed series, as long as `values`.
    """
    out, last = [], 0.0
    for i, value in enumerate(values):
        last = weight * last + (1 - weight) * value
        out.append(last / (1 - weight ** (i + 1)))
    return out


def loss_curve_png(log_jsonl_path: str | Path, path: str | Path) -> Path:
    """Plots training loss (raw, faint, and smoothed with `ema`) and eval loss, when logged, against the step;
    beside it, the validation metrics logged at ``train.eval_every`` (``eval_<metric>`` other than the loss and its
    perplexity), with the step model selection kept.

    Each log line's loss is the mean over the steps since the previous line. With `train.group_by_length` those
    steps hold examples of one length range each (batches are length-sorted within mega-batches, then shuffled),
    and per-token loss depends on length, so consecutive points zig-zag around the trend; the smoothed line shows
    the trend (measured on the main job's runs: docs/run-folder.md, "Loss curves").

    Args:
        log_jsonl_path: a run's ``log.jsonl``: one JSON object per line with ``step`` and ``loss`` and/or
            ``eval_loss`` (nats/token), eval lines also ``eval_chrf``, ``eval_rougeL``, ... and ``best_step``.
        path: the PNG file to write.

    Returns:
        The path written.

    Raises:
        TuneforgeError: the log is missing or has no loss values.
    """
    log_jsonl_path = Path(log_jsonl_path)
    if not log_jsonl_path.is_file():
        raise TuneforgeError(f"no training log at {log_jsonl_path}")
    train, evals, metrics, kept = [], [], {}, None
    for line in log_jsonl_path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves a truncated last line; the rest is still worth plotting
        if not isinstance(record, dict) or "step" not in record:
            continue
        if _finite(record.get("loss")):
            train.append((record["step"], record["loss"]))
        if _finite(record.get("eval_loss")):
            evals.append((record["step"], record["eval_loss"]))
        for key, value in record.items():
            if key.startswith("eval_") and key not in ("eval_loss", "eval_perplexity") and _finite(value):
                metrics.setdefault(key[5:], []).append((record["step"], value))
        kept = record.get("best_step", kept)
    if not train and not evals:
        raise TuneforgeError(f"{log_jsonl_path} has no 'loss' or 'eval_loss' values to plot")
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(12 if metrics else 7, 4), squeeze=False)
    ax = axes[0][0]
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, label="train loss", color="tab:blue", linewidth=1.0, alpha=0.35)
        ax.plot(steps, ema(losses), label=f"train loss, smoothed (EMA {SMOOTHING})", color="tab:blue",
                linewidth=1.6)
    if evals:
        ax.plot(*zip(*evals, strict=True), label="eval loss", color="tab:orange", marker="o", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(log_jsonl_path.parent.name)
    if metrics:
        _metric_panel(axes[0][1], metrics, kept)
    fig.tight_layout()
    return _save(fig, path)


def _metric_panel(ax, metrics: dict[str, list[tuple[int, float]]], kept: int | None) -> None:
    """Validation metrics against the step: 0-1 scores (ROUGE, accuracy, F1) on the left axis, the others (chrF,
    BLEU 0-100, perplexity) on a right one, so neither flattens the other; a dashed line at the kept step."""
    small = {k: v for k, v in metrics.items() if max(abs(y) for _, y in v) <= 1.0}
    large = {k: v for k, v in metrics.items() if k not in small}
    right = ax.twinx() if small and large else ax
    lines = []
    for axis, group, style in ((ax, small or large, "-"), (right, large if small else {}, "--")):
        for name, points in group.items():
            lines += axis.plot(*zip(*points, strict=True), style, marker="o", linewidth=1.2, label=name)
    ax.set_ylabel("0-1 scores" if small else "validation score")
    if small and large:
        right.set_ylabel(", ".join(large))
    if kept is not None:
        lines.append(ax.axvline(kept, color="grey", linestyle=":", label=f"kept: step {kept}"))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(handles=lines, fontsize=8)
    ax.set_title("validation metrics")


def bar_chart(
    labels: Sequence[str], values: Sequence[float], highlight: Sequence[bool], title: str, xlabel: str, path,
    intervals: Sequence[tuple[float, float] | None] | None = None,
):
    """Draws horizontal bars, one per label, highlighted ones in a contrasting colour.

    Args:
        labels: bar labels, top to bottom.
        values: bar lengths; NaN for a missing value (drawn as an empty slot).
        highlight: True for bars to emphasise (the best run).
        title: figure title.
        xlabel: axis label, including units.
        path: the PNG file to write.
        intervals: per bar a (low, high) confidence interval drawn as an error bar, or None for none.

    Returns:
        The path written.
    """
    n = len(labels)
    fig, ax = plt.subplots(figsize=(7, max(2.0, 0.4 * n + 1.2)))
    values = np.asarray(values, dtype=float)
    colors = ["tab:orange" if h else "tab:blue" for h in highlight]
    y = np.arange(n)
    ax.barh(y, np.nan_to_num(values), color=colors)
    drawn = [(yi, v, ci) for yi, v, ci in zip(y, values, intervals or [None] * n, strict=True)
             if ci is not None and math.isfinite(v)]
    if drawn:
        ys, vs, cis = zip(*drawn, strict=True)
        # Percentile intervals need not be symmetric around the full-sample value: asymmetric error bars.
        err = np.array([[max(v - lo, 0.0) for v, (lo, _) in zip(vs, cis, strict=True)],
                        [max(hi - v, 0.0) for v, (_, hi) in zip(vs, cis, strict=True)]])
        ax.errorbar(vs, ys, xerr=err, fmt="none", ecolor="black", capsize=3, linewidth=1)
    ax.set_yticks(y, labels=labels, fontsize=8)
    ax.invert_yaxis()  # first row (the best after sorting) on top, as in the tables
    for yi, value, ci in zip(y, values, intervals or [None] * n, strict=True):
        if math.isfinite(value):
            # Beyond the error bar's end, so the number stays readable.
            ax.text(max(value, ci[1]) if ci else value, yi, f" {value:.4g}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.15)
    fig.tight_layout()
    return _save(fig, path)


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)  # figures are global state in pyplot; close so long reports don't leak memory
    return path
