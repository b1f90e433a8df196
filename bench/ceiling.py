"""The MFU a model's own shapes allow on this machine: its weight matmuls and its attention alone, timed.

MFU divides by the rate of a large square matmul (`pipelines.flops.matmul_flops_per_s`). A small model's matmuls
are not large and square: the tiny GPT-2's are [4096 tokens x 128] x [128 x 384] and the like, which run well
below that rate on a CPU. This module times exactly the work the MFU numerator counts, in isolation, with the
model's own shapes, so the report can say how far a family's MFU is from what its shapes allow:

* every weight matmul of full training for `tokens` rows: forward `X W`, input gradient `dY W^T`, weight
  gradient `X^T dY` (the `6 N` of Kaplan et al. 2020), one timing per distinct shape, times its count;
* causal attention forward + backward (`torch.nn.functional.scaled_dot_product_attention`, what the models train
  with) for one `[batch, heads, seq_len, head_dim]` layer, times the number of layers.

The ceiling is then model FLOPs per step / (matmul seconds + attention seconds) / the large-matmul rate: the MFU
of a step whose every other operator (activations, norms, softmax of the loss, optimizer, Python) took no time.
"""

from __future__ import annotations

import collections
import time

import torch
import torch.nn.functional as F


def _best_seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up: kernel selection, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def weight_shapes(model: torch.nn.Module) -> collections.Counter:
    """(in_features, out_features) of every weight matmul: `nn.Linear` and transformers' `Conv1D` (GPT-2)."""
    shapes = collections.Counter()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            shapes[(module.in_features, module.out_features)] += 1
        elif type(module).__name__ == "Conv1D":  # weight [in, out]
            shapes[tuple(module.weight.shape)] += 1
    return shapes


def measure(config, batch: int, seq_len: int) -> dict:
    """Time a decoder-only model's weight matmuls and attention for one training step of `batch` x `seq_len` tokens.

    Args:
        config: the model's transformers config (the model is built on the meta device to read its shapes).
        batch: sequences per step.
        seq_len: tokens per sequence.

    Returns:
        {"matmul_seconds", "matmul_flops", "matmul_flops_per_s", "attention_seconds", "layers", "heads",
        "head_dim"}: seconds per step (fp32, the current torch threads).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tokens = batch * seq_len
    seconds = flops = 0.0
    for (fan_in, fan_out), count in weight_shapes(model).items():
        x, w, dy = torch.randn(tokens, fan_in), torch.randn(fan_in, fan_out), torch.randn(tokens, fan_out)
        seconds += count * _best_seconds(lambda x=x, w=w, dy=dy: (x @ w, dy @ w.T, x.T @ dy))
        flops += count * 6 * tokens * fan_in * fan_out
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    head_dim = config.hidden_size // heads
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, requires_grad=True) for _ in range(3))

    def attention() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    attention_seconds = layers * _best_seconds(attention)
    return {"matmul_seconds": seconds, "matmul_flops": flops, "matmul_flops_per_s": flops / seconds,
            "attention_seconds": attention_seconds, "layers": layers, "heads": heads, "head_dim": head_dim}
