"""`tuneforge validate`: schema, files and launch-config checks, without training or loading weights.

Checks that would otherwise fail late on a cluster are made here, before anything starts: the base model and
data exist, LoRA targets exist in the architecture, generation lengths fit the model, and the recipe suits the
Accelerate launch config (ZeRO-3 generation, LoRA under FSDP, bf16 hardware, global batch divisibility,
gradient checkpointing).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from pipelines import data as data_lib
from pipelines import modeling
from pipelines.errors import TuneforgeError
from pipelines.recipe import LaunchConfigNotRecipe, Recipe, is_launch_config, load_recipe

GENERATION_TASKS = ("seq2seq", "chat")


@dataclass
class Report:
    """What validation found for one recipe: errors fail it (exit 2), notes are informational."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_launch_config(path: str | Path) -> dict:
    """Read an Accelerate config YAML (as written by `accelerate config`).

    Raises:
        TuneforgeError: missing file or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise TuneforgeError(f"--launch-config: {str(path)!r} does not exist; see recipes/accelerate/")
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict) or not is_launch_config(cfg):
        recipe_like = isinstance(cfg, dict) and "task" in cfg
        hint = " (it is a tuneforge recipe; give it before --launch-config)" if recipe_like else ""
        raise TuneforgeError(
            f"--launch-config: {str(path)!r} is not an Accelerate config (no distributed_type){hint}; "
            "see recipes/accelerate/"
        )
    return cfg


def world_size(launch: dict | None) -> int:
    """Processes across all machines that a launch config starts (1 without a config)."""
    if not launch:
        return 1
    return int(launch.get("num_processes") or 1)


def check_launch(recipe: Recipe, launch: dict) -> list[str]:
    """Recipe x launch-config combinations that fail late on a cluster.

    Returns:
        One message per problem, each with the reason and the fix.
    """
    problems = []
    dist = str(launch.get("distributed_type", "NO")).upper()
    precision = str(launch.get("mixed_precision", "no")).lower()
    ds = launch.get("deepspeed_config") or {}
    fsdp = launch.get("fsdp_config") or {}
    generates = recipe.task in GENERATION_TASKS and recipe.eval.generate

    if dist == "DEEPSPEED" and int(ds.get("zero_stage", 0)) == 3 and generates:
        problems.append(
            "eval.generate: generation-based evaluation under DeepSpeed ZeRO-3 needs every rank to step through "
            "generate() together (parameters are sharded), and ranks finish at different lengths; "
            "use recipes/accelerate/deepspeed-zero2.yaml, or set eval.generate=false and score with "
            "`tuneforge eval RUN_DIR` on one process"
        )
    if dist == "FSDP" and recipe.lora is not None:
        if not fsdp.get("fsdp_use_orig_params", False):
            problems.append(
                "lora: under FSDP, LoRA mixes frozen and trainable parameters in one flat shard, which needs "
                "fsdp_use_orig_params: true in the launch config (see recipes/accelerate/fsdp.yaml)"
            )
        if fsdp.get("fsdp_auto_wrap_policy") not in (None, "TRANSFORMER_BASED_WRAP"):
            problems.append(
                "lora: under FSDP use fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP so each block (with its "
                f"adapters) is one unit; got {fsdp.get('fsdp_auto_wrap_policy')!r}"
            )
    if dist == "FSDP" and recipe.model.gradient_checkpointing and fsdp.get("fsdp_activation_checkpointing"):
        problems.append(
            "model.gradient_checkpointing: the launch config already sets fsdp_activation_checkpointing; "
            "checkpointing twice recomputes twice. Turn one off"
        )
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        problems.append(
            f"mixed_precision: bf16 asked, but {torch.cuda.get_device_name(0)} has no bf16 support; "
            "use mixed_precision: fp16 (or no)"
        )
    if precision == "fp16" and dist == "NO" and launch.get("use_cpu"):
        problems.append("mixed_precision: fp16 autocast is for GPUs; use bf16 or no on CPU")
    if recipe.train.global_batch_size is not None:
        world = world_size(launch)
        per_step = recipe.train.micro_batch_size * world
        if recipe.train.global_batch_size % per_step:
            problems.append(
                f"train.global_batch_size: {recipe.train.global_batch_size} is not divisible by micro_batch_size "
                f"{recipe.train.micro_batch_size} x {world} processes; pick a multiple of {per_step}"
            )
    ds_accum = ds.get("gradient_accumulation_steps")
    if dist == "DEEPSPEED" and ds_accum not in (None, "auto", 1, recipe.train.gradient_accumulation_steps):
        problems.append(
            f"gradient_accumulation_steps: the DeepSpeed config says {ds_accum} but tuneforge accumulates "
            "itself (train.gradient_accumulation_steps); set it to 1 in the launch config"
        )
    return problems


def _meta_model(recipe: Recipe, task) -> torch.nn.Module | None:
    """The model's module structure on the meta device (no weights loaded), or None for a Hub id offline."""
    if recipe.model.scratch is not None:
        from pipelines import scratch

        class _Tok:  # the ids a scratch config needs; the vocabulary size stands in for the real tokenizer
            bos_token_id, pad_token_id, eos_token_id = 0, 1, 2

            def __len__(self):
                return recipe.model.scratch.vocab_size

        config = scratch.build_config(recipe.model.scratch, _Tok())
    else:
        path = modeling.resolve_base(recipe.model.base)
        if not Path(path).exists():
            return None
        config = modeling.base_config(recipe.model.base)
    with torch.device("meta"):
        return task.auto_model.from_config(config)


