"""Rendering comparison tables: Markdown, CSV and a self-contained HTML page, plus one bar chart per table."""

import base64
import csv
import html
import io
import math
import re
from pathlib import Path

from eval.forgetting import SCORE_KEY as GENERAL
from eval.tables import _MISSING, Problem, Row, Table

NA = "n/a"  # a row without per-example evidence (e.g. an older run): no interval, never a crash
TIED = "= tied"
FORGETTING_HEADER = "forgetting (Δ general ppl vs base)"

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
    header = ["run", "method", table.primary_metric, "95% CI", "vs best (95% CI)", *table.metrics[1:]]
    header += [f"Δ {table.primary_metric} vs base"]
    forgetting = has_forgetting(table)
    if forgetting:
        header.append(FORGETTING_HEADER)
    header += ["trainable params", "total params", "train s", unit, "peak MB"]
    cells = []
    for row in table.rows:
        trainable = _human(row.trainable_params)
        if row.trainable_params is not None and row.total_params:
            trainable += f" ({_percent(row.trainable_params / row.total_params)})"
        cells.append(
            [row.label, row.method, _fmt(row.scores.get(table.primary_metric)), _interval(row.interval)]
            + [_vs_best(row)]
            + [_fmt(row.scores.get(name)) for name in table.metrics[1:]]
            + [_delta(row)] + ([_forgetting(row)] if forgetting else []) + [trainable, _human(row.total_params)]
            + [_fmt(row.train_seconds), _throughput(row, table), _fmt(row.peak_memory_mb)]
        )
    return header, cells


def has_forgetting(table: Table) -> bool:
    """True when any row of the table was scored on the general-English slice (`eval.forgetting`)."""
    return any(GENERAL in row.scores for row in table.rows)


def _forgetting(row: Row) -> str:
    """The change of general-English perplexity from the base: '+1.3 (+4.2%)'; > 0 means the run forgot."""
    if row.forgetting is None:
        return _MISSING
    base = row.scores[GENERAL] - row.forgetting
    relative = f" ({row.forgetting / base:+.1%})" if base > 0 else ""
    return _fmt(row.forgetting, signed=True) + relative


def _forgetting_caption(table: Table) -> str | None:
    """Which text the forgetting column measures, with its fingerprint; None without such scores."""
    if not has_forgetting(table):
        return None
    slices = {(s["source"], s["sha256"], s.get("chars")) for row in table.rows
              if isinstance(s := (row.settings or {}).get(GENERAL), dict) and "sha256" in s}
    named = "; ".join(f"{src} (first {chars:,} characters, sha256 {sha[:12]})" for src, sha, chars in sorted(slices))
    text = (f"{FORGETTING_HEADER}: the run's perplexity on a fixed general-English text that no recipe trains on "
            f"minus its base model's (> 0: it forgot some general English); text: {named or 'not recorded'}")
    if len(slices) > 1:
        text += " · WARNING: runs measured on different texts; their changes are not comparable"
    return text


def _interval(bounds: tuple[float, float] | None, signed: bool = False) -> str:
    if bounds is None:
        return NA
    return f"[{_fmt(bounds[0], signed)}, {_fmt(bounds[1], signed)}]"


def _vs_best(row: Row) -> str:
    """'best', '= tied [lo, hi]' (the difference's interval holds 0), '[lo, hi]' (significantly worse) or n/a."""
    if row.vs_best is None:
        return NA
    if row.best:
        return "best"
    return f"{TIED} {_interval(row.vs_best, signed=True)}" if row.tied else _interval(row.vs_best, signed=True)


def _delta(row: Row) -> str:
    text = _fmt(row.delta, signed=True)
    return f"{text} {_interval(row.vs_base, signed=True)}" if row.vs_base is not None else text


