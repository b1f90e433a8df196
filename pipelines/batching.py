"""Training batches: which examples each process trains on at each step, and how many micro-batches make a step.

The schedule depends only on the global batch (not on the number of processes), so a run gives the same global
batches on 1 or N processes and a resumed run continues at exactly the step it stopped at.
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines import checks
from pipelines.errors import TuneforgeError

PAD_MULTIPLE = 8  # tensor-core friendly shapes on GPUs (transformers' pad_to_multiple_of=8); < 8 tokens per row
IGNORE = -100  # label of a position that is not a target (PyTorch cross_entropy's default ignore_index)
MEGA_BATCHES = 50  # global batches per length-sorted chunk (transformers' LengthGroupedSampler: megabatch_mult=50)


class StepBatches:
    """Which examples each process trains on at each optimizer step.

    Each epoch the training examples are shuffled with `seed + epoch`. With length grouping they are cut into
    mega-batches of `MEGA_BATCHES` global batches and sorted by length inside each, so a micro-batch holds similar
    lengths (little padding), as transformers' `LengthGroupedSampler` does with the same 50; the steps are then
    shuffled (lengths do not trend through the epoch) and the one holding the longest example is moved to the
    front (an out-of-memory batch fails at the first step, not mid-run; LengthGroupedSampler does the same).
    Equal lengths are ordered by `tiebreak` when given (seq2seq: which side is the longer, then the shorter side's
    length, so pairs whose longer side is as long but pad differently do not share a batch; docs/measurements.md).
    The epoch's micro-batches form one global list; optimizer step s uses the next `accumulation * world_size` of
    them and process r takes every world_size-th one. The global batch of a step is therefore the same whether it
    runs as 2 processes x 1 micro-batch or 1 process x 2 micro-batches, and a resumed run continues at exactly
    the step it stopped at. Incomplete steps at an epoch's end are dropped so no process ever sees a duplicated
    batch.
    """

    def __init__(self, lengths: list[int], micro_batch: int, accumulation: int, world: int, rank: int,
                 seed: int, group_by_length: bool, tiebreak: list[int] | None = None):
        self.lengths = np.asarray(lengths)
        self.tiebreak = np.asarray(tiebreak) if tiebreak is not None else np.zeros_like(self.lengths)
        self.micro_batch, self.accumulation, self.world, self.rank = micro_batch, accumulation, world, rank
        self.seed, self.group_by_length = seed, group_by_length
        self.per_step = accumulation * world
        self.steps_per_epoch = (len(lengths) // micro_batch) // self.per_step
        if self.steps_per_epoch == 0:
            raise TuneforgeError(
                f"train.micro_batch_size: {len(lengths)} training examples cannot fill one global batch of "
                f"{micro_batch} x {accumulation} accumulation x {world} processes; lower the batch or add data"
            )
        self._cache: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._cache and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(len(self.lengths))
        if self.group_by_length:
            mega = self.micro_batch * self.per_step * MEGA_BATCHES  # depends only on the global batch size
            chunks = [order[i : i + mega] for i in range(0, len(order), mega)]
            order = np.concatenate([c[np.lexsort((-self.tiebreak[c], -self.lengths[c]))] for c in chunks])
        n = self.steps_per_epoch * self.per_step * self.micro_batch
        batches = [order[i : i + self.micro_batch].tolist() for i in range(0, n, self.micro_batch)]
        if self.group_by_length:
            # Shuffle whole steps (not micro-batches), so the global batch of a step stays the same set of examples
            # however it is split into micro-batches and processes.
            steps = [batches[i : i + self.per_step] for i in range(0, n // self.micro_batch, self.per_step)]
            steps = [steps[i] for i in rng.permutation(len(steps))]
            longest = int(np.argmax([max(self.lengths[b].max() for b in step) for step in steps]))
            steps[0], steps[longest] = steps[longest], steps[0]
            batches = [b for step in steps for b in step]
        self._cache = (epoch, batches)
        return batches

    def for_step(self, step: int) -> list[list[int]]:
        """The `accumulation` micro-batches (example indices) this process trains on at optimizer step `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        batches = self.epoch_batches(epoch)[within * self.per_step : (within + 1) * self.per_step]
        return batches[self.rank :: self.world]


def accumulation_steps(cfg, world: int) -> int:
    """Micro-batches per process per optimizer step: the recipe's, or derived from `train.global_batch_size`.

    Raises:
        TuneforgeError: the global batch is not a multiple of micro_batch_size x processes.
    """
    if cfg.global_batch_size is None:
        return cfg.gradient_accumulation_steps
    problem = checks.global_batch_problem(cfg, world)
    if problem:
        raise TuneforgeError(problem)
    return cfg.global_batch_size // (cfg.micro_batch_size * world)


def pad_multiple(device: torch.device) -> int:
    """Training batches are padded to a multiple of this: 8 on CUDA GPUs, 1 elsewhere.

    transformers recommends `pad_to_multiple_of=8` so half-precision matmuls map onto Tensor Cores (NVIDIA compute
    capability >= 7.0). A CPU gains nothing from it, and rounding 20-token rows up to 24 is 20% more work.
    """
    return PAD_MULTIPLE if device.type == "cuda" else 1


def right_pad(rows: list[list[int]], pad_id: int, pad_to_multiple_of: int = PAD_MULTIPLE
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into one tensor (training and scoring batches; generation pads left).

    Args:
        rows: token ids per example.
        pad_id: the value of padding positions (a pad token id, or `IGNORE` for labels).
        pad_to_multiple_of: round the width up to a multiple of this (`pad_multiple`).

    Returns:
        (ids, mask): [B, T] int64 each, T = the longest row rounded up to `pad_to_multiple_of`; mask is 1 on the
        rows' own positions, 0 on padding.
    """
    width = max(len(r) for r in rows)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
