"""The checks of one recipe that need its files: data source, model structure (on the meta device), lengths.

`tuneforge validate` prints them as a report; `train` runs them before anything is written (`preflight`). The
rules themselves live in `pipelines.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines import checks, modeling, peft_methods, selection
from pipelines import data as data_lib
from pipelines.errors import TuneforgeError
from pipelines.optim import check_optimizer
from pipelines.recipe import Recipe
from pipelines.tasks import get_task
from pipelines.trackers import check_report_to


@dataclass
class Report:
    """What validation found for one recipe: errors fail it (exit 2), notes are informational."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _meta_model(recipe: Recipe, task) -> torch.nn.Module | None:
    """The model's module structure on the meta device (no weights loaded), or None for a Hub id offline.

    A Hub id is read from the Hugging Face cache when it is there (`HF_HUB_OFFLINE=1` on an air-gapped cluster),
    else from the Hub when it is reachable; only the config is read.
    """
    if recipe.model.scratch is not None:
        from pipelines import scratch

        class _Tok:  # the ids a scratch config needs; the vocabulary size stands in for the real tokenizer
            bos_token_id, pad_token_id, eos_token_id = 0, 1, 2

            def __len__(self):
                return recipe.model.scratch.vocab_size

        config = scratch.build_config(recipe.model.scratch, _Tok())
    else:
        path = modeling.resolve_base(recipe.model.base)
        try:
            config = modeling.base_config(recipe.model.base)
        except OSError:
            if Path(path).exists():
                raise
            return None  # a Hub id that is neither in the Hugging Face cache nor reachable
    with torch.device("meta"):
        return task.auto_model.from_config(config)


def model_in_hub_cache(base: str) -> bool:
    """True when `base` is a Hub id (not a local path or alias) whose config.json is in the Hugging Face cache
    (`huggingface_hub.try_to_load_from_cache`, the lookup `from_pretrained` falls back to offline)."""
    from huggingface_hub import try_to_load_from_cache

    if base.startswith("builtin:") or Path(base).expanduser().exists():
        return False
    try:
        return isinstance(try_to_load_from_cache(base, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def dataset_in_cache(source: str) -> bool:
    """True when `datasets` would load the Hub dataset `source` from its own cache offline: the folder
    `<HF_DATASETS_CACHE>/<namespace>___<name>/<config>/<version>/<hash>/` that `datasets.load`'s
    `CachedDatasetModuleFactory` looks for (the name in snake case, as it writes it)."""
    import datasets
    from datasets.naming import camelcase_to_snakecase

    parts = source.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(datasets.config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)
    return any(p.is_dir() for p in root.glob("*/*/*"))


def check_recipe(recipe: Recipe) -> Report:
    """Files, data, model structure and generation settings of one recipe."""
    report = Report()
    task = get_task(recipe.task)
    report.errors += checks.role_problems(recipe.task, task.roles, task.optional_roles, recipe.data.columns)
    report.errors += selection.metric_problems(recipe, task)
    try:
        data_lib.check_source(recipe.data)
        for i, mix in enumerate(recipe.data.mix):
            data_lib.check_source(mix, f"data.mix[{i}].source")
        source_ok = True
    except TuneforgeError as exc:
        report.errors.append(str(exc))
        source_ok = False
    if source_ok and data_lib.source_kind(recipe.data.source) == "hub":
        if dataset_in_cache(recipe.data.source):
            report.notes.append(f"data.source {recipe.data.source!r} is a Hub dataset in the local datasets cache "
                                "(loads offline; columns not checked)")
        else:
            report.notes.append(f"data.source {recipe.data.source!r} is a Hub dataset (needs network; not checked)")
    for check, value in ((check_report_to, recipe.train.report_to), (check_optimizer, recipe.train.optim)):
        try:
            check(value)
        except TuneforgeError as exc:
            report.errors.append(str(exc))
    if recipe.train.warmup_steps >= recipe.train.max_steps:
        report.notes.append(
            f"train.warmup_steps: {recipe.train.warmup_steps} >= train.max_steps {recipe.train.max_steps}, so the "
            "learning rate never reaches train.learning_rate; lower warmup_steps for a full run"
        )
    model = None
    try:
        model = _meta_model(recipe, task)
        if model is None:
            report.notes.append(f"model.base {recipe.model.base!r} is a Hub id (needs network; not loaded)")
        elif recipe.model.base and model_in_hub_cache(recipe.model.base):
            report.notes.append(f"model.base {recipe.model.base!r} is a Hub id found in the local Hugging Face cache "
                                "(checked offline)")
    except TuneforgeError as exc:
        hint = modeling.producing_recipe_hint(recipe.model.base or "")
        if recipe.model.base and "Train it first" in hint and "does not exist" in str(exc):
            report.notes.append(f"model.base {recipe.model.base!r} is not trained yet. {hint}")
        else:
            report.errors.append(str(exc))
    if model is not None:
        if recipe.lora is not None:
            problem = checks.lora_target_problem(recipe.lora.target_modules, modeling.lora_target_names(model),
                                                 type(model).__name__)
            problem = problem or peft_methods.conv1d_problem(recipe.lora, peft_methods.has_conv1d(model))
            if problem:
                report.errors.append(problem)
        config = model.config
        positions = checks.context_length(config)
        problem = checks.max_length_problem(recipe.data.max_length, positions)
        if problem:
            report.errors.append(problem)
        if positions and task.generates and recipe.eval.generation.max_new_tokens > positions:
            report.errors.append(
                f"eval.generation.max_new_tokens: {recipe.eval.generation.max_new_tokens} exceeds the model's "
                f"{positions} positions"
            )
    if model is not None and recipe.model.base and source_ok and task.check is not None and not report.errors:
        notes, errors = _check_example(recipe, task)
        report.notes += notes
        report.errors += errors
    return report


def _check_example(recipe: Recipe, task) -> tuple[list[str], list[str]]:
    """The task's own look at one real training example, with the tokenizer the run will use."""
    tokenizer = modeling.load_tokenizer(recipe.model.base)
    data = data_lib.load_data(recipe.data.model_copy(update={"train_limit": 1, "validation_limit": 1,
                                                              "test_limit": 1}))
    if task.prepare is not None:
        data, _ = task.prepare(recipe, data, tokenizer)
    return task.check(recipe, tokenizer, data["train"])


def preflight(recipe: Recipe) -> None:
    """`tuneforge validate`'s checks, run before anything is written.

    Raises:
        TuneforgeError: every problem found, one per line (a base that is not trained yet is one here).
    """
    if recipe.model.base:
        modeling.resolve_base(recipe.model.base)
    report = check_recipe(recipe)
    if report.errors:
        raise TuneforgeError("\n".join(report.errors))
