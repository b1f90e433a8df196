"""`tuneforge validate`: schema, files and launch-config checks, without training or loading weights.

Checks that would otherwise fail late on a cluster are made here, before anything starts: the base model and
data exist, LoRA targets exist in the architecture, generation lengths fit the model, and the recipe suits the
Accelerate launch config (gathered saves under ZeRO-3 and FSDP, LoRA under FSDP, ZeRO-Offload, bf16 hardware,
global batch divisibility, gradient clipping and accumulation, gradient checkpointing).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch

from pipelines import checks
from pipelines.errors import TuneforgeError
from pipelines.preflight import Report, check_recipe
from pipelines.recipe import LaunchConfigNotRecipe, Recipe, is_launch_config, load_recipe, read_yaml_file

__all__ = ["Report", "check_launch", "check_recipe", "load_launch_config", "validate_many",
           "world_size"]


def load_launch_config(path: str | Path) -> dict:
    """Read an Accelerate config YAML (as written by `accelerate config`).

    Raises:
        TuneforgeError: missing file, not UTF-8, not valid YAML, not a mapping, or impossible values (all listed).
    """
    path = Path(path)
    if not path.is_file():
        raise TuneforgeError(f"--launch-config: {str(path)!r} does not exist; see recipes/accelerate/")
    cfg = read_yaml_file(path, f"--launch-config: {str(path)!r} is")
    if not isinstance(cfg, dict) or not is_launch_config(cfg):
        recipe_like = isinstance(cfg, dict) and "task" in cfg
        hint = " (it is a tuneforge recipe; give it before --launch-config)" if recipe_like else ""
        raise TuneforgeError(
            f"--launch-config: {str(path)!r} is not an Accelerate config (no distributed_type){hint}; "
            "see recipes/accelerate/"
        )
    problems = launch_value_problems(cfg)
    if problems:
        listed = "\n  ".join(problems)
        raise TuneforgeError(f"--launch-config: {str(path)!r}: {len(problems)} problem(s):\n  {listed}")
    return cfg


def launch_value_problems(cfg: dict) -> list[str]:
    """Values `accelerate launch` cannot run with (it would fail late, on every machine, or hang waiting for ranks).

    The value sets are Accelerate's own (`accelerate.utils.DistributedType`, `PrecisionType`); `num_processes` is the
    total over all machines (Accelerate's convention), so each machine starts num_processes / num_machines.

    Returns:
        One message per problem, naming the key, the value and what is allowed.
    """
    from accelerate.utils import DistributedType, PrecisionType

    problems = []

    def whole(key: str, minimum: int) -> int | None:
        value = cfg.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            problems.append(f"{key}: {value!r} must be a whole number >= {minimum}")
            return None
        return value

    processes, machines, rank = whole("num_processes", 1), whole("num_machines", 1), whole("machine_rank", 0)
    if machines is not None and rank is not None and rank >= machines:
        problems.append(f"machine_rank: {rank} must be below num_machines {machines} (ranks are 0..{machines - 1})")
    if machines is not None and processes is not None and processes % machines:
        problems.append(
            f"num_processes: {processes} is the total over all machines and must be a multiple of num_machines "
            f"{machines} (e.g. {machines * max(1, processes // machines)})"
        )
    port = cfg.get("main_process_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        problems.append(f"main_process_port: {port!r} must be a TCP port between 1 and 65535")
    dist = cfg.get("distributed_type")
    known = [d.value for d in DistributedType]
    if str(dist).upper() not in known:
        close = difflib.get_close_matches(str(dist).upper(), known, n=1)
        problems.append(f"distributed_type: {dist!r} is not one of {known}"
                        + (f"; did you mean {close[0]!r}?" if close else ""))
    precision = cfg.get("mixed_precision")
    if precision is not None and str(precision).lower() not in [p.value for p in PrecisionType]:
        problems.append(f"mixed_precision: {precision!r} must be one of {[p.value for p in PrecisionType]}")
    return problems


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

    # Generation under ZeRO-3 / FSDP works (every rank keeps stepping: `distributed.generation_context`); what
    # cannot work is a final save that cannot gather the sharded weights, or an optimizer DeepSpeed refuses.
    if dist == "DEEPSPEED" and int(ds.get("zero_stage", 0)) == 3 and not _true(ds.get("zero3_save_16bit_model")):
        problems.append(
            "zero3_save_16bit_model: under DeepSpeed ZeRO-3 the final model is gathered from every rank before "
            "saving, which Accelerate only does with zero3_save_16bit_model: true in the launch config "
            "(see recipes/accelerate/deepspeed-zero3.yaml)"
        )
    if dist == "DEEPSPEED" and str(ds.get("offload_optimizer_device", "none")).lower() not in ("none", ""):
        problems.append(
            f"offload_optimizer_device: {ds.get('offload_optimizer_device')!r} (ZeRO-Offload) needs DeepSpeed's "
            "own CPU Adam, and DeepSpeed refuses tuneforge's torch AdamW there; set offload_optimizer_device: none "
            "(offload_param_device can stay)"
        )
    clip = ds.get("gradient_clipping")
    if dist == "DEEPSPEED" and clip not in (None, "auto") and float(clip) != (recipe.train.max_grad_norm or 0.0):
        problems.append(
            f"train.max_grad_norm: DeepSpeed clips gradients itself with the launch config's gradient_clipping "
            f"({clip}), not with the recipe's {recipe.train.max_grad_norm}; make them equal"
        )
    if dist == "FSDP" and _true(fsdp.get("fsdp_cpu_ram_efficient_loading")) \
            and not _true(fsdp.get("fsdp_sync_module_states")):
        problems.append(
            "fsdp_cpu_ram_efficient_loading: only rank 0 loads the weights then, so the others get them only with "
            "fsdp_sync_module_states: true in the launch config"
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
    zero3 = dist == "DEEPSPEED" and int(ds.get("zero_stage", 0)) == 3
    fsdp_sharded = dist == "FSDP" and (int(fsdp.get("fsdp_version", 1)) == 2 or str(
        fsdp.get("fsdp_sharding_strategy", "FULL_SHARD")).upper() not in ("NO_SHARD", "3"))
    if recipe.train.select_best is not None and (zero3 or fsdp_sharded):
        problems.append(
            "train.select_best: keeping the best step's weights is not supported with sharded parameters "
            f"({'DeepSpeed ZeRO-3' if zero3 else 'FSDP'}) yet; launch with DDP or ZeRO-2, or remove train.select_best"
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
    if dist == "DEEPSPEED":
        world = world_size(launch)
        accumulation = recipe.train.gradient_accumulation_steps
        if recipe.train.global_batch_size is not None and recipe.train.global_batch_size % (
                recipe.train.micro_batch_size * world) == 0:
            accumulation = recipe.train.global_batch_size // (recipe.train.micro_batch_size * world)
        if accumulation > 1:
            from pipelines.distributed import deepspeed_accumulation_problem

            problems.append(deepspeed_accumulation_problem(accumulation))
    ds_accum = ds.get("gradient_accumulation_steps")
    if dist == "DEEPSPEED" and ds_accum not in (None, "auto", 1, recipe.train.gradient_accumulation_steps):
        problems.append(
            f"gradient_accumulation_steps: the DeepSpeed config says {ds_accum} but tuneforge accumulates "
            "itself (train.gradient_accumulation_steps); set it to 1 in the launch config"
        )
    return problems


def _true(value) -> bool:
    """A launch-config flag: YAML booleans, or the strings `accelerate config` sometimes writes."""
    return value is True or str(value).lower() == "true"


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
