"""Task families: one small module each (plain functions plus the `Task` record), in a literal registry.

A task turns rows into token tensors (`tokenize`, `collate`), defines the training loss as per-example sums
(`loss`), and scores a model on the test split (`score`). The shared loop in `pipelines.loop` does the rest.
Everything the rest of the code needs to know about a task (does it generate, its throughput unit, how the demo
feeds it, how its model card loads it, whether it scores packed windows) is a field of its `Task`, so no module
outside this package compares task names. `TASK_NAMES` is the registry's list of names (the recipe schema's
allowed values); a test keeps it equal to the registered tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from pipelines.tasks.names import LOSS_SCORES, TASK_NAMES, TASK_SECTIONS

__all__ = ["TASK_NAMES", "TASK_SECTIONS", "Task", "get_task", "registry"]


@dataclass(frozen=True)
class Task:
    """What the shared loop needs to know about a task family.

    Attributes:
        name: the recipe's `task` value.
        auto_model: the transformers Auto class that loads the model (e.g. `AutoModelForCausalLM`).
        peft_task_type: PEFT's `TaskType` name for LoRA (e.g. "CAUSAL_LM").
        roles: data.columns roles the recipe must map (e.g. ("text",)); `optional_roles` may be mapped.
        primary_metric / greater_is_better: how comparison tables rank runs.
        tokenize: (rows, tokenizer, recipe, split) -> Dataset with `input_ids`, `labels` and `length`.
        collate: (features, tokenizer, recipe, pad_to_multiple_of=8) -> batch of padded tensors; the loop pads
            training batches to 8 on GPUs only (`pipelines.batching.pad_multiple`).
        loss: (model, batch) -> (per-example summed loss [B] in nats, per-example target count [B]).
        num_targets: (batch) -> number of loss targets in the batch, computed on the host before the forward.
        score: (ScoreContext) -> Scored (scores, metric settings, predictions).
        prepare: (recipe, data, tokenizer) -> (data, from_pretrained kwargs); label maps, chat templates.
        on_save: (model_dir, unwrapped model, tokenizer, recipe) -> None; extra files for the saved model.
        check: (recipe, tokenizer with the template installed, training rows) -> (notes, errors); `validate`'s
            look at a real example (chat: the rendered conversation and its loss mask).
        token_level: the loss is a mean over tokens, so exp(loss) is a perplexity worth logging; False for
            classification (one cross-entropy per example).
        generates: scored by generating text (`eval.generate`), so generation lengths and sharded generation
            matter to validation.
        demo_feed: how the demo feeds the model one user text: "continue" (a prompt to continue), "turn" (a user
            turn of a conversation), "source" (an encoder input), "classify" (label probabilities).
        throughput_unit: what training speed is counted in, "tokens" or "examples" (a classifier reads whole
            examples; tokens/s would reward longer texts).
        scores_packed_windows: `data.packing` packs the scored split too, so the dataset name says "packed".
        trains_on_windows: trains on windows cut from running text (pretraining-style), which the demo's
            windows view shows.
        scores_forgetting: a language model whose perplexity on a fixed general-English slice is scored with
            the base and the run (`eval.forgetting`), so tables show what finetuning cost it.
        head_in_config: the model's head is sized from the run's config (labels), so its base loads with the
            run's config and its LoRA model card loads it that way.
        metrics: (recipe) -> the scalar scores `score` reports under that recipe, which validation during training
            logs and `train.select_best` may name; None: the loss scores (`names.LOSS_SCORES`).
        stratify_role: the `data.columns` role whose values the validation/test limits stratify by (classification:
            "label", so every class is scored), or None for plain seeded samples (`pipelines.subsets`).
    """

    name: str
    auto_model: Any
    peft_task_type: str
    roles: tuple[str, ...]
    primary_metric: str
    greater_is_better: bool
    tokenize: Callable[..., datasets.Dataset]
    collate: Callable[..., dict[str, torch.Tensor]]
    loss: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    num_targets: Callable[[dict], int]
    score: Callable[..., Any]
    optional_roles: tuple[str, ...] = ()
    prepare: Callable[..., tuple[datasets.DatasetDict, dict]] | None = None
    on_save: Callable[..., None] | None = None
    check: Callable[..., tuple[list[str], list[str]]] | None = None
    token_level: bool = True
    generates: bool = False
    demo_feed: str = "continue"
    throughput_unit: str = "tokens"
    scores_packed_windows: bool = False
    trains_on_windows: bool = False
    scores_forgetting: bool = False
    head_in_config: bool = False
    metrics: Callable[[Any], tuple[str, ...]] | None = None

    def metric_names(self, recipe) -> tuple[str, ...]:
        """The scalar scores this task reports under `recipe` (see `metrics`)."""
        return self.metrics(recipe) if self.metrics is not None else LOSS_SCORES
    stratify_role: str | None = None




def registry() -> dict[str, Task]:
    """Every registered task by name, in `TASK_NAMES` order."""
    from pipelines.tasks import causal_lm, chat, classification, denoising, seq2seq

    tasks = {t.name: t for t in (causal_lm.TASK, seq2seq.TASK, denoising.TASK, classification.TASK, chat.TASK)}
    return {name: tasks[name] for name in TASK_NAMES}


def get_task(name: str) -> Task:
    """The registered task called `name` (the recipe schema already restricts names to `TASK_NAMES`).

    Raises:
        KeyError: no task family of that name.
    """
    return registry()[name]
