"""Process and device helpers every stage shares: the Accelerator the loop runs under, which process writes
files, reaching the model inside Accelerate/DDP wrappers, and host memory tuning for CPU training.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only where a run needs it, not for every CLI command
    import torch


def is_main_process() -> bool:
    """True on the process that writes files: rank 0 of a launch (`RANK` as torchrun/accelerate set it), or the
    only process. Readable before (and without) an Accelerator."""
    return int(os.environ.get("RANK", "0")) == 0


def unwrap(model):
    """The model inside DDP / DeepSpeed / `torch.compile` wrappers (Accelerate's `extract_model_from_parallel`,
    what `Accelerator.unwrap_model` calls)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def inner_model(model):
    """The transformers model inside any process wrapper and a PEFT wrapper (the model itself when unwrapped)."""
    model = unwrap(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def make_accelerator(run_dir: Path, report_to: list[str] | None = None):
    """The Accelerator a training run uses: the recipe's trackers (`train.report_to`; TensorBoard logs into
    `run_dir/tensorboard`), the scheduler stepped by the loop. Warns when bf16 would be emulated on this CPU
    (slower than fp32).

    Args:
        run_dir: the run folder.
        report_to: Accelerate tracker names; None or empty: no tracker.

    Raises:
        TuneforgeError: a tracker whose package is not installed (`pipelines.trackers.check_report_to`).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from pipelines.trackers import check_report_to

    check_report_to(report_to or [])
    accelerator = Accelerator(
        log_with=list(report_to) if report_to else None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        step_scheduler_with_optimizer=False,
    )
    if accelerator.is_main_process and accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu":
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # oneDNN's check for AVX512-BF16 / AMX
            warnings.warn(
                "mixed_precision bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated and slower "
                "than fp32; launch without --mixed_precision bf16",
                stacklevel=3,
            )
    return accelerator


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc <malloc.h>


def keep_freed_memory_mapped(device: torch.device) -> None:
    """On CPU with glibc, let freed large blocks be reused instead of unmapped (no page faults every step).

    glibc's malloc serves blocks above its mmap threshold with fresh `mmap`s and unmaps them on free, so each
    step page-faults and zero-fills its large activations again (the logits alone are batch x length x vocab
    floats). PyTorch's CPU performance tuning guide swaps in jemalloc/tcmalloc for this; raising glibc's mmap and
    trim thresholds (`mallopt`) gets the same reuse from the C library already loaded. Freed blocks stay mapped,
    so peak resident memory grows a little. Does nothing on GPUs, other platforms, or C libraries without
    `mallopt` (musl). (Measured effect: docs/measurements.md.)
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 2**30)
        libc.mallopt(M_TRIM_THRESHOLD, 2**30)
    except (OSError, AttributeError):
        pass
