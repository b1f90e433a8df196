"""Comparison tables across run folders: ``tuneforge compare [RUNS_DIR ...]``.

Reads only ``metrics.json`` (schema 1, see docs/run-folder.md). Runs are grouped by ``(task, dataset.name,
dataset.split, dataset.fingerprint)`` so a table never mixes scores computed on different data; each group
becomes one table with a row per run, a row per scored base model and the baselines, sorted by the primary
metric, with paired-bootstrap 95% intervals and ties with the best run (`eval.uncertainty`). Folders that cannot
be compared (unfinished, failed, unreadable) are reported as problems with a reason,
never silently dropped.
"""

import sys
from pathlib import Path

from eval.pareto import pareto_name, pareto_png
from eval.render import bar_chart_png, chart_name, render_csv, render_html, render_markdown
from eval.tables import FORMATS, Problem, Row, Run, Table, build_tables, collect_runs
from eval.uncertainty import add_intervals
from pipelines.errors import TuneforgeError

__all__ = ["FORMATS", "Problem", "Row", "Run", "Table", "bar_chart_png", "build_tables", "chart_name",
           "collect_runs", "compare_main", "render_csv", "render_html", "render_markdown"]


def compare_main(
    paths: list[Path], fmt: str = "markdown", out: Path | None = None, charts_dir: Path | None = None
) -> str:
    """Builds the comparison report: what ``tuneforge compare`` runs.

    Args:
        paths: run folders or folders of runs; empty means ``["runs"]``.
        fmt: "markdown", "csv" or "html".
        out: file to write the report to (parents created); None writes nothing (the CLI prints the result).
        charts_dir: where the per-table bar charts and quality-vs-cost figures (PNG, `eval.pareto`) go; default
            ``<out's folder>/compare`` with ``out``, else ``<first path>/compare``.

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
    for table in tables:
        add_intervals(table)
    if charts_dir is None:
        charts_dir = (out.parent if out is not None else paths[0]) / "compare"
    charts = {table.id: bar_chart_png(table, Path(charts_dir) / chart_name(table)) for table in tables}
    pareto = {table.id: pareto_png(table, Path(charts_dir) / pareto_name(table)) for table in tables}

    if fmt == "markdown":
        base = out.parent if out is not None else Path.cwd()
        links = {key: _relative(path, base) for key, path in charts.items()}
        fronts = {key: _relative(path, base) for key, path in pareto.items()}
        text = render_markdown(tables, problems, links, fronts)
    elif fmt == "csv":
        text = render_csv(tables)
        for problem in problems:
            print(f"not compared: {problem.path}: {problem.reason}", file=sys.stderr)
    else:
        text = render_html(tables, problems, charts, pareto)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return text


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:  # chart outside the report's folder: link by absolute path
        return Path(path).resolve().as_posix()
