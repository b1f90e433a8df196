"""Comparison tables across run folders: ``tuneforge compare [RUNS_DIR ...]``.

Reads only ``metrics.json`` (schema 1, see docs/run-folder.md). Runs are grouped by ``(task, dataset.name,
dataset.split, dataset.fingerprint)`` so a table never mixes scores computed on different data; each group
becomes one table with a row per run, a row per scored base model and the baselines, sorted by the primary
metric. Folders that cannot be compared (unfinished, failed, unreadable) are reported as problems with a reason,
never silently dropped.
"""

import base64
import csv
import html
import io
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

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
        return self.record.run or self.path.name


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
    train, params = record.train or TrainStats(), record.params
    method = record.method or "?"
    return Row(
        label=run.name,
        kind="baseline" if method == "baseline" else "run",
        method=method,
        scores=scores,
        delta=delta,
        trainable_params=params.trainable if params else None,
        total_params=params.total if params else None,
        train_seconds=train.seconds,
        tokens_per_s=train.tokens_per_s,
        examples_per_s=train.examples_per_s,
        peak_memory_mb=train.peak_memory_mb,
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


# ---------------------------------------------------------------------------------------------------------------
# rendering


def _fmt(value, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int) and not signed:
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:+,.0f}" if signed else f"{value:,.0f}"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _human(count) -> str:
    if count is None:
        return _MISSING
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.3g}{suffix}"
    return str(count)


def _throughput(row: Row, table: Table) -> str:
    value = getattr(row, table.throughput_key)
    if value is not None:
        return _fmt(float(value))
    # A baseline in a token-level task reports examples/s only; show it with its unit rather than nothing.
    if row.examples_per_s is not None:
        return f"{_fmt(float(row.examples_per_s))} ex/s"
    return _MISSING


def _percent(fraction: float) -> str:
    """A share as a percentage, two significant digits below 10%: 1 -> '100%', 0.088 -> '8.8%', 0.00034 -> '0.034%'."""
    percent = 100 * fraction
    if percent >= 10:
        return f"{percent:.0f}%"
    return f"{percent:.2g}%" if percent >= 0.001 else f"{percent:.1e}%"


