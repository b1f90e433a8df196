"""The comparison tables: which folders are runs, which runs share a table, and each table's rows.

Runs are grouped by ``(task, dataset.name, dataset.split, dataset.fingerprint)`` so a table never mixes scores
computed on different data; folders that cannot be compared are problems with a reason, never silently dropped.
Rendering lives in `eval.render`; the ``tuneforge compare`` command in `eval.compare`.
"""

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from eval.forgetting import SCORE_KEY as GENERAL
from pipelines.errors import TuneforgeError
from pipelines.record import RecordError, RunRecord, TrainStats, parse_record
from pipelines.tasks import registry

FORMATS = ("markdown", "csv", "html")
_MISSING = "—"


@dataclass
class Run:
    """A finished, scored run folder.

    Attributes:
        path: the run folder.
        record: its ``metrics.json``, read through ``pipelines.record``.
    """

    path: Path
    record: RunRecord

    @property
    def name(self) -> str:
        """The run's name; a trial of a `tuneforge sweep` (its folder's parent holds sweep.json) as sweep/trial."""
        name = self.record.run or self.path.name
        return f"{self.path.parent.name}/{name}" if (self.path.parent / "sweep.json").is_file() else name


@dataclass
class Problem:
    """A folder that looks like a run but cannot be compared.

    Attributes:
        path: the folder.
        reason: why, in words a user can act on.
    """

    path: Path
    reason: str


@dataclass
class Row:
    """One line of a comparison table.

    Attributes:
        label: run name, or ``"base: <model>"`` for a base model's scores.
        kind: "run", "base" or "baseline".
        method: lora | full | head | scratch | baseline | base.
        scores: metric name -> value, on each metric's native scale.
        delta: primary metric minus the same run's base model score (None for base rows or unscored bases).
        trainable_params, total_params: parameter counts.
        train_seconds: wall-clock training time, s.
        tokens_per_s, examples_per_s: training throughput.
        peak_memory_mb: peak accelerator memory during training, MB.
        best: True for the row(s) with the best primary metric in the table.
        run_dir: the run folder (None for base rows), where its per-example evidence lives.
        settings: the run's metric settings (ROUGE stemming, sacreBLEU signatures).
        base_model: the run's base model as the recipe named it.
        interval: paired-bootstrap 95% interval of the primary metric (None: no evidence).
        vs_best: interval of (this row's primary metric - the best row's), on the same resamples.
        tied: True when ``vs_best`` contains 0 (not significantly different from the best); None when unknown.
        vs_base: interval of (primary metric - its base model's), where the base was scored as a run of the table.
        evidence_note: why a row has no interval.
        forgetting: general-English perplexity (`eval.forgetting`) minus its base model's; > 0: the run forgot.
    """

    label: str
    kind: str
    method: str
    scores: dict
    delta: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    train_seconds: float | None = None
    tokens_per_s: float | None = None
    examples_per_s: float | None = None
    peak_memory_mb: float | None = None
    best: bool = False
    run_dir: Path | None = None
    settings: dict | None = None
    base_model: str | None = None
    interval: tuple[float, float] | None = None
    vs_best: tuple[float, float] | None = None
    tied: bool | None = None
    vs_base: tuple[float, float] | None = None
    evidence_note: str | None = None
    forgetting: float | None = None