def check_recipe(recipe: Recipe) -> Report:
    """Files, data, model structure and generation settings of one recipe."""
    from pipelines.tasks import get_task

    report = Report()
    task = get_task(recipe.task)
    for role in task.roles:
        if role not in recipe.data.columns:
            report.errors.append(f"data.columns.{role}: task {recipe.task!r} needs it (the column holding {role})")
    known_roles = [*task.roles, *task.optional_roles]
    for role in recipe.data.columns:
        if role not in known_roles:
            close = difflib.get_close_matches(role, known_roles, n=1)
            hint = f"did you mean 'data.columns.{close[0]}'?" if close else f"task {recipe.task!r} uses {known_roles}"
            report.errors.append(f"data.columns.{role}: not a role of task {recipe.task!r}; {hint}")
    try:
        data_lib.check_source(recipe.data)
        for i, mix in enumerate(recipe.data.mix):
            data_lib.check_source(mix, f"data.mix[{i}].source")
        source_ok = True
    except TuneforgeError as exc:
        report.errors.append(str(exc))
        source_ok = False
    if source_ok and data_lib.source_kind(recipe.data.source) == "hub":
        report.notes.append(f"data.source {recipe.data.source!r} is a Hub dataset (needs network; not checked)")
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
    except TuneforgeError as exc:
        hint = modeling.producing_recipe_hint(recipe.model.base or "")
        if recipe.model.base and "Train it first" in hint and "does not exist" in str(exc):
            report.notes.append(f"model.base {recipe.model.base!r} is not trained yet. {hint}")
        else:
            report.errors.append(str(exc))
    if model is not None:
        if recipe.lora is not None and recipe.lora.target_modules != "auto":
            available = modeling.lora_target_names(model)
            missing = [m for m in recipe.lora.target_modules if m not in available]
            if missing:
                report.errors.append(
                    f"lora.target_modules: {missing} not in {type(model).__name__}; it has {available}"
                )
        config = model.config
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if positions and recipe.data.max_length > positions:
            report.errors.append(
                f"data.max_length: {recipe.data.max_length} exceeds the model's {positions} positions; "
                f"set data.max_length<={positions}"
            )
        if positions and recipe.task in GENERATION_TASKS and recipe.eval.generation.max_new_tokens > positions:
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


def validate_many(paths: list[str], overrides: list[str], launch_config: str | None = None) -> int:
    """Validate recipes; print one line per recipe (plus its problems). Returns the exit code (0 or 2)."""
    launch = load_launch_config(launch_config) if launch_config else None
    failed = 0
    for path in paths:
        try:
            recipe = load_recipe(path, overrides)
            report = check_recipe(recipe)
            if launch is not None:
                report.errors += check_launch(recipe, launch)
        except LaunchConfigNotRecipe:
            print(f"skip {path} (an Accelerate launch config: use it as --launch-config)")
            continue
        except TuneforgeError as exc:
            report = Report(errors=[str(exc)])
        status = "FAIL" if report.errors else "ok"
        where = f" with {launch_config}" if launch_config else ""
        print(f"{status:4} {path}{where}")
        for line in report.errors:
            print(f"     error: {line}")
        for line in report.notes:
            print(f"     note: {line}")
        failed += bool(report.errors)
    return 2 if failed else 0
