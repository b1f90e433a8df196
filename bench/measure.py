"""What the benchmark measures, the same way for every framework: tokens, padding and model FLOPs per forward.

A forward pre-hook on the model sees exactly the tensors each training forward pass computes on, whichever loop
(tuneforge, `Trainer`, `SFTTrainer`) built them, so padding and FLOPs are counted identically for all of them.
Evaluation forwards (model in eval mode or under `no_grad`) are not counted.

Tokens: every position the model computes on, encoder and decoder together for encoder-decoder models.
Non-padding tokens: positions with attention mask 1 (encoder / decoder-only input) plus decoder positions whose
label is not -100. A padding-free packed batch (one row, `position_ids` restarting at 0 for every sequence, no
attention mask, as TRL's padding-free collator builds it) has no padding; its sequences are the runs between
position-id resets. FLOPs: `pipelines.flops.training_flops` of the real lengths (padding is never useful work).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import torch

from pipelines.flops import FlopSpec, flop_spec, training_flops

IGNORE = -100


def segment_lengths(position_ids: torch.Tensor) -> torch.Tensor:
    """Lengths of the sequences packed into one row, from where `position_ids` restart at 0.

    Args:
        position_ids: [1, L] or [L] int, e.g. [0 1 2 0 1 0 1 2 3].

    Returns:
        [num_sequences] int64, e.g. [3, 2, 4]; they sum to L.
    """
    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos == 0).flatten()
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=starts.device), starts])
    ends = torch.cat([starts[1:], torch.tensor([pos.numel()], device=starts.device)])
    return (ends - starts).long()


def padding_fraction(tokens: int, nonpad: int) -> float:
    """Share of computed positions that are padding: 1 - nonpad / tokens (0 for an empty count)."""
    return 1.0 - nonpad / tokens if tokens else 0.0


@dataclass
class Tally:
    """Totals over the counted training forwards.

    Attributes:
        tokens: positions computed (padding included), encoder + decoder.
        nonpad_tokens: positions that are not padding.
        model_flops: training FLOPs of the real tokens (forward + backward), see `pipelines.flops`.
        forwards: counted forward passes (micro-batches).
    """

    tokens: int = 0
    nonpad_tokens: int = 0
    model_flops: float = 0.0
    forwards: int = 0


class TokenCounter:
    """Counts tokens, padding and model FLOPs of every training forward pass of one model.

    Args:
        encoder_decoder: whether `labels` feed a decoder whose positions are counted too.
        spec: FLOP spec of the model; None to compute it from the model in `attach`.
    """

    def __init__(self, encoder_decoder: bool = False, spec: FlopSpec | None = None):
        self.encoder_decoder = encoder_decoder
        self.spec = spec
        self.tally = Tally()

    def attach(self, model: torch.nn.Module) -> torch.nn.Module:
        """Hook `model` (the object the training loop calls). Call after LoRA / freezing decides what trains."""
        if self.spec is None:
            self.spec = flop_spec(model)
        self.encoder_decoder = self.spec.encoder_decoder
        model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return model

    def _hook(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            self.observe(kwargs if kwargs else {"input_ids": args[0]})

    def observe(self, inputs: dict[str, torch.Tensor]) -> None:
        """Count one forward's inputs (input_ids [B, S], optional attention_mask / position_ids / labels)."""
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        positions = inputs.get("position_ids")
        if mask is not None:
            src = mask.sum(dim=1)
        elif positions is not None and ids.size(0) == 1:
            src = segment_lengths(positions)
        else:
            src = torch.full((ids.size(0),), ids.size(1))
        tally = self.tally
        tally.tokens += ids.numel()
        tally.nonpad_tokens += int(src.sum())
        tgt = None
        if self.encoder_decoder and inputs.get("labels") is not None:
            labels = inputs["labels"]
            tgt = (labels != IGNORE).sum(dim=1)
            tally.tokens += labels.numel()
            tally.nonpad_tokens += int(tgt.sum())
        if self.spec is not None:
            tally.model_flops += float(training_flops(self.spec, src, tgt))
        tally.forwards += 1

    def result(self) -> dict:
        fraction = padding_fraction(self.tally.tokens, self.tally.nonpad_tokens)
        return {**asdict(self.tally), "padding_fraction": fraction}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, min and max of repeated measurements (mean of an interleaved A B ... B A schedule cancels drift)."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