@dataclass
class Table:
    """Runs scored on the same data, with the same task.

    Attributes:
        task, dataset, split, fingerprint: the grouping key.
        num_examples: examples scored (from the first run that records it).
        primary_metric: the metric rows are sorted by; listed first in ``metrics``.
        greater_is_better: sort direction of the primary metric.
        metrics: score columns, primary first.
        rows: sorted best first; rows without a primary score last.
        notes: inconsistencies found while building the table.
        bootstrap: the interval settings (resamples, seed, confidence, rows paired) once intervals are added.
    """

    task: str
    dataset: str
    split: str
    fingerprint: str
    num_examples: int | None
    primary_metric: str
    greater_is_better: bool
    metrics: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    bootstrap: dict | None = None

    @property
    def id(self) -> str:
        """Stable identifier of the group, used as the CSV ``table`` column and for chart names."""
        return f"{self.task}|{self.dataset}|{self.split}|{self.fingerprint}"

    @property
    def title(self) -> str:
        return f"{self.task} · {self.dataset} / {self.split}"

    @property
    def throughput_key(self) -> str:
        # Classification throughput is naturally per example; token counts there mostly measure padding.
        task = registry().get(self.task)
        return "examples_per_s" if task is not None and task.throughput_unit == "examples" else "tokens_per_s"


# ---------------------------------------------------------------------------------------------------------------
# collecting


def collect_runs(paths: list[Path]) -> tuple[list[Run], list[Problem]]:
    """Finds run folders and loads the comparable ones.

    A run folder is a directory holding ``metrics.json`` or ``recipe.yaml``. Each path may itself be a run
    folder, a folder of runs (``runs/<name>``) or a folder of folders of runs (``runs/<sweep>/<name>``).

    Args:
        paths: folders to search.

    Returns:
        ``(runs, problems)``: finished runs with scores, and every other run folder with the reason it was left
        out (no metrics.json, unreadable, status not "finished", no scores, missing fields).

    Raises:
        TuneforgeError: a path does not exist or is not a directory (all such paths in one message).
    """
    missing = [str(p) for p in paths if not Path(p).is_dir()]
    if missing:
        raise TuneforgeError("not a directory: " + ", ".join(missing))
    runs, problems, seen = [], [], set()
    for root in paths:
        for folder in _run_folders(Path(root), depth=2):
            key = folder.resolve()
            if key in seen:  # overlapping arguments, e.g. `compare runs runs/x`
                continue
            seen.add(key)
            loaded = _load_run(folder)
            (runs if isinstance(loaded, Run) else problems).append(loaded)
    return runs, problems


def _is_run_folder(path: Path) -> bool:
    return (path / "metrics.json").is_file() or (path / "recipe.yaml").is_file()


def _run_folders(root: Path, depth: int):
    if _is_run_folder(root):
        yield root
        return
    if depth == 0:
        return
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            yield from _run_folders(child, depth - 1)


def _load_run(folder: Path) -> Run | Problem:
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        return Problem(folder, "no metrics.json: training did not finish (or the run was never scored)")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return Problem(folder, f"metrics.json unreadable: {error}")
    if not isinstance(metrics, dict):
        return Problem(folder, "metrics.json unreadable: not a JSON object")
    status = metrics.get("status")
    if status == "failed":
        return Problem(folder, f"status failed: {metrics.get('error') or 'no error recorded'}")
    if status != "finished":
        return Problem(folder, f"status {status!r}: training has not finished")
    scores = metrics.get("scores")
    if not isinstance(scores, dict) or not scores:
        return Problem(folder, "metrics.json has no scores: the run finished but was not evaluated")
    try:
        record = parse_record(metrics, metrics_path)
    except RecordError as error:
        return Problem(folder, error.reason)
    if not _is_number(scores.get(record.primary_metric)):
        return Problem(folder, f"primary metric {record.primary_metric!r} is not among the scores")
    return Run(folder, record)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------------------
# tables


def build_tables(runs: list[Run]) -> list[Table]:
    """Groups runs into comparison tables.

    Args:
        runs: finished runs from ``collect_runs``.

    Returns:
        One table per ``(task, dataset.name, dataset.split, dataset.fingerprint)``, ordered by that key. Rows:
        every run, one ``base: <model>`` row per distinct base model (several runs of the same base with
        identical base scores share one row), and baselines; sorted by the primary metric, best first.
    """
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        dataset = run.record.dataset
        key = (run.record.task, dataset.name, dataset.split, dataset.fingerprint or "unknown")
        groups.setdefault(key, []).append(run)
    return [_build_table(key, group) for key, group in sorted(groups.items())]


