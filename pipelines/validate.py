"""`tuneforge validate`: schema, files and launch-config checks, without training or loading weights.

Checks that would otherwise fail late on a cluster are made here, before anything starts: the base model and
data exist, LoRA targets exist in the architecture, generation lengths fit the model, and the recipe suits the
Accelerate launch config (ZeRO-3 generation, LoRA under FSDP, bf16 hardware, global batch divisibility,
gradient checkpointing).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from pipelines import checks
from pipelines.errors import TuneforgeError
from pipelines.preflight import Report, check_recipe
from pipelines.recipe import LaunchConfigNotRecipe, Recipe, is_launch_config, load_recipe
from pipelines.tasks import get_task

__all__ = ["Report", "check_launch", "check_recipe", "load_launch_config", "validate_many",
           "world_size"]


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
    generates = get_task(recipe.task).generates and recipe.eval.generate

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
    problem = checks.global_batch_problem(recipe.train, world_size(launch))
    if problem:
        problems.append(problem)
    ds_accum = ds.get("gradient_accumulation_steps")
    if dist == "DEEPSPEED" and ds_accum not in (None, "auto", 1, recipe.train.gradient_accumulation_steps):
        problems.append(
            f"gradient_accumulation_steps: the DeepSpeed config says {ds_accum} but tuneforge accumulates "
            "itself (train.gradient_accumulation_steps); set it to 1 in the launch config"
        )
    return problems


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
