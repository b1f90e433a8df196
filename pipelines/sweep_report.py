"""A sweep's results: one row per trial, the summary table (winner by validation only) and the metric plots.

Everything is read from the Optuna storage (settings, state, the validation value the trial was told) and from
each trial's run folder (`metrics.json`: the test score, parameters, time), never from folder names.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from pipelines import runs


def flow(value) -> str:
    """A value as one line of YAML (`{method: ia3}`, `0.001`, `[query, value]`), as overrides and tables show it."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def error_file(run_dir: Path) -> Path:
    """Where a failed trial's message is kept: beside its folder (a run that fails early leaves no folder)."""
    return run_dir.parent / f"{run_dir.name}.error"


def trial_rows(sweep, study) -> list[dict]:
    """One row per trial, in trial order.

    Args:
        sweep: the `pipelines.sweep.Sweep`.
        study: its Optuna study.

    Returns:
        Dicts with `trial`, `state` (complete, fail, running), `settings` (key -> recipe value), `validation`
        (the objective's value or None), `test_metric` and `test` (the run's primary test score), `trainable`
        (trainable parameters), `seconds` (training time), `peak_memory_mb`, `method`, `run_dir`, `error` and
        `best` (True for the trial with the best validation value, ties to the earliest).
    """
    by_key = {p.key: p for p in sweep.params}
    rows = []
    for trial in study.get_trials(deepcopy=False):
        run_dir = sweep.trial_dir(trial.number)
        metrics = runs.read_metrics(run_dir) or {}
        train, params = metrics.get("train") or {}, metrics.get("params") or {}
        primary = metrics.get("primary_metric")
        error = error_file(run_dir)
        rows.append({
            "trial": trial.number,
            "state": trial.state.name.lower(),
            "settings": {k: by_key[k].decode(v) for k, v in trial.params.items() if k in by_key},
            "validation": trial.value if trial.state.name == "COMPLETE" else None,
            "test_metric": primary,
            "test": (metrics.get("scores") or {}).get(primary),
            "trainable": params.get("trainable"),
            "seconds": train.get("seconds"),
            "peak_memory_mb": train.get("peak_memory_mb"),
            "method": metrics.get("method"),
            "run_dir": str(run_dir),
            "error": error.read_text().strip() if error.is_file() and trial.state.name == "FAIL" else None,
            "best": False,
        })
    done = [r for r in rows if r["validation"] is not None]
    if done:
        pick = max if sweep.greater_is_better else min
        best = pick(done, key=lambda r: (r["validation"], -r["trial"]) if sweep.greater_is_better
                    else (r["validation"], r["trial"]))
        best["best"] = True
    return rows


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table(sweep, rows: list[dict]) -> str:
    """The summary as a markdown table, and a line naming the winner (chosen by validation only)."""
    test_metric = next((r["test_metric"] for r in rows if r["test_metric"]), "test")
    keys = [p.key for p in sweep.params]
    header = ["trial", *keys, f"validation {sweep.metric}", f"test {test_metric}", "method", "trainable params",
              "train s", "peak MB", "state"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"**{r['trial']}** (best)" if r["best"] else str(r["trial"])]
        cells += [flow(r["settings"][k]).replace("|", "\\|") if k in r["settings"] else "—" for k in keys]
        cells += [_fmt(r["validation"]), _fmt(r["test"]), r["method"] or "—",
                  f"{r['trainable']:,}" if r["trainable"] is not None else "—", _fmt(r["seconds"], 3),
                  _fmt(r["peak_memory_mb"], 4), r["state"] + (f": {r['error'].splitlines()[0]}" if r["error"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    best = next((r for r in rows if r["best"]), None)
    direction = "highest" if sweep.greater_is_better else "lowest"
    if best:
        lines += ["", f"Winner by validation only ({direction} {sweep.metric}): trial {best['trial']} "
                  f"({best['run_dir']}); its test {test_metric}: {_fmt(best['test'])}."]
    else:
        lines += ["", "No trial has finished yet."]
    return "\n".join(lines)


def plot(sweep, rows: list[dict], path: Path) -> None:
    """The validation metric against each swept key, one panel per key (finished trials only; the winner ringed).

    Args:
        sweep: the sweep.
        rows: from `trial_rows`.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["validation"] is not None]
    fig, axes = plt.subplots(1, len(sweep.params), figsize=(4.5 * len(sweep.params), 3.6), squeeze=False)
    for ax, param in zip(axes[0], sweep.params, strict=True):
        if param.values is not None:  # categories in the order given
            labels = [flow(v) for v in param.values]
            xs = [labels.index(flow(r["settings"][param.key])) for r in done]
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        else:
            xs = [r["settings"][param.key] for r in done]
            if param.log:
                ax.set_xscale("log")
        ys = [r["validation"] for r in done]
        ax.scatter(xs, ys, color="tab:blue")
        for x, y, r in zip(xs, ys, done, strict=True):
            if r["best"]:
                ax.scatter([x], [y], s=160, facecolors="none", edgecolors="tab:red", label="best (validation)")
        ax.set_xlabel(param.key)
        ax.set_ylabel(f"validation {sweep.metric}")
        ax.grid(alpha=0.3)
    if any(r["best"] for r in done):
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"sweep {sweep.folder.name}: {len(done)} finished trial(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(sweep, rows: list[dict]) -> str:
    """Write `summary.md` and `sweep.png` into the sweep folder; returns the table."""
    text = table(sweep, rows)
    (sweep.folder / "summary.md").write_text(f"# sweep {sweep.folder.name}\n\n{text}\n")
    plot(sweep, rows, sweep.folder / "sweep.png")
    return text
