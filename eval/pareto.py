"""Quality vs cost: each table's primary metric against train seconds, peak memory and trainable parameters.

A run is on the Pareto front of a panel when no other run is at least as good on both axes and strictly better on
one (cheaper or equal cost, better or equal score): the runs worth choosing for some budget. PEFT's method
comparison draws the same view (metric vs memory / time); here one figure per comparison table, three panels.
Base models have no training cost, so they appear as a dashed reference line at their score, not as points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from eval.render import chart_name
from eval.tables import Row, Table

# (Row attribute, axis label, log scale when the values span this many times or more)
COSTS = (
    ("train_seconds", "train time (s)", 100.0),
    ("peak_memory_mb", "peak memory (MB)", 100.0),
    ("trainable_params", "trainable parameters", 100.0),
)


def pareto_front(costs: Sequence[float], scores: Sequence[float], greater_is_better: bool) -> list[bool]:
    """Which points no other point dominates (lower or equal cost and better or equal score, one strictly).

    Args:
        costs: cost per point (lower is better), finite.
        scores: quality per point, finite.
        greater_is_better: direction of `scores`.

    Returns:
        One flag per point, True on the front. Identical points are all on the front.
    """
    sign = 1.0 if greater_is_better else -1.0
    good = [sign * s for s in scores]
    flags = []
    for i, (c, g) in enumerate(zip(costs, good, strict=True)):
        dominated = any(
            cj <= c and gj >= g and (cj < c or gj > g) for j, (cj, gj) in enumerate(zip(costs, good, strict=True))
            if j != i
        )
        flags.append(not dominated)
    return flags


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def panel_points(table: Table, cost: str) -> list[tuple[Row, float, float]]:
    """(row, cost, score) of the table's trained runs and baselines that record both numbers."""
    return [(row, float(getattr(row, cost)), float(row.scores[table.primary_metric])) for row in table.rows
            if row.kind != "base" and _finite(getattr(row, cost)) and _finite(row.scores.get(table.primary_metric))]


def front_labels(table: Table) -> dict[str, list[str]]:
    """Per cost (train_seconds, peak_memory_mb, trainable_params): the labels of the runs on its Pareto front."""
    fronts = {}
    for cost, _, _ in COSTS:
        points = panel_points(table, cost)
        flags = pareto_front([p[1] for p in points], [p[2] for p in points], table.greater_is_better)
        fronts[cost] = [row.label for (row, _, _), on in zip(points, flags, strict=True) if on]
    return fronts


def pareto_png(table: Table, path: str | Path) -> Path:
    """Draws the table's quality-vs-cost figure: one panel per cost, the Pareto front marked and joined.

    Args:
        table: from ``eval.tables.build_tables``.
        path: the PNG file to write.

    Returns:
        The path written.
    """
    from eval.plots import _save, plt  # matplotlib (Agg) is slow to import; only chart-making callers pay

    fig, axes = plt.subplots(1, len(COSTS), figsize=(5.0 * len(COSTS), 4.2), squeeze=False)
    direction = "higher" if table.greater_is_better else "lower"
    bases = [row for row in table.rows if row.kind == "base" and _finite(row.scores.get(table.primary_metric))]
    for ax, (cost, xlabel, log_span) in zip(axes[0], COSTS, strict=True):
        points = panel_points(table, cost)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{table.primary_metric} ({direction} is better; better is up)")
        if not table.greater_is_better:
            ax.invert_yaxis()  # better is always up, so the front reads the same for every metric
        ax.grid(alpha=0.3)
        for k, base in enumerate(bases):
            ax.axhline(base.scores[table.primary_metric], color="grey", linestyle="--", linewidth=1,
                       label=base.label if k < 3 else None)
        if not points:
            ax.text(0.5, 0.5, "no run records this cost", ha="center", va="center", transform=ax.transAxes)
            continue
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        flags = pareto_front(xs, ys, table.greater_is_better)
        positive = [x for x in xs if x > 0]
        if len(positive) == len(xs) and max(xs) / min(positive) >= log_span:
            ax.set_xscale("log")  # parameter counts span orders of magnitude (LoRA vs full finetuning)
        off = [(x, y) for x, y, f in zip(xs, ys, flags, strict=True) if not f]
        on = sorted((x, y) for x, y, f in zip(xs, ys, flags, strict=True) if f)
        if off:
            ax.scatter(*zip(*off, strict=True), color="tab:blue", zorder=3, label="dominated")
        ax.step(*zip(*on, strict=True), where="post", color="tab:orange", linewidth=1.5, zorder=2)
        ax.scatter(*zip(*on, strict=True), color="tab:orange", edgecolor="black", s=60, zorder=4,
                   label="Pareto front")
        for (row, x, y), front in zip(points, flags, strict=True):
            ax.annotate(row.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        fontweight="bold" if front else "normal")
        ax.margins(x=0.2, y=0.15)
        ax.legend(fontsize=7, loc="lower right")  # better is up: the lower right is the least crowded corner
    fig.suptitle(f"{table.title}: quality vs cost ({table.fingerprint[:19]})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def pareto_name(table: Table) -> str:
    """The file name of a table's quality-vs-cost figure, next to its bar chart."""
    return chart_name(table).removesuffix(".png") + "-pareto.png"
