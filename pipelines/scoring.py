"""Shared scoring pieces: length-sorted evaluation batches and token-weighted loss over a whole split.

Every score covers exactly the split's examples: batches go through an Accelerate-prepared dataloader and
`gather_for_metrics`, which drops the duplicates added to even out the last batch across processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from pipelines.recipe import Recipe

# The scores each generation metric module reports (eval/metrics: ROUGE F-measures; sacreBLEU corpus BLEU, chrF).
GENERATION_SCORES = {"rouge": ("rouge1", "rouge2", "rougeL", "rougeLsum"), "bleu": ("bleu",), "chrf": ("chrf",)}
# Scores where lower is better (nats per target, exp of it); every other score tuneforge reports (ROUGE, BLEU, chrF,
# accuracy, F1, MCC) is better higher.
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})


def generation_score_names(metrics: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The score names that generation metric modules (`eval.metrics`) report, e.g. ("rouge",) -> rouge1 ... rougeLsum.

    Args:
        metrics: metric module names from `GENERATION_SCORES`.

    Returns:
        The scores in the order the modules are listed.
    """
    return tuple(name for metric in metrics for name in GENERATION_SCORES[metric])


def greater_is_better(metric: str) -> bool:
    """Whether a higher value of score `metric` is better (False for loss and perplexity)."""
    return metric not in LOWER_IS_BETTER


@dataclass
class ScoreContext:
    """Everything a task's `score` function reads."""

    accelerator: Accelerator
    model: Any
    tokenizer: Any
    recipe: Recipe
    rows: datasets.Dataset  # raw test rows (text columns)
    features: datasets.Dataset  # tokenized test rows, same order
    task: Any
    batch_size: int = 16


@dataclass
class Scored:
    """A task's scores on a split: metric values, metric settings (signatures), per-example predictions."""

    scores: dict[str, float]
    settings: dict = field(default_factory=dict)
    predictions: list[dict] = field(default_factory=list)
    # When the recipe decides the headline metric (seq2seq: the first of eval.metrics); None: the task's own.
    primary_metric: str | None = None
    greater_is_better: bool | None = None
    # Extra files for the run folder: name -> writer(path), called on the main process (e.g. a confusion matrix).
    artifacts: dict[str, Callable[[Path], object]] = field(default_factory=dict)
    # Per-example numbers the primary metric is made of when predictions.jsonl lacks them (perplexity: summed
    # loss and target count), written to evidence.json so `tuneforge compare` can bootstrap intervals.
    evidence: dict | None = None


def sorted_loader(ctx: ScoreContext, features: datasets.Dataset | None = None) -> tuple[DataLoader, list[int]]:
    """An evaluation dataloader over `features` sorted by length (longest first), prepared for Accelerate.

    Sorting minimises padding; it never changes a score since every metric is computed per example and
    summed (or computed on the gathered, re-ordered predictions).

    Returns:
        (prepared dataloader, order) where `order[i]` is the original row index of the i-th served example.
    """
    features = ctx.features if features is None else features
    order = sorted(range(len(features)), key=lambda i: -features[i]["length"])
    loader = DataLoader(
        features.select(order),
        batch_size=ctx.batch_size,
        shuffle=False,
        collate_fn=partial(ctx.task.collate, tokenizer=ctx.tokenizer, recipe=ctx.recipe),
    )
    return ctx.accelerator.prepare(loader), order


@torch.no_grad()
def example_losses(ctx: ScoreContext, features: datasets.Dataset | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed loss (nats) and target counts over the whole split, gathered from all processes.

    Returns:
        (nll_sum [N], num_targets [N]) as float64 / int64 CPU tensors in the split's original order.
    """
    loader, order = sorted_loader(ctx, features)
    was_training = ctx.model.training
    ctx.model.eval()
    sums, counts = [], []
    for batch in loader:
        nll, n = ctx.task.loss(ctx.model, batch)
        nll, n = ctx.accelerator.gather_for_metrics((nll.double(), n))
        sums.append(nll.cpu())
        counts.append(n.cpu())
    ctx.model.train(was_training)
    nll_sorted, n_sorted = torch.cat(sums), torch.cat(counts)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return nll_sorted[inverse], n_sorted[inverse]


def perplexity(nll_sum: torch.Tensor, num_tokens: torch.Tensor) -> dict[str, float]:
    """Corpus perplexity exp(total NLL / total scored tokens), never a mean of per-batch perplexities.

    Args:
        nll_sum: [N] summed negative log-likelihood per example, nats.
        num_tokens: [N] scored (non -100) target tokens per example.

    Returns:
        {"perplexity", "loss" (mean NLL per token, nats), "num_tokens"}.
    """
    total, count = float(nll_sum.sum()), int(num_tokens.sum())
    loss = total / max(count, 1)
    return {"perplexity": float(torch.tensor(loss).exp()), "loss": loss, "num_tokens": count}


def loss_evidence(nll_sum: torch.Tensor, num_tokens: torch.Tensor) -> dict:
    """The per-example evidence behind a perplexity: what evidence.json holds for `tuneforge compare`.

    Args:
        nll_sum: [N] summed negative log-likelihood per example, nats, in split order.
        num_tokens: [N] scored target tokens per example.

    Returns:
        ``{"perplexity": {"nll_sum": [N floats], "num_targets": [N ints]}}``; entry i is test row i (the ``id`` of
        predictions.jsonl), so two runs on the same dataset fingerprint pair up example by example.
    """
    return {"perplexity": {"nll_sum": [float(x) for x in nll_sum.tolist()],
                           "num_targets": [int(n) for n in num_tokens.tolist()]}}
