"""Next-token cross-entropy that never holds all the logits: the LM head and the loss run per chunk of targets.

A causal LM's head turns every position's hidden state [H] into [vocab] logits. With SmolLM2's 49,152-token
vocabulary one 8 x 256-token micro-batch makes ~400 MB of fp32 logits, and autograd keeps them (and their
gradient) alive until the backward pass: memory, not matmuls, becomes the limit. Here the model runs as usual up
to the head's input; the head itself sees an empty slice (so the model's own `logits` output is [B, 0, vocab]),
and `chunked_nll` applies the head and the cross-entropy to the positions that have a target, a few hundred
tokens at a time. When the step's logits would be large (`RECOMPUTE_ABOVE`), each chunk runs under
`torch.utils.checkpoint` (non-reentrant), so the forward keeps only the chunk's input rows and its per-token
losses and the backward recomputes one chunk's logits at a time. Peak memory
then no longer scales with vocabulary x batch x length (TRL's chunked NLL and Liger's fused linear
cross-entropy follow the same idea: trl PR #5575; Hsu et al. 2024, "Liger Kernel", arXiv:2410.10989, section 3.4).

Positions without a target (-100: prompts, user turns, padding, the last position) never reach the head, so the
head's matmul runs on the supervised tokens only. The loss values are the plain computation's: the same per-token
cross-entropy in fp32, summed per example (token-weighted, as every caller expects).

The head is captured with a forward pre-hook on `get_output_embeddings()`, inside the model's own forward, so a
model wrapped by DDP or FSDP has its parameters in place and its gradient hooks fire as usual.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100
# Logit elements per chunk: 2**24 fp32 values = 64 MiB of logits (plus as much for their gradient in backward).
# 341 tokens for SmolLM2's 49,152-token vocabulary, 2,048 for an 8k tiny GPT-2; large enough that the head's
# matmul stays efficient, small enough that the step's peak is set by the activations, not the logits.
CHUNK_ELEMENTS = 2**24
# Checkpoint the chunks only when all the step's logits would exceed 2**26 elements (256 MiB fp32): recomputing
# the head in backward costs one more head forward per target token (+50% head work), which only pays when the
# logits are big. A tiny GPT-2 (8k vocabulary, 16 x 256 targets: 33M logits) keeps its chunks' logits for the
# backward; SmolLM2 on 8 x 256 targets (100M logits, 400 MB) recomputes them.
RECOMPUTE_ABOVE = 2**26
# Config attributes that change the logits after the head (softcapping, scaling): the chunked path would miss
# them, so such models keep the plain loss.
POST_HEAD_ATTRIBUTES = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def unwrapped(model) -> torch.nn.Module | None:
    """The module under DDP / FSDP(1) wrappers (their `.module`), or None for a plain function."""
    while isinstance(model, torch.nn.Module) and hasattr(model, "module") and isinstance(model.module,
                                                                                           torch.nn.Module):
        model = model.module
    return model if isinstance(model, torch.nn.Module) else None


def output_head(model) -> torch.nn.Module | None:
    """The LM head the chunked loss can replace, or None when the plain loss must be used.

    None when the model has no output embedding module, or its config alters logits after the head
    (`POST_HEAD_ATTRIBUTES`, e.g. Gemma 2's final softcapping).
    """
    inner = unwrapped(model)
    if inner is None or not hasattr(inner, "get_output_embeddings"):
        return None
    config = getattr(inner, "config", None)
    for name in POST_HEAD_ATTRIBUTES:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return None
    head = inner.get_output_embeddings()
    return head if isinstance(head, torch.nn.Module) else None


def chunked_nll(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor,
                chunk: int, recompute: bool = True) -> torch.Tensor:
    """Cross-entropy of `head(hidden)` against `targets`, `chunk` rows at a time.

    Args:
        head: the LM head, [n, H] -> [n, vocab].
        hidden: [n, H] hidden states of the positions with a target.
        targets: [n] int64 target ids (no -100).
        chunk: rows per chunk.
        recompute: checkpoint each chunk (its logits are recomputed in backward instead of kept).

    Returns:
        [n] float32 per-token loss in nats, as `F.cross_entropy(head(hidden).float(), targets, reduction="none")`.
    """

    def piece(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, reduction="none")

    # Checkpointing only pays when autograd would keep the chunk's logits for the backward pass.
    remember = recompute and torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for start in range(0, hidden.size(0), chunk):
        h, y = hidden[start : start + chunk], targets[start : start + chunk]
        parts.append(checkpoint(piece, h, y, use_reentrant=False) if remember else piece(h, y))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def next_token_losses(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                      chunk_elements: int = CHUNK_ELEMENTS, recompute_above: int = RECOMPUTE_ABOVE
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed next-token cross-entropy and target counts, without materializing all the logits.

    Position t predicts token t+1: the targets are `labels[:, 1:]` (the last position predicts nothing, as in
    transformers' ForCausalLMLoss). Models whose head cannot be split off (`output_head` is None, or `model` is a
    plain function) get the plain computation on their full logits, which gives the same numbers.

    Args:
        model: a causal LM (transformers / PEFT, possibly DDP-wrapped), or a callable returning `.logits`.
        inputs: keyword arguments of the forward (input_ids [B, T] and attention_mask or position_ids [B, T]).
        labels: [B, T] int64, unshifted, -100 where there is no target.
        chunk_elements: logit elements per chunk (chunk tokens = chunk_elements // vocab, at least 1).
        recompute_above: checkpoint the chunks when targets x vocab exceeds this many logit elements.

    Returns:
        (nll [B] float32 nats, count [B] int64 targets).
    """
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    count = (targets != IGNORE).sum(dim=1)
    head = output_head(model)
    if head is None:
        return plain_losses(model, inputs, targets), count
    captured = {}

    def take_hidden(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("input")
        captured["hidden"] = hidden
        # The model's own head call computes nothing: an empty slice of positions, [B, 0, H] -> [B, 0, vocab].
        return (hidden[:, :0], *args[1:]), kwargs

    handle = head.register_forward_pre_hook(take_hidden, with_kwargs=True)
    try:
        empty_logits = model(**inputs, use_cache=False).logits  # [B, 0, vocab]
    finally:
        handle.remove()
    hidden = captured["hidden"]  # [B, T, H]
    rows, cols = torch.nonzero(targets != IGNORE, as_tuple=True)
    vocab = vocab_rows(head, model)
    per_token = chunked_nll(head, hidden[rows, cols], targets[rows, cols], max(1, chunk_elements // vocab),
                            recompute=rows.numel() * vocab > recompute_above)
    nll = torch.zeros(labels.size(0), dtype=torch.float32, device=per_token.device).index_add(0, rows, per_token)
    # + 0 x the model's (empty) output: the loss then also flows through what the wrapped forward returned, so
    # wrappers that hook their outputs for the backward pass (FSDP's pre-backward hooks) still see it.
    return nll + empty_logits.float().sum() * 0.0, count


def vocab_rows(head: torch.nn.Module, model) -> int:
    """Output rows of the head (its weight's, through PEFT wrappers' `base_layer`), else the config's vocabulary."""
    for module in (head, getattr(head, "base_layer", None)):
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            return weight.size(0)
    return unwrapped(model).config.get_text_config().vocab_size


def plain_losses(model, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """The reference computation: all the logits at once, then the cross-entropy.

    Args:
        targets: [B, T] shifted targets (-100 where none).

    Returns:
        [B] float32 per-example summed loss, nats.
    """
    logits = model(**inputs, use_cache=False).logits
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE,
                          reduction="none").view(targets.shape)
    return nll.sum(dim=1)
