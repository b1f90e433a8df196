"""Drawing for the Inspect tab: token tables and label shifts as HTML, heatmaps and bar charts as images.

Pure functions of the numbers `pipelines.introspect` computes; `demo.inspect_tab` calls them under the session's
plot lock.
"""

from __future__ import annotations

import html
import logging

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines import introspect
from pipelines.batching import IGNORE

log = logging.getLogger(__name__)

MAX_TABLE_TOKENS = 1024  # rows of the token table (the count covers every token)
PALETTE = ("#fde68a", "#bfdbfe", "#bbf7d0", "#fbcfe8", "#ddd6fe", "#fed7aa", "#a5f3fc", "#d9f99d")
MASK_COLOUR = "#fca5a5"  # BART's <mask> in a corrupted input
NO_LOSS = "—"  # a -100 label: the position has no loss


def render(fig: Figure) -> np.ndarray:
    """A figure as an [H, W, 3] uint8 RGB image (Agg canvas: no pyplot state, no file)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def colour(i: int) -> str:
    """The palette colour of token `i` (or of token id `i`: the same id is the same colour everywhere)."""
    return PALETTE[i % len(PALETTE)]


def chip(text: str, background: str, title: str = "") -> str:
    """One token as a coloured inline box (HTML)."""
    return (f'<span class="tf-chip" title="{html.escape(title)}" style="background:{background};padding:1px 3px;'
            f'margin:1px;border-radius:3px;font-family:monospace;white-space:pre;color:#111">{html.escape(text)}</span>')


# -- drawing --------------------------------------------------------------------------------------------------------


def token_table_html(text: str, tokens: list[introspect.Token], shown: list[str]) -> str:
    """The text coloured by token (each span in its token's colour), then one table row per token."""
    pieces, end = [], 0
    for i, tok in enumerate(tokens):
        if tok.special:
            pieces.append(chip(tok.token, "#e5e7eb", f"special token, id {tok.id}"))
            continue
        start = max(end, tok.start)  # byte-level tokens of one character share its span: show it once
        if start < tok.end:
            pieces.append(chip(text[start : tok.end], colour(i), f"token {i}, id {tok.id}"))
        end = max(end, tok.end)
    rows = []
    for i, (tok, readable) in enumerate(zip(tokens[:MAX_TABLE_TOKENS], shown, strict=False)):
        span = "special" if tok.special else f"{tok.start}–{tok.end}"
        background = "#e5e7eb" if tok.special else colour(i)
        rows.append(f"<tr><td>{i}</td><td>{tok.id}</td><td>{chip(tok.token, background)}</td>"
                    f"<td>{chip(readable, '#f3f4f6')}</td><td>{span}</td></tr>")  # fmt: skip
    more = (f"<p>… {len(tokens) - MAX_TABLE_TOKENS:,} more tokens not listed.</p>"
            if len(tokens) > MAX_TABLE_TOKENS else "")  # fmt: skip
    return (
        f'<div id="inspect-token-text" style="line-height:1.9">{"".join(pieces)}</div>'
        '<table id="inspect-token-table" style="font-size:0.9em"><thead><tr><th>#</th><th>id</th><th>token</th>'
        "<th>text</th><th>characters</th></tr></thead><tbody>" + "".join(rows) + f"</tbody></table>{more}"
    )


def heatmap(ax, values: np.ndarray, title: str, cmap: str, vmin: float, vmax: float, xlabel: str, ylabel: str):
    """A matrix [rows, columns] as an image with a colour bar."""
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02)


def positions_figure(learned, sinusoid, learned_sim, sinusoid_sim, rotary=None) -> np.ndarray:
    """2 x 2: position vectors [P, d] (learned | sinusoidal) over their cosine similarity [P, P].

    A rotary model has no position vectors: its left column shows `rotary` instead, a pair
    (frequencies [d_head / 2] in radians per token, score [D + 1] the mean cos over pairs at distance 0..D), see
    `pipelines.introspect.rotary_frequencies` / `rotary_distance_score`.
    """
    fig = Figure(figsize=(11, 8.5), dpi=72)
    # Fixed margins: matplotlib's constrained layout would take longer than all the rest of the view together.
    axes = fig.subplots(2, 2, gridspec_kw={"left": 0.07, "right": 0.94, "bottom": 0.06, "top": 0.95, "wspace": 0.3,
                                           "hspace": 0.3})  # fmt: skip
    p, d = sinusoid.shape
    if learned is not None:
        # A few outliers (pretrained BERT tables have some) would wash the rest out: clip at the 99.5th percentile.
        scale = float(np.percentile(np.abs(learned), 99.5)) or 1.0
        heatmap(axes[0, 0], learned, f"learned position embeddings [{p} × {d}]", "RdBu_r", -scale, scale,
                "dimension", "position")  # fmt: skip
        heatmap(axes[1, 0], learned_sim, "learned: cosine similarity between positions", "viridis", -1, 1,
                "position", "position")  # fmt: skip
    elif rotary is not None:
        frequencies, score = rotary
        pairs = np.arange(len(frequencies))
        axes[0, 0].semilogy(pairs, 2 * np.pi / frequencies, marker=".", lw=1)
        axes[0, 0].set_title(f"rotary: wavelength of each of the {len(frequencies)} dimension pairs", fontsize=10)
        axes[0, 0].set_xlabel("dimension pair i (of each query/key head)", fontsize=9)
        axes[0, 0].set_ylabel("tokens per full turn, 2π / θ_i", fontsize=9)
        axes[1, 0].plot(np.arange(len(score)), score, lw=1)
        axes[1, 0].axhline(0, color="grey", lw=0.5)
        axes[1, 0].set_title("rotary: query·key score vs distance (mean cos(k θ_i), q = k)", fontsize=10)
        axes[1, 0].set_xlabel("distance k between query and key (tokens)", fontsize=9)
        axes[1, 0].set_ylabel("score relative to k = 0", fontsize=9)
    else:
        for ax in axes[:, 0]:
            ax.axis("off")
            ax.text(0.5, 0.5, "no learned position table\n(e.g. rotary positions)", ha="center", va="center")
    heatmap(axes[0, 1], sinusoid, f"sinusoidal encoding (Vaswani et al. 2017) [{p} × {d}]", "RdBu_r", -1, 1,
            "dimension", "position")  # fmt: skip
    heatmap(axes[1, 1], sinusoid_sim, "sinusoidal: cosine similarity between positions", "viridis", -1, 1,
            "position", "position")  # fmt: skip
    return render(fig)