def _build_table(key: tuple, runs: list[Run]) -> Table:
    task, dataset, split, fingerprint = key
    notes = []
    # Runs in one group should agree on the primary metric; if not, follow the majority and say so.
    primary, _ = Counter(run.record.primary_metric for run in runs).most_common(1)[0]
    greater_is_better = next(bool(r.record.greater_is_better) for r in runs if r.record.primary_metric == primary)
    odd = [run.name for run in runs if run.record.primary_metric != primary]
    if odd:
        notes.append(f"sorted by {primary}; these runs name another primary metric: {', '.join(odd)}")

    rows = [_run_row(run, primary) for run in runs]
    rows += _base_rows(runs)
    _disambiguate(rows)

    metric_names = [primary]
    for row in rows:
        metric_names += [name for name in row.scores if name not in metric_names]

    def sort_key(row: Row):
        value = row.scores.get(primary)
        if value is None or math.isnan(value):
            return (1, 0.0, row.label)
        return (0, -value if greater_is_better else value, row.label)

    rows.sort(key=sort_key)
    values = [row.scores[primary] for row in rows if row.scores.get(primary) is not None]
    values = [v for v in values if not math.isnan(v)]
    if values:
        best = max(values) if greater_is_better else min(values)
        for row in rows:
            row.best = row.scores.get(primary) == best
    num_examples = next(
        (r.record.dataset.num_examples for r in runs if "num_examples" in r.record.dataset.model_fields_set), None
    )
    return Table(
        task, dataset, split, fingerprint, num_examples, primary, greater_is_better, metric_names, rows, notes
    )


def _numeric_scores(scores) -> dict:
    # Only scalar numbers become columns; nested values (e.g. per-class reports) stay in metrics.json.
    return {name: value for name, value in (scores or {}).items() if _is_number(value)}


def _run_row(run: Run, primary: str) -> Row:
    record = run.record
    scores = _numeric_scores(record.scores)
    base = _numeric_scores(record.base_scores)
    delta = scores[primary] - base[primary] if primary in scores and primary in base else None
    forgetting = scores[GENERAL] - base[GENERAL] if GENERAL in scores and GENERAL in base else None
    train, params = record.train or TrainStats(), record.params
    method = record.method or "?"
    return Row(
        label=run.name,
        kind="baseline" if method == "baseline" else "run",
        method=method,
        scores=scores,
        delta=delta,
        forgetting=forgetting,
        trainable_params=params.trainable if params else None,
        total_params=params.total if params else None,
        train_seconds=train.seconds,
        tokens_per_s=train.tokens_per_s,
        examples_per_s=train.examples_per_s,
        peak_memory_mb=train.peak_memory_mb,
        run_dir=run.path,
        settings=record.metric_settings,
        base_model=record.base_model,
    )


def _base_rows(runs: list[Run]) -> list[Row]:
    by_base: dict[str, dict[tuple, list[str]]] = {}
    for run in runs:
        scores = _numeric_scores(run.record.base_scores)
        if not scores:
            continue
        model = str(run.record.base_model or "unknown")
        by_base.setdefault(model, {}).setdefault(tuple(sorted(scores.items())), []).append(run.name)
    rows = []
    for model, variants in by_base.items():
        for scores, scored_in in variants.items():
            label = f"base: {model}"
            if len(variants) > 1:  # same base scored differently (e.g. other generation settings): keep each
                label += f" (via {', '.join(scored_in)})"
            rows.append(Row(label=label, kind="base", method="base", scores=dict(scores)))
    return rows


def _disambiguate(rows: list[Row]) -> None:
    counts = Counter(row.label for row in rows)
    seen: Counter = Counter()
    for row in rows:
        if counts[row.label] > 1:
            seen[row.label] += 1
            row.label = f"{row.label} #{seen[row.label]}"
