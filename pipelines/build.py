"""Set-up of a run: data, tokenizer (trained for a scratch model), model (+ LoRA), tokenized splits, optimizer.

Used by training (`pipelines.loop`) and by scoring any model (`pipelines.evaluation`), so both see exactly the
same rows and features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from pipelines import checks, modeling, scratch
from pipelines import data as data_lib
from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe
from pipelines.tasks import Task, get_task
from pipelines.tokenized import tokenize_cached


@dataclass
class Prepared:
    """A model ready to train with its tokenizer and tokenized splits."""

    task: Task
    model: torch.nn.Module
    tokenizer: object
    data: datasets.DatasetDict  # raw rows
    features: dict[str, datasets.Dataset]  # tokenized rows per split


def build(recipe: Recipe, run_dir: Path, accelerator: Accelerator, mode: str, *, merge: bool = True) -> Prepared:
    """Load data, the tokenizer (training one for scratch models) and the model, then wrap it with LoRA.

    Args:
        mode: "fresh" or "resume" (a resumed scratch run reuses the tokenizer it trained).
        merge: a LoRA run named as base is merged into its base (to train on); False keeps the adapter
            separate, exactly the trained computation (for scoring).
    """
    task = get_task(recipe.task)
    problems = checks.role_problems(task.name, task.roles, task.optional_roles, recipe.data.columns)
    if problems:
        raise TuneforgeError("\n".join(problems))
    data = data_lib.load_data(recipe.data, task.stratify_role)
    model_dir = run_dir / "model"
    if recipe.model.scratch is not None:
        if accelerator.is_main_process and mode == "fresh":
            texts = data["train"].select(range(min(len(data["train"]), recipe.model.scratch.tokenizer_max_texts)))
            column = "text" if recipe.data.mix else recipe.data.columns["text"]
            tokenizer = scratch.train_tokenizer((t for t in texts[column] if t), recipe.model.scratch)
            tokenizer.save_pretrained(model_dir)
        accelerator.wait_for_everyone()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        tokenizer = modeling.load_tokenizer(recipe.model.base)
    modeling.check_tokenizer_fits(tokenizer, sample_texts(recipe, data["train"]),
                                  "model.scratch" if recipe.model.scratch is not None else "model.base")
    model_kwargs = {}
    vocab_before = len(tokenizer)
    if task.prepare is not None:
        data, model_kwargs = task.prepare(recipe, data, tokenizer)
    added_tokens = list(range(vocab_before, len(tokenizer)))  # e.g. chat markers; their embedding rows must train
    set_seed(recipe.train.seed)  # identical initial weights on every process and every resume
    if recipe.model.scratch is not None:
        config = scratch.build_config(recipe.model.scratch, tokenizer)
        config._attn_implementation = recipe.model.attn_implementation
        model = task.auto_model.from_config(config)
    else:
        model = modeling.load_model(
            recipe.model.base, task.auto_model, merge=merge, attn_implementation=recipe.model.attn_implementation,
            **model_kwargs,
        )
    if added_tokens:
        modeling.fit_embeddings(model, len(tokenizer))
    if recipe.model.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if recipe.lora is not None:
            model.enable_input_require_grads()  # LoRA + checkpointing: frozen embeddings need grad-carrying inputs
    if recipe.lora is not None:
        model = modeling.apply_lora(model, recipe.lora, task.peft_task_type, trainable_token_indices=added_tokens)
    elif recipe.train.trainable == "head":
        modeling.freeze_all_but_head(model)
    features = {s: tokenize_cached(task, data[s], tokenizer, recipe, s) for s in data}
    return Prepared(task, model, tokenizer, data, features)


def sample_texts(recipe: Recipe, rows: datasets.Dataset, n: int = 64) -> list[str]:
    """Up to `n` training rows' texts (every string column the recipe's `data.columns` names), for tokenizer checks."""
    columns = ["text"] if recipe.data.mix else [
        c for cols in recipe.data.columns.values() for c in ([cols] if isinstance(cols, str) else cols)
    ]
    head = rows.select(range(min(n, len(rows))))
    return [v for c in columns if c in head.column_names for v in head[c] if isinstance(v, str)]