def _bootstrap_caption(table: Table) -> str:
    if table.bootstrap is None:
        return "95% CI: n/a (no run in this table kept per-example evidence)"
    b = table.bootstrap
    return (f"{b['confidence']:.0%} CI: paired bootstrap over the {b['examples']:,} test examples, "
            f"{b['resamples']:,} resamples, seed {b['seed']} · \"{TIED}\": the difference from the best run is "
            "not significant (its interval contains 0)")


def _evidence_notes(table: Table) -> list[str]:
    notes = [f"no interval for {row.label}: {row.evidence_note}" for row in table.rows
             if row.evidence_note and row.kind != "base"]
    if any(row.kind == "base" for row in table.rows):
        notes.append("Δ vs base has no interval: only the base model's scores are kept, not its per-example "
                     "predictions; score the base with `tuneforge eval MODEL` beside the runs to pair it")
    return notes


def _caption(table: Table) -> str:
    direction = "higher" if table.greater_is_better else "lower"
    examples = f"{table.num_examples:,} examples · " if table.num_examples is not None else ""
    return (
        f"{examples}fingerprint {table.fingerprint} · primary metric: {table.primary_metric} ({direction} is better)"
    )


def render_markdown(tables: list[Table], problems: list[Problem], charts: dict[str, str] | None = None,
                    pareto: dict[str, str] | None = None) -> str:
    """Renders tables and problems as GitHub-flavoured markdown.

    Args:
        tables: from ``build_tables``.
        problems: from ``collect_runs``; listed under "Not compared" with their reasons.
        charts: optional table id -> image path (relative to where the markdown will live) to link under tables.
        pareto: optional table id -> quality-vs-cost figure path (`eval.pareto`), linked after the bar chart.

    Returns:
        The markdown text. The best row's label and primary value are in bold (``**``).
    """
    lines = ["# tuneforge comparison", ""]
    if not tables:
        lines += ["No finished runs to compare.", ""]
    for table in tables:
        header, cells = _display_rows(table)
        lines += [f"## {table.title}", "", _caption(table) + " · **bold** = best", "", _bootstrap_caption(table), ""]
        if _forgetting_caption(table):
            lines += [_forgetting_caption(table), ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
        for row, row_cells in zip(table.rows, cells, strict=True):
            row_cells = [c.replace("|", "\\|") for c in row_cells]
            if row.best:
                row_cells[0], row_cells[2] = f"**{row_cells[0]}**", f"**{row_cells[2]}**"
            lines.append("| " + " | ".join(row_cells) + " |")
        lines.append("")
        lines += [f"> note: {note}" for note in table.notes + _evidence_notes(table)]
        if charts and table.id in charts:
            lines += [f"![{table.primary_metric}]({charts[table.id]})", ""]
        if pareto and table.id in pareto:
            lines += [f"![{table.primary_metric} vs cost, Pareto front marked]({pareto[table.id]})", ""]
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
    "forgetting",
)
# Paired-bootstrap columns (eval.uncertainty); empty where a row has no per-example evidence.
CSV_INTERVALS = (
    "ci_low",
    "ci_high",
    "vs_best_low",
    "vs_best_high",
    "tied_with_best",
    "delta_low",
    "delta_high",
    "bootstrap_resamples",
    "bootstrap_seed",
)


