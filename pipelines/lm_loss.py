"""Next-token cross-entropy that never holds all the logits: the LM head and the loss run per chunk of targets.

A causal LM's head turns every position's hidden state [H] into [vocab] logits. With SmolLM2's 49,152-token
vocabulary one 8 x 256-token micro-batch makes ~400 MB of fp32 logits, and autograd keeps them (and their
gradient) alive until the backward pass: memory, not matmuls, becomes the limit. Here the model runs as usual up
to the head's input; the head itself sees an empty slice (so the model's own `logits` output is [B, 0, vocab]),
and `chunked_nll` applies the head and the cross-entropy to the positions that have a target, a few hundred
tokens at a time. Peak memory then no longer scales with vocabulary x batch x length (TRL's chunked NLL and
Liger's fused linear cross-entropy follow the same idea: trl PR #5575; Hsu et al. 2024, "Liger Kernel",
arXiv:2410.10989, section 3.4).

When training through a plain `nn.Linear` head (`fusable`), the head and the loss are fused as in Liger: each
chunk's gradient is computed in the forward pass, while its logits are still in cache (softmax - one-hot, written
over the logits), and only the gradients with respect to the head's input (and weight, when it trains) are kept;
no logits survive the chunk and nothing is recomputed. A head's weight gradient computed ahead assumes every
target token has the same upstream gradient (the token-weighted sum every task uses); any other upstream gradient
is still exact: the backward then recomputes each chunk once. Otherwise (scoring under `no_grad`, hooked or
wrapped heads), the head and `F.cross_entropy` run per chunk, and when the step's logits would be large
(`RECOMPUTE_ABOVE`) each chunk runs under `torch.utils.checkpoint` (non-reentrant), so the backward recomputes one
chunk's logits at a time.

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
# Unfused chunks (hooked or wrapped heads) are checkpointed only when all the step's logits would exceed 2**26
# elements (256 MiB fp32): recomputing the head in backward costs one more head forward per target token (+50% head
# work), which only pays when the logits are big (SmolLM2 on 8 x 256 targets: 100M logits, 400 MB).
RECOMPUTE_ABOVE = 2**26
# Rows per chunk of the fused head + loss, at most: its work is 3 matmuls per chunk, and chunks of 512 rows ran the
# tiny GPT-2's head + loss (4,096 rows, 4,096-token vocabulary) in 51-54 ms vs 58 ms as one chunk (the logits stay
# in cache); SmolLM2 (49,152) keeps 341-row chunks: 0.80 s vs 1.21 s per step's head + loss for the unfused chunks.
FUSED_MAX_ROWS = 512
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
        recompute: checkpoint each unfused chunk (its logits are recomputed in backward instead of kept).

    Returns:
        [n] float32 per-token loss in nats, as `F.cross_entropy(head(hidden).float(), targets, reduction="none")`.
    """
    if torch.is_grad_enabled() and fusable(head, hidden):
        return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, min(chunk, FUSED_MAX_ROWS))

    def piece(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, reduction="none")

    # Checkpointing only pays when autograd would keep the chunk's logits for the backward pass.
    remember = recompute and torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for start in range(0, hidden.size(0), chunk):
        h, y = hidden[start : start + chunk], targets[start : start + chunk]
        parts.append(checkpoint(piece, h, y, use_reentrant=False) if remember else piece(h, y))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def fusable(head, hidden: torch.Tensor) -> bool:
    """Whether `head` is exactly an `nn.Linear` on plain tensors whose forward nothing hooks into.

    Hooks mean someone must see the head run (DeepSpeed ZeRO-3 gathers the weight in one, tests count calls), and
    subclasses or sharded (DTensor) weights may compute something else, so those keep `head(hidden)`.
    """
    from torch.nn.modules import module as nn_module

    if type(head) is not torch.nn.Linear or head._forward_hooks or head._forward_pre_hooks:
        return False
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return False
    tensors = [head.weight] + ([head.bias] if head.bias is not None else [])
    plain = all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)
    return plain and (hidden.requires_grad or any(t.requires_grad for t in tensors))


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of `hidden @ weight.T + bias`, chunk by chunk, its gradients made in the forward.

    Forward, per chunk of rows c: logits [c, V] in fp32; loss = logsumexp - logit of the target; then, in place,
    G = softmax - one_hot(target) (the gradient of each row's loss with respect to its logits), from which
    d hidden = G @ weight [c, H] and, when the head trains, d weight += G^T @ hidden, d bias += sum of G's rows.
    Backward scales these by the upstream gradient g [n]: exactly for the input (row by row); for the weight and
    bias when every g is equal, else by recomputing each chunk's G once with g. Under autocast the matmuls run in
    the autocast dtype and the softmax in fp32, as `F.cross_entropy(head(h).float(), y)` would.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        losses = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None

        def take(rows: slice, h: torch.Tensor, w: torch.Tensor, probs: torch.Tensor) -> None:
            if need_h:
                grad_h[rows] = probs.to(dtype) @ w
            _add_head_grads(grad_w, grad_b, probs, h)

        _for_each_chunk(hidden, weight, bias, targets, chunk, dtype, losses, take)
        ctx.chunk, ctx.dtype = chunk, dtype
        ctx.save_for_backward(hidden, weight, bias, targets, grad_h, grad_w, grad_b)
        return losses

    @staticmethod
    def backward(ctx, g):
        hidden, weight, bias, targets, grad_h, grad_w, grad_b = ctx.saved_tensors
        out_h = (grad_h * g[:, None].to(grad_h.dtype)) if grad_h is not None else None
        if grad_w is None and grad_b is None:
            return out_h, None, None, None, None
        if g.numel() and not bool((g == g[0]).all()):  # per-token weights: recompute each chunk's G once
            grad_w, grad_b = _weighted_head_grads(ctx, hidden, weight, bias, targets, g, grad_w is not None,
                                                  grad_b is not None)
        else:  # the same upstream gradient for every token: scale the gradients made in the forward
            scale = g[0] if g.numel() else 0.0
            grad_w, grad_b = (None if t is None else t * scale for t in (grad_w, grad_b))
        return (out_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None)


def _chunk_probs(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, y: torch.Tensor,
                 losses: torch.Tensor) -> torch.Tensor:
    """G = softmax - one_hot [c, V] fp32 of one chunk, made in its logits; its losses are written into `losses`."""
    logits = F.linear(h, w, b).float()
    target_logit = logits.gather(1, y[:, None])
    top = logits.amax(dim=1, keepdim=True)
    probs = logits.sub_(top).exp_()  # in place: the logits are not needed again
    total = probs.sum(dim=1, keepdim=True)
    torch.sub(top.add_(total.log()), target_logit, out=losses[:, None])  # logsumexp - target logit
    probs.div_(total)
    return probs.scatter_add_(1, y[:, None], probs.new_full((y.numel(), 1), -1.0))


def _add_head_grads(grad_w: torch.Tensor | None, grad_b: torch.Tensor | None, probs: torch.Tensor,
                    h: torch.Tensor) -> None:
    """grad_w [V, H] += probs^T @ h (in h's dtype, accumulated in fp32); grad_b [V] += the sum of probs' rows."""
    if grad_w is not None:
        if h.dtype == grad_w.dtype:
            grad_w.addmm_(probs.t(), h)
        else:
            grad_w.add_(probs.t().to(h.dtype) @ h)
    if grad_b is not None:
        grad_b.add_(probs.sum(dim=0))


def _weighted_head_grads(ctx, hidden, weight, bias, targets, g, need_w: bool, need_b: bool):
    """d weight and d bias for per-token upstream gradients `g` [n]: each chunk's G recomputed and scaled by g."""
    grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
    grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
    scratch = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)

    def take(rows: slice, h: torch.Tensor, w: torch.Tensor, probs: torch.Tensor) -> None:
        _add_head_grads(grad_w, grad_b, probs.mul_(g[rows, None]), h)

    with torch.no_grad():
        _for_each_chunk(hidden, weight, bias, targets, ctx.chunk, ctx.dtype, scratch, take)
    return grad_w, grad_b


def _for_each_chunk(hidden, weight, bias, targets, chunk: int, dtype: torch.dtype, losses: torch.Tensor,
                    take: Callable[[slice, torch.Tensor, torch.Tensor, torch.Tensor], None]) -> None:
    """Per chunk of `chunk` rows: its losses into `losses`, then `take(rows, h, w, G)` with h, w in `dtype`.

    Autocast is off inside (the casts are explicit: matmuls in `dtype`, the softmax in fp32).
    """
    with torch.autocast(hidden.device.type, enabled=False):
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        for start in range(0, hidden.size(0), chunk):
            rows = slice(start, start + chunk)
            h = hidden[rows].to(dtype)
            take(rows, h, w, _chunk_probs(h, w, b, targets[rows], losses[rows]))


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
        device = hidden.device.type  # the forward's autocast (Accelerate wraps only the forward): the head's too
        captured["autocast"] = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
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
    enabled, dtype = captured["autocast"]
    with torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):  # as the model's own head call would
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
