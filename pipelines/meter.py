"""What a run's training steps cost: one small meter instead of loose counters in the loop.

It counts on the host copy of each batch (no step waits on the device for a number) and turns the counts into
the `train` part of the run record: tokens/s over all and non-padding tokens, examples/s, peak memory and model
FLOP utilisation against a matmul timed in the same run (`pipelines.flops`). Its state is a plain JSON-able dict
(`state_dict`/`load_state_dict`) so a checkpoint can carry it and a resumed run reports whole-run totals.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipelines import flops


@dataclass
class Meter:
    """Per-process totals of the training steps run so far.

    Attributes:
        tokens: input positions, padding included.
        nonpad_tokens: input positions that are not padding.
        examples: training examples (rows of micro-batches).
        model_flops: model FLOPs of the real tokens (`flops.batch_flops`).
        seconds: wall-clock seconds inside training steps.
    """

    tokens: int = 0
    nonpad_tokens: int = 0
    examples: int = 0
    model_flops: float = 0.0
    seconds: float = 0.0

    def count(self, batch: dict[str, torch.Tensor], spec) -> None:
        """Add one micro-batch (host tensors: `input_ids` [B, T], optional `attention_mask` [B, T])."""
        ids = batch["input_ids"]
        self.tokens += ids.numel()
        self.nonpad_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
        self.examples += ids.size(0)
        self.model_flops += float(flops.batch_flops(spec, batch))

    def state_dict(self) -> dict:
        """The totals as a plain JSON-able dict."""
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore totals saved by `state_dict` (e.g. from a checkpoint)."""
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key))(value))

    def summary(self, accelerator, mfu: dict[str, float] | None = None) -> dict:
        """The run record's throughput fields over all processes (every process runs the same number of steps).

        Args:
            accelerator: the run's Accelerator (process count, device).
            mfu: `utilisation(...)` measured earlier (e.g. before scoring), or None to measure it now.

        Returns:
            {"examples", "tokens", "nonpad_tokens", "padding_fraction", "seconds", "tokens_per_s",
            "nonpad_tokens_per_s", "examples_per_s", "peak_memory_mb", "model_flops", "model_flops_per_s",
            "matmul_flops_per_s", "mfu"}; seconds are this process's step time.
        """
        world = accelerator.num_processes
        ntok, nonpad, examples = self.tokens * world, self.nonpad_tokens * world, self.examples * world
        seconds = max(self.seconds, 1e-9)
        return {
            "examples": examples,
            "tokens": ntok,
            "nonpad_tokens": nonpad,
            "padding_fraction": 1 - nonpad / max(ntok, 1),
            "seconds": self.seconds,
            "tokens_per_s": ntok / seconds,
            "nonpad_tokens_per_s": nonpad / seconds,
            "examples_per_s": examples / seconds,
            "peak_memory_mb": peak_memory_mb(accelerator.device),
            **(mfu if mfu is not None else utilisation(accelerator, self.model_flops, self.seconds)),
        }


def utilisation(accelerator, model_flops: float, seconds: float) -> dict[str, float]:
    """Model FLOPs of this run's training steps and their utilisation of a matmul timed now (`pipelines.flops`).

    Args:
        model_flops: this process's training FLOPs (real tokens only).
        seconds: training seconds (the loop's step time).

    Returns:
        {"model_flops", "model_flops_per_s", "matmul_flops_per_s" (per process), "mfu" (0-1)} over all processes.
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    total = float(accelerator.reduce(torch.tensor(model_flops, device=accelerator.device, dtype=torch.float64),
                                     "sum"))
    peak = flops.matmul_flops_per_s(accelerator.device, dtype)
    rate = total / max(seconds, 1e-9)
    return {"model_flops": total, "model_flops_per_s": rate, "matmul_flops_per_s": peak,
            "mfu": rate / (peak * accelerator.num_processes)}


def reset_peak_memory(device: torch.device) -> None:
    """Start counting this run's peak memory now.

    A process can run several runs one after another (the main job calls `train` for every recipe in one process),
    and the peak of an earlier, larger run must not be reported as a later run's. CUDA: the allocator's peak stats
    are reset. CPU on Linux: writing "5" to /proc/self/clear_refs resets the kernel's peak resident set size
    (VmHWM, which `getrusage`'s ru_maxrss reports; proc(5), Linux >= 4.0). Elsewhere nothing is reset.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or /proc not writable: the peak then covers the whole process
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU (ru_maxrss, KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
