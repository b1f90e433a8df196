"""Model FLOPs of training steps and model FLOP utilisation (MFU) against a matmul measured in the same run.

Training FLOPs per token (forward + backward), the usual analytic count:

    6 * N_trainable + 4 * N_frozen + 12 * L * d_attn * T

* `6 * N` for the weight matmuls of full training: 2 FLOPs per weight per token forward, 4 backward (gradient
  with respect to the input and to the weight). Kaplan et al. 2020, "Scaling Laws for Neural Language Models"
  (arXiv:2001.08361), Table 1 and section 2.1 (C = 6N per token); Chowdhery et al. 2022, "PaLM"
  (arXiv:2204.02311), appendix B.
* Frozen weights (LoRA's base, Hu et al. 2021, arXiv:2106.09685) cost `4 * N_frozen`: forward, and the gradient
  with respect to their input (needed to reach earlier adapters), but no weight gradient.
* Attention scores and the weighted sum of values: `12 * L * d_attn * T` per token, with T the number of keys the
  token attends to (PaLM appendix B: 6N + 12 L H Q T). Counted in full (no causal halving), as PaLM does.

N counts the weights of every linear layer (transformers' GPT-2 `Conv1D` included) and the output projection
(the LM head, also when tied to the input embedding), but not embedding lookups, norms or biases. Padding is never
counted: T and the token counts are the real (attention-mask) lengths, so MFU measures useful work. Encoder-decoder
models count encoder weights on source tokens, decoder weights on target tokens, the cross-attention keys/values on
source tokens, and cross-attention as 12 * L_dec * d * T_src per target token. Pooler/classifier heads run once per
example, not per token.

MFU is model FLOPs per second divided by the throughput of a large dense matmul timed in the same process with
the same threads and dtype (`matmul_flops_per_s`), the practical peak of the machine as the run sees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pipelines.runtime import unwrap

# Path components of heads applied once per example (sequence classification), not per token.
_PER_EXAMPLE_HEADS = {"pooler", "classifier", "score"}
# Cross-attention projections of encoder-decoder decoders that run on the encoder's output (source tokens).
_CROSS_KV = (".encoder_attn.k_proj", ".encoder_attn.v_proj", ".EncDecAttention.k", ".EncDecAttention.v")


@dataclass(frozen=True)
class FlopSpec:
    """What the FLOP count of a model needs: weights per token stream and the attention shape.

    Attributes:
        linear: stream -> FLOPs per token of that stream for the weight matmuls (6 per trainable weight, 4 per
            frozen one). Streams: "src" (the input / encoder tokens), "tgt" (decoder tokens of an encoder-decoder
            model), "example" (heads that run once per example).
        src_layers: self-attention layers over the source (all layers of a decoder-only or encoder-only model).
        tgt_layers: decoder layers of an encoder-decoder model (self- and cross-attention each), else 0.
        d_attn: attention width (heads x head dim).
        encoder_decoder: whether `labels` feed a separate decoder.
    """

    linear: dict[str, int]
    src_layers: int
    tgt_layers: int
    d_attn: int
    encoder_decoder: bool


def flop_spec(model: torch.nn.Module) -> FlopSpec:
    """Count a model's matmul weights per token stream (trainable vs frozen) and read its attention shape.

    Args:
        model: a transformers model, possibly PEFT- or DDP-wrapped; `requires_grad` must already say what trains.

    Returns:
        The model's `FlopSpec`.
    """
    from transformers.pytorch_utils import Conv1D

    model = unwrap(model)
    config = model.config
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    linear = {"src": 0, "tgt": 0, "example": 0}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear | Conv1D) or ".original_module" in f".{name}":
            continue  # PEFT's modules_to_save keeps an inactive frozen copy of the head: never run
        parts = set(name.split("."))
        if parts & _PER_EXAMPLE_HEADS:
            stream = "example"
        elif encoder_decoder:
            is_src = "encoder" in parts or any(k in f".{name}" for k in _CROSS_KV)
            stream = "src" if is_src else "tgt"
        else:
            stream = "src"
        weight = module.weight
        linear[stream] += (6 if weight.requires_grad else 4) * weight.numel()
    hidden = getattr(config, "d_model", None) or config.hidden_size
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None)  # T5 calls it d_kv
    d_attn = heads * head_dim if heads and head_dim else hidden
    if encoder_decoder:
        # BART-family configs say encoder_layers / decoder_layers; T5's say num_layers / num_decoder_layers.
        src_layers = getattr(config, "encoder_layers", None) or config.num_layers
        tgt_layers = getattr(config, "decoder_layers", None) or getattr(config, "num_decoder_layers", None)
    else:
        src_layers, tgt_layers = config.num_hidden_layers, 0
    return FlopSpec(linear, int(src_layers), int(tgt_layers), int(d_attn), encoder_decoder)


def training_flops(spec: FlopSpec, src_lengths: torch.Tensor, tgt_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Model FLOPs of one forward + backward pass over a batch, from real (unpadded) lengths.

    Stays on the lengths' device (no host sync), so a loop can accumulate it every step for free.

    Args:
        spec: from `flop_spec`.
        src_lengths: [B] real tokens per example (input / encoder side).
        tgt_lengths: [B] real decoder tokens per example (encoder-decoder models only).

    Returns:
        A float64 scalar tensor, FLOPs.
    """
    s = src_lengths.double()
    att = 12 * spec.d_attn
    flops = spec.linear["src"] * s.sum() + att * spec.src_layers * (s * s).sum() + spec.linear["example"] * s.numel()
    if spec.encoder_decoder and tgt_lengths is not None:
        t = tgt_lengths.double()
        flops = flops + spec.linear["tgt"] * t.sum() + att * spec.tgt_layers * (t * t + t * s).sum()
    return flops


def batch_flops(spec: FlopSpec, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`training_flops` of a collated batch: lengths from `attention_mask`, decoder lengths from `labels` != -100.

    Args:
        spec: from `flop_spec`.
        batch: input_ids [B, S], optional attention_mask [B, S]; labels [B, T] for encoder-decoder models.

    Returns:
        A float64 scalar tensor, FLOPs.
    """
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    src = mask.sum(dim=1) if mask is not None else torch.full((ids.size(0),), ids.size(1), device=ids.device)
    tgt = (batch["labels"] != -100).sum(dim=1) if spec.encoder_decoder and "labels" in batch else None
    return training_flops(spec, src, tgt)


def matmul_flops_per_s(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       budget_s: float = 2.0) -> float:
    """Throughput of a large square matmul on `device`, the reference for MFU.

    Square sizes grow from 512 by doubling (up to 8192) while the next size still fits the time budget; the best
    time of 3 repeats (after a warm-up) counts at each size, and the best size's FLOP rate is returned. Uses the
    current torch thread settings, so it measures what the training process itself can get.

    Args:
        device: where to run (the training device).
        dtype: the training compute dtype (float32, or bfloat16/float16 under mixed precision).
        budget_s: rough wall-clock budget in seconds.

    Returns:
        FLOP/s (2 * n^3 per n x n product).
    """
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best, size, start = 0.0, 512, time.perf_counter()
    while size <= 8192:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm-up: kernel selection, page faults
        sync()
        took = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            sync()
            took = min(took, time.perf_counter() - t0)
        best = max(best, 2 * size**3 / took)
        if 4 * 8 * took > budget_s - (time.perf_counter() - start):
            break  # the next size (8x the work, 4 products) would not fit the budget
        size *= 2
    return best
