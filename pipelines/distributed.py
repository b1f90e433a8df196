"""What a multi-process run needs beyond data parallelism: one launch check, one decision maker, gathered saves.

- `check_processes`: a launcher that started N > 1 processes which Accelerate runs undistributed (torchrun on a
  CPU machine without `ACCELERATE_USE_CPU=true`) would train N independent copies that race for one run folder;
  it stops every process before anything is written.
- `main_decides`: facts read from disk (does the run folder hold a run? which checkpoint is the latest?) are
  read by the main process and broadcast, so nodes that do not share a filesystem never disagree about them.
- `save_model`: under FSDP full shard or DeepSpeed ZeRO-3 each rank holds only its shard of the weights (ZeRO-3:
  empty placeholders), so the saved model is gathered from every rank first (`accelerator.get_state_dict`, a
  collective every rank joins) and only the main process writes (Accelerate's "Saving and loading" guide).
- `sharded` / `generation_context`: generation with sharded parameters keeps every rank stepping until all are
  done (`generate(synced_gpus=True)`, as transformers' ZeRO-3 examples do) and, under FSDP 1, gathers the root
  unit's own parameters (`summon_full_params(recurse=False)`) that the unwrapped module's forward does not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list

from pipelines.errors import TuneforgeError

T = TypeVar("T")


def launcher_world_size() -> int:
    """Processes the launcher started: WORLD_SIZE from torchrun / `accelerate launch` (MPI's names too), else 1."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def check_processes(accelerator: Accelerator) -> None:
    """Stop when the launcher started several processes but Accelerate runs each one alone.

    Accelerate only initialises a process group on CPU when told to (`ACCELERATE_USE_CPU=true` or `use_cpu` in
    the launch config); without it each of torchrun's processes sees `DistributedType.NO`, trains the whole run
    by itself and races the others for the run folder. Called before anything is written, on every process, so
    every process exits 2 with the same message.

    Raises:
        TuneforgeError: the launcher's world size is above 1 and Accelerate's is 1.
    """
    launched = launcher_world_size()
    if launched <= 1 or accelerator.num_processes > 1:
        return
    if torch.cuda.is_available():
        fix = ("On GPUs launch with `accelerate launch --config_file accelerate_config.yaml -m pipelines.train "
               "RECIPE` and check that every process sees a GPU (CUDA_VISIBLE_DEVICES)")
    else:
        fix = (f"This machine has no GPU, and Accelerate runs several CPU processes only when told: "
               f"`ACCELERATE_USE_CPU=true torchrun --nproc_per_node {launched} -m pipelines.train RECIPE` (or "
               "`accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m pipelines.train RECIPE`); "
               "one process is `tuneforge train RECIPE`")
    raise TuneforgeError(
        f"launch: the launcher started {launched} processes (WORLD_SIZE={launched}) but Accelerate runs each of "
        f"them alone (distributed_type {accelerator.distributed_type.value}), which would train {launched} "
        f"separate copies into one run folder; nothing was written. {fix}"
    )


def deepspeed_accumulation_problem(accumulation: int) -> str:
    """Why DeepSpeed cannot run `accumulation` micro-batches per process per optimizer step with this loop.

    Accelerate steps the DeepSpeed engine (optimizer step included) after every `accelerator.backward` unless
    gradients are marked as not syncing, which only its `accumulate()` context does; the loop accumulates itself
    (token-weighted, see `loop.train`), so each micro-batch would become an optimizer step.
    """
    return (
        f"train.gradient_accumulation_steps: {accumulation} micro-batches per process per step under DeepSpeed "
        "would each step the optimizer (Accelerate steps the DeepSpeed engine after every backward); use one "
        "micro-batch per step there: raise train.micro_batch_size or the number of processes and set "
        "gradient_accumulation_steps=1 (or a train.global_batch_size of micro_batch_size x processes)"
    )


def check_accumulation(accelerator: Accelerator, accumulation: int) -> None:
    """Refuse gradient accumulation under DeepSpeed, before anything is written (see `deepspeed_accumulation_problem`).

    Raises:
        TuneforgeError: DeepSpeed with more than one micro-batch per process per step.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accumulation > 1:
        raise TuneforgeError(deepspeed_accumulation_problem(accumulation))


def main_decides(accelerator: Accelerator, decide: Callable[..., T], *args, **kwargs) -> T:
    """`decide(*args, **kwargs)` on the main process; every process gets its result or raises its error.

    Facts read from disk must be the main process's: nodes without a shared filesystem see different folders,
    and processes that disagree (one resumes, one starts fresh, one stops with an error) hang in the next
    collective. A `TuneforgeError` is raised on every process with the same message.

    Returns:
        The main process's return value (it must be picklable).

    Raises:
        TuneforgeError: the one `decide` raised on the main process.
    """
    if accelerator.num_processes == 1:
        return decide(*args, **kwargs)
    box: list = [None]
    if accelerator.is_main_process:
        try:
            box[0] = ("ok", decide(*args, **kwargs))
        except TuneforgeError as exc:
            box[0] = ("error", str(exc))
    broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if kind == "error":
        raise TuneforgeError(value)
    return value


def save_model(accelerator: Accelerator, model: torch.nn.Module, out_dir: str | Path) -> torch.nn.Module:
    """Save the trained model (full weights, or a PEFT adapter with its `modules_to_save`) gathered from every rank.

    Every process must call this (gathering is a collective under FSDP / ZeRO-3); only the main process writes.
    A PEFT model gets the full wrapped state dict and keeps only its adapter keys, as its own save does. An adapter
    that trains the rows of added tokens (`trainable_token_indices`, e.g. chat markers) is saved without copies of
    the full embedding matrices: those rows are in the adapter and the rest equal the base, which loading resizes
    first (`modeling.load_model`).

    Args:
        model: the model `accelerator.prepare` returned (or any module it wraps).
        out_dir: the folder to write (`run_dir / "model"`).

    Returns:
        The unwrapped module (for the task's `on_save`, e.g. configs and generation settings).
    """
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)  # full weights on the main process, gathered if sharded
    if accelerator.is_main_process:
        kwargs = {}
        peft_config = getattr(unwrapped, "peft_config", {}).get("default")
        if peft_config is not None:
            kwargs["safe_serialization"] = True  # PEFT's option; transformers 5 always writes safetensors
            if getattr(peft_config, "trainable_token_indices", None):
                kwargs["save_embedding_layers"] = False
            peft_config.base_model_name_or_path = portable_base(peft_config.base_model_name_or_path)
        unwrapped.save_pretrained(out_dir, state_dict=state_dict, **kwargs)
        inner = unwrapped.get_base_model() if peft_config is not None else None
        if inner is not None and inner.can_generate() and inner.generation_config is not None:
            # A full model's save writes generation_config.json; an adapter's does not, and its card needs one.
            inner.generation_config.save_pretrained(out_dir)
    accelerator.wait_for_everyone()
    return unwrapped


def portable_base(base: str | None) -> str | None:
    """An adapter's base as a name that resolves from any directory: a local folder by its absolute path (never
    relative to where training ran, e.g. `runs/gpt-pretrain-tiny/model`), anything else (a Hub id) unchanged.

    The model card records the folder's weight fingerprint beside it (`card.weights_fingerprint`).
    """
    if base and Path(base).expanduser().is_dir():
        return str(Path(base).expanduser().resolve())
    return base


def make_readable(folder: str | Path) -> None:
    """Give every file under `folder` the mode a plain `open()` would (0666 less the umask, usually 0644).

    Some writers (safetensors' and huggingface_hub's atomic writes through `tempfile.mkstemp`) leave files mode
    0600, unreadable to the other users of a shared model folder; `save_pretrained` outputs elsewhere are not.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def sharded(accelerator: Accelerator) -> bool:
    """Whether parameters are sharded across processes: DeepSpeed ZeRO-3, or FSDP with a sharding strategy."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        return plugin is not None and int(plugin.zero_stage or 0) == 3
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        strategy = getattr(plugin, "sharding_strategy", None)
        name = getattr(strategy, "name", str(strategy or ""))
        return getattr(plugin, "fsdp_version", 1) == 2 or name != "NO_SHARD"
    return False


@contextlib.contextmanager
def generation_context(accelerator: Accelerator, model: torch.nn.Module) -> Iterator[bool]:
    """Make `accelerator.unwrap_model(model).generate(...)` work under sharding; yields `synced_gpus`.

    ZeRO-3 gathers each layer's parameters in its forward hooks, so every rank must run the same number of
    forward passes: `generate(synced_gpus=True)` keeps a finished rank stepping until all are done (transformers'
    own default under ZeRO-3 and for FSDP-managed modules; passed explicitly so it never depends on detection).
    FSDP 1 wraps blocks in units that gather themselves, but the root unit's own
    parameters (embeddings, final norm, head) are gathered by the root's forward, which `generate` on the
    unwrapped module skips: `FSDP.summon_full_params(model, recurse=False, writeback=False)` holds them for the
    whole generation (the inner units still gather per forward, hence synced_gpus too). FSDP 2 (`fully_shard`)
    hooks every sharded module itself, so synced stepping is all it needs.
    """
    if not sharded(accelerator):
        yield False
        return
    if accelerator.distributed_type == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model, recurse=False, writeback=False):
            yield True
        return
    yield True


def trainable_only_checkpoints(accelerator: Accelerator, model: torch.nn.Module) -> bool:
    """Make `accelerator.save_state` keep only the parameters that train when some are frozen (LoRA, head-only).

    A LoRA checkpoint then holds the adapter (and `modules_to_save` heads, trained token rows), not the frozen
    base: a resumed run rebuilds the base from `model.base` exactly as the fresh run did (`build` is
    deterministic) and loads only the trained part. Optimizer, scheduler, RNG and sampler states are saved as
    before. Accelerate's model-state hooks are the documented place for this ("Saving and loading states",
    `register_save_state_pre_hook`); FSDP and DeepSpeed save their own sharded states and are left alone.

    Args:
        accelerator: the run's Accelerator.
        model: the prepared model (its `requires_grad` flags are final).

    Returns:
        True when the hooks were registered (some parameter is frozen and the model is not sharded).
    """
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return False
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    if not frozen:
        return False

    def keep_trainable(models: list, weights: list, output_dir: str) -> None:
        for i, state in enumerate(weights):  # buffers stay (small, and some may change in training)
            kept, storages = {}, set()
            for key, value in state.items():
                # Tied tensors (e.g. trained token rows shared by the input and output embeddings) once:
                # safetensors refuses shared memory, and loading one name fills every tied name.
                if key not in frozen and (value.numel() == 0 or _where(value) not in storages):
                    storages.add(_where(value))
                    kept[key] = value
            weights[i] = kept

    def load_trainable(models: list, input_dir: str) -> None:
        from safetensors.torch import load_file

        for i, module in enumerate(models):
            path = Path(input_dir) / f"model{'' if i == 0 else f'_{i}'}.safetensors"
            result = module.load_state_dict(load_file(path), strict=False)  # copied onto each parameter's device
            shared = {name for name in result.missing_keys if name not in frozen}
            if result.unexpected_keys or shared - shared_names(module):
                raise TuneforgeError(
                    f"train.resume: {path} does not match the model (unexpected {result.unexpected_keys[:3]}, "
                    f"missing trained {sorted(shared)[:3]}); resume with the recipe that wrote it, or --overwrite"
                )
        models.clear()  # loaded here; Accelerate's own (strict) load would ask for the frozen base too

    accelerator.register_save_state_pre_hook(keep_trainable)
    accelerator.register_load_state_pre_hook(load_trainable)
    return True



def shared_names(module: torch.nn.Module) -> set[str]:
    """Parameter names whose tensor has another name too (tied weights: a safetensors file holds one of them)."""
    names: dict[tuple, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(_where(p), []).append(name)
    return {name for group in names.values() if len(group) > 1 for name in group}


def _where(tensor: torch.Tensor) -> tuple:
    """Where a tensor's values live: two names with the same place are one (tied) tensor."""
    return tensor.data_ptr(), tuple(tensor.shape), tensor.dtype
