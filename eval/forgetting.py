"""Forgetting: the perplexity of a fixed general-English text slice that no recipe trains on, before and after.

PEFT's method-comparison benchmark reports how much a finetuned model forgets of what its base knew; tuneforge
measures it the cheap way: the perplexity of one fixed slice of plain English prose, scored for the base (when the
base is scored, before training) and for the finished run, with the same code. A run whose general perplexity
rises has drifted from general English; `tuneforge compare` shows the change as a column.

The slice: the first `SLICE_CHARS` characters (whole lines) of the GNU GPL version 3 text as Debian's
``base-files`` ships it (``/usr/share/common-licenses/GPL-3``, on every Debian/Ubuntu host). It is ordinary English
prose (legal register), stable across hosts and releases, and not among the built-in data sources (manual pages,
gettext catalogs, the apt package list); its sha256 is recorded with every score, so two numbers are comparable only
when their fingerprints agree. A host without the file gets no forgetting score (a note, not a failure).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

SOURCE = Path("/usr/share/common-licenses/GPL-3")
SLICE_CHARS = 10_000  # ~2.3k tokens for GPT-2 / SmolLM2 tokenizers: seconds on a CPU even for a 135M model
WINDOW = 256  # tokens per scored window (fewer when the model has fewer positions)
SCORE_KEY = "general_perplexity"
IGNORE = -100  # transformers' ignore index for labels


@dataclass(frozen=True)
class TextSlice:
    """The fixed text the forgetting perplexity is measured on.

    Attributes:
        text: the slice itself.
        source: the file it was read from.
        sha256: hex digest of the slice's UTF-8 bytes (its fingerprint in metrics.json).
    """

    text: str
    source: str
    sha256: str


@cache
def general_slice(source: Path = SOURCE, chars: int = SLICE_CHARS) -> TextSlice | None:
    """The first whole lines of `source` adding up to at least `chars` characters, or None without the file.

    Args:
        source: a UTF-8 text file.
        chars: minimum slice length in characters (the slice ends at the end of a line).

    Returns:
        The slice, or None when the file is absent or unreadable on this host.
    """
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    end = text.find("\n", chars)
    piece = text if end < 0 else text[: end + 1]
    return TextSlice(piece, str(source), hashlib.sha256(piece.encode("utf-8")).hexdigest())


def context_length(model) -> int | None:
    """The model's position count from its config (GPT-2 `n_positions`, others `max_position_embeddings`)."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def windows(token_ids: list[int], bos_id: int | None, width: int) -> list[list[int]]:
    """Cut the slice's tokens into windows of at most `width` tokens, each starting with BOS when there is one.

    With a BOS every token of the slice is a target exactly once; without one, each window's first token is
    context only (nothing precedes it). The last window may be shorter.

    Args:
        token_ids: the slice tokenized without special tokens.
        bos_id: the tokenizer's BOS id (prepended to every window, as training examples start), or None.
        width: tokens per window including the BOS, >= 2.

    Returns:
        The windows, in text order.
    """
    step = width - 1 if bos_id is not None else width
    head = [bos_id] if bos_id is not None else []
    return [head + token_ids[i : i + step] for i in range(0, len(token_ids), step)]


@torch.no_grad()
def general_perplexity(model, tokenizer, loss_fn, device, batch_size: int = 8,
                       text: TextSlice | None = None) -> tuple[dict, dict] | None:
    """Perplexity of the general-English slice under `model`: exp(total NLL / scored tokens).

    Every process computes the same full sum (a few thousand tokens), so the number needs no gathering and never
    depends on the process count; windows of one length are batched together, so no padding enters it either.

    Args:
        model: a causal LM (plain, PEFT or Accelerate-prepared).
        tokenizer: the run's tokenizer.
        loss_fn: the task's loss, (model, batch with input_ids/attention_mask/labels [B, T]) -> (nll sum [B] nats,
            target count [B]).
        device: where the batch tensors go.
        batch_size: windows per forward.
        text: the slice; default `general_slice()`.

    Returns:
        (scores, settings): ``{SCORE_KEY: perplexity}`` and ``{SCORE_KEY: {source, sha256, chars, tokens, window,
        unit}}`` for the run record, or None when this host lacks the slice.
    """
    text = text or general_slice()
    if text is None:
        return None
    inner = getattr(model, "module", model)  # DDP wraps the module; its config is the inner model's
    width = min(WINDOW, context_length(inner) or WINDOW)
    ids = tokenizer(text.text, add_special_tokens=False, verbose=False)["input_ids"]
    chunks = windows(ids, tokenizer.bos_token_id, width)
    by_length: dict[int, list[list[int]]] = {}
    for chunk in chunks:
        by_length.setdefault(len(chunk), []).append(chunk)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for length in sorted(by_length):
            group = by_length[length]
            for start in range(0, len(group), batch_size):
                input_ids = torch.tensor(group[start : start + batch_size], dtype=torch.long, device=device)
                labels = input_ids.clone()
                if tokenizer.bos_token_id is not None:
                    labels[:, 0] = IGNORE  # the BOS is context, not text
                batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
                nll, n = loss_fn(model, batch)
                total += float(nll.double().sum())
                count += int(n.sum())
    finally:
        model.train(was_training)
    value = math.exp(total / max(count, 1))
    settings = {"source": text.source, "sha256": text.sha256, "chars": len(text.text), "tokens": count,
                "window": width, "unit": "per token of the run's tokenizer, nats -> exp; no recipe trains on it"}
    return {SCORE_KEY: value}, {SCORE_KEY: settings}