def render_csv(tables: list[Table]) -> str:
    """Renders every table into one CSV.

    Values are raw (no thousands separators or rounding; ``repr``-exact floats) so the file round-trips. Columns:
    ``CSV_COLUMNS`` (``table`` is ``Table.id``, ``best`` and ``greater_is_better`` are "true"/"false"), then the
    union of score columns over all tables (empty where a table lacks the metric), then ``CSV_TRAILING``
    (``delta`` is the primary metric minus the base model's, ``forgetting`` the general-English perplexity minus the
    base model's, `eval.forgetting`), then ``CSV_INTERVALS`` (the paired-bootstrap 95%
    interval of the primary metric, of its difference from the best row and from a paired base, ``tied_with_best``
    "true"/"false", resamples and seed; empty without per-example evidence).

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
    writer.writerow([*CSV_COLUMNS, *metric_columns, *CSV_TRAILING, *CSV_INTERVALS])
    for table in tables:
        for row in table.rows:
            fixed = [table.id, table.task, table.dataset, table.split, table.fingerprint, table.primary_metric]
            fixed += [_bool(table.greater_is_better), row.label, row.kind, row.method, _bool(row.best)]
            scores = [_raw(row.scores.get(name)) for name in metric_columns]
            trailing = [_raw(getattr(row, name)) for name in CSV_TRAILING]
            writer.writerow(fixed + scores + trailing + _interval_cells(table, row))
    return buffer.getvalue()


def _interval_cells(table: Table, row: Row) -> list[str]:
    cells = []
    for bounds in (row.interval, row.vs_best):
        cells += [_raw(bounds[0]), _raw(bounds[1])] if bounds else ["", ""]
    cells.append("" if row.tied is None else _bool(row.tied))
    cells += [_raw(row.vs_base[0]), _raw(row.vs_base[1])] if row.vs_base else ["", ""]
    b = table.bootstrap or {}
    return cells + [_raw(b.get("resamples")), _raw(b.get("seed"))]


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
tr.tied td { background: #eef6ee; }
p.caption { color: #555; font-size: 0.9em; }
img.chart { max-width: 700px; display: block; }
img.pareto { max-width: 1500px; width: 100%; }
.problems li { color: #a33; }
"""


def render_html(tables: list[Table], problems: list[Problem], charts: dict[str, Path] | None = None,
                pareto: dict[str, Path] | None = None) -> str:
    """Renders a self-contained HTML report (inline CSS, charts embedded as base64 PNG).

    Args:
        tables: from ``build_tables``.
        problems: from ``collect_runs``.
        charts: table id -> PNG path (from ``bar_chart_png``); embedded under each table.
        pareto: table id -> quality-vs-cost PNG (from ``eval.pareto.pareto_png``); embedded after the bar chart.

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
        texts = (_caption(table), _bootstrap_caption(table), _forgetting_caption(table))
        captions = "<br>".join(html.escape(c) for c in texts if c)
        parts.append(f'<p class="caption">{captions}</p>')
        parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>")
        parts.append("<tbody>")
        for row, row_cells in zip(table.rows, cells, strict=True):
            tied = "tied" if row.tied and not row.best else ""
            kind = row.kind if row.kind != "run" else ""
            classes = " ".join(c for c in (kind, "best" if row.best else "", tied) if c)
            attr = f' class="{classes}"' if classes else ""
            parts.append(f"<tr{attr}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row_cells) + "</tr>")
        parts.append("</tbody></table>")
        parts += [f"<p class='caption'>note: {html.escape(note)}</p>" for note in table.notes + _evidence_notes(table)]
        if table.id in charts:
            parts.append(_embedded(charts[table.id], f"{table.primary_metric} per run", "chart"))
        if pareto and table.id in pareto:
            alt = f"{table.primary_metric} vs train seconds, peak memory and trainable parameters, Pareto front marked"
            parts.append(_embedded(pareto[table.id], alt, "chart pareto"))
    if problems:
        parts.append('<h2>Not compared</h2><ul class="problems">')
        parts += [f"<li><code>{html.escape(str(p.path))}</code>: {html.escape(p.reason)}</li>" for p in problems]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _embedded(path: Path, alt: str, css_class: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


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
        intervals=[row.interval for row in table.rows],
        title=f"{table.title} ({table.fingerprint[:19]})",
        xlabel=f"{table.primary_metric} ({direction} is better)",
        path=path,
    )


def chart_name(table: Table) -> str:
    """A file name for a table's chart, unique per grouping key."""
    fingerprint = table.fingerprint.split(":")[-1][:12]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{table.task}-{table.dataset}-{table.split}-{fingerprint}") + ".png"
