"""One home per rule: the recipe checks that `tuneforge validate`, the pre-flight of `train`, model loading and the
tasks all make, as pure functions that return messages (empty when the rule holds).

Each message names the field, the value and the fix, so the same rule reads the same wherever it fires; callers
decide whether a message is an error to raise now or one line of a validation report.
"""

from __future__ import annotations

import difflib


def role_problems(task_name: str, roles: tuple[str, ...], optional: tuple[str, ...], columns: dict) -> list[str]:
    """`data.columns` against the roles a task reads.

    Args:
        task_name: the recipe's task.
        roles: the roles the task needs; `optional`: those it may use.
        columns: the recipe's `data.columns` (role -> column).

    Returns:
        One message per missing role, then one per role the task does not use (with a did-you-mean).
    """
    problems = [f"data.columns.{role}: task {task_name!r} needs it (the column holding {role})"
                for role in roles if role not in columns]
    known = [*roles, *optional]
    for role in columns:
        if role not in known:
            close = difflib.get_close_matches(role, known, n=1)
            hint = f"did you mean 'data.columns.{close[0]}'?" if close else f"task {task_name!r} uses {known}"
            problems.append(f"data.columns.{role}: not a role of task {task_name!r}; {hint}")
    return problems


def lora_target_problem(targets, available: list[str], model_name: str) -> str | None:
    """LoRA `target_modules` the model does not have (`auto` always fits).

    Args:
        targets: the recipe's `lora.target_modules` ("auto" or names).
        available: the model's targetable leaf names (`modeling.lora_target_names`).
        model_name: the model class, named in the message.
    """
    if targets == "auto":
        return None
    missing = [m for m in targets if m not in available]
    return f"lora.target_modules: {missing} not in {model_name}; it has {available}" if missing else None


def global_batch_problem(train_cfg, world: int) -> str | None:
    """`train.global_batch_size` must split into micro-batches x processes (None when unset)."""
    if train_cfg.global_batch_size is None:
        return None
    per_pass = train_cfg.micro_batch_size * world
    if train_cfg.global_batch_size % per_pass:
        return (f"train.global_batch_size: {train_cfg.global_batch_size} is not divisible by micro_batch_size "
                f"{train_cfg.micro_batch_size} x {world} processes; pick a multiple of {per_pass}")
    return None


def context_length(config) -> int | None:
    """The model's position limit from its config: GPT-2's `n_positions`, else `max_position_embeddings`.

    Returns:
        The number of positions, or None for a model without a fixed table (e.g. rotary without a limit set).
    """
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def max_length_problem(max_length: int, positions: int | None, advice: str = "") -> str | None:
    """`data.max_length` must fit the model's positions; `advice` is appended to the fix."""
    if positions and max_length > positions:
        return f"data.max_length: {max_length} exceeds the model's {positions} positions; " \
               f"set data.max_length<={positions}{advice}"
    return None