def attention_figure(weights: np.ndarray, queries: list[str], keys: list[str], title: str, causal: bool) -> np.ndarray:
    """Queries (rows) x keys (columns); masked cells (a causal decoder's future) in grey."""
    tq, tk = weights.shape
    # Margins from the longest label (monospace 8 pt: about 0.07 inch a character) instead of a layout engine.
    left, bottom = 0.7 + 0.07 * max(map(len, queries), default=1), 0.7 + 0.07 * max(map(len, keys), default=1)
    width, height = left + 1.4 + 0.2 * tk, bottom + 0.6 + 0.2 * tq
    fig = Figure(figsize=(width, height), dpi=96)
    ax = fig.add_axes((left / width, bottom / height, (width - left - 0.2) / width, (height - bottom - 0.4) / height))
    values = np.ma.masked_where(np.triu(np.ones_like(weights, dtype=bool), k=1), weights) if causal else weights
    palette = colormaps["viridis"].with_extremes(bad="#d1d5db")  # masked (causal) cells
    # Scaled to the largest weight: over many keys the weights are small, and a 0..1 scale would show them all dark.
    # A causal map's first row is always [1, masked...]: it does not set the scale.
    top = float((weights[1:] if causal and tq > 1 else weights).max()) or 1.0
    image = ax.imshow(values, cmap=palette, vmin=0, vmax=top, interpolation="nearest", aspect="auto")
    ax.set_xticks(range(tk), keys, rotation=90, fontsize=8, fontfamily="monospace")
    ax.set_yticks(range(tq), queries, fontsize=8, fontfamily="monospace")
    ax.set_xlabel("key (attended to)", fontsize=9)
    ax.set_ylabel("query (attending)", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=1.0 / (2 + 0.2 * tk), pad=0.02, label="attention weight")
    return render(fig)


def bars_figure(labels: list[str], values: list[float], title: str, xlabel: str) -> np.ndarray:
    """Horizontal bars, the largest on top, each labelled with its value."""
    height = 1.2 + 0.32 * len(labels)
    left = 0.5 + 0.08 * max(map(len, labels), default=1)
    fig = Figure(figsize=(8, height), dpi=72)
    ax = fig.add_axes((left / 8, 0.7 / height, (8 - left - 0.3) / 8, (height - 1.1) / height))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color="#3b82f6")
    ax.set_yticks(y, labels, fontfamily="monospace", fontsize=9)
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1e-9, max(values)) * 1.18)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    return render(fig)


def shift_table(rows: list[tuple[str, list[int | None]]], tokenizer) -> str:
    """Aligned token rows (one column per position, scrolling sideways), each token coloured by its id.

    The same id has the same colour everywhere, so a label row that is the input row shifted by one shows as
    the same colours moved one column to the left.
    """
    width = max(len(ids) for _, ids in rows)
    head = "".join(f"<th>{i}</th>" for i in range(width))
    body = []
    for name, ids in rows:
        cells = []
        for tid in ids:
            if tid is None:
                cells.append(f'<td title="no loss (-100)" style="color:#9ca3af">{NO_LOSS}</td>')
                continue
            readable = introspect.token_text(tokenizer, tid)
            background = MASK_COLOUR if tid == tokenizer.mask_token_id else colour(tid)
            cells.append(f"<td>{chip(readable, background, f'id {tid}')}</td>")
        name = html.escape(name)
        body.append(f'<tr><th style="text-align:left;white-space:nowrap">{name}</th>{"".join(cells)}</tr>')
    return ('<div style="overflow-x:auto"><table class="inspect-window" style="font-size:0.85em"><thead><tr>'
            f"<th>position</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")  # fmt: skip


def no_loss_as_none(label_ids: list[int]) -> list[int | None]:
    """Labels with -100 (no loss) as None, which `shift_table` shows as a dash."""
    return [None if i == IGNORE else i for i in label_ids]
