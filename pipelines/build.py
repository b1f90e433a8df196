"""Set-up of a run: data, tokenizer (trained for a scratch model), model (+ LoRA), tokenized splits, optimizer.

Used by training (`pipelines.loop`) and by scoring any model (`pipelines.evaluation`), so both see exactly the
same rows and features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from pipelines import checks, modeling, peft_methods, scratch
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
    data = data_lib.load_data(recipe.data)
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


def lr_lambda(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine / linear decay to 0, or constant.

    Cosine decay as in Loshchilov & Hutter 2017 (SGDR) without restarts, the schedule GPT-style pretraining uses.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019); no weight decay on biases and norms (1-D parameters), as in nanoGPT.

    The fused kernel (one pass over each parameter instead of a chain of element-wise ops; `Trainer`'s default
    `adamw_torch_fused` since torch 2.8) whenever every parameter is a floating-point tensor on CPU or CUDA.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if recipe.lora is not None and recipe.lora.lr_ratio is not None:
        return peft_methods.loraplus_optimizer(model, recipe, fused)
    return torch.optim.AdamW(groups, lr=recipe.train.learning_rate, betas=recipe.train.adam_betas, fused=fused)


def sample_texts(recipe: Recipe, rows: datasets.Dataset, n: int = 64) -> list[str]:
    """Up to `n` training rows' texts (every string column the recipe's `data.columns` names), for tokenizer checks."""
    columns = ["text"] if recipe.data.mix else [
        c for cols in recipe.data.columns.values() for c in ([cols] if isinstance(cols, str) else cols)
    ]
    head = rows.select(range(min(n, len(rows))))
    return [v for c in columns if c in head.column_names for v in head[c] if isinstance(v, str)]