def _display_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by the markdown and HTML renderers."""
    unit = "examples/s" if table.throughput_key == "examples_per_s" else "tokens/s"
    header = ["run", "method", *table.metrics, f"Δ {table.primary_metric} vs base", "trainable params"]
    header += ["total params", "train s", unit, "peak MB"]
    cells = []
    for row in table.rows:
        trainable = _human(row.trainable_params)
        if row.trainable_params is not None and row.total_params:
            trainable += f" ({_percent(row.trainable_params / row.total_params)})"
        cells.append(
            [row.label, row.method]
            + [_fmt(row.scores.get(name)) for name in table.metrics]
            + [_fmt(row.delta, signed=True), trainable, _human(row.total_params)]
            + [_fmt(row.train_seconds), _throughput(row, table), _fmt(row.peak_memory_mb)]
        )
    return header, cells


def _caption(table: Table) -> str:
    direction = "higher" if table.greater_is_better else "lower"
    examples = f"{table.num_examples:,} examples · " if table.num_examples is not None else ""
    return (
        f"{examples}fingerprint {table.fingerprint} · primary metric: {table.primary_metric} ({direction} is better)"
    )


def render_markdown(tables: list[Table], problems: list[Problem], charts: dict[str, str] | None = None) -> str:
    """Renders tables and problems as GitHub-flavoured markdown.

    Args:
        tables: from ``build_tables``.
        problems: from ``collect_runs``; listed under "Not compared" with their reasons.
        charts: optional table id -> image path (relative to where the markdown will live) to link under tables.

    Returns:
        The markdown text. The best row's label and primary value are in bold (``**``).
    """
    lines = ["# tuneforge comparison", ""]
    if not tables:
        lines += ["No finished runs to compare.", ""]
    for table in tables:
        header, cells = _display_rows(table)
        lines += [f"## {table.title}", "", _caption(table) + " · **bold** = best", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
        for row, row_cells in zip(table.rows, cells, strict=True):
            row_cells = [c.replace("|", "\\|") for c in row_cells]
            if row.best:
                row_cells[0], row_cells[2] = f"**{row_cells[0]}**", f"**{row_cells[2]}**"
            lines.append("| " + " | ".join(row_cells) + " |")
        lines.append("")
        lines += [f"> note: {note}" for note in table.notes]
        if charts and table.id in charts:
            lines += [f"![{table.primary_metric}]({charts[table.id]})", ""]
    if problems:
        lines += ["## Not compared", ""]
        lines += [f"- `{problem.path}`: {problem.reason}" for problem in problems]
        lines.append("")
    return "\n".join(lines)


CSV_COLUMNS = (
    "table",
    "task",
    "dataset",
    "split",
    "fingerprint",
    "primary_metric",
    "greater_is_better",
    "run",
    "kind",
    "method",
    "best",
)
CSV_TRAILING = (
    "delta",
    "trainable_params",
    "total_params",
    "train_seconds",
    "tokens_per_s",
    "examples_per_s",
    "peak_memory_mb",
)


def render_csv(tables: list[Table]) -> str:
    """Renders every table into one CSV.

    Values are raw (no thousands separators or rounding; ``repr``-exact floats) so the file round-trips. Columns:
    ``CSV_COLUMNS`` (``table`` is ``Table.id``, ``best`` and ``greater_is_better`` are "true"/"false"), then the
    union of score columns over all tables (empty where a table lacks the metric), then ``CSV_TRAILING``
    (``delta`` is the primary metric minus the base model's).

    Args:
        tables: from ``build_tables``.

    Returns:
        CSV text with a header line.
    """
    metric_columns = []
    for table in tables:
        metric_columns += [name for name in table.metrics if name not in metric_columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *metric_columns, *CSV_TRAILING])
    for table in tables:
        for row in table.rows:
            fixed = [table.id, table.task, table.dataset, table.split, table.fingerprint, table.primary_metric]
            fixed += [_bool(table.greater_is_better), row.label, row.kind, row.method, _bool(row.best)]
            scores = [_raw(row.scores.get(name)) for name in metric_columns]
            trailing = [_raw(getattr(row, name)) for name in CSV_TRAILING]
            writer.writerow(fixed + scores + trailing)
    return buffer.getvalue()


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _raw(value) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
th { background: #f3f3f3; }
tr.best td { background: #fff1d6; font-weight: bold; }
tr.base td { color: #555; font-style: italic; }
tr.baseline td { color: #555; }
p.caption { color: #555; font-size: 0.9em; }
img.chart { max-width: 700px; display: block; }
.problems li { color: #a33; }
"""


def render_html(tables: list[Table], problems: list[Problem], charts: dict[str, Path] | None = None) -> str:
    """Renders a self-contained HTML report (inline CSS, charts embedded as base64 PNG).

    Args:
        tables: from ``build_tables``.
        problems: from ``collect_runs``.
        charts: table id -> PNG path (from ``bar_chart_png``); embedded under each table.

    Returns:
        The HTML document. Rows carry classes ``best``, ``base`` and ``baseline``.
    """
    charts = charts or {}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>tuneforge comparison</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>tuneforge comparison</h1>",
    ]
    if not tables:
        parts.append("<p>No finished runs to compare.</p>")
    for table in tables:
        header, cells = _display_rows(table)
        parts.append(f'<h2 id="{html.escape(table.id)}">{html.escape(table.title)}</h2>')
        parts.append(f'<p class="caption">{html.escape(_caption(table))}</p>')
        parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>")
        parts.append("<tbody>")
        for row, row_cells in zip(table.rows, cells, strict=True):
            classes = " ".join(c for c in (row.kind if row.kind != "run" else "", "best" if row.best else "") if c)
            attr = f' class="{classes}"' if classes else ""
            parts.append(f"<tr{attr}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row_cells) + "</tr>")
        parts.append("</tbody></table>")
        parts += [f"<p class='caption'>note: {html.escape(note)}</p>" for note in table.notes]
        if table.id in charts:
            data = base64.b64encode(Path(charts[table.id]).read_bytes()).decode("ascii")
            alt = html.escape(f"{table.primary_metric} per run")
            parts.append(f'<img class="chart" alt="{alt}" src="data:image/png;base64,{data}">')
    if problems:
        parts.append('<h2>Not compared</h2><ul class="problems">')
        parts += [f"<li><code>{html.escape(str(p.path))}</code>: {html.escape(p.reason)}</li>" for p in problems]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def bar_chart_png(table: Table, path: str | Path) -> Path:
    """Draws the table's primary metric per row as horizontal bars, the best row highlighted.

    Args:
        table: from ``build_tables``.
        path: the PNG file to write.

    Returns:
        The path written.
    """
    from eval.plots import bar_chart  # matplotlib is slow to import; only chart-making callers pay for it

    values = [row.scores.get(table.primary_metric, math.nan) for row in table.rows]
    direction = "higher" if table.greater_is_better else "lower"
    return bar_chart(
        labels=[row.label for row in table.rows],
        values=values,
        highlight=[row.best for row in table.rows],
        title=f"{table.title} ({table.fingerprint[:19]})",
        xlabel=f"{table.primary_metric} ({direction} is better)",
        path=path,
    )


def chart_name(table: Table) -> str:
    """A file name for a table's chart, unique per grouping key."""
    fingerprint = table.fingerprint.split(":")[-1][:12]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{table.task}-{table.dataset}-{table.split}-{fingerprint}") + ".png"


def compare_main(
    paths: list[Path], fmt: str = "markdown", out: Path | None = None, charts_dir: Path | None = None
) -> str:
    """Builds the comparison report: what ``tuneforge compare`` runs.

    Args:
        paths: run folders or folders of runs; empty means ``["runs"]``.
        fmt: "markdown", "csv" or "html".
        out: file to write the report to (parents created); None writes nothing (the CLI prints the result).
        charts_dir: where the per-table bar charts (PNG) go; default ``<out's folder>/compare`` with ``out``, else
            ``<first path>/compare``.

    Returns:
        The report text. Problems are part of the markdown and HTML reports; with CSV (which has no place for
        them) they are printed to stderr.

    Raises:
        TuneforgeError: unknown format, a path that is not a directory, or no run folders at all.
    """
    if fmt not in FORMATS:
        raise TuneforgeError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    paths = [Path(p) for p in paths] or [Path("runs")]
    runs, problems = collect_runs(paths)
    if not runs and not problems:
        raise TuneforgeError(
            f"no run folders (with metrics.json or recipe.yaml) under {', '.join(map(str, paths))}; "
            "train one with `tuneforge train RECIPE` or pass the folder that holds your runs"
        )
    out = Path(out) if out is not None else None
    if out is not None and ((out.parent / "recipe.yaml").is_file() or (out.parent / "metrics.json").is_file()):
        raise TuneforgeError(f"--out: {str(out)!r} is inside a run folder (it would replace the run's files); "
                             "write the tables next to the runs instead, e.g. runs/compare.html")
    tables = build_tables(runs)
    if charts_dir is None:
        charts_dir = (out.parent if out is not None else paths[0]) / "compare"
    charts = {table.id: bar_chart_png(table, Path(charts_dir) / chart_name(table)) for table in tables}

    if fmt == "markdown":
        base = out.parent if out is not None else Path.cwd()
        links = {key: _relative(path, base) for key, path in charts.items()}
        text = render_markdown(tables, problems, links)
    elif fmt == "csv":
        text = render_csv(tables)
        for problem in problems:
            print(f"not compared: {problem.path}: {problem.reason}", file=sys.stderr)
    else:
        text = render_html(tables, problems, charts)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return text


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:  # chart outside the report's folder: link by absolute path
        return Path(path).resolve().as_posix()
